//! The scenarios of Docker's networking tutorial (../shared/TUTORIALS.md), step by step, with
//! wharf's API in place of the `docker` commands.

use std::net::IpAddr;

use wharf::controller::{EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::probe;
use wharf::sys::rtnl::Handle;

use crate::check::{By, Checks};
use crate::world::{CHECK_TIMEOUT, PUBLIC_NAME, World};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn step(text: &str) {
    println!("\n### {text}");
}

fn shell(who: &str, cmd: &str) {
    println!("{who} $ {cmd}");
}

/// `docker network ls`.
fn network_ls(w: &World) {
    shell("host", "docker network ls");
    println!("NETWORK ID     NAME         DRIVER    SCOPE");
    for n in w.wharf.list_networks() {
        println!(
            "{:<14} {:<12} {:<9} {}",
            &n.id[..12],
            n.name,
            n.driver,
            n.scope
        );
    }
}

/// `docker network inspect NAME`.
fn inspect(w: &World, net: &str) -> Result {
    shell("host", &format!("docker network inspect {net}"));
    println!(
        "{}",
        serde_json::to_string_pretty(&[w.wharf.inspect_network(net)?])?
    );
    Ok(())
}

/// `ip addr show` inside a container.
async fn ip_addr(w: &World, sandbox: &str) -> Result {
    shell(sandbox, "ip addr show");
    let ns = w.wharf.sandbox_netns(sandbox)?;
    let h = Handle::in_netns(&ns).await?;
    let mut links = h.link().list().await?;
    links.sort_by_key(|l| l.index);
    for l in links {
        let state = if l.up { "UP" } else { "DOWN" };
        println!("{}: {}: <{state}> mtu {}", l.index, l.name, l.mtu);
        if let Some(mac) = l.mac {
            println!("    link/ether {mac}");
        }
        for a in h.address().list_on(l.index).await? {
            let family = if a.addr.is_ipv4() { "inet" } else { "inet6" };
            println!("    {family} {}", a.addr);
        }
    }
    Ok(())
}

/// Pings `to` from `from` the way the container would: by name through its resolv.conf, or by
/// address. Prints ping-like output and records the check.
async fn ping(
    w: &World,
    checks: &Checks,
    scenario: &str,
    from: &str,
    to: &str,
    by: By,
    expected: bool,
) -> Result {
    ping_on(&w.wharf, checks, scenario, from, to, by, expected).await
}

/// [`ping`] from a container of any host's controller.
async fn ping_on(
    wharf: &wharf::controller::Controller,
    checks: &Checks,
    scenario: &str,
    from: &str,
    to: &str,
    by: By,
    expected: bool,
) -> Result {
    let ns = wharf.sandbox_netns(from)?;
    let (target, shown) = match by {
        By::Name => {
            let rc = wharf.sandbox(from)?.files.resolv_conf;
            (
                probe::lookup(&ns, &rc, to, CHECK_TIMEOUT).await,
                to.to_owned(),
            )
        }
        By::Ip(ip) => (Some(ip), ip.to_string()),
    };
    shell(from, &format!("ping -c 1 {shown}"));
    let got = match target {
        None => {
            println!("ping: bad address '{shown}'");
            false
        }
        Some(ip) => match probe::ping(&ns, ip, CHECK_TIMEOUT).await {
            Ok(rtt) => {
                println!(
                    "64 bytes from {ip}: seq=0 ttl=64 time={:.3} ms",
                    rtt.as_secs_f64() * 1e3
                );
                true
            }
            Err(e) => {
                println!("PING {shown} ({ip}): 1 packets transmitted, 0 received ({e})");
                false
            }
        },
    };
    let by = match (&by, target) {
        (By::Name, _) => By::Name,
        (By::Ip(ip), _) => By::Ip(*ip),
    };
    checks.record(scenario, from, to, by, got, expected);
    Ok(())
}

fn ipv4_of(w: &World, sandbox: &str, net: &str) -> Result<IpAddr> {
    let ep = w.wharf.endpoint(sandbox, net)?;
    Ok(ep.ipv4.ok_or("no IPv4 address")?.into())
}

/// Scenario 1: the default bridge network.
pub async fn bridge_default(w: &World, checks: &Checks) -> Result {
    let s = "bridge-default";
    println!("\n## Scenario 1: the default bridge network");
    step("1. List networks");
    network_ls(w);
    step("2. Start alpine1 and alpine2 on the default bridge");
    for name in ["alpine1", "alpine2"] {
        shell("host", &format!("docker run -dit --name {name} alpine ash"));
        w.wharf.create_sandbox(SandboxSpec::new(name)).await?;
        w.wharf
            .connect(name, "bridge", EndpointSpec::default())
            .await?;
    }
    step("3. Inspect the bridge network");
    inspect(w, "bridge")?;
    step("4. Inside alpine1");
    ip_addr(w, "alpine1").await?;
    if !w.real_host {
        step("5. alpine1 reaches the outside through the host's NAT");
        ping(w, checks, s, "alpine1", PUBLIC_NAME, By::Name, true).await?;
    }
    step("6. alpine1 pings alpine2 by IP (works) and by name (the default bridge has no names)");
    let a2 = ipv4_of(w, "alpine2", "bridge")?;
    ping(w, checks, s, "alpine1", "alpine2", By::Ip(a2), true).await?;
    ping(w, checks, s, "alpine1", "alpine2", By::Name, false).await?;
    step("7. Stop and remove both containers");
    for name in ["alpine1", "alpine2"] {
        w.wharf.delete_sandbox(name).await?;
    }
    Ok(())
}

/// Scenario 2: a user-defined bridge network.
pub async fn bridge_user(w: &World, checks: &Checks) -> Result {
    let s = "bridge-user";
    println!("\n## Scenario 2: a user-defined bridge network");
    step("1. Create alpine-net");
    shell("host", "docker network create --driver bridge alpine-net");
    w.wharf
        .create_network(NetworkSpec::new("alpine-net"))
        .await?;
    inspect(w, "alpine-net")?;
    step("2. alpine1, alpine2, alpine4 on alpine-net; alpine3 on bridge; alpine4 also on bridge");
    for (name, net) in [
        ("alpine1", "alpine-net"),
        ("alpine2", "alpine-net"),
        ("alpine3", "bridge"),
        ("alpine4", "alpine-net"),
    ] {
        shell(
            "host",
            &format!("docker run -dit --name {name} --network {net} alpine ash"),
        );
        w.wharf.create_sandbox(SandboxSpec::new(name)).await?;
        w.wharf.connect(name, net, EndpointSpec::default()).await?;
    }
    shell("host", "docker network connect bridge alpine4");
    w.wharf
        .connect("alpine4", "bridge", EndpointSpec::default())
        .await?;
    step("3. Inspect both networks");
    inspect(w, "bridge")?;
    inspect(w, "alpine-net")?;
    ip_addr(w, "alpine4").await?;

    step("4. Reachability, every ordered pair, by name and by each address");
    // TUTORIALS.md, scenario 2, step 4. Per destination: (by name, [(network, by ip)]).
    let all = ["alpine1", "alpine2", "alpine3", "alpine4"];
    let expect = |from: &str, to: &str| -> (bool, Vec<(&'static str, bool)>) {
        let user = |a: &str| a != "alpine3";
        match to {
            "alpine4" => (
                user(from),
                vec![
                    ("alpine-net", user(from)),
                    ("bridge", !user(from) || from == "alpine4"),
                ],
            ),
            "alpine3" => (false, vec![("bridge", from == "alpine4")]),
            _ => (user(from), vec![("alpine-net", user(from))]),
        }
    };
    for from in all {
        for to in all {
            if from == to {
                continue;
            }
            let (by_name, by_ip) = expect(from, to);
            ping(w, checks, s, from, to, By::Name, by_name).await?;
            for (net, ok) in by_ip {
                let ip = ipv4_of(w, to, net)?;
                ping(w, checks, s, from, to, By::Ip(ip), ok).await?;
            }
        }
    }
    if !w.real_host {
        step("5. Every container still reaches the outside (NAT)");
        for from in all {
            ping(w, checks, s, from, PUBLIC_NAME, By::Name, true).await?;
        }
    }
    step("6. Remove the containers and alpine-net");
    for name in all {
        w.wharf.delete_sandbox(name).await?;
    }
    w.wharf.delete_network("alpine-net").await?;
    Ok(())
}

/// Scenario 3: host networking.
pub async fn host(w: &World, checks: &Checks) -> Result {
    let s = "host";
    println!("\n## Scenario 3: host networking");
    step("1. A web server on the host network: no namespace, interface or address of its own");
    shell(
        "host",
        "docker run --rm -d --network host --name my_nginx nginx",
    );
    w.wharf
        .create_sandbox(SandboxSpec::host("my_nginx"))
        .await?;
    let ep = w
        .wharf
        .connect("my_nginx", "host", EndpointSpec::default())
        .await?;
    let ns = w.wharf.sandbox_netns("my_nginx")?;
    println!(
        "my_nginx: namespace is the host's: {}; own address: {:?}",
        ns == w.host,
        ep.ipv4
    );
    let server = probe::serve_tcp(&ns, "0.0.0.0:80".parse()?, "HTTP/1.1 200 OK (nginx)").await?;
    step("2. Port 80 is served on the host's addresses");
    shell("outside", "curl http://192.0.2.1:80/");
    let got = match probe::tcp_connect(&w.outside, "192.0.2.1:80".parse()?, CHECK_TIMEOUT).await {
        Ok(reply) => {
            println!("{reply}");
            true
        }
        Err(e) => {
            println!("curl: {e}");
            false
        }
    };
    checks.record(
        s,
        "outside",
        "my_nginx",
        By::Ip("192.0.2.1".parse()?),
        got,
        true,
    );
    step("3. Stop it: nothing remains");
    drop(server);
    w.wharf.delete_sandbox("my_nginx").await?;
    Ok(())
}

/// Scenario 5: macvlan, containers as machines on the host's LAN.
pub async fn macvlan(w: &World, checks: &Checks) -> Result {
    use wharf::driver::{DriverOptions, MacvlanOptions};
    use wharf::ipam::IpamConfig;
    use wharf::sys::rtnl::{LinkSpec, VethPeer};
    let s = "macvlan";
    println!("\n## Scenario 5: macvlan");
    step(
        "The LAN: a switch with the router (192.168.50.1) and a PC (192.168.50.10); the host's uplink0 is plugged in",
    );
    let lan_ns = w.lab.namespace("lan").await?;
    let lan = Handle::in_netns(&lan_ns).await?;
    lan.link().add(LinkSpec::bridge("switch").up()).await?;
    let switch = lan.link().get("switch").await?.index;
    lan.address()
        .add(switch, "192.168.50.1/24".parse()?)
        .await?;
    lan.link()
        .add(
            LinkSpec::veth("port-host")
                .peer(VethPeer::new("uplink0").netns(&w.host))
                .master(switch)
                .up(),
        )
        .await?;
    let host = Handle::in_netns(&w.host).await?;
    let uplink = host.link().get("uplink0").await?.index;
    host.link().set_up(uplink).await?;
    let pc = w.lab.namespace("pc").await?;
    lan.link()
        .add(
            LinkSpec::veth("port-pc")
                .peer(VethPeer::new("eth0").netns(&pc))
                .master(switch)
                .up(),
        )
        .await?;
    let pch = Handle::in_netns(&pc).await?;
    let eth0 = pch.link().get("eth0").await?.index;
    pch.address().add(eth0, "192.168.50.10/24".parse()?).await?;
    pch.link().set_up(eth0).await?;

    step("1. Create a macvlan network on uplink0");
    shell(
        "host",
        "docker network create -d macvlan --subnet 192.168.50.0/24 --ip-range 192.168.50.128/25 \
         --gateway 192.168.50.1 --aux-address pc=192.168.50.10 -o parent=uplink0 my-macvlan-net",
    );
    let opts = MacvlanOptions {
        parent: Some("uplink0".into()),
        ..MacvlanOptions::default()
    };
    let spec = NetworkSpec::new("my-macvlan-net")
        .driver(DriverOptions::Macvlan(opts))
        .ipam(
            IpamConfig::new()
                .with_subnet("192.168.50.0/24".parse()?)
                .with_ip_range("192.168.50.128/25".parse()?)
                .with_gateway("192.168.50.1".parse()?)
                .with_aux_address("pc", "192.168.50.10".parse()?),
        );
    w.wharf.create_network(spec).await?;
    step("2. alpine1 and alpine2 on it");
    for name in ["alpine1", "alpine2"] {
        shell(
            "host",
            &format!("docker run -dit --name {name} --network my-macvlan-net alpine ash"),
        );
        w.wharf.create_sandbox(SandboxSpec::new(name)).await?;
        w.wharf
            .connect(name, "my-macvlan-net", EndpointSpec::default())
            .await?;
    }
    inspect(w, "my-macvlan-net")?;
    ip_addr(w, "alpine1").await?;

    step("3. They reach each other, the router and the PC directly on the LAN");
    let a2 = ipv4_of(w, "alpine2", "my-macvlan-net")?;
    ping(w, checks, s, "alpine1", "alpine2", By::Ip(a2), true).await?;
    ping(w, checks, s, "alpine1", "alpine2", By::Name, true).await?;
    ping(
        w,
        checks,
        s,
        "alpine1",
        "router",
        By::Ip("192.168.50.1".parse()?),
        true,
    )
    .await?;
    ping(
        w,
        checks,
        s,
        "alpine1",
        "pc",
        By::Ip("192.168.50.10".parse()?),
        true,
    )
    .await?;
    step(
        "4. The host cannot reach its own macvlan containers through the parent (a kernel property)",
    );
    let a1 = ipv4_of(w, "alpine1", "my-macvlan-net")?;
    let host_ip = "192.168.50.3/24".parse()?;
    host.address().add(uplink, host_ip).await?;
    shell("host", &format!("ping -c 1 {a1}"));
    let got = probe::can_ping(&w.host, a1, CHECK_TIMEOUT).await;
    println!("{}", if got { "reached" } else { "no reply" });
    checks.record(s, "host", "alpine1", By::Ip(a1), got, false);
    step("5. Clean up");
    for name in ["alpine1", "alpine2"] {
        w.wharf.delete_sandbox(name).await?;
    }
    w.wharf.delete_network("my-macvlan-net").await?;
    Ok(())
}

/// Scenario 4, step 6: an attachable overlay network for standalone containers on two hosts.
pub async fn overlay_attachable(w: &World, checks: &Checks) -> Result {
    use std::sync::Arc;
    use wharf::controller::{ClusterConfig, Controller, ControllerConfig};
    use wharf::driver::{DriverOptions, OverlayOptions};
    use wharf::store::{MemoryStore, Store};
    let s = "overlay-attachable";
    println!("\n## Scenario 4, step 6: an attachable overlay network across hosts");
    step("The cluster: manager, worker-1 and worker-2 on one underlay segment, sharing a store");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let roles = ["manager", "worker-1", "worker-2"];
    let mut hosts = Vec::new();
    for ((ns, addr), role) in w.lab.underlay(&roles).await?.into_iter().zip(roles) {
        let mut config = ControllerConfig::new(w.lab.temp_dir(&format!("{role}-state"))?)
            .host(ns)
            .netns_prefix(format!("{}{role}-", w.lab.netns_prefix()))
            .cluster(ClusterConfig::new(store.clone(), role, addr.into()));
        config.sandbox_files_dir = w.lab.temp_dir(&format!("{role}-etc-netns"))?;
        println!("{role}: underlay address {addr}");
        hosts.push(Controller::open(config).await?);
    }
    let (host1, host2) = (&hosts[0], &hosts[1]);
    step("1. On the manager: docker network create --driver overlay --attachable test-net");
    let spec = NetworkSpec::new("test-net")
        .driver(DriverOptions::Overlay(OverlayOptions::default()))
        .attachable();
    host1.create_network(spec).await?;
    step("2. alpine1 on the manager and alpine2 on worker-1 join test-net");
    for (host, name) in [(host1, "alpine1"), (host2, "alpine2")] {
        shell(
            name,
            &format!("docker run -dit --name {name} --network test-net alpine"),
        );
        host.create_sandbox(SandboxSpec::new(name)).await?;
        host.connect(name, "test-net", EndpointSpec::default())
            .await?;
    }
    shell("worker-1", "docker network inspect test-net");
    println!(
        "{}",
        serde_json::to_string_pretty(&[host2.inspect_network("test-net")?])?
    );
    step("3. alpine1 pings alpine2 by name across hosts, and back");
    let a1 = host1
        .endpoint("alpine1", "test-net")?
        .ipv4
        .ok_or("no address")?;
    let a2 = host2
        .endpoint("alpine2", "test-net")?
        .ipv4
        .ok_or("no address")?;
    ping_on(host1, checks, s, "alpine1", "alpine2", By::Name, true).await?;
    ping_on(
        host1,
        checks,
        s,
        "alpine1",
        "alpine2",
        By::Ip(a2.into()),
        true,
    )
    .await?;
    ping_on(host2, checks, s, "alpine2", "alpine1", By::Name, true).await?;
    ping_on(
        host2,
        checks,
        s,
        "alpine2",
        "alpine1",
        By::Ip(a1.into()),
        true,
    )
    .await?;
    step("4. Clean up: the containers, then test-net");
    host1.delete_sandbox("alpine1").await?;
    host2.delete_sandbox("alpine2").await?;
    host1.delete_network("test-net").await?;
    Ok(())
}

/// Scenario 4, steps 1-5: overlay networks and a replicated service across three hosts, with
/// its published port reached through every host (the routing mesh).
pub async fn overlay_service(w: &World, checks: &Checks) -> Result {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use wharf::controller::{
        ClusterConfig, Controller, ControllerConfig, ServiceInspect, ServicePort, ServiceSpec,
    };
    use wharf::driver::{DriverOptions, OverlayOptions};
    use wharf::store::{MemoryStore, Store};
    let s = "overlay-service";
    println!("\n## Scenario 4, steps 1-5: overlay networks and services across hosts");

    step("1. Form the cluster: manager, worker-1 and worker-2 on one underlay segment");
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let roles = ["manager", "worker-1", "worker-2"];
    let mut underlay = w
        .lab
        .underlay(&["manager", "worker-1", "worker-2", "client"])
        .await?;
    let (client, client_addr) = underlay.pop().ok_or("no client")?;
    println!("client: underlay address {client_addr} (outside the cluster)");
    let mut hosts: Vec<(&str, IpAddr, Controller)> = Vec::new();
    for ((ns, addr), role) in underlay.into_iter().zip(roles) {
        let mut config = ControllerConfig::new(w.lab.temp_dir(&format!("{role}-state"))?)
            .host(ns)
            .netns_prefix(format!("{}{role}-", w.lab.netns_prefix()))
            .cluster(ClusterConfig::new(store.clone(), role, addr.into()));
        config.sandbox_files_dir = w.lab.temp_dir(&format!("{role}-etc-netns"))?;
        shell(
            role,
            if role == "manager" {
                "docker swarm init"
            } else {
                "docker swarm join"
            },
        );
        let wharf = Controller::open(config).await?;
        wharf.join_routing_mesh().await?;
        println!("{role}: underlay address {addr}");
        hosts.push((role, addr.into(), wharf));
    }
    let manager = &hosts[0].2;
    // An ingress overlay and the local egress bridge now exist on every host.
    for (role, _, wharf) in &hosts {
        cluster_network_ls(role, wharf);
    }

    step("2. docker network create -d overlay nginx-net");
    let overlay = |name: &str| {
        NetworkSpec::new(name).driver(DriverOptions::Overlay(OverlayOptions::default()))
    };
    manager.create_network(overlay("nginx-net")).await?;
    shell(
        "manager",
        "docker service create --name my-nginx --publish target=80,published=80 --replicas=5 \
         --network nginx-net nginx",
    );
    let spec = ServiceSpec::new("my-nginx")
        .replicas(5)
        .network("nginx-net")
        .publish(ServicePort::tcp(80, 80));
    manager.create_service(spec.clone()).await?;
    let svc = service_running(&hosts, "my-nginx", 1).await?;
    let servers = start_replicas(&hosts).await?;
    service_ps(&svc);
    for (role, _, wharf) in &hosts {
        shell(role, "docker network inspect nginx-net");
        println!(
            "{}",
            serde_json::to_string_pretty(&[wharf.inspect_network("nginx-net")?])?
        );
    }
    step("The replicas reach each other across hosts, by name and by address");
    replicas_ping(&hosts, checks, s, &svc, true).await?;
    step("The published port answers on every host's address, from any replica (routing mesh)");
    mesh_checks(&hosts, &client, checks, s, "my-nginx", 80).await?;
    drop(servers);

    step("3. docker network create -d overlay nginx-net-2; move the service to it");
    manager.create_network(overlay("nginx-net-2")).await?;
    shell(
        "manager",
        "docker service update --network-add nginx-net-2 --network-rm nginx-net my-nginx",
    );
    let mut moved = spec.clone();
    moved.networks = vec!["nginx-net-2".into()];
    manager.update_service("my-nginx", moved).await?;
    let svc = service_running(&hosts, "my-nginx", 2).await?;
    let servers = start_replicas(&hosts).await?;
    service_ps(&svc);
    for (role, _, wharf) in &hosts {
        for net in ["nginx-net", "nginx-net-2"] {
            let n = wharf.inspect_network(net)?;
            let names: Vec<&str> = n.containers.values().map(|c| c.name.as_str()).collect();
            println!("{role}: {net} has {} containers {names:?}", names.len());
        }
    }
    replicas_ping(&hosts, checks, s, &svc, false).await?;
    mesh_checks(&hosts, &client, checks, s, "my-nginx", 80).await?;
    drop(servers);

    step("4. Remove the service and both networks");
    shell("manager", "docker service rm my-nginx");
    manager.remove_service("my-nginx").await?;
    wait_gone(&hosts).await?;
    shell("manager", "docker network rm nginx-net nginx-net-2");
    manager.delete_network("nginx-net").await?;
    manager.delete_network("nginx-net-2").await?;

    step("5. A user-defined overlay my-overlay, one replica published on 8080");
    manager.create_network(overlay("my-overlay")).await?;
    shell(
        "manager",
        "docker service create --name my-nginx --network my-overlay --replicas 1 \
         --publish published=8080,target=80 nginx:latest",
    );
    manager
        .create_service(
            ServiceSpec::new("my-nginx")
                .network("my-overlay")
                .publish(ServicePort::tcp(8080, 80)),
        )
        .await?;
    let svc = service_running(&hosts, "my-nginx", 1).await?;
    let servers = start_replicas(&hosts).await?;
    service_ps(&svc);
    mesh_checks(&hosts, &client, checks, s, "my-nginx", 8080).await?;
    drop(servers);
    manager.remove_service("my-nginx").await?;
    wait_gone(&hosts).await?;
    manager.delete_network("my-overlay").await?;
    return Ok(());

    /// `docker network ls` on one host of the cluster.
    fn cluster_network_ls(role: &str, wharf: &Controller) {
        shell(role, "docker network ls");
        println!("NETWORK ID     NAME             DRIVER    SCOPE");
        for n in wharf.list_networks() {
            println!(
                "{:<14} {:<16} {:<9} {}",
                &n.id[..12],
                n.name,
                n.driver,
                n.scope
            );
        }
    }

    /// Waits until every host runs the replicas of `version` placed on it.
    async fn service_running(
        hosts: &[(&str, IpAddr, Controller)],
        name: &str,
        version: u64,
    ) -> Result<ServiceInspect> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let mut done = true;
            for (role, _, wharf) in hosts {
                let svc = wharf.inspect_service(name).await?;
                let placed = svc.tasks.iter().filter(|t| t.node == *role).count();
                done &= svc.version == version
                    && svc.running == svc.replicas
                    && wharf.local_tasks().len() == placed;
            }
            // And every host's routing mesh balances its ports over all of them.
            let svc = hosts[0].2.inspect_service(name).await?;
            for (_, _, wharf) in hosts {
                let mesh = wharf.routing_mesh().await;
                done &= svc.ports.iter().all(|p| {
                    mesh.iter().any(|m| {
                        m.published == p.published && m.backends.len() == svc.replicas as usize
                    })
                });
            }
            if done {
                return Ok(svc);
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("service {name} did not start its replicas").into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until no host runs a task any more.
    async fn wait_gone(hosts: &[(&str, IpAddr, Controller)]) -> Result {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while hosts.iter().any(|(_, _, w)| {
            w.list_sandboxes()
                .iter()
                .any(|sb| sb.name != "ingress-sbox")
        }) {
            if std::time::Instant::now() > deadline {
                return Err("the replicas did not stop".into());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Each replica runs a tiny web server on port 80 that answers with its own name.
    async fn start_replicas(hosts: &[(&str, IpAddr, Controller)]) -> Result<Vec<probe::Server>> {
        let mut servers = Vec::new();
        for (_, _, wharf) in hosts {
            for t in wharf.local_tasks() {
                let ns = wharf.sandbox_netns(&t.sandbox)?;
                let greeting = format!("HTTP/1.1 200 OK (nginx {})", t.sandbox);
                servers.push(probe::serve_tcp(&ns, "0.0.0.0:80".parse()?, &greeting).await?);
            }
        }
        Ok(servers)
    }

    /// `docker service ps`.
    fn service_ps(svc: &ServiceInspect) {
        shell("manager", &format!("docker service ps {}", svc.name));
        println!("ID             NAME                          NODE       ADDRESS      STATE");
        for t in &svc.tasks {
            let addr = t
                .addresses
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default();
            println!(
                "{:<14} {:<29} {:<10} {:<12} {}",
                t.id, t.name, t.node, addr, t.state
            );
        }
    }

    /// Every replica pings every other by name (and by address when `by_ip`), and the
    /// service's own name.
    async fn replicas_ping(
        hosts: &[(&str, IpAddr, Controller)],
        checks: &Checks,
        s: &str,
        svc: &ServiceInspect,
        by_ip: bool,
    ) -> Result {
        let on: BTreeMap<&str, &Controller> = hosts.iter().map(|(r, _, w)| (*r, w)).collect();
        for from in &svc.tasks {
            let wharf = on.get(from.node.as_str()).ok_or("no such host")?;
            for to in &svc.tasks {
                if to.id == from.id {
                    continue;
                }
                ping_on(wharf, checks, s, &from.name, &to.name, By::Name, true).await?;
                if by_ip {
                    let ip = *to.addresses.first().ok_or("no address")?;
                    ping_on(wharf, checks, s, &from.name, &to.name, By::Ip(ip), true).await?;
                }
            }
            ping_on(wharf, checks, s, &from.name, &svc.name, By::Name, true).await?;
        }
        Ok(())
    }

    /// `curl http://<host>:<port>/` from the client, through each host, a few times: which
    /// replicas answer.
    async fn mesh_checks(
        hosts: &[(&str, IpAddr, Controller)],
        client: &wharf::sys::NetNs,
        checks: &Checks,
        s: &str,
        service: &str,
        port: u16,
    ) -> Result {
        for (role, addr, _) in hosts {
            let to = std::net::SocketAddr::new(*addr, port);
            let mut answered = Vec::new();
            for _ in 0..3 {
                shell("client", &format!("curl http://{to}/    # {role}"));
                match probe::tcp_connect(client, to, CHECK_TIMEOUT).await {
                    Ok(reply) => {
                        println!("{reply}");
                        answered.push(reply);
                    }
                    Err(e) => println!("curl: {e}"),
                }
            }
            checks.record(
                s,
                "client",
                service,
                By::Ip(*addr),
                answered.len() == 3,
                true,
            );
        }
        Ok(())
    }
}
