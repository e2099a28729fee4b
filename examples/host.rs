//! Docker's networking tutorial, scenario 3: host networking, in a private lab.
//!
//! `cargo run --release --example host` (as root). See `examples/tutorial/main.rs`.

#[path = "tutorial/check.rs"]
mod check;
#[path = "tutorial/runner.rs"]
mod runner;
#[path = "tutorial/scenarios.rs"]
mod scenarios;
#[path = "tutorial/world.rs"]
mod world;

fn main() {
    runner::main(&["host"]);
}
