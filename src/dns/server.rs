//! A sandbox's listener: UDP and TCP on 127.0.0.11:53 inside its namespace.
//!
//! The sockets are opened in the sandbox's namespace (through [`NetNs::run`]) and then served
//! from ordinary tokio tasks, so each listener knows which sandbox asks without looking at
//! addresses. Every query reads the current [`super::records::Table`] snapshot, so changes
//! apply to the next query without touching the listener.
//!
//! Bounds: UDP queries are read into a 4 KiB buffer that exists only while datagrams wait (longer
//! ones are cut and get FORMERR);
//! forwarded queries run in their own tasks, limited across the resolver; TCP connections are
//! limited per listener in number, idle time and pipelined queries; a connection that does
//! not read its answers is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Mutex as AsyncMutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::handler::{self, Action, Context};
use super::{DnsError, Shared, Transport};
use crate::sys::NetNs;

/// The largest UDP query read (anything longer is cut short and answered FORMERR).
const MAX_UDP_QUERY: usize = 4096;

/// How long a TCP client may take to send the rest of a query, or to read an answer.
const TCP_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Forwarded queries in flight on one TCP connection before reading pauses.
const TCP_PIPELINE: usize = 16;

/// The receive buffer of a listener's UDP socket (bursts from many clients).
const LISTEN_RCVBUF: usize = 1 << 20;

/// A sandbox's running resolver listener. Dropping it (or [`Listener::stop`]) closes its
/// sockets and stops its tasks; queries already forwarded are not answered.
#[derive(Debug)]
pub struct Listener {
    sandbox: String,
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Listener {
    /// The sandbox this listener answers for.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox
    }

    /// The UDP address it listens on, inside the sandbox's namespace.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    /// The TCP address it listens on, inside the sandbox's namespace.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Stops serving and waits until the sockets are closed.
    pub async fn stop(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// What a listener's tasks share.
struct ListenerCx {
    shared: Arc<Shared>,
    sandbox: Box<str>,
    upstreams: Option<Arc<[SocketAddr]>>,
    /// Counts the sandbox's queries (UDP workers and TCP connections together), so that
    /// consecutive answers for a name with several addresses rotate: round robin.
    rotate: std::sync::atomic::AtomicUsize,
}

impl ListenerCx {
    fn handle(&self, query: &[u8], transport: Transport) -> Action {
        let rotate = self
            .rotate
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let table = self.shared.table.load();
        let defaults = self.shared.defaults.load();
        let cx = Context {
            sandbox: &self.sandbox,
            sandbox_upstreams: self.upstreams.as_ref(),
            default_upstreams: &defaults,
            transport,
            ttl: self.shared.config.ttl,
            rotate,
        };
        handler::handle(&table, &cx, query)
    }
}

/// Opens the sockets in `ns` and starts serving.
pub(crate) async fn start(
    shared: Arc<Shared>,
    sandbox: &str,
    ns: &NetNs,
    upstreams: Option<Arc<[SocketAddr]>>,
) -> Result<Listener, DnsError> {
    let addr = shared.config.listen_addr;
    let listen_err = |source| DnsError::Listen {
        sandbox: sandbox.to_owned(),
        addr,
        source,
    };
    let workers = shared.config.udp_workers;
    let (udp, tcp) = ns
        .run(move || open_sockets(addr, workers))
        .await
        .map_err(|source| DnsError::Namespace {
            what: format!("opening the DNS listener of sandbox {sandbox:?} in {ns}"),
            source,
        })?
        .map_err(listen_err)?;
    let udp = udp
        .into_iter()
        .map(|s| UdpSocket::from_std(s).map(Arc::new))
        .collect::<io::Result<Vec<_>>>()
        .map_err(listen_err)?;
    let tcp = TcpListener::from_std(tcp).map_err(listen_err)?;
    let udp_addr = match udp.first() {
        Some(s) => s.local_addr().map_err(listen_err)?,
        None => addr,
    };
    let tcp_addr = tcp.local_addr().map_err(listen_err)?;
    let cx = Arc::new(ListenerCx {
        sandbox: sandbox.into(),
        upstreams,
        rotate: std::sync::atomic::AtomicUsize::new(0),
        shared,
    });
    let mut tasks: Vec<JoinHandle<()>> = udp
        .into_iter()
        .map(|sock| tokio::spawn(serve_udp(sock, cx.clone())))
        .collect();
    tasks.push(tokio::spawn(serve_tcp(tcp, cx)));
    Ok(Listener {
        sandbox: sandbox.to_owned(),
        udp_addr,
        tcp_addr,
        tasks,
    })
}

/// Opens `udp` UDP sockets (sharing the address through `SO_REUSEPORT`, so the kernel spreads
/// clients over them and each has one reading task) and the TCP listener.
fn open_sockets(
    addr: SocketAddr,
    udp: usize,
) -> io::Result<(Vec<std::net::UdpSocket>, std::net::TcpListener)> {
    let domain = Domain::for_address(addr);
    let udp = (0..udp.max(1))
        .map(|_| {
            let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
            set_recv_buffer(&s, LISTEN_RCVBUF);
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            Ok(s.into())
        })
        .collect::<io::Result<Vec<_>>>()?;
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.bind(&addr.into())?;
    tcp.listen(128)?;
    Ok((udp, tcp.into()))
}

/// Sets a socket's receive buffer, above `net.core.rmem_max` when the process may
/// (`SO_RCVBUFFORCE` needs `CAP_NET_ADMIN`, which wharf has), else as far as allowed.
pub(crate) fn set_recv_buffer(s: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to an int of the size passed, on an open socket.
    let forced = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        let _ = s.set_recv_buffer_size(bytes);
    }
}

/// Datagrams one UDP worker answers before it lets other tasks run.
const UDP_BATCH: usize = 64;

async fn serve_udp(sock: Arc<UdpSocket>, cx: Arc<ListenerCx>) {
    loop {
        if sock.readable().await.is_err() {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        // The buffer lives only while datagrams are waiting: an idle listener (most of them,
        // most of the time) holds none, which keeps a sandbox's resolver small. One byte more
        // than the largest query, to tell a datagram that was cut.
        let mut buf = vec![0u8; MAX_UDP_QUERY + 1];
        let mut failed = false;
        for _ in 0..UDP_BATCH {
            let (n, peer) = match sock.try_recv_from(&mut buf) {
                Ok(got) => got,
                Err(e) => {
                    failed = e.kind() != io::ErrorKind::WouldBlock;
                    break;
                }
            };
            if n > MAX_UDP_QUERY {
                if let Some(bytes) = handler::format_error(&buf[..n.min(buf.len())]) {
                    send_udp(&sock, bytes, peer);
                }
                continue;
            }
            let query = &buf[..n];
            match cx.handle(query, Transport::Udp) {
                Action::Reply(bytes) => send_udp(&sock, bytes, peer),
                Action::Forward(plan) => {
                    let Some(permit) = cx.shared.forwarder.try_permit() else {
                        if let Some(bytes) = handler::servfail(query, Transport::Udp) {
                            send_udp(&sock, bytes, peer);
                        }
                        continue;
                    };
                    let query = query.to_vec();
                    let weak = Arc::downgrade(&sock);
                    let shared = cx.shared.clone();
                    tokio::spawn(forward_udp(shared, query, plan, weak, peer, permit));
                }
                Action::Drop => {}
            }
        }
        drop(buf);
        if failed {
            // A socket error (e.g. an ICMP error queued on it): back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Answers `peer` at once when the socket's send buffer has room (nearly always), else from a
/// task of its own, so a full buffer never stalls the worker.
fn send_udp(sock: &Arc<UdpSocket>, bytes: Vec<u8>, peer: SocketAddr) {
    if let Err(e) = sock.try_send_to(&bytes, peer) {
        if e.kind() == io::ErrorKind::WouldBlock {
            let sock = sock.clone();
            tokio::spawn(async move {
                let _ = sock.send_to(&bytes, peer).await;
            });
        }
    }
}

async fn forward_udp(
    shared: Arc<Shared>,
    query: Vec<u8>,
    plan: handler::Forward,
    sock: Weak<UdpSocket>,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) {
    let reply = shared
        .forwarder
        .forward(&query, &plan, Transport::Udp)
        .await;
    // The forwarding slot is free before the client hears back.
    drop(permit);
    // The listener may have stopped meanwhile: then there is no socket to answer from.
    if let (Some(reply), Some(sock)) = (reply, sock.upgrade()) {
        let _ = sock.send_to(&reply, peer).await;
    }
}

async fn serve_tcp(listener: TcpListener, cx: Arc<ListenerCx>) {
    let slots = Arc::new(Semaphore::new(cx.shared.config.max_tcp_connections.max(1)));
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the limit: close at once, so the client fails fast instead of waiting.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        conns.spawn(serve_conn(stream, cx.clone(), slot));
    }
}

async fn serve_conn(stream: TcpStream, cx: Arc<ListenerCx>, _slot: OwnedSemaphorePermit) {
    let idle = cx.shared.config.tcp_idle_timeout;
    let (mut rd, wr) = stream.into_split();
    let wr = Arc::new(AsyncMutex::new(wr));
    let pipeline = Arc::new(Semaphore::new(TCP_PIPELINE));
    let mut forwards = JoinSet::new();
    loop {
        while forwards.try_join_next().is_some() {}
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, rd.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IO_TIMEOUT, rd.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        match cx.handle(&query, Transport::Tcp) {
            Action::Reply(bytes) => {
                if write_framed(&wr, &bytes).await.is_err() {
                    break;
                }
            }
            Action::Forward(plan) => {
                let Some(permit) = cx.shared.forwarder.try_permit() else {
                    let failed = match handler::servfail(&query, Transport::Tcp) {
                        Some(bytes) => write_framed(&wr, &bytes).await.is_err(),
                        None => false,
                    };
                    if failed {
                        break;
                    }
                    continue;
                };
                let Ok(turn) = pipeline.clone().acquire_owned().await else {
                    break;
                };
                let (shared, wr) = (cx.shared.clone(), wr.clone());
                forwards.spawn(async move {
                    let reply = shared
                        .forwarder
                        .forward(&query, &plan, Transport::Tcp)
                        .await;
                    drop((permit, turn));
                    if let Some(reply) = reply {
                        let _ = write_framed(&wr, &reply).await;
                    }
                });
            }
            Action::Drop => {}
        }
    }
    // The client stopped sending: answer what is still being forwarded, then close.
    while forwards.join_next().await.is_some() {}
}

async fn write_framed(wr: &AsyncMutex<OwnedWriteHalf>, bytes: &[u8]) -> io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS message over 64 KiB"))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    let mut wr = wr.lock().await;
    tokio::time::timeout(TCP_IO_TIMEOUT, wr.write_all(&framed))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))?
}
