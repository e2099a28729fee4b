//! TUTORIALS.md scenario 4 steps 2-4 with services, shared by the embedded-store and the etcd
//! tests: `my-nginx`, 5 replicas on `nginx-net` over manager, worker-1 and worker-2; the swap to
//! `nginx-net-2`; removal.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use wharf::controller::{NetworkSpec, ServiceInspect, ServiceSpec};
use wharf::driver::{DriverOptions, OverlayOptions};
use wharf::lab::probe::{self, Transport};

use super::cluster::{Cluster, QUICK, eventually};

/// A (non-attachable) overlay, as `docker network create -d overlay` makes it.
pub fn overlay(name: &str) -> NetworkSpec {
    NetworkSpec::new(name).driver(DriverOptions::Overlay(OverlayOptions::default()))
}

/// Waits until every host sees every replica of version `version` running and runs exactly
/// the tasks placed on it; returns the service as the manager sees it.
pub async fn converged(c: &Cluster, name: &str, version: u64, within: Duration) -> ServiceInspect {
    let done = eventually(within, || async {
        for h in &c.hosts {
            let Ok(s) = h.wharf().inspect_service(name).await else {
                return false;
            };
            if s.version != version || s.running != s.replicas {
                return false;
            }
            let placed: BTreeSet<String> = s
                .tasks
                .iter()
                .filter(|t| t.node == h.role)
                .map(|t| t.name.clone())
                .collect();
            let local: BTreeSet<String> = h
                .wharf()
                .local_tasks()
                .into_iter()
                .map(|t| t.sandbox)
                .collect();
            if placed != local {
                return false;
            }
        }
        true
    })
    .await;
    let s = c.hosts[0].wharf().inspect_service(name).await.unwrap();
    assert!(done, "service {name} v{version} did not converge: {s:#?}");
    s
}

/// The A records of `name` as a replica's resolver answers them, in answer order.
pub async fn resolve_all(c: &Cluster, node: &str, from: &str, name: &str) -> Vec<IpAddr> {
    let ns = c.host(node).wharf().sandbox_netns(from).unwrap();
    let dns: SocketAddr = "127.0.0.11:53".parse().unwrap();
    probe::dns_query(&ns, dns, name, RecordType::A, Transport::Udp, QUICK)
        .await
        .map(|a| a.addresses)
        .unwrap_or_default()
}

/// Every replica reaches every other by IP and by container name, and the service name and
/// `tasks.NAME` resolve to all of them, rotated.
pub async fn replicas_reach_each_other(c: &Cluster, s: &ServiceInspect, within: Duration) {
    let replicas: Vec<(String, String, IpAddr)> = s
        .tasks
        .iter()
        .map(|t| (t.node.clone(), t.name.clone(), t.addresses[0]))
        .collect();
    let all: BTreeSet<IpAddr> = replicas.iter().map(|r| r.2).collect();
    assert_eq!(
        all.len(),
        replicas.len(),
        "distinct addresses: {replicas:?}"
    );
    for (node, from, _) in &replicas {
        let host = c.host(node);
        for (_, to, ip) in &replicas {
            if from == to {
                continue;
            }
            assert!(
                eventually(within, || host.ping(from, *ip)).await,
                "{from} -> {to} by ip={ip}"
            );
            assert!(
                eventually(within, || host.ping_by_name(from, to)).await,
                "{from} -> {to} by name"
            );
        }
        for name in [s.name.clone(), format!("tasks.{}", s.name)] {
            let first = resolve_all(c, node, from, &name).await;
            let second = resolve_all(c, node, from, &name).await;
            assert_eq!(
                first.iter().copied().collect::<BTreeSet<_>>(),
                all,
                "{name} from {from}"
            );
            assert_eq!(second.len(), all.len());
            assert_ne!(first, second, "{name}: answers rotate (round robin)");
        }
    }
}

/// The containers of `network` per host, as each host's inspect lists them.
fn containers(c: &Cluster, network: &str) -> BTreeMap<String, BTreeSet<String>> {
    c.hosts
        .iter()
        .map(|h| {
            let names = h
                .wharf()
                .inspect_network(network)
                .map(|n| n.containers.values().map(|c| c.name.clone()).collect())
                .unwrap_or_default();
            (h.role.clone(), names)
        })
        .collect()
}

/// Steps 2-4 on a cluster of manager, worker-1 and worker-2.
pub async fn scenario_4_steps_2_to_4(c: &Cluster, within: Duration) {
    let (m, w1, w2) = (c.host("manager"), c.host("worker-1"), c.host("worker-2"));

    // Step 2: nginx-net, my-nginx with 5 replicas, spread evenly.
    m.wharf()
        .create_network(overlay("nginx-net"))
        .await
        .unwrap();
    let created = m
        .wharf()
        .create_service(
            ServiceSpec::new("my-nginx")
                .replicas(5)
                .network("nginx-net"),
        )
        .await
        .unwrap();
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &created.tasks {
        *per_node.entry(t.node.as_str()).or_default() += 1;
    }
    assert_eq!(
        per_node.into_iter().collect::<Vec<_>>(),
        [("manager", 2), ("worker-1", 2), ("worker-2", 1)]
    );
    let s = converged(c, "my-nginx", 1, within).await;
    replicas_reach_each_other(c, &s, within).await;
    // Inspect nginx-net on each host: its own replicas, and all three nodes as peers.
    let on = containers(c, "nginx-net");
    for h in &c.hosts {
        let mine: BTreeSet<String> = s
            .tasks
            .iter()
            .filter(|t| t.node == h.role)
            .map(|t| t.name.clone())
            .collect();
        assert_eq!(on[&h.role], mine, "nginx-net on {}", h.role);
        let peers: Vec<String> = h
            .wharf()
            .inspect_network("nginx-net")
            .unwrap()
            .peers
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(peers, ["manager", "worker-1", "worker-2"]);
    }
    // A network a service uses cannot be deleted.
    assert!(w2.wharf().delete_network("nginx-net").await.is_err());

    // Step 3, from another host: add nginx-net-2, remove nginx-net. Every replica is
    // redeployed; nginx-net has no containers afterwards, nginx-net-2 has them all.
    w1.wharf()
        .create_network(overlay("nginx-net-2"))
        .await
        .unwrap();
    w1.wharf()
        .update_service(
            "my-nginx",
            ServiceSpec::new("my-nginx")
                .replicas(5)
                .network("nginx-net-2"),
        )
        .await
        .unwrap();
    let s2 = converged(c, "my-nginx", 2, within).await;
    let old: BTreeSet<&str> = s.tasks.iter().map(|t| t.id.as_str()).collect();
    assert!(s2.tasks.iter().all(|t| !old.contains(t.id.as_str())));
    assert!(
        eventually(within, || async {
            containers(c, "nginx-net").values().all(BTreeSet::is_empty)
        })
        .await,
        "nginx-net still has containers: {:?}",
        containers(c, "nginx-net")
    );
    let on2: BTreeSet<String> = containers(c, "nginx-net-2")
        .into_values()
        .flatten()
        .collect();
    let all2: BTreeSet<String> = s2.tasks.iter().map(|t| t.name.clone()).collect();
    assert_eq!(on2, all2);
    replicas_reach_each_other(c, &s2, within).await;

    // Step 4: remove the service and both networks.
    w2.wharf().remove_service("my-nginx").await.unwrap();
    assert!(
        eventually(within, || async {
            c.hosts.iter().all(|h| h.wharf().local_tasks().is_empty())
                && containers(c, "nginx-net-2")
                    .values()
                    .all(BTreeSet::is_empty)
        })
        .await,
        "replicas left after the service was removed"
    );
    assert!(w2.wharf().list_services().await.unwrap().is_empty());
    assert!(
        eventually(within, || async {
            c.store
                .list("cluster/v1/endpoints/")
                .await
                .unwrap()
                .is_empty()
        })
        .await
    );
    m.wharf().delete_network("nginx-net").await.unwrap();
    m.wharf().delete_network("nginx-net-2").await.unwrap();
    for h in &c.hosts {
        assert!(
            eventually(within, || async { h.wharf().list_sandboxes().is_empty() }).await,
            "{}: {:?}",
            h.role,
            h.wharf().list_sandboxes()
        );
    }
}
