//! ICMP echo probes with the "don't fragment" bit, for diagnosing paths between hosts.
//!
//! Used by the overlay diagnosis (is the underlay reachable? does a full-size packet pass?). A
//! raw ICMP socket is opened inside the namespace on a dedicated thread; the probe waits for the
//! echo reply or the ICMP error about it (destination unreachable, fragmentation needed).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::error::{SysError, SysResult};
use super::netns::NetNs;

static NEXT_IDENT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// What an echo probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// The destination answered.
    Reply,
    /// No reply within the timeout.
    Silence(Duration),
    /// An ICMP error (or the kernel's refusal) about the probe.
    Unreachable(String),
    /// Too big for a link with DF set (locally, or "fragmentation needed" from a router).
    TooBig,
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reply => f.write_str("answered"),
            Self::Silence(t) => write!(f, "no answer within {} ms", t.as_millis()),
            Self::Unreachable(d) => write!(f, "unreachable ({d})"),
            Self::TooBig => f.write_str("too big for the path (DF set)"),
        }
    }
}

/// Sends ICMP echo requests of `size` bytes (the whole IPv4 packet), DF set, from `ns` to `dst`
/// until a reply or an error arrives or `timeout` passes. The raw socket is opened and used on a
/// dedicated thread inside `ns`.
pub async fn echo_v4(ns: &NetNs, dst: Ipv4Addr, size: usize, timeout: Duration) -> SysResult<Echo> {
    let r = ns.run(move || echo_blocking(dst, size, timeout)).await?;
    r.map_err(|e| SysError::from_io(format!("ICMP echo probe to {dst} in {ns}"), e))
}

fn echo_blocking(dst: Ipv4Addr, size: usize, timeout: Duration) -> std::io::Result<Echo> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::io::Read;
    use std::os::fd::AsRawFd;

    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    // DF on every probe, whatever the path MTU cache says.
    let mode: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: plain setsockopt on an open descriptor with a correctly sized int argument.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&mode as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let ident: u16 = (std::process::id() as u16)
        ^ NEXT_IDENT
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .wrapping_mul(7919);
    let target = socket2::SockAddr::from(std::net::SocketAddr::new(IpAddr::V4(dst), 0));
    let start = Instant::now();
    let mut seq: u16 = 0;
    let mut next_send = start;
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= start + timeout {
            return Ok(Echo::Silence(timeout));
        }
        if now >= next_send {
            let packet = echo_request(ident, seq, size.saturating_sub(20).max(8));
            seq = seq.wrapping_add(1);
            next_send = now + Duration::from_millis(250);
            if let Err(e) = sock.send_to(&packet, &target) {
                return Ok(match e.raw_os_error() {
                    Some(libc::EMSGSIZE) => Echo::TooBig,
                    Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => {
                        Echo::Unreachable(e.to_string())
                    }
                    _ => return Err(e),
                });
            }
        }
        let wait = next_send
            .min(start + timeout)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => return Ok(Echo::TooBig),
            Err(e) => return Err(e),
        };
        if let Some(v) = classify(&buf[..n], dst, ident) {
            return Ok(v);
        }
    }
}

/// An ICMP echo request with `len` bytes of ICMP (header included).
fn echo_request(ident: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![8u8, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..len.saturating_sub(8)).map(|i| b"wharf-diagnosis!"[i % 16]));
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a received IPv4 packet (header included) says about our probe, if anything.
fn classify(pkt: &[u8], dst: Ipv4Addr, ident: u16) -> Option<Echo> {
    let ihl = usize::from(pkt.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*pkt.get(12)?, *pkt.get(13)?, *pkt.get(14)?, *pkt.get(15)?);
    let icmp = pkt.get(ihl..)?;
    let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
    match ty {
        0 if src == dst && icmp.get(4..6)? == ident.to_be_bytes() => Some(Echo::Reply),
        3 | 11 => {
            // The original datagram: its IPv4 header, then our echo's first 8 bytes.
            let orig = icmp.get(8..)?;
            let oihl = usize::from(orig.first()? & 0x0f) * 4;
            let oicmp = orig.get(oihl..)?;
            if *oicmp.first()? != 8 || oicmp.get(4..6)? != ident.to_be_bytes() {
                return None;
            }
            Some(match (ty, code) {
                (3, 4) => Echo::TooBig,
                (3, c) => {
                    Echo::Unreachable(format!("ICMP destination unreachable, code {c} from {src}"))
                }
                (_, _) => Echo::Unreachable(format!("ICMP time exceeded from {src}")),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_have_the_asked_size_and_a_valid_checksum() {
        let p = echo_request(0x1234, 7, 1430);
        assert_eq!(p.len(), 1430);
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn replies_and_errors_are_recognised() {
        let dst = Ipv4Addr::new(10, 0, 0, 3);
        let mut reply = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 3, 10, 0, 0, 2,
        ];
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(&reply, dst, 0x1234), Some(Echo::Reply));
        assert_eq!(classify(&reply, dst, 0x9999), None);
        let mut frag = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        frag.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 0xaa]);
        frag.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ]);
        frag.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(&frag, dst, 0x1234), Some(Echo::TooBig));
    }
}
