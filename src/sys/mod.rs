//! Kernel access: the only layer of wharf that talks to the kernel.
//!
//! - [`netns`]: network namespaces (create, open, delete, run code inside one on a dedicated
//!   thread).
//! - [`nft`]: nftables over netfilter netlink (tables, chains, rules, sets and maps, applied in
//!   atomic batches).
//! - [`error`]: the typed errors every kernel operation returns.
//!
//! Nothing here knows what a container, a network or an endpoint is: it speaks of namespaces,
//! links, addresses, routes and firewall rules.

pub mod error;
pub mod netns;
pub mod nft;

pub use error::{SysError, SysErrorKind, SysResult};
pub use netns::NetNs;
pub use nft::NftHandle;
