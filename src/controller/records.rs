//! The controller's records in memory: lookups, and loading them from the store.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::error::{Error, ObjectKind, Result};
use super::inspect::{
    ConfigFrom, ContainerInspect, IpamConfigInspect, IpamInspect, NetworkInspect,
};
use super::model::{EndpointDetails, EndpointRecord, NetworkRecord, SandboxRecord};
use super::{KEY_ENDPOINTS, KEY_NETWORKS, KEY_SANDBOXES};
use crate::ipam::SubnetLease;
use crate::store::Store;

/// Every network, sandbox and endpoint, by id.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub networks: HashMap<String, NetworkRecord>,
    pub sandboxes: HashMap<String, SandboxRecord>,
    pub endpoints: HashMap<String, EndpointRecord>,
    seq: u64,
}

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| Error::Corrupt {
        key: std::any::type_name::<T>().to_owned(),
        reason: e.to_string(),
    })
}

async fn load_all<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<T>> {
    store
        .list(prefix)
        .await?
        .into_iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
                key: kv.key.clone(),
                reason: e.to_string(),
            })
        })
        .collect()
}

impl Records {
    pub async fn load(store: &dyn Store) -> Result<Self> {
        let mut r = Self::default();
        for n in load_all::<NetworkRecord>(store, KEY_NETWORKS).await? {
            r.networks.insert(n.info.id.clone(), n);
        }
        for s in load_all::<SandboxRecord>(store, KEY_SANDBOXES).await? {
            r.sandboxes.insert(s.id.clone(), s);
        }
        for e in load_all::<EndpointRecord>(store, KEY_ENDPOINTS).await? {
            r.seq = r.seq.max(e.seq);
            r.endpoints.insert(e.info.id.clone(), e);
        }
        Ok(r)
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn network_by_name(&self, name: &str) -> Option<&NetworkRecord> {
        self.networks.values().find(|n| n.info.name == name)
    }

    /// A network by exact name, full id, or unique id prefix (Docker's lookup order).
    pub fn network(&self, key: &str) -> Result<&NetworkRecord> {
        if let Some(n) = self.network_by_name(key).or_else(|| self.networks.get(key)) {
            return Ok(n);
        }
        let not_found = || Error::NotFound {
            kind: ObjectKind::Network,
            name: key.to_owned(),
        };
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let matches: Vec<&NetworkRecord> = self
            .networks
            .values()
            .filter(|n| n.info.id.starts_with(key))
            .collect();
        match matches.as_slice() {
            [one] => Ok(one),
            [] => Err(not_found()),
            many => Err(Error::Ambiguous {
                kind: ObjectKind::Network,
                prefix: key.to_owned(),
                matches: many.iter().map(|n| n.info.name.clone()).collect(),
            }),
        }
    }

    pub fn sandbox_by_name(&self, name: &str) -> Option<&SandboxRecord> {
        self.sandboxes.values().find(|s| s.name == name)
    }

    /// A sandbox by exact name or full id.
    pub fn sandbox(&self, key: &str) -> Result<&SandboxRecord> {
        self.sandbox_by_name(key)
            .or_else(|| self.sandboxes.get(key))
            .ok_or_else(|| Error::NotFound {
                kind: ObjectKind::Sandbox,
                name: key.to_owned(),
            })
    }

    /// A sandbox's endpoints in connection order.
    pub fn endpoints_of(&self, sandbox_id: &str) -> Vec<&EndpointRecord> {
        let mut eps: Vec<&EndpointRecord> = self
            .endpoints
            .values()
            .filter(|e| e.sandbox_id == sandbox_id)
            .collect();
        eps.sort_by_key(|e| e.seq);
        eps
    }

    /// Names of the sandboxes connected to a network.
    pub fn sandboxes_on(&self, network_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .endpoints
            .values()
            .filter(|e| e.network_id == network_id)
            .filter_map(|e| self.sandboxes.get(&e.sandbox_id).map(|s| s.name.clone()))
            .collect();
        names.sort();
        names
    }

    /// Whether a sandbox is on a network with name resolution (any user-defined network): then
    /// it gets the embedded DNS server, as in Docker.
    pub fn uses_embedded_dns(&self, sandbox_id: &str) -> bool {
        self.endpoints.values().any(|e| {
            e.sandbox_id == sandbox_id
                && self.networks.get(&e.network_id).is_some_and(|n| {
                    n.info.options.kind().needs_addresses()
                        && !matches!(
                            &n.info.options,
                            crate::driver::DriverOptions::Bridge(b) if b.default_bridge
                        )
                })
        })
    }

    pub fn details(&self, ep: &EndpointRecord) -> EndpointDetails {
        let net = self.networks.get(&ep.network_id);
        EndpointDetails {
            id: ep.info.id.clone(),
            network: net.map(|n| n.info.name.clone()).unwrap_or_default(),
            network_id: ep.network_id.clone(),
            sandbox: self
                .sandboxes
                .get(&ep.sandbox_id)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            ifname: ep.info.ifname.clone(),
            mac: ep.info.mac,
            ipv4: ep.info.ipv4.map(|n| n.ip()),
            ipv4_prefix: ep.info.ipv4.map(|n| n.prefix()),
            ipv6: ep.info.ipv6.map(|n| n.ip()),
            ipv6_prefix: ep.info.ipv6.map(|n| n.prefix()),
            gateway: net.and_then(|n| n.info.ipv4()).and_then(|s| s.gateway),
            aliases: ep.aliases.clone(),
        }
    }
}

/// Builds the `docker network inspect` view of a network.
pub(crate) fn inspect(
    net: &NetworkRecord,
    leases: &[SubnetLease],
    records: &Records,
) -> NetworkInspect {
    let info = &net.info;
    let config = info
        .subnets
        .iter()
        .map(|s| {
            let lease = leases.iter().find(|l| l.subnet == s.subnet);
            IpamConfigInspect {
                subnet: s.subnet.to_string(),
                gateway: s.gateway.map(|g: IpAddr| g.to_string()),
                ip_range: lease.and_then(|l| l.ip_range).map(|r| r.to_string()),
                auxiliary_addresses: lease
                    .map(|l| {
                        l.aux_addresses
                            .iter()
                            .map(|(k, v)| (k.clone(), v.to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect();
    let containers: BTreeMap<String, ContainerInspect> = records
        .endpoints
        .values()
        .filter(|e| e.network_id == info.id)
        .filter_map(|e| {
            let sb = records.sandboxes.get(&e.sandbox_id)?;
            // Docker shows docker_gwbridge's endpoints as `gateway_<id>` pseudo-containers.
            let (key, name) = if super::is_gwbridge(net) {
                let short: String = sb.id.chars().take(12).collect();
                (format!("gateway_{short}"), format!("gateway_{short}"))
            } else if super::is_ingress(net) && sb.name == super::mesh::INGRESS_SANDBOX {
                // As Docker shows its routing-mesh sandbox.
                (sb.name.clone(), "ingress-endpoint".into())
            } else {
                (sb.id.clone(), sb.name.clone())
            };
            Some((
                key,
                ContainerInspect {
                    name,
                    endpoint_id: e.info.id.clone(),
                    mac_address: if info.options.kind() == crate::driver::DriverKind::Host {
                        String::new()
                    } else {
                        e.info.mac.to_string()
                    },
                    ipv4_address: e.info.ipv4.map(|n| n.to_string()).unwrap_or_default(),
                    ipv6_address: e.info.ipv6.map(|n| n.to_string()).unwrap_or_default(),
                },
            ))
        })
        .collect();
    NetworkInspect {
        name: info.name.clone(),
        id: info.id.clone(),
        created: net.created.clone(),
        scope: if info.options.kind().is_cluster_scoped() {
            "swarm".into()
        } else {
            "local".into()
        },
        driver: info.options.kind().to_string(),
        enable_ipv6: info.enable_ipv6,
        ipam: IpamInspect {
            driver: "default".into(),
            options: None,
            config,
        },
        internal: info.internal,
        attachable: net.attachable,
        ingress: super::is_ingress(net),
        config_from: ConfigFrom::default(),
        config_only: false,
        containers,
        options: info.options.docker_options(),
        labels: net.labels.clone(),
        peers: Vec::new(),
    }
}
