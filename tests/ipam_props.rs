//! Property tests: random sequences of allocate / static / release / restart against a model.
//!
//! Properties: no address is handed out twice; every address is inside the allocatable range
//! and is never the network, broadcast, gateway or an auxiliary address; a static request
//! succeeds exactly when the model says the address is free and in range; released space is
//! reused (lowest-free networks return exactly the lowest free address, serial ones succeed
//! whenever anything is free); a restart (reopen from the store) preserves every allocation.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use wharf::ipam::{
    AddressRequest, Family, Ipam, IpamConfig, IpamError, IpamOptions, SubnetRequest,
};
use wharf::store::{EmbeddedStore, MemoryStore, Store};

#[derive(Debug, Clone)]
enum Step {
    Next,
    /// An offset into the subnet (may fall outside the range, or on a reserved address).
    Static(u32),
    /// Release the n-th held address (modulo), or a free one if none is held.
    Release(usize),
    /// Release an arbitrary offset (usually not allocated).
    ReleaseAny(u32),
    Restart,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => Just(Step::Next),
        2 => (0u32..64).prop_map(Step::Static),
        4 => any::<usize>().prop_map(Step::Release),
        1 => (0u32..64).prop_map(Step::ReleaseAny),
        1 => Just(Step::Restart),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    /// Subnet 10.77.0.0/prefix.
    prefix: u8,
    /// Range as (offset of start, prefix), if any.
    range: Option<(u32, u8)>,
    aux: Option<u32>,
    cluster: bool,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (26u8..=29, any::<bool>(), any::<bool>(), any::<bool>())
        .prop_flat_map(|(prefix, with_range, with_aux, cluster)| {
            let size = 1u32 << (32 - prefix);
            let range = if with_range {
                (prefix + 1..=prefix + 2)
                    .prop_flat_map(move |rp| {
                        let rsize = 1u32 << (32 - rp);
                        (0..size / rsize).prop_map(move |i| Some((i * rsize, rp)))
                    })
                    .boxed()
            } else {
                Just(None).boxed()
            };
            let aux = if with_aux {
                (2..size - 1).prop_map(Some).boxed()
            } else {
                Just(None).boxed()
            };
            (
                Just(prefix),
                range,
                aux,
                Just(cluster),
                prop::collection::vec(step(), 1..120),
            )
        })
        .prop_map(|(prefix, range, aux, cluster, steps)| Case {
            prefix,
            range,
            aux,
            cluster,
            steps,
        })
}

fn v4(off: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 77, 0, 0)) + off))
}

struct Model {
    size: u32,
    range: (u32, u32),
    reserved: BTreeSet<u32>,
    held: BTreeSet<u32>,
}

impl Model {
    fn usable(&self, off: u32) -> bool {
        off >= self.range.0
            && off <= self.range.1
            && off < self.size
            && !self.reserved.contains(&off)
    }
    fn lowest_free(&self) -> Option<u32> {
        (self.range.0..=self.range.1).find(|o| self.usable(*o) && !self.held.contains(o))
    }
}

async fn open(store: &Arc<dyn Store>, cluster: bool) -> Ipam {
    let opts = if cluster {
        IpamOptions::cluster(b"c")
    } else {
        IpamOptions::local(b"h")
    };
    Ipam::open(Arc::clone(store), opts).await.unwrap()
}

async fn run(case: Case, store: Arc<dyn Store>) -> Result<(), TestCaseError> {
    let subnet: IpNetwork = format!("10.77.0.0/{}", case.prefix).parse().unwrap();
    let size = 1u32 << (32 - case.prefix);
    let mut cfg = IpamConfig::new().with_subnet(subnet);
    let mut range = (0, size - 1);
    if let Some((start, rp)) = case.range {
        cfg = cfg.with_ip_range(format!("{}/{rp}", v4(start)).parse().unwrap());
        range = (start, start + (1 << (32 - rp)) - 1);
    }
    if let Some(aux) = case.aux {
        cfg = cfg.with_aux_address("aux", v4(aux));
    }
    let mut ipam = open(&store, case.cluster).await;
    let lease = ipam
        .request_subnet(SubnetRequest::new("net", "prop-net").with_config(cfg))
        .await
        .unwrap();
    let gw = match lease.gateway {
        IpAddr::V4(g) => u32::from(g) - u32::from(Ipv4Addr::new(10, 77, 0, 0)),
        IpAddr::V6(_) => unreachable!(),
    };
    let mut model = Model {
        size,
        range,
        reserved: [0, size - 1, gw].into_iter().chain(case.aux).collect(),
        held: BTreeSet::new(),
    };
    let off = |ip: IpAddr| match ip {
        IpAddr::V4(a) => u32::from(a) - u32::from(Ipv4Addr::new(10, 77, 0, 0)),
        IpAddr::V6(_) => u32::MAX,
    };
    for step in case.steps {
        match step {
            Step::Next => {
                let want = model.lowest_free();
                match ipam.allocate("net", AddressRequest::Next(Family::V4)).await {
                    Ok(ip) => {
                        let o = off(ip);
                        prop_assert!(model.usable(o), "{ip} is not allocatable");
                        prop_assert!(model.held.insert(o), "{ip} handed out twice");
                        if !case.cluster {
                            prop_assert_eq!(Some(o), want, "not the lowest free address");
                        }
                    }
                    Err(IpamError::AddressesExhausted { .. }) => {
                        prop_assert_eq!(want, None, "exhausted while space is free");
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("allocate: {e}"))),
                }
            }
            Step::Static(o) => {
                let o = o % size;
                let expect_ok = model.usable(o) && !model.held.contains(&o);
                let got = ipam.allocate("net", AddressRequest::Static(v4(o))).await;
                prop_assert_eq!(got.is_ok(), expect_ok, "static {} -> {:?}", v4(o), got);
                if expect_ok {
                    model.held.insert(o);
                }
            }
            Step::Release(n) => {
                if model.held.is_empty() {
                    continue;
                }
                let o = *model.held.iter().nth(n % model.held.len()).unwrap();
                ipam.release("net", v4(o)).await.unwrap();
                model.held.remove(&o);
            }
            Step::ReleaseAny(o) => {
                let o = o % size;
                let got = ipam.release("net", v4(o)).await;
                prop_assert_eq!(got.is_ok(), model.held.contains(&o), "release {}", v4(o));
                model.held.remove(&o);
            }
            Step::Restart => {
                drop(ipam);
                ipam = open(&store, case.cluster).await;
                let now: BTreeSet<u32> = ipam.allocated("net").into_iter().map(off).collect();
                prop_assert_eq!(&now, &model.held, "restart lost or invented allocations");
            }
        }
    }
    let now: BTreeSet<u32> = ipam.allocated("net").into_iter().map(off).collect();
    prop_assert_eq!(&now, &model.held);
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_on_the_memory_store(case in case()) {
        block_on(run(case, Arc::new(MemoryStore::new())))?;
    }
}

proptest! {
    // Every change is fsynced here: fewer cases.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_on_the_embedded_store(case in case()) {
        let dir = tempfile::tempdir().unwrap();
        block_on(async {
            let store = EmbeddedStore::open(dir.path().join("p.redb")).await.unwrap();
            run(case, Arc::new(store)).await
        })?;
    }
}
