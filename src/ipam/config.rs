//! What a user asks for: [`IpamConfig`] (Docker's `IPAM.Config[]` entry) and [`Family`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::IpamError;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: IpNetwork) -> Family {
        Family::of(net.ip())
    }

    /// "IPv4" or "IPv6".
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One IPAM configuration entry of a network, in the shape Docker uses (`IPAM.Config[]`:
/// `Subnet`, `IPRange`, `Gateway`, `AuxiliaryAddresses`), so Docker's JSON deserializes as is.
///
/// Every field is optional: with no subnet, one is taken from the address pools; with no
/// gateway, the first usable address of the subnet is the gateway.
///
/// ```
/// use wharf::ipam::IpamConfig;
/// let cfg = IpamConfig::new()
///     .parse_subnet("172.28.0.0/16")?
///     .parse_ip_range("172.28.5.0/24")?
///     .parse_gateway("172.28.5.254")?
///     .parse_aux_address("router", "172.28.1.5")?;
/// assert_eq!(cfg.subnet.unwrap().to_string(), "172.28.0.0/16");
///
/// let json = r#"{"Subnet":"10.5.0.0/16","Gateway":"10.5.0.1","AuxiliaryAddresses":{"host1":"10.5.0.2"}}"#;
/// let from_docker: IpamConfig = serde_json::from_str(json).unwrap();
/// assert_eq!(from_docker.aux_addresses.len(), 1);
/// # Ok::<(), wharf::ipam::IpamError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamConfig {
    /// The subnet; `None`: take one from the pools.
    #[serde(rename = "Subnet", default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNetwork>,
    /// Allocate container addresses only inside this prefix of the subnet.
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNetwork>,
    /// The gateway; `None`: the first usable address of the subnet.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Addresses reserved by name (never handed out), e.g. for hosts outside wharf.
    #[serde(
        rename = "AuxiliaryAddresses",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

/// Parses a CIDR string into a typed prefix, with a typed error.
///
/// ```
/// use wharf::ipam::{parse_cidr, IpamError};
/// assert!(parse_cidr("10.1.0.0/16").is_ok());
/// assert!(matches!(parse_cidr("10.1.0.0/33"), Err(IpamError::InvalidCidr { .. })));
/// ```
pub fn parse_cidr(s: &str) -> Result<IpNetwork, IpamError> {
    if !s.contains('/') {
        return Err(IpamError::InvalidCidr {
            input: s.to_owned(),
            reason: "missing /prefix-length".to_owned(),
        });
    }
    s.trim().parse().map_err(|e| IpamError::InvalidCidr {
        input: s.to_owned(),
        reason: format!("{e}"),
    })
}

/// Parses an address string, with a typed error.
pub fn parse_ip(s: &str) -> Result<IpAddr, IpamError> {
    s.trim().parse().map_err(|_| IpamError::InvalidAddress {
        input: s.to_owned(),
    })
}

impl IpamConfig {
    /// An empty configuration: everything from the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the subnet.
    pub fn with_subnet(mut self, subnet: IpNetwork) -> Self {
        self.subnet = Some(subnet);
        self
    }

    /// Sets the ip-range.
    pub fn with_ip_range(mut self, range: IpNetwork) -> Self {
        self.ip_range = Some(range);
        self
    }

    /// Sets the gateway.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Adds an auxiliary (reserved) address.
    pub fn with_aux_address(mut self, name: impl Into<String>, address: IpAddr) -> Self {
        self.aux_addresses.insert(name.into(), address);
        self
    }

    /// Sets the subnet from a CIDR string.
    pub fn parse_subnet(self, s: &str) -> Result<Self, IpamError> {
        Ok(self.with_subnet(parse_cidr(s)?))
    }

    /// Sets the ip-range from a CIDR string.
    pub fn parse_ip_range(self, s: &str) -> Result<Self, IpamError> {
        Ok(self.with_ip_range(parse_cidr(s)?))
    }

    /// Sets the gateway from an address string.
    pub fn parse_gateway(self, s: &str) -> Result<Self, IpamError> {
        Ok(self.with_gateway(parse_ip(s)?))
    }

    /// Adds an auxiliary address from an address string.
    pub fn parse_aux_address(self, name: &str, s: &str) -> Result<Self, IpamError> {
        Ok(self.with_aux_address(name, parse_ip(s)?))
    }
}
