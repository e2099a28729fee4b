//! The controller: the public entry point that ties IPAM, drivers, DNS and the store together.
//!
//! - [`inspect`]: the JSON shape of `docker network inspect`.

pub mod inspect;
