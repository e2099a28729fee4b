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
mod runner;
mod scenarios;
mod world;

fn main() {
    runner::main(&runner::SCENARIOS);
}
