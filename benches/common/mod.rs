//! What the attach/detach benches share: timing one phase of a cycle.

use std::time::{Duration, Instant};

/// Runs `iters` cycles of `before`, `timed`, `after` and returns the time spent in `timed` only
/// (for criterion's `iter_custom`). `before` and `after` put the world back where it started.
pub async fn time_phase(
    iters: u64,
    before: impl AsyncFn(),
    timed: impl AsyncFn(),
    after: impl AsyncFn(),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        before().await;
        let start = Instant::now();
        timed().await;
        total += start.elapsed();
        after().await;
    }
    total
}
