//! Docker's networking tutorial, scenario 4 step 6: an attachable overlay network across two
//! hosts, in a private lab.
//!
//! `cargo run --release --example overlay-attachable` (as root). See `examples/tutorial/main.rs`.

#[path = "tutorial/check.rs"]
mod check;
#[path = "tutorial/runner.rs"]
mod runner;
#[path = "tutorial/scenarios.rs"]
mod scenarios;
#[path = "tutorial/world.rs"]
mod world;

fn main() {
    runner::main(&["overlay-attachable"]);
}
