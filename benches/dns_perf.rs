//! Load test of the embedded resolver with `dnsperf` (Debian's `dnsperf` package), in a lab.
//!
//! A resolver with 1000 container names listens in a sandbox namespace; a minimal upstream runs
//! on the loopback of the lab's host namespace. dnsperf, run inside the sandbox, measures the
//! throughput of local and forwarded names and the latency percentiles at a fixed rate. All
//! traffic stays on the lab namespaces' loopbacks. Prints a summary; asserts nothing.
//!
//! `sudo -E cargo bench --bench dns_perf` (skips itself when dnsperf is not installed).

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::A;
use wharf::dns::{EndpointDns, NetworkDns, NetworkKey, Resolver, ResolverConfig, SandboxDns};
use wharf::lab::Lab;
use wharf::sys::NetNs;

const NAMES: u32 = 1000;
const SECONDS: &str = "8";

async fn upstream(sock: std::sync::Arc<tokio::net::UdpSocket>) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(question) = q.query().cloned() else {
            continue;
        };
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A([203, 0, 113, 80].into())),
            ))
            .add_query(question);
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, peer).await;
        }
    }
}

fn dnsperf(ns: &NetNs, file: &str, extra: &[&str]) -> String {
    let mut cmd = ns.command("dnsperf");
    cmd.args(["-s", "127.0.0.11", "-d", file, "-l", SECONDS, "-t", "2"]);
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

/// p50/p99/max of the per-query latencies dnsperf prints with `-v`.
fn percentiles(out: &str) -> String {
    let mut lat: Vec<f64> = out
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    if lat.is_empty() {
        return "    no per-query latencies\n".into();
    }
    lat.sort_by(f64::total_cmp);
    let at = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)] * 1e3;
    format!(
        "    {} queries: p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms\n",
        lat.len(),
        at(0.5),
        at(0.99),
        at(0.999),
        at(1.0)
    )
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
    let up_sock = {
        let _g = up_rt.enter();
        std::sync::Arc::new(tokio::net::UdpSocket::from_std(up_sock).unwrap())
    };
    for _ in 0..2 {
        up_rt.spawn(upstream(up_sock.clone()));
    }
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

    let mut report = String::new();
    for (label, file) in [("local names", local), ("forwarded names", forwarded)] {
        let cpu = cpu_of("resolver");
        let out = dnsperf(&sandbox, file, &["-c", "4", "-q", "500"]);
        let per_query = (cpu_of("resolver") - cpu) / completed(&out).max(1.0) * 1e6;
        let _ = write!(
            report,
            "{label}, max rate (dnsperf -c 4 -q 500):\n{}    resolver CPU: {per_query:.2} us/query \
             (=> {:.0}k q/s per core)\n",
            summary(&out),
            1e3 / per_query.max(0.001)
        );
    }
    for (label, file) in [("local names", local), ("forwarded names", forwarded)] {
        let out = dnsperf(&sandbox, file, &["-Q", "20000", "-q", "500", "-v"]);
        let _ = write!(
            report,
            "{label} at 20k q/s:\n{}{}",
            summary(&out),
            percentiles(&out)
        );
    }
    println!("{report}");
}
