//! One bridge attach and one detach through the kernel layer, in a lab (needs root).
//!
//! - `veth_peer_in_ns`: the single `RTM_NEWLINK` that creates a veth with its peer named inside
//!   the container's namespace and the host end enslaved to the bridge and up.
//! - `attach`: that, plus opening a handle in the container and configuring its end (up, IPv4
//!   and IPv6 addresses, default route), as the bridge driver's join does.
//! - `detach`: deleting the host end (which deletes the pair).

use std::time::Duration;

mod common;

use common::time_phase;
use criterion::{Criterion, criterion_group, criterion_main};
use wharf::lab::Lab;
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, LinkSpec, Route, VethPeer};

struct World {
    _lab: Lab,
    host: Handle,
    container: NetNs,
    bridge: u32,
}

async fn world() -> World {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.expect("host namespace");
    let container = lab.namespace("c1").await.expect("container namespace");
    let host = Handle::in_netns(&host_ns).await.expect("host handle");
    host.link()
        .add(LinkSpec::bridge("wharf0").up())
        .await
        .expect("bridge");
    let bridge = host.link().get("wharf0").await.expect("bridge").index;
    host.address()
        .add(bridge, "172.18.0.1/16".parse().expect("net"))
        .await
        .expect("bridge address");
    World {
        _lab: lab,
        host,
        container,
        bridge,
    }
}

async fn create_veth(w: &World) {
    w.host
        .link()
        .add(
            LinkSpec::veth("vethbench")
                .peer(VethPeer::new("eth0").netns(&w.container))
                .master(w.bridge)
                .up(),
        )
        .await
        .expect("veth");
}

async fn configure_container(w: &World) {
    let inside = Handle::in_netns(&w.container)
        .await
        .expect("container handle");
    let eth0 = inside.link().get("eth0").await.expect("eth0").index;
    inside.link().set_up(eth0).await.expect("up");
    inside
        .address()
        .add(eth0, "172.18.0.2/16".parse().expect("net"))
        .await
        .expect("address");
    inside
        .address()
        .add(eth0, "fd18::2/64".parse().expect("net"))
        .await
        .expect("address6");
    inside
        .route()
        .add(Route::default_v4("172.18.0.1".parse().expect("ip")).oif(eth0))
        .await
        .expect("route");
}

async fn detach(w: &World) {
    w.host
        .link()
        .delete_by_name("vethbench")
        .await
        .expect("detach");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let w = rt.block_on(world());
    let w = &w;
    let mut group = c.benchmark_group("sys_attach");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("veth_peer_in_ns", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            time_phase(
                iters,
                async || {},
                async || create_veth(w).await,
                async || detach(w).await,
            )
        })
    });
    let attach = async || {
        create_veth(w).await;
        configure_container(w).await;
    };
    group.bench_function("attach", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| time_phase(iters, async || {}, &attach, async || detach(w).await))
    });
    group.bench_function("detach", |b| {
        b.to_async(&rt)
            .iter_custom(|iters| time_phase(iters, &attach, async || detach(w).await, async || {}))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
