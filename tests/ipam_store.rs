//! The `Store` contract, checked against both local implementations, and the embedded store's
//! persistence across reopen.

use std::sync::Arc;

use futures::StreamExt;
use wharf::ipam::{AddressRequest, Family, Ipam, IpamOptions, SubnetRequest};
use wharf::store::{EmbeddedStore, MemoryStore, Op, Store, StoreError, WatchEvent};

async fn contract(store: &dyn Store) {
    assert_eq!(store.apply(vec![]).await.unwrap(), 0);
    let r1 = store.create("t/v1/a", b"1".to_vec()).await.unwrap();
    assert_eq!(r1, 1);
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

#[tokio::test]
async fn memory_store_keeps_the_contract() {
    contract(&MemoryStore::new()).await;
}

#[tokio::test]
async fn embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path().join("state.redb"))
        .await
        .unwrap();
    contract(&store).await;
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
