//! Docker's networking tutorial, scenario 2: a user-defined bridge network, in a private lab.
//!
//! `cargo run --release --example bridge-user` (as root). See `examples/tutorial/main.rs`.

#[path = "tutorial/check.rs"]
mod check;
#[path = "tutorial/runner.rs"]
mod runner;
#[path = "tutorial/scenarios.rs"]
mod scenarios;
#[path = "tutorial/world.rs"]
mod world;

fn main() {
    runner::main(&["bridge-user"]);
}
