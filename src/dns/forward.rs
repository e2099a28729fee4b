//! Forwarding to upstream servers from the host namespace.
//!
//! A small pool of long-lived UDP sockets is opened once, in the host namespace handed to the
//! resolver (through [`NetNs::run`]), and shared by every sandbox's listener. A forwarded query
//! gets a fresh random id on one of them; a receiving task per socket matches each reply to its
//! query by id, upstream address and question, restores the client's id and hands the bytes
//! back, otherwise unchanged. This avoids a socket (and its system calls) per query, which is
//! what makes per-query-socket forwarders slow.
//!
//! The cost of long-lived sockets is that the source port no longer adds entropy against
//! off-path spoofing; the random 16-bit id, several sockets on random ports, the exact upstream
//! address and the question check remain. Queries that came over TCP are forwarded over a new
//! TCP connection each (TCP is rare); their sockets are opened in the host namespace 16 at a
//! time, so that a burst does not start a thread per query.
//!
//! Upstreams are tried in order, each with a timeout, as Docker does: SERVFAIL, REFUSED, a
//! non-authoritative NXDOMAIN or any other error moves on to the next; the last reply received
//! is passed back if none is better, and SERVFAIL if none answered.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::task::AbortHandle;

use super::handler::{self, Forward};
use super::{DnsError, Transport};
use crate::sys::NetNs;

/// The receive buffer of an upstream socket (bursts of replies at 100k/s).
const UPSTREAM_RCVBUF: usize = 4 << 20;

/// Unconnected TCP sockets opened in the host namespace per trip to it (one thread start per
/// this many TCP forwards instead of one per forward).
const TCP_STASH: usize = 16;

/// One upstream socket and the queries waiting for a reply on it.
struct PoolSocket {
    sock: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
}

struct Pending {
    token: u64,
    upstream: SocketAddr,
    question: Box<[u8]>,
    tx: oneshot::Sender<Vec<u8>>,
}

/// Removes a pending entry when its waiter gives up (timeout, cancellation).
struct PendingGuard<'a> {
    sock: &'a PoolSocket,
    id: u16,
    token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        let mut pending = lock(&self.sock.pending);
        if pending.get(&self.id).is_some_and(|p| p.token == self.token) {
            pending.remove(&self.id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The upstream side of the resolver, shared by every listener.
pub(crate) struct Forwarder {
    host_ns: NetNs,
    v4: Vec<Arc<PoolSocket>>,
    v6: Vec<Arc<PoolSocket>>,
    next: AtomicUsize,
    rng: AtomicU64,
    tokens: AtomicU64,
    permits: Arc<Semaphore>,
    timeout: Duration,
    receivers: Vec<AbortHandle>,
    /// Fresh TCP sockets of the host namespace, IPv4 and IPv6.
    tcp_stash: [Mutex<Vec<std::net::TcpStream>>; 2],
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for r in &self.receivers {
            r.abort();
        }
    }
}

impl Forwarder {
    /// Opens `sockets` UDP sockets per address family in `host_ns`. IPv4 is required; IPv6 is
    /// skipped when the host has none (IPv6 upstreams then get SERVFAIL).
    pub(crate) async fn new(
        host_ns: NetNs,
        sockets: usize,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<Self, DnsError> {
        let sockets = sockets.max(1);
        let opened = host_ns
            .run(move || {
                let v4: io::Result<Vec<_>> = (0..sockets).map(|_| upstream_socket(false)).collect();
                let v6: io::Result<Vec<_>> = (0..sockets).map(|_| upstream_socket(true)).collect();
                (v4, v6)
            })
            .await
            .map_err(|source| DnsError::Namespace {
                what: format!("opening upstream sockets in {host_ns}"),
                source,
            })?;
        let upstream_err = |source| DnsError::Upstream {
            ns: host_ns.to_string(),
            source,
        };
        let v4 = opened.0.map_err(upstream_err)?;
        let v6 = opened.1.unwrap_or_else(|e| {
            tracing::debug!("no IPv6 upstream sockets in {host_ns}: {e}");
            Vec::new()
        });
        let to_pool = |socks: Vec<std::net::UdpSocket>| -> Result<Vec<Arc<PoolSocket>>, DnsError> {
            socks
                .into_iter()
                .map(|s| {
                    Ok(Arc::new(PoolSocket {
                        sock: UdpSocket::from_std(s).map_err(upstream_err)?,
                        pending: Mutex::new(HashMap::new()),
                    }))
                })
                .collect()
        };
        let v4 = to_pool(v4)?;
        let v6 = to_pool(v6)?;
        let receivers = v4
            .iter()
            .chain(&v6)
            .map(|s| tokio::spawn(receive(s.clone())).abort_handle())
            .collect();
        Ok(Self {
            host_ns,
            v4,
            v6,
            next: AtomicUsize::new(0),
            rng: AtomicU64::new(seed()),
            tokens: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            timeout,
            receivers,
            tcp_stash: [Mutex::new(Vec::new()), Mutex::new(Vec::new())],
        })
    }

    /// A slot for one more forwarded query, or `None` when too many are in flight.
    pub(crate) fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Forwards `query` as `plan` says and returns the bytes for the client (an upstream's reply
    /// with the client's id, or SERVFAIL). `None` only if the query cannot even be answered
    /// with SERVFAIL.
    pub(crate) async fn forward(
        &self,
        query: &[u8],
        plan: &Forward,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let client_id = query.get(..2)?;
        let question = query.get(12..plan.question_end)?;
        let mut last = None;
        for &upstream in plan.upstreams.iter() {
            let reply = match transport {
                Transport::Udp => self.udp_once(query, question, upstream).await,
                Transport::Tcp => self.tcp_once(query, question, upstream).await,
            };
            let Some(mut reply) = reply else {
                continue;
            };
            reply[..2].copy_from_slice(client_id);
            if is_final(&reply) {
                return Some(reply);
            }
            last = Some(reply);
        }
        last.or_else(|| handler::servfail(query, transport))
    }

    fn next_id(&self) -> u16 {
        // SplitMix64 over a randomly seeded counter: cheap, lock-free, unpredictable enough for
        // 16 bits of id.
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u16
    }

    async fn udp_once(
        &self,
        query: &[u8],
        question: &[u8],
        upstream: SocketAddr,
    ) -> Option<Vec<u8>> {
        let pool = if upstream.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        };
        if pool.is_empty() {
            return None;
        }
        let sock = &pool[self.next.fetch_add(1, Ordering::Relaxed) % pool.len()];
        let (tx, rx) = oneshot::channel();
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut pending = lock(&sock.pending);
            let mut id = self.next_id();
            let mut tries = 0;
            while pending.contains_key(&id) {
                tries += 1;
                if tries > 64 {
                    return None;
                }
                id = self.next_id();
            }
            pending.insert(
                id,
                Pending {
                    token,
                    upstream,
                    question: question.into(),
                    tx,
                },
            );
            id
        };
        let _guard = PendingGuard { sock, id, token };
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        sock.sock.send_to(&out, upstream).await.ok()?;
        tokio::time::timeout(self.timeout, rx).await.ok()?.ok()
    }

    async fn tcp_once(
        &self,
        query: &[u8],
        question: &[u8],
        upstream: SocketAddr,
    ) -> Option<Vec<u8>> {
        let work = async {
            let std_stream = self.tcp_socket(upstream).await?;
            let mut stream = tokio::net::TcpSocket::from_std_stream(std_stream)
                .connect(upstream)
                .await
                .ok()?;
            let len = u16::try_from(query.len()).ok()?;
            let mut framed = Vec::with_capacity(query.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(query);
            stream.write_all(&framed).await.ok()?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await.ok()?;
            let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
            stream.read_exact(&mut reply).await.ok()?;
            (reply.get(..2) == query.get(..2) && matches_question(&reply, question))
                .then_some(reply)
        };
        tokio::time::timeout(self.timeout, work).await.ok()?
    }
}

impl Forwarder {
    /// A fresh TCP socket of the host namespace for `upstream`'s family, from the stash,
    /// refilled through [`NetNs::run`] when empty.
    async fn tcp_socket(&self, upstream: SocketAddr) -> Option<std::net::TcpStream> {
        let stash = &self.tcp_stash[usize::from(upstream.is_ipv6())];
        if let Some(s) = lock(stash).pop() {
            return Some(s);
        }
        let domain = if upstream.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let mut fresh = self
            .host_ns
            .run(move || -> io::Result<Vec<std::net::TcpStream>> {
                (0..TCP_STASH)
                    .map(|_| {
                        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
                        s.set_nonblocking(true)?;
                        Ok(s.into())
                    })
                    .collect()
            })
            .await
            .ok()?
            .ok()?;
        let mine = fresh.pop();
        let mut stash = lock(stash);
        if stash.len() < TCP_STASH {
            stash.extend(fresh);
        }
        mine
    }
}

/// Whether an upstream's reply ends the search (Docker's rules): NOERROR, an authoritative
/// NXDOMAIN, or a truncated reply (the client retries over TCP).
fn is_final(reply: &[u8]) -> bool {
    let (Some(&flags), Some(&rcode)) = (reply.get(2), reply.get(3)) else {
        return false;
    };
    let authoritative = flags & 0x04 != 0;
    let truncated = flags & 0x02 != 0;
    match rcode & 0x0f {
        0 => true,
        3 => authoritative,
        _ => truncated,
    }
}

/// Whether `reply` is a response repeating `question` (the query's bytes after the header).
fn matches_question(reply: &[u8], question: &[u8]) -> bool {
    reply.get(2).is_some_and(|f| f & 0x80 != 0)
        && reply
            .get(12..12 + question.len())
            .is_some_and(|q| q.eq_ignore_ascii_case(question))
}

/// The receiving side of one upstream socket.
async fn receive(sock: Arc<PoolSocket>) {
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    loop {
        let (n, from) = match sock.sock.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Some(data) = buf.get(..n) else {
            continue;
        };
        if n < 12 {
            continue;
        }
        let id = u16::from_be_bytes([data[0], data[1]]);
        let waiter = {
            let mut pending = lock(&sock.pending);
            match pending.get(&id) {
                Some(p) if p.upstream == from && matches_question(data, &p.question) => {
                    pending.remove(&id)
                }
                _ => None,
            }
        };
        if let Some(p) = waiter {
            let _ = p.tx.send(data.to_vec());
        }
    }
}

fn upstream_socket(v6: bool) -> io::Result<std::net::UdpSocket> {
    let (domain, bind): (Domain, SocketAddr) = if v6 {
        (Domain::IPV6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
    } else {
        (Domain::IPV4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        s.set_only_v6(true)?;
    }
    super::server::set_recv_buffer(&s, UPSTREAM_RCVBUF);
    s.set_nonblocking(true)?;
    s.bind(&bind.into())?;
    Ok(s.into())
}

/// A random seed from the operating system (the standard library's per-process hash keys and
/// the clock if that fails).
fn seed() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.finish()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_replies_follow_docker() {
        let hdr = |flags: u8, rcode: u8| {
            let mut h = vec![0u8; 12];
            h[2] = 0x80 | flags;
            h[3] = rcode;
            h
        };
        assert!(is_final(&hdr(0, 0)));
        assert!(!is_final(&hdr(0, 2)), "SERVFAIL tries the next");
        assert!(!is_final(&hdr(0, 5)), "REFUSED tries the next");
        assert!(
            !is_final(&hdr(0, 3)),
            "non-authoritative NXDOMAIN tries the next"
        );
        assert!(is_final(&hdr(0x04, 3)));
        assert!(is_final(&hdr(0x02, 2)), "truncated goes back to the client");
        assert!(!is_final(&[]));
    }

    #[test]
    fn question_must_repeat() {
        let mut reply = vec![0u8; 12];
        reply[2] = 0x80;
        reply.extend_from_slice(b"\x07EXAMPLE\x00\x00\x01\x00\x01");
        assert!(matches_question(&reply, b"\x07example\x00\x00\x01\x00\x01"));
        assert!(!matches_question(
            &reply,
            b"\x07exampla\x00\x00\x01\x00\x01"
        ));
        reply[2] = 0;
        assert!(!matches_question(
            &reply,
            b"\x07example\x00\x00\x01\x00\x01"
        ));
    }
}
