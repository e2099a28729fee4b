//! The bridge firewall's cost per change, in a lab host namespace (needs root).
//!
//! - `publish/first`: publishing one port of an endpoint (one DNAT map element, one
//!   transaction) when no port is published.
//! - `publish/after_1000`: the same with 1000 ports already published. wharf's rules are
//!   static and ports are map elements, so this must cost the same as the first (within 1.2x)
//!   and stay under a millisecond.
//! - `unpublish/after_1000`: withdrawing one port with 1000 others published.
//! - `add_network/after_50`: adding a network (with the check of the static rules, a listing)
//!   when 50 exist.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnetwork::IpNetwork;
use wharf::driver::Protocol;
use wharf::driver::bridge::firewall::{Firewall, FwNetwork, FwPort};
use wharf::lab::Lab;

fn network(i: u32) -> FwNetwork {
    FwNetwork {
        name: format!("net{i}"),
        bridge: format!("br-bench{i}"),
        subnets: vec![
            IpNetwork::new(
                IpAddr::V4(Ipv4Addr::new(10, 100 + (i / 256) as u8, i as u8, 0)),
                24,
            )
            .expect("net"),
        ],
        icc: true,
        masquerade: true,
        internal: false,
    }
}

fn port(host_port: u16) -> FwPort {
    let n = u32::from(host_port);
    FwPort {
        protocol: Protocol::Tcp,
        host_ip: None,
        host_port,
        container: IpAddr::V4(Ipv4Addr::new(172, 18, (n >> 8) as u8, n as u8)),
        container_port: 80,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let lab = Lab::new();
    let host = rt.block_on(lab.namespace("host")).expect("host namespace");
    let fw = Firewall::new(host);
    rt.block_on(fw.add_network(&network(0)))
        .expect("first network");
    let fw = &fw;
    let probe = port(60000);

    let mut group = c.benchmark_group("firewall");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(4));
    let publish = |b: &mut criterion::Bencher| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                fw.publish(&[probe]).await.expect("publish");
                total += t.elapsed();
                fw.unpublish(&[probe]).await.expect("unpublish");
            }
            total
        })
    };
    group.bench_function("publish/first", publish);

    let many: Vec<FwPort> = (10000..11000).map(port).collect();
    rt.block_on(fw.publish(&many)).expect("1000 ports");
    group.bench_function("publish/after_1000", publish);
    group.bench_function("unpublish/after_1000", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                fw.publish(&[probe]).await.expect("publish");
                let t = Instant::now();
                fw.unpublish(&[probe]).await.expect("unpublish");
                total += t.elapsed();
            }
            total
        })
    });

    for i in 1..=50 {
        rt.block_on(fw.add_network(&network(i))).expect("network");
    }
    group.bench_function("add_network/after_50", |b| {
        b.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            let net = network(999);
            for _ in 0..iters {
                let t = Instant::now();
                fw.add_network(&net).await.expect("add network");
                total += t.elapsed();
                fw.remove_network(&net).await.expect("remove network");
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
