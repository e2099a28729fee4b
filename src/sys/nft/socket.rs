//! The NETLINK_NETFILTER socket: one datagram out, replies in, on the tokio reactor.

use std::io;
use std::os::fd::AsRawFd;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};
use tokio::io::unix::AsyncFd;

/// Socket buffer size asked for (with `SO_*BUFFORCE` when privileged), so that a large batch
/// fits one datagram and all its acknowledgements fit the receive queue.
const BUF_SIZE: libc::c_int = 4 << 20;

/// Opens an unbound-to-a-runtime netlink socket in the calling thread's namespace.
pub(crate) fn open_raw() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    // Errors carry only the failing message's header (not the whole message back), and
    // extended acks may say more about what was refused.
    sock.set_cap_ack(true)?;
    let _ = sock.set_ext_ack(true);
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if setsockopt_int(&sock, force, BUF_SIZE).is_err() {
            let _ = setsockopt_int(&sock, plain, BUF_SIZE);
        }
    }
    sock.set_non_blocking(true)?;
    Ok(sock)
}

fn setsockopt_int(sock: &Socket, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: plain setsockopt on an open descriptor with a correctly sized int argument.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A netfilter netlink socket registered with the tokio reactor.
pub(crate) struct NfSocket {
    fd: AsyncFd<Socket>,
}

impl NfSocket {
    /// Registers a socket from [`open_raw`]; must run inside a tokio runtime.
    pub(crate) fn new(sock: Socket) -> io::Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other("not inside a tokio runtime"));
        }
        // SAFETY: `Socket` owns its descriptor (closed on drop) and nothing else closes or
        // replaces it while the `AsyncFd` holds it.
        let fd = unsafe { AsyncFd::register(sock) }?;
        Ok(Self { fd })
    }

    /// Sends one datagram to the kernel.
    pub(crate) async fn send(&self, buf: &[u8]) -> io::Result<()> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(buf, &kernel, 0)) {
                Ok(Ok(n)) if n == buf.len() => return Ok(()),
                Ok(Ok(n)) => {
                    return Err(io::Error::other(format!(
                        "short netlink send: {n} of {} bytes",
                        buf.len()
                    )));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram, whatever its size.
    pub(crate) async fn recv(&self) -> io::Result<Vec<u8>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|s| {
                let s = s.get_ref();
                let mut probe: Vec<u8> = Vec::with_capacity(0);
                let len = s.recv(&mut probe, libc::MSG_PEEK | libc::MSG_TRUNC)?;
                let mut buf = Vec::with_capacity(len.max(1));
                s.recv(&mut buf, 0)?;
                Ok(buf)
            });
            match got {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}
