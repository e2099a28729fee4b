//! The embedded resolver with real namespaces and real packets.
//!
//! The world of these tests, scenario 2 of the tutorial in small: `alpine1` and `alpine2` on
//! `alpine-net` (both with the alias `web`), `alpine3` on `other`. A "host" namespace is joined
//! to an "internet" namespace by a veth (made with wharf's rtnl layer); the internet runs a small name server that knows
//! `www.example.com` (and, to show what gets forwarded, its own `alpine3`), never answers
//! `blackhole.example`, and answers NXDOMAIN for the rest. The resolver forwards from the host
//! namespace. The controller is not there yet: the tests fill the resolver's table directly.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use wharf::dns::{
    EndpointDns, LISTEN_ADDR, Listener, NetworkDns, NetworkKey, Resolver, ResolverConfig,
    SandboxDns,
};
use wharf::lab::Lab;
use wharf::lab::probe::{self, DnsAnswer, Transport};
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, LinkSpec, VethPeer};

const UPSTREAM: &str = "198.51.100.53:53";
/// An upstream that receives queries and never answers.
const SILENT: &str = "198.51.100.54:53";
const WWW: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const UPSTREAM_ALPINE3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 3);
/// The resolver's upstream timeout in the tests that wait for it to pass. The other tests keep
/// the default (2 s), so that an upstream slowed by a busy machine is not taken for a dead one.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(600);
/// The upstream timeout of tests that check what happens while a forward is still pending: long
/// enough that the checks run before it ends, however busy the machine.
const PATIENT_TIMEOUT: Duration = Duration::from_millis(2500);
const T: Duration = Duration::from_secs(3);

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs a command to completion off the async threads; panics with its output on failure.
async fn run(mut cmd: std::process::Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small authoritative name server (hickory-proto for the wire format) on UDP and TCP.
struct Upstream {
    queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn upstream_answer(query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.query()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    if name == "blackhole.example." {
        return None;
    }
    let mut r = Message::new();
    r.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(q.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(question.clone());
    let addr = match name.as_str() {
        "www.example.com." => Some(WWW),
        "alpine3." => Some(UPSTREAM_ALPINE3),
        _ => None,
    };
    match addr {
        Some(a) if question.query_type() == RecordType::A => {
            r.add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A(a)),
            ));
        }
        Some(_) => {}
        None => {
            r.set_response_code(ResponseCode::NXDomain);
        }
    }
    r.to_vec().ok()
}

impl Upstream {
    async fn start(ns: &NetNs) -> Self {
        let queries = Arc::new(AtomicUsize::new(0));
        let (udp, tcp, silent) = ns
            .run(|| {
                let udp = std::net::UdpSocket::bind(sa(UPSTREAM)).unwrap();
                udp.set_nonblocking(true).unwrap();
                let tcp = std::net::TcpListener::bind(sa(UPSTREAM)).unwrap();
                tcp.set_nonblocking(true).unwrap();
                let silent = std::net::UdpSocket::bind(sa(SILENT)).unwrap();
                silent.set_nonblocking(true).unwrap();
                (udp, tcp, silent)
            })
            .await
            .unwrap();
        let udp = tokio::net::UdpSocket::from_std(udp).unwrap();
        let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
        let silent = tokio::net::UdpSocket::from_std(silent).unwrap();
        let count = queries.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = upstream_answer(&buf[..n]) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let count = queries.clone();
        let tcp_task = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = tcp.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    while s.read_exact(&mut len).await.is_ok() {
                        let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                        if s.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        count.fetch_add(1, Ordering::SeqCst);
                        if let Some(reply) = upstream_answer(&q) {
                            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
                            out.extend_from_slice(&reply);
                            let _ = s.write_all(&out).await;
                        }
                    }
                });
            }
        });
        let silent_task = tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while silent.recv_from(&mut buf).await.is_ok() {}
        });
        Self {
            queries,
            tasks: vec![udp_task, tcp_task, silent_task],
        }
    }

    fn count(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

/// The lab world described at the top of this file.
struct World {
    resolver: Resolver,
    sandboxes: HashMap<&'static str, NetNs>,
    listeners: HashMap<&'static str, Listener>,
    upstream: Upstream,
    host: NetNs,
    lab: Lab,
}

fn endpoint(net: &str, sandbox: &str, name: &str, aliases: &[&str], v4: &str) -> EndpointDns {
    let last = v4.rsplit('.').next().unwrap();
    let second = v4.split('.').nth(1).unwrap();
    EndpointDns {
        network_id: net.into(),
        sandbox_id: sandbox.into(),
        name: name.into(),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        ipv4: Some(v4.parse().unwrap()),
        ipv6: Some(format!("fd00:{second}::{last}").parse().unwrap()),
    }
}

impl World {
    async fn new() -> Self {
        Self::with(|_| {}).await
    }

    async fn with(tune: impl FnOnce(&mut ResolverConfig)) -> Self {
        let lab = Lab::new();
        let host = lab.namespace("host").await.unwrap();
        let internet = lab.namespace("inet").await.unwrap();
        // host -- internet, with wharf's own netlink layer.
        let h = Handle::in_netns(&host).await.unwrap();
        h.link()
            .add(
                LinkSpec::veth("h0")
                    .peer(VethPeer::new("i0").netns(&internet))
                    .up(),
            )
            .await
            .unwrap();
        let h0 = h.link().get("h0").await.unwrap();
        h.address()
            .add(h0.index, "198.51.100.1/24".parse().unwrap())
            .await
            .unwrap();
        let inet = Handle::in_netns(&internet).await.unwrap();
        let i0 = inet.link().get("i0").await.unwrap();
        inet.link().set_up(i0.index).await.unwrap();
        for addr in ["198.51.100.53/24", "198.51.100.54/24"] {
            inet.address()
                .add(i0.index, addr.parse().unwrap())
                .await
                .unwrap();
        }
        let upstream = Upstream::start(&internet).await;

        let mut config = ResolverConfig::new(host.clone(), vec![sa(UPSTREAM)]);
        tune(&mut config);
        let resolver = Resolver::new(config).await.unwrap();
        for (id, name) in [("net-a", "alpine-net"), ("net-b", "other")] {
            resolver
                .upsert_network(
                    NetworkKey {
                        id: id.into(),
                        name: name.into(),
                    },
                    NetworkDns::default(),
                )
                .unwrap();
        }
        resolver
            .upsert_endpoint(endpoint("net-a", "c1", "alpine1", &["web"], "172.18.0.2"))
            .unwrap();
        resolver
            .upsert_endpoint(endpoint("net-a", "c2", "alpine2", &["web"], "172.18.0.3"))
            .unwrap();
        resolver
            .upsert_endpoint(endpoint("net-b", "c3", "alpine3", &[], "172.19.0.2"))
            .unwrap();
        let mut sandboxes = HashMap::new();
        let mut listeners = HashMap::new();
        for sb in ["c1", "c2", "c3"] {
            let ns = lab.namespace(sb).await.unwrap();
            let l = resolver
                .listen(sb, &ns, SandboxDns::default())
                .await
                .unwrap();
            assert_eq!(l.udp_addr(), LISTEN_ADDR);
            sandboxes.insert(sb, ns);
            listeners.insert(sb, l);
        }
        Self {
            resolver,
            sandboxes,
            listeners,
            upstream,
            host,
            lab,
        }
    }

    fn ns(&self, sb: &str) -> &NetNs {
        &self.sandboxes[sb]
    }

    async fn ask(&self, sb: &str, name: &str, rtype: RecordType, t: Transport) -> DnsAnswer {
        probe::dns_query(self.ns(sb), LISTEN_ADDR, name, rtype, t, T)
            .await
            .unwrap_or_else(|e| panic!("{sb}: {e}"))
    }

    async fn a(&self, sb: &str, name: &str) -> (ResponseCode, Vec<IpAddr>) {
        let ans = self.ask(sb, name, RecordType::A, Transport::Udp).await;
        (ans.rcode, ans.addresses)
    }
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_resolve_each_other_on_shared_networks_only() {
    let w = World::new().await;
    let ok = ResponseCode::NoError;
    assert_eq!(w.a("c1", "alpine2").await, (ok, vec![ip("172.18.0.3")]));
    assert_eq!(w.a("c2", "ALPINE1.").await, (ok, vec![ip("172.18.0.2")]));
    assert_eq!(
        w.a("c1", "alpine2.alpine-net").await,
        (ok, vec![ip("172.18.0.3")])
    );
    let aaaa = w
        .ask("c1", "alpine2", RecordType::AAAA, Transport::Udp)
        .await;
    assert_eq!(aaaa.addresses, vec![ip("fd00:18::3")]);
    // The alias shared by alpine1 and alpine2 returns both.
    let (rcode, web) = w.a("c3", "web").await;
    assert_eq!(
        rcode,
        ResponseCode::NXDomain,
        "c3 does not share alpine-net"
    );
    assert!(web.is_empty());
    let (_, web) = w.a("c1", "web").await;
    assert_eq!(sorted(web), vec![ip("172.18.0.2"), ip("172.18.0.3")]);
    // PTR names the container on its network.
    let ptr = w
        .ask(
            "c2",
            "2.0.18.172.in-addr.arpa",
            RecordType::PTR,
            Transport::Udp,
        )
        .await;
    assert_eq!(ptr.names, ["alpine1.alpine-net."]);
    // alpine3 is on a network c1 does not share: not answered locally but forwarded (the
    // upstream's own alpine3 answers), while c3 gets its local one.
    let before = w.upstream.count();
    assert_eq!(
        w.a("c1", "alpine3").await,
        (ok, vec![IpAddr::V4(UPSTREAM_ALPINE3)])
    );
    assert_eq!(w.upstream.count(), before + 1);
    assert_eq!(w.a("c3", "alpine3").await, (ok, vec![ip("172.19.0.2")]));
    assert_eq!(
        w.upstream.count(),
        before + 1,
        "local answers never go upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_names_are_forwarded_over_the_query_transport() {
    let w = World::new().await;
    for t in [Transport::Udp, Transport::Tcp] {
        let ans = w.ask("c1", "www.example.com", RecordType::A, t).await;
        assert_eq!(ans.rcode, ResponseCode::NoError, "{t:?}");
        assert_eq!(ans.addresses, vec![IpAddr::V4(WWW)], "{t:?}");
        assert!(
            ans.message.authoritative(),
            "the upstream's reply passes unchanged"
        );
        let nx = w.ask("c2", "nothing.example", RecordType::A, t).await;
        assert_eq!(nx.rcode, ResponseCode::NXDomain, "{t:?}");
    }
    // Local names over TCP too.
    let ans = w.ask("c2", "web", RecordType::AAAA, Transport::Tcp).await;
    assert_eq!(
        sorted(ans.addresses),
        vec![ip("fd00:18::2"), ip("fd00:18::3")]
    );
    // Other record types of local names go upstream (which has none).
    let before = w.upstream.count();
    let txt = w
        .ask("c1", "alpine2", RecordType::TXT, Transport::Udp)
        .await;
    assert_eq!(txt.rcode, ResponseCode::NXDomain);
    assert_eq!(w.upstream.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_never_delays_local_names() {
    let w = World::with(|c| c.upstream_timeout = PATIENT_TIMEOUT).await;
    let ns = w.ns("c1").clone();
    let started = Instant::now();
    let hanging = tokio::spawn(async move {
        probe::dns_query(
            &ns,
            LISTEN_ADDR,
            "blackhole.example",
            RecordType::A,
            Transport::Udp,
            T * 2,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        assert_eq!(w.a("c1", "alpine2").await.1, vec![ip("172.18.0.3")]);
    }
    // Every local answer came while the forward was still waiting for its upstream.
    assert!(
        !hanging.is_finished(),
        "the forward ended before the local answers"
    );
    let ans = hanging.await.unwrap().unwrap();
    assert_eq!(ans.rcode, ResponseCode::ServFail);
    let waited = started.elapsed();
    assert!(
        waited >= PATIENT_TIMEOUT,
        "SERVFAIL after the upstream timeout, got {waited:?}"
    );
}

/// A silent first upstream is skipped after its timeout (per-sandbox upstreams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_first_upstream_is_skipped_after_its_timeout() {
    let w = World::with(|c| c.upstream_timeout = UPSTREAM_TIMEOUT).await;
    let c4 = w.lab.namespace("c4").await.unwrap();
    w.resolver
        .upsert_endpoint(endpoint("net-a", "c4", "alpine4", &[], "172.18.0.4"))
        .unwrap();
    let _l = w
        .resolver
        .listen(
            "c4",
            &c4,
            SandboxDns {
                upstreams: Some(vec![sa(SILENT), sa(UPSTREAM)]),
            },
        )
        .await
        .unwrap();
    for t in [Transport::Udp, Transport::Tcp] {
        let t0 = Instant::now();
        let ans = probe::dns_query(&c4, LISTEN_ADDR, "www.example.com", RecordType::A, t, T)
            .await
            .unwrap();
        assert_eq!(ans.addresses, vec![IpAddr::V4(WWW)], "{t:?}");
        // Over UDP the silent server costs its timeout; over TCP it refuses at once.
        if t == Transport::Udp {
            assert!(
                t0.elapsed() >= UPSTREAM_TIMEOUT,
                "asked the silent one first"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_changes_apply_to_the_next_query_without_losing_any() {
    let w = World::new().await;
    let ok = ResponseCode::NoError;
    // Connect alpine3 to alpine-net: alpine1 sees it at once, by its alpine-net address.
    w.resolver
        .upsert_endpoint(endpoint("net-a", "c3", "alpine3", &["db"], "172.18.0.9"))
        .unwrap();
    assert_eq!(w.a("c1", "alpine3").await, (ok, vec![ip("172.18.0.9")]));
    assert_eq!(w.a("c3", "alpine1").await, (ok, vec![ip("172.18.0.2")]));
    assert_eq!(w.a("c1", "db").await, (ok, vec![ip("172.18.0.9")]));
    // Alias change.
    w.resolver
        .upsert_endpoint(endpoint("net-a", "c3", "alpine3", &["cache"], "172.18.0.9"))
        .unwrap();
    assert_eq!(w.a("c1", "db").await.0, ResponseCode::NXDomain);
    assert_eq!(w.a("c1", "cache").await, (ok, vec![ip("172.18.0.9")]));
    // Disconnect: forwarded again.
    assert!(w.resolver.remove_endpoint("net-a", "c3"));
    assert_eq!(
        w.a("c1", "alpine3").await,
        (ok, vec![IpAddr::V4(UPSTREAM_ALPINE3)])
    );
    // Sandbox deletion.
    assert_eq!(w.resolver.remove_sandbox("c2"), 1);
    assert_eq!(w.a("c1", "web").await, (ok, vec![ip("172.18.0.2")]));

    // A stream of queries while the table changes under it: every one is answered.
    let ns = w.ns("c1").clone();
    let stream = tokio::spawn(async move {
        let mut answered = 0;
        for _ in 0..300 {
            let ans = probe::dns_query(
                &ns,
                LISTEN_ADDR,
                "alpine1",
                RecordType::A,
                Transport::Udp,
                T,
            )
            .await
            .unwrap();
            assert_eq!(ans.addresses, vec![ip("172.18.0.2")]);
            answered += 1;
        }
        answered
    });
    let mut flips = 0;
    while !stream.is_finished() {
        let ep = endpoint("net-a", "c2", "alpine2", &["web"], "172.18.0.3");
        w.resolver.upsert_endpoint(ep).unwrap();
        w.resolver.remove_endpoint("net-a", "c2");
        flips += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(stream.await.unwrap(), 300);
    assert!(flips > 10, "the table changed {flips} times meanwhile");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_networks_do_not_forward() {
    let w = World::new().await;
    w.resolver
        .upsert_network(
            NetworkKey {
                id: "net-i".into(),
                name: "inner".into(),
            },
            NetworkDns {
                internal: true,
                ..NetworkDns::default()
            },
        )
        .unwrap();
    let c5 = w.lab.namespace("c5").await.unwrap();
    w.resolver
        .upsert_endpoint(endpoint("net-i", "c5", "alpine5", &[], "10.5.0.5"))
        .unwrap();
    let _l = w
        .resolver
        .listen("c5", &c5, SandboxDns::default())
        .await
        .unwrap();
    let before = w.upstream.count();
    let ans = probe::dns_query(
        &c5,
        LISTEN_ADDR,
        "www.example.com",
        RecordType::A,
        Transport::Udp,
        T,
    )
    .await
    .unwrap();
    assert_eq!(ans.rcode, ResponseCode::ServFail);
    assert_eq!(w.upstream.count(), before);
    let ans = probe::dns_query(
        &c5,
        LISTEN_ADDR,
        "alpine5",
        RecordType::A,
        Transport::Udp,
        T,
    )
    .await
    .unwrap();
    assert_eq!(ans.addresses, vec![ip("10.5.0.5")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_agrees() {
    let w = World::new().await;
    let dig = |args: &str| {
        let mut cmd = w.ns("c1").command("dig");
        cmd.args(["@127.0.0.11", "+short", "+time=2", "+tries=1"]);
        cmd.args(args.split_whitespace());
        run(cmd)
    };
    assert_eq!(dig("alpine2").await.trim(), "172.18.0.3");
    assert_eq!(dig("alpine2 AAAA +tcp").await.trim(), "fd00:18::3");
    assert_eq!(dig("-x 172.18.0.3").await.trim(), "alpine2.alpine-net.");
    assert_eq!(dig("www.example.com").await.trim(), "203.0.113.80");
    assert_eq!(dig("www.example.com +tcp").await.trim(), "203.0.113.80");
    let mut web: Vec<String> = dig("web").await.lines().map(str::to_owned).collect();
    web.sort();
    assert_eq!(web, ["172.18.0.2", "172.18.0.3"]);
    // dig's full output: the status line and a clean (warning-free) answer.
    let mut cmd = w.ns("c1").command("dig");
    cmd.args(["@127.0.0.11", "+time=2", "+tries=1", "alpine2.alpine-net"]);
    let full = run(cmd).await;
    assert!(full.contains("status: NOERROR"), "{full}");
    assert!(!full.contains("WARNING"), "{full}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_greedy_clients_do_not_stop_the_server() {
    let w = World::with(|c| {
        c.max_tcp_connections = 3;
        c.tcp_idle_timeout = Duration::from_millis(800);
    })
    .await;
    let ns = w.ns("c1").clone();
    // Garbage over UDP: a FORMERR for anything with a header, nothing for runts.
    let reply = probe::udp_request(
        &ns,
        LISTEN_ADDR,
        &[0xab, 0xcd, 1, 0, 0, 9, 0, 0, 0, 0, 0, 0, 7],
        T,
    )
    .await
    .unwrap();
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!((m.id(), m.response_code()), (0xabcd, ResponseCode::FormErr));
    assert!(
        probe::udp_request(&ns, LISTEN_ADDR, &[1, 2, 3], Duration::from_millis(300))
            .await
            .is_err()
    );
    // An oversized datagram (60 KB) is cut, answered FORMERR, and the server goes on.
    let mut big = vec![0u8; 60_000];
    big[..4].copy_from_slice(&[0x11, 0x22, 1, 0]);
    big[5] = 1;
    let reply = probe::udp_request(&ns, LISTEN_ADDR, &big, T).await.unwrap();
    assert_eq!(
        Message::from_vec(&reply).unwrap().response_code(),
        ResponseCode::FormErr
    );

    // Three idle TCP clients fill the slots; a fourth is closed at once; UDP still answers.
    let held = ns
        .run(|| {
            let held: Vec<_> = (0..3)
                .map(|_| std::net::TcpStream::connect(LISTEN_ADDR).unwrap())
                .collect();
            // Half a length prefix, then nothing.
            std::io::Write::write_all(&mut &held[0], &[0]).unwrap();
            held
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = probe::dns_query(
        &ns,
        LISTEN_ADDR,
        "alpine2",
        RecordType::A,
        Transport::Tcp,
        T,
    )
    .await;
    assert!(
        refused.is_err(),
        "a connection over the limit is closed: {refused:?}"
    );
    assert_eq!(w.a("c1", "alpine2").await.1, vec![ip("172.18.0.3")]);
    // A half-sent TCP query and the idle ones are dropped after the idle timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ans = w.ask("c1", "alpine2", RecordType::A, Transport::Tcp).await;
    assert_eq!(ans.addresses, vec![ip("172.18.0.3")]);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_listener_closes_its_sockets() {
    let mut w = World::new().await;
    let l = w.listeners.remove("c1").unwrap();
    l.stop().await;
    let gone = probe::dns_query(
        w.ns("c1"),
        LISTEN_ADDR,
        "alpine2",
        RecordType::A,
        Transport::Udp,
        Duration::from_millis(500),
    )
    .await;
    assert!(gone.is_err(), "{gone:?}");
    // The address is free again: a new listener binds it.
    let again = w
        .resolver
        .listen("c1", w.ns("c1"), SandboxDns::default())
        .await
        .unwrap();
    assert_eq!(w.a("c1", "alpine2").await.1, vec![ip("172.18.0.3")]);
    // Dropping works as stopping.
    drop(again);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tcp = probe::dns_query(
        w.ns("c1"),
        LISTEN_ADDR,
        "alpine2",
        RecordType::A,
        Transport::Tcp,
        Duration::from_millis(500),
    )
    .await;
    assert!(tcp.is_err(), "{tcp:?}");
    let _ = &w.host;
}

fn wire_query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id)
        .set_recursion_desired(true)
        .add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::from_ascii(name).unwrap(),
            RecordType::A,
        ));
    m.to_vec().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_forward_does_not_hold_up_the_next_query_on_a_tcp_connection() {
    let w = World::with(|c| c.upstream_timeout = UPSTREAM_TIMEOUT).await;
    let replies = w
        .ns("c1")
        .run(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(LISTEN_ADDR).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            for (id, name) in [(1, "blackhole.example"), (2, "alpine2")] {
                let q = wire_query(id, name);
                let mut framed = (q.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&q);
                s.write_all(&framed).unwrap();
            }
            let start = Instant::now();
            (0..2)
                .map(|_| {
                    let mut len = [0u8; 2];
                    s.read_exact(&mut len).unwrap();
                    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    s.read_exact(&mut body).unwrap();
                    (Message::from_vec(&body).unwrap(), start.elapsed())
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
    let (first, _) = &replies[0];
    assert_eq!(
        first.id(),
        2,
        "the local answer overtakes the pending forward"
    );
    let (second, at) = &replies[1];
    assert_eq!(
        (second.id(), second.response_code()),
        (1, ResponseCode::ServFail)
    );
    // The timeout runs from when the forward started, a little before the clock here.
    assert!(
        *at >= UPSTREAM_TIMEOUT - Duration::from_millis(100),
        "{at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_bounded_and_upstreams_can_change() {
    let w = World::with(|c| {
        c.max_forwards = 2;
        c.upstream_timeout = PATIENT_TIMEOUT;
    })
    .await;
    let ns = w.ns("c1").clone();
    // Two queries the upstream never answers take both forwarding slots...
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let ns = ns.clone();
            tokio::spawn(async move {
                probe::dns_query(
                    &ns,
                    LISTEN_ADDR,
                    "blackhole.example",
                    RecordType::A,
                    Transport::Udp,
                    T * 2,
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ... so a third forward fails at once (while those two still wait for their upstream),
    // and local names still answer.
    let third = w
        .ask("c1", "www.example.com", RecordType::A, Transport::Udp)
        .await;
    assert_eq!(third.rcode, ResponseCode::ServFail);
    assert_eq!(w.a("c1", "alpine2").await.1, vec![ip("172.18.0.3")]);
    assert!(
        pending.iter().all(|p| !p.is_finished()),
        "the third failed only because the first two timed out"
    );
    for p in pending {
        assert_eq!(p.await.unwrap().unwrap().rcode, ResponseCode::ServFail);
    }
    // Once the upstream timeout has passed (the probe's own retries may have been answered
    // SERVFAIL sooner), the slots are free again; new default upstreams apply at once.
    tokio::time::sleep(PATIENT_TIMEOUT).await;
    assert_eq!(w.a("c1", "www.example.com").await.1, vec![IpAddr::V4(WWW)]);
    w.resolver.set_upstreams(vec![sa(SILENT)]);
    let ans = w
        .ask("c1", "www.example.com", RecordType::A, Transport::Udp)
        .await;
    assert_eq!(ans.rcode, ResponseCode::ServFail);
}
