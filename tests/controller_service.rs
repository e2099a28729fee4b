//! Services across hosts (TUTORIALS.md scenario 4 steps 2-5): replicas spread over the hosts,
//! names, the network swap, and the routing mesh reached from outside through every host.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{Cluster, eventually};
use common::services::{converged, overlay, scenario_4_steps_2_to_4};
use wharf::controller::{Error, ServicePort, ServiceSpec};
use wharf::lab::probe;

const CONVERGED: Duration = Duration::from_secs(10);

#[tokio::test]
async fn scenario_4_services_over_three_hosts() {
    let c = Cluster::new(&["manager", "worker-1", "worker-2"]).await;
    scenario_4_steps_2_to_4(&c, CONVERGED).await;
}

#[tokio::test]
async fn a_published_port_is_reached_through_every_host_and_balanced() {
    let c = Cluster::with_outside(&["manager", "worker-1", "worker-2"]).await;
    let m = c.host("manager");
    m.wharf()
        .create_network(overlay("my-overlay"))
        .await
        .unwrap();
    m.wharf()
        .create_service(
            ServiceSpec::new("web")
                .replicas(3)
                .network("my-overlay")
                .publish(ServicePort::tcp(8080, 80)),
        )
        .await
        .unwrap();
    let s = converged(&c, "web", 1, CONVERGED).await;
    assert_eq!(
        s.tasks.iter().map(|t| t.node.as_str()).collect::<Vec<_>>(),
        ["manager", "worker-1", "worker-2"]
    );
    // Each replica runs a tiny server on port 80 that answers its own name.
    let mut servers = Vec::new();
    for h in &c.hosts {
        for t in h.wharf().local_tasks() {
            let ns = h.wharf().sandbox_netns(&t.sandbox).unwrap();
            let bind: SocketAddr = "0.0.0.0:80".parse().unwrap();
            servers.push(probe::serve_tcp(&ns, bind, &t.sandbox).await.unwrap());
        }
    }
    let names: BTreeSet<String> = s.tasks.iter().map(|t| t.name.clone()).collect();
    let (outside, _) = c.outside.as_ref().unwrap();
    for h in &c.hosts {
        let addr = SocketAddr::new(h.addr.into(), 8080);
        // The mesh is programmed from the store on every host: wait for the first answer.
        assert!(
            eventually(CONVERGED, || async {
                probe::tcp_connect(outside, addr, Duration::from_millis(300))
                    .await
                    .is_ok()
            })
            .await,
            "port 8080 through {}",
            h.role
        );
        let mut seen = BTreeSet::new();
        for _ in 0..6 {
            let reply = probe::tcp_connect(outside, addr, Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| panic!("port 8080 through {}: {e}", h.role));
            assert!(names.contains(&reply), "{reply}");
            seen.insert(reply);
        }
        assert!(seen.len() > 1, "through {} only {seen:?} answered", h.role);
    }

    // The port goes with the service.
    m.wharf().remove_service("web").await.unwrap();
    for h in &c.hosts {
        let addr = SocketAddr::new(h.addr.into(), 8080);
        assert!(
            eventually(CONVERGED, || async {
                probe::tcp_connect(outside, addr, Duration::from_millis(300))
                    .await
                    .is_err()
            })
            .await,
            "port 8080 still open through {}",
            h.role
        );
    }
    drop(servers);
}

#[tokio::test]
async fn bad_service_requests_are_refused_with_typed_errors() {
    let c = Cluster::new(&["manager"]).await;
    let w = c.host("manager").wharf();
    w.create_network(overlay("front")).await.unwrap();
    w.create_network(wharf::controller::NetworkSpec::new("local"))
        .await
        .unwrap();
    let spec = |name: &str| ServiceSpec::new(name).network("front");
    let refused = [
        ("no network", ServiceSpec::new("a")),
        ("a bridge network", ServiceSpec::new("a").network("local")),
        ("an unknown network", ServiceSpec::new("a").network("nope")),
        ("ingress itself", ServiceSpec::new("a").network("ingress")),
        ("a network twice", spec("a").network("front")),
        ("too many replicas", spec("a").replicas(10_000)),
        ("port 0", spec("a").publish(ServicePort::tcp(0, 80))),
        (
            "a port twice",
            spec("a")
                .publish(ServicePort::tcp(80, 80))
                .publish(ServicePort::tcp(80, 81)),
        ),
        ("a bad name", spec("no spaces")),
        ("a long name", spec(&"x".repeat(41))),
    ];
    for (what, s) in refused {
        let e = w.create_service(s).await.expect_err(what);
        assert!(
            matches!(
                e,
                Error::InvalidRequest { .. } | Error::InvalidName { .. } | Error::NotFound { .. }
            ),
            "{what}: {e}"
        );
    }
    assert!(w.list_services().await.unwrap().is_empty());
    w.create_service(spec("a")).await.unwrap();
    assert!(matches!(
        w.create_service(spec("a")).await,
        Err(Error::AlreadyExists { .. })
    ));
    assert!(matches!(
        w.update_service("a", spec("b")).await,
        Err(Error::InvalidRequest { .. })
    ));
    assert!(matches!(
        w.inspect_service("nope").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        w.remove_service("nope").await,
        Err(Error::NotFound { .. })
    ));
    // Scaling keeps the running replica and adds one.
    let before = converged(&c, "a", 1, CONVERGED).await;
    w.update_service("a", spec("a").replicas(2)).await.unwrap();
    let after = converged(&c, "a", 2, CONVERGED).await;
    assert_eq!(after.tasks[0].id, before.tasks[0].id);
    assert_eq!(after.tasks.len(), 2);
    w.remove_service("a").await.unwrap();
    assert!(
        eventually(CONVERGED, || async { w.list_sandboxes().is_empty() }).await,
        "{:?}",
        w.list_sandboxes()
    );
}
