//! The controller's typed errors.

use crate::driver::DriverError;
use crate::ipam::IpamError;
use crate::store::StoreError;
use crate::sys::SysError;

/// The kind of object a name or id refers to, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A network.
    Network,
    /// A sandbox.
    Sandbox,
    /// An endpoint.
    Endpoint,
    /// An interface.
    Interface,
    /// An alias.
    Alias,
    /// A service.
    Service,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Network => "network",
            Self::Sandbox => "sandbox",
            Self::Endpoint => "endpoint",
            Self::Interface => "interface",
            Self::Alias => "alias",
            Self::Service => "service",
        })
    }
}

/// Why a controller call failed. Every variant names the object it is about; a call that fails
/// has changed nothing (or has undone what it changed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A name that cannot be used.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name is for.
        kind: ObjectKind,
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A request whose parts do not fit together.
    #[error("{kind} {name:?}: {reason}")]
    InvalidRequest {
        /// What the request is about.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// No object by that name or id.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked up.
        kind: ObjectKind,
        /// The name, id or id prefix.
        name: String,
    },
    /// An id prefix that matches more than one object.
    #[error("{kind} id prefix {prefix:?} is ambiguous: it matches {matches:?}")]
    Ambiguous {
        /// What was looked up.
        kind: ObjectKind,
        /// The prefix.
        prefix: String,
        /// The names it matches.
        matches: Vec<String>,
    },
    /// The name is taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What kind of object.
        kind: ObjectKind,
        /// The name.
        name: String,
    },
    /// The sandbox is already connected to the network.
    #[error("sandbox {sandbox:?} is already connected to network {network:?}")]
    AlreadyConnected {
        /// The sandbox.
        sandbox: String,
        /// The network.
        network: String,
    },
    /// The sandbox is not connected to the network.
    #[error("sandbox {sandbox:?} is not connected to network {network:?}")]
    NotConnected {
        /// The sandbox.
        sandbox: String,
        /// The network.
        network: String,
    },
    /// The network still has endpoints.
    #[error("network {network:?} has active endpoints: {sandboxes:?}")]
    NetworkInUse {
        /// The network.
        network: String,
        /// The sandboxes still connected.
        sandboxes: Vec<String>,
    },
    /// A standalone sandbox asked to join a cluster network that was not created attachable.
    #[error(
        "network {network:?} is not attachable: sandbox {sandbox:?} cannot join it (create it with attachable)"
    )]
    NotAttachable {
        /// The network.
        network: String,
        /// The sandbox.
        sandbox: String,
    },
    /// A host port is already published by another endpoint.
    #[error(
        "{protocol} port {host_port}{} is already published by sandbox {owner:?} on network {network:?}",
        host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default()
    )]
    PortAlreadyPublished {
        /// TCP or UDP.
        protocol: crate::driver::Protocol,
        /// The first host port of the request that clashes.
        host_port: u16,
        /// The host address it was asked for (`None`: every address).
        host_ip: Option<std::net::IpAddr>,
        /// The sandbox that publishes it.
        owner: String,
        /// The network of the owner's endpoint.
        network: String,
    },
    /// One of the networks wharf creates itself (`bridge`, `host`, `none`).
    #[error("network {network:?} is predefined and cannot be removed")]
    Predefined {
        /// The network.
        network: String,
    },
    /// Address management refused.
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// A driver refused or failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// A kernel operation failed.
    #[error(transparent)]
    Sys(#[from] SysError),
    /// The embedded DNS server failed.
    #[error(transparent)]
    Dns(Box<crate::dns::DnsError>),
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored record could not be read back.
    #[error("stored record {key:?} is unreadable: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A file operation (state directory, sandbox files) failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation and path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Result of a controller call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
