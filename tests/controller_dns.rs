//! The embedded DNS through the controller: TUTORIALS.md scenario 2 by name, Docker's
//! resolv.conf, aliases, `name.network`, forwarding, and updates on connect and disconnect.

mod common;

use std::time::Duration;

use common::World;
use hickory_proto::rr::RecordType;
use wharf::controller::{EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::probe::{self, Transport};

const QUICK: Duration = Duration::from_millis(800);

/// "Ping by name" as a container does it: resolve with its resolv.conf, then ping.
async fn ping_by_name(w: &World, from: &str, to: &str) -> bool {
    let ns = w.wharf.sandbox_netns(from).unwrap();
    let rc = w.wharf.sandbox(from).unwrap().files.resolv_conf;
    match probe::lookup(&ns, &rc, to, QUICK).await {
        Some(ip) => probe::can_ping(&ns, ip, probe::DEFAULT_TIMEOUT).await,
        None => false,
    }
}

async fn scenario_2(w: &World) {
    let wharf = &w.wharf;
    wharf
        .create_network(NetworkSpec::new("alpine-net"))
        .await
        .unwrap();
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
    wharf
        .connect("alpine4", "bridge", EndpointSpec::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn scenario_2_by_name() {
    let w = World::new().await;
    let _internet = w.internet().await;
    scenario_2(&w).await;

    // TUTORIALS.md, scenario 2, step 4: the "name" column.
    let expected = [
        ("alpine1", "alpine2", true),
        ("alpine1", "alpine3", false),
        ("alpine1", "alpine4", true),
        ("alpine2", "alpine1", true),
        ("alpine2", "alpine3", false),
        ("alpine2", "alpine4", true),
        ("alpine3", "alpine1", false),
        ("alpine3", "alpine2", false),
        ("alpine3", "alpine4", false),
        ("alpine4", "alpine1", true),
        ("alpine4", "alpine2", true),
        ("alpine4", "alpine3", false),
    ];
    let mut wrong = Vec::new();
    for (from, to, ok) in expected {
        let got = ping_by_name(&w, from, to).await;
        if got != ok {
            wrong.push(format!("{from} -> {to} by name: got {got}, expected {ok}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test]
async fn resolv_conf_and_queries_are_dockers() {
    let w = World::new().await;
    let _internet = w.internet().await;
    scenario_2(&w).await;
    let wharf = &w.wharf;

    // A container on a user-defined network asks the embedded server; one only on the default
    // bridge asks the host's servers (loopback ones dropped).
    let rc1 = wharf.sandbox("alpine1").unwrap().files.resolv_conf;
    assert!(
        rc1.contains("nameserver 127.0.0.11\n") && rc1.contains("options ndots:0"),
        "{rc1}"
    );
    let rc3 = wharf.sandbox("alpine3").unwrap().files.resolv_conf;
    assert!(
        rc3.contains("nameserver 198.51.100.53") && !rc3.contains("127.0.0"),
        "{rc3}"
    );

    let a1 = wharf.sandbox_netns("alpine1").unwrap();
    let dns = "127.0.0.11:53".parse().unwrap();
    let a2_ip = std::net::IpAddr::from(
        wharf
            .endpoint("alpine2", "alpine-net")
            .unwrap()
            .ipv4
            .unwrap(),
    );
    for t in [Transport::Udp, Transport::Tcp] {
        let a = probe::dns_query(&a1, dns, "alpine2", RecordType::A, t, QUICK)
            .await
            .unwrap();
        assert_eq!(a.addresses, vec![a2_ip], "{t:?}");
        let a = probe::dns_query(&a1, dns, "ALPINE2.alpine-net.", RecordType::A, t, QUICK)
            .await
            .unwrap();
        assert_eq!(a.addresses, vec![a2_ip], "{t:?}");
    }
    // Outside names go upstream (the lab's internet), through the host.
    let g = probe::dns_query(
        &a1,
        dns,
        "google.com",
        RecordType::A,
        Transport::Udp,
        probe::DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        g.addresses,
        vec!["198.51.100.53".parse::<std::net::IpAddr>().unwrap()]
    );
    // PTR of a container's address.
    let ptr_name = match a2_ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(_) => unreachable!(),
    };
    let ptr = probe::dns_query(&a1, dns, &ptr_name, RecordType::PTR, Transport::Udp, QUICK)
        .await
        .unwrap();
    assert_eq!(ptr.names, vec!["alpine2.alpine-net.".to_owned()]);
}

#[tokio::test]
async fn aliases_and_changes_take_effect_at_once() {
    let w = World::new().await;
    let _internet = w.internet().await;
    let wharf = &w.wharf;
    wharf.create_network(NetworkSpec::new("app")).await.unwrap();
    for name in ["client", "web1", "web2"] {
        wharf.create_sandbox(SandboxSpec::new(name)).await.unwrap();
    }
    wharf
        .connect("client", "app", EndpointSpec::default())
        .await
        .unwrap();
    let alias = |a: &str| EndpointSpec {
        aliases: vec![a.to_owned()],
        ..EndpointSpec::default()
    };
    let w1 = wharf.connect("web1", "app", alias("web")).await.unwrap();
    let w2 = wharf.connect("web2", "app", alias("web")).await.unwrap();
    let client = wharf.sandbox_netns("client").unwrap();
    let dns = "127.0.0.11:53".parse().unwrap();
    let ask = |name: &'static str| {
        let client = client.clone();
        async move {
            let mut v = probe::dns_query(&client, dns, name, RecordType::A, Transport::Udp, QUICK)
                .await
                .unwrap()
                .addresses;
            v.sort();
            v
        }
    };
    let both: Vec<std::net::IpAddr> = vec![w1.ipv4.unwrap().into(), w2.ipv4.unwrap().into()];
    assert_eq!(
        ask("web").await,
        both,
        "an alias shared by two containers returns both"
    );

    wharf.disconnect("web1", "app").await.unwrap();
    assert_eq!(
        ask("web").await,
        vec![std::net::IpAddr::from(w2.ipv4.unwrap())]
    );
    assert!(
        ask("web1").await.is_empty(),
        "a disconnected container is not answered"
    );

    // The last user-defined network gone: the resolver stops, resolv.conf goes back to the host's.
    wharf.disconnect("client", "app").await.unwrap();
    let rc = wharf.sandbox("client").unwrap().files.resolv_conf;
    assert!(!rc.contains("127.0.0.11"), "{rc}");
    assert!(
        probe::dns_query(
            &client,
            dns,
            "web",
            RecordType::A,
            Transport::Udp,
            Duration::from_millis(300)
        )
        .await
        .is_err(),
        "nothing listens on 127.0.0.11 any more"
    );
}

#[tokio::test]
async fn names_survive_a_restart() {
    let mut w = World::new().await;
    w.network_with("app", &["a", "b"]).await;
    drop(w.wharf);
    w.wharf = common::reopen(&w.config).await;
    assert!(ping_by_name(&w, "a", "b").await);
    assert!(ping_by_name(&w, "b", "a").await);
}

#[tokio::test]
async fn ip_netns_exec_resolves_container_names() {
    // The default files directory (/etc/netns), which `ip netns exec` bind-mounts.
    let mut w = World::new().await;
    drop(w.wharf);
    w.config.sandbox_files_dir = "/etc/netns".into();
    w.wharf = common::reopen(&w.config).await;
    w.network_with("app", &["a", "b"]).await;
    let sb = w.wharf.sandbox("a").unwrap();
    let netns = sb.netns_name.clone().unwrap();
    let b_ip = w
        .wharf
        .endpoint("b", "app")
        .unwrap()
        .ipv4
        .unwrap()
        .to_string();
    // The resolver runs on this test's runtime: the commands must not block it.
    let exec = |args: &'static [&'static str]| {
        let netns = netns.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(args)
                .output()
                .expect("ip from iproute2")
        })
    };
    let out = exec(&["getent", "hosts", "b"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&b_ip), "getent hosts b inside a: {text:?}");
    let out = exec(&["ping", "-c", "1", "-W", "2", "b"]).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for name in ["a", "b"] {
        w.wharf.delete_sandbox(name).await.unwrap();
    }
}
