//! Bridge attach and detach through the controller, in a lab (needs root).
//!
//! What is timed is `Controller::connect` (IPAM reservation, veth with its peer created in the
//! sandbox, addresses, link up, default route, the fsynced state write) and
//! `Controller::disconnect`. Sandbox creation (a new namespace) is done outside the timing, as a
//! runtime does it before asking for networking.
//!
//! - `attach/first`: attach to an empty network;
//! - `attach/with-1000`: attach when 1000 endpoints are already on the network (the 1000th
//!   attach should cost what the 10th does);
//! - `detach/one`: one disconnect;
//! - `detach/100-at-once`: `Controller::disconnect_many` of 100 endpoints (their bridge veths
//!   go as one link group): should take under 3x `detach/one`. The ratios themselves are
//!   printed by `benches/attach_scale.rs`.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use wharf::controller::{Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::Lab;

struct World {
    wharf: Controller,
    _lab: Lab,
    next: std::sync::atomic::AtomicUsize,
}

impl World {
    async fn new() -> Self {
        let lab = Lab::new();
        let host = lab.namespace("host").await.expect("host namespace");
        let mut config = ControllerConfig::new(lab.temp_dir("state").expect("state dir"))
            .host(host)
            .netns_prefix(lab.netns_prefix());
        config.sandbox_files_dir = lab.temp_dir("files").expect("files dir");
        let wharf = Controller::open(config).await.expect("controller");
        wharf
            .create_network(NetworkSpec::new("net"))
            .await
            .expect("network");
        Self {
            wharf,
            _lab: lab,
            next: Default::default(),
        }
    }

    async fn sandbox(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("c{n}");
        self.wharf
            .create_sandbox(SandboxSpec::new(&name))
            .await
            .expect("sandbox");
        name
    }

    /// Times `iters` attaches (each to a fresh sandbox), detaching and deleting afterwards.
    async fn time_attach(&self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let name = self.sandbox().await;
            let start = Instant::now();
            self.wharf
                .connect(&name, "net", EndpointSpec::default())
                .await
                .expect("attach");
            total += start.elapsed();
            self.wharf.delete_sandbox(&name).await.expect("cleanup");
        }
        total
    }

    /// Times `iters` batch detaches of `k` endpoints each (attached concurrently, untimed).
    async fn time_detach_many(&self, iters: u64, k: usize) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let mut names = Vec::with_capacity(k);
            for _ in 0..k {
                names.push(self.sandbox().await);
            }
            for r in futures::future::join_all(
                names
                    .iter()
                    .map(|n| self.wharf.connect(n, "net", EndpointSpec::default())),
            )
            .await
            {
                r.expect("attach");
            }
            let pairs: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "net")).collect();
            let start = Instant::now();
            for r in self.wharf.disconnect_many(&pairs).await {
                r.expect("detach");
            }
            total += start.elapsed();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            for r in self.wharf.delete_sandboxes(&refs).await {
                r.expect("cleanup");
            }
        }
        total
    }

    async fn time_detach(&self, iters: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let name = self.sandbox().await;
            self.wharf
                .connect(&name, "net", EndpointSpec::default())
                .await
                .expect("attach");
            let start = Instant::now();
            self.wharf.disconnect(&name, "net").await.expect("detach");
            total += start.elapsed();
            self.wharf.delete_sandbox(&name).await.expect("cleanup");
        }
        total
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let world = rt.block_on(World::new());

    let mut group = c.benchmark_group("attach");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(8));
    group.bench_function("first", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| world.time_attach(iters))
    });

    // Fill the network with 1000 endpoints, then measure again.
    let mut filler = Vec::new();
    rt.block_on(async {
        for _ in 0..1000 {
            let name = world.sandbox().await;
            world
                .wharf
                .connect(&name, "net", EndpointSpec::default())
                .await
                .expect("filler attach");
            filler.push(name);
        }
    });
    group.bench_function("with-1000", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| world.time_attach(iters))
    });
    group.finish();

    let mut group = c.benchmark_group("detach");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    group.bench_function("one", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| world.time_detach(iters))
    });
    group.sample_size(10);
    group.bench_function("100-at-once", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| world.time_detach_many(iters, 100))
    });
    group.finish();
    rt.block_on(async {
        for name in filler {
            let _ = world.wharf.delete_sandbox(&name).await;
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
