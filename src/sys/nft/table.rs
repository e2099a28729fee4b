//! Tables: the top-level container of chains, sets and rules, one per address family.

use netlink_packet_netfilter::NetfilterProtoFamily;
use serde::{Deserialize, Serialize};

/// The address family of a table (what packets its chains see).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 and IPv6 (`inet`).
    Inet,
    /// IPv4 only (`ip`).
    Ip,
    /// IPv6 only (`ip6`).
    Ip6,
    /// ARP (`arp`).
    Arp,
    /// Bridged frames (`bridge`).
    Bridge,
    /// Device ingress/egress (`netdev`).
    Netdev,
}

impl Family {
    /// The name `nft` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inet => "inet",
            Self::Ip => "ip",
            Self::Ip6 => "ip6",
            Self::Arp => "arp",
            Self::Bridge => "bridge",
            Self::Netdev => "netdev",
        }
    }

    pub(crate) fn proto(self) -> NetfilterProtoFamily {
        match self {
            Self::Inet => NetfilterProtoFamily::Inet,
            Self::Ip => NetfilterProtoFamily::IPv4,
            Self::Ip6 => NetfilterProtoFamily::IPv6,
            Self::Arp => NetfilterProtoFamily::ARP,
            Self::Bridge => NetfilterProtoFamily::Bridge,
            Self::Netdev => NetfilterProtoFamily::NetDev,
        }
    }

    pub(crate) fn from_proto(p: NetfilterProtoFamily) -> Option<Self> {
        Some(match p {
            NetfilterProtoFamily::Inet => Self::Inet,
            NetfilterProtoFamily::IPv4 => Self::Ip,
            NetfilterProtoFamily::IPv6 => Self::Ip6,
            NetfilterProtoFamily::ARP => Self::Arp,
            NetfilterProtoFamily::Bridge => Self::Bridge,
            NetfilterProtoFamily::NetDev => Self::Netdev,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A table, named within its family (`table inet wharf`).
///
/// Chains, rules and sets name the table they live in by holding a copy of it (family and
/// name are all that identifies a table).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Table {
    /// Address family.
    pub family: Family,
    /// Name, unique within the family.
    pub name: String,
}

impl Table {
    /// A table of the given family.
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Self {
            family,
            name: name.into(),
        }
    }

    /// `table inet NAME`: sees IPv4 and IPv6.
    pub fn inet(name: impl Into<String>) -> Self {
        Self::new(Family::Inet, name)
    }

    /// `table ip NAME`: sees IPv4 only.
    pub fn ip(name: impl Into<String>) -> Self {
        Self::new(Family::Ip, name)
    }

    /// `table ip6 NAME`: sees IPv6 only.
    pub fn ip6(name: impl Into<String>) -> Self {
        Self::new(Family::Ip6, name)
    }
}

impl std::fmt::Display for Table {
    /// `table inet "wharf"`, as error messages name it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table {} {:?}", self.family, self.name)
    }
}
