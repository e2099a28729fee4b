//! A real etcd server on loopback, for the tests, examples and benchmarks of the etcd store.
//!
//! [`EtcdServer::start`] runs Debian's `etcd` (package `etcd-server`, binary `/usr/bin/etcd`; the
//! `WHARF_ETCD` environment variable names another binary) as a one-member cluster on free
//! ports of 127.0.0.1, with its data in a fresh directory, and returns once it answers. Dropping
//! the server kills it and removes the directory, also when a test panics. It can be killed and
//! started again on the same data and ports, to test what clients do across an etcd restart.
//!
//! The server runs with a 10 ms heartbeat and a 100 ms election timeout, so that leases of one
//! second are allowed (etcd's minimum ttl is 1.5 election timeouts, rounded up to a second).
//!
//! A process killed before its guards ran leaves a directory `wharf-etcd-<pid>-<n>` in the temp
//! directory and maybe a running etcd; [`EtcdServer::start`] kills and removes those of processes
//! that no longer exist.
//!
//! Without an etcd binary, `start` fails with [`EtcdServerError::NotInstalled`], whose message
//! says what to install: tests that need etcd fail loudly, they never pass by skipping.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The default etcd binary (Debian's `etcd-server` package).
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

/// The environment variable naming another etcd binary.
pub const ETCD_BINARY_ENV: &str = "WHARF_ETCD";

/// The prefix of every directory an [`EtcdServer`] creates in the temp directory.
pub const DIR_PREFIX: &str = "wharf-etcd-";

/// How long [`EtcdServer::start`] waits for the server to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

static NEXT_SERVER: AtomicU32 = AtomicU32::new(0);

/// Errors starting an [`EtcdServer`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdServerError {
    /// No etcd binary.
    #[error(
        "etcd binary {} not found: these tests need a real etcd server; install Debian's \
         `etcd-server` package (apt-get install etcd-server) or set {ETCD_BINARY_ENV} to an \
         etcd binary",
        path.display()
    )]
    NotInstalled {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The server exited or did not answer in time.
    #[error("etcd at {endpoint} did not become healthy: {reason}; the end of its log {}:\n{tail}", log.display())]
    NotReady {
        /// Its client URL.
        endpoint: String,
        /// What happened.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of the log.
        tail: String,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> EtcdServerError {
    let context = context.into();
    move |source| EtcdServerError::Io { context, source }
}

/// A one-member etcd cluster on loopback, killed and removed on drop.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wharf::lab::etcd::EtcdServer;
/// let mut etcd = EtcdServer::start().await?;
/// let endpoints = etcd.endpoints(); // ["http://127.0.0.1:<port>"]
/// // ... connect clients ...
/// etcd.kill();                      // a crash: the data stays
/// etcd.start_again().await?;        // same data, same ports
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    name: String,
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts a fresh server of [`ETCD_BINARY`] (or of the binary `WHARF_ETCD` names) and waits
    /// until it answers.
    pub async fn start() -> Result<Self, EtcdServerError> {
        let binary = std::env::var_os(ETCD_BINARY_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(ETCD_BINARY));
        Self::start_binary(binary).await
    }

    /// Starts a fresh server of the etcd binary at `binary` and waits until it answers.
    pub async fn start_binary(binary: impl Into<PathBuf>) -> Result<Self, EtcdServerError> {
        let binary = binary.into();
        if !binary.is_file() {
            return Err(EtcdServerError::NotInstalled { path: binary });
        }
        sweep_stale();
        let n = NEXT_SERVER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{DIR_PREFIX}{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(io_error(format!("removing {}", dir.display())))?;
        }
        std::fs::create_dir_all(&dir).map_err(io_error(format!("creating {}", dir.display())))?;
        let mut server = EtcdServer {
            binary,
            name,
            dir,
            client_port: 0,
            peer_port: 0,
            child: None,
        };
        // Free ports can be taken between probing and etcd binding them: try a few times.
        let mut last = None;
        for _ in 0..3 {
            server.client_port = free_port()?;
            server.peer_port = free_port()?;
            if server.client_port == server.peer_port {
                continue;
            }
            match server.run().await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.kill();
                    // A new cluster on new ports needs an empty data directory.
                    let _ = std::fs::remove_dir_all(server.data_dir());
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdServerError::Io {
            context: "finding two free ports on 127.0.0.1".into(),
            source: io::Error::other("the same port came back twice"),
        }))
    }

    /// The client URL, `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client URLs of the cluster (one).
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint()]
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The server's log file (standard output and error).
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    /// True while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server at once (SIGKILL, like a crash) and waits for it; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.dir.join("etcd.pid"));
    }

    /// Starts the server again on the same data directory and ports (after [`kill`](Self::kill))
    /// and waits until it answers.
    pub async fn start_again(&mut self) -> Result<(), EtcdServerError> {
        self.kill();
        self.run().await.inspect_err(|_| self.kill())
    }

    /// Runs etcd on the current ports and data directory and waits until it is healthy.
    async fn run(&mut self) -> Result<(), EtcdServerError> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log_path = self.log_file();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_error(format!("opening {}", log_path.display())))?;
        let member = "wharf-test";
        let child = Command::new(&self.binary)
            .arg("--name")
            .arg(member)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("{member}={peer}")])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.name])
            // Fast elections allow leases of one second (the minimum ttl is 1.5 elections).
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_error(format!("starting {}", self.binary.display())))?;
        let pid = child.id();
        self.child = Some(child);
        // For the sweep of a later run, should this process be killed before its guards run.
        std::fs::write(self.dir.join("etcd.pid"), pid.to_string())
            .map_err(io_error(format!("writing {}", self.dir.display())))?;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> Result<(), EtcdServerError> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(self.not_ready(format!("it exited with {status}")));
                }
            }
            if healthy(addr).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(self.not_ready(format!("no healthy answer within {READY_TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn not_ready(&self, reason: String) -> EtcdServerError {
        let log = self.log_file();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        EtcdServerError::NotReady {
            endpoint: self.endpoint(),
            reason,
            log,
            tail,
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> Result<u16, EtcdServerError> {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .map_err(io_error("binding a free port on 127.0.0.1"))?;
    let port = listener
        .local_addr()
        .map_err(io_error("reading a bound port"))?
        .port();
    Ok(port)
}

/// True if etcd's `/health` at `addr` says it is healthy.
async fn healthy(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        Ok::<_, io::Error>(String::from_utf8_lossy(&reply).contains(r#""health":"true""#))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

/// Kills the etcd servers and removes the directories of processes that no longer exist.
pub fn sweep_stale() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(owner) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let dir = entry.path();
        if let Some(pid) = std::fs::read_to_string(dir.join("etcd.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            // Only if that process still is the etcd of this directory (pids are reused).
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let dir_bytes = dir.as_os_str().as_encoded_bytes();
            if cmdline.windows(dir_bytes.len()).any(|w| w == dir_bytes) {
                // SAFETY: kill(2) with a plain pid and signal has no memory-safety conditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
