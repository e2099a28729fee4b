//! Overlay convergence across hosts, in a lab (needs root).
//!
//! Two hosts on one underlay, each with its own controller, sharing one cluster store: an
//! `EmbeddedStore` (redb on disk, every commit fsynced), or a real etcd on loopback
//! (`WHARF_BENCH_STORE=etcd cargo bench --features etcd --bench overlay`; Debian's
//! `etcd-server`).
//! Host B has a container on the overlay. Each iteration starts a container on host A and
//! measures, from the start of `connect` on A:
//!
//! - `connect`: until `Controller::connect` returns on A (cluster IPAM, veth, local and cluster
//!   records, all fsynced);
//! - `programmed`: until host B's kernel holds the new endpoint's FDB and neighbour entries
//!   (B's watcher saw the record and programmed it), polled every 100 µs;
//! - `reachable`: until a ping from B's container to the new one, sent once B is programmed,
//!   gets its reply.
//!
//! (The ping is sent only once B is programmed: a ping sent earlier makes the container's
//! kernel wait for its ARP retransmission timer, one second, which would measure that timer
//! rather than wharf.)
//!
//! Prints p50, p99 and max of each over `ITERATIONS` joins. Target: `reachable` p99 < 50 ms.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf::controller::{
    ClusterConfig, Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec,
};
use wharf::driver::{DriverOptions, OverlayOptions};
use wharf::lab::{Lab, probe};
use wharf::store::{EmbeddedStore, Store};
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, NeighState};

const ITERATIONS: usize = 200;

async fn controller(
    lab: &Lab,
    role: &str,
    ns: NetNs,
    addr: std::net::Ipv4Addr,
    store: Arc<dyn Store>,
) -> Controller {
    let mut config =
        ControllerConfig::new(lab.temp_dir(&format!("{role}-state")).expect("state dir"))
            .host(ns)
            .netns_prefix(format!("{}{role}-", lab.netns_prefix()))
            .cluster(ClusterConfig::new(store, role, IpAddr::V4(addr)));
    config.sandbox_files_dir = lab.temp_dir(&format!("{role}-files")).expect("files dir");
    Controller::open(config).await.expect("controller")
}

/// Whether B's overlay namespace holds a permanent neighbour entry for `ip` on `vxlan0`.
async fn programmed(h: &Handle, vxlan: u32, ip: IpAddr) -> bool {
    h.neigh()
        .list()
        .await
        .expect("neighbours")
        .iter()
        .any(|n| n.index == vxlan && n.ip == ip && n.state == NeighState::Permanent)
}

/// Keeps the etcd server of an etcd run alive (it is killed on drop).
#[derive(Default)]
struct StoreGuard {
    #[cfg(feature = "etcd")]
    _etcd: Option<wharf::lab::etcd::EtcdServer>,
}

/// The cluster store: a real etcd on loopback when built with `--features etcd` and
/// `WHARF_BENCH_STORE=etcd`, else an `EmbeddedStore` on disk.
async fn cluster_store(lab: &Lab) -> (Arc<dyn Store>, StoreGuard) {
    #[cfg(feature = "etcd")]
    if std::env::var("WHARF_BENCH_STORE").is_ok_and(|v| v == "etcd") {
        use wharf::lab::etcd::EtcdServer;
        use wharf::store::{EtcdOptions, EtcdStore};
        let server = EtcdServer::start().await.expect("etcd server on loopback");
        let store = EtcdStore::connect(
            &server.endpoints(),
            EtcdOptions::default().with_namespace("wharf-bench/"),
        )
        .await
        .expect("etcd client");
        println!("cluster store: etcd at {}", server.endpoint());
        return (
            Arc::new(store),
            StoreGuard {
                _etcd: Some(server),
            },
        );
    }
    let dir = lab.temp_dir("cluster-store").expect("store dir");
    let store = EmbeddedStore::open(dir.join("cluster.redb"))
        .await
        .expect("cluster store");
    println!("cluster store: embedded (redb, fsynced)");
    (Arc::new(store), StoreGuard::default())
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "overlay/{what:<11} n={} p50={:>8.2?} p99={:>8.2?} max={:>8.2?}",
        samples.len(),
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
}

async fn run() {
    let lab = Lab::new();
    let hosts = lab.underlay(&["host-a", "host-b"]).await.expect("underlay");
    let (store, _etcd) = cluster_store(&lab).await;
    let a = controller(
        &lab,
        "host-a",
        hosts[0].0.clone(),
        hosts[0].1,
        store.clone(),
    )
    .await;
    let b = controller(
        &lab,
        "host-b",
        hosts[1].0.clone(),
        hosts[1].1,
        store.clone(),
    )
    .await;
    let net = a
        .create_network(
            NetworkSpec::new("bench-net")
                .driver(DriverOptions::Overlay(OverlayOptions::default()))
                .attachable(),
        )
        .await
        .expect("overlay");
    b.create_sandbox(SandboxSpec::new("watcher"))
        .await
        .expect("sandbox");
    b.connect("watcher", "bench-net", EndpointSpec::default())
        .await
        .expect("connect on B");
    let b_ns = b.sandbox_netns("watcher").expect("B's container");
    let ov = NetNs::open(&format!(
        "{}host-b-ov-{}",
        lab.netns_prefix(),
        &net.id[..12]
    ))
    .expect("B's overlay namespace");
    let h = Handle::in_netns(&ov).await.expect("handle");
    let vxlan = h.link().get("vxlan0").await.expect("vxlan0").index;

    let (mut connect, mut prog, mut reach) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..ITERATIONS {
        let name = format!("c{i}");
        a.create_sandbox(SandboxSpec::new(&name))
            .await
            .expect("sandbox");
        let start = Instant::now();
        let ep = a
            .connect(&name, "bench-net", EndpointSpec::default())
            .await
            .expect("connect on A");
        connect.push(start.elapsed());
        let ip = IpAddr::V4(ep.ipv4.expect("address"));
        while !programmed(&h, vxlan, ip).await {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "B never learnt {ip}"
            );
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        prog.push(start.elapsed());
        probe::ping(&b_ns, ip, Duration::from_secs(2))
            .await
            .expect("B reaches the new container");
        reach.push(start.elapsed());
        a.delete_sandbox(&name).await.expect("cleanup");
    }
    report("connect", connect);
    report("programmed", prog);
    report("reachable", reach);
    drop((a, b));
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that excludes this bench skips it.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "overlay".contains(a.as_str())) {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
