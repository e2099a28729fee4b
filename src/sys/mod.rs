//! Kernel access: the only layer of wharf that talks to the kernel.
//!
//! - [`netns`]: network namespaces (create, open, delete, run code inside one on a dedicated
//!   thread).
//! - [`rtnl`]: route netlink — links, addresses, routes, neighbours and FDB entries of one
//!   namespace, through a [`rtnl::Handle`] bound to it.
//! - [`sysctl`]: per-namespace sysctls (`/proc/sys/net/...`), read and written from inside the
//!   namespace.
//! - [`nft`]: nftables over netfilter netlink (tables, chains, rules, sets and maps, applied in
//!   atomic batches), through an [`NftHandle`] bound to one namespace.
//! - [`events`]: change notifications (nftables objects and links deleted) of one namespace.
//! - [`icmp`]: ICMP and ICMPv6 echo probes, optionally with DF set (the overlay diagnosis's
//!   path checks, the lab's ping).
//! - [`error`]: the typed errors every kernel operation returns.
//!
//! Nothing here knows what a container, a network or an endpoint is: it speaks of namespaces,
//! links, addresses, routes and firewall rules.

pub mod error;
pub mod events;
pub mod icmp;
pub mod netns;
pub mod nft;
pub mod rtnl;
pub mod sysctl;

pub use error::{SysError, SysErrorKind, SysResult};
pub use netns::NetNs;
pub use nft::NftHandle;
