//! Concurrency: many tasks allocating and releasing in one subnet never get the same address.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use wharf::ipam::{AddressRequest, Family, Ipam, IpamConfig, IpamOptions, SubnetRequest};
use wharf::store::{EmbeddedStore, MemoryStore, Store};

const TASKS: usize = 64;
const TOTAL: usize = 100_000;
/// Each task holds up to this many addresses, so the /16 runs close to full (64 * 1000).
const HELD: usize = 1000;

async fn churn(ipam: Ipam, tasks: usize, per_task: usize, held_max: usize) {
    let live: Arc<Mutex<HashSet<IpAddr>>> = Arc::default();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let ipam = ipam.clone();
        let live = Arc::clone(&live);
        handles.push(tokio::spawn(async move {
            let mut held: Vec<IpAddr> = Vec::new();
            let mut x = (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for _ in 0..per_task {
                let ip = ipam
                    .allocate("stress", AddressRequest::Next(Family::V4))
                    .await
                    .unwrap();
                assert!(live.lock().unwrap().insert(ip), "{ip} handed out twice");
                held.push(ip);
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if held.len() >= held_max || x % 3 == 0 {
                    let victim = held.swap_remove((x % held.len() as u64) as usize);
                    assert!(live.lock().unwrap().remove(&victim));
                    ipam.release("stress", victim).await.unwrap();
                }
            }
            for ip in held {
                assert!(live.lock().unwrap().remove(&ip));
                ipam.release("stress", ip).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert!(live.lock().unwrap().is_empty());
    assert!(ipam.allocated("stress").is_empty());
}

async fn stress_network(store: Arc<dyn Store>, subnet: &str) -> Ipam {
    let ipam = Ipam::open(store, IpamOptions::local(b"h")).await.unwrap();
    ipam.request_subnet(
        SubnetRequest::new("stress", "stress-net")
            .with_config(IpamConfig::new().parse_subnet(subnet).unwrap()),
    )
    .await
    .unwrap();
    ipam
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_churn_100k_addresses_in_a_slash_16_without_duplicates() {
    let store = MemoryStore::new();
    let ipam = stress_network(Arc::new(store.clone()), "10.50.0.0/16").await;
    churn(ipam, TASKS, TOTAL.div_ceil(TASKS), HELD).await;
    assert!(store.list("ipam/v1/local/addrs/").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_on_the_embedded_store_never_duplicate() {
    // Every change here is fsynced, so keep the count small.
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("s.redb"))
        .await
        .unwrap();
    let ipam = stress_network(Arc::new(store.clone()), "10.51.0.0/24").await;
    churn(ipam, 16, 10, 8).await;
    assert!(store.list("ipam/v1/local/addrs/").await.unwrap().is_empty());
}

/// Concurrent subnet requests from two allocators sharing a store never overlap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subnet_requests_never_overlap() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = Ipam::open(Arc::clone(&store), IpamOptions::local(b"h"))
        .await
        .unwrap();
    let b = Ipam::open(Arc::clone(&store), IpamOptions::local(b"h"))
        .await
        .unwrap();
    let mut handles = Vec::new();
    for i in 0..24 {
        let ipam = if i % 2 == 0 { a.clone() } else { b.clone() };
        handles.push(tokio::spawn(async move {
            ipam.request_subnet(SubnetRequest::new(format!("n{i}"), format!("net{i}")))
                .await
                .unwrap()
                .subnet
        }));
    }
    let mut subnets = Vec::new();
    for h in handles {
        subnets.push(h.await.unwrap());
    }
    for (i, x) in subnets.iter().enumerate() {
        for y in &subnets[i + 1..] {
            assert!(
                !(x.contains(y.network()) || y.contains(x.network())),
                "{x} overlaps {y}"
            );
        }
    }
    // Together they took exactly the first 24 pool subnets.
    let mut sorted = subnets.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 24);
    assert!(sorted.contains(&"172.17.0.0/16".parse().unwrap()));
}
