//! IPAM benchmarks.
//!
//! - `allocator`: the in-memory allocator of one /16 (no persistence): an allocate followed by
//!   a release, with the subnet 0%, 50% and 99% full (taken addresses scattered), in lowest-free
//!   and serial mode.
//! - `ipam_memory`: the same through `Ipam` on a `MemoryStore` (locking, key encoding, store).
//! - `store_embedded`: one durable write (create + delete of a key, each an fsynced commit) into
//!   an empty database and into one holding 100,000 keys.
//! - `ipam_embedded`: allocate + release through `Ipam` on the `EmbeddedStore` (two commits).
//!
//! Before the benchmarks it prints the heap held by a /16 allocator at 50% and 100% full,
//! measured with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use wharf::ipam::allocator::{AllocationMode, SubnetAllocator};
use wharf::ipam::{AddressRequest, Family, Ipam, IpamConfig, IpamOptions, SubnetRequest};
use wharf::store::{EmbeddedStore, MemoryStore, Op, Store};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FILLS: [u32; 3] = [0, 50, 99];

fn addr(off: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + off))
}

/// A scattered, deterministic choice of about `pct`% of the offsets of a /16.
fn taken(pct: u32) -> impl Iterator<Item = u32> {
    (1..65535u32).filter(move |o| o.wrapping_mul(2_654_435_761) % 100 < pct)
}

fn filled_allocator(pct: u32, mode: AllocationMode) -> SubnetAllocator {
    let mut a = SubnetAllocator::new("10.0.0.0/16".parse().unwrap(), None, mode).unwrap();
    a.reserve(addr(1), "gateway").unwrap();
    for o in taken(pct).filter(|o| *o != 1) {
        a.allocate_static(addr(o)).unwrap();
    }
    a
}

fn report_memory() {
    for pct in [50, 100] {
        let before = LIVE.load(Ordering::Relaxed);
        let a = filled_allocator(pct, AllocationMode::Lowest);
        let after = LIVE.load(Ordering::Relaxed);
        println!(
            "memory: /16 allocator {pct}% full ({} addresses): {} bytes on the heap",
            a.allocated(),
            after - before
        );
        drop(a);
    }
}

fn bench_allocator(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocator");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for mode in [AllocationMode::Lowest, AllocationMode::Serial] {
        let name = format!("{mode:?}").to_lowercase();
        for pct in FILLS {
            let mut a = filled_allocator(pct, mode);
            g.bench_function(
                BenchmarkId::new(format!("alloc+release/{name}"), pct),
                |b| {
                    b.iter(|| {
                        let ip = a.allocate().unwrap();
                        a.release(black_box(ip)).unwrap();
                    })
                },
            );
        }
    }
    g.finish();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn filled_ipam(store: Arc<dyn Store>, pct: u32) -> Ipam {
    let ipam = Ipam::open(store, IpamOptions::local(b"bench"))
        .await
        .unwrap();
    ipam.request_subnet(
        SubnetRequest::new("b", "bench-net")
            .with_config(IpamConfig::new().parse_subnet("10.0.0.0/16").unwrap()),
    )
    .await
    .unwrap();
    for o in taken(pct).filter(|o| *o != 1) {
        ipam.allocate("b", AddressRequest::Static(addr(o)))
            .await
            .unwrap();
    }
    ipam
}

fn bench_ipam_memory(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("ipam_memory");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for pct in FILLS {
        let ipam = rt.block_on(filled_ipam(Arc::new(MemoryStore::new()), pct));
        g.bench_function(BenchmarkId::new("alloc+release", pct), |b| {
            b.to_async(&rt).iter(|| async {
                let ip = ipam
                    .allocate("b", AddressRequest::Next(Family::V4))
                    .await
                    .unwrap();
                ipam.release("b", black_box(ip)).await.unwrap();
            })
        });
    }
    g.finish();
}

fn bench_embedded(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("store_embedded");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500));
    for prefill in [0usize, 100_000] {
        let store = rt.block_on(async {
            let store = EmbeddedStore::open(dir.path().join(format!("s{prefill}.redb")))
                .await
                .unwrap();
            let keys: Vec<Op> = (0..prefill)
                .map(|i| Op::Put {
                    key: format!(
                        "ipam/v1/local/addrs/net/10.{}.{}.{}",
                        i >> 16,
                        (i >> 8) & 255,
                        i & 255
                    ),
                    value: br#"{"subnet":"10.0.0.0/8"}"#.to_vec(),
                })
                .collect();
            for chunk in keys.chunks(10_000) {
                store.apply(chunk.to_vec()).await.unwrap();
            }
            store
        });
        g.bench_function(
            BenchmarkId::new("create+delete (2 fsynced commits)", prefill),
            |b| {
                b.to_async(&rt).iter(|| async {
                    store
                        .create("bench/key", br#"{"subnet":"10.0.0.0/8"}"#.to_vec())
                        .await
                        .unwrap();
                    store.delete("bench/key").await.unwrap();
                })
            },
        );
    }
    let ipam = rt.block_on(async {
        let store = EmbeddedStore::open(dir.path().join("ipam.redb"))
            .await
            .unwrap();
        filled_ipam(Arc::new(store), 0).await
    });
    g.bench_function("ipam alloc+release (2 fsynced commits)", |b| {
        b.to_async(&rt).iter(|| async {
            let ip = ipam
                .allocate("b", AddressRequest::Next(Family::V4))
                .await
                .unwrap();
            ipam.release("b", black_box(ip)).await.unwrap();
        })
    });
    g.finish();
}

fn main() {
    report_memory();
    let mut c = Criterion::default().configure_from_args();
    bench_allocator(&mut c);
    bench_ipam_memory(&mut c);
    bench_embedded(&mut c);
    c.final_summary();
}
