//! Crash safety of the controller: a child process connects, disconnects (also in batches,
//! `disconnect_many`), creates and deletes networks and sandboxes (also `delete_sandboxes`)
//! against a lab host and one state directory, and is SIGKILLed at
//! random moments (also while it is still recovering from the previous kill). After each kill
//! a new controller opens the same state (recovering and reconciling), and the test checks
//! that nothing leaked (links, namespaces, firewall elements), that no address is held twice
//! and the kernel holds exactly what the records say, that every endpoint reaches its peers
//! (real pings), and that the next child carries on without an error.
//!
//! The child is this test binary re-invoked with `WHARF_CRASH_CHILD=<state dir>`, running only
//! `crash_child`. The parent owns the lab: the child's sandboxes carry the lab's namespace
//! prefix, so the lab deletes whatever the kills leave.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::crash::{free_name, run_and_kill, runtime, seed, serve_until_killed};
use common::{Rng, ipv4_view};
use wharf::controller::{
    Controller, ControllerConfig, EndpointSpec, Error, NetworkSpec, SandboxSpec,
};
use wharf::driver::PortMapping;
use wharf::driver::bridge::firewall;
use wharf::lab::{Lab, probe};
use wharf::sys::NetNs;
use wharf::sys::nft::NftHandle;
use wharf::sys::rtnl::Handle;

const CHILD_ENV: &str = "WHARF_CRASH_CHILD";
const HOST_ENV: &str = "WHARF_CRASH_HOST";
const PREFIX_ENV: &str = "WHARF_CRASH_PREFIX";
const FILES_ENV: &str = "WHARF_CRASH_FILES";
/// Kills in the run (the issue asks for at least 200).
const KILLS: usize = 200;
const MAX_NETWORKS: usize = 3;
const MAX_SANDBOXES: usize = 5;

fn config(state: &Path, host: NetNs, prefix: &str, files: &Path) -> ControllerConfig {
    let resolv = files.join("host-resolv.conf");
    let mut config = ControllerConfig::new(state).host(host).netns_prefix(prefix);
    config.sandbox_files_dir = files.to_owned();
    config.host_resolv_conf = Some(resolv);
    config
}

/// The host port the endpoint of sandbox `cI` on network `nJ` (or `bridge`) publishes.
fn host_port(sandbox: &str, network: &str) -> u16 {
    let sb: u16 = sandbox[1..].parse().unwrap();
    let net: u16 = network.strip_prefix('n').map_or(9, |n| n.parse().unwrap());
    20000 + 10 * sb + net
}

/// Whether the endpoint of sandbox `cI` on network `nJ` (or `bridge`) publishes its port.
fn publishes(sandbox: &str, network: &str) -> bool {
    host_port(sandbox, network) % 2 == 0
}

/// The user's networks (`n0`..) and sandboxes (`c0`..) as the controller reports them.
fn user_networks(wharf: &Controller) -> Vec<String> {
    wharf
        .list_networks()
        .into_iter()
        .map(|n| n.name)
        .filter(|n| n.starts_with('n') && n != "none")
        .collect()
}

/// The child: random operations until it is killed. Prints `ready` once the controller is
/// open, `ok <op>` after each operation, `ERR <op>: <error>` (and exits) on an unexpected error.
#[test]
fn crash_child() {
    let Ok(state) = std::env::var(CHILD_ENV) else {
        return; // Not a child: nothing to do.
    };
    let host = NetNs::open(&std::env::var(HOST_ENV).unwrap()).unwrap();
    let prefix = std::env::var(PREFIX_ENV).unwrap();
    let files = PathBuf::from(std::env::var(FILES_ENV).unwrap());
    runtime().block_on(async {
        let opened = Controller::open(config(Path::new(&state), host, &prefix, &files)).await;
        serve_until_killed(opened, async |wharf: &Controller, rng: &mut Rng| {
            let nets = user_networks(wharf);
            let sandboxes: Vec<String> =
                wharf.list_sandboxes().into_iter().map(|s| s.name).collect();
            let roll = rng.below(100);
            let step: (String, Result<(), Error>) = if roll < 8 && nets.len() < MAX_NETWORKS {
                let name = free_name("n", MAX_NETWORKS, &nets);
                let r = wharf
                    .create_network(NetworkSpec::new(&name))
                    .await
                    .map(|_| ());
                (format!("create network {name}"), r)
            } else if roll < 13 && !nets.is_empty() {
                let name = nets[rng.below(nets.len())].clone();
                let in_use = !wharf.inspect_network(&name).unwrap().containers.is_empty();
                if in_use {
                    return None;
                }
                (
                    format!("delete network {name}"),
                    wharf.delete_network(&name).await,
                )
            } else if roll < 25 && sandboxes.len() < MAX_SANDBOXES {
                let name = free_name("c", MAX_SANDBOXES, &sandboxes);
                let r = wharf
                    .create_sandbox(SandboxSpec::new(&name))
                    .await
                    .map(|_| ());
                (format!("create sandbox {name}"), r)
            } else if roll < 29 && sandboxes.len() > 1 {
                let a = sandboxes[rng.below(sandboxes.len())].clone();
                let b = sandboxes[rng.below(sandboxes.len())].clone();
                let r = wharf
                    .delete_sandboxes(&[a.as_str(), b.as_str()])
                    .await
                    .into_iter()
                    .collect::<Result<Vec<()>, Error>>()
                    .map(|_| ());
                (format!("delete sandboxes {a} {b}"), r)
            } else if roll < 32 && !sandboxes.is_empty() {
                let name = sandboxes[rng.below(sandboxes.len())].clone();
                (
                    format!("delete sandbox {name}"),
                    wharf.delete_sandbox(&name).await,
                )
            } else if roll < 72 && !sandboxes.is_empty() {
                let sb = sandboxes[rng.below(sandboxes.len())].clone();
                let mut all = nets.clone();
                all.push("bridge".into());
                let net = all[rng.below(all.len())].clone();
                if wharf.endpoint(&sb, &net).is_ok() {
                    return None;
                }
                // Half of the endpoints publish a port of their own, so the firewall has
                // elements per endpoint to leak or lose (the others take the batch
                // detach's link-group path).
                let mut spec = EndpointSpec::default();
                if publishes(&sb, &net) {
                    spec.ports.push(PortMapping::tcp(host_port(&sb, &net), 80));
                }
                let r = wharf.connect(&sb, &net, spec).await.map(|_| ());
                (format!("connect {sb} {net}"), r)
            } else {
                let eps: Vec<(String, String)> = wharf
                    .list_sandboxes()
                    .into_iter()
                    .flat_map(|s| {
                        s.endpoints
                            .into_iter()
                            .map(move |e| (s.name.clone(), e.network))
                    })
                    .collect();
                if eps.is_empty() {
                    return None;
                }
                let (sb, net) = eps[rng.below(eps.len())].clone();
                let other = eps[rng.below(eps.len())].clone();
                if rng.below(3) == 0 && other != (sb.clone(), net.clone()) {
                    let pairs = [
                        (sb.as_str(), net.as_str()),
                        (other.0.as_str(), other.1.as_str()),
                    ];
                    let r = wharf
                        .disconnect_many(&pairs)
                        .await
                        .into_iter()
                        .collect::<Result<Vec<()>, Error>>()
                        .map(|_| ());
                    (format!("disconnect {sb} {net}, {} {}", other.0, other.1), r)
                } else {
                    (
                        format!("disconnect {sb} {net}"),
                        wharf.disconnect(&sb, &net).await,
                    )
                }
            };
            Some(step)
        })
        .await;
    });
}

/// What the records say, for comparing with the kernel.
struct Expected {
    bridges: BTreeSet<String>,
    veths: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    /// Sandbox -> (interface, address/prefix).
    interfaces: BTreeMap<String, BTreeSet<(String, String)>>,
    /// Host ports published (tcp, any address).
    ports: BTreeSet<u16>,
    /// Network -> (sandbox, address).
    members: BTreeMap<String, Vec<(String, IpAddr)>>,
}

fn expected(wharf: &Controller) -> Expected {
    let mut e = Expected {
        bridges: BTreeSet::new(),
        veths: BTreeSet::new(),
        namespaces: BTreeSet::new(),
        interfaces: BTreeMap::new(),
        ports: BTreeSet::new(),
        members: BTreeMap::new(),
    };
    for n in wharf.list_networks() {
        if n.driver != "bridge" {
            continue;
        }
        e.bridges.insert(if n.name == "bridge" {
            "wharf0".to_owned()
        } else {
            format!("br-{}", &n.id[..12])
        });
        e.members.insert(n.name.clone(), Vec::new());
    }
    let mut seen = BTreeSet::new();
    for sb in wharf.list_sandboxes() {
        e.namespaces
            .insert(sb.netns_name.clone().expect("a namespace wharf made"));
        let ifs = e.interfaces.entry(sb.name.clone()).or_default();
        for ep in &sb.endpoints {
            let ip = ep.ipv4.expect("an IPv4 address");
            assert!(seen.insert(ip), "{ip} is held twice");
            e.veths.insert(format!("veth{}", &ep.id[..7]));
            if publishes(&sb.name, &ep.network) {
                e.ports.insert(host_port(&sb.name, &ep.network));
            }
            ifs.insert((
                ep.ifname.clone(),
                format!("{ip}/{}", ep.ipv4_prefix.unwrap()),
            ));
            e.members
                .get_mut(&ep.network)
                .expect("the endpoint's network")
                .push((sb.name.clone(), IpAddr::V4(ip)));
        }
    }
    e
}

/// The checks after a kill, on a controller that just opened the state.
async fn check(wharf: &Controller, host: &NetNs, lab_prefix: &str, round: usize) {
    let e = expected(wharf);
    // Links in the host: exactly the records' bridges and veths.
    let h = Handle::in_netns(host).await.unwrap();
    let mut bridges = BTreeSet::new();
    let mut veths = BTreeSet::new();
    for l in h.link().list().await.unwrap() {
        if l.name.starts_with("veth") {
            veths.insert(l.name);
        } else if l.name != "lo" {
            bridges.insert(l.name);
        }
    }
    assert_eq!(bridges, e.bridges, "round {round}: bridges in the host");
    assert_eq!(veths, e.veths, "round {round}: veths in the host");
    // Namespaces: exactly the sandboxes'.
    let host_name = host.name().unwrap().to_owned();
    let namespaces: BTreeSet<String> = NetNs::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(lab_prefix) && *n != host_name)
        .collect();
    assert_eq!(
        namespaces, e.namespaces,
        "round {round}: sandbox namespaces"
    );
    // Each sandbox holds exactly its endpoints' interfaces and addresses, and a default route
    // if it has an endpoint.
    for sb in wharf.list_sandboxes() {
        let ns = wharf.sandbox_netns(&sb.name).unwrap();
        let (got, defaults) = ipv4_view(&ns).await;
        assert_eq!(
            got, e.interfaces[&sb.name],
            "round {round}: interfaces of {}",
            sb.name
        );
        assert_eq!(
            defaults,
            usize::from(!sb.endpoints.is_empty()),
            "round {round}: default routes of {}",
            sb.name
        );
    }
    // Firewall: one `bridges` element per bridge network, one port element per published
    // port, no isolated port.
    let nft = NftHandle::open(host).await.unwrap();
    let sets = firewall::sets();
    let elements = async |name: &str| {
        let set = sets.iter().find(|s| s.name == name).unwrap();
        nft.list_elements(set).await.unwrap()
    };
    let fw_bridges: BTreeSet<String> = elements("bridges")
        .await
        .into_iter()
        .map(|el| match &el.key[0] {
            wharf::sys::nft::Value::IfName(n) => n.clone(),
            other => panic!("unexpected key {other:?}"),
        })
        .collect();
    assert_eq!(
        fw_bridges, e.bridges,
        "round {round}: bridges in the firewall"
    );
    let fw_ports: BTreeSet<u16> = elements(&firewall::port_map_name(
        wharf::driver::Protocol::Tcp,
        wharf::sys::nft::IpVersion::V4,
        false,
    ))
    .await
    .into_iter()
    .map(|el| match &el.key[0] {
        wharf::sys::nft::Value::Port(p) => *p,
        other => panic!("unexpected key {other:?}"),
    })
    .collect();
    assert_eq!(
        fw_ports, e.ports,
        "round {round}: published ports in the firewall"
    );
    // Every endpoint reaches a peer on its network (or the gateway when alone).
    for (net, members) in &e.members {
        for (i, (sb, _)) in members.iter().enumerate() {
            let dst = if members.len() > 1 {
                members[(i + 1) % members.len()].1
            } else {
                wharf.inspect_network(net).unwrap().ipam.config[0]
                    .gateway
                    .as_ref()
                    .unwrap()
                    .parse()
                    .unwrap()
            };
            let ns = wharf.sandbox_netns(sb).unwrap();
            probe::ping(&ns, dst, probe::DEFAULT_TIMEOUT)
                .await
                .unwrap_or_else(|err| {
                    panic!("round {round}: {sb} on {net} cannot reach {dst}: {err}")
                });
        }
    }
}

#[test]
fn sigkill_at_random_moments_leaves_state_the_next_start_understands() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let rt = runtime();
    let lab = Lab::new();
    let host = rt.block_on(lab.namespace("host")).unwrap();
    let state = lab.temp_dir("state").unwrap();
    let files = lab.temp_dir("files").unwrap();
    std::fs::write(files.join("host-resolv.conf"), "nameserver 198.51.100.53\n").unwrap();
    let prefix = lab.netns_prefix();
    let mut rng = Rng(seed());
    let started = Instant::now();
    let mut ops = 0usize;
    let mut during_open = 0usize;
    let mut batches = 0usize;

    for round in 0..KILLS {
        let env = [
            (CHILD_ENV, state.display().to_string()),
            (HOST_ENV, host.name().unwrap().to_owned()),
            (PREFIX_ENV, prefix.clone()),
            (FILES_ENV, files.display().to_string()),
        ];
        let killed = run_and_kill(
            "crash_child",
            &env,
            &mut rng,
            Duration::from_millis(150),
            round,
        );
        during_open += usize::from(killed.during_open);
        ops += killed.ops();
        batches += killed
            .lines
            .iter()
            .filter(|l| l.starts_with("ok delete sandboxes") || l.contains(", "))
            .count();

        // A new controller on the same state: recovery, then the checks.
        let check_rt = runtime();
        check_rt.block_on(async {
            let wharf = Controller::open(config(&state, host.clone(), &prefix, &files))
                .await
                .unwrap_or_else(|e| panic!("round {round}: reopening: {e:?}"));
            if let Err(e) = wharf.reconcile().await {
                panic!("round {round}: reconcile: {e:?}");
            }
            check(&wharf, &host, &prefix, round).await;
        });
        drop(check_rt);
    }
    let took = started.elapsed();
    eprintln!(
        "{KILLS} kills ({during_open} while opening), {ops} operations completed \
         ({batches} of them batch detaches), {took:.1?}"
    );
    assert!(ops >= KILLS, "too few operations between kills: {ops}");
}
