//! How bridge attach scales (issue 4's targets), through the controller, in a lab (needs root).
//!
//! - **1000 on one bridge**: 1000 sandboxes attached one after the other to one network; every
//!   attach is timed. Compares the 10th with the 1000th (each as the median of the ten attaches
//!   around it, so one scheduler hiccup does not decide). Target: the 1000th within 1.2x of the
//!   10th.
//! - **100 at once**: 100 sandboxes attached concurrently (one task each, `join_all`) to an
//!   empty network, wall time from the first call to the last answer, against the median of 20
//!   single attaches to that network. Target: within 50x of one attach.
//!
//! - **the kernel alone**: the same 1000 attaches done with wharf's kernel layer only (veth with
//!   its peer created in a fresh namespace, enslaved and up in one request; then in the
//!   container: up, address, default route), no IPAM, store or DNS: how much of the growth
//!   with the bridge's port count is the kernel's.
//!
//! Sandboxes are created outside the timing. The controller's state lives under the system's
//! temp directory (set `TMPDIR=/dev/shm` to take the disk's fsync out of the picture and see
//! how much of an attach it is).
//!
//! `sudo -E cargo bench --bench attach_scale`; `SCALE_N` (default 1000) and `SCALE_CONCURRENT`
//! (default 100) change the sizes. Prints a summary; asserts nothing.

use std::time::{Duration, Instant};

use wharf::controller::{Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::Lab;
use wharf::sys::rtnl::{Handle, LinkChange, LinkSpec, Route, VethPeer};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn sandboxes(wharf: &Controller, prefix: &str, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}{i}");
        wharf
            .create_sandbox(SandboxSpec::new(&name))
            .await
            .expect("sandbox");
        names.push(name);
    }
    names
}

async fn run(lab: &Lab) {
    let n = env_usize("SCALE_N", 1000).max(20);
    let k = env_usize("SCALE_CONCURRENT", 100).max(1);
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

    // 100 at once, against single attaches to the same (empty) network.
    let singles = sandboxes(&wharf, "s", 20).await;
    let mut one = Vec::new();
    for name in &singles {
        let t = Instant::now();
        wharf
            .connect(name, "conc", EndpointSpec::default())
            .await
            .expect("attach");
        one.push(ms(t.elapsed()));
        wharf.disconnect(name, "conc").await.expect("detach");
    }
    let one_median = median(&one);
    let mut walls = Vec::new();
    for round in 0..3 {
        let names = sandboxes(&wharf, &format!("k{round}x"), k).await;
        let t = Instant::now();
        let results = futures::future::join_all(
            names
                .iter()
                .map(|name| wharf.connect(name, "conc", EndpointSpec::default())),
        )
        .await;
        let wall = ms(t.elapsed());
        for r in results {
            r.expect("concurrent attach");
        }
        walls.push(wall);
        for name in &names {
            wharf.delete_sandbox(name).await.expect("cleanup");
        }
    }
    let wall = median(&walls);
    println!(
        "\n{k} attaches at once: {wall:.1} ms wall (median of 3 rounds: {}), one attach {one_median:.2} ms \
         (median of 20) => {:.1}x one attach ({:.2} ms per attach); target <= 50x",
        walls
            .iter()
            .map(|w| format!("{w:.0}"))
            .collect::<Vec<_>>()
            .join(", "),
        wall / one_median,
        wall / k as f64
    );
    println!("load average: {}", loadavg());

    // 1000 on one bridge.
    let names = sandboxes(&wharf, "q", n).await;
    let mut times = Vec::with_capacity(n);
    for name in &names {
        let t = Instant::now();
        wharf
            .connect(name, "seq", EndpointSpec::default())
            .await
            .expect("attach");
        times.push(ms(t.elapsed()));
    }
    report_series("wharf attaches (Controller::connect)", &times);
    println!("load average: {}", loadavg());
    if std::env::var("SCALE_KERNEL").map_or(true, |v| v != "0") {
        let kernel = kernel_only(lab, n, true).await;
        report_series(
            "the kernel layer alone (as the driver does it: no IPv6 link-local in the container)",
            &kernel,
        );
        let control = kernel_only(lab, n, false).await;
        report_series(
            "control: the kernel layer alone with IPv6 link-local addresses in the containers",
            &control,
        );
    }
    println!("load average at end: {}", loadavg());
}

/// `n` attaches through the kernel layer only, on a bridge of their own; returns each one's time.
/// With `ipv6_off`, the container's interface gets `addrgenmode none` before it goes up, as the
/// bridge driver does for an endpoint without an IPv6 address.
async fn kernel_only(lab: &Lab, n: usize, ipv6_off: bool) -> Vec<f64> {
    let tag = if ipv6_off { "k" } else { "x" };
    let host_ns = lab
        .namespace(&format!("{tag}host"))
        .await
        .expect("host namespace");
    let host = Handle::in_netns(&host_ns).await.expect("host handle");
    host.link()
        .add(LinkSpec::bridge("kbr0").up())
        .await
        .expect("bridge");
    let bridge = host.link().get("kbr0").await.expect("bridge").index;
    host.address()
        .add(bridge, "10.94.0.1/16".parse().expect("net"))
        .await
        .expect("bridge address");
    let mut containers = Vec::with_capacity(n);
    for i in 0..n {
        containers.push(
            lab.namespace(&format!("{tag}{i}"))
                .await
                .expect("namespace"),
        );
    }
    let mut times = Vec::with_capacity(n);
    for (i, c) in containers.iter().enumerate() {
        let host_if = format!("kv{i}");
        let n = i as u32 + 2;
        let addr = format!("10.94.{}.{}/16", n >> 8, n & 0xff);
        let t = Instant::now();
        host.link()
            .add(
                LinkSpec::veth(&host_if)
                    .peer(VethPeer::new("eth0").netns(c))
                    .master(bridge)
                    .up(),
            )
            .await
            .expect("veth");
        let inside = Handle::in_netns(c).await.expect("container handle");
        let eth0 = inside.link().get("eth0").await.expect("eth0").index;
        if ipv6_off {
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

fn report_series(what: &str, times: &[f64]) {
    let n = times.len();
    let around = |i: usize| median(&times[i.saturating_sub(5)..(i + 5).min(n)]);
    let (tenth, last) = (around(9), around(n - 1));
    println!(
        "\n{what}, {n} on one bridge: the 10th {:.2} ms (median of attaches 5-14: {tenth:.2}), \
         the {n}th {:.2} ms (median of the last ten: {last:.2}) => {:.2}x; target <= 1.2x",
        times[9],
        times[n - 1],
        last / tenth
    );
    for (from, to) in [(0, 100), (n / 2 - 50, n / 2 + 50), (n - 100, n)] {
        let w = &times[from..to];
        println!(
            "  attaches {}-{}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            from + 1,
            to,
            median(w),
            pct(w, 0.9),
            pct(w, 1.0)
        );
    }
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
