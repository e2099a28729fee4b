//! Crash safety on a cluster (overlay) network, with real packets across two hosts: host `a` is
//! a child process that creates and deletes sandboxes and connects and disconnects them on an
//! overlay shared with host `b`, and is SIGKILLed at random moments (also while it is still
//! recovering from the previous kill). Host `b` is a controller in this test process that
//! survives every kill, with a container on the overlay. The cluster store is a real etcd (the
//! embedded store's file admits one process), so feature `etcd`.
//!
//! After each kill a new controller opens `a`'s state here (recovering and reconciling), and
//! the test checks: `a`'s endpoint records in the cluster store are exactly its endpoints, no
//! address is held twice on the overlay, `a`'s cluster addresses are exactly its endpoints',
//! no overlay namespace or veth is left over (`common::cluster::assert_cluster_state`), and
//! every endpoint of `a` pings `b`'s container (whose echo reply needs `b`'s entries for it).
#![cfg(feature = "etcd")]

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Rng;
use common::cluster::{assert_cluster_state, eventually};
use common::crash::{free_name, run_and_kill, runtime, seed, serve_until_killed};
use wharf::controller::{
    ClusterConfig, Controller, ControllerConfig, EndpointSpec, Error, NetworkSpec, SandboxSpec,
};
use wharf::driver::{DriverOptions, OverlayOptions};
use wharf::lab::etcd::EtcdServer;
use wharf::lab::{Lab, probe};
use wharf::store::{EtcdOptions, EtcdStore, Store};
use wharf::sys::NetNs;

const CHILD_ENV: &str = "WHARF_OVCRASH_CHILD";
const HOST_ENV: &str = "WHARF_OVCRASH_HOST";
const PREFIX_ENV: &str = "WHARF_OVCRASH_PREFIX";
const FILES_ENV: &str = "WHARF_OVCRASH_FILES";
const ETCD_ENV: &str = "WHARF_OVCRASH_ETCD";
const ADDR_ENV: &str = "WHARF_OVCRASH_ADDR";
/// Kills in the run (the bridge crash test makes the 200; this one adds the overlay).
const KILLS: usize = 60;
const MAX_SANDBOXES: usize = 4;
const NETWORK: &str = "ov";
/// The killed host's node name.
const NODE: &str = "a";

async fn etcd_client(endpoints: &[String]) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(
            endpoints,
            EtcdOptions::default()
                .with_namespace("wharf-test/")
                .with_request_timeout(Duration::from_secs(5)),
        )
        .await
        .expect("etcd client"),
    )
}

/// The configuration of a host of the cluster.
fn config(
    state: &Path,
    host: NetNs,
    prefix: &str,
    files: &Path,
    store: Arc<dyn Store>,
    node: &str,
    addr: IpAddr,
) -> ControllerConfig {
    let mut config = ControllerConfig::new(state)
        .host(host)
        .netns_prefix(prefix)
        .cluster(ClusterConfig::new(store, node, addr));
    config.sandbox_files_dir = files.to_owned();
    config.host_resolv_conf = Some(files.join("host-resolv.conf"));
    config
}

/// The child, host `a`: random operations until it is killed. Prints `ready` once the
/// controller is open, `ok <op>` after each operation, `ERR <op>: <error>` (and exits) on an
/// unexpected error.
#[test]
fn overlay_crash_child() {
    let Ok(state) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let host = NetNs::open(&std::env::var(HOST_ENV).unwrap()).unwrap();
    let prefix = std::env::var(PREFIX_ENV).unwrap();
    let files = PathBuf::from(std::env::var(FILES_ENV).unwrap());
    let endpoints: Vec<String> = std::env::var(ETCD_ENV)
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let addr: IpAddr = std::env::var(ADDR_ENV).unwrap().parse().unwrap();
    runtime().block_on(async {
        let store = etcd_client(&endpoints).await;
        let config = config(Path::new(&state), host, &prefix, &files, store, NODE, addr);
        let opened = Controller::open(config).await;
        serve_until_killed(opened, async |wharf: &Controller, rng: &mut Rng| {
            let sandboxes: Vec<String> =
                wharf.list_sandboxes().into_iter().map(|s| s.name).collect();
            let roll = rng.below(100);
            let step: (String, Result<(), Error>) = if roll < 20 && sandboxes.len() < MAX_SANDBOXES
            {
                let name = free_name("a", MAX_SANDBOXES, &sandboxes);
                let r = wharf
                    .create_sandbox(SandboxSpec::new(&name))
                    .await
                    .map(|_| ());
                (format!("create sandbox {name}"), r)
            } else if roll < 30 && !sandboxes.is_empty() {
                let name = sandboxes[rng.below(sandboxes.len())].clone();
                (
                    format!("delete sandbox {name}"),
                    wharf.delete_sandbox(&name).await,
                )
            } else if !sandboxes.is_empty() {
                let sb = sandboxes[rng.below(sandboxes.len())].clone();
                if wharf.endpoint(&sb, NETWORK).is_ok() {
                    (
                        format!("disconnect {sb}"),
                        wharf.disconnect(&sb, NETWORK).await,
                    )
                } else {
                    let r = wharf
                        .connect(&sb, NETWORK, EndpointSpec::default())
                        .await
                        .map(|_| ());
                    (format!("connect {sb}"), r)
                }
            } else {
                return None;
            };
            Some(step)
        })
        .await;
    });
}

#[test]
fn sigkill_during_overlay_attaches_and_detaches_leaves_a_consistent_cluster() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rt = runtime();
    let lab = Lab::new();
    let server = rt
        .block_on(EtcdServer::start())
        .unwrap_or_else(|e| panic!("cannot run the etcd this test needs: {e}"));
    let endpoints = server.endpoints();
    let underlay = rt.block_on(lab.underlay(&["a", "b"])).unwrap();
    let ((ns_a, addr_a), (ns_b, addr_b)) = (underlay[0].clone(), underlay[1].clone());
    let (addr_a, addr_b) = (IpAddr::V4(addr_a), IpAddr::V4(addr_b));
    let dirs = |role: &str| {
        let state = lab.temp_dir(&format!("{role}-state")).unwrap();
        let files = lab.temp_dir(&format!("{role}-files")).unwrap();
        std::fs::write(files.join("host-resolv.conf"), "nameserver 198.51.100.53\n").unwrap();
        (state, files)
    };
    let ((state_a, files_a), (state_b, files_b)) = (dirs("a"), dirs("b"));
    let prefix_a = format!("{}a-", lab.netns_prefix());
    let prefix_b = format!("{}b-", lab.netns_prefix());

    // Host b, alive throughout, on this test's runtime: the overlay and a container on it.
    let (b, peer, shared) = rt.block_on(async {
        let store = etcd_client(&endpoints).await;
        let b = Controller::open(config(
            &state_b, ns_b, &prefix_b, &files_b, store, "b", addr_b,
        ))
        .await
        .expect("host b opens");
        b.create_network(
            NetworkSpec::new(NETWORK)
                .driver(DriverOptions::Overlay(OverlayOptions::default()))
                .attachable(),
        )
        .await
        .unwrap();
        b.create_sandbox(SandboxSpec::new("peer")).await.unwrap();
        let ep = b
            .connect("peer", NETWORK, EndpointSpec::default())
            .await
            .unwrap();
        (
            b,
            IpAddr::V4(ep.ipv4.unwrap()),
            etcd_client(&endpoints).await,
        )
    });

    let mut rng = Rng(seed());
    let started = Instant::now();
    let (mut ops, mut during_open, mut checked) = (0usize, 0usize, 0usize);
    for round in 0..KILLS {
        let env = [
            (CHILD_ENV, state_a.display().to_string()),
            (HOST_ENV, ns_a.name().unwrap().to_owned()),
            (PREFIX_ENV, prefix_a.clone()),
            (FILES_ENV, files_a.display().to_string()),
            (ETCD_ENV, endpoints.join(",")),
            (ADDR_ENV, addr_a.to_string()),
        ];
        let killed = run_and_kill(
            "overlay_crash_child",
            &env,
            &mut rng,
            Duration::from_millis(400),
            round,
        );
        during_open += usize::from(killed.during_open);
        ops += killed.ops();

        // A new controller for host a, on the same state: recovery, then the checks.
        let check_rt = runtime();
        check_rt.block_on(async {
            let store = etcd_client(&endpoints).await;
            let a = Controller::open(config(
                &state_a,
                ns_a.clone(),
                &prefix_a,
                &files_a,
                store,
                NODE,
                addr_a,
            ))
            .await
            .unwrap_or_else(|e| panic!("round {round}: reopening: {e:?}"));
            let when = format!("round {round}");
            assert_cluster_state(&a, NODE, &ns_a, &prefix_a, &shared, &when).await;
            for sb in a.list_sandboxes() {
                if a.endpoint(&sb.name, NETWORK).is_err() {
                    continue;
                }
                let ns = a.sandbox_netns(&sb.name).unwrap();
                let reached = eventually(Duration::from_secs(5), || {
                    probe::can_ping(&ns, peer, Duration::from_millis(300))
                })
                .await;
                assert!(
                    reached,
                    "round {round}: {} cannot reach b's container",
                    sb.name
                );
                checked += 1;
            }
        });
        drop(check_rt);
    }
    let took = started.elapsed();
    eprintln!(
        "{KILLS} kills ({during_open} while opening), {ops} operations completed, \
         {checked} endpoints checked with a ping across hosts, {took:.1?}"
    );
    assert!(ops >= KILLS, "too few operations between kills: {ops}");
    rt.block_on(async {
        drop(b);
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    drop(server);
}
