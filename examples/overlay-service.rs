//! Docker's networking tutorial, scenario 4 steps 1-5: overlay networks and a replicated
//! service across three hosts, its published port reached through every host (the routing
//! mesh), in a private lab.
//!
//! `cargo run --release --example overlay-service` (as root). See `examples/tutorial/main.rs`.

#[path = "tutorial/check.rs"]
mod check;
#[path = "tutorial/runner.rs"]
mod runner;
#[path = "tutorial/scenarios.rs"]
mod scenarios;
#[path = "tutorial/world.rs"]
mod world;

fn main() {
    runner::main(&["overlay-service"]);
}
