//! The etcd store against a real etcd on loopback (`wharf::lab::etcd`; needs Debian's
//! `etcd-server` package and the `etcd` feature: `cargo bench --features etcd --bench store`).
//!
//! - `store_etcd/create+delete`: two single-key transactions (what IPAM does per address).
//! - `store_etcd/batch 128 creates + 128 deletes`: two transactions of `MAX_BATCH_OPS` keys.
//! - `store_etcd/ipam alloc+release`: one address through `Ipam` (cluster scope).
//! - `store_etcd/put -> watch event`: from a write to its event on a watch of the same client.
//!
//! The numbers are loopback and one etcd member with its data on local disk: a lower bound for a
//! real cluster, whose every write also crosses the network to a quorum.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use futures::StreamExt;
use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions, SubnetRequest};
use wharf::lab::etcd::EtcdServer;
use wharf::store::{EtcdOptions, EtcdStore, MAX_BATCH_OPS, Op, Store};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = rt.block_on(EtcdServer::start()).unwrap_or_else(|e| {
        panic!("this benchmark needs a real etcd: {e}");
    });
    let store = rt
        .block_on(EtcdStore::connect(
            &server.endpoints(),
            EtcdOptions::default().with_namespace("bench/"),
        ))
        .unwrap();
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("store_etcd");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500));

    g.bench_function("create+delete", |b| {
        b.to_async(&rt).iter(|| async {
            store
                .create("k", br#"{"subnet":"10.0.0.0/24"}"#.to_vec())
                .await
                .unwrap();
            store.delete(black_box("k")).await.unwrap();
        })
    });

    g.bench_function("batch 128 creates + 128 deletes", |b| {
        b.to_async(&rt).iter(|| async {
            let creates = (0..MAX_BATCH_OPS)
                .map(|i| Op::Create {
                    key: format!("batch/{i}"),
                    value: b"v".to_vec(),
                })
                .collect();
            store.apply(creates).await.unwrap();
            let deletes = (0..MAX_BATCH_OPS)
                .map(|i| Op::Delete {
                    key: format!("batch/{i}"),
                })
                .collect();
            store.apply(deletes).await.unwrap();
        })
    });

    let ipam = rt.block_on(async {
        let ipam = Ipam::open(Arc::new(store.clone()), IpamOptions::cluster(b"bench"))
            .await
            .unwrap();
        ipam.request_subnet(SubnetRequest::new("n", "n"))
            .await
            .unwrap();
        ipam
    });
    g.bench_function("ipam alloc+release", |b| {
        b.to_async(&rt).iter(|| async {
            let ip = ipam
                .allocate("n", AddressRequest::Next(Family::V4))
                .await
                .unwrap();
            ipam.release("n", black_box(ip)).await.unwrap();
        })
    });

    let mut watch = rt.block_on(store.watch("w/")).unwrap();
    let watch = tokio::sync::Mutex::new(&mut watch);
    g.bench_function("put -> watch event", |b| {
        b.to_async(&rt).iter(|| async {
            let rev = store.put("w/k", b"v".to_vec()).await.unwrap();
            let event = watch.lock().await.next().await.unwrap().unwrap();
            assert_eq!(event.revision(), rev);
        })
    });
    g.finish();
    c.final_summary();
    drop(server);
}
