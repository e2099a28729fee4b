//! Attach and detach per driver, through the controller, in a lab (needs root): one endpoint,
//! 100 at once, and the 1000th on one network; plus the controller's resident memory per
//! attached endpoint.
//!
//! For each driver (`bridge`; `macvlan` on a veth parent; `overlay` on a one-host cluster whose
//! store is an `EmbeddedStore` on disk, attachable and not internal, so every attach also
//! connects the sandbox to `wharf_gwbridge` as Docker does):
//!
//! - **one**: 20 sandboxes attached and detached one after the other on an empty network: the
//!   median attach and detach.
//! - **100 at once**: 100 sandboxes attached concurrently (one task each), wall time from the
//!   first call to the last answer, as a multiple of one attach (median of 3 rounds).
//! - **1000 on one network**: 1000 sandboxes attached one after the other, every attach timed:
//!   the 10th against the 1000th (each the median of the ten around it). Then, with the 1000 in
//!   place, 20 more sandboxes attached and detached: attach and detach with 1000 endpoints
//!   already on the network.
//! - **memory**: the process's resident memory before and after the 1000 attaches (sandboxes
//!   created before), divided by 1000: what one endpoint costs the controller (its record, IPAM
//!   bit, DNS entries and listener, and its share of driver state). Also reported with the
//!   sandbox itself (its namespace handle and netlink connection). Target (issue 10): under
//!   16 KiB per endpoint. An overlay attach makes two endpoints (the overlay's and the one on
//!   `wharf_gwbridge`). Only the first driver of a run measures memory from a fresh heap: the
//!   later ones reuse what the earlier ones freed, so run a driver alone
//!   (`SCALE_DRIVERS=overlay`) for its own figure.
//!
//! Sandboxes are created outside the timing. `sudo -E cargo bench --bench driver_scale`;
//! `SCALE_DRIVERS` (default `bridge,macvlan,overlay`), `SCALE_N` (default 1000) and
//! `SCALE_CONCURRENT` (default 100) change what runs. Prints a summary; asserts nothing.

#[path = "common/stats.rs"]
mod stats;

use std::sync::Arc;
use std::time::Instant;

use stats::{env_usize, loadavg, median, ms, report_series, rss_kib, sandboxes};
use wharf::controller::{ClusterConfig, Controller, ControllerConfig, EndpointSpec, NetworkSpec};
use wharf::driver::{DriverOptions, MacvlanOptions, OverlayOptions};
use wharf::ipam::IpamConfig;
use wharf::lab::Lab;
use wharf::store::{EmbeddedStore, Store};
use wharf::sys::rtnl::{Handle, LinkSpec, VethPeer};

const NETWORK: &str = "scale-net";

/// A controller in a lab of its own with `NETWORK` created for `driver`.
async fn world(lab: &Lab, driver: &str) -> Controller {
    let ipam =
        |subnet: &str| IpamConfig::new().with_subnet(subnet.parse().expect("a subnet literal"));
    let (host, spec, cluster) = match driver {
        "bridge" => (
            lab.namespace("host").await.expect("host namespace"),
            NetworkSpec::new(NETWORK),
            None,
        ),
        "macvlan" => {
            let host = lab.namespace("host").await.expect("host namespace");
            let h = Handle::in_netns(&host).await.expect("host handle");
            h.link()
                .add(
                    LinkSpec::veth("uplink0")
                        .peer(VethPeer::new("uplink0-peer"))
                        .up(),
                )
                .await
                .expect("macvlan parent");
            let spec = NetworkSpec::new(NETWORK)
                .driver(DriverOptions::Macvlan(MacvlanOptions::parent("uplink0")))
                .ipam(ipam("10.99.0.0/16"));
            (host, spec, None)
        }
        "overlay" => {
            let hosts = lab.underlay(&["host"]).await.expect("underlay");
            let (host, addr) = hosts.into_iter().next().expect("one host");
            let dir = lab.temp_dir("cluster-store").expect("store dir");
            let store: Arc<dyn Store> = Arc::new(
                EmbeddedStore::open(dir.join("cluster.redb"))
                    .await
                    .expect("cluster store"),
            );
            let spec = NetworkSpec::new(NETWORK)
                .driver(DriverOptions::Overlay(OverlayOptions::default()))
                .ipam(ipam("10.200.0.0/16"))
                .attachable();
            (
                host,
                spec,
                Some(ClusterConfig::new(store, "host", addr.into())),
            )
        }
        other => panic!("unknown driver {other:?} in SCALE_DRIVERS (bridge, macvlan, overlay)"),
    };
    let mut config = ControllerConfig::new(lab.temp_dir("state").expect("state dir"))
        .host(host)
        .netns_prefix(lab.netns_prefix());
    config.sandbox_files_dir = lab.temp_dir("files").expect("files dir");
    if let Some(cluster) = cluster {
        config = config.cluster(cluster);
    }
    let wharf = Controller::open(config).await.expect("controller");
    wharf.create_network(spec).await.expect("network");
    wharf
}

/// Attaches and detaches each sandbox in turn; returns the attach and detach times.
async fn one_by_one(wharf: &Controller, names: &[String]) -> (Vec<f64>, Vec<f64>) {
    let (mut attach, mut detach) = (Vec::new(), Vec::new());
    for name in names {
        let t = Instant::now();
        wharf
            .connect(name, NETWORK, EndpointSpec::default())
            .await
            .expect("attach");
        attach.push(ms(t.elapsed()));
        let t = Instant::now();
        wharf.disconnect(name, NETWORK).await.expect("detach");
        detach.push(ms(t.elapsed()));
    }
    (attach, detach)
}

async fn run(driver: &str, n: usize, k: usize) {
    let lab = Lab::new();
    let wharf = world(&lab, driver).await;
    println!("\n== {driver} (load average {})", loadavg());

    let singles = sandboxes(&wharf, "s", 20).await;
    let (attach, detach) = one_by_one(&wharf, &singles).await;
    let one = median(&attach);
    println!(
        "{driver}: one attach {one:.2} ms, one detach {:.2} ms (medians of 20, empty network)",
        median(&detach)
    );

    let mut walls = Vec::new();
    for round in 0..3 {
        let names = sandboxes(&wharf, &format!("k{round}x"), k).await;
        let t = Instant::now();
        let results = futures::future::join_all(
            names
                .iter()
                .map(|name| wharf.connect(name, NETWORK, EndpointSpec::default())),
        )
        .await;
        walls.push(ms(t.elapsed()));
        for r in results {
            r.expect("concurrent attach");
        }
        for name in &names {
            wharf.delete_sandbox(name).await.expect("cleanup");
        }
    }
    let wall = median(&walls);
    println!(
        "{driver}: {k} attaches at once {wall:.1} ms wall (median of 3 rounds) => {:.1}x one \
         attach; target <= 50x",
        wall / one
    );

    let rss_start = rss_kib();
    let names = sandboxes(&wharf, "q", n).await;
    let rss_sandboxes = rss_kib();
    let mut times = Vec::with_capacity(n);
    for name in &names {
        let t = Instant::now();
        wharf
            .connect(name, NETWORK, EndpointSpec::default())
            .await
            .expect("attach");
        times.push(ms(t.elapsed()));
    }
    let rss_attached = rss_kib();
    report_series(&format!("{driver}: attaches"), &times);
    let (attach, detach) = one_by_one(&wharf, &singles).await;
    println!(
        "{driver}: with {n} endpoints on the network, one attach {:.2} ms, one detach {:.2} ms \
         (medians of 20)",
        median(&attach),
        median(&detach)
    );
    let per = |kib: u64| kib as f64 / n as f64;
    println!(
        "{driver}: resident memory {rss_start} KiB -> {rss_sandboxes} KiB with {n} sandboxes -> \
         {rss_attached} KiB attached: {:.1} KiB per endpoint (target < 16), {:.1} KiB per \
         sandbox and endpoint",
        per(rss_attached.saturating_sub(rss_sandboxes)),
        per(rss_attached.saturating_sub(rss_start))
    );
    drop(wharf);
    drop(lab);
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("driver_scale: run with `cargo bench --bench driver_scale`");
        return;
    }
    let n = env_usize("SCALE_N", 1000).max(20);
    let k = env_usize("SCALE_CONCURRENT", 100).max(1);
    let drivers =
        std::env::var("SCALE_DRIVERS").unwrap_or_else(|_| "bridge,macvlan,overlay".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for driver in drivers.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        rt.block_on(run(driver, n, k));
    }
}
