//! Benchmarks of the embedded resolver: the query handler in-process (no sockets), and real
//! UDP round trips to a listener in a lab namespace (local and forwarded names). Also prints
//! the heap held by a table of 1000 names and by one listener.
//!
//! Needs root (lab namespaces): `sudo -E cargo bench --bench dns`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

#[path = "common/upstream.rs"]
mod upstream;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use wharf::dns::handler::{self, Action, Context};
use wharf::dns::records::Records;
use wharf::dns::{
    EndpointDns, LISTEN_ADDR, NetworkDns, NetworkKey, Resolver, ResolverConfig, SandboxDns,
    Transport,
};
use wharf::lab::Lab;

/// Counts live heap bytes, to measure what the table and a listener hold.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const NAMES: u32 = 1000;

fn endpoint(i: u32) -> EndpointDns {
    let [_, _, hi, lo] = (0x0a00_0000u32 + 2 + i).to_be_bytes();
    EndpointDns {
        network_id: "net".into(),
        sandbox_id: format!("sandbox-{i:04}-0123456789abcdef0123456789abcdef0123456789abcdef"),
        name: format!("container-{i}"),
        aliases: vec![format!("alias-{i}"), "shared".into()],
        ipv4: Some([10, 0, hi, lo].into()),
        ipv6: Some(format!("fd00::{hi:x}:{lo:x}").parse().unwrap()),
    }
}

fn network() -> (NetworkKey, NetworkDns) {
    (
        NetworkKey {
            id: "net".into(),
            name: "bench-net".into(),
        },
        NetworkDns::default(),
    )
}

fn query(name: &str, rtype: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(7)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    m.to_vec().unwrap()
}

fn handler_benches(c: &mut Criterion) {
    let before = LIVE.load(Ordering::Relaxed);
    let mut records = Records::new();
    let (key, dns) = network();
    records.upsert_network(key, dns).unwrap();
    for i in 0..NAMES {
        records.upsert_endpoint(endpoint(i)).unwrap();
    }
    let table = records.table();
    let held = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "memory: records + table for {NAMES} containers (name, 2 aliases, v4+v6 each): {:.2} MiB",
        held as f64 / (1 << 20) as f64
    );

    let defaults: Arc<[SocketAddr]> = Arc::from(vec!["192.0.2.53:53".parse().unwrap()]);
    let sandbox = endpoint(1).sandbox_id;
    let cx = Context {
        sandbox: &sandbox,
        sandbox_upstreams: None,
        default_upstreams: &defaults,
        transport: Transport::Udp,
        ttl: 600,
        rotate: 0,
    };
    let mut g = c.benchmark_group("handler");
    g.throughput(Throughput::Elements(1));
    for (label, name, rtype) in [
        ("local_a", "container-500", RecordType::A),
        ("local_a_dotted", "Container-500.Bench-Net.", RecordType::A),
        ("local_ptr", "246.1.0.10.in-addr.arpa.", RecordType::PTR),
        ("forward_decision", "www.example.com", RecordType::A),
    ] {
        let q = query(name, rtype);
        g.bench_function(label, |b| {
            b.iter(
                || match handler::handle(&table, &cx, std::hint::black_box(&q)) {
                    Action::Reply(r) => r.len(),
                    Action::Forward(f) => f.question_end,
                    Action::Drop => 0,
                },
            )
        });
    }
    g.finish();
}

fn udp_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let lab = Lab::new();
    let (host, sandbox) = rt.block_on(async {
        (
            lab.namespace("host").await.unwrap(),
            lab.namespace("sandbox").await.unwrap(),
        )
    });
    let up: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let up_sock = rt
        .block_on(host.run(move || {
            let s = UdpSocket::bind(up).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        }))
        .unwrap();
    let _up = rt.spawn(async move {
        upstream::serve(&tokio::net::UdpSocket::from_std(up_sock).unwrap()).await;
    });
    let resolver = rt
        .block_on(Resolver::new(ResolverConfig::new(host.clone(), vec![up])))
        .unwrap();
    let (key, dns) = network();
    resolver.upsert_network(key, dns).unwrap();
    for i in 0..NAMES {
        resolver.upsert_endpoint(endpoint(i)).unwrap();
    }
    let before = LIVE.load(Ordering::Relaxed);
    let listener = rt
        .block_on(resolver.listen(&endpoint(1).sandbox_id, &sandbox, SandboxDns::default()))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    eprintln!(
        "memory: one listener (2 UDP workers, TCP accept loop): {:.1} KiB",
        (LIVE.load(Ordering::Relaxed) - before) as f64 / 1024.0
    );
    let client = rt
        .block_on(sandbox.run(|| {
            let s = UdpSocket::bind("127.0.0.1:0").unwrap();
            s.connect(LISTEN_ADDR).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s
        }))
        .unwrap();
    let mut g = c.benchmark_group("udp_round_trip");
    g.throughput(Throughput::Elements(1));
    for (label, name) in [("local", "container-500"), ("forwarded", "www.example.com")] {
        let q = query(name, RecordType::A);
        let mut buf = [0u8; 1500];
        g.bench_function(label, |b| {
            b.iter(|| {
                client.send(&q).unwrap();
                client.recv(&mut buf).unwrap()
            })
        });
    }
    g.finish();
    drop(listener);
    drop(resolver);
    drop(rt);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = handler_benches, udp_benches
}
criterion_main!(benches);
