//! Docker's networking tutorial, scenario 1: the default bridge network, in a private lab.
//!
//! `cargo run --release --example bridge-default` (as root). See `examples/tutorial/main.rs`.

#[path = "tutorial/check.rs"]
mod check;
#[path = "tutorial/runner.rs"]
mod runner;
#[path = "tutorial/scenarios.rs"]
mod scenarios;
#[path = "tutorial/world.rs"]
mod world;

fn main() {
    runner::main(&["bridge-default"]);
}
