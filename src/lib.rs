//! wharf

pub mod ipam;
pub mod store;
