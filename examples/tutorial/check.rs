//! Reachability checks in the tutorial's output format, and the tally that decides the exit code.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Mutex;

/// How a destination is named in a check.
pub enum By {
    /// Resolved through the container's resolv.conf.
    Name,
    /// An address (named in the output, since a container may have several).
    Ip(IpAddr),
}

/// Every check made so far, and whether each matched Docker's outcome.
#[derive(Default)]
pub struct Checks {
    mismatches: Mutex<Vec<String>>,
    count: Mutex<usize>,
}

impl Checks {
    /// Records and prints one check:
    /// `CHECK <scenario> <from> -> <to> by-<name|ip>[=<address>]: <ok|fail> (expected <ok|fail>)`.
    pub fn record(&self, scenario: &str, from: &str, to: &str, by: By, got: bool, expected: bool) {
        let mut line = format!("CHECK {scenario} {from} -> {to} ");
        match by {
            By::Name => line.push_str("by-name"),
            By::Ip(ip) => {
                let _ = write!(line, "by-ip={ip}");
            }
        }
        let word = |b: bool| if b { "ok" } else { "fail" };
        let _ = write!(line, ": {} (expected {})", word(got), word(expected));
        if got != expected {
            line.push_str("  <-- differs from Docker");
            self.mismatches
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.clone());
        }
        *self.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        println!("{line}");
    }

    /// The checks whose outcome differed from the expected one.
    pub fn mismatches(&self) -> Vec<String> {
        self.mismatches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many checks were made.
    pub fn count(&self) -> usize {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }
}
