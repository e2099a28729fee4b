//! ICMP and ICMPv6 echo probes from inside a namespace: the one echo implementation of wharf.
//!
//! Used by the overlay diagnosis (is the underlay reachable? does a full-size packet pass with
//! "don't fragment" set?) and by the lab's `ping`. A raw socket is opened inside the namespace
//! on a dedicated thread; the probe sends a request every `interval` and waits for the echo
//! reply from the destination or an ICMP error about its own request (destination unreachable,
//! time exceeded, fragmentation needed / packet too big). Concurrent probes tell their replies
//! apart by the echo identifier.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, recvfrom, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::error::{SysError, SysResult};
use super::netns::NetNs;

static NEXT_IDENT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// The ICMP bytes of a request when no size is asked for: header and a 16-byte payload.
const DEFAULT_ICMP_LEN: usize = 24;
/// IPv4 and IPv6 header sizes (without options or extension headers).
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;

/// What an echo probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Echo {
    /// The destination answered; `rtt` is the time from the first request to the reply.
    Reply {
        /// Round-trip time, counted from the first request sent.
        rtt: Duration,
    },
    /// No reply within the timeout.
    Silence(Duration),
    /// An ICMP error (or the kernel's refusal) about the probe.
    Unreachable(String),
    /// Too big for a link with DF set (locally, or "fragmentation needed" from a router).
    TooBig,
}

impl Echo {
    /// Whether the destination answered.
    pub fn is_reply(&self) -> bool {
        matches!(self, Self::Reply { .. })
    }
}

impl fmt::Display for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reply { .. } => f.write_str("answered"),
            Self::Silence(t) => write!(f, "no answer within {} ms", t.as_millis()),
            Self::Unreachable(d) => write!(f, "unreachable ({d})"),
            Self::TooBig => f.write_str("too big for the path (DF set)"),
        }
    }
}

/// One echo probe: where to, how big, for how long.
///
/// ```
/// use std::time::Duration;
/// use wharf::sys::icmp::EchoProbe;
/// let probe = EchoProbe::new("10.0.0.2".parse().unwrap(), Duration::from_secs(1))
///     .size(1450)
///     .dont_fragment();
/// assert_eq!(probe.packet_size(), Some(1450));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoProbe {
    dst: IpAddr,
    timeout: Duration,
    interval: Duration,
    size: Option<usize>,
    dont_fragment: bool,
}

impl EchoProbe {
    /// An echo to `dst`, given up after `timeout`, one request every 200 ms, small, DF as the
    /// kernel decides (path MTU discovery).
    pub fn new(dst: IpAddr, timeout: Duration) -> Self {
        Self {
            dst,
            timeout,
            interval: Duration::from_millis(200),
            size: None,
            dont_fragment: false,
        }
    }

    /// Makes each request `size` bytes on the wire, IP header included (at least the headers
    /// and 8 bytes of ICMP).
    pub fn size(mut self, size: usize) -> Self {
        self.size = Some(size);
        self
    }

    /// Sets "don't fragment" on every request, whatever the path MTU cache says, so a request
    /// larger than a link's MTU is reported as [`Echo::TooBig`] instead of fragmented.
    pub fn dont_fragment(mut self) -> Self {
        self.dont_fragment = true;
        self
    }

    /// Sends a request every `interval` until the reply (default 200 ms).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// The destination.
    pub fn dst(&self) -> IpAddr {
        self.dst
    }

    /// The asked size of a request on the wire, if any.
    pub fn packet_size(&self) -> Option<usize> {
        self.size
    }

    /// Runs the probe from inside `ns` (on a dedicated thread there).
    pub async fn send(self, ns: &NetNs) -> SysResult<Echo> {
        let dst = self.dst;
        let r = ns.run(move || self.blocking()).await?;
        r.map_err(|e| SysError::from_io(format!("ICMP echo probe to {dst} in {ns}"), e))
    }

    fn icmp_len(&self) -> usize {
        let header = if self.dst.is_ipv4() {
            IPV4_HEADER
        } else {
            IPV6_HEADER
        };
        self.size
            .map_or(DEFAULT_ICMP_LEN, |s| s.saturating_sub(header))
            .max(8)
    }

    fn blocking(self) -> std::io::Result<Echo> {
        let v4 = self.dst.is_ipv4();
        let (family, proto) = if v4 {
            (AddressFamily::Inet, SockProtocol::Icmp)
        } else {
            (AddressFamily::Inet6, SockProtocol::IcmpV6)
        };
        let sock = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)?;
        if self.dont_fragment {
            let (level, name) = if v4 {
                (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)
            } else {
                (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER)
            };
            // IP_PMTUDISC_PROBE and IPV6_PMTUDISC_PROBE are both 3: DF set, the path MTU
            // cache ignored.
            let mode: libc::c_int = libc::IP_PMTUDISC_PROBE;
            // SAFETY: plain setsockopt on an open descriptor with a correctly sized int.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    level,
                    name,
                    (&mode as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let ident: u16 = (std::process::id() as u16)
            ^ NEXT_IDENT
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .wrapping_mul(7919);
        let target = SockaddrStorage::from(SocketAddr::new(self.dst, 0));
        let start = Instant::now();
        let deadline = start + self.timeout;
        let mut seq: u16 = 0;
        let mut next_send = start;
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Echo::Silence(self.timeout));
            }
            if now >= next_send {
                let packet = echo_request(v4, ident, seq, self.icmp_len());
                seq = seq.wrapping_add(1);
                next_send = now + self.interval;
                if let Err(e) = sendto(sock.as_raw_fd(), &packet, &target, MsgFlags::empty()) {
                    return match e {
                        Errno::EMSGSIZE => Ok(Echo::TooBig),
                        Errno::ENETUNREACH | Errno::EHOSTUNREACH => {
                            Ok(Echo::Unreachable(e.desc().into()))
                        }
                        other => Err(other.into()),
                    };
                }
            }
            let wait = next_send
                .min(deadline)
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            setsockopt(
                &sock,
                sockopt::ReceiveTimeout,
                &TimeVal::from(libc::timeval {
                    tv_sec: wait.as_secs() as libc::time_t,
                    tv_usec: wait.subsec_micros() as libc::suseconds_t,
                }),
            )?;
            let (n, from) = match recvfrom::<SockaddrStorage>(sock.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(Errno::EMSGSIZE) => return Ok(Echo::TooBig),
                Err(e) => return Err(e.into()),
            };
            let from = from.and_then(|a| {
                a.as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))
                    .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
            });
            match classify(v4, &buf[..n], ident) {
                Some(Verdict::Reply) if from == Some(self.dst) => {
                    return Ok(Echo::Reply {
                        rtt: start.elapsed(),
                    });
                }
                Some(Verdict::Reply) | None => {}
                Some(Verdict::Error { too_big: true, .. }) => return Ok(Echo::TooBig),
                Some(Verdict::Error { kind, code, .. }) => {
                    let by = from.map_or_else(String::new, |f| format!(" from {f}"));
                    return Ok(Echo::Unreachable(format!("{kind}, code {code}{by}")));
                }
            }
        }
    }
}

/// Sends ICMP echo requests of `size` bytes (the whole IPv4 packet), DF set, from `ns` to `dst`
/// until a reply or an error arrives or `timeout` passes, one every 250 ms.
pub async fn echo_v4(ns: &NetNs, dst: Ipv4Addr, size: usize, timeout: Duration) -> SysResult<Echo> {
    EchoProbe::new(IpAddr::V4(dst), timeout)
        .size(size)
        .dont_fragment()
        .interval(Duration::from_millis(250))
        .send(ns)
        .await
}

/// An ICMP (v4) or ICMPv6 echo request with `len` bytes of ICMP, header included. The kernel
/// fills in the ICMPv6 checksum itself (it covers a pseudo-header); the ICMP one is computed
/// here.
fn echo_request(v4: bool, ident: u16, seq: u16, len: usize) -> Vec<u8> {
    let mut p = vec![if v4 { 8 } else { 128 }, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend((0..len.saturating_sub(8)).map(|i| b"wharf echo probe"[i % 16]));
    if v4 {
        let sum = checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
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

/// What a received packet says about our probe.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// An echo reply with our identifier (from whom is checked by the caller).
    Reply,
    /// An ICMP error quoting our request.
    Error {
        kind: &'static str,
        code: u8,
        too_big: bool,
    },
}

/// Looks at a received packet (with its IPv4 header for raw ICMP sockets, without for ICMPv6)
/// and says whether it is our echo reply, an ICMP error about our request, or nothing of ours.
fn classify(v4: bool, packet: &[u8], ident: u16) -> Option<Verdict> {
    let icmp = if v4 {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    } else {
        packet
    };
    let (ty, code) = (*icmp.first()?, *icmp.get(1)?);
    let ours = |b: &[u8], request: u8| {
        b.first() == Some(&request) && b.get(4..6) == Some(&ident.to_be_bytes()[..])
    };
    let error = |kind, too_big| {
        Some(Verdict::Error {
            kind,
            code,
            too_big,
        })
    };
    match (v4, ty) {
        (true, 0) | (false, 129) => ours(icmp, ty).then_some(Verdict::Reply),
        (true, 3) | (true, 11) => {
            // The original datagram: its IPv4 header, then our request's first 8 bytes.
            let orig = icmp.get(8..)?;
            let oihl = usize::from(orig.first()? & 0x0f) * 4;
            if !ours(orig.get(oihl..)?, 8) {
                return None;
            }
            match (ty, code) {
                (3, 4) => error("ICMP fragmentation needed", true),
                (3, _) => error("ICMP destination unreachable", false),
                _ => error("ICMP time exceeded", false),
            }
        }
        (false, 1..=3) => {
            // 8 bytes of ICMPv6 header, then the 40-byte IPv6 header of our request.
            if !ours(icmp.get(48..)?, 128) {
                return None;
            }
            match ty {
                1 => error("ICMPv6 destination unreachable", false),
                2 => error("ICMPv6 packet too big", true),
                _ => error("ICMPv6 time exceeded", false),
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_have_the_asked_size_and_a_valid_checksum() {
        let probe = EchoProbe::new("10.0.0.3".parse().unwrap(), Duration::from_secs(1)).size(1450);
        let p = echo_request(true, 0x1234, 7, probe.icmp_len());
        assert_eq!(p.len() + IPV4_HEADER, 1450);
        assert_eq!(checksum(&p), 0);
        let small = EchoProbe::new("fd00::1".parse().unwrap(), Duration::from_secs(1));
        let p6 = echo_request(false, 1, 0, small.icmp_len());
        assert_eq!((p6[0], p6.len()), (128, DEFAULT_ICMP_LEN));
        // Too small a size still makes a valid echo header.
        let tiny = EchoProbe::new("10.0.0.3".parse().unwrap(), Duration::from_secs(1)).size(3);
        assert_eq!(tiny.icmp_len(), 8);
    }

    #[test]
    fn replies_and_errors_are_recognised() {
        let mut reply = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 3, 10, 0, 0, 2,
        ];
        reply.extend_from_slice(&[0, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert_eq!(classify(true, &reply, 0x1234), Some(Verdict::Reply));
        assert_eq!(classify(true, &reply, 0x9999), None);
        assert_eq!(classify(true, &[], 1), None);
        let mut frag = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        frag.extend_from_slice(&[3, 4, 0, 0, 0, 0, 5, 0xaa]);
        frag.extend_from_slice(&[
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 3,
        ]);
        frag.extend_from_slice(&[8, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert!(matches!(
            classify(true, &frag, 0x1234),
            Some(Verdict::Error { too_big: true, .. })
        ));
        // ICMPv6: a reply, and "packet too big" quoting our request.
        let reply6 = [129, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(classify(false, &reply6, 0x1234), Some(Verdict::Reply));
        let mut big6 = vec![2, 0, 0, 0, 0, 0, 5, 0xdc];
        big6.extend_from_slice(&[0x60; 40]);
        big6.extend_from_slice(&[128, 0, 0, 0, 0x12, 0x34, 0, 1]);
        assert!(matches!(
            classify(false, &big6, 0x1234),
            Some(Verdict::Error { too_big: true, .. })
        ));
        assert_eq!(classify(false, &big6, 0x4321), None);
    }
}
