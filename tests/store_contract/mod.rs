//! The `Store` contract, shared by the tests of every backend (`mod store_contract;`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use wharf::store::{LeaseKeeper, Op, Store, StoreError, WatchEvent, WatchStream};

/// The lease ttl of the lease tests: etcd's smallest (whole seconds).
pub const TTL: Duration = Duration::from_secs(1);
/// How long after its ttl a lease's keys may take to vanish (etcd checks every 500 ms).
pub const EXPIRY_SLACK: Duration = Duration::from_secs(4);

/// Atomic batches, create/swap/delete semantics, prefix listing and watches.
pub async fn contract(store: &dyn Store) {
    // Revisions only grow; their values are the backend's (etcd's start at 1 and are shared by
    // every namespace of the cluster).
    let r0 = store.apply(vec![]).await.unwrap();
    let r1 = store.create("t/v1/a", b"1".to_vec()).await.unwrap();
    assert!(r1 > r0, "{r1} > {r0}");
    assert!(store.apply(vec![]).await.unwrap() >= r1);
    assert!(matches!(
        store.create("t/v1/a", b"x".to_vec()).await,
        Err(StoreError::AlreadyExists { key }) if key == "t/v1/a"
    ));
    let r2 = store.put("t/v1/b", b"2".to_vec()).await.unwrap();
    assert!(r2 > r1);
    store.put("t/v2/c", b"3".to_vec()).await.unwrap();

    // Compare-and-swap by revision.
    assert!(matches!(
        store.compare_and_swap("t/v1/a", r2, b"no".to_vec()).await,
        Err(StoreError::Conflict { expected, actual: Some(actual), .. }) if expected == r2 && actual == r1
    ));
    let r3 = store
        .compare_and_swap("t/v1/a", r1, b"11".to_vec())
        .await
        .unwrap();
    let a = store.get("t/v1/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.revision), (&b"11"[..], r3));
    assert!(store.get("t/v1/zz").await.unwrap().is_none());

    // Prefix listing, in key order.
    let keys: Vec<String> = store
        .list("t/v1/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["t/v1/a", "t/v1/b"]);

    // A failing batch writes nothing.
    let before = store.list("").await.unwrap();
    let err = store
        .apply(vec![
            Op::Put {
                key: "t/v1/new".into(),
                value: b"n".to_vec(),
            },
            Op::Delete {
                key: "t/v1/missing".into(),
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));
    assert_eq!(store.list("").await.unwrap(), before);

    // Ops in a batch see the earlier ones; one revision for the batch.
    let rb = store
        .apply(vec![
            Op::Create {
                key: "t/v1/x".into(),
                value: b"x".to_vec(),
            },
            Op::Delete {
                key: "t/v1/x".into(),
            },
            Op::Put {
                key: "t/v1/y".into(),
                value: b"y".to_vec(),
            },
        ])
        .await
        .unwrap();
    assert!(store.get("t/v1/x").await.unwrap().is_none());
    assert_eq!(store.get("t/v1/y").await.unwrap().unwrap().revision, rb);

    // Watches see committed changes under their prefix, in order.
    let mut watch = store.watch("t/v1/").await.unwrap();
    store.put("t/v2/ignored", b"i".to_vec()).await.unwrap();
    let rp = store.put("t/v1/w", b"w".to_vec()).await.unwrap();
    let rd = store.delete("t/v1/w").await.unwrap();
    match watch.next().await.unwrap().unwrap() {
        WatchEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.revision), ("t/v1/w", rp)),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        watch.next().await.unwrap().unwrap(),
        WatchEvent::Delete {
            key: "t/v1/w".into(),
            revision: rd
        }
    );
    assert!(matches!(
        store.delete("t/v1/w").await,
        Err(StoreError::NotFound { .. })
    ));
}

/// The next event of `watch`, failing the test if none comes within `wait`.
/// Many batches applied at once (the embedded store commits them as a group): each batch is
/// atomic on its own, gets its own revision and its own result, sees the batches committed
/// before it, and one whose condition fails changes nothing and fails no other; relaxed and
/// durable batches mix.
pub async fn concurrent_batches(store: &dyn Store) {
    let taken = store.create("g/v1/taken", b"0".to_vec()).await.unwrap();
    let put = |key: String| Op::Put {
        key,
        value: b"v".to_vec(),
    };
    let batches: Vec<Vec<Op>> = (0..60)
        .map(|i| match i % 4 {
            // Writes two keys.
            0 | 1 => vec![put(format!("g/v1/ok{i}a")), put(format!("g/v1/ok{i}b"))],
            // Writes one key, then fails on a key that exists: nothing of it may land.
            2 => vec![
                put(format!("g/v1/bad{i}")),
                Op::Create {
                    key: "g/v1/taken".into(),
                    value: b"x".to_vec(),
                },
            ],
            // Every one of these races for the same key: exactly one wins.
            _ => vec![Op::Create {
                key: "g/v1/race".into(),
                value: format!("{i}").into_bytes(),
            }],
        })
        .collect();
    // Some of the plain writes are relaxed: a group that mixes both kinds keeps every result.
    let results = futures::future::join_all(batches.into_iter().enumerate().map(|(i, ops)| {
        if i % 4 == 1 {
            store.apply_relaxed(ops)
        } else {
            store.apply(ops)
        }
    }))
    .await;
    let mut revisions = Vec::new();
    let mut winners = 0;
    for (i, result) in results.iter().enumerate() {
        match i % 4 {
            0 | 1 => {
                let rev = *result.as_ref().unwrap();
                assert!(rev > taken);
                for key in [format!("g/v1/ok{i}a"), format!("g/v1/ok{i}b")] {
                    let kv = store.get(&key).await.unwrap().unwrap();
                    assert_eq!(kv.revision, rev, "both keys of batch {i} at its revision");
                }
                revisions.push(rev);
            }
            2 => {
                assert!(
                    matches!(result, Err(StoreError::AlreadyExists { key }) if key == "g/v1/taken"),
                    "batch {i}: {result:?}"
                );
                assert!(store.get(&format!("g/v1/bad{i}")).await.unwrap().is_none());
            }
            _ => match result {
                Ok(rev) => {
                    winners += 1;
                    let kv = store.get("g/v1/race").await.unwrap().unwrap();
                    assert_eq!(kv.revision, *rev);
                    assert_eq!(kv.value, format!("{i}").into_bytes());
                    revisions.push(*rev);
                }
                Err(StoreError::AlreadyExists { key }) => assert_eq!(key, "g/v1/race"),
                Err(e) => panic!("batch {i}: {e}"),
            },
        }
    }
    assert_eq!(winners, 1, "one create of g/v1/race wins");
    let count = revisions.len();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        count,
        "every successful batch has its own revision"
    );
    assert_eq!(
        store.get("g/v1/taken").await.unwrap().unwrap().revision,
        taken,
        "the failed creates left the key alone"
    );
    assert_eq!(store.list("g/v1/ok").await.unwrap().len(), 60);
}

pub async fn next_event(watch: &mut WatchStream, wait: Duration) -> WatchEvent {
    match tokio::time::timeout(wait, watch.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {wait:?}"),
    }
}

/// Leases: revoke deletes at once, expiry deletes after the ttl (seen by watchers, without any
/// other call on the store), a keeper holds the keys, a plain write detaches a key.
pub async fn lease_contract(store: Arc<dyn Store>) {
    let mut watch = store.watch("l/").await.unwrap();

    // Revoke: the lease's keys go at once, in one batch; other keys stay.
    let a = store.grant_lease(TTL).await.unwrap();
    let r1 = store
        .put_with_lease("l/a1", b"1".to_vec(), a)
        .await
        .unwrap();
    let r2 = store
        .apply(vec![Op::CreateWithLease {
            key: "l/a2".into(),
            value: b"2".to_vec(),
            lease: a,
        }])
        .await
        .unwrap();
    assert!(matches!(
        store
            .apply(vec![Op::CreateWithLease {
                key: "l/a2".into(),
                value: b"2".to_vec(),
                lease: a,
            }])
            .await,
        Err(StoreError::AlreadyExists { key }) if key == "l/a2"
    ));
    store.put("l/plain", b"p".to_vec()).await.unwrap();
    assert!(store.keep_alive(a).await.unwrap() >= TTL);
    store.revoke_lease(a).await.unwrap();
    assert!(store.get("l/a1").await.unwrap().is_none());
    assert!(store.get("l/a2").await.unwrap().is_none());
    assert!(store.get("l/plain").await.unwrap().is_some());
    let wait = Duration::from_secs(5);
    for (key, rev) in [("l/a1", r1), ("l/a2", r2), ("l/plain", 0)] {
        match next_event(&mut watch, wait).await {
            WatchEvent::Put(kv) => {
                assert_eq!(kv.key, key);
                if rev > 0 {
                    assert_eq!(kv.revision, rev);
                }
            }
            other => panic!("expected a put of {key}, got {other:?}"),
        }
    }
    let d1 = next_event(&mut watch, wait).await;
    let d2 = next_event(&mut watch, wait).await;
    assert!(
        matches!(&d1, WatchEvent::Delete { key, .. } if key == "l/a1"),
        "{d1:?}"
    );
    assert!(
        matches!(&d2, WatchEvent::Delete { key, .. } if key == "l/a2"),
        "{d2:?}"
    );
    assert_eq!(d1.revision(), d2.revision(), "one batch");
    assert!(matches!(
        store.revoke_lease(a).await,
        Err(StoreError::LeaseNotFound { lease }) if lease == a
    ));
    assert!(matches!(
        store.keep_alive(a).await,
        Err(StoreError::LeaseNotFound { lease }) if lease == a
    ));
    assert!(matches!(
        store.put_with_lease("l/late", b"x".to_vec(), a).await,
        Err(StoreError::LeaseNotFound { lease }) if lease == a
    ));
    assert!(store.get("l/late").await.unwrap().is_none());

    // Expiry: nobody keeps the lease alive; the key goes after the ttl, and a watcher sees it
    // without anyone else touching the store.
    let b = store.grant_lease(TTL).await.unwrap();
    store.put_with_lease("l/b", b"b".to_vec(), b).await.unwrap();
    assert!(matches!(next_event(&mut watch, wait).await, WatchEvent::Put(kv) if kv.key == "l/b"));
    let started = tokio::time::Instant::now();
    match next_event(&mut watch, TTL + EXPIRY_SLACK).await {
        WatchEvent::Delete { key, .. } => assert_eq!(key, "l/b"),
        other => panic!("expected the expiry of l/b, got {other:?}"),
    }
    assert!(
        started.elapsed() >= TTL / 2,
        "expired too early: {:?}",
        started.elapsed()
    );
    assert!(store.get("l/b").await.unwrap().is_none());
    assert!(matches!(
        store.keep_alive(b).await,
        Err(StoreError::LeaseNotFound { .. })
    ));

    // A keeper holds the key for several ttls; dropping it lets the key go.
    let c = store.grant_lease(TTL).await.unwrap();
    store.put_with_lease("l/c", b"c".to_vec(), c).await.unwrap();
    let keeper = LeaseKeeper::spawn(Arc::clone(&store), c, TTL);
    tokio::time::sleep(TTL * 3).await;
    assert!(store.get("l/c").await.unwrap().is_some(), "kept alive");
    assert!(!keeper.is_lost());
    drop(keeper);
    let deadline = tokio::time::Instant::now() + TTL + EXPIRY_SLACK;
    while store.get("l/c").await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "l/c outlived its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A plain write detaches the key from its lease.
    let d = store.grant_lease(TTL).await.unwrap();
    store.put_with_lease("l/d", b"d".to_vec(), d).await.unwrap();
    store.put("l/d", b"kept".to_vec()).await.unwrap();
    store.revoke_lease(d).await.unwrap();
    assert_eq!(store.get("l/d").await.unwrap().unwrap().value, b"kept");

    // A keeper reports a revoked lease as lost.
    let e = store.grant_lease(TTL * 2).await.unwrap();
    let keeper = LeaseKeeper::spawn(Arc::clone(&store), e, TTL * 2);
    store.revoke_lease(e).await.unwrap();
    tokio::time::timeout(TTL * 3, keeper.lost())
        .await
        .expect("the keeper notices the revoke");
    assert!(keeper.is_lost());
}
