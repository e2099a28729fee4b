//! Services across hosts (TUTORIALS.md scenario 4 steps 2-5): replicas spread over the hosts,
//! names, the network swap, and the routing mesh reached from outside through every host.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::cluster::{Cluster, eventually};
use common::services::{converged, overlay, resolve_all, scenario_4_steps_2_to_4};
use wharf::controller::{Error, INGRESS_SANDBOX, ServiceInspect, ServicePort, ServiceSpec};
use wharf::lab::probe;

const CONVERGED: Duration = Duration::from_secs(10);

#[tokio::test]
async fn scenario_4_services_over_three_hosts() {
    let c = Cluster::new(&["manager", "worker-1", "worker-2"]).await;
    scenario_4_steps_2_to_4(&c, CONVERGED).await;
}

/// The same on the embedded on-disk store (redb, fsynced) shared by the three controllers, as a
/// single-process cluster would run it.
#[tokio::test]
async fn scenario_4_services_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let store: std::sync::Arc<dyn wharf::store::Store> = std::sync::Arc::new(
        wharf::store::EmbeddedStore::open(dir.path().join("cluster.redb"))
            .await
            .unwrap(),
    );
    let s = store.clone();
    let c = Cluster::with_stores(&["manager", "worker-1", "worker-2"], store, move |_| {
        s.clone()
    })
    .await;
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
        // What the host balances over, as `nft` shows it in its ingress sandbox.
        let mesh = h.wharf().routing_mesh().await;
        assert_eq!(mesh.len(), 1);
        assert_eq!((mesh[0].published, mesh[0].target), (8080, 80));
        assert_eq!(mesh[0].backends.len(), 3);
        let out = std::process::Command::new("ip")
            .args(["netns", "exec"])
            .arg(format!("{}{INGRESS_SANDBOX}", h.prefix()))
            .args(["nft", "list", "table", "ip", "wharf-mesh"])
            .output()
            .expect("nft runs");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("numgen inc mod 3") && listing.contains(":80"),
            "{listing}"
        );
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

#[tokio::test]
async fn a_restarted_host_keeps_its_replicas_and_its_mesh() {
    let mut c = Cluster::with_outside(&["manager", "worker-1"]).await;
    let m = c.host("manager");
    m.wharf().create_network(overlay("front")).await.unwrap();
    m.wharf()
        .create_service(
            ServiceSpec::new("web")
                .replicas(2)
                .network("front")
                .publish(ServicePort::tcp(8080, 80)),
        )
        .await
        .unwrap();
    let before = converged(&c, "web", 1, CONVERGED).await;
    let tasks_before = c.host("worker-1").wharf().local_tasks();
    assert_eq!(tasks_before.len(), 1);

    // worker-1's controller restarts (its containers stay): it finds its task, runs no second
    // copy, and serves the port again.
    c.stop("worker-1").await;
    c.start("worker-1").await;
    let after = converged(&c, "web", 1, CONVERGED).await;
    assert_eq!(after.tasks, before.tasks);
    let w1 = c.host("worker-1");
    assert_eq!(w1.wharf().local_tasks(), tasks_before);
    let names: Vec<String> = w1
        .wharf()
        .list_sandboxes()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(
        names,
        [INGRESS_SANDBOX.to_owned(), tasks_before[0].sandbox.clone()]
    );
    let ns = w1.wharf().sandbox_netns(&tasks_before[0].sandbox).unwrap();
    let _server = probe::serve_tcp(&ns, "0.0.0.0:80".parse().unwrap(), "web on worker-1")
        .await
        .unwrap();
    let (outside, _) = c.outside.as_ref().unwrap();
    let addr = SocketAddr::new(w1.addr.into(), 8080);
    assert!(
        eventually(CONVERGED, || async {
            w1.wharf()
                .routing_mesh()
                .await
                .first()
                .map(|p| p.backends.len())
                == Some(2)
        })
        .await
    );
    // Round robin over the two replicas: one of two connections reaches worker-1's.
    let mut replies = Vec::new();
    for _ in 0..2 {
        replies.push(
            probe::tcp_connect(outside, addr, Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| e.to_string()),
        );
    }
    assert!(
        replies.iter().any(|r| r == "web on worker-1"),
        "{replies:?}"
    );
}

/// Names on `ingress`, and the mesh after the network swap (scenario 4 step 3 with a published
/// port). Docker serves no names on `ingress`: a replica's name, the service's and
/// `tasks.NAME` resolve to the replicas' addresses on the service's own network only. After
/// `service update` moves the replicas to another network (every one redeployed, addresses
/// released and taken again, on any host: a MAC that was behind `vxlan0` can come back as a
/// local replica's), each host's mesh reaches every new replica at once.
#[tokio::test]
async fn no_names_on_ingress_and_the_mesh_reaches_every_replica_after_the_swap() {
    let c = Cluster::with_outside(&["manager", "worker-1", "worker-2"]).await;
    let m = c.host("manager");
    for net in ["front", "front-2"] {
        m.wharf().create_network(overlay(net)).await.unwrap();
    }
    let spec = |net: &str| {
        ServiceSpec::new("web")
            .replicas(5)
            .network(net)
            .publish(ServicePort::tcp(8080, 80))
    };
    m.wharf().create_service(spec("front")).await.unwrap();
    let s = converged(&c, "web", 1, CONVERGED).await;
    names_resolve_off_ingress(&c, &s).await;
    // Traffic through the mesh: every host's ingress br0 learns the remote replicas' MACs.
    mesh_reaches_every_replica(&c, &s).await;

    c.host("worker-1")
        .wharf()
        .update_service("web", spec("front-2"))
        .await
        .unwrap();
    let s = converged(&c, "web", 2, CONVERGED).await;
    names_resolve_off_ingress(&c, &s).await;
    mesh_reaches_every_replica(&c, &s).await;
}

/// From every replica, every replica's name (its own too), the service's name and
/// `tasks.NAME` resolve to the replicas' addresses on the service's network, and to nothing on
/// `ingress`.
async fn names_resolve_off_ingress(c: &Cluster, s: &ServiceInspect) {
    let on_network: BTreeSet<IpAddr> = s.tasks.iter().map(|t| t.addresses[0]).collect();
    assert_eq!(on_network.len(), s.tasks.len());
    for from in &s.tasks {
        for to in &s.tasks {
            let got = resolve_all(c, &from.node, &from.name, &to.name).await;
            assert_eq!(got, to.addresses, "{} from {}", to.name, from.name);
        }
        for name in [s.name.clone(), format!("tasks.{}", s.name)] {
            let got: BTreeSet<IpAddr> = resolve_all(c, &from.node, &from.name, &name)
                .await
                .into_iter()
                .collect();
            assert_eq!(got, on_network, "{name} from {}", from.name);
        }
    }
}

/// Each replica serves its name on port 80; through every host, as many connections in a row
/// as there are replicas (the mesh's round robin) reach each replica once, each at its first
/// try.
async fn mesh_reaches_every_replica(c: &Cluster, s: &ServiceInspect) {
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
        assert!(
            eventually(CONVERGED, || async {
                h.wharf()
                    .routing_mesh()
                    .await
                    .first()
                    .is_some_and(|p| p.backends.len() == names.len())
            })
            .await,
            "{}'s mesh: {:?}",
            h.role,
            h.wharf().routing_mesh().await
        );
        let addr = SocketAddr::new(h.addr.into(), 8080);
        let mut seen = BTreeSet::new();
        for _ in 0..names.len() {
            let reply = probe::tcp_connect(outside, addr, Duration::from_secs(1))
                .await
                .unwrap_or_else(|e| panic!("v{} port 8080 through {}: {e}", s.version, h.role));
            seen.insert(reply);
        }
        assert_eq!(
            seen, names,
            "v{} replicas answering through {}",
            s.version, h.role
        );
    }
    drop(servers);
}
