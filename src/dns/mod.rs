//! Name resolution for containers: Docker's embedded DNS server, in-process and async.
//!
//! - [`resolvconf`]: reading the host's `resolv.conf` and writing the sandboxes' ones.
//! - [`records`]: the scoped record table (which sandbox may resolve which name). Pure.
//! - [`handler`]: one query in, one decision out (answer, forward, drop). Pure.
//! - `server` ([`Listener`]): a sandbox's UDP and TCP sockets at `127.0.0.11:53`.
//! - `forward`: the pool of upstream sockets in the host namespace.
//!
//! # How it works
//!
//! One [`Resolver`] serves every sandbox. The controller tells it about networks and endpoints
//! ([`Resolver::upsert_network`], [`Resolver::upsert_endpoint`], ...) and starts a [`Listener`]
//! per sandbox attached to a user-defined network ([`Resolver::listen`]). The listener's sockets
//! are opened inside the sandbox's namespace, so every query it receives comes from that
//! sandbox: it answers `A`/`AAAA` for the container names, aliases and `name.network` of the
//! networks the sandbox shares with them, `PTR` for their addresses, and forwards everything
//! else upstream. Each change publishes a new immutable table (through `arc-swap`) that the
//! next query reads: no reload, no restart of listeners, no query lost meanwhile, and no lock
//! on the query path.
//!
//! ```no_run
//! # async fn demo(host_ns: wharf::sys::NetNs, sandbox_ns: wharf::sys::NetNs)
//! #     -> Result<(), wharf::dns::DnsError> {
//! use wharf::dns::*;
//! let resolver = Resolver::new(ResolverConfig::new(host_ns, vec!["192.0.2.53:53".parse().unwrap()]))
//!     .await?;
//! resolver.upsert_network(
//!     NetworkKey { id: "n1".into(), name: "alpine-net".into() },
//!     NetworkDns::default(),
//! )?;
//! resolver.upsert_endpoint(EndpointDns {
//!     network_id: "n1".into(),
//!     sandbox_id: "c1".into(),
//!     name: "alpine1".into(),
//!     aliases: vec![],
//!     ipv4: Some("172.18.0.2".parse().unwrap()),
//!     ipv6: None,
//! })?;
//! let listener = resolver.listen("c1", &sandbox_ns, SandboxDns::default()).await?;
//! // ... `nameserver 127.0.0.11` in the sandbox's resolv.conf ...
//! listener.stop().await;
//! # Ok(()) }
//! ```
//!
//! # Where wharf differs from Docker, and why
//!
//! - **Forwarding leaves from the host namespace**, not from the container's (Docker dials
//!   upstream servers from inside the container). The resolver is handed the host namespace at
//!   construction and opens a small pool of long-lived UDP sockets there once; forwarded queries
//!   get a fresh random id on one of them and replies are matched back by id, upstream address
//!   and question. That avoids a socket per query (what makes per-query forwarders such as
//!   aardvark-dns slow) and a namespace switch per query. Consequences: upstream servers see
//!   the host as the client (as with a host-side caching resolver), the host's routes and
//!   firewall apply, and a host-loopback upstream (`127.0.0.53`) works as is. Over TCP, each
//!   forwarded query gets its own connection from the host namespace.
//! - **Listeners bind `127.0.0.11:53` directly** (Docker binds a random port and DNATs port 53
//!   to it), so a server of the container's own on port 53 of another address still works, but
//!   one on `0.0.0.0:53` conflicts.
//! - **Sandboxes whose networks are all internal** get SERVFAIL for names that are not local
//!   (Docker's behaviour when it may not proxy); so do sandboxes with no network left.
//! - Docker's `ndots` special case (not forwarding single-label names when the user set
//!   `ndots`) is left to the controller, which writes `options ndots:0`.
//! - Addresses of a name are rotated between answers (round robin), as Docker shuffles them.

pub mod handler;
pub mod records;
pub mod resolvconf;

mod forward;
mod server;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

pub use records::{EndpointDns, NetworkDns, NetworkKey, Table, upstreams_on_port_53};
pub use server::Listener;

use crate::sys::{NetNs, SysError};

/// Where a sandbox's listener binds by default (inside the sandbox's namespace).
pub const LISTEN_ADDR: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 11)),
    53,
);

/// How a DNS message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// One UDP datagram (replies limited to 512 bytes, or the client's EDNS size).
    Udp,
    /// A TCP connection, each message prefixed with its two-byte length.
    Tcp,
}

/// Errors of the DNS layer; each names the sandbox or network concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DnsError {
    /// An endpoint names a network the resolver was not told about.
    #[error("registering sandbox {sandbox:?} on network {network:?}: unknown network")]
    UnknownNetwork {
        /// The network's id.
        network: String,
        /// The sandbox's id.
        sandbox: String,
    },
    /// A container name, alias or network name that cannot be a DNS name.
    #[error("{what}: invalid name {name:?}: {reason}")]
    InvalidName {
        /// The operation and object.
        what: String,
        /// The offending name.
        name: String,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// A listener's sockets could not be opened (e.g. the address is taken).
    #[error("starting the DNS listener of sandbox {sandbox:?} on {addr}: {source}")]
    Listen {
        /// The sandbox's id.
        sandbox: String,
        /// The address it should listen on.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// Entering a namespace to open sockets failed.
    #[error("{what}: {source}")]
    Namespace {
        /// The operation and object.
        what: String,
        /// The kernel layer's error.
        source: SysError,
    },
    /// The upstream sockets could not be opened in the host namespace.
    #[error("opening upstream DNS sockets in {ns}: {source}")]
    Upstream {
        /// The host namespace.
        ns: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How a [`Resolver`] is set up. [`ResolverConfig::new`] gives Docker's defaults.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The namespace forwarded queries leave from (the host's).
    pub host_ns: NetNs,
    /// Default upstream servers (the host's `resolv.conf`, loopback ones included: they are
    /// reached from the host namespace). At most three are tried.
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream has to answer before the next is tried (default 2 s; after the
    /// last, the client gets SERVFAIL).
    pub upstream_timeout: Duration,
    /// Where listeners bind inside sandboxes (default [`LISTEN_ADDR`]).
    pub listen_addr: SocketAddr,
    /// TTL of local answers (default 600 s, as Docker).
    pub ttl: u32,
    /// UDP sockets per listener, each with its own reading task (default 2, one per core of a
    /// small host; they share the address through `SO_REUSEPORT`).
    pub udp_workers: usize,
    /// Upstream UDP sockets per address family (default 4).
    pub upstream_sockets: usize,
    /// Forwarded queries in flight across the resolver (default 1024, as Docker); beyond it
    /// queries get SERVFAIL at once.
    pub max_forwards: usize,
    /// Open TCP connections per listener (default 64); beyond it new ones are closed at once.
    pub max_tcp_connections: usize,
    /// How long a TCP connection may stay idle (default 10 s).
    pub tcp_idle_timeout: Duration,
}

impl ResolverConfig {
    /// Docker's defaults, forwarding from `host_ns` to `upstreams`.
    pub fn new(host_ns: NetNs, upstreams: Vec<SocketAddr>) -> Self {
        Self {
            host_ns,
            upstreams,
            upstream_timeout: Duration::from_secs(2),
            listen_addr: LISTEN_ADDR,
            ttl: handler::DEFAULT_TTL,
            udp_workers: 2,
            upstream_sockets: 4,
            max_forwards: 1024,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Per-sandbox settings of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxDns {
    /// The sandbox's own upstream servers (`--dns`), ahead of its networks' and the defaults.
    pub upstreams: Option<Vec<SocketAddr>>,
}

/// State shared by the resolver handle, its listeners and their tasks.
pub(crate) struct Shared {
    config: ResolverConfig,
    records: Mutex<records::Records>,
    table: ArcSwap<Table>,
    defaults: ArcSwap<Arc<[SocketAddr]>>,
    forwarder: forward::Forwarder,
}

/// The embedded DNS resolver: one per controller, cheap to clone.
///
/// Table changes take effect for the next query of every listener. The resolver's upstream
/// sockets close when the last clone and the last [`Listener`] are gone.
#[derive(Clone)]
pub struct Resolver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("host_ns", &self.shared.config.host_ns)
            .field("upstreams", &self.shared.defaults.load())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Opens the upstream sockets in `config.host_ns` and returns an empty resolver.
    pub async fn new(config: ResolverConfig) -> Result<Self, DnsError> {
        let forwarder = forward::Forwarder::new(
            config.host_ns.clone(),
            config.upstream_sockets,
            config.upstream_timeout,
            config.max_forwards,
        )
        .await?;
        let defaults = ArcSwap::from_pointee(Arc::from(config.upstreams.as_slice()));
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                records: Mutex::new(records::Records::new()),
                table: ArcSwap::from_pointee(Table::default()),
                defaults,
                forwarder,
            }),
        })
    }

    /// Applies `change` to the records and publishes the new table.
    fn change<R>(&self, change: impl FnOnce(&mut records::Records) -> R) -> R {
        let mut records = self
            .shared
            .records
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let out = change(&mut records);
        self.shared.table.store(Arc::new(records.table()));
        out
    }

    /// Adds a network, or changes its name or settings (its endpoints are kept).
    pub fn upsert_network(&self, key: NetworkKey, dns: NetworkDns) -> Result<(), DnsError> {
        self.change(|r| r.upsert_network(key, dns))
    }

    /// Removes a network and its endpoints' names. Returns whether it was known.
    pub fn remove_network(&self, network_id: &str) -> bool {
        self.change(|r| r.remove_network(network_id))
    }

    /// Adds or replaces a sandbox's endpoint on a network (connect, alias change).
    pub fn upsert_endpoint(&self, endpoint: EndpointDns) -> Result<(), DnsError> {
        self.change(|r| r.upsert_endpoint(endpoint))
    }

    /// Removes a sandbox's endpoint on a network (disconnect). Returns whether it was known.
    pub fn remove_endpoint(&self, network_id: &str, sandbox_id: &str) -> bool {
        self.change(|r| r.remove_endpoint(network_id, sandbox_id))
    }

    /// Removes every endpoint of a sandbox (sandbox deletion). Returns how many there were.
    pub fn remove_sandbox(&self, sandbox_id: &str) -> usize {
        self.change(|r| r.remove_sandbox(sandbox_id))
    }

    /// Replaces the default upstream servers (the host's `resolv.conf` changed).
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        self.shared
            .defaults
            .store(Arc::new(Arc::from(upstreams.as_slice())));
    }

    /// The current table (a snapshot).
    pub fn table(&self) -> Arc<Table> {
        self.shared.table.load_full()
    }

    /// Starts answering for `sandbox_id` on UDP and TCP at [`ResolverConfig::listen_addr`]
    /// inside `sandbox_ns`. The listener stops when dropped.
    pub async fn listen(
        &self,
        sandbox_id: &str,
        sandbox_ns: &NetNs,
        dns: SandboxDns,
    ) -> Result<Listener, DnsError> {
        let upstreams = dns.upstreams.map(|u| Arc::from(u.as_slice()));
        server::start(self.shared.clone(), sandbox_id, sandbox_ns, upstreams).await
    }
}
