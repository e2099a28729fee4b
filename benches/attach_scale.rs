//! Issue 4's speed targets for bridge attach and detach, through the controller, in a lab (needs
//! root). Each target is printed with its measurement and ratio:
//!
//! - **one attach, p50** (target < 2 ms): 50 sandboxes attached and detached one after the other
//!   on an empty network; the median and p90 of `Controller::connect`.
//! - **100 at once** (target <= 50x one attach): 100 sandboxes attached concurrently (one task
//!   each, `join_all`) to an empty network, wall time from the first call to the last answer,
//!   median of 3 rounds, against the median above.
//! - **1000 on one bridge** (target: the 1000th within 1.2x of the 10th): 1000 sandboxes attached
//!   one after the other to one network, every attach timed; each sandbox is created right
//!   before its attach (not timed), so every attach meets the same conditions. The 10th against
//!   the 1000th, each the median of the ten attaches around it.
//! - **100 detaches at once** (target < 3x one detach): one `Controller::disconnect` (median of
//!   the 50 above) against `Controller::disconnect_many` of 100 endpoints (median of 3 rounds),
//!   and the same for `delete_sandbox` against `delete_sandboxes`.
//! - **the kernel alone**: the 1000 attaches done with wharf's kernel layer only (veth with its
//!   peer created in a fresh namespace, enslaved and up in one request; then in the container:
//!   `addrgenmode none`, up, address, default route; the bridge without multicast snooping),
//!   no IPAM, store or DNS; and two controls: the bridge with the kernel's default snooping,
//!   and the container's interface with its IPv6 link-local address (no `addrgenmode none`):
//!   how much of the growth with the bridge's port count is the kernel's.
//!
//! The controller's state lives under the system's temp directory (`TMPDIR=/dev/shm` takes the
//! disk's fsync out of the picture). `sudo -E cargo bench --bench attach_scale`; `SCALE_N`
//! (default 1000), `SCALE_CONCURRENT` (default 100) and `SCALE_KERNEL=0` (skip the kernel-only
//! series) change what runs. Prints a summary; asserts nothing.

// Memory (`rss_kib`) is driver_scale's to report.
#[allow(dead_code)]
#[path = "common/stats.rs"]
mod stats;

use std::time::Instant;

use stats::{env_usize, loadavg, median, ms, pct, report_series, sandboxes};
use wharf::controller::{Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::Lab;
use wharf::sys::rtnl::{Handle, LinkChange, LinkSpec, MacAddr, Route, VethPeer};

/// `k` sandboxes attached to `net`, then detached (`disconnect_many`) and deleted
/// (`delete_sandboxes`) in batches; returns the three wall times.
async fn batch_round(wharf: &Controller, net: &str, prefix: &str, k: usize) -> [f64; 3] {
    let names = sandboxes(wharf, prefix, k).await;
    let t = Instant::now();
    let attached = futures::future::join_all(
        names
            .iter()
            .map(|name| wharf.connect(name, net, EndpointSpec::default())),
    )
    .await;
    let attach = ms(t.elapsed());
    for r in attached {
        r.expect("concurrent attach");
    }
    let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), net)).collect();
    let t = Instant::now();
    for r in wharf.disconnect_many(&pairs).await {
        r.expect("batch detach");
    }
    let detach = ms(t.elapsed());
    // Deleting sandboxes that still have an endpoint: attach them again, untimed.
    for name in &names {
        wharf
            .connect(name, net, EndpointSpec::default())
            .await
            .expect("attach again");
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let t = Instant::now();
    for r in wharf.delete_sandboxes(&refs).await {
        r.expect("batch delete");
    }
    [attach, detach, ms(t.elapsed())]
}

async fn run(lab: &Lab) {
    let n = env_usize("SCALE_N", 1000).max(20);
    let k = env_usize("SCALE_CONCURRENT", 100).max(2);
    let host = lab.namespace("host").await.expect("host namespace");
    let mut config = ControllerConfig::new(lab.temp_dir("state").expect("state dir"))
        .host(host)
        .netns_prefix(lab.netns_prefix());
    config.sandbox_files_dir = lab.temp_dir("files").expect("files dir");
    println!(
        "state directory: {} (TMPDIR={})",
        config.state_dir.display(),
        std::env::var("TMPDIR").unwrap_or_else(|_| "unset".into())
    );
    let wharf = Controller::open(config).await.expect("controller");
    for net in ["seq", "conc"] {
        wharf
            .create_network(NetworkSpec::new(net))
            .await
            .expect("network");
    }
    println!("load average at start: {}", loadavg());

    // One at a time: attach and detach; then sandboxes with an endpoint deleted one by one
    // (apart: a deleted namespace's teardown runs in the kernel's background and would weigh
    // on the next attach).
    let singles = sandboxes(&wharf, "s", 50).await;
    let (mut attach, mut detach, mut delete) = (Vec::new(), Vec::new(), Vec::new());
    for name in &singles {
        let t = Instant::now();
        wharf
            .connect(name, "conc", EndpointSpec::default())
            .await
            .expect("attach");
        attach.push(ms(t.elapsed()));
        let t = Instant::now();
        wharf.disconnect(name, "conc").await.expect("detach");
        detach.push(ms(t.elapsed()));
    }
    for name in &singles {
        wharf
            .connect(name, "conc", EndpointSpec::default())
            .await
            .expect("attach again");
    }
    for name in &singles {
        let t = Instant::now();
        wharf.delete_sandbox(name).await.expect("delete");
        delete.push(ms(t.elapsed()));
    }
    let (one_attach, one_detach, one_delete) = (median(&attach), median(&detach), median(&delete));
    println!(
        "\none attach (Controller::connect, 50 on an empty network): p50 {one_attach:.2} ms, \
         p90 {:.2} ms; target p50 < 2 ms",
        pct(&attach, 0.9)
    );

    // k at once: attach, then detach and delete as batches.
    let rounds: Vec<[f64; 3]> = {
        let mut rounds = Vec::new();
        for round in 0..3 {
            rounds.push(batch_round(&wharf, "conc", &format!("k{round}x"), k).await);
        }
        rounds
    };
    let column = |i: usize| -> (f64, String) {
        let v: Vec<f64> = rounds.iter().map(|r| r[i]).collect();
        let all = v.iter().map(|w| format!("{w:.0}")).collect::<Vec<_>>();
        (median(&v), all.join(", "))
    };
    let (wall, all) = column(0);
    println!(
        "{k} attaches at once: {wall:.1} ms wall (median of 3 rounds: {all}) => {:.1}x one \
         attach ({:.2} ms per attach); target <= 50x",
        wall / one_attach,
        wall / k as f64
    );
    let (wall, all) = column(1);
    println!(
        "{k} detaches at once (disconnect_many): {wall:.1} ms (rounds: {all}), one detach \
         {one_detach:.1} ms (median of 50) => {:.2}x one detach; target < 3x",
        wall / one_detach
    );
    let (wall, all) = column(2);
    println!(
        "{k} sandboxes deleted at once (delete_sandboxes): {wall:.1} ms (rounds: {all}), one \
         delete_sandbox {one_delete:.1} ms => {:.2}x one delete",
        wall / one_delete
    );
    println!("load average: {}", loadavg());

    // n on one bridge, each sandbox made just before its attach.
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("q{i}");
        wharf
            .create_sandbox(SandboxSpec::new(&name))
            .await
            .expect("sandbox");
        let t = Instant::now();
        wharf
            .connect(&name, "seq", EndpointSpec::default())
            .await
            .expect("attach");
        times.push(ms(t.elapsed()));
    }
    report_series("wharf attaches (Controller::connect)", &times);
    println!("load average: {}", loadavg());
    if std::env::var("SCALE_KERNEL").map_or(true, |v| v != "0") {
        let kernel = kernel_only(lab, n, true, false).await;
        report_series(
            "the kernel layer alone (as the driver does it: addrgenmode none in the container, \
             no multicast snooping)",
            &kernel,
        );
        let snooping = kernel_only(lab, n, true, true).await;
        report_series(
            "control: the kernel layer alone, the bridge with multicast snooping (the kernel's \
             default)",
            &snooping,
        );
        let control = kernel_only(lab, n, false, false).await;
        report_series(
            "control: the kernel layer alone, the containers' interfaces with IPv6 link-local",
            &control,
        );
    }
    println!("load average at end: {}", loadavg());
}

/// `n` attaches through the kernel layer only, on a bridge of their own; returns each one's time.
/// With `quiet_ipv6`, the container's interface gets `addrgenmode none` before it goes up, as the
/// bridge driver does for an endpoint without an IPv6 address.
/// With `snooping`, the bridge keeps the kernel's default IGMP/MLD snooping.
async fn kernel_only(lab: &Lab, n: usize, quiet_ipv6: bool, snooping: bool) -> Vec<f64> {
    let tag = match (quiet_ipv6, snooping) {
        (true, false) => "k",
        (true, true) => "m",
        (false, _) => "x",
    };
    let host_ns = lab
        .namespace(&format!("{tag}host"))
        .await
        .expect("host namespace");
    let host = Handle::in_netns(&host_ns).await.expect("host handle");
    // As the driver makes it: MTU and MAC given (the kernel then recomputes neither from the
    // ports on each attach).
    host.link()
        .add(
            LinkSpec::bridge("kbr0")
                .mtu(1500)
                .mac(MacAddr::new([0x02, 0x43, 0, 0, 0, 1]))
                .multicast_snooping(snooping)
                .up(),
        )
        .await
        .expect("bridge");
    let bridge = host.link().get("kbr0").await.expect("bridge").index;
    host.address()
        .add(bridge, "10.94.0.1/16".parse().expect("net"))
        .await
        .expect("bridge address");
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        // Made just before its attach, as the controller series does.
        let c = lab
            .namespace(&format!("{tag}{i}"))
            .await
            .expect("namespace");
        let host_if = format!("kv{i}");
        let n = i as u32 + 2;
        let addr = format!("10.94.{}.{}/16", n >> 8, n & 0xff);
        let t = Instant::now();
        host.link()
            .add(
                LinkSpec::veth(&host_if)
                    .peer(VethPeer::new("eth0").netns(&c))
                    .master(bridge)
                    .up(),
            )
            .await
            .expect("veth");
        let inside = Handle::in_netns(&c).await.expect("container handle");
        let eth0 = inside.link().get("eth0").await.expect("eth0").index;
        if quiet_ipv6 {
            inside
                .link()
                .set(eth0, LinkChange::new().no_ipv6_addr_gen())
                .await
                .expect("addrgenmode none");
        }
        inside.link().set_up(eth0).await.expect("up");
        inside
            .address()
            .add(eth0, addr.parse().expect("net"))
            .await
            .expect("address");
        inside
            .route()
            .add(Route::default_v4("10.94.0.1".parse().expect("ip")).oif(eth0))
            .await
            .expect("route");
        times.push(ms(t.elapsed()));
    }
    times
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("attach_scale: run with `cargo bench --bench attach_scale`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lab = Lab::new();
    rt.block_on(run(&lab));
    drop(lab);
}
