//! Prefix arithmetic on addresses as integers (IPv4 in the low 32 bits of a `u128`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::Family;

/// An address as an integer.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An integer as an address of `family` (IPv4 keeps the low 32 bits).
pub(crate) fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        // Callers stay inside a prefix of the family, so the truncation never drops bits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

/// The first and last address of a prefix, as integers.
pub(crate) fn span(net: IpNetwork) -> (u128, u128) {
    let family = Family::of_net(net);
    let host_bits = u32::from(family.bits() - net.prefix());
    let lo = to_u128(net.network());
    let hi = if host_bits >= 128 {
        u128::MAX
    } else {
        lo | ((1u128 << host_bits) - 1)
    };
    (lo, hi)
}

/// True if the prefix has bits set after its prefix length.
pub(crate) fn has_host_bits(net: IpNetwork) -> bool {
    net.ip() != net.network()
}

/// The prefix with its host bits cleared.
pub(crate) fn canonical(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// True if two prefixes share an address.
pub(crate) fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    if Family::of_net(a) != Family::of_net(b) {
        return false;
    }
    let (alo, ahi) = span(a);
    let (blo, bhi) = span(b);
    alo <= bhi && blo <= ahi
}

/// True if `inner` lies inside `outer`.
pub(crate) fn contains_net(outer: IpNetwork, inner: IpNetwork) -> bool {
    if Family::of_net(outer) != Family::of_net(inner) {
        return false;
    }
    let (olo, ohi) = span(outer);
    let (ilo, ihi) = span(inner);
    olo <= ilo && ihi <= ohi
}
