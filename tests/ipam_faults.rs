//! A store that fails: the allocator undoes its in-memory reservation, so nothing leaks and the
//! address is handed out once the store works again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use wharf::ipam::{AddressRequest, Family, Ipam, IpamError, IpamOptions, SubnetRequest};
use wharf::store::{KeyValue, MemoryStore, Op, Revision, Store, StoreError, WatchStream};

#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    failing: AtomicBool,
}

#[async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::backend("test", "disk on fire"));
        }
        self.inner.apply(ops).await
    }
    async fn watch(&self, prefix: &str) -> Result<WatchStream, StoreError> {
        self.inner.watch(prefix).await
    }
}

#[tokio::test]
async fn a_failed_write_reserves_nothing() {
    let store = Arc::new(Flaky::default());
    let ipam = Ipam::open(store.clone(), IpamOptions::local(b"h"))
        .await
        .unwrap();
    store.failing.store(true, Ordering::SeqCst);
    assert!(matches!(
        ipam.request_subnet(SubnetRequest::new("n", "net")).await,
        Err(IpamError::Store(_))
    ));
    assert!(ipam.all_subnets().is_empty());
    store.failing.store(false, Ordering::SeqCst);
    ipam.request_subnet(SubnetRequest::new("n", "net"))
        .await
        .unwrap();

    store.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        let err = ipam
            .allocate("n", AddressRequest::Next(Family::V4))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("disk on fire") || matches!(err, IpamError::Store(_)));
    }
    assert!(ipam.allocated("n").is_empty(), "undone in memory");
    store.failing.store(false, Ordering::SeqCst);
    let ip = ipam
        .allocate("n", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(ip.to_string(), "172.17.0.2");

    // A failed release keeps the address allocated (in memory and in the store).
    store.failing.store(true, Ordering::SeqCst);
    assert!(ipam.release("n", ip).await.is_err());
    assert!(ipam.is_allocated("n", ip));
    store.failing.store(false, Ordering::SeqCst);
    ipam.release("n", ip).await.unwrap();
    assert!(!ipam.is_allocated("n", ip));
}
