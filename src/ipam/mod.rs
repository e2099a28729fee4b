//! IP address management: address pools -> network subnets -> endpoint addresses.
//!
//! Why it exists: every network needs a subnet that collides with nothing on the host, and
//! every endpoint an address that no other endpoint holds, across restarts, crashes and many
//! concurrent tasks (and, for cluster networks, many hosts). This module gives Docker's
//! behaviour as a typed API:
//! - [`pool`]: Docker's default pools (local: 172.17-31.x/16 then 192.168.x/20; cluster:
//!   10.x.x.0/24), configurable [`PoolSpec`]s, and a default IPv6 ULA /48 per host.
//! - [`Ipam`]: subnets for networks (first free pool subnet that overlaps no network and no host
//!   route, or the user's, validated), addresses for endpoints (lowest free for local networks,
//!   serial for cluster ones), with write-through persistence to a [`Store`](crate::store::Store).
//! - [`allocator`] and [`bitmap`]: the in-memory per-subnet allocator, O(log n) per operation.
//!
//! Persistence hook: `Ipam` persists through the [`Store`](crate::store::Store) trait directly
//! (one key per subnet and per address, created with create-if-absent) rather than through an
//! IPAM-specific hook. The store is the project's one persistence contract; writing each
//! allocation as its own key is what makes a change O(1) and lets several allocators (two
//! controllers, or hosts sharing etcd) coordinate on the store alone.
//!
//! What it deliberately does not do: kernel calls (the caller reads the host's routes and
//! passes their prefixes in [`SubnetRequest::avoid`]), knowledge of drivers, endpoints or the
//! controller, or watching the store (a cluster allocator catches up through
//! [`Ipam::reload`], which it also does by itself when a network is unknown or looks full).

#![warn(missing_docs)]

pub mod allocator;
pub mod bitmap;
mod config;
mod error;
mod manager;
mod net;
pub mod pool;

pub use allocator::AllocationMode;
pub use config::{Family, IpamConfig, parse_cidr, parse_ip};
pub use error::IpamError;
pub use manager::{
    AddressRequest, Ipam, IpamOptions, Reservation, Scope, StoredAddress, SubnetLease,
    SubnetRequest,
};
pub use pool::{CLUSTER_DEFAULT_POOLS, LOCAL_DEFAULT_POOLS, PoolSpec, ula_pool};
