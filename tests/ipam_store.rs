//! The `Store` contract, checked against both local implementations, and the embedded store's
//! persistence across reopen.

mod store_contract;

use std::sync::Arc;

use store_contract::{concurrent_batches, contract};
use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions, SubnetRequest};
use wharf::store::{EmbeddedStore, MemoryStore, Store};

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    let store = MemoryStore::new();
    // The local stores count from zero.
    assert_eq!(store.apply(vec![]).await.unwrap(), 0);
    contract(&store).await;
    concurrent_batches(&store).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    assert_eq!(store.apply(vec![]).await.unwrap(), 0);
    contract(&store).await;
}

/// Concurrent batches on the embedded store are committed as groups (one transaction, one
/// fsync), on a runtime with several workers so that they really overlap; each keeps its own
/// result, and what was committed survives reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_commits_concurrent_batches_each_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = EmbeddedStore::open(&path).await.unwrap();
    concurrent_batches(&store).await;
    let rev = store.apply(vec![]).await.unwrap();
    drop(store);
    // The last answer came after the committer let the file go: it reopens at once.
    let store = EmbeddedStore::open(&path).await.unwrap();
    assert_eq!(store.apply(vec![]).await.unwrap(), rev);
    assert_eq!(store.list("g/v1/ok").await.unwrap().len(), 60);
    assert!(store.list("g/v1/bad").await.unwrap().is_empty());
}

#[tokio::test]
async fn embedded_store_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/dir/state.redb");
    let (subnet, ips) = {
        let store = EmbeddedStore::open(&path).await.unwrap();
        let ipam = Ipam::open(Arc::new(store), IpamOptions::local(b"h"))
            .await
            .unwrap();
        let lease = ipam
            .request_subnet(SubnetRequest::new("n", "net"))
            .await
            .unwrap();
        let mut ips = Vec::new();
        for _ in 0..10 {
            ips.push(
                ipam.allocate("n", AddressRequest::Next(Family::V4))
                    .await
                    .unwrap(),
            );
        }
        ipam.release("n", ips.remove(3)).await.unwrap();
        (lease.subnet, ips)
    };
    let store = EmbeddedStore::open(&path).await.unwrap();
    let rev = store.apply(vec![]).await.unwrap();
    assert!(rev >= 12, "revision survives reopen: {rev}");
    let ipam = Ipam::open(Arc::new(store), IpamOptions::local(b"h"))
        .await
        .unwrap();
    assert_eq!(ipam.subnets("n")[0].subnet, subnet);
    assert_eq!(ipam.allocated("n"), ips);
    // The released slot is reused first, then allocation continues after the others.
    let next = ipam
        .allocate("n", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(next.to_string(), "172.17.0.5");
}

#[tokio::test]
async fn orphaned_addresses_are_collected_on_open() {
    let store = MemoryStore::new();
    store
        .put(
            "ipam/v1/local/addrs/gone/172.17.0.9",
            br#"{"subnet":"172.17.0.0/16"}"#.to_vec(),
        )
        .await
        .unwrap();
    let ipam = Ipam::open(Arc::new(store.clone()), IpamOptions::local(b"h"))
        .await
        .unwrap();
    assert!(store.list("ipam/v1/local/addrs/").await.unwrap().is_empty());
    drop(ipam);
}

#[tokio::test]
async fn a_corrupt_record_fails_open_loudly() {
    let store = MemoryStore::new();
    store
        .put("ipam/v1/local/subnets/10.0.0.0/24", b"{not json".to_vec())
        .await
        .unwrap();
    let err = Ipam::open(Arc::new(store), IpamOptions::local(b"h"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, wharf::ipam::IpamError::CorruptRecord { .. }),
        "{err}"
    );
}

/// The sweep of a dead host's address: several sweepers, exactly one releases; an allocation
/// newer than the record that used the address is never released.
#[tokio::test]
async fn release_if_older_releases_once_and_never_a_newer_allocation() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let opts = IpamOptions::cluster(b"c");
    let owner = Ipam::open(store.clone(), opts.clone()).await.unwrap();
    owner
        .request_subnet(SubnetRequest::new("n", "net"))
        .await
        .unwrap();
    let ip = owner
        .allocate("n", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    // The endpoint record that used it is written after the allocation.
    let record_rev = store.put("record", b"ep".to_vec()).await.unwrap();
    let mut sweepers = Vec::new();
    for _ in 0..4 {
        sweepers.push(Ipam::open(store.clone(), opts.clone()).await.unwrap());
    }
    let results = futures::future::join_all(
        sweepers
            .iter()
            .map(|s| s.release_if_older("n", ip, record_rev)),
    )
    .await;
    let released = results.iter().filter(|r| matches!(r, Ok(true))).count();
    assert_eq!(released, 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok()));
    // Taken again later: a late sweep of the old record leaves it alone.
    let again = sweepers[0]
        .allocate("n", AddressRequest::Static(ip))
        .await
        .unwrap();
    assert_eq!(again, ip);
    assert!(
        !sweepers[1]
            .release_if_older("n", ip, record_rev)
            .await
            .unwrap()
    );
    assert!(sweepers[0].is_allocated("n", ip));
}

/// An address allocated in an owner's name is released only by that owner, once, and never
/// after another allocator took it again (a release repeated by crash recovery).
#[tokio::test]
async fn release_owned_frees_only_the_owners_own_allocation() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let opts = IpamOptions::cluster(b"c");
    let a = Ipam::open(store.clone(), opts.clone()).await.unwrap();
    a.request_subnet(SubnetRequest::new("n", "net"))
        .await
        .unwrap();
    let ip = a
        .allocate_for("n", AddressRequest::Next(Family::V4), "host-a/ep1")
        .await
        .unwrap();
    let listed = a.stored_addresses().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].network_id.as_str(),
            listed[0].ip,
            listed[0].owner.as_deref()
        ),
        ("n", ip, Some("host-a/ep1"))
    );
    assert!(!a.release_owned("n", ip, "host-a/ep2").await.unwrap());
    assert!(a.is_allocated("n", ip));
    assert!(a.release_owned("n", ip, "host-a/ep1").await.unwrap());
    assert!(!a.is_allocated("n", ip));
    assert!(!a.release_owned("n", ip, "host-a/ep1").await.unwrap());
    // Taken by another host: a repeated release in the old owner's name leaves it alone.
    let b = Ipam::open(store.clone(), opts.clone()).await.unwrap();
    b.allocate_for("n", AddressRequest::Static(ip), "host-b/ep9")
        .await
        .unwrap();
    assert!(!a.release_owned("n", ip, "host-a/ep1").await.unwrap());
    assert_eq!(
        b.stored_addresses().await.unwrap()[0].owner.as_deref(),
        Some("host-b/ep9")
    );
    // An allocation without an owner is released as `release` would.
    let plain = a
        .allocate("n", AddressRequest::Next(Family::V4))
        .await
        .unwrap();
    assert_eq!(a.stored_addresses().await.unwrap().len(), 2);
    assert!(a.release_owned("n", plain, "anyone").await.unwrap());
}
