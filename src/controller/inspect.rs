//! The JSON shape of `docker network inspect`, so existing tooling can read wharf's output.
//!
//! These structs are output only: they are built from wharf's typed model and serialised with
//! Docker's field names (`Name`, `Id`, `IPAM.Config[].Subnet`, `Containers{id: {...}}`, ...).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One network, as `docker network inspect` prints it (one element of its JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInspect {
    /// The network's name.
    pub name: String,
    /// The 64-hex-character id.
    pub id: String,
    /// Creation time, RFC 3339.
    pub created: String,
    /// `local` or `swarm`.
    pub scope: String,
    /// `bridge`, `host`, `null`, `overlay` or `macvlan`.
    pub driver: String,
    /// Whether IPv6 is enabled.
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    /// Address management.
    #[serde(rename = "IPAM")]
    pub ipam: IpamInspect,
    /// Whether the network is cut off from the outside.
    pub internal: bool,
    /// Whether standalone containers may join (overlay).
    pub attachable: bool,
    /// Whether this is the routing-mesh network.
    pub ingress: bool,
    /// Where a config-only network takes its configuration from.
    pub config_from: ConfigFrom,
    /// Whether this is a config-only network.
    pub config_only: bool,
    /// Endpoints on this network, keyed by sandbox id.
    pub containers: BTreeMap<String, ContainerInspect>,
    /// Driver options, with Docker's keys (`com.docker.network.bridge.name`, ...).
    pub options: BTreeMap<String, String>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// For cluster (`swarm`) networks: the nodes with endpoints on it.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub peers: Vec<PeerInspect>,
}

/// One element of `Peers` in [`NetworkInspect`]: a node with endpoints on a cluster network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerInspect {
    /// The node's name.
    pub name: String,
    /// Its underlay address.
    #[serde(rename = "IP")]
    pub ip: String,
}

/// `IPAM` of [`NetworkInspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamInspect {
    /// Always `default`.
    pub driver: String,
    /// IPAM driver options (none today).
    pub options: Option<BTreeMap<String, String>>,
    /// One entry per subnet.
    pub config: Vec<IpamConfigInspect>,
}

/// One subnet of [`IpamInspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamConfigInspect {
    /// The subnet in CIDR form.
    pub subnet: String,
    /// The gateway address, if the network has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// The range addresses are allocated from, if narrower than the subnet.
    #[serde(rename = "IPRange", skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<String>,
    /// Addresses reserved by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub auxiliary_addresses: BTreeMap<String, String>,
}

/// `ConfigFrom` of [`NetworkInspect`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConfigFrom {
    /// The config-only network (empty).
    pub network: String,
}

/// One endpoint in `Containers` of [`NetworkInspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    /// The sandbox's name.
    pub name: String,
    /// The endpoint's id.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    /// The interface's MAC address.
    pub mac_address: String,
    /// IPv4 address with prefix length, or empty.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    /// IPv6 address with prefix length, or empty.
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_with_dockers_field_names() {
        let mut containers = BTreeMap::new();
        containers.insert(
            "c1".to_owned(),
            ContainerInspect {
                name: "alpine1".into(),
                endpoint_id: "e1".into(),
                mac_address: "02:42:ac:11:00:02".into(),
                ipv4_address: "172.17.0.2/16".into(),
                ipv6_address: String::new(),
            },
        );
        let net = NetworkInspect {
            name: "bridge".into(),
            id: "0".repeat(64),
            created: "2026-11-29T10:00:00Z".into(),
            scope: "local".into(),
            driver: "bridge".into(),
            enable_ipv6: false,
            ipam: IpamInspect {
                driver: "default".into(),
                options: None,
                config: vec![IpamConfigInspect {
                    subnet: "172.17.0.0/16".into(),
                    gateway: Some("172.17.0.1".into()),
                    ip_range: None,
                    auxiliary_addresses: BTreeMap::new(),
                }],
            },
            internal: false,
            attachable: false,
            ingress: false,
            config_from: ConfigFrom::default(),
            config_only: false,
            containers,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            peers: Vec::new(),
        };
        let json = serde_json::to_value(&net).unwrap();
        for key in [
            "Name",
            "Id",
            "Created",
            "Scope",
            "Driver",
            "EnableIPv6",
            "IPAM",
            "Internal",
            "Attachable",
            "Ingress",
            "ConfigFrom",
            "ConfigOnly",
            "Containers",
            "Options",
            "Labels",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["IPAM"]["Config"][0]["Subnet"], "172.17.0.0/16");
        assert_eq!(json["IPAM"]["Config"][0]["Gateway"], "172.17.0.1");
        assert_eq!(json["Containers"]["c1"]["IPv4Address"], "172.17.0.2/16");
        assert_eq!(json["Containers"]["c1"]["EndpointID"], "e1");
        assert_eq!(json["ConfigFrom"]["Network"], "");
    }
}
