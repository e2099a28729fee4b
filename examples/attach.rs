//! Builds a private lab (a namespace that plays the host), opens a wharf controller on it,
//! attaches two containers to the default bridge, shows what a user would see, and cleans up.
//!
//! Run as root: `cargo run --release --example attach`. Nothing outside the lab is touched.

use std::time::Instant;

use wharf::controller::{Controller, ControllerConfig, EndpointSpec, SandboxSpec};
use wharf::lab::{Lab, probe};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lab = Lab::new();
    let host = lab.namespace("host").await?;
    let mut config = ControllerConfig::new(lab.temp_dir("state")?)
        .host(host)
        .netns_prefix(lab.netns_prefix());
    config.sandbox_files_dir = lab.temp_dir("etc-netns")?;
    let wharf = Controller::open(config).await?;

    println!("$ docker network ls");
    for net in wharf.list_networks() {
        println!(
            "{}  {:<8} {:<8} {}",
            &net.id[..12],
            net.name,
            net.driver,
            net.scope
        );
    }

    for name in ["alpine1", "alpine2"] {
        wharf.create_sandbox(SandboxSpec::new(name)).await?;
        let started = Instant::now();
        let ep = wharf
            .connect(name, "bridge", EndpointSpec::default())
            .await?;
        println!(
            "\n{name}: {} {}/{} mac {} (attached in {:?})",
            ep.ifname,
            ep.ipv4.map(|ip| ip.to_string()).unwrap_or_default(),
            ep.ipv4_prefix.unwrap_or_default(),
            ep.mac,
            started.elapsed()
        );
    }

    println!("\n$ docker network inspect bridge");
    println!(
        "{}",
        serde_json::to_string_pretty(&[wharf.inspect_network("bridge")?])?
    );

    let alpine1 = wharf.sandbox_netns("alpine1")?;
    let alpine2_ip = wharf
        .endpoint("alpine2", "bridge")?
        .ipv4
        .ok_or("alpine2 has no IPv4")?;
    let rtt = probe::ping(&alpine1, alpine2_ip.into(), probe::DEFAULT_TIMEOUT).await?;
    println!(
        "\nalpine1 $ ping -c 1 {alpine2_ip}\n64 bytes from {alpine2_ip}: icmp_seq=1 time={rtt:?}"
    );

    for name in ["alpine1", "alpine2"] {
        wharf.delete_sandbox(name).await?;
    }
    println!(
        "\ncleaned up: {} sandboxes left",
        wharf.list_sandboxes().len()
    );
    Ok(())
}
