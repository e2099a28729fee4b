//! The controller's records in memory: lookups, and loading them from the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::error::{Error, ObjectKind, Result};
use super::inspect::{
    ConfigFrom, ContainerInspect, IpamConfigInspect, IpamInspect, NetworkInspect,
};
use super::model::{EndpointDetails, EndpointRecord, NetworkRecord, SandboxRecord};
use super::{KEY_ENDPOINTS, KEY_NETWORKS, KEY_SANDBOXES};
use crate::ipam::SubnetLease;
use crate::store::Store;

/// Every network, sandbox and endpoint, by id, with the indexes that keep an attach's lookups
/// independent of how many endpoints and sandboxes there are: sandboxes by name, endpoints by
/// sandbox (in connection order) and by network, and the 7-digit prefixes of endpoint ids.
///
/// Sandboxes and endpoints change only through [`Records::insert_sandbox`],
/// [`Records::remove_sandbox`], [`Records::insert_endpoint`] and [`Records::remove_endpoint`],
/// which keep the indexes true; networks are few and kept as a plain map.
#[derive(Debug, Default)]
pub(crate) struct Records {
    pub networks: HashMap<String, NetworkRecord>,
    sandboxes: HashMap<String, SandboxRecord>,
    endpoints: HashMap<String, EndpointRecord>,
    sandbox_ids: HashMap<String, String>,
    by_sandbox: HashMap<String, BTreeSet<(u64, String)>>,
    by_network: HashMap<String, BTreeSet<String>>,
    id_prefixes: HashMap<String, usize>,
    seq: u64,
}

/// The part of an endpoint id that is unique among a controller's endpoints (Docker's CLI shows
/// and accepts short ids; wharf keeps the first seven hex digits unique).
pub(crate) fn id_prefix(id: &str) -> &str {
    id.get(..7).unwrap_or(id)
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
            r.insert_sandbox(s);
        }
        for e in load_all::<EndpointRecord>(store, KEY_ENDPOINTS).await? {
            r.seq = r.seq.max(e.seq);
            r.insert_endpoint(e);
        }
        Ok(r)
    }

    /// Every sandbox, by id.
    pub fn sandboxes(&self) -> &HashMap<String, SandboxRecord> {
        &self.sandboxes
    }

    /// Every endpoint, by id.
    pub fn endpoints(&self) -> &HashMap<String, EndpointRecord> {
        &self.endpoints
    }

    /// Adds a sandbox, or replaces the one with its id.
    pub fn insert_sandbox(&mut self, sb: SandboxRecord) {
        if let Some(old) = self.sandboxes.get(&sb.id) {
            if old.name != sb.name {
                self.sandbox_ids.remove(&old.name);
            }
        }
        self.sandbox_ids.insert(sb.name.clone(), sb.id.clone());
        self.sandboxes.insert(sb.id.clone(), sb);
    }

    /// Removes a sandbox (its endpoints stay until removed themselves).
    pub fn remove_sandbox(&mut self, id: &str) -> Option<SandboxRecord> {
        let sb = self.sandboxes.remove(id)?;
        if self.sandbox_ids.get(&sb.name).is_some_and(|i| i == id) {
            self.sandbox_ids.remove(&sb.name);
        }
        Some(sb)
    }

    /// Adds an endpoint, or replaces the one with its id.
    pub fn insert_endpoint(&mut self, ep: EndpointRecord) {
        self.remove_endpoint(&ep.info.id);
        let id = ep.info.id.clone();
        self.by_sandbox
            .entry(ep.sandbox_id.clone())
            .or_default()
            .insert((ep.seq, id.clone()));
        self.by_network
            .entry(ep.network_id.clone())
            .or_default()
            .insert(id.clone());
        *self
            .id_prefixes
            .entry(id_prefix(&id).to_owned())
            .or_default() += 1;
        self.endpoints.insert(id, ep);
    }

    /// Removes an endpoint.
    pub fn remove_endpoint(&mut self, id: &str) -> Option<EndpointRecord> {
        let ep = self.endpoints.remove(id)?;
        if let Some(eps) = self.by_sandbox.get_mut(&ep.sandbox_id) {
            eps.remove(&(ep.seq, ep.info.id.clone()));
            if eps.is_empty() {
                self.by_sandbox.remove(&ep.sandbox_id);
            }
        }
        if let Some(eps) = self.by_network.get_mut(&ep.network_id) {
            eps.remove(id);
            if eps.is_empty() {
                self.by_network.remove(&ep.network_id);
            }
        }
        let prefix = id_prefix(id);
        if let Some(n) = self.id_prefixes.get_mut(prefix) {
            *n -= 1;
            if *n == 0 {
                self.id_prefixes.remove(prefix);
            }
        }
        Some(ep)
    }

    /// Whether an endpoint's id starts with `prefix` (seven hex digits, see [`id_prefix`]).
    pub fn endpoint_prefix_taken(&self, prefix: &str) -> bool {
        self.id_prefixes.contains_key(prefix)
    }

    /// A network's endpoints, in no particular order.
    pub fn endpoints_on(&self, network_id: &str) -> impl Iterator<Item = &EndpointRecord> {
        self.by_network
            .get(network_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.endpoints.get(id))
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
        self.sandboxes.get(self.sandbox_ids.get(name)?)
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
        self.by_sandbox
            .get(sandbox_id)
            .into_iter()
            .flatten()
            .filter_map(|(_, id)| self.endpoints.get(id))
            .collect()
    }

    /// Names of the sandboxes connected to a network.
    pub fn sandboxes_on(&self, network_id: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .endpoints_on(network_id)
            .filter_map(|e| self.sandboxes.get(&e.sandbox_id).map(|s| s.name.clone()))
            .collect();
        names.sort();
        names
    }

    /// Whether a sandbox is on a network with name resolution (any user-defined network): then
    /// it gets the embedded DNS server, as in Docker.
    pub fn uses_embedded_dns(&self, sandbox_id: &str) -> bool {
        self.endpoints_of(sandbox_id).into_iter().any(|e| {
            self.networks.get(&e.network_id).is_some_and(|n| {
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
        .endpoints_on(&info.id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::model::{Status, StoredNamespace};
    use crate::driver::EndpointInfo;
    use crate::sys::rtnl::MacAddr;

    fn sandbox(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            id: id.into(),
            status: Status::Active,
            name: name.into(),
            hostname: name.into(),
            namespace: StoredNamespace::Owned(name.into()),
            gateway_v4: None,
            gateway_v6: None,
        }
    }

    fn endpoint(id: &str, network: &str, sandbox: &str, seq: u64) -> EndpointRecord {
        EndpointRecord {
            info: EndpointInfo {
                id: id.into(),
                ifname: format!("eth{seq}"),
                mac: MacAddr::new([2, 0x42, 0, 0, 0, seq as u8]),
                ipv4: None,
                ipv6: None,
                ports: Vec::new(),
            },
            status: Status::Active,
            network_id: network.into(),
            sandbox_id: sandbox.into(),
            aliases: Vec::new(),
            seq,
        }
    }

    fn ids<'a>(eps: impl IntoIterator<Item = &'a EndpointRecord>) -> Vec<&'a str> {
        let mut v: Vec<&str> = eps.into_iter().map(|e| e.info.id.as_str()).collect();
        v.sort();
        v
    }

    #[test]
    fn indexes_follow_inserts_replacements_and_removals() {
        let mut r = Records::default();
        r.insert_sandbox(sandbox("s1", "web"));
        r.insert_sandbox(sandbox("s2", "db"));
        r.insert_endpoint(endpoint("aaaaaaa1", "n1", "s1", 2));
        r.insert_endpoint(endpoint("bbbbbbb1", "n2", "s1", 1));
        r.insert_endpoint(endpoint("ccccccc1", "n1", "s2", 3));

        // In connection order, not insertion order.
        let of_web: Vec<&str> = r
            .endpoints_of("s1")
            .iter()
            .map(|e| e.info.id.as_str())
            .collect();
        assert_eq!(of_web, ["bbbbbbb1", "aaaaaaa1"]);
        assert_eq!(ids(r.endpoints_on("n1")), ["aaaaaaa1", "ccccccc1"]);
        assert_eq!(r.sandbox_by_name("db").map(|s| s.id.as_str()), Some("s2"));
        assert!(r.endpoint_prefix_taken("ccccccc"));

        // A replaced endpoint moves in every index.
        r.insert_endpoint(endpoint("ccccccc1", "n2", "s1", 4));
        assert!(r.endpoints_of("s2").is_empty());
        assert_eq!(ids(r.endpoints_on("n2")), ["bbbbbbb1", "ccccccc1"]);
        assert_eq!(r.endpoints_of("s1").len(), 3);

        // A renamed sandbox is found by its new name only.
        r.insert_sandbox(sandbox("s2", "cache"));
        assert!(r.sandbox_by_name("db").is_none());
        assert_eq!(
            r.sandbox_by_name("cache").map(|s| s.id.as_str()),
            Some("s2")
        );

        // Removals leave nothing behind.
        for id in ["aaaaaaa1", "bbbbbbb1", "ccccccc1"] {
            assert!(r.remove_endpoint(id).is_some());
        }
        assert!(r.remove_endpoint("aaaaaaa1").is_none());
        assert!(r.remove_sandbox("s1").is_some());
        assert!(r.sandbox_by_name("web").is_none());
        assert!(r.endpoints_of("s1").is_empty() && r.endpoints_on("n1").next().is_none());
        assert!(!r.endpoint_prefix_taken("ccccccc"));
        assert!(r.by_sandbox.is_empty() && r.by_network.is_empty() && r.id_prefixes.is_empty());
    }

    #[test]
    fn ids_sharing_a_prefix_keep_it_taken_until_the_last_goes() {
        let mut r = Records::default();
        r.insert_endpoint(endpoint("1234567aa", "n", "s", 1));
        r.insert_endpoint(endpoint("1234567bb", "n", "s", 2));
        r.remove_endpoint("1234567aa");
        assert!(r.endpoint_prefix_taken("1234567"));
        r.remove_endpoint("1234567bb");
        assert!(!r.endpoint_prefix_taken("1234567"));
    }
}
