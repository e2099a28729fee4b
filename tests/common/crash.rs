//! The SIGKILL harness of the crash tests: a child process (this test binary re-invoked to run
//! one test, the child, with its world in environment variables) is killed at a random moment,
//! also while it is still opening (recovering from the previous kill).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wharf::controller::{Controller, Error};

use super::Rng;

/// A seed that differs between runs and processes.
pub fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    (nanos ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

/// The runtime of a child or of one check: two workers, as the machine has.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The first of `<prefix>0` .. `<prefix><max - 1>` not in `taken` (there must be one).
pub fn free_name(prefix: &str, max: usize, taken: &[String]) -> String {
    (0..max)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| !taken.contains(n))
        .expect("a free name")
}

/// The last lines a child printed, for a failure message.
pub fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(12)..].join("\n")
}

/// What a killed child printed.
pub struct Killed {
    /// Its output lines: `ready`, then `ok <op>` per completed operation.
    pub lines: Vec<String>,
    /// Whether it was killed while still opening.
    pub during_open: bool,
}

impl Killed {
    /// The operations it completed.
    pub fn ops(&self) -> usize {
        self.lines.iter().filter(|l| l.starts_with("ok ")).count()
    }
}

/// Runs the test `child` of this binary with `env` and SIGKILLs it: one time in eight within
/// 80 ms of its start (while it is opening), else up to `max_delay` after it printed `ready`.
/// Panics, naming `round`, if the child printed `ERR`, never got ready, or exited by itself.
pub fn run_and_kill(
    child: &str,
    env: &[(&str, String)],
    rng: &mut Rng,
    max_delay: Duration,
    round: usize,
) -> Killed {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", child, "--nocapture", "--test-threads=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = cmd.spawn().unwrap();
    let stdout = BufReader::new(proc.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let during_open = rng.below(8) == 0;
    if during_open {
        std::thread::sleep(Duration::from_millis(rng.below(80) as u64));
    } else {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("round {round}: the child never got ready: {}", tail(&lines))
                });
            // libtest prints `test <name> ... ` without a newline first.
            let ready = line.ends_with("ready");
            lines.push(line);
            if ready {
                break;
            }
        }
        let max = max_delay.as_millis().max(1) as usize;
        std::thread::sleep(Duration::from_millis(rng.below(max) as u64));
    }
    // SIGKILL: no destructor, no flush, mid-operation as likely as not.
    let _ = proc.kill();
    let status = proc.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    if let Some(err) = lines.iter().find(|l| l.starts_with("ERR")) {
        panic!("round {round}: the child failed: {err}\n{}", tail(&lines));
    }
    assert!(
        status.code().is_none(),
        "round {round}: the child exited by itself: {}",
        tail(&lines)
    );
    Killed { lines, during_open }
}

/// The child's side of [`run_and_kill`]: with the controller `opened` (else it prints
/// `ERR open: <error>` and exits), prints `ready`, then calls `step` until it is killed,
/// printing `ok <what>` after each operation `step` made (`None`: it chose none) and
/// `ERR <what>: <error>` (and exiting) when one failed.
pub async fn serve_until_killed(
    opened: Result<Controller, Error>,
    mut step: impl AsyncFnMut(&Controller, &mut Rng) -> Option<(String, Result<(), Error>)>,
) {
    let mut out = std::io::stdout();
    let wharf = match opened {
        Ok(w) => w,
        Err(e) => {
            writeln!(out, "ERR open: {e}").unwrap();
            std::process::exit(1);
        }
    };
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut rng = Rng(seed());
    loop {
        let Some((what, result)) = step(&wharf, &mut rng).await else {
            continue;
        };
        match result {
            Ok(()) => writeln!(out, "ok {what}").unwrap(),
            Err(e) => {
                writeln!(out, "ERR {what}: {e}").unwrap();
                out.flush().unwrap();
                std::process::exit(1);
            }
        }
        out.flush().unwrap();
    }
}
