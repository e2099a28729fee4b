//! The lab harness itself: namespaces are private and go away, probes see real packets.

use std::time::Duration;

use wharf::lab::{Lab, leftover_namespaces, probe};
use wharf::sys::NetNs;

#[tokio::test]
async fn namespaces_are_created_private_and_deleted_on_drop() {
    let lab = Lab::new();
    let a = lab.namespace("a").await.unwrap();
    let b = lab.namespace("b").await.unwrap();
    assert_ne!(a, b);
    assert_ne!(a, NetNs::current().unwrap());
    assert_eq!(NetNs::open(&lab.name("a")).unwrap(), a);
    let names = [lab.name("a"), lab.name("b")];
    drop(lab);
    let left = leftover_namespaces();
    for name in names {
        assert!(!left.contains(&name), "{name} survived its lab");
    }
}

#[tokio::test]
async fn a_panicking_test_still_cleans_up() {
    let lab_name = std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let lab = Lab::new();
        rt.block_on(lab.namespace("doomed")).unwrap();
        let name = lab.name("doomed");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _lab = lab;
            panic!("test failure");
        }));
        assert!(result.is_err());
        name
    })
    .join()
    .unwrap();
    assert!(!leftover_namespaces().contains(&lab_name));
}

#[tokio::test]
async fn probes_use_real_packets_inside_the_namespace() {
    let lab = Lab::new();
    let ns = lab.namespace("c").await.unwrap();

    // ICMP over the namespace's own loopback, v4 and v6.
    probe::ping(&ns, "127.0.0.1".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    probe::ping(&ns, "::1".parse().unwrap(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    // No route out of a fresh namespace: fails fast and says so.
    let err = probe::ping(
        &ns,
        "192.0.2.1".parse().unwrap(),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, probe::ProbeError::Unreachable { .. }),
        "{err}"
    );

    // TCP and UDP servers live in the namespace: reachable there, not from another one.
    let tcp = probe::serve_tcp(&ns, "127.0.0.1:0".parse().unwrap(), "hello")
        .await
        .unwrap();
    let got = probe::tcp_connect(&ns, tcp.addr(), probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(got, "hello");
    let other = lab.namespace("other").await.unwrap();
    assert!(
        probe::tcp_connect(&other, tcp.addr(), Duration::from_millis(500))
            .await
            .is_err()
    );

    let udp = probe::serve_udp(&ns, "127.0.0.1:0".parse().unwrap(), "pong")
        .await
        .unwrap();
    let reply = probe::udp_request(&ns, udp.addr(), b"ping", probe::DEFAULT_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(reply, b"pong");
}

#[test]
fn ip_netns_exec_enters_what_the_lab_made() {
    let lab = Lab::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ns = rt.block_on(lab.namespace("exec")).unwrap();
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.name("exec"),
            "ip",
            "-o",
            "link",
            "show",
            "lo",
        ])
        .output()
        .expect("iproute2 is installed by .ci/run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("LOOPBACK,UP"), "loopback not up: {text}");
    let out = ns.command("cat").arg("/proc/net/dev").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("lo:"));
}

#[tokio::test]
async fn hosts_on_an_underlay_reach_each_other() {
    let lab = Lab::new();
    let hosts = lab
        .underlay(&["manager", "worker-1", "worker-2"])
        .await
        .unwrap();
    assert_eq!(hosts[2].1.to_string(), "198.18.0.3");
    for (from, _) in &hosts {
        for (_, to) in &hosts {
            probe::ping(from, (*to).into(), probe::DEFAULT_TIMEOUT)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn the_lab_internet_has_a_name_server() {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;
    let lab = Lab::new();
    let inet = lab.namespace("internet").await.unwrap();
    let zone = [("google.com", "203.0.113.100".parse().unwrap())];
    let _dns = probe::serve_dns(&inet, "127.0.0.1:53".parse().unwrap(), &zone)
        .await
        .unwrap();
    for transport in [probe::Transport::Udp, probe::Transport::Tcp] {
        let a = probe::dns_query(
            &inet,
            "127.0.0.1:53".parse().unwrap(),
            "Google.com.",
            RecordType::A,
            transport,
            probe::DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(
            a.addresses,
            vec!["203.0.113.100".parse::<std::net::IpAddr>().unwrap()]
        );
        let nx = probe::dns_query(
            &inet,
            "127.0.0.1:53".parse().unwrap(),
            "nowhere.example",
            RecordType::A,
            transport,
            probe::DEFAULT_TIMEOUT,
        )
        .await
        .unwrap();
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
    }
}
