//! The tutorial's command line and run loop, shared by `tutorial` and the per-scenario examples.

use crate::check::Checks;
use crate::scenarios;
use crate::world::World;

/// Every scenario, in the tutorial's order.
pub const SCENARIOS: [&str; 6] = [
    "bridge-default",
    "bridge-user",
    "host",
    "overlay-service",
    "overlay-attachable",
    "macvlan",
];

/// Runs the scenarios named on the command line, or `default` when none is named, and exits
/// non-zero if any check differs from Docker's outcome.
pub fn main(default: &[&str]) {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(run_main(default));
}

async fn run_main(default: &[&str]) {
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
        wanted = default.to_vec();
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
            "overlay-service" => scenarios::overlay_service(&world, checks).await?,
            "overlay-attachable" => scenarios::overlay_attachable(&world, checks).await?,
            "macvlan" => scenarios::macvlan(&world, checks).await?,
            _ => return Err(format!("unknown scenario {scenario:?}").into()),
        }
    }
    Ok(())
}
