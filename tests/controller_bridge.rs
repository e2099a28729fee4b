//! The controller with the bridge, host and none drivers, in a lab: TUTORIALS.md scenarios 1-3
//! by IP, inspect output, restart, and clean failures.

mod common;

use std::time::Duration;

use common::World;
use wharf::controller::{EndpointSpec, Error, NetworkSpec, SandboxSpec};
use wharf::lab::probe;

const FAIL_FAST: Duration = Duration::from_millis(600);

#[tokio::test]
async fn scenario_1_default_bridge() {
    let w = World::new().await;
    let wharf = &w.wharf;

    // 1. bridge, host and none exist from the start.
    let names: Vec<String> = wharf.list_networks().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["bridge", "host", "none"]);

    // 2. alpine1 and alpine2 land on the default bridge.
    for name in ["alpine1", "alpine2"] {
        wharf.create_sandbox(SandboxSpec::new(name)).await.unwrap();
        wharf
            .connect(name, "bridge", EndpointSpec::default())
            .await
            .unwrap();
    }

    // 3. inspect: subnet, gateway, both containers with addresses and MACs.
    let bridge = wharf.inspect_network("bridge").unwrap();
    assert_eq!(bridge.driver, "bridge");
    assert_eq!(bridge.ipam.config[0].subnet, "172.17.0.0/16");
    assert_eq!(bridge.ipam.config[0].gateway.as_deref(), Some("172.17.0.1"));
    assert_eq!(bridge.options["com.docker.network.bridge.name"], "wharf0");
    let mut seen: Vec<(String, String, String)> = bridge
        .containers
        .values()
        .map(|c| {
            (
                c.name.clone(),
                c.ipv4_address.clone(),
                c.mac_address.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "alpine1".into(),
                "172.17.0.2/16".into(),
                "02:42:ac:11:00:02".into()
            ),
            (
                "alpine2".into(),
                "172.17.0.3/16".into(),
                "02:42:ac:11:00:03".into()
            ),
        ]
    );

    // 4. inside alpine1: eth0 with its address.
    let a1 = wharf.sandbox_netns("alpine1").unwrap();
    let addrs = w.addresses_of(&a1, "eth0").await;
    assert!(addrs.contains(&"172.17.0.2/16".to_owned()), "{addrs:?}");

    // 6. by IP: works (by name is the DNS issue's business).
    probe::ping(&a1, "172.17.0.3".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    probe::ping(&a1, "172.17.0.1".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();

    // 7. remove both: nothing of them remains on the host.
    for name in ["alpine1", "alpine2"] {
        wharf.delete_sandbox(name).await.unwrap();
    }
    assert!(
        wharf
            .inspect_network("bridge")
            .unwrap()
            .containers
            .is_empty()
    );
    assert_eq!(w.host_links().await, ["lo", "wharf0"]);
}

#[tokio::test]
async fn scenario_2_user_defined_bridge_by_ip() {
    let w = World::new().await;
    let wharf = &w.wharf;

    // 1. alpine-net gets the next default subnet.
    let net = wharf
        .create_network(NetworkSpec::new("alpine-net"))
        .await
        .unwrap();
    assert_eq!(net.ipam.config[0].subnet, "172.18.0.0/16");
    assert_eq!(net.ipam.config[0].gateway.as_deref(), Some("172.18.0.1"));
    assert_eq!(net.id.len(), 64);

    // 2. alpine1, 2, 4 on alpine-net; alpine3 on bridge; alpine4 also on bridge.
    for name in ["alpine1", "alpine2", "alpine3", "alpine4"] {
        wharf.create_sandbox(SandboxSpec::new(name)).await.unwrap();
    }
    for name in ["alpine1", "alpine2", "alpine4"] {
        wharf
            .connect(name, "alpine-net", EndpointSpec::default())
            .await
            .unwrap();
    }
    wharf
        .connect("alpine3", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    let second = wharf
        .connect("alpine4", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    assert_eq!(second.ifname, "eth1");

    // 3. inspect lists them.
    let members = |net: &str| {
        let mut v: Vec<String> = wharf
            .inspect_network(net)
            .unwrap()
            .containers
            .into_values()
            .map(|c| c.name)
            .collect();
        v.sort();
        v
    };
    assert_eq!(members("bridge"), ["alpine3", "alpine4"]);
    assert_eq!(members("alpine-net"), ["alpine1", "alpine2", "alpine4"]);

    // 4. the reachability that works by IP.
    let ip = |sb: &str, net: &str| wharf.endpoint(sb, net).unwrap().ipv4.unwrap().into();
    let ns = |sb: &str| wharf.sandbox_netns(sb).unwrap();
    let ok = [
        ("alpine1", ip("alpine2", "alpine-net")),
        ("alpine1", ip("alpine4", "alpine-net")),
        ("alpine2", ip("alpine1", "alpine-net")),
        ("alpine2", ip("alpine4", "alpine-net")),
        ("alpine3", ip("alpine4", "bridge")),
        ("alpine4", ip("alpine1", "alpine-net")),
        ("alpine4", ip("alpine2", "alpine-net")),
        ("alpine4", ip("alpine3", "bridge")),
    ];
    for (from, to) in ok {
        probe::ping(&ns(from), to, probe::DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
    }

    // The default route of alpine4 goes through its first network, and moves when it leaves.
    assert_eq!(
        w.default_gateway(&ns("alpine4")).await.as_deref(),
        Some("172.18.0.1")
    );
    wharf.disconnect("alpine4", "alpine-net").await.unwrap();
    assert_eq!(
        w.default_gateway(&ns("alpine4")).await.as_deref(),
        Some("172.17.0.1")
    );
    assert!(
        probe::ping(&ns("alpine1"), ip("alpine2", "alpine-net"), FAIL_FAST)
            .await
            .is_ok()
    );

    // 6. remove containers and the network.
    for name in ["alpine1", "alpine2", "alpine3", "alpine4"] {
        wharf.delete_sandbox(name).await.unwrap();
    }
    wharf.delete_network("alpine-net").await.unwrap();
    assert_eq!(w.host_links().await, ["lo", "wharf0"]);
}

#[tokio::test]
async fn scenario_3_host_networking() {
    let w = World::new().await;
    let wharf = &w.wharf;
    let client = w.client().await;
    let before = w.host_links().await;

    // A web server in a container on the host network: no namespace, interface or IP of its own.
    wharf
        .create_sandbox(SandboxSpec::host("web"))
        .await
        .unwrap();
    let ep = wharf
        .connect("web", "host", EndpointSpec::default())
        .await
        .unwrap();
    assert_eq!((ep.ipv4, ep.ipv6), (None, None));
    let web_ns = wharf.sandbox_netns("web").unwrap();
    assert_eq!(web_ns, w.host, "the container's namespace is the host's");
    assert_eq!(
        w.host_links().await,
        before,
        "host networking creates no interface"
    );

    // Port 8080 is bound in the host namespace and served on the host's address.
    let server = probe::serve_tcp(&web_ns, "0.0.0.0:8080".parse().unwrap(), "nginx")
        .await
        .unwrap();
    let got = probe::tcp_connect(
        &client,
        "192.0.2.1:8080".parse().unwrap(),
        probe::DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(got, "nginx");
    let inspect = wharf.inspect_network("host").unwrap();
    let c = inspect.containers.values().next().unwrap();
    assert_eq!((c.name.as_str(), c.ipv4_address.as_str()), ("web", ""));

    // Its files are the host's.
    let files = wharf.sandbox("web").unwrap().files;
    assert!(
        files.resolv_conf.contains("127.0.0.53"),
        "host resolv.conf as is: {files:?}"
    );

    // Stop it: nothing remains.
    drop(server);
    wharf.delete_sandbox("web").await.unwrap();
    assert_eq!(w.host_links().await, before);
    // A sandbox with its own namespace cannot use the host network, and vice versa.
    wharf.create_sandbox(SandboxSpec::new("c1")).await.unwrap();
    let err = wharf
        .connect("c1", "host", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
}

#[tokio::test]
async fn none_network_is_loopback_only() {
    let w = World::new().await;
    w.wharf
        .create_sandbox(SandboxSpec::new("lonely"))
        .await
        .unwrap();
    w.wharf
        .connect("lonely", "none", EndpointSpec::default())
        .await
        .unwrap();
    let ns = w.wharf.sandbox_netns("lonely").unwrap();
    assert_eq!(w.links_in(&ns).await, ["lo"]);
    probe::ping(&ns, "127.0.0.1".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    let err = w
        .wharf
        .connect("lonely", "bridge", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
}

#[tokio::test]
async fn sandbox_files_are_where_ip_netns_exec_finds_them() {
    let w = World::new().await;
    let sb = w
        .wharf
        .create_sandbox(SandboxSpec::new("files"))
        .await
        .unwrap();
    w.wharf
        .connect("files", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    let dir = w.files_dir.join(sb.netns_name.as_deref().unwrap());
    let resolv = std::fs::read_to_string(dir.join("resolv.conf")).unwrap();
    let hosts = std::fs::read_to_string(dir.join("hosts")).unwrap();
    // The host's upstream servers, loopback ones filtered out.
    assert!(resolv.contains("nameserver 198.51.100.53"), "{resolv}");
    assert!(!resolv.contains("127.0.0.53"), "{resolv}");
    assert!(hosts.contains("172.17.0.2\tfiles"), "{hosts}");
    assert_eq!(w.wharf.sandbox("files").unwrap().files.hosts, hosts);
    w.wharf.delete_sandbox("files").await.unwrap();
    assert!(!dir.exists(), "sandbox files are removed with the sandbox");
}

#[tokio::test]
async fn state_survives_a_restart() {
    let mut w = World::new().await;
    w.network_with("alpine-net", &["a1", "a2"]).await;
    let before = w.wharf.inspect_network("alpine-net").unwrap();

    drop(w.wharf);
    w.wharf = common::reopen(&w.config).await;
    let after = w.wharf.inspect_network("alpine-net").unwrap();
    assert_eq!(before, after);
    assert_eq!(w.wharf.list_sandboxes().len(), 2);
    let a1 = w.wharf.sandbox_netns("a1").unwrap();
    let a2_ip = w.wharf.endpoint("a2", "alpine-net").unwrap().ipv4.unwrap();
    probe::ping(&a1, a2_ip.into(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();

    // The next container gets the next address, not a reused one.
    w.wharf
        .create_sandbox(SandboxSpec::new("a3"))
        .await
        .unwrap();
    let a3 = w
        .wharf
        .connect("a3", "alpine-net", EndpointSpec::default())
        .await
        .unwrap();
    assert_eq!(a3.ipv4.unwrap().to_string(), "172.18.0.4");
}

#[tokio::test]
async fn detach_works_when_the_namespace_is_gone() {
    let mut w = World::new().await;
    let sb = w
        .wharf
        .create_sandbox(SandboxSpec::new("gone"))
        .await
        .unwrap();
    w.wharf
        .connect("gone", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    // The controller stops; meanwhile the namespace is deleted from outside.
    drop(w.wharf);
    wharf::sys::NetNs::delete(sb.netns_name.as_deref().unwrap()).unwrap();
    w.wharf = common::reopen(&w.config).await;
    w.wharf.disconnect("gone", "bridge").await.unwrap();
    w.wharf.delete_sandbox("gone").await.unwrap();
    assert_eq!(w.host_links().await, ["lo", "wharf0"]);
    // Its address is free again.
    w.wharf
        .create_sandbox(SandboxSpec::new("next"))
        .await
        .unwrap();
    let ep = w
        .wharf
        .connect("next", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    assert_eq!(ep.ipv4.unwrap().to_string(), "172.17.0.2");
}

#[tokio::test]
async fn a_failed_attach_leaves_nothing_behind() {
    let w = World::new().await;
    let wharf = &w.wharf;
    wharf.create_network(NetworkSpec::new("net")).await.unwrap();
    let sb = wharf.create_sandbox(SandboxSpec::new("c1")).await.unwrap();
    let ns = wharf.sandbox_netns("c1").unwrap();
    // Something else already made an eth0 inside the container: the veth's peer cannot take
    // that name, so the kernel refuses the attach half-way.
    let inside = wharf::sys::rtnl::Handle::in_netns(&ns).await.unwrap();
    inside
        .link()
        .add(wharf::sys::rtnl::LinkSpec::bridge("eth0"))
        .await
        .unwrap();
    let host_before = w.host_links().await;
    let inside_before = w.links_in(&ns).await;
    let net_before = wharf.inspect_network("net").unwrap();

    let err = wharf
        .connect("c1", "net", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Driver(_)), "{err}");

    assert_eq!(
        w.host_links().await,
        host_before,
        "no veth left on the host"
    );
    assert_eq!(
        w.links_in(&ns).await,
        inside_before,
        "nothing new in the container"
    );
    assert_eq!(wharf.inspect_network("net").unwrap(), net_before);
    assert!(wharf.sandbox(&sb.id).unwrap().endpoints.is_empty());
    // The address was released: the next container gets .2.
    wharf.create_sandbox(SandboxSpec::new("c2")).await.unwrap();
    let ep = wharf
        .connect("c2", "net", EndpointSpec::default())
        .await
        .unwrap();
    assert_eq!(ep.ipv4.unwrap().to_string(), "172.18.0.2");
    // A static address that is taken is refused before anything is created.
    let taken = EndpointSpec {
        ipv4: Some("172.18.0.2".parse().unwrap()),
        ifname: Some("eth1".into()),
        ..EndpointSpec::default()
    };
    let err = wharf.connect("c1", "net", taken).await.unwrap_err();
    assert!(matches!(err, Error::Ipam(_)), "{err}");
    assert_eq!(
        w.host_links().await.len(),
        host_before.len() + 1,
        "only c2's veth"
    );
}

#[tokio::test]
async fn subnets_overlapping_host_routes_are_skipped() {
    let lab = wharf::lab::Lab::new();
    let host = lab.namespace("host").await.unwrap();
    let upstream = lab.namespace("upstream").await.unwrap();
    lab.wire(
        (&host, "uplink", "192.0.2.1/24".parse().unwrap()),
        (&upstream, "eth0", "192.0.2.2/24".parse().unwrap()),
    )
    .await
    .unwrap();
    // The host already routes 172.18.0.0/16 somewhere else.
    let h = wharf::sys::rtnl::Handle::in_netns(&host).await.unwrap();
    h.route()
        .add(
            wharf::sys::rtnl::Route::new("172.18.0.0/16".parse().unwrap())
                .via("192.0.2.2".parse().unwrap()),
        )
        .await
        .unwrap();
    let mut config = wharf::controller::ControllerConfig::new(lab.temp_dir("state").unwrap())
        .host(host)
        .netns_prefix(lab.netns_prefix());
    config.sandbox_files_dir = lab.temp_dir("files").unwrap();
    let wharf = wharf::controller::Controller::open(config).await.unwrap();
    assert_eq!(
        wharf.inspect_network("bridge").unwrap().ipam.config[0].subnet,
        "172.17.0.0/16"
    );
    let net = wharf
        .create_network(NetworkSpec::new("next"))
        .await
        .unwrap();
    assert_eq!(net.ipam.config[0].subnet, "172.19.0.0/16");
    // A user-given subnet that overlaps another network is refused, naming it.
    let clash = NetworkSpec::new("clash").ipam(
        wharf::ipam::IpamConfig::new()
            .parse_subnet("172.19.5.0/24")
            .unwrap(),
    );
    let err = wharf.create_network(clash).await.unwrap_err();
    assert!(err.to_string().contains("\"next\""), "{err}");
}

#[tokio::test]
async fn a_runtime_namespace_given_by_path_is_used_and_never_deleted() {
    let w = World::new().await;
    // The runtime's own namespace (loopback still down, as after unshare).
    let name = w.lab.name("runtime-made");
    let ns = wharf::sys::NetNs::create(&name).await.unwrap();
    w.lab.adopt(&name);
    let h = wharf::sys::rtnl::Handle::in_netns(&ns).await.unwrap();
    let lo = h.link().get("lo").await.unwrap();
    h.link().set_down(lo.index).await.unwrap();

    let spec = SandboxSpec {
        name: "given".into(),
        namespace: wharf::controller::SandboxNamespace::Path(ns.path().to_owned()),
        hostname: None,
    };
    let sb = w.wharf.create_sandbox(spec).await.unwrap();
    assert_eq!(sb.netns_name, None);
    assert!(h.link().get("lo").await.unwrap().up, "loopback brought up");
    w.wharf
        .connect("given", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    probe::ping(&ns, "172.17.0.1".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    w.wharf.delete_sandbox("given").await.unwrap();
    assert!(
        wharf::sys::NetNs::open(&name).is_ok(),
        "the runtime's namespace is left alone"
    );
    assert_eq!(w.links_in(&ns).await, ["lo"]);
}

#[test]
fn the_state_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(World::new());
    let dir = &w.config.state_dir;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir), 0o700);
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(
            mode(&path) & 0o077,
            0,
            "{} is readable by others",
            path.display()
        );
    }
    drop(w);
}

#[tokio::test]
async fn ipv6_subnets_when_enabled() {
    let w = World::new().await;
    let net = w
        .wharf
        .create_network(NetworkSpec::new("dual").ipv6())
        .await
        .unwrap();
    assert!(net.enable_ipv6);
    let v6 = &net.ipam.config[1];
    assert!(
        v6.subnet.starts_with("fd") && v6.subnet.ends_with("/64"),
        "{v6:?}"
    );
    for name in ["a", "b"] {
        w.run(name, "dual").await;
    }
    let b = w.wharf.endpoint("b", "dual").unwrap();
    let b6 = b.ipv6.expect("an IPv6 address");
    let a = w.wharf.sandbox_netns("a").unwrap();
    probe::ping(&a, b6.into(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    let gw6: std::net::IpAddr = v6.gateway.as_deref().unwrap().parse().unwrap();
    probe::ping(&a, gw6, probe::DEFAULT_TIMEOUT).await.unwrap();
    let inspect = w.wharf.inspect_network("dual").unwrap();
    let c = inspect.containers.values().find(|c| c.name == "b").unwrap();
    assert_eq!(c.ipv6_address, format!("{b6}/64"));
}

#[tokio::test]
async fn mtu_option_reaches_the_containers() {
    let w = World::new().await;
    let opts = wharf::driver::BridgeOptions {
        mtu: Some(1400),
        ..Default::default()
    };
    w.wharf
        .create_network(
            NetworkSpec::new("small").driver(wharf::driver::DriverOptions::Bridge(opts)),
        )
        .await
        .unwrap();
    w.run("c", "small").await;
    let ns = w.wharf.sandbox_netns("c").unwrap();
    let h = wharf::sys::rtnl::Handle::in_netns(&ns).await.unwrap();
    assert_eq!(h.link().get("eth0").await.unwrap().mtu, 1400);
}

/// The bridge does no multicast snooping unless the network asks for it (read back from the
/// kernel with `ip -d link show`).
#[tokio::test]
async fn multicast_snooping_follows_the_option() {
    let w = World::new().await;
    let snooping = wharf::driver::BridgeOptions {
        multicast_snooping: Some(true),
        ..Default::default()
    };
    w.network_with("quiet", &["a"]).await;
    w.wharf
        .create_network(
            NetworkSpec::new("snoop").driver(wharf::driver::DriverOptions::Bridge(snooping)),
        )
        .await
        .unwrap();
    let host = w.host.name().unwrap().to_owned();
    let mcast_snooping = |bridge: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &host, "-d", "-j", "link", "show", bridge])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v[0]["linkinfo"]["info_data"]["mcast_snooping"].as_u64()
    };
    let quiet = format!("br-{}", &w.wharf.inspect_network("quiet").unwrap().id[..12]);
    assert_eq!(mcast_snooping(&quiet), Some(0));
    assert!(
        !w.wharf
            .inspect_network("quiet")
            .unwrap()
            .options
            .contains_key("wharf.bridge.multicast_snooping")
    );
    let snoop = format!("br-{}", &w.wharf.inspect_network("snoop").unwrap().id[..12]);
    assert_eq!(mcast_snooping(&snoop), Some(1));
    assert_eq!(
        w.wharf.inspect_network("snoop").unwrap().options["wharf.bridge.multicast_snooping"],
        "true"
    );
    // The neighbour is still found (ARP is a broadcast) and reached.
    w.run("b", "quiet").await;
    let a = w.wharf.sandbox_netns("a").unwrap();
    let b_ip = w.wharf.endpoint("b", "quiet").unwrap().ipv4.unwrap();
    probe::ping(&a, b_ip.into(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
}

/// `disconnect_many`: a batch of detaches, one result per pair. The bridge veths of the plain
/// endpoints go as one link group; an endpoint with published ports goes its own way; bad
/// pairs fail alone and leave the rest detached.
#[tokio::test]
async fn disconnect_many_detaches_a_batch_and_answers_for_each_pair() {
    let w = World::new().await;
    w.network_with("app", &["a", "b", "c", "d"]).await;
    w.wharf
        .connect("a", "bridge", EndpointSpec::default())
        .await
        .unwrap();
    // One container publishing host port 8080 (such an endpoint is detached on its own).
    let publisher = async |name: &str| {
        w.wharf
            .create_sandbox(SandboxSpec::new(name))
            .await
            .unwrap();
        let spec = EndpointSpec {
            ports: vec![wharf::driver::PortMapping::tcp(8080, 80)],
            ..EndpointSpec::default()
        };
        w.wharf.connect(name, "app", spec).await.unwrap();
    };
    publisher("p").await;
    let a = w.wharf.sandbox_netns("a").unwrap();
    let b_ip = w.wharf.endpoint("b", "app").unwrap().ipv4.unwrap();
    assert!(probe::can_ping(&a, b_ip.into(), probe::DEFAULT_TIMEOUT).await);
    let veths = async || {
        w.host_links()
            .await
            .into_iter()
            .filter(|l| l.starts_with("veth"))
            .count()
    };
    assert_eq!(veths().await, 6);

    let results = w
        .wharf
        .disconnect_many(&[
            ("a", "app"),
            ("b", "app"),
            ("c", "app"),
            ("p", "app"),
            ("d", "no-such-net"),
            ("nobody", "app"),
            ("a", "bridge"),
            ("b", "bridge"),
        ])
        .await;
    let verdicts: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(()) => "ok".into(),
            Err(Error::NotFound { name, .. }) => format!("not found: {name}"),
            Err(Error::NotConnected { sandbox, network }) => {
                format!("{sandbox} not on {network}")
            }
            Err(e) => format!("{e}"),
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            "ok",
            "ok",
            "ok",
            "ok",
            "not found: no-such-net",
            "not found: nobody",
            "ok",
            "b not on bridge"
        ]
    );
    // Only d's veth is left on the host; a has nothing but its loopback and no route out.
    assert_eq!(veths().await, 1);
    assert_eq!(w.links_in(&a).await, ["lo"]);
    assert_eq!(w.default_gateway(&a).await, None);
    for sb in ["a", "b", "c", "p"] {
        assert!(w.wharf.sandbox(sb).unwrap().endpoints.is_empty(), "{sb}");
    }
    w.wharf.endpoint("d", "app").unwrap();
    // The port is free again and the addresses are back in the pool.
    publisher("q").await;
    let again = w
        .wharf
        .connect("a", "app", EndpointSpec::default())
        .await
        .unwrap();
    assert!(
        again.ipv4.is_some() && w.wharf.endpoint("d", "app").unwrap().ipv4 != again.ipv4,
        "a fresh address"
    );
    let d = w.wharf.sandbox_netns("d").unwrap();
    assert!(probe::can_ping(&d, again.ipv4.unwrap().into(), probe::DEFAULT_TIMEOUT).await);

    // Deleting sandboxes in a batch: each answered, their namespaces and veths gone.
    let results = w
        .wharf
        .delete_sandboxes(&["a", "b", "nobody", "d", "a"])
        .await;
    assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok() && results[4].is_ok());
    assert!(matches!(results[2], Err(Error::NotFound { .. })));
    let left: Vec<String> = w
        .wharf
        .list_sandboxes()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(left, ["c", "p", "q"]);
    assert_eq!(veths().await, 1, "q's");
    // This world's namespaces only: other tests of this file run in parallel with sandboxes
    // named alike.
    let netns: Vec<String> = wharf::sys::NetNs::list_named()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&w.lab.netns_prefix()))
        .collect();
    assert!(
        !netns.iter().any(|n| n.ends_with("-a") || n.ends_with("-d")),
        "{netns:?}"
    );
}
