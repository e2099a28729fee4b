//! Name resolution for containers.
//!
//! - [`resolvconf`]: reading the host's `resolv.conf` and writing the sandboxes' ones.
//!
//! This layer knows names, addresses and networks as plain values handed in by the controller;
//! it makes no kernel calls of its own beyond its listening sockets.

pub mod resolvconf;
