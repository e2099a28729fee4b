//! [`IpamError`]: every way an IPAM request can fail, naming the network and the address or
//! subnet involved.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::store::StoreError;

/// An IPAM failure. Messages name the network (by name) and the address or subnet, e.g.
/// `network "alpine-net": address 172.18.0.5 is already in use`.
///
/// A request that fails reserves nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A network id is empty or contains `/` (it is part of store keys).
    #[error("invalid network id {id:?}: must be non-empty and contain no '/'")]
    InvalidNetworkId {
        /// What was given.
        id: String,
    },
    /// A CIDR string does not parse.
    #[error("invalid CIDR {input:?}: {reason}")]
    InvalidCidr {
        /// What was given.
        input: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An address string does not parse.
    #[error("invalid IP address {input:?}")]
    InvalidAddress {
        /// What was given.
        input: String,
    },
    /// A subnet or ip-range has bits set after its prefix.
    #[error("network {network:?}: {what} {given} has host bits set (did you mean {canonical}?)")]
    HostBitsSet {
        /// The network's name.
        network: String,
        /// "subnet" or "ip-range".
        what: &'static str,
        /// What was given.
        given: IpNetwork,
        /// The same prefix with the host bits cleared.
        canonical: IpNetwork,
    },
    /// An ip-range, gateway or auxiliary address was given without a subnet.
    #[error("network {network:?}: {what} needs a subnet")]
    MissingSubnet {
        /// The network's name.
        network: String,
        /// What was given without a subnet.
        what: &'static str,
    },
    /// The ip-range is not inside the subnet.
    #[error("network {network:?}: ip-range {range} is not inside subnet {subnet}")]
    RangeOutsideSubnet {
        /// The network's name.
        network: String,
        /// The given ip-range.
        range: IpNetwork,
        /// The subnet.
        subnet: IpNetwork,
    },
    /// The gateway is not inside the subnet (or is its network or broadcast address).
    #[error("network {network:?}: gateway {gateway} is not a usable address of subnet {subnet}")]
    GatewayOutsideSubnet {
        /// The network's name.
        network: String,
        /// The given gateway.
        gateway: IpAddr,
        /// The subnet.
        subnet: IpNetwork,
    },
    /// An auxiliary address is not inside the subnet (or is its network or broadcast address).
    #[error(
        "network {network:?}: auxiliary address {name}={address} is not a usable address of subnet {subnet}"
    )]
    AuxAddressOutsideSubnet {
        /// The network's name.
        network: String,
        /// The auxiliary address's name.
        name: String,
        /// The address.
        address: IpAddr,
        /// The subnet.
        subnet: IpNetwork,
    },
    /// Two reservations (gateway, auxiliary addresses) name the same address.
    #[error("network {network:?}: address {address} is reserved twice ({first} and {second})")]
    DuplicateReservation {
        /// The network's name.
        network: String,
        /// The address.
        address: IpAddr,
        /// The first reservation's name.
        first: String,
        /// The second reservation's name.
        second: String,
    },
    /// A subnet of the wrong family for the request.
    #[error("network {network:?}: subnet {subnet} is not an {expected} subnet")]
    WrongFamily {
        /// The network's name.
        network: String,
        /// The subnet.
        subnet: IpNetwork,
        /// "IPv4" or "IPv6".
        expected: &'static str,
    },
    /// A requested subnet overlaps a subnet of another network (or another of the same one).
    #[error(
        "network {network:?}: subnet {subnet} overlaps subnet {other_subnet} of network {other_network:?}"
    )]
    SubnetOverlap {
        /// The requesting network's name.
        network: String,
        /// The requested subnet.
        subnet: IpNetwork,
        /// The name of the network that has the other subnet.
        other_network: String,
        /// The subnet it overlaps.
        other_subnet: IpNetwork,
    },
    /// Every subnet of the address pools is taken or overlaps a route.
    #[error("network {network:?}: no free {family} subnet left in the address pools")]
    PoolsExhausted {
        /// The network's name.
        network: String,
        /// "IPv4" or "IPv6".
        family: &'static str,
    },
    /// An address pool definition is invalid.
    #[error("invalid address pool {base} with size /{size}: {reason}")]
    InvalidPool {
        /// The pool's base prefix.
        base: IpNetwork,
        /// The size of the subnets cut from it.
        size: u8,
        /// Why it is invalid.
        reason: &'static str,
    },
    /// The network has no subnet (of the family asked for).
    #[error("network {network:?}: no {what} is allocated")]
    UnknownNetwork {
        /// The network's name, or its id if the name is unknown.
        network: String,
        /// What was looked for, e.g. "IPv4 subnet" or "subnet 10.0.0.0/24".
        what: String,
    },
    /// A requested address is outside the allocatable range.
    #[error("network {network:?}: address {address} is outside the allocatable range {range}")]
    AddressOutsideRange {
        /// The network's name.
        network: String,
        /// The address.
        address: IpAddr,
        /// The allocatable range (the ip-range, or the subnet).
        range: IpNetwork,
    },
    /// A requested address is taken.
    #[error("network {network:?}: address {address} is already in use")]
    AddressInUse {
        /// The network's name.
        network: String,
        /// The address.
        address: IpAddr,
    },
    /// A requested or released address is reserved (network, broadcast, gateway, auxiliary).
    #[error("network {network:?}: address {address} is reserved ({reason})")]
    AddressReserved {
        /// The network's name.
        network: String,
        /// The address.
        address: IpAddr,
        /// What reserves it.
        reason: String,
    },
    /// A released address was not allocated.
    #[error("network {network:?}: address {address} is not allocated")]
    AddressNotAllocated {
        /// The network's name.
        network: String,
        /// The address.
        address: IpAddr,
    },
    /// No free address is left.
    #[error("network {network:?}: no free address left in {range}")]
    AddressesExhausted {
        /// The network's name.
        network: String,
        /// The range that is full (the ip-range or subnet; the last one tried).
        range: IpNetwork,
    },
    /// The network is being released.
    #[error("network {network:?}: subnet {subnet} is being released")]
    SubnetReleasing {
        /// The network's name.
        network: String,
        /// The subnet.
        subnet: IpNetwork,
    },
    /// Another process kept changing the shared subnet table; the request was retried and gave up.
    #[error("network {network:?}: subnet table kept changing under contention; try again")]
    Contention {
        /// The network's name.
        network: String,
    },
    /// A stored record does not decode.
    #[error("stored IPAM record {key:?} is corrupt: {reason}")]
    CorruptRecord {
        /// The store key.
        key: String,
        /// Why it does not decode.
        reason: String,
    },
    /// The state store failed.
    #[error("IPAM state store: {0}")]
    Store(#[from] StoreError),
}
