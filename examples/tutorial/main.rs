//! Docker's networking tutorial, reproduced with wharf in a private lab of namespaces.
//!
//! `cargo run --release --example tutorial` (as root) runs every scenario of
//! ../shared/TUTORIALS.md in order, prints what a user of the tutorial sees (network lists,
//! inspect output, `ip addr`, ping output) and one `CHECK` line per reachability step, and exits
//! non-zero if any observed result differs from Docker's. Name scenarios to run only those:
//! `cargo run --example tutorial -- bridge-user host`.
//!
//! By default everything happens in throwaway namespaces and the machine's own network is never
//! touched. `--real-host` uses the machine's real network namespace as the Docker host instead
//! (the containers are still throwaway namespaces); that changes the real host's network, as
//! Docker would.

mod check;
mod scenarios;
mod world;

use check::Checks;
use world::World;

const SCENARIOS: [&str; 4] = ["bridge-default", "bridge-user", "host", "macvlan"];

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let real_host = args.iter().any(|a| a == "--real-host");
    let mut wanted: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(bad) = wanted.iter().find(|w| !SCENARIOS.contains(w)) {
        eprintln!("unknown scenario {bad:?}; known: {}", SCENARIOS.join(", "));
        std::process::exit(2);
    }
    if wanted.is_empty() {
        wanted = SCENARIOS.to_vec();
    }
    let checks = Checks::default();
    // Ctrl-C ends the run; returning from here drops the world, which deletes the lab.
    let outcome = tokio::select! {
        r = run(&wanted, real_host, &checks) => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    let mismatches = checks.mismatches();
    println!(
        "\n{} checks, {} differ from Docker",
        checks.count(),
        mismatches.len()
    );
    for m in &mismatches {
        println!("{m}");
    }
    match outcome {
        Err(e) => {
            eprintln!("tutorial stopped: {e}");
            std::process::exit(1);
        }
        Ok(()) if !mismatches.is_empty() => std::process::exit(1),
        Ok(()) => {}
    }
}

async fn run(
    wanted: &[&str],
    real_host: bool,
    checks: &Checks,
) -> Result<(), Box<dyn std::error::Error>> {
    for scenario in wanted {
        // Each scenario in a world of its own, as each tutorial page starts from a fresh host.
        let world = World::new(real_host).await?;
        match *scenario {
            "bridge-default" => scenarios::bridge_default(&world, checks).await?,
            "bridge-user" => scenarios::bridge_user(&world, checks).await?,
            "host" => scenarios::host(&world, checks).await?,
            "macvlan" => scenarios::macvlan(&world, checks).await?,
            _ => unreachable!("checked in main"),
        }
    }
    Ok(())
}
