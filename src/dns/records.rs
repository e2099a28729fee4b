//! The scoped record table: which names each sandbox may resolve, and to what.
//!
//! The controller describes networks ([`NetworkKey`], [`NetworkDns`]) and endpoints
//! ([`EndpointDns`]); [`Records`] keeps them and derives, after every change, an immutable
//! [`Table`] that the serving tasks read without locks (the resolver publishes it through an
//! `ArcSwap`). A query is answered from one snapshot, so a change is never seen half-applied.
//!
//! Names are matched as DNS names are: ASCII case-insensitively and with the trailing dot
//! optional. Every endpoint of a network that resolves names contributes its container name, its
//! aliases, and both again suffixed with `.network-name`; a sandbox sees the names of the
//! networks it has an endpoint on, and nothing else.
//!
//! This module is pure: no sockets, no clock, no async. A change costs what it changes: the
//! names of the one endpoint (each name's owners are indexed), never the size of the network or
//! the number of sandboxes, because the table is made of persistent maps (`imbl`) that a new
//! snapshot shares with the last one. Only renaming a network derives its names again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::Name;

use super::DnsError;

/// The longest name (in presentation form, without the trailing dot) wharf registers.
pub const MAX_NAME_LEN: usize = 253;

/// Identifies a network: its id (the key of every call) and its name (for `name.network`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkKey {
    /// The network's id, as the controller knows it.
    pub id: String,
    /// The network's name; `container.NAME` resolves on this network.
    pub name: String,
}

/// What the resolver needs to know about a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkDns {
    /// An internal network has no way out: a sandbox whose networks are all internal gets no
    /// forwarding (SERVFAIL, as Docker answers).
    pub internal: bool,
    /// Upstream servers for sandboxes on this network, instead of the resolver's defaults
    /// (at most three are tried). A sandbox's own upstreams take precedence.
    pub upstreams: Option<Vec<SocketAddr>>,
    /// Whether endpoints on this network are resolvable by name. `false` for Docker's default
    /// `bridge` network, whose containers have no name resolution but may still forward (the
    /// controller also says `false` for its egress bridge and the routing mesh's `ingress`).
    pub resolves_names: bool,
}

impl Default for NetworkDns {
    fn default() -> Self {
        Self {
            internal: false,
            upstreams: None,
            resolves_names: true,
        }
    }
}

/// The names and addresses of one endpoint (a sandbox's attachment to a network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointDns {
    /// The network's id.
    pub network_id: String,
    /// The sandbox's id.
    pub sandbox_id: String,
    /// The container name (without Docker's leading `/`).
    pub name: String,
    /// Network-scoped aliases; an alias several containers share resolves to all of them.
    pub aliases: Vec<String>,
    /// The endpoint's IPv4 address on this network.
    pub ipv4: Option<Ipv4Addr>,
    /// The endpoint's IPv6 address on this network.
    pub ipv6: Option<Ipv6Addr>,
}

/// Turns upstream IP addresses (e.g. [`super::resolvconf::ResolvConf::nameservers`]) into
/// socket addresses on port 53.
pub fn upstreams_on_port_53(ips: &[IpAddr]) -> Vec<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::new(*ip, 53)).collect()
}

/// The addresses a name has on the networks a sandbox shares with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addrs {
    /// IPv4 addresses, in registration order.
    pub v4: Vec<Ipv4Addr>,
    /// IPv6 addresses, in registration order.
    pub v6: Vec<Ipv6Addr>,
}

impl Addrs {
    fn push(&mut self, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) {
        if let Some(a) = v4.filter(|a| !self.v4.contains(a)) {
            self.v4.push(a);
        }
        if let Some(a) = v6.filter(|a| !self.v6.contains(a)) {
            self.v6.push(a);
        }
    }

    fn extend(&mut self, other: &Addrs) {
        for a in &other.v4 {
            self.push(Some(*a), None);
        }
        for a in &other.v6 {
            self.push(None, Some(*a));
        }
    }
}

/// One network's derived records, in persistent maps: a snapshot is a constant-time clone that
/// shares everything with the next version, and a change copies only what it touches.
#[derive(Debug, Clone, Default)]
pub(crate) struct NetView {
    pub(crate) internal: bool,
    pub(crate) upstreams: Option<Arc<[SocketAddr]>>,
    /// Lower-case name (no trailing dot) -> addresses.
    names: imbl::HashMap<Arc<[u8]>, Arc<Addrs>>,
    /// Address -> `container.network.` (the first endpoint, by sandbox id, registered with it).
    ptr: imbl::HashMap<IpAddr, Arc<Name>>,
}

/// What one sandbox may see: the networks it has an endpoint on, as found in one [`Table`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SandboxView<'a> {
    table: &'a Table,
    /// The networks' ids, in id order.
    networks: &'a [Arc<str>],
}

impl<'a> SandboxView<'a> {
    fn nets(&self) -> impl Iterator<Item = &'a NetView> + 'a {
        let table = self.table;
        self.networks
            .iter()
            .filter_map(move |id| table.networks.get(id).map(|v| &**v))
    }

    /// Whether any of its networks leads out (is not internal).
    pub(crate) fn can_forward(&self) -> bool {
        self.nets().any(|n| !n.internal)
    }

    /// The first upstream override among its non-internal networks.
    pub(crate) fn network_upstreams(&self) -> Option<&'a Arc<[SocketAddr]>> {
        self.nets()
            .filter(|n| !n.internal)
            .find_map(|n| n.upstreams.as_ref())
    }

    /// Addresses of `key` (lower-case, no trailing dot) on the sandbox's networks, or `None`
    /// when no shared network knows the name.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Addrs> {
        let mut found: Option<Addrs> = None;
        for net in self.nets() {
            if let Some(addrs) = net.names.get(key) {
                match &mut found {
                    None => found = Some((**addrs).clone()),
                    Some(f) => f.extend(addrs),
                }
            }
        }
        found
    }

    /// The name of a container with address `ip` on one of the sandbox's networks.
    pub(crate) fn reverse(&self, ip: IpAddr) -> Option<&'a Name> {
        self.nets().find_map(|n| n.ptr.get(&ip).map(|name| &**name))
    }
}

/// An immutable snapshot of every sandbox's view, read by the serving tasks. Cloning one is
/// constant-time (persistent maps): each change publishes a new table at the cost of what
/// changed, not of the number of sandboxes or names.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Network id -> its records.
    networks: imbl::HashMap<Arc<str>, Arc<NetView>>,
    /// Sandbox id -> the ids of the networks it has an endpoint on, in id order.
    sandboxes: imbl::HashMap<Arc<str>, Arc<[Arc<str>]>>,
}

impl Table {
    pub(crate) fn sandbox(&self, id: &str) -> Option<SandboxView<'_>> {
        self.sandboxes.get(id).map(|networks| SandboxView {
            table: self,
            networks,
        })
    }

    /// Addresses `name` resolves to for `sandbox` (test and debugging helper; the server uses
    /// the same lookup on the wire name).
    pub fn resolve(&self, sandbox: &str, name: &str) -> Option<Addrs> {
        let key = normalize(name)?;
        self.sandbox(sandbox)?.lookup(&key)
    }

    /// The number of sandboxes that have at least one endpoint.
    pub fn sandbox_count(&self) -> usize {
        self.sandboxes.len()
    }

    /// Records that `sandbox` has (`on`) or no longer has an endpoint on `network`.
    fn set_member(&mut self, sandbox: &str, network: &str, on: bool) {
        let mut nets: Vec<Arc<str>> = self
            .sandboxes
            .get(sandbox)
            .map(|n| n.to_vec())
            .unwrap_or_default();
        let at = nets.binary_search_by(|n| (**n).cmp(network));
        match (at, on) {
            (Err(i), true) => nets.insert(i, network.into()),
            (Ok(i), false) => {
                nets.remove(i);
            }
            _ => return,
        }
        if nets.is_empty() {
            self.sandboxes.remove(sandbox);
        } else {
            self.sandboxes.insert(sandbox.into(), nets.into());
        }
    }
}

/// Lower-cases `name` and strips one trailing dot; `None` if nothing is left.
pub(crate) fn normalize(name: &str) -> Option<Box<[u8]>> {
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase().into_bytes().into_boxed_slice())
}

/// Checks that `name` can be registered: a DNS name of non-empty labels of at most 63 bytes,
/// at most 253 bytes long, without whitespace or control characters.
fn validate_name(what: impl Fn() -> String, name: &str) -> Result<(), DnsError> {
    let bad = |reason: &'static str| {
        Err(DnsError::InvalidName {
            what: what(),
            name: name.to_owned(),
            reason,
        })
    };
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return bad("empty");
    }
    if trimmed.len() > MAX_NAME_LEN {
        return bad("longer than 253 bytes");
    }
    if trimmed
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("contains whitespace or a control character");
    }
    if trimmed.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return bad("has an empty label or one longer than 63 bytes");
    }
    Ok(())
}

#[derive(Debug)]
struct NetEntry {
    key: NetworkKey,
    dns: NetworkDns,
    /// Sandbox id -> endpoint, ordered: names with several owners list them in this order.
    endpoints: BTreeMap<String, EndpointDns>,
    /// Name -> the sandboxes whose endpoint has it (short and `name.network` forms).
    owners: HashMap<Arc<[u8]>, BTreeSet<String>>,
    /// Address -> the sandboxes whose endpoint has it; the first names the PTR record.
    ptr_owners: HashMap<IpAddr, BTreeSet<String>>,
    /// What the table publishes for this network.
    view: NetView,
}

impl NetEntry {
    fn new(key: NetworkKey, dns: NetworkDns) -> Self {
        let view = NetView {
            internal: dns.internal,
            upstreams: dns.upstreams.as_deref().map(Arc::from),
            ..NetView::default()
        };
        Self {
            key,
            dns,
            endpoints: BTreeMap::new(),
            owners: HashMap::new(),
            ptr_owners: HashMap::new(),
            view,
        }
    }

    /// The names an endpoint contributes: its container name and aliases, each alone and
    /// suffixed with `.network`.
    fn names_of(&self, ep: &EndpointDns) -> Vec<Arc<[u8]>> {
        if !self.dns.resolves_names {
            return Vec::new();
        }
        let suffix = normalize(&self.key.name).unwrap_or_default();
        let mut out: Vec<Arc<[u8]>> = Vec::new();
        for name in std::iter::once(&ep.name).chain(&ep.aliases) {
            let Some(short) = normalize(name) else {
                continue;
            };
            let mut long = Vec::with_capacity(short.len() + 1 + suffix.len());
            long.extend_from_slice(&short);
            long.push(b'.');
            long.extend_from_slice(&suffix);
            for n in [Arc::from(short), Arc::from(long)] {
                if !out.contains(&n) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// The addresses an endpoint has PTR records for.
    fn ptr_addrs_of(&self, ep: &EndpointDns) -> Vec<IpAddr> {
        if !self.dns.resolves_names {
            return Vec::new();
        }
        [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
            .into_iter()
            .flatten()
            .collect()
    }

    /// PTR answers `container.network.`, as Docker does (aliases have no PTR).
    fn ptr_target(&self, ep: &EndpointDns) -> Option<Name> {
        let base = ep.name.strip_suffix('.').unwrap_or(&ep.name);
        Name::from_ascii(format!("{base}.{}.", self.key.name)).ok()
    }

    /// Adds (`on`) or removes the endpoint of `sandbox` to/from the owners of its names and
    /// addresses, and derives those entries again: the cost is the endpoint's names, whatever
    /// the size of the network.
    fn index(&mut self, sandbox: &str, ep: &EndpointDns, on: bool) {
        for name in self.names_of(ep) {
            let owners = self.owners.entry(name.clone()).or_default();
            if on {
                owners.insert(sandbox.to_owned());
            } else {
                owners.remove(sandbox);
            }
            self.derive_name(&name);
        }
        for ip in self.ptr_addrs_of(ep) {
            let owners = self.ptr_owners.entry(ip).or_default();
            if on {
                owners.insert(sandbox.to_owned());
            } else {
                owners.remove(sandbox);
            }
            self.derive_ptr(ip);
        }
    }

    /// A name's addresses: those of its owners, in sandbox id order, without repeats. A name
    /// whose owners have no address still exists (asked for, it gets an empty answer).
    fn derive_name(&mut self, name: &Arc<[u8]>) {
        let Some(owners) = self.owners.get(name).filter(|o| !o.is_empty()) else {
            self.owners.remove(name);
            self.view.names.remove(name);
            return;
        };
        let mut addrs = Addrs::default();
        for ep in owners.iter().filter_map(|sb| self.endpoints.get(sb)) {
            addrs.push(ep.ipv4, ep.ipv6);
        }
        self.view.names.insert(name.clone(), Arc::new(addrs));
    }

    /// An address's PTR name: that of its first owner (by sandbox id) with a valid one.
    fn derive_ptr(&mut self, ip: IpAddr) {
        let target = self
            .ptr_owners
            .get(&ip)
            .into_iter()
            .flatten()
            .filter_map(|sb| self.endpoints.get(sb))
            .find_map(|ep| self.ptr_target(ep));
        match target {
            Some(t) => {
                self.view.ptr.insert(ip, Arc::new(t));
            }
            None => {
                if self.ptr_owners.get(&ip).is_some_and(|o| o.is_empty()) {
                    self.ptr_owners.remove(&ip);
                }
                self.view.ptr.remove(&ip);
            }
        }
    }

    /// Derives every name again (the network was renamed or started or stopped resolving
    /// names): the one change whose cost is the size of the network.
    fn reindex(&mut self) {
        self.owners.clear();
        self.ptr_owners.clear();
        self.view.names = imbl::HashMap::new();
        self.view.ptr = imbl::HashMap::new();
        let endpoints: Vec<(String, EndpointDns)> = self
            .endpoints
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (sandbox, ep) in &endpoints {
            self.index(sandbox, ep, true);
        }
    }
}

/// The authoritative, mutable record set, and the [`Table`] it currently derives.
#[derive(Debug, Default)]
pub struct Records {
    /// Network id -> entry.
    networks: BTreeMap<String, NetEntry>,
    table: Table,
}

impl Records {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes network `id`'s current view in the table.
    fn publish(&mut self, id: &str) {
        if let Some(entry) = self.networks.get(id) {
            self.table
                .networks
                .insert(id.into(), Arc::new(entry.view.clone()));
        }
    }

    /// Adds a network or changes its name or settings (its endpoints are kept).
    pub fn upsert_network(&mut self, key: NetworkKey, dns: NetworkDns) -> Result<(), DnsError> {
        validate_name(|| format!("registering network {:?}", key.id), &key.name)?;
        let id = key.id.clone();
        match self.networks.get_mut(&id) {
            None => {
                self.networks.insert(id.clone(), NetEntry::new(key, dns));
            }
            Some(entry) => {
                let names_change =
                    entry.key.name != key.name || entry.dns.resolves_names != dns.resolves_names;
                entry.view.internal = dns.internal;
                entry.view.upstreams = dns.upstreams.as_deref().map(Arc::from);
                entry.key = key;
                entry.dns = dns;
                if names_change {
                    entry.reindex();
                }
            }
        }
        self.publish(&id);
        Ok(())
    }

    /// Removes a network and all its endpoints. Returns whether it existed.
    pub fn remove_network(&mut self, network_id: &str) -> bool {
        let Some(entry) = self.networks.remove(network_id) else {
            return false;
        };
        self.table.networks.remove(network_id);
        for sandbox in entry.endpoints.keys() {
            self.table.set_member(sandbox, network_id, false);
        }
        true
    }

    /// Adds or replaces the endpoint of `ep.sandbox_id` on `ep.network_id`.
    pub fn upsert_endpoint(&mut self, ep: EndpointDns) -> Result<(), DnsError> {
        let what = || {
            format!(
                "registering sandbox {:?} on network {:?}",
                ep.sandbox_id, ep.network_id
            )
        };
        validate_name(what, &ep.name)?;
        for alias in &ep.aliases {
            validate_name(what, alias)?;
        }
        let Some(entry) = self.networks.get_mut(&ep.network_id) else {
            return Err(DnsError::UnknownNetwork {
                network: ep.network_id.clone(),
                sandbox: ep.sandbox_id.clone(),
            });
        };
        let sandbox = ep.sandbox_id.clone();
        let network = ep.network_id.clone();
        if let Some(old) = entry.endpoints.remove(&sandbox) {
            entry.index(&sandbox, &old, false);
        }
        entry.endpoints.insert(sandbox.clone(), ep.clone());
        entry.index(&sandbox, &ep, true);
        self.publish(&network);
        self.table.set_member(&sandbox, &network, true);
        Ok(())
    }

    /// Removes the endpoint of `sandbox_id` on `network_id`. Returns whether it existed.
    pub fn remove_endpoint(&mut self, network_id: &str, sandbox_id: &str) -> bool {
        let Some(entry) = self.networks.get_mut(network_id) else {
            return false;
        };
        let Some(old) = entry.endpoints.remove(sandbox_id) else {
            return false;
        };
        entry.index(sandbox_id, &old, false);
        self.publish(network_id);
        self.table.set_member(sandbox_id, network_id, false);
        true
    }

    /// Removes every endpoint of `sandbox_id` (the sandbox is gone). Returns how many.
    pub fn remove_sandbox(&mut self, sandbox_id: &str) -> usize {
        let networks: Vec<String> = self
            .table
            .sandboxes
            .get(sandbox_id)
            .map(|n| n.iter().map(|id| id.to_string()).collect())
            .unwrap_or_default();
        networks
            .iter()
            .filter(|net| self.remove_endpoint(net, sandbox_id))
            .count()
    }

    /// The snapshot the serving tasks read: a constant-time clone of the current table.
    pub fn table(&self) -> Table {
        self.table.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(records: &mut Records, id: &str, name: &str) {
        records
            .upsert_network(
                NetworkKey {
                    id: id.into(),
                    name: name.into(),
                },
                NetworkDns::default(),
            )
            .unwrap();
    }

    fn ep(net: &str, sandbox: &str, name: &str, aliases: &[&str], v4: &str) -> EndpointDns {
        EndpointDns {
            network_id: net.into(),
            sandbox_id: sandbox.into(),
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: None,
        }
    }

    fn v4(addrs: Option<Addrs>) -> Vec<String> {
        addrs
            .map(|a| a.v4.iter().map(|ip| ip.to_string()).collect())
            .unwrap_or_default()
    }

    fn world() -> Records {
        let mut r = Records::new();
        net(&mut r, "na", "alpine-net");
        net(&mut r, "nb", "other");
        r.upsert_endpoint(ep("na", "s1", "alpine1", &["web"], "172.18.0.2"))
            .unwrap();
        r.upsert_endpoint(ep("na", "s2", "alpine2", &["web"], "172.18.0.3"))
            .unwrap();
        r.upsert_endpoint(ep("nb", "s3", "alpine3", &[], "172.19.0.2"))
            .unwrap();
        r
    }

    #[test]
    fn names_are_scoped_to_shared_networks() {
        let t = world().table();
        assert_eq!(v4(t.resolve("s1", "alpine2")), ["172.18.0.3"]);
        assert_eq!(v4(t.resolve("s1", "ALPINE2.")), ["172.18.0.3"]);
        assert_eq!(v4(t.resolve("s1", "alpine2.alpine-net")), ["172.18.0.3"]);
        assert_eq!(t.resolve("s1", "alpine2.other"), None);
        assert_eq!(t.resolve("s1", "alpine3"), None);
        assert_eq!(t.resolve("s3", "alpine1"), None);
        assert_eq!(v4(t.resolve("s3", "alpine3")), ["172.19.0.2"]);
        assert_eq!(t.resolve("nobody", "alpine1"), None);
    }

    #[test]
    fn a_shared_alias_resolves_to_every_container() {
        let t = world().table();
        assert_eq!(
            v4(t.resolve("s1", "web")),
            ["172.18.0.2", "172.18.0.3"],
            "both containers, in sandbox-id order"
        );
        assert_eq!(
            v4(t.resolve("s2", "Web.Alpine-Net")),
            ["172.18.0.2", "172.18.0.3"]
        );
    }

    #[test]
    fn changes_show_in_the_next_table() {
        let mut r = world();
        assert!(r.remove_endpoint("na", "s2"));
        assert!(!r.remove_endpoint("na", "s2"));
        let t = r.table();
        assert_eq!(t.resolve("s1", "alpine2"), None);
        assert_eq!(v4(t.resolve("s1", "web")), ["172.18.0.2"]);
        // Connecting s3 to alpine-net lets it see alpine1 at once, and be seen.
        r.upsert_endpoint(ep("na", "s3", "alpine3", &[], "172.18.0.9"))
            .unwrap();
        let t = r.table();
        assert_eq!(v4(t.resolve("s3", "alpine1")), ["172.18.0.2"]);
        assert_eq!(
            v4(t.resolve("s1", "alpine3")),
            ["172.18.0.9"],
            "only the address on the shared network"
        );
        assert_eq!(v4(t.resolve("s3", "alpine3")), ["172.18.0.9", "172.19.0.2"]);
        assert_eq!(r.remove_sandbox("s3"), 2);
        assert_eq!(r.table().resolve("s1", "alpine3"), None);
        assert!(r.remove_network("na"));
        assert_eq!(r.table().sandbox_count(), 0);
    }

    #[test]
    fn ptr_names_the_container_on_its_network() {
        let t = world().table();
        let s1 = t.sandbox("s1").unwrap();
        assert_eq!(
            s1.reverse("172.18.0.3".parse().unwrap())
                .unwrap()
                .to_ascii(),
            "alpine2.alpine-net."
        );
        assert!(s1.reverse("172.19.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn networks_without_names_still_count_for_forwarding() {
        let mut r = Records::new();
        r.upsert_network(
            NetworkKey {
                id: "int".into(),
                name: "int".into(),
            },
            NetworkDns {
                internal: true,
                ..NetworkDns::default()
            },
        )
        .unwrap();
        r.upsert_endpoint(ep("int", "s1", "a", &[], "10.0.0.2"))
            .unwrap();
        assert!(!r.table().sandbox("s1").unwrap().can_forward());
        r.upsert_network(
            NetworkKey {
                id: "bridge".into(),
                name: "bridge".into(),
            },
            NetworkDns {
                resolves_names: false,
                upstreams: Some(vec!["192.0.2.1:53".parse().unwrap()]),
                ..NetworkDns::default()
            },
        )
        .unwrap();
        r.upsert_endpoint(ep("bridge", "s1", "a", &[], "172.17.0.2"))
            .unwrap();
        let t = r.table();
        let s1 = t.sandbox("s1").unwrap();
        assert!(s1.can_forward());
        assert_eq!(s1.network_upstreams().unwrap().len(), 1);
        assert_eq!(
            v4(t.resolve("s1", "a")),
            ["10.0.0.2"],
            "bridge adds no name"
        );
    }

    #[test]
    fn a_published_table_never_changes() {
        let mut r = world();
        let before = r.table();
        r.upsert_endpoint(ep("na", "s4", "alpine4", &["web"], "172.18.0.4"))
            .unwrap();
        r.remove_endpoint("na", "s1");
        assert_eq!(
            v4(before.resolve("s1", "web")),
            ["172.18.0.2", "172.18.0.3"]
        );
        assert_eq!(before.resolve("s2", "alpine4"), None);
        let after = r.table();
        assert_eq!(v4(after.resolve("s2", "web")), ["172.18.0.3", "172.18.0.4"]);
        assert!(after.sandbox("s1").is_none());
    }

    #[test]
    fn renaming_a_network_renames_its_long_names() {
        let mut r = world();
        r.upsert_network(
            NetworkKey {
                id: "na".into(),
                name: "renamed".into(),
            },
            NetworkDns::default(),
        )
        .unwrap();
        let t = r.table();
        assert_eq!(t.resolve("s1", "alpine2.alpine-net"), None);
        assert_eq!(v4(t.resolve("s1", "alpine2.renamed")), ["172.18.0.3"]);
        assert_eq!(
            t.sandbox("s1")
                .unwrap()
                .reverse("172.18.0.3".parse().unwrap())
                .unwrap()
                .to_ascii(),
            "alpine2.renamed."
        );
    }

    /// Changed piece by piece, the table answers exactly as one built from the final state.
    #[test]
    fn incremental_changes_match_a_fresh_build() {
        let mut r = Records::new();
        net(&mut r, "na", "a");
        net(&mut r, "nb", "b");
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let mut live: BTreeMap<(String, String), EndpointDns> = BTreeMap::new();
        for _ in 0..3000 {
            let network = if next(2) == 0 { "na" } else { "nb" };
            let sandbox = format!("s{}", next(40));
            if next(3) == 0 {
                r.remove_endpoint(network, &sandbox);
                live.remove(&(network.to_owned(), sandbox));
            } else {
                // Few names and addresses, so that they are shared and reused.
                let alias = format!("x{}", next(5));
                let e = ep(
                    network,
                    &sandbox,
                    &format!("c{}", next(30)),
                    &[alias.as_str()],
                    &format!("10.0.0.{}", next(20)),
                );
                r.upsert_endpoint(e.clone()).unwrap();
                live.insert((network.to_owned(), sandbox), e);
            }
        }
        let mut fresh = Records::new();
        net(&mut fresh, "na", "a");
        net(&mut fresh, "nb", "b");
        for e in live.values() {
            fresh.upsert_endpoint(e.clone()).unwrap();
        }
        let (got, want) = (r.table(), fresh.table());
        assert_eq!(got.sandbox_count(), want.sandbox_count());
        for s in 0..40 {
            let sandbox = format!("s{s}");
            let names = (0..30)
                .map(|c| format!("c{c}"))
                .chain((0..5).map(|x| format!("x{x}")));
            for name in names {
                for full in [name.clone(), format!("{name}.a"), format!("{name}.b")] {
                    assert_eq!(
                        got.resolve(&sandbox, &full),
                        want.resolve(&sandbox, &full),
                        "{sandbox} asking {full}"
                    );
                }
            }
            for last in 0..20 {
                let ip: IpAddr = format!("10.0.0.{last}").parse().unwrap();
                let reverse = |t: &Table| {
                    t.sandbox(&sandbox)
                        .and_then(|v| v.reverse(ip).map(|n| n.to_ascii()))
                };
                assert_eq!(reverse(&got), reverse(&want), "{sandbox} asking PTR {ip}");
            }
        }
    }

    #[test]
    fn bad_input_is_refused_with_names() {
        let mut r = world();
        let err = r
            .upsert_endpoint(ep("nope", "s9", "x", &[], "10.0.0.1"))
            .unwrap_err();
        assert!(err.to_string().contains("\"nope\"") && err.to_string().contains("\"s9\""));
        for bad in ["", "a b", "a..b", &"x".repeat(64), "."] {
            assert!(
                r.upsert_endpoint(ep("na", "s9", bad, &[], "10.0.0.1"))
                    .is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(
            r.upsert_endpoint(ep("na", "s9", "ok", &["bad alias"], "10.0.0.1"))
                .is_err()
        );
    }
}
