//! Leases on the local stores: they really expire (the memory store is what several controllers
//! of one process share), and the embedded store drops leased keys when it is reopened.

mod store_contract;

use std::sync::Arc;
use std::time::Duration;

use store_contract::{TTL, lease_contract, next_event};
use wharf::store::{EmbeddedStore, MemoryStore, Op, Store, StoreError, WatchEvent};

#[tokio::test]
async fn memory_store_keeps_the_lease_contract() {
    lease_contract(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_lease_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    lease_contract(Arc::new(store)).await;
}

#[tokio::test]
async fn memory_leases_expire_on_time_and_in_batches() {
    let store = MemoryStore::new();
    let mut watch = store.watch("").await.unwrap();
    let short = store.grant_lease(Duration::from_millis(200)).await.unwrap();
    let long = store.grant_lease(Duration::from_millis(600)).await.unwrap();
    store
        .apply(vec![
            Op::PutWithLease {
                key: "s/1".into(),
                value: vec![],
                lease: short,
            },
            Op::PutWithLease {
                key: "s/2".into(),
                value: vec![],
                lease: short,
            },
            Op::PutWithLease {
                key: "l/1".into(),
                value: vec![],
                lease: long,
            },
        ])
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            next_event(&mut watch, TTL).await,
            WatchEvent::Put(_)
        ));
    }
    let started = tokio::time::Instant::now();
    let d1 = next_event(&mut watch, TTL).await;
    let d2 = next_event(&mut watch, TTL).await;
    assert_eq!((d1.key(), d2.key()), ("s/1", "s/2"));
    assert_eq!(d1.revision(), d2.revision());
    let d3 = next_event(&mut watch, TTL).await;
    assert_eq!(d3.key(), "l/1");
    assert!(d3.revision() > d1.revision());
    assert!(started.elapsed() >= Duration::from_millis(300));
    // A lease granted later with an earlier deadline wakes the expiry task early.
    let _far = store.grant_lease(Duration::from_secs(60)).await.unwrap();
    let near = store.grant_lease(Duration::from_millis(100)).await.unwrap();
    store.put_with_lease("n", vec![], near).await.unwrap();
    assert!(matches!(
        next_event(&mut watch, TTL).await,
        WatchEvent::Put(_)
    ));
    assert!(matches!(
        next_event(&mut watch, Duration::from_millis(700)).await,
        WatchEvent::Delete { key, .. } if key == "n"
    ));
}

#[tokio::test]
async fn embedded_store_deletes_leased_keys_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let before = {
        let store = EmbeddedStore::open(&path).await.unwrap();
        let lease = store.grant_lease(Duration::from_secs(60)).await.unwrap();
        store
            .put_with_lease("h/a", b"a".to_vec(), lease)
            .await
            .unwrap();
        store
            .apply(vec![Op::CreateWithLease {
                key: "h/b".into(),
                value: b"b".to_vec(),
                lease,
            }])
            .await
            .unwrap();
        // Detached again by a plain write: survives.
        store
            .put_with_lease("h/c", b"c".to_vec(), lease)
            .await
            .unwrap();
        store.put("h/c", b"plain".to_vec()).await.unwrap();
        store.put("h/d", b"d".to_vec()).await.unwrap();
        store.apply(vec![]).await.unwrap()
    };
    let store = EmbeddedStore::open(&path).await.unwrap();
    let keys: Vec<String> = store
        .list("h/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["h/c", "h/d"]);
    assert_eq!(store.apply(vec![]).await.unwrap(), before + 1, "one batch");
    // Leases of the earlier run are gone.
    let stale = wharf::store::LeaseId(1);
    assert!(matches!(
        store.put_with_lease("h/e", vec![], stale).await,
        Err(StoreError::LeaseNotFound { .. })
    ));
    // And the next reopen has nothing left to delete.
    drop(store);
    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.apply(vec![]).await.unwrap(), before + 1);
}

#[tokio::test]
async fn stores_without_leases_say_so() {
    #[derive(Debug)]
    struct Bare(MemoryStore);
    #[async_trait::async_trait]
    impl Store for Bare {
        async fn get(&self, key: &str) -> Result<Option<wharf::store::KeyValue>, StoreError> {
            self.0.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<wharf::store::KeyValue>, StoreError> {
            self.0.list(prefix).await
        }
        async fn apply(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
            self.0.apply(ops).await
        }
        async fn watch(&self, prefix: &str) -> Result<wharf::store::WatchStream, StoreError> {
            self.0.watch(prefix).await
        }
    }
    assert!(matches!(
        Bare(MemoryStore::new()).grant_lease(TTL).await,
        Err(StoreError::Unsupported { .. })
    ));
}
