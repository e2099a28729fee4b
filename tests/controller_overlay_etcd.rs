//! Overlay networks across hosts with the cluster state in a real etcd (feature `etcd`): each
//! host has its own etcd client, as separate machines would.
#![cfg(feature = "etcd")]

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Cluster, Host, eventually};
use wharf::controller::{ClusterEndpoint, NetworkSpec};
use wharf::driver::{DriverOptions, OverlayOptions, PeerEntry};
use wharf::lab::etcd::EtcdServer;
use wharf::store::{EtcdOptions, EtcdStore, Store};

const CONVERGED: Duration = Duration::from_secs(10);

async fn client(server: &EtcdServer) -> Arc<dyn Store> {
    Arc::new(
        EtcdStore::connect(
            &server.endpoints(),
            EtcdOptions::default()
                .with_namespace("wharf-test/")
                .with_request_timeout(Duration::from_secs(5)),
        )
        .await
        .expect("etcd client"),
    )
}

async fn expected_entries(c: &Cluster, host: &Host, network_id: &str) -> BTreeSet<PeerEntry> {
    c.store
        .list(&format!("cluster/v1/endpoints/{network_id}/"))
        .await
        .unwrap()
        .iter()
        .map(|kv| serde_json::from_slice::<ClusterEndpoint>(&kv.value).unwrap())
        .filter(|e| e.node != host.role)
        .flat_map(|e| e.entries())
        .collect()
}

async fn converged(c: &Cluster, network_id: &str) -> bool {
    eventually(CONVERGED, || async {
        for h in &c.hosts {
            if let Some(actual) = h.entries(network_id).await {
                if actual != expected_entries(c, h, network_id).await {
                    return false;
                }
            }
        }
        true
    })
    .await
}

#[tokio::test]
async fn scenario_4_services_on_etcd() {
    let server = EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd this test needs: {e}"));
    let stores = [
        client(&server).await,
        client(&server).await,
        client(&server).await,
    ];
    let shared = client(&server).await;
    let c = Cluster::with_stores(&["manager", "worker-1", "worker-2"], shared, move |i| {
        stores[i].clone()
    })
    .await;
    common::services::scenario_4_steps_2_to_4(&c, CONVERGED).await;
}

#[tokio::test]
async fn overlay_across_three_hosts_on_etcd() {
    let mut server = EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd this test needs: {e}"));
    let stores = [
        client(&server).await,
        client(&server).await,
        client(&server).await,
    ];
    let shared = client(&server).await;
    let c = Cluster::with_stores(&["manager", "worker-1", "worker-2"], shared, move |i| {
        stores[i].clone()
    })
    .await;
    let (m, w1, w2) = (c.host("manager"), c.host("worker-1"), c.host("worker-2"));
    let net = m
        .wharf()
        .create_network(
            NetworkSpec::new("test-net")
                .driver(DriverOptions::Overlay(OverlayOptions::default()))
                .attachable(),
        )
        .await
        .unwrap();
    let containers = [(m, "alpine1"), (w1, "alpine2"), (w2, "alpine3")];
    let mut ips: Vec<IpAddr> = Vec::new();
    for (host, name) in containers {
        ips.push(host.run(name, "test-net").await);
    }
    assert!(converged(&c, &net.id).await);
    for (host, from) in containers {
        for (_, to) in containers {
            if from != to {
                assert!(
                    eventually(CONVERGED, || host.ping_by_name(from, to)).await,
                    "{from} -> {to} by name"
                );
            }
        }
    }

    // etcd restarts: the watchers resume (or resynchronise) and keep following.
    server.kill();
    server.start_again().await.expect("etcd restarts");
    w1.run("alpine4", "test-net").await;
    assert!(converged(&c, &net.id).await);
    assert!(eventually(CONVERGED, || w2.ping_by_name("alpine3", "alpine4")).await);
    w1.wharf().delete_sandbox("alpine2").await.unwrap();
    assert!(converged(&c, &net.id).await);
    assert_eq!(
        m.entries(&net.id).await.unwrap().len(),
        4,
        "alpine3, alpine4"
    );
    assert_eq!(m.lookup("alpine1", "alpine2").await, None);
}

#[tokio::test]
async fn a_dead_host_is_removed_after_its_etcd_lease() {
    let server = EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd this test needs: {e}"));
    let stores = [client(&server).await, client(&server).await];
    let shared = client(&server).await;
    // etcd's minimum ttl (2 s with its default election timeout).
    let ttl = Duration::from_secs(2);
    let mut c = Cluster::with_options(
        &["manager", "worker-1"],
        shared,
        move |i| stores[i].clone(),
        ttl,
    )
    .await;
    let net = c
        .host("manager")
        .wharf()
        .create_network(
            NetworkSpec::new("test-net")
                .driver(DriverOptions::Overlay(OverlayOptions::default()))
                .attachable(),
        )
        .await
        .unwrap();
    c.host("manager").run("alpine1", "test-net").await;
    c.host("worker-1").run("alpine2", "test-net").await;
    assert!(converged(&c, &net.id).await);
    // Kept alive past its ttl.
    tokio::time::sleep(ttl * 2).await;
    assert_eq!(c.host("manager").entries(&net.id).await.unwrap().len(), 2);

    c.kill("worker-1").await;
    let m = c.host("manager");
    assert!(
        eventually(CONVERGED, || async {
            m.entries(&net.id).await.unwrap().is_empty()
                && m.lookup("alpine1", "alpine2").await.is_none()
        })
        .await,
        "worker-1's endpoint goes with its lease"
    );
    assert_eq!(
        c.store
            .list(&format!("cluster/v1/endpoints/{}/", net.id))
            .await
            .unwrap()
            .len(),
        1
    );
}
