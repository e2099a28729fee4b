//! One macvlan attach and one detach, in a lab (needs root). Same shape as `sys_attach`.
//!
//! - `macvlan_in_ns`: the single `RTM_NEWLINK` that creates a macvlan on the parent directly
//!   inside the container's namespace, named, with its MAC, up.
//! - `attach`: the driver's whole join: that, plus the container side (IPv4 and IPv6
//!   addresses, loopback up) through the sandbox handle the controller keeps open.
//! - `detach`: the driver's leave: deleting the macvlan inside the container.

use std::time::Duration;

mod common;

use common::time_phase;
use criterion::{Criterion, criterion_group, criterion_main};
use wharf::driver::macvlan::MacvlanDriver;
use wharf::driver::{
    Driver, DriverOptions, EndpointInfo, MacvlanMode, MacvlanOptions, NetworkInfo, SandboxContext,
    SubnetInfo, mac_for_ipv4,
};
use wharf::lab::Lab;
use wharf::sys::rtnl::{Handle, LinkSpec, VethPeer};

struct World {
    _lab: Lab,
    host: Handle,
    parent: u32,
    driver: MacvlanDriver,
    net: NetworkInfo,
    ep: EndpointInfo,
    sandbox: SandboxContext,
}

async fn world() -> World {
    let lab = Lab::new();
    let host_ns = lab.namespace("host").await.expect("host namespace");
    let container = lab.namespace("c1").await.expect("container namespace");
    let host = Handle::in_netns(&host_ns).await.expect("host handle");
    host.link()
        .add(
            LinkSpec::veth("uplink0")
                .peer(VethPeer::new("uplink0-peer"))
                .up(),
        )
        .await
        .expect("parent");
    let parent = host.link().get("uplink0").await.expect("parent").index;
    let net = NetworkInfo {
        id: "b".repeat(64),
        name: "macnet".into(),
        internal: false,
        enable_ipv6: true,
        options: DriverOptions::Macvlan(MacvlanOptions::parent("uplink0")),
        subnets: vec![
            SubnetInfo {
                subnet: "10.99.0.0/16".parse().expect("net"),
                gateway: Some("10.99.0.1".parse().expect("ip")),
            },
            SubnetInfo {
                subnet: "fd99::/64".parse().expect("net"),
                gateway: Some("fd99::1".parse().expect("ip")),
            },
        ],
    };
    let driver = MacvlanDriver::new(host.clone());
    driver.validate(&net).expect("valid");
    driver.create_network(&net).await.expect("network");
    let ep = EndpointInfo {
        id: "e".repeat(64),
        ifname: "eth0".into(),
        mac: mac_for_ipv4("10.99.0.2".parse().expect("ip")),
        ipv4: Some("10.99.0.2/16".parse().expect("net")),
        ipv6: Some("fd99::2/64".parse().expect("net")),
        ports: Vec::new(),
    };
    let sandbox = SandboxContext {
        name: "c1".into(),
        handle: Handle::in_netns(&container)
            .await
            .expect("container handle"),
        ns: container,
        is_host: false,
    };
    World {
        _lab: lab,
        host,
        parent,
        driver,
        net,
        ep,
        sandbox,
    }
}

async fn create_macvlan(w: &World) {
    w.host
        .link()
        .add(
            LinkSpec::macvlan("eth0", w.parent, MacvlanMode::Bridge)
                .netns(&w.sandbox.ns)
                .mac(w.ep.mac)
                .up(),
        )
        .await
        .expect("macvlan");
}

async fn attach(w: &World) {
    w.driver
        .join(&w.net, &w.ep, &w.sandbox)
        .await
        .expect("attach");
}

async fn detach(w: &World) {
    w.driver
        .leave_sandbox(&w.net, &w.ep, Some(&w.sandbox))
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
    let mut group = c.benchmark_group("macvlan");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(4));

    group.bench_function("macvlan_in_ns", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            time_phase(
                iters,
                async || {},
                async || create_macvlan(w).await,
                async || detach(w).await,
            )
        })
    });
    group.bench_function("attach", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            time_phase(
                iters,
                async || {},
                async || attach(w).await,
                async || detach(w).await,
            )
        })
    });
    group.bench_function("detach", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            time_phase(
                iters,
                async || attach(w).await,
                async || detach(w).await,
                async || {},
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
