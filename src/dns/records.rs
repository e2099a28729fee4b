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
//! This module is pure: no sockets, no clock, no async. Rebuilding costs the size of the one
//! network that changed plus one pass over the sandboxes.

use std::collections::{BTreeMap, HashMap};
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
    /// `bridge` network, whose containers have no name resolution but may still forward.
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

/// One network's derived records.
#[derive(Debug)]
pub(crate) struct NetView {
    pub(crate) internal: bool,
    pub(crate) upstreams: Option<Arc<[SocketAddr]>>,
    /// Lower-case name (no trailing dot) -> addresses.
    names: HashMap<Box<[u8]>, Addrs>,
    /// Address -> `container.network.` (the first endpoint registered with it).
    ptr: HashMap<IpAddr, Name>,
}

/// What one sandbox may see.
#[derive(Debug)]
pub(crate) struct SandboxView {
    /// The networks it has an endpoint on, ordered by network id.
    networks: Vec<Arc<NetView>>,
}

impl SandboxView {
    /// Whether any of its networks leads out (is not internal).
    pub(crate) fn can_forward(&self) -> bool {
        self.networks.iter().any(|n| !n.internal)
    }

    /// The first upstream override among its non-internal networks.
    pub(crate) fn network_upstreams(&self) -> Option<&Arc<[SocketAddr]>> {
        self.networks
            .iter()
            .filter(|n| !n.internal)
            .find_map(|n| n.upstreams.as_ref())
    }

    /// Addresses of `key` (lower-case, no trailing dot) on the sandbox's networks, or `None`
    /// when no shared network knows the name.
    pub(crate) fn lookup(&self, key: &[u8]) -> Option<Addrs> {
        let mut found: Option<Addrs> = None;
        for net in &self.networks {
            if let Some(addrs) = net.names.get(key) {
                match &mut found {
                    None => found = Some(addrs.clone()),
                    Some(f) => f.extend(addrs),
                }
            }
        }
        found
    }

    /// The name of a container with address `ip` on one of the sandbox's networks.
    pub(crate) fn reverse(&self, ip: IpAddr) -> Option<&Name> {
        self.networks.iter().find_map(|n| n.ptr.get(&ip))
    }
}

/// An immutable snapshot of every sandbox's view, read by the serving tasks.
#[derive(Debug, Default)]
pub struct Table {
    sandboxes: HashMap<Box<str>, SandboxView>,
}

impl Table {
    pub(crate) fn sandbox(&self, id: &str) -> Option<&SandboxView> {
        self.sandboxes.get(id)
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
    /// Sandbox id -> endpoint, ordered so rebuilding is deterministic.
    endpoints: BTreeMap<String, EndpointDns>,
    view: Arc<NetView>,
}

/// The authoritative, mutable record set. Each change returns the new [`Table`] to publish.
#[derive(Debug, Default)]
pub struct Records {
    /// Network id -> entry, ordered by id.
    networks: BTreeMap<String, NetEntry>,
}

impl Records {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a network or changes its name or settings (its endpoints are kept).
    pub fn upsert_network(&mut self, key: NetworkKey, dns: NetworkDns) -> Result<(), DnsError> {
        validate_name(|| format!("registering network {:?}", key.id), &key.name)?;
        let endpoints = self
            .networks
            .remove(&key.id)
            .map(|e| e.endpoints)
            .unwrap_or_default();
        let view = Arc::new(build_view(&key, &dns, &endpoints));
        self.networks.insert(
            key.id.clone(),
            NetEntry {
                key,
                dns,
                endpoints,
                view,
            },
        );
        Ok(())
    }

    /// Removes a network and all its endpoints. Returns whether it existed.
    pub fn remove_network(&mut self, network_id: &str) -> bool {
        self.networks.remove(network_id).is_some()
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
        entry.endpoints.insert(ep.sandbox_id.clone(), ep);
        entry.view = Arc::new(build_view(&entry.key, &entry.dns, &entry.endpoints));
        Ok(())
    }

    /// Removes the endpoint of `sandbox_id` on `network_id`. Returns whether it existed.
    pub fn remove_endpoint(&mut self, network_id: &str, sandbox_id: &str) -> bool {
        let Some(entry) = self.networks.get_mut(network_id) else {
            return false;
        };
        if entry.endpoints.remove(sandbox_id).is_none() {
            return false;
        }
        entry.view = Arc::new(build_view(&entry.key, &entry.dns, &entry.endpoints));
        true
    }

    /// Removes every endpoint of `sandbox_id` (the sandbox is gone). Returns how many.
    pub fn remove_sandbox(&mut self, sandbox_id: &str) -> usize {
        let mut removed = 0;
        for entry in self.networks.values_mut() {
            if entry.endpoints.remove(sandbox_id).is_some() {
                removed += 1;
                entry.view = Arc::new(build_view(&entry.key, &entry.dns, &entry.endpoints));
            }
        }
        removed
    }

    /// Derives the snapshot the serving tasks read.
    pub fn table(&self) -> Table {
        let mut sandboxes: HashMap<Box<str>, SandboxView> = HashMap::new();
        for entry in self.networks.values() {
            for sandbox in entry.endpoints.keys() {
                sandboxes
                    .entry(sandbox.as_str().into())
                    .or_insert_with(|| SandboxView {
                        networks: Vec::new(),
                    })
                    .networks
                    .push(entry.view.clone());
            }
        }
        Table { sandboxes }
    }
}

fn build_view(
    key: &NetworkKey,
    dns: &NetworkDns,
    endpoints: &BTreeMap<String, EndpointDns>,
) -> NetView {
    let mut names: HashMap<Box<[u8]>, Addrs> = HashMap::new();
    let mut ptr: HashMap<IpAddr, Name> = HashMap::new();
    if dns.resolves_names {
        let suffix = normalize(&key.name).unwrap_or_default();
        for ep in endpoints.values() {
            for name in std::iter::once(&ep.name).chain(&ep.aliases) {
                let Some(short) = normalize(name) else {
                    continue;
                };
                let mut long = Vec::with_capacity(short.len() + 1 + suffix.len());
                long.extend_from_slice(&short);
                long.push(b'.');
                long.extend_from_slice(&suffix);
                names.entry(short).or_default().push(ep.ipv4, ep.ipv6);
                names
                    .entry(long.into_boxed_slice())
                    .or_default()
                    .push(ep.ipv4, ep.ipv6);
            }
            // PTR answers `container.network.`, as Docker does (aliases have no PTR).
            let base = ep.name.strip_suffix('.').unwrap_or(&ep.name);
            if let Ok(target) = Name::from_ascii(format!("{base}.{}.", key.name)) {
                for ip in [ep.ipv4.map(IpAddr::V4), ep.ipv6.map(IpAddr::V6)]
                    .into_iter()
                    .flatten()
                {
                    ptr.entry(ip).or_insert_with(|| target.clone());
                }
            }
        }
    }
    NetView {
        internal: dns.internal,
        upstreams: dns.upstreams.as_deref().map(Arc::from),
        names,
        ptr,
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
