//! The etcd store against a real etcd server on loopback (`wharf::lab::etcd`): the `Store`
//! contract, leases, two hosts allocating through IPAM, watches across an etcd restart.
//!
//! These tests need Debian's `etcd-server` package: without it they fail, saying so.
#![cfg(feature = "etcd")]

mod store_contract;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use store_contract::{concurrent_batches, contract, lease_contract, next_event};
use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions, SubnetRequest};
use wharf::lab::etcd::{EtcdServer, EtcdServerError};
use wharf::store::{EtcdOptions, EtcdStore, Op, Store, StoreError, WatchEvent};

const WAIT: Duration = Duration::from_secs(10);

async fn etcd() -> EtcdServer {
    EtcdServer::start()
        .await
        .unwrap_or_else(|e| panic!("cannot run the etcd these tests need: {e}"))
}

async fn connect(server: &EtcdServer, namespace: &str) -> EtcdStore {
    EtcdStore::connect(
        &server.endpoints(),
        EtcdOptions::default()
            .with_namespace(namespace)
            .with_request_timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn etcd_store_keeps_the_contract_in_two_namespaces_at_once() {
    let server = etcd().await;
    let a = connect(&server, "cluster-a/").await;
    let b = connect(&server, "cluster-b/").await;
    // Both namespaces run the contract concurrently: each sees only its own keys.
    tokio::join!(contract(&a), contract(&b));
    let raw = connect(&server, "").await;
    let keys: Vec<String> = raw
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert!(keys.contains(&"cluster-a/t/v1/a".to_owned()), "{keys:?}");
    assert!(keys.contains(&"cluster-b/t/v1/a".to_owned()), "{keys:?}");
    assert_eq!(a.list("").await.unwrap().len() * 2, keys.len());
    concurrent_batches(&a).await;
}

#[tokio::test]
async fn etcd_store_keeps_the_lease_contract() {
    let server = etcd().await;
    lease_contract(Arc::new(connect(&server, "leases/").await)).await;
}

#[tokio::test]
async fn failed_batches_name_the_op_that_failed() {
    let server = etcd().await;
    let store = connect(&server, "f/").await;
    let ra = store.put("a", b"a".to_vec()).await.unwrap();
    store.put("b", b"b".to_vec()).await.unwrap();
    let put = |k: &str| Op::Put {
        key: k.into(),
        value: vec![],
    };
    // The guard of the third op fails: its error, not another's.
    let err = store
        .apply(vec![
            put("n1"),
            Op::Swap {
                key: "a".into(),
                expected: ra,
                value: vec![],
            },
            Op::Create {
                key: "b".into(),
                value: vec![],
            },
            Op::Delete { key: "zz".into() },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref key } if key == "b"),
        "{err}"
    );
    let err = store
        .apply(vec![
            put("n1"),
            Op::DeleteIf {
                key: "a".into(),
                expected: ra + 100,
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, expected, actual: Some(actual) } if key == "a" && expected == ra + 100 && actual == ra),
        "{err}"
    );
    // A later op on the same key fails against the batch itself.
    let err = store
        .apply(vec![
            Op::Delete { key: "b".into() },
            Op::Delete { key: "b".into() },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound { ref key } if key == "b"),
        "{err}"
    );
    let err = store
        .apply(vec![
            put("c"),
            Op::Create {
                key: "c".into(),
                value: vec![],
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AlreadyExists { ref key } if key == "c"),
        "{err}"
    );
    let err = store
        .apply(vec![
            put("c"),
            Op::Swap {
                key: "c".into(),
                expected: ra,
                value: vec![],
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, .. } if key == "c"),
        "{err}"
    );
    // Swap against revision 0 never matches, not even an absent key.
    let err = store
        .compare_and_swap("absent", 0, vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { ref key, actual: None, .. } if key == "absent"),
        "{err}"
    );
    // Nothing of the failed batches was written.
    let keys: Vec<String> = store
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["a", "b"]);
    // A lease that is gone.
    let lease = store.grant_lease(Duration::from_secs(5)).await.unwrap();
    store.revoke_lease(lease).await.unwrap();
    let err = store
        .apply(vec![
            put("x"),
            Op::PutWithLease {
                key: "y".into(),
                value: vec![],
                lease,
            },
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::LeaseNotFound { lease: l } if l == lease),
        "{err}"
    );
    // A batch of MAX_BATCH_OPS keys goes through in one transaction.
    let ops: Vec<Op> = (0..wharf::store::MAX_BATCH_OPS)
        .map(|i| Op::Create {
            key: format!("many/{i:03}"),
            value: vec![],
        })
        .collect();
    let rev = store.apply(ops).await.unwrap();
    let listed = store.list("many/").await.unwrap();
    assert_eq!(listed.len(), wharf::store::MAX_BATCH_OPS);
    assert!(listed.iter().all(|kv| kv.revision == rev));
}

#[tokio::test]
async fn listing_reads_past_one_page() {
    let server = etcd().await;
    let store = connect(&server, "p/").await;
    for chunk in (0..2500).collect::<Vec<u32>>().chunks(100) {
        let ops = chunk
            .iter()
            .map(|i| Op::Put {
                key: format!("k/{i:05}"),
                value: i.to_string().into_bytes(),
            })
            .collect();
        store.apply(ops).await.unwrap();
    }
    store.put("l", vec![]).await.unwrap();
    let listed = store.list("k/").await.unwrap();
    assert_eq!(listed.len(), 2500);
    assert!(listed.windows(2).all(|w| w[0].key < w[1].key));
    assert_eq!(listed[2499].value, b"2499");
    assert_eq!(store.list("").await.unwrap().len(), 2501);
}

/// Two hosts, each with its own connection and its own IPAM, allocating concurrently from one
/// cluster network never hand out the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_allocating_through_ipam_never_collide() {
    let server = etcd().await;
    let one = Ipam::open(
        Arc::new(connect(&server, "wharf/").await),
        IpamOptions::cluster(b"c"),
    )
    .await
    .unwrap();
    let two = Ipam::open(
        Arc::new(connect(&server, "wharf/").await),
        IpamOptions::cluster(b"c"),
    )
    .await
    .unwrap();
    let s1 = one
        .request_subnet(SubnetRequest::new("x", "x"))
        .await
        .unwrap();
    let s2 = two
        .request_subnet(SubnetRequest::new("y", "y"))
        .await
        .unwrap();
    assert_ne!(s1.subnet, s2.subnet);
    let run = |ipam: Ipam| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..60 {
                got.push(
                    ipam.allocate("x", AddressRequest::Next(Family::V4))
                        .await
                        .unwrap(),
                );
            }
            got
        })
    };
    let (a, b) = tokio::join!(run(one.clone()), run(two.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut seen = HashSet::new();
    for ip in a.iter().chain(&b) {
        assert!(seen.insert(*ip), "{ip} handed out twice");
    }
    assert_eq!(seen.len(), 120);
    let store = connect(&server, "wharf/").await;
    let keys = store.list("ipam/v1/cluster/addrs/x/").await.unwrap();
    assert_eq!(keys.len(), 120, "one key per address");
    assert!(matches!(
        one.allocate("x", AddressRequest::Static(b[0])).await,
        Err(wharf::ipam::IpamError::AddressInUse { .. })
    ));
}

#[tokio::test]
async fn watch_sees_puts_and_deletes_in_order() {
    let server = etcd().await;
    let store = connect(&server, "w/").await;
    let other = connect(&server, "other/").await;
    store.put("n/before", vec![]).await.unwrap();
    let mut watch = store.watch("n/").await.unwrap();
    other.put("n/x", vec![]).await.unwrap();
    store.put("m/x", vec![]).await.unwrap();
    let r1 = store.put("n/a", b"1".to_vec()).await.unwrap();
    let r2 = store
        .apply(vec![
            Op::Put {
                key: "n/b".into(),
                value: b"2".to_vec(),
            },
            Op::Delete {
                key: "n/before".into(),
            },
            Op::Swap {
                key: "n/a".into(),
                expected: r1,
                value: b"3".to_vec(),
            },
        ])
        .await
        .unwrap();
    let r3 = store.delete("n/b").await.unwrap();
    let expected = [
        WatchEvent::Put(wharf::store::KeyValue {
            key: "n/a".into(),
            value: b"1".to_vec(),
            revision: r1,
        }),
        WatchEvent::Put(wharf::store::KeyValue {
            key: "n/b".into(),
            value: b"2".to_vec(),
            revision: r2,
        }),
        WatchEvent::Delete {
            key: "n/before".into(),
            revision: r2,
        },
        WatchEvent::Put(wharf::store::KeyValue {
            key: "n/a".into(),
            value: b"3".to_vec(),
            revision: r2,
        }),
        WatchEvent::Delete {
            key: "n/b".into(),
            revision: r3,
        },
    ];
    for want in expected {
        assert_eq!(next_event(&mut watch, WAIT).await, want);
    }
    // Dropping the store ends its watches.
    drop(store);
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .is_none()
    );
}

/// Writes `key`, retrying while the client reconnects to a restarted etcd.
async fn put_retrying(store: &EtcdStore, key: &str) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match store.put(key, key.as_bytes().to_vec()).await {
            Ok(rev) => return rev,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("retrying a write after the restart: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    }
}

/// A watch resumes after etcd restarts, from the revision after the last one it delivered:
/// writes made before it reconnected are delivered, none twice.
#[tokio::test]
async fn watch_resumes_across_an_etcd_restart() {
    let mut server = etcd().await;
    let store = connect(&server, "r/").await;
    let mut watch = store.watch("k/").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(item) = watch.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    let r1 = store.put("k/1", vec![]).await.unwrap();
    let first = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.unwrap().revision(), r1);

    server.kill();
    assert!(store.put("k/down", vec![]).await.is_err(), "etcd is down");
    server.start_again().await.unwrap();
    let mut written = Vec::new();
    for key in ["k/2", "k/3", "k/4"] {
        written.push((key, put_retrying(&store, key).await));
    }
    for (key, rev) in written {
        let event = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{key} not seen after the restart"))
            .unwrap()
            .unwrap_or_else(|e| panic!("watch failed after the restart: {e}"));
        assert_eq!((event.key(), event.revision()), (key, rev));
    }
    // The data survived the restart, and later writes are seen too.
    assert!(store.get("k/1").await.unwrap().is_some());
    let r5 = store.put("k/5", vec![]).await.unwrap();
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((event.key(), event.revision()), ("k/5", r5));
    assert!(rx.try_recv().is_err(), "nothing twice");
    reader.abort();
}

/// When the history a watch would resume from was compacted while it was disconnected, it says
/// so (the caller lists again and re-watches) and ends, instead of silently missing events.
#[tokio::test]
async fn a_watch_that_cannot_resume_reports_lagged() {
    let mut server = etcd().await;
    let store = connect(&server, "c/").await;
    let mut watch = store.watch("k/").await.unwrap();
    store.put("k/1", vec![]).await.unwrap();
    assert_eq!(next_event(&mut watch, WAIT).await.key(), "k/1");
    // Not polled from here on: the watch notices the restart only when read again.
    server.kill();
    server.start_again().await.unwrap();
    put_retrying(&store, "k/2").await;
    let last = put_retrying(&store, "k/3").await;
    store.compact(last).await.unwrap();
    match tokio::time::timeout(WAIT, watch.next()).await.unwrap() {
        Some(Err(StoreError::WatchLagged { missed })) => assert!(missed >= 1),
        other => panic!("expected WatchLagged, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap()
            .is_none()
    );
    // A new watch works.
    let mut watch = store.watch("k/").await.unwrap();
    let r4 = store.put("k/4", vec![]).await.unwrap();
    assert_eq!(next_event(&mut watch, WAIT).await.revision(), r4);
}

/// A watch that cannot reach etcd for `watch_retry_for` ends with a backend error.
#[tokio::test]
async fn a_watch_gives_up_on_an_etcd_that_stays_down() {
    let mut server = etcd().await;
    let store = EtcdStore::connect(
        &server.endpoints(),
        EtcdOptions::default()
            .with_request_timeout(Duration::from_secs(1))
            .with_watch_retry_for(Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let mut watch = store.watch("").await.unwrap();
    server.kill();
    match tokio::time::timeout(WAIT, watch.next()).await.unwrap() {
        Some(Err(StoreError::Backend { context, .. })) => {
            assert!(context.contains(&server.endpoint()), "{context}")
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// Leases live in etcd: keys of a kept lease survive an etcd restart.
#[tokio::test]
async fn a_kept_lease_survives_an_etcd_restart() {
    let mut server = etcd().await;
    let store: Arc<dyn Store> = Arc::new(connect(&server, "l/").await);
    let ttl = Duration::from_secs(2);
    let lease = store.grant_lease(ttl).await.unwrap();
    store.put_with_lease("host/a", vec![], lease).await.unwrap();
    let keeper = wharf::store::LeaseKeeper::spawn(Arc::clone(&store), lease, ttl);
    server.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_again().await.unwrap();
    tokio::time::sleep(ttl * 2).await;
    assert!(!keeper.is_lost());
    assert!(store.get("host/a").await.unwrap().is_some());
}

#[tokio::test]
async fn connecting_to_nothing_names_the_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = EtcdStore::connect(
        std::slice::from_ref(&endpoint),
        EtcdOptions::default()
            .with_connect_timeout(Duration::from_millis(500))
            .with_request_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&endpoint), "{err}");
}

#[tokio::test]
async fn a_missing_etcd_binary_fails_loudly() {
    let err = EtcdServer::start_binary("/nonexistent/etcd")
        .await
        .unwrap_err();
    assert!(matches!(err, EtcdServerError::NotInstalled { .. }));
    assert!(err.to_string().contains("etcd-server"), "{err}");
}

#[tokio::test]
async fn the_test_server_cleans_up_after_itself() {
    let mut server = etcd().await;
    let dir = server.data_dir();
    assert!(dir.exists());
    assert!(server.is_running());
    drop(server);
    assert!(!dir.exists());
}
