//! Crash safety of the embedded store: a child process allocates and releases in a loop and is
//! killed with SIGKILL at a random moment, several times over the same database. After each
//! kill, every allocation the child reported as done is still there, and no address is ever
//! handed out twice.
//!
//! The child is this test binary re-invoked with `WHARF_IPAM_CRASH_CHILD=<db path>`, running
//! only `crash_child`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wharf::ipam::{AddressRequest, Family, Ipam, IpamConfig, IpamOptions, SubnetRequest};
use wharf::store::EmbeddedStore;

const CHILD_ENV: &str = "WHARF_IPAM_CRASH_CHILD";
const ROUNDS: usize = 4;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn open(path: &str) -> Ipam {
    let store = EmbeddedStore::open(path).await.unwrap();
    Ipam::open(Arc::new(store), IpamOptions::local(b"crash-host"))
        .await
        .unwrap()
}

/// The child: allocates forever (until killed), releasing every fourth address it got.
/// Prints `A <ip>` after an allocation returned, `R? <ip>` before and `R <ip>` after a release.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    runtime().block_on(async {
        let ipam = open(&path).await;
        if ipam.subnets("crash").is_empty() {
            ipam.request_subnet(
                SubnetRequest::new("crash", "crash-net")
                    .with_config(IpamConfig::new().parse_subnet("10.60.0.0/16").unwrap()),
            )
            .await
            .unwrap();
        }
        let mut out = std::io::stdout();
        let mut held = Vec::new();
        for i in 0u64.. {
            let ip = ipam
                .allocate("crash", AddressRequest::Next(Family::V4))
                .await
                .unwrap();
            writeln!(out, "A {ip}").unwrap();
            out.flush().unwrap();
            held.push(ip);
            if i % 4 == 3 {
                let victim = held.swap_remove(0);
                writeln!(out, "R? {victim}").unwrap();
                out.flush().unwrap();
                ipam.release("crash", victim).await.unwrap();
                writeln!(out, "R {victim}").unwrap();
                out.flush().unwrap();
            }
        }
    });
}

#[test]
fn sigkill_at_random_moments_loses_no_committed_allocation() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let path_str = path.to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    // Allocated and still held, as far as the parent knows for sure.
    let mut committed: BTreeSet<IpAddr> = BTreeSet::new();
    let mut total_allocs = 0usize;

    for round in 0..ROUNDS {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as usize;
        let kill_after = 10 + (nanos / 7 + round * 37) % 90;
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path_str)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut uncertain: BTreeSet<IpAddr> = BTreeSet::new();
        let mut seen = 0usize;
        let mut killed = false;
        for line in stdout.lines() {
            let line = line.unwrap();
            let (tag, ip) = match line.split_once(' ') {
                Some((tag @ ("A" | "R?" | "R"), ip)) => (tag, ip.parse::<IpAddr>().unwrap()),
                _ => continue, // libtest chatter
            };
            match tag {
                "A" => {
                    assert!(committed.insert(ip), "round {round}: {ip} handed out twice");
                    total_allocs += 1;
                }
                "R?" => {
                    committed.remove(&ip);
                    uncertain.insert(ip);
                }
                _ => {
                    uncertain.remove(&ip);
                }
            }
            seen += 1;
            if seen == kill_after && !killed {
                // SIGKILL: no destructor, no flush, mid-transaction as likely as not.
                child.kill().unwrap();
                killed = true;
            }
        }
        child.wait().unwrap();
        assert!(killed, "round {round}: the child stopped by itself");

        // Reopen and compare with what the child reported.
        let after: BTreeSet<IpAddr> = runtime().block_on(async {
            let ipam = open(&path_str).await;
            ipam.allocated("crash").into_iter().collect()
        });
        let lost: Vec<_> = committed.difference(&after).collect();
        assert!(
            lost.is_empty(),
            "round {round}: lost committed allocations {lost:?}"
        );
        // Beyond what we know: releases in flight, and at most one allocation whose report the
        // kill cut off.
        let extra: Vec<_> = after
            .difference(&committed)
            .filter(|ip| !uncertain.contains(ip))
            .collect();
        assert!(
            extra.len() <= 1,
            "round {round}: unexpected allocations {extra:?}"
        );
        // Adopt the store's truth for the next round.
        committed = after;
    }
    assert!(
        total_allocs >= ROUNDS * 5,
        "too few allocations: {total_allocs}"
    );
}
