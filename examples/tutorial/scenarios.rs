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
    let ns = w.wharf.sandbox_netns(from)?;
    let (target, shown) = match by {
        By::Name => {
            let rc = w.wharf.sandbox(from)?.files.resolv_conf;
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
