//! Clients and servers that run inside a namespace and prove behaviour with real packets.
//!
//! Each client opens its socket on a dedicated thread inside the namespace (see
//! [`NetNs::run`]) and does its blocking I/O there; servers open their listening socket the same
//! way and then serve from a tokio task, since a socket stays in the namespace it was opened in.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::AsyncWriteExt;
use tokio::task::JoinHandle;

use crate::sys::icmp::{Echo, EchoProbe};
use crate::sys::{NetNs, SysError};

/// How long a probe waits by default before calling a destination unreachable.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a probe did not get through.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Entering the namespace or opening a socket there failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// No answer within the timeout.
    #[error("{what}: no answer within {timeout:?}")]
    Timeout {
        /// What was probed.
        what: String,
        /// How long the probe waited.
        timeout: Duration,
    },
    /// The destination answered that it is unreachable (ICMP error, TCP reset, no route).
    #[error("{what}: unreachable ({detail})")]
    Unreachable {
        /// What was probed.
        what: String,
        /// The kernel's or peer's reason.
        detail: String,
    },
    /// Any other I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was probed.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A DNS answer that could not be decoded.
    #[error("{what}: bad DNS reply: {detail}")]
    Dns {
        /// What was asked.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl ProbeError {
    fn io(what: &str, source: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        match source.kind() {
            TimedOut | WouldBlock => Self::Timeout {
                what: what.into(),
                timeout: DEFAULT_TIMEOUT,
            },
            ConnectionRefused | HostUnreachable | NetworkUnreachable | ConnectionReset => {
                Self::Unreachable {
                    what: what.into(),
                    detail: source.to_string(),
                }
            }
            _ => Self::Io {
                what: what.into(),
                source,
            },
        }
    }
}

/// Sends ICMP echo requests from `ns` to `dst` (one every 200 ms) until a reply arrives or
/// `timeout` passes. Returns the round-trip time of the first reply.
///
/// Fails fast with [`ProbeError::Unreachable`] when an ICMP error about the probe comes back or
/// the kernel has no route. The echo itself is the kernel layer's ([`EchoProbe`]).
pub async fn ping(ns: &NetNs, dst: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
    let what = || format!("ping {dst}");
    match EchoProbe::new(dst, timeout).send(ns).await? {
        Echo::Reply { rtt } => Ok(rtt),
        Echo::Silence(timeout) => Err(ProbeError::Timeout {
            what: what(),
            timeout,
        }),
        Echo::Unreachable(detail) => Err(ProbeError::Unreachable {
            what: what(),
            detail,
        }),
        Echo::TooBig => Err(ProbeError::Unreachable {
            what: what(),
            detail: "message too long".into(),
        }),
    }
}

/// `true` when [`ping`] gets a reply within `timeout`.
pub async fn can_ping(ns: &NetNs, dst: IpAddr, timeout: Duration) -> bool {
    ping(ns, dst, timeout).await.is_ok()
}

/// Connects from `ns` to `addr` over TCP and returns the first line the server sends.
pub async fn tcp_connect(
    ns: &NetNs,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<String, ProbeError> {
    ns.run(move || {
        let what = format!("TCP connect to {addr}");
        let stream =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| ProbeError::io(&what, e))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| ProbeError::io(&what, e))?;
        let mut line = String::new();
        BufReader::new(stream)
            .read_line(&mut line)
            .map_err(|e| ProbeError::io(&what, e))?;
        Ok(line.trim_end().to_owned())
    })
    .await?
}

/// A server running in a namespace; stops when dropped.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// The address it listens on (with the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a TCP server in `ns` on `bind` that sends `greeting` and a newline to every client,
/// then closes the connection.
pub async fn serve_tcp(ns: &NetNs, bind: SocketAddr, greeting: &str) -> Result<Server, ProbeError> {
    let what = format!("TCP listen on {bind}");
    let std_listener = ns
        .run(move || -> std::io::Result<TcpListener> {
            let l = TcpListener::bind(bind)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .await?
        .map_err(|e| ProbeError::io(&what, e))?;
    let listener =
        tokio::net::TcpListener::from_std(std_listener).map_err(|e| ProbeError::io(&what, e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ProbeError::io(&what, e))?;
    let greeting = format!("{greeting}\n");
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let greeting = greeting.clone();
            tokio::spawn(async move {
                let _ = stream.write_all(greeting.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(Server { addr, task })
}

/// Starts a UDP server in `ns` on `bind` that answers every datagram with `reply`.
pub async fn serve_udp(ns: &NetNs, bind: SocketAddr, reply: &str) -> Result<Server, ProbeError> {
    let what = format!("UDP bind on {bind}");
    let std_sock = ns
        .run(move || -> std::io::Result<UdpSocket> {
            let s = UdpSocket::bind(bind)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .await?
        .map_err(|e| ProbeError::io(&what, e))?;
    let sock = tokio::net::UdpSocket::from_std(std_sock).map_err(|e| ProbeError::io(&what, e))?;
    let addr = sock.local_addr().map_err(|e| ProbeError::io(&what, e))?;
    let reply = reply.as_bytes().to_vec();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((_, peer)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&reply, peer).await;
        }
    });
    Ok(Server { addr, task })
}

/// Sends one UDP datagram from `ns` to `addr` (again every 200 ms) and returns the first reply.
pub async fn udp_request(
    ns: &NetNs,
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ProbeError> {
    let payload = payload.to_vec();
    ns.run(move || {
        let what = format!("UDP request to {addr}");
        let io = |e| ProbeError::io(&what, e);
        let unspecified: SocketAddr = match addr {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().map_err(|_| io(bad_input()))?,
            SocketAddr::V6(_) => "[::]:0".parse().map_err(|_| io(bad_input()))?,
        };
        let sock = UdpSocket::bind(unspecified).map_err(io)?;
        sock.connect(addr).map_err(io)?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(io)?;
        let start = Instant::now();
        let mut buf = [0u8; 65535];
        while start.elapsed() < timeout {
            sock.send(&payload).map_err(io)?;
            match sock.recv(&mut buf) {
                Ok(n) => return Ok(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Err(ProbeError::Timeout { what, timeout })
    })
    .await?
}

fn bad_input() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad address")
}

/// How a DNS query travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// One UDP datagram.
    Udp,
    /// A TCP connection with the two-byte length prefix.
    Tcp,
}

/// The answer to a [`dns_query`].
#[derive(Debug, Clone)]
pub struct DnsAnswer {
    /// The response code (NOERROR, NXDOMAIN, SERVFAIL, ...).
    pub rcode: ResponseCode,
    /// A and AAAA records of the answer section, in order.
    pub addresses: Vec<IpAddr>,
    /// PTR and CNAME targets of the answer section, in order.
    pub names: Vec<String>,
    /// The whole decoded message.
    pub message: Message,
}

/// Ids of the lab's DNS queries, so concurrent ones in one process differ.
static QUERY_ID: AtomicU16 = AtomicU16::new(0);

/// Asks `server` from inside `ns` for `name` of type `rtype`, over `transport`.
pub async fn dns_query(
    ns: &NetNs,
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    transport: Transport,
    timeout: Duration,
) -> Result<DnsAnswer, ProbeError> {
    let what = format!("DNS {rtype} {name} @{server} over {transport:?}");
    let fqdn = Name::from_ascii(name).map_err(|e| ProbeError::Dns {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let id = QUERY_ID.fetch_add(1, Ordering::Relaxed);
    let mut query = Message::new();
    query
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(fqdn, rtype));
    let wire = query.to_vec().map_err(|e| ProbeError::Dns {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    let reply = match transport {
        Transport::Udp => udp_request(ns, server, &wire, timeout).await?,
        Transport::Tcp => {
            let what = what.clone();
            ns.run(move || -> Result<Vec<u8>, ProbeError> {
                let io = |e| ProbeError::io(&what, e);
                let mut s = TcpStream::connect_timeout(&server, timeout).map_err(io)?;
                s.set_read_timeout(Some(timeout)).map_err(io)?;
                let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&wire);
                s.write_all(&framed).map_err(io)?;
                let mut len = [0u8; 2];
                std::io::Read::read_exact(&mut s, &mut len).map_err(io)?;
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                std::io::Read::read_exact(&mut s, &mut body).map_err(io)?;
                Ok(body)
            })
            .await??
        }
    };
    let message = Message::from_vec(&reply).map_err(|e| ProbeError::Dns {
        what: what.clone(),
        detail: e.to_string(),
    })?;
    if message.id() != id {
        return Err(ProbeError::Dns {
            what,
            detail: format!("reply id {} for query id {id}", message.id()),
        });
    }
    let mut addresses = Vec::new();
    let mut names = Vec::new();
    for record in message.answers() {
        match record.data() {
            RData::A(a) => addresses.push(IpAddr::V4(a.0)),
            RData::AAAA(a) => addresses.push(IpAddr::V6(a.0)),
            RData::PTR(p) => names.push(p.0.to_ascii()),
            RData::CNAME(c) => names.push(c.0.to_ascii()),
            _ => {}
        }
    }
    Ok(DnsAnswer {
        rcode: message.response_code(),
        addresses,
        names,
        message,
    })
}

/// Resolves `name` to an address the way a container's C library would: asks the name servers
/// of `resolv_conf` (the text of the container's `resolv.conf`) in order, from inside `ns`, for
/// an `A` record, and returns the first address. `None` when no server knows the name.
pub async fn lookup(
    ns: &NetNs,
    resolv_conf: &str,
    name: &str,
    timeout: Duration,
) -> Option<IpAddr> {
    let rc = crate::dns::resolvconf::ResolvConf::parse(resolv_conf);
    for server in rc.nameservers {
        let answer = dns_query(
            ns,
            SocketAddr::new(server, 53),
            name,
            RecordType::A,
            Transport::Udp,
            timeout,
        )
        .await;
        match answer {
            Ok(a) if a.rcode == ResponseCode::NoError && !a.addresses.is_empty() => {
                return a.addresses.first().copied();
            }
            // An authoritative "no such name" ends the search, as in glibc.
            Ok(a) if a.rcode == ResponseCode::NXDomain => return None,
            _ => continue,
        }
    }
    None
}

/// A name server of the lab's "internet": answers `A`/`AAAA` for the names in `zone`
/// (case-insensitive, with or without the trailing dot) and NXDOMAIN for every other name, over
/// UDP and TCP on `bind` inside `ns`. Stops when the returned servers are dropped.
pub async fn serve_dns(
    ns: &NetNs,
    bind: SocketAddr,
    zone: &[(&str, IpAddr)],
) -> Result<(Server, Server), ProbeError> {
    let zone: std::sync::Arc<Vec<(String, IpAddr)>> = std::sync::Arc::new(
        zone.iter()
            .map(|(n, ip)| (n.trim_end_matches('.').to_ascii_lowercase(), *ip))
            .collect(),
    );
    let what = format!("DNS server on {bind}");
    let (udp, tcp) = ns
        .run(move || -> std::io::Result<(UdpSocket, TcpListener)> {
            let u = UdpSocket::bind(bind)?;
            u.set_nonblocking(true)?;
            let t = TcpListener::bind(bind)?;
            t.set_nonblocking(true)?;
            Ok((u, t))
        })
        .await?
        .map_err(|e| ProbeError::io(&what, e))?;
    let udp = tokio::net::UdpSocket::from_std(udp).map_err(|e| ProbeError::io(&what, e))?;
    let tcp = tokio::net::TcpListener::from_std(tcp).map_err(|e| ProbeError::io(&what, e))?;
    let addr = udp.local_addr().map_err(|e| ProbeError::io(&what, e))?;
    let z = zone.clone();
    let udp_task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            if let Some(reply) = zone_answer(&z, &buf[..n]) {
                let _ = udp.send_to(&reply, peer).await;
            }
        }
    });
    let tcp_task = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        while let Ok((mut stream, _)) = tcp.accept().await {
            let z = zone.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while stream.read_exact(&mut len).await.is_ok() {
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut query).await.is_err() {
                        break;
                    }
                    let Some(reply) = zone_answer(&z, &query) else {
                        break;
                    };
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok((
        Server {
            addr,
            task: udp_task,
        },
        Server {
            addr,
            task: tcp_task,
        },
    ))
}

/// The authoritative answer of a lab name server to one query.
fn zone_answer(zone: &[(String, IpAddr)], query: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::rr::{Record, rdata};
    let q = Message::from_vec(query).ok()?;
    let question = q.queries().first()?.clone();
    let name = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let mut reply = Message::new();
    reply
        .set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .add_query(question.clone());
    let matches: Vec<IpAddr> = zone
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, ip)| *ip)
        .collect();
    if matches.is_empty() {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    for ip in matches {
        let data = match (ip, question.query_type()) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(rdata::A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(rdata::AAAA(v6)),
            _ => continue,
        };
        reply.add_answer(Record::from_rdata(question.name().clone(), 60, data));
    }
    reply.to_vec().ok()
}
