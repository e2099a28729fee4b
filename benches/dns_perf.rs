//! Load test of the embedded resolver with `dnsperf` (Debian's `dnsperf` package), in a lab, side
//! by side with aardvark-dns (Debian's `aardvark-dns`, netavark's resolver) in the same run.
//!
//! wharf: a resolver with 1000 container names listens in a sandbox namespace; a minimal upstream
//! runs on the loopback of the lab's host namespace. dnsperf, run inside the sandbox, measures the
//! throughput of local and forwarded names and the latency percentiles at a fixed rate.
//!
//! aardvark-dns: the same 1000 names in its config directory, listening on `10.89.0.1:53` on the
//! loopback of a namespace of its own, where dnsperf sends from `10.89.0.2` (a container of the
//! network, so that its names are visible) and the same minimal upstream answers on
//! `10.89.0.53:53` (aardvark forwards to the `/etc/resolv.conf` it sees, which is
//! `/etc/netns/<ns>/resolv.conf` under `ip netns exec`). aardvark-dns forks into the background;
//! the bench kills it by the pid it writes.
//!
//! All traffic stays on the lab namespaces' loopbacks. Prints a summary with the ratios, the
//! servers' CPU per query and memory, and the load average; asserts nothing.
//!
//! `sudo -E cargo bench --bench dns_perf` (skips itself when dnsperf is not installed, and the
//! aardvark-dns half when aardvark-dns is not). `DNS_PERF_SECONDS` sets the length of each run
//! (default 8).

#[path = "common/upstream.rs"]
mod upstream;

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use wharf::dns::{EndpointDns, NetworkDns, NetworkKey, Resolver, ResolverConfig, SandboxDns};
use wharf::lab::Lab;
use wharf::sys::NetNs;

const NAMES: u32 = 1000;
const AARDVARK: &str = "/usr/lib/podman/aardvark-dns";
/// aardvark-dns's side: its listening address, dnsperf's source (a container), the upstream.
const AARD_LISTEN: &str = "10.89.0.1";
const AARD_CLIENT: &str = "10.89.0.2";
const AARD_UPSTREAM: &str = "10.89.0.53";

/// The DNS server under test, as dnsperf sees it.
struct Target {
    ns: NetNs,
    server: &'static str,
    source: Option<&'static str>,
}

fn dnsperf(target: &Target, file: &str, extra: &[&str]) -> String {
    let seconds = std::env::var("DNS_PERF_SECONDS").unwrap_or_else(|_| "8".into());
    let mut cmd = target.ns.command("dnsperf");
    cmd.args(["-s", target.server, "-d", file, "-l", &seconds, "-t", "2"]);
    if let Some(a) = target.source {
        cmd.args(["-a", a]);
    }
    cmd.args(extra);
    let out = cmd.output().expect("running dnsperf");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn summary(out: &str) -> String {
    out.lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("Queries sent")
                || l.starts_with("Queries completed")
                || l.starts_with("Queries lost")
                || l.starts_with("Response codes")
                || l.starts_with("Queries per second")
                || l.starts_with("Average Latency")
                || l.starts_with("Latency StdDev")
        })
        .map(|l| format!("    {}\n", l.trim()))
        .collect()
}

/// p50/p99/max of the per-query latencies dnsperf prints with `-v`, and the p99 in ms.
fn percentiles(out: &str) -> (String, f64) {
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if lat.is_empty() {
        return ("    no per-query latencies\n".into(), f64::NAN);
    }
    lat.sort_by(f64::total_cmp);
    let at = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1e3;
    (
        format!(
            "    {} queries: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms\n",
            lat.len(),
            at(0.5),
            at(0.99),
            at(0.999),
            at(1.0)
        ),
        at(0.99),
    )
}

/// CPU time (user + system, in seconds) of a whole process, all threads.
fn cpu_of_pid(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let t = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (t(11) + t(12)) as f64 / 100.0
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: &str, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(f64::NAN)
}

fn qps(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// aardvark-dns, started in the background in a lab namespace; killed on drop.
struct Aardvark {
    pid: u32,
}

impl Aardvark {
    /// Writes the config (the gateway, the dnsperf client and the 1000 names), points the
    /// namespace's resolv.conf at the upstream, and starts `aardvark-dns -p 53 run`.
    fn start(lab: &Lab, ns: &NetNs, dir: &std::path::Path) -> Result<Self, String> {
        let ns_name = ns.name().ok_or("unnamed namespace")?.to_owned();
        for a in [AARD_LISTEN, AARD_CLIENT, AARD_UPSTREAM] {
            let st = Command::new("ip")
                .args([
                    "-n",
                    &ns_name,
                    "addr",
                    "add",
                    &format!("{a}/32"),
                    "dev",
                    "lo",
                ])
                .status()
                .map_err(|e| e.to_string())?;
            if !st.success() {
                return Err(format!("adding {a} to lo in {ns_name}"));
            }
        }
        // `ip netns exec` bind-mounts this over /etc/resolv.conf for aardvark-dns (and the lab
        // removes /etc/netns/<its namespaces> on drop).
        let etc = std::path::Path::new("/etc/netns").join(&ns_name);
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {AARD_UPSTREAM}\n"),
        )
        .map_err(|e| e.to_string())?;
        let mut conf = format!("{AARD_LISTEN}\n{:064x} {AARD_CLIENT}  dnsperf-client\n", 1);
        for i in 0..NAMES {
            let [_, _, hi, lo] = (0x0a00_0002u32 + i).to_be_bytes();
            let _ = writeln!(
                conf,
                "{:064x} 10.0.{hi}.{lo}  container-{i},alias-{i}",
                i + 2
            );
        }
        let config = dir.join("aardvark");
        std::fs::create_dir_all(&config).map_err(|e| e.to_string())?;
        std::fs::write(config.join("perf-net"), conf).map_err(|e| e.to_string())?;
        let _ = lab; // the namespace and `dir` belong to the lab
        let out = Command::new("ip")
            .args(["netns", "exec", &ns_name, AARDVARK, "--config"])
            .arg(&config)
            .args(["-p", "53", "run"])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "aardvark-dns run: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pid = std::fs::read_to_string(config.join("aardvark.pid"))
            .map_err(|e| format!("aardvark.pid: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("aardvark.pid: {e}"))?;
        Ok(Self { pid })
    }
}

impl Drop for Aardvark {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.pid) {
            // SAFETY: kill(2) on the pid of the daemon this bench started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// CPU time (user + system, in seconds) of this process's threads whose name starts with
/// `prefix`, from /proc/self/task/*/stat.
fn cpu_of(prefix: &str) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the command.
        let t = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        total += t(11) + t(12);
    }
    total as f64 / tick
}

fn completed(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Queries completed:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("dns_perf: run with `cargo bench --bench dns_perf`");
        return;
    }
    if Command::new("dnsperf").arg("-h").output().is_err() {
        println!("dns_perf: dnsperf is not installed (apt-get install dnsperf); skipped");
        return;
    }
    let with_aardvark = std::path::Path::new(AARDVARK).exists();
    if !with_aardvark {
        println!("dns_perf: {AARDVARK} not found (apt-get install aardvark-dns); wharf alone");
    }
    let load_before = loadavg();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("resolver")
        .enable_all()
        .build()
        .unwrap();
    // The upstream runs on a runtime of its own, so its CPU is not counted as the resolver's.
    let up_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("upstream")
        .enable_all()
        .build()
        .unwrap();
    let lab = Lab::new();
    let dir = lab.temp_dir("perf").unwrap();
    let (host, sandbox, aard_ns) = rt.block_on(async {
        (
            lab.namespace("host").await.unwrap(),
            lab.namespace("sandbox").await.unwrap(),
            lab.namespace("aardvark").await.unwrap(),
        )
    });
    let bind_upstream = |ns: &NetNs, addr: SocketAddr| {
        let sock = rt
            .block_on(ns.run(move || {
                let s = UdpSocket::bind(addr).unwrap();
                s.set_nonblocking(true).unwrap();
                s
            }))
            .unwrap();
        let _g = up_rt.enter();
        std::sync::Arc::new(tokio::net::UdpSocket::from_std(sock).unwrap())
    };
    let up: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let up_sock = bind_upstream(&host, up);
    for _ in 0..2 {
        up_rt.spawn({
            let sock = up_sock.clone();
            async move { upstream::serve(&sock).await }
        });
    }

    // aardvark-dns first, so that its forks do not copy the resolver's memory.
    let aardvark = if with_aardvark {
        // Its upstream answers on port 53 of its namespace's loopback (added by `start`).
        match Aardvark::start(&lab, &aard_ns, &dir) {
            Ok(a) => {
                let aard_up = bind_upstream(
                    &aard_ns,
                    SocketAddr::new(AARD_UPSTREAM.parse().unwrap(), 53),
                );
                for _ in 0..2 {
                    up_rt.spawn({
                        let sock = aard_up.clone();
                        async move { upstream::serve(&sock).await }
                    });
                }
                Some(a)
            }
            Err(e) => {
                println!("dns_perf: aardvark-dns: {e}; wharf alone");
                None
            }
        }
    } else {
        None
    };

    let rss_before = status_kib("self", "VmRSS");
    let resolver = rt
        .block_on(Resolver::new(ResolverConfig::new(host.clone(), vec![up])))
        .unwrap();
    resolver
        .upsert_network(
            NetworkKey {
                id: "net".into(),
                name: "perf-net".into(),
            },
            NetworkDns::default(),
        )
        .unwrap();
    for i in 0..NAMES {
        let [_, _, hi, lo] = (0x0a00_0002u32 + i).to_be_bytes();
        resolver
            .upsert_endpoint(EndpointDns {
                network_id: "net".into(),
                sandbox_id: format!("sandbox-{i}"),
                name: format!("container-{i}"),
                aliases: vec![format!("alias-{i}")],
                ipv4: Some([10, 0, hi, lo].into()),
                ipv6: None,
            })
            .unwrap();
    }
    let _listener = rt
        .block_on(resolver.listen("sandbox-1", &sandbox, SandboxDns::default()))
        .unwrap();

    let rss_names = status_kib("self", "VmRSS") - rss_before;
    let local = dir.join("local.txt");
    let forwarded = dir.join("forwarded.txt");
    let mut l = String::new();
    let mut f = String::new();
    for i in 0..NAMES {
        let _ = writeln!(l, "container-{i} A");
        let _ = writeln!(f, "host-{i}.example.com A");
    }
    std::fs::write(&local, l).unwrap();
    std::fs::write(&forwarded, f).unwrap();
    let (local, forwarded) = (local.to_str().unwrap(), forwarded.to_str().unwrap());
    std::thread::sleep(Duration::from_millis(100));

    let wharf = Target {
        ns: sandbox.clone(),
        server: "127.0.0.11",
        source: None,
    };
    let aard = aardvark.as_ref().map(|a| {
        (
            Target {
                ns: aard_ns.clone(),
                server: AARD_LISTEN,
                source: Some(AARD_CLIENT),
            },
            a.pid,
        )
    });
    // The server's CPU time so far: the resolver's threads, or the aardvark-dns process.
    let cpu = |who: Option<u32>| who.map_or_else(|| cpu_of("resolver"), cpu_of_pid);

    let mut report = String::new();
    let mut loads = Vec::new();
    // (label, wharf q/s, aardvark q/s, wharf us/query, aardvark us/query)
    let mut max_rate = Vec::new();
    for (label, file) in [("local names", local), ("forwarded names", forwarded)] {
        let mut row = (label, 0.0, f64::NAN, 0.0, f64::NAN);
        let servers: Vec<(&str, &Target, Option<u32>)> = std::iter::once(("wharf", &wharf, None))
            .chain(
                aard.as_ref()
                    .map(|(t, pid)| ("aardvark-dns", t, Some(*pid))),
            )
            .collect();
        for (server, target, pid) in servers {
            let before = cpu(pid);
            let out = dnsperf(target, file, &["-c", "4", "-q", "500"]);
            let per_query = (cpu(pid) - before) / completed(&out).max(1.0) * 1e6;
            loads.push(loadavg());
            let _ = write!(
                report,
                "{server}, {label}, max rate (dnsperf -c 4 -q 500):\n{}    server CPU: {per_query:.2} \
                 us/query (=> {:.0}k q/s per core)\n",
                summary(&out),
                1e3 / per_query.max(0.001)
            );
            if pid.is_none() {
                (row.1, row.3) = (qps(&out), per_query);
            } else {
                (row.2, row.4) = (qps(&out), per_query);
            }
        }
        max_rate.push(row);
    }
    let mut p99s = Vec::new();
    for (label, file) in [("local names", local), ("forwarded names", forwarded)] {
        let mut row = (label, 0.0, f64::NAN);
        let servers: Vec<(&str, &Target, bool)> = std::iter::once(("wharf", &wharf, true))
            .chain(aard.as_ref().map(|(t, _)| ("aardvark-dns", t, false)))
            .collect();
        for (server, target, is_wharf) in servers {
            let out = dnsperf(target, file, &["-Q", "20000", "-q", "500", "-v"]);
            loads.push(loadavg());
            let (text, p99) = percentiles(&out);
            let _ = write!(
                report,
                "{server}, {label} at 20k q/s:\n{}{text}",
                summary(&out)
            );
            if is_wharf {
                row.1 = p99;
            } else {
                row.2 = p99;
            }
        }
        p99s.push(row);
    }
    let wharf_rss = status_kib("self", "VmRSS") - rss_before;
    let aard_rss = aardvark
        .as_ref()
        .map_or(f64::NAN, |a| status_kib(&a.pid.to_string(), "VmRSS"));
    let aard_hwm = aardvark
        .as_ref()
        .map_or(f64::NAN, |a| status_kib(&a.pid.to_string(), "VmHWM"));
    println!("{report}");

    println!(
        "| {NAMES} names | wharf q/s | aardvark-dns q/s | ratio | wharf CPU us/q | aardvark CPU us/q | CPU ratio |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (label, wq, aq, wc, ac) in &max_rate {
        println!(
            "| {label}, max rate | {wq:.0} | {aq:.0} | {:.2}x | {wc:.2} | {ac:.2} | {:.2}x |",
            wq / aq,
            ac / wc
        );
    }
    println!("\n| at a steady 20k q/s | wharf p99 | aardvark-dns p99 |");
    println!("|---|---:|---:|");
    for (label, w, a) in &p99s {
        println!("| {label} | {w:.3} ms | {a:.3} ms |");
    }
    println!(
        "\nmemory with {NAMES} names: wharf's resolver {:.1} MiB with the names loaded and its \
         listener open, {:.1} MiB after the load runs (growth of this process's RSS from before \
         the resolver was created; includes the in-process upstream's allocations); aardvark-dns \
         {:.1} MiB RSS, {:.1} MiB peak (its whole process)",
        rss_names / 1024.0,
        wharf_rss / 1024.0,
        aard_rss / 1024.0,
        aard_hwm / 1024.0
    );
    println!(
        "load average: before {load_before}; after each run {}",
        loads.join(" | ")
    );
    drop(aardvark);
}
