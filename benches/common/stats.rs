//! What the scale benches share: summary statistics of timed series, the load average they ran
//! under, the process's resident memory, sizes from the environment, and a batch of sandboxes.
//!
//! Included by path (`#[path = "common/stats.rs"] mod stats;`) so that a bench that only times
//! one phase (`common::time_phase`) does not carry these unused.

use std::time::Duration;

use wharf::controller::{Controller, SandboxSpec};

/// Creates `n` sandboxes named `{prefix}0`, `{prefix}1`... and returns their names.
pub async fn sandboxes(wharf: &Controller, prefix: &str, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}{i}");
        wharf
            .create_sandbox(SandboxSpec::new(&name))
            .await
            .expect("sandbox");
        names.push(name);
    }
    names
}

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median of `v` (the upper one for an even length).
pub fn median(v: &[f64]) -> f64 {
    pct(v, 0.5)
}

/// The `p` quantile of `v` (nearest rank; `p` in 0..=1).
pub fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

/// The 1-, 5- and 15-minute load averages, so a reader can tell a quiet run from a busy one.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The process's resident memory in KiB (`VmRSS`), 0 where `/proc` does not say.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `name` from the environment as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of the ten samples around index `i` (one scheduler hiccup does not decide).
pub fn around(times: &[f64], i: usize) -> f64 {
    median(&times[i.saturating_sub(5)..(i + 5).min(times.len())])
}

/// Prints how a series of `n` attaches on one network grew: the 10th against the last (each as
/// the median of the ten around it) and the spread at the start, middle and end; returns the
/// ratio of last to 10th.
pub fn report_series(what: &str, times: &[f64]) -> f64 {
    let n = times.len();
    let (tenth, last) = (around(times, 9), around(times, n - 1));
    println!(
        "\n{what}, {n} on one network: the 10th {:.2} ms (median of attaches 5-14: {tenth:.2}), \
         the {n}th {:.2} ms (median of the last ten: {last:.2}) => {:.2}x; target <= 1.2x",
        times[9],
        times[n - 1],
        last / tenth
    );
    let window = 100.min(n / 2);
    for (from, to) in [
        (0, window),
        (n / 2 - window / 2, n / 2 + window / 2),
        (n - window, n),
    ] {
        let w = &times[from..to];
        println!(
            "  attaches {}-{}: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            from + 1,
            to,
            median(w),
            pct(w, 0.9),
            pct(w, 1.0)
        );
    }
    last / tenth
}
