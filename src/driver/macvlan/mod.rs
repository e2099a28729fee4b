//! The macvlan driver: each endpoint is a macvlan device on a parent interface of the host, with
//! its own MAC, so containers appear on the parent's segment as machines of their own.
//!
//! - **Attach** creates the macvlan directly inside the sandbox, already named (`eth0`...), with
//!   its MAC and up, in one request (no create-then-move); then its addresses. The gateway is a
//!   router on the segment: wharf configures it on no interface, and the controller routes the
//!   sandbox through it. **Detach** deletes the device inside the sandbox (the kernel deletes it
//!   by itself with the sandbox's namespace); the parent is never touched.
//! - **Parent.** An existing interface of the host namespace, checked before anything is
//!   created (it exists, is not the loopback, is not a bridge or bond port, its MTU is enough).
//!   `name.VLAN` that does not exist yet is created as an 802.1Q sub-interface of `name`; the
//!   network records that wharf made it ([`MacvlanOptions::created_parent`], stored with the
//!   network, so it survives restarts) and the last network that uses it deletes it. One that
//!   existed before is never deleted.
//! - **No parent** (internal networks only): Docker makes a dummy device; this driver keeps a
//!   bridge without ports, `mv-<12 hex of the network id>`, in the host namespace as the parent
//!   (dummy devices are not always compiled in; bridges are, and a bridge without ports has
//!   carrier on current kernels). Macvlans in bridge mode switch between each other inside the
//!   kernel; nothing reaches the bridge's other side because it has none.
//! - **Passthru** gives the parent whole to one endpoint: a second endpoint, or a second network
//!   on a parent that a passthru network holds (or a passthru network on a parent in use), is
//!   refused with [`DriverError::ParentInUse`]. The endpoint keeps the MAC wharf gives it, which
//!   in passthru mode the kernel also gives the parent; the kernel puts the parent's own MAC
//!   back when the endpoint is deleted.
//! - **The host and its containers.** The kernel does not deliver frames between a macvlan and
//!   its own parent, so the host cannot reach its containers through the parent. The opt-in
//!   [`HostAccess`](crate::driver::HostAccess) adds the usual remedy: a macvlan in bridge mode on the same parent in the
//!   host namespace (`mh-<12 hex>`) with the host's address on the segment (/32), and a host
//!   route to each container's address (/32) through it, added on attach and removed on detach.
//!
//! Checks that need the kernel run in [`Driver::prepare_network`], before the controller
//! reserves addresses; checks that need the subnets run at the start of
//! [`Driver::create_network`], before anything is created.
//!
//! The driver remembers its networks (parent, mode, endpoints) in memory to enforce passthru
//! exclusivity and to know when a created vlan has no user left; the controller rebuilds that
//! after a restart through [`Driver::restore_network`].

mod parent;

pub use parent::vlan_of;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use super::options::mode_name;
use super::{
    Driver, DriverError, DriverKind, DriverOptions, EndpointInfo, Joined, MacvlanMode,
    MacvlanOptions, NetworkInfo, SandboxContext,
};
use crate::sys::SysError;
use crate::sys::rtnl::{Handle, LinkKind, LinkOps, LinkSpec, Route, validate_ifname};

/// The index of the loopback device in every namespace.
const LOOPBACK_INDEX: u32 = 1;

/// The macvlan driver, working with parents in one host namespace.
pub struct MacvlanDriver {
    host: Handle,
    /// The host's links as far as parents go (looking them up, creating and deleting wharf's
    /// own): `host` itself, or a mock in unit tests.
    parents: Arc<dyn LinkOps>,
    known: Mutex<HashMap<String, Known>>,
}

impl std::fmt::Debug for MacvlanDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MacvlanDriver")
            .field("host", &self.host)
            .field("known", &*self.known())
            .finish()
    }
}

/// What the driver remembers of one of its networks.
#[derive(Debug, Clone)]
struct Known {
    name: String,
    parent: String,
    mode: MacvlanMode,
    created_parent: bool,
    endpoints: BTreeSet<String>,
}

impl Known {
    fn of(net: &NetworkInfo, opts: &MacvlanOptions) -> Self {
        Self {
            name: net.name.clone(),
            parent: parent_name(net),
            mode: opts.mode,
            created_parent: opts.created_parent,
            endpoints: BTreeSet::new(),
        }
    }
}

impl MacvlanDriver {
    /// A macvlan driver whose parents live in the namespace of `host`.
    pub fn new(host: Handle) -> Self {
        Self::with_parent_ops(host.clone(), Arc::new(host))
    }

    /// A driver that looks up, creates and deletes parents through `parents` (for tests that
    /// substitute the kernel) and does everything else through `host`.
    pub(crate) fn with_parent_ops(host: Handle, parents: Arc<dyn LinkOps>) -> Self {
        Self {
            host,
            parents,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refuses `net` if it would share its parent with a passthru network, or is a passthru
    /// network on a parent another network uses.
    fn check_exclusive(&self, net: &NetworkInfo, opts: &MacvlanOptions) -> Result<(), DriverError> {
        let parent = parent_name(net);
        let known = self.known();
        let other = known
            .iter()
            .filter(|(id, k)| **id != net.id && k.parent == parent)
            .map(|(_, k)| k)
            .min_by_key(|k| (k.mode != MacvlanMode::Passthru, k.name.clone()));
        let Some(other) = other else {
            return Ok(());
        };
        let reason = if other.mode == MacvlanMode::Passthru {
            format!("passthru network {:?} holds it whole", other.name)
        } else if opts.mode == MacvlanMode::Passthru {
            format!(
                "passthru needs it whole, but network {:?} ({} mode) uses it",
                other.name,
                mode_name(other.mode)
            )
        } else {
            return Ok(());
        };
        Err(DriverError::ParentInUse {
            network: net.name.clone(),
            parent,
            reason,
        })
    }
}

fn options(net: &NetworkInfo) -> Result<&MacvlanOptions, DriverError> {
    match &net.options {
        DriverOptions::Macvlan(o) => Ok(o),
        other => Err(DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Macvlan,
            reason: format!("options are for the {} driver", other.kind()),
        }),
    }
}

fn short_id(net: &NetworkInfo) -> &str {
    net.id.get(..12).unwrap_or(&net.id)
}

/// The parent of a network's macvlans: the one given, or `mv-<12 hex of the id>`, the bridge
/// without ports that wharf keeps for an internal network without a parent.
pub fn parent_name(net: &NetworkInfo) -> String {
    match &net.options {
        DriverOptions::Macvlan(MacvlanOptions {
            parent: Some(p), ..
        }) => p.clone(),
        _ => private_parent_name(net),
    }
}

/// The bridge wharf keeps as the parent of an internal network without one: `mv-<12 hex>`.
pub fn private_parent_name(net: &NetworkInfo) -> String {
    format!("mv-{}", short_id(net))
}

/// The host's macvlan for [`HostAccess`]: `mh-<12 hex of the network id>`.
///
/// [`HostAccess`]: super::HostAccess
pub fn host_access_name(net: &NetworkInfo) -> String {
    format!("mh-{}", short_id(net))
}

/// The host routes to an endpoint through the host-access macvlan: its addresses as /32, /128.
fn host_routes(opts: &MacvlanOptions, ep: &EndpointInfo) -> Vec<IpNetwork> {
    let Some(h) = &opts.host_access else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(v4) = ep.ipv4 {
        out.push(IpNetwork::V4(Ipv4Network::from(v4.ip())));
    }
    if let (Some(v6), Some(_)) = (ep.ipv6, h.address_v6) {
        out.push(IpNetwork::V6(Ipv6Network::from(v6.ip())));
    }
    out
}

/// The host-access addresses must be usable addresses of the network's subnets, and not the
/// gateway's.
fn check_host_access(net: &NetworkInfo, h: &super::HostAccess) -> Result<(), DriverError> {
    let invalid = |reason: String| DriverError::InvalidOption {
        network: net.name.clone(),
        driver: DriverKind::Macvlan,
        reason: format!("host_access: {reason}"),
    };
    let wanted = [Some(IpAddr::V4(h.address)), h.address_v6.map(IpAddr::V6)];
    for ip in wanted.into_iter().flatten() {
        let Some(s) = net
            .subnets
            .iter()
            .find(|s| s.subnet.is_ipv4() == ip.is_ipv4())
        else {
            return Err(invalid(format!(
                "{ip}: the network has no subnet of its family"
            )));
        };
        if !s.subnet.contains(ip) {
            return Err(invalid(format!("{ip} is outside the subnet {}", s.subnet)));
        }
        if s.gateway == Some(ip) {
            return Err(invalid(format!(
                "{ip} is the gateway; the host needs an address of its own"
            )));
        }
    }
    Ok(())
}

fn not_found_ok(r: Result<(), SysError>) -> Result<(), SysError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

#[async_trait]
impl Driver for MacvlanDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Macvlan
    }

    fn validate(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        let invalid = |reason: String| DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Macvlan,
            reason,
        };
        match &opts.parent {
            None if !net.internal => {
                return Err(invalid(
                    "a parent interface is required (only an internal network may go without \
                     one)"
                        .into(),
                ));
            }
            None => {}
            Some(p) => {
                validate_ifname(p).map_err(|e| DriverError::InvalidParent {
                    network: net.name.clone(),
                    parent: p.clone(),
                    reason: e.to_string(),
                })?;
                if p == "lo" {
                    return Err(DriverError::InvalidParent {
                        network: net.name.clone(),
                        parent: p.clone(),
                        reason: "is the loopback device, which cannot carry macvlans".into(),
                    });
                }
            }
        }
        if let Some(mtu) = opts.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
            }
        }
        if opts.host_access.is_some() {
            let why = match (opts.parent.is_some(), opts.mode) {
                (false, _) => {
                    Some("an internal network without a parent is reachable only by its containers")
                }
                (_, MacvlanMode::Passthru) => Some(
                    "passthru gives the whole parent to one endpoint; the host cannot share it",
                ),
                (_, MacvlanMode::Private) => Some(
                    "private mode forbids traffic between macvlans of one parent, the host's included",
                ),
                _ => None,
            };
            if let Some(why) = why {
                return Err(invalid(format!("host_access: {why}")));
            }
        }
        Ok(())
    }

    async fn prepare_network(&self, net: &mut NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?.clone();
        let mut created_parent = false;
        if let Some(name) = &opts.parent {
            let found = parent::inspect(self.parents.as_ref(), name, opts.mtu)
                .await
                .map_err(|p| match p {
                    parent::Problem::Invalid(reason) => DriverError::InvalidParent {
                        network: net.name.clone(),
                        parent: name.clone(),
                        reason,
                    },
                    parent::Problem::Kernel(e) => DriverError::kernel(&net.name)(e),
                })?;
            created_parent = match found {
                parent::Found::MissingVlan { .. } => true,
                // Made by wharf for another network: shared, and deleted by the last user.
                parent::Found::Exists(_) => self
                    .known()
                    .values()
                    .any(|k| &k.parent == name && k.created_parent),
            };
        }
        self.check_exclusive(net, &opts)?;
        if let DriverOptions::Macvlan(o) = &mut net.options {
            o.created_parent = created_parent;
        }
        Ok(())
    }

    fn restore_network(&self, net: &NetworkInfo, endpoints: &[EndpointInfo]) {
        let Ok(opts) = options(net) else {
            return;
        };
        let mut k = Known::of(net, opts);
        k.endpoints = endpoints.iter().map(|e| e.id.clone()).collect();
        self.known().insert(net.id.clone(), k);
    }

    async fn create_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        // Checks that need the subnets, before anything is created.
        if let Some(h) = &opts.host_access {
            check_host_access(net, h)?;
        }
        self.check_exclusive(net, opts)?;

        let parent = parent_name(net);
        let made_parent = self
            .ensure_parent(net, opts)
            .await
            .map_err(DriverError::kernel(&net.name))?;
        if let Some(h) = &opts.host_access {
            if let Err(e) = self.add_host_access(net, &parent, h).await {
                if made_parent {
                    let undo = async {
                        let link = self.parents.get_link(&parent).await?;
                        self.parents.delete_link(link.index).await
                    };
                    if let Err(undo) = undo.await {
                        tracing::warn!(link = %parent, error = %undo, "rollback of parent creation failed");
                    }
                }
                return Err(DriverError::kernel(&net.name)(e));
            }
        }
        self.known().insert(net.id.clone(), Known::of(net, opts));
        Ok(())
    }

    async fn delete_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        let links = self.host.link();
        let parent = parent_name(net);
        let mut first_error: Option<SysError> = None;
        let mut note = |r: Result<(), SysError>| {
            if let Err(e) = not_found_ok(r) {
                first_error.get_or_insert(e);
            }
        };
        if opts.host_access.is_some() {
            note(links.delete_by_name(&host_access_name(net)).await);
        }
        if opts.parent.is_none() {
            let r = match self.parents.get_link(&parent).await {
                Ok(link) => self.parents.delete_link(link.index).await,
                Err(e) => Err(e),
            };
            note(r);
        } else if opts.created_parent {
            let others = self
                .known()
                .iter()
                .any(|(id, k)| *id != net.id && k.parent == parent);
            if !others {
                note(parent::delete_vlan(self.parents.as_ref(), &parent).await);
            }
        }
        match first_error {
            Some(e) => Err(DriverError::kernel(&net.name)(e)),
            None => {
                self.known().remove(&net.id);
                Ok(())
            }
        }
    }

    fn validate_endpoint(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        if let Some(h) = &opts.host_access {
            let taken = ep.ipv4.map(|n| n.ip()) == Some(h.address)
                || (ep.ipv6.is_some() && ep.ipv6.map(|n| n.ip()) == h.address_v6);
            if taken {
                return Err(DriverError::InvalidOption {
                    network: net.name.clone(),
                    driver: DriverKind::Macvlan,
                    reason: format!(
                        "endpoint {} would get the host-access address; reserve it with an \
                         auxiliary address",
                        ep.ifname
                    ),
                });
            }
        }
        Ok(())
    }

    async fn join(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError> {
        let opts = options(net)?;
        if sandbox.is_host {
            return Err(DriverError::Unsupported {
                network: net.name.clone(),
                driver: DriverKind::Macvlan,
                reason: "a host-network sandbox cannot join a macvlan network".into(),
            });
        }
        self.validate_endpoint(net, ep)?;
        let parent = parent_name(net);
        // Claim the endpoint's place first: passthru admits one.
        {
            let mut known = self.known();
            let k = known
                .entry(net.id.clone())
                .or_insert_with(|| Known::of(net, opts));
            if opts.mode == MacvlanMode::Passthru && k.endpoints.iter().any(|e| *e != ep.id) {
                return Err(DriverError::ParentInUse {
                    network: net.name.clone(),
                    parent,
                    reason: "passthru network already has its one endpoint".into(),
                });
            }
            k.endpoints.insert(ep.id.clone());
        }
        match self.attach(net, opts, &parent, ep, sandbox).await {
            Ok(joined) => Ok(joined),
            Err(e) => {
                if let Some(k) = self.known().get_mut(&net.id) {
                    k.endpoints.remove(&ep.id);
                }
                Err(e)
            }
        }
    }

    async fn leave(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        self.leave_sandbox(net, ep, None).await
    }

    async fn leave_sandbox<'a>(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: Option<&'a SandboxContext>,
    ) -> Result<(), DriverError> {
        let opts = options(net)?;
        let mut first_error: Option<SysError> = None;
        let routes = host_routes(opts, ep);
        if !routes.is_empty() {
            match self.host.link().get(&host_access_name(net)).await {
                Ok(shim) => {
                    for dst in routes {
                        let r = self
                            .host
                            .route()
                            .delete(Route::new(dst).oif(shim.index))
                            .await;
                        if let Err(e) = not_found_ok(r) {
                            first_error.get_or_insert(e);
                        }
                    }
                }
                // The routes went with the interface.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(sb) = sandbox {
            let inside = sb.handle.link();
            match inside.get(&ep.ifname).await {
                Ok(link) if link.kind == Some(LinkKind::Macvlan) => {
                    if let Err(e) = not_found_ok(inside.delete(link.index).await) {
                        first_error.get_or_insert(e);
                    }
                }
                Ok(link) => {
                    tracing::warn!(sandbox = %sb.name, link = %link.name, kind = ?link.kind, "not deleting an interface that is not a macvlan");
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(DriverError::kernel(&net.name)(e));
        }
        if let Some(k) = self.known().get_mut(&net.id) {
            k.endpoints.remove(&ep.id);
        }
        Ok(())
    }
}

impl MacvlanDriver {
    /// Makes the parent if it is wharf's to make and missing: the private bridge of a network
    /// without a parent, or a `name.VLAN` sub-interface. Returns whether it was made now.
    async fn ensure_parent(
        &self,
        net: &NetworkInfo,
        opts: &MacvlanOptions,
    ) -> Result<bool, SysError> {
        let parent = parent_name(net);
        if opts.parent.is_some() {
            return if opts.created_parent {
                parent::ensure_vlan(self.parents.as_ref(), &parent).await
            } else {
                Ok(false)
            };
        }
        match self.parents.get_link(&parent).await {
            Ok(_) => return Ok(false),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let mut spec = LinkSpec::bridge(&parent).up();
        if let Some(mtu) = opts.mtu {
            spec = spec.mtu(mtu);
        }
        self.parents.add_link(spec).await?;
        Ok(true)
    }

    /// The host's side of [`HostAccess`]: a bridge-mode macvlan on the parent with the host's
    /// address(es). Undone on failure.
    ///
    /// [`HostAccess`]: super::HostAccess
    async fn add_host_access(
        &self,
        net: &NetworkInfo,
        parent: &str,
        h: &super::HostAccess,
    ) -> Result<(), SysError> {
        let links = self.host.link();
        let p = links.get(parent).await?;
        let shim = host_access_name(net);
        links
            .add(LinkSpec::macvlan(&shim, p.index, MacvlanMode::Bridge).up())
            .await?;
        let addressed: Result<(), SysError> = async {
            let index = links.get(&shim).await?.index;
            self.host
                .address()
                .add(index, IpNetwork::V4(Ipv4Network::from(h.address)))
                .await?;
            if let Some(v6) = h.address_v6 {
                self.host
                    .address()
                    .add(index, IpNetwork::V6(Ipv6Network::from(v6)))
                    .await?;
            }
            Ok(())
        }
        .await;
        if addressed.is_err() {
            if let Err(undo) = links.delete_by_name(&shim).await {
                tracing::warn!(link = %shim, error = %undo, "rollback of host-access macvlan failed");
            }
        }
        addressed
    }

    /// The kernel work of a join: the macvlan inside the sandbox, its addresses, loopback up,
    /// the host routes for host access. Undone on failure.
    async fn attach(
        &self,
        net: &NetworkInfo,
        opts: &MacvlanOptions,
        parent: &str,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError> {
        let kernel = DriverError::kernel(&net.name);
        let links = self.host.link();
        let p = match links.get(parent).await {
            Ok(p) => p,
            // A parent wharf made, gone since (the host rebooted): made again.
            Err(e) if e.is_not_found() && (opts.parent.is_none() || opts.created_parent) => {
                self.ensure_parent(net, opts)
                    .await
                    .map_err(DriverError::kernel(&net.name))?;
                links
                    .get(parent)
                    .await
                    .map_err(DriverError::kernel(&net.name))?
            }
            Err(e) if e.is_not_found() => {
                return Err(DriverError::InvalidParent {
                    network: net.name.clone(),
                    parent: parent.to_owned(),
                    reason: "does not exist in the host namespace any more".into(),
                });
            }
            Err(e) => return Err(kernel(e)),
        };
        let mut spec = LinkSpec::macvlan(&ep.ifname, p.index, opts.mode)
            .netns(&sandbox.ns)
            .mac(ep.mac)
            .up();
        if let Some(mtu) = opts.mtu {
            spec = spec.mtu(mtu);
        }
        add_macvlan(&self.host, spec)
            .await
            .map_err(DriverError::kernel(&net.name))?;
        let inside = &sandbox.handle;
        let mut routed: Vec<(IpNetwork, u32)> = Vec::new();
        let configured: Result<u32, SysError> = async {
            let link = inside.link().get(&ep.ifname).await?;
            if opts.mode == MacvlanMode::Passthru && link.mac != Some(ep.mac) {
                // Passthru macvlans start with the parent's MAC.
                inside.link().set_mac(link.index, ep.mac).await?;
            }
            if let Some(v4) = ep.ipv4 {
                inside.address().add(link.index, IpNetwork::V4(v4)).await?;
            }
            if let Some(v6) = ep.ipv6 {
                inside.address().add(link.index, IpNetwork::V6(v6)).await?;
            }
            inside.link().set_up(LOOPBACK_INDEX).await?;
            let routes = host_routes(opts, ep);
            if !routes.is_empty() {
                let shim = links.get(&host_access_name(net)).await?;
                for dst in routes {
                    self.host
                        .route()
                        .add(Route::new(dst).oif(shim.index))
                        .await?;
                    routed.push((dst, shim.index));
                }
            }
            Ok(link.index)
        }
        .await;
        match configured {
            Ok(ifindex) => Ok(Joined {
                ifindex: Some(ifindex),
                gateway_v4: net.ipv4().and_then(|s| s.gateway).and_then(|g| match g {
                    IpAddr::V4(g) => Some(g),
                    IpAddr::V6(_) => None,
                }),
                gateway_v6: net.ipv6().and_then(|s| s.gateway).and_then(|g| match g {
                    IpAddr::V6(g) => Some(g),
                    IpAddr::V4(_) => None,
                }),
            }),
            Err(e) => {
                for (dst, oif) in routed.into_iter().rev() {
                    if let Err(undo) = self.host.route().delete(Route::new(dst).oif(oif)).await {
                        tracing::warn!(%dst, error = %undo, "rollback of host route failed");
                    }
                }
                if let Err(undo) = not_found_ok(inside.link().delete_by_name(&ep.ifname).await) {
                    tracing::warn!(sandbox = %sandbox.name, link = %ep.ifname, error = %undo, "rollback of macvlan creation failed");
                }
                Err(DriverError::kernel(&net.name)(e))
            }
        }
    }
}

/// How long a join waits for a macvlan with the same MAC to disappear from the parent.
const MAC_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Creates a macvlan, waiting while the kernel answers "busy". A macvlan refuses a MAC that
/// another macvlan of the same parent has (`EADDRINUSE`); when a container's namespace was just
/// destroyed, the kernel deletes its macvlan a little later, asynchronously, while the next
/// container may already get the same address, hence the same MAC.
async fn add_macvlan(host: &Handle, spec: LinkSpec) -> Result<(), SysError> {
    let deadline = std::time::Instant::now() + MAC_BUSY_WAIT;
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match host.link().add(spec.clone()).await {
            Err(SysError::Busy { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::rtnl::{Link, MacAddr, MockLinkOps};

    fn link(index: u32, name: &str, kind: LinkKind) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(kind),
            mtu: 1500,
            mac: Some(MacAddr([0x02, 0, 0, 0, 0, index as u8])),
            up: true,
            lower_up: true,
            master: None,
            group: 0,
            link: None,
            netns_id: None,
        }
    }

    fn network(id: char, parent: &str) -> NetworkInfo {
        NetworkInfo {
            id: std::iter::repeat_n(id, 64).collect(),
            name: format!("net-{id}"),
            internal: false,
            enable_ipv6: false,
            options: DriverOptions::Macvlan(MacvlanOptions::parent(parent)),
            subnets: Vec::new(),
        }
    }

    fn created_parent(net: &NetworkInfo) -> bool {
        matches!(&net.options, DriverOptions::Macvlan(o) if o.created_parent)
    }

    /// A host with `eth0` (#2) and `eth0.20` (#20, a vlan the user made); `eth0.10` appears when
    /// wharf creates it (#10). Every creation and deletion must be expected.
    fn host(vlan10: Arc<Mutex<bool>>) -> MockLinkOps {
        let mut ops = MockLinkOps::new();
        let exists = vlan10.clone();
        ops.expect_get_link().returning(move |name| match name {
            "eth0" => Ok(link(2, "eth0", LinkKind::Veth)),
            "eth0.20" => Ok(link(20, "eth0.20", LinkKind::Vlan)),
            "eth0.10" if *exists.lock().unwrap() => Ok(link(10, "eth0.10", LinkKind::Vlan)),
            other => Err(SysError::NotFound {
                what: format!("looking up link {other:?}"),
            }),
        });
        let made = vlan10.clone();
        ops.expect_add_link()
            .withf(|spec| {
                spec.describe() == r#"creating vlan "eth0.10" (id 10 on link #2)"#
                    && spec.request().is_ok()
            })
            .times(1)
            .returning(move |_| {
                *made.lock().unwrap() = true;
                Ok(())
            });
        ops.expect_delete_link()
            .withf(|index| *index == 10)
            .times(1)
            .returning(move |_| {
                *vlan10.lock().unwrap() = false;
                Ok(())
            });
        ops
    }

    #[tokio::test]
    async fn a_created_vlan_is_shared_remembered_and_deleted_by_its_last_user() {
        let vlan10 = Arc::new(Mutex::new(false));
        let ops: Arc<dyn LinkOps> = Arc::new(host(vlan10.clone()));
        // The parent side is mocked; the handle the driver also holds points at a throwaway
        // namespace, never at the machine's own.
        let lab = crate::lab::Lab::new();
        let handle = Handle::in_netns(&lab.namespace("host").await.unwrap())
            .await
            .unwrap();
        let driver = MacvlanDriver::with_parent_ops(handle.clone(), ops.clone());

        // The first network finds eth0.10 missing: it records that wharf makes it, and makes it.
        let mut a = network('a', "eth0.10");
        driver.validate(&a).unwrap();
        driver.prepare_network(&mut a).await.unwrap();
        assert!(created_parent(&a));
        driver.create_network(&a).await.unwrap();
        assert!(*vlan10.lock().unwrap());
        // The record carries it across restarts.
        let stored: NetworkInfo =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert!(created_parent(&stored));

        // A second network on it shares wharf's ownership; nothing is created twice.
        let mut b = network('b', "eth0.10");
        driver.prepare_network(&mut b).await.unwrap();
        assert!(created_parent(&b));
        driver.create_network(&b).await.unwrap();

        // A vlan the user made is used as it is and never deleted.
        let mut c = network('c', "eth0.20");
        driver.prepare_network(&mut c).await.unwrap();
        assert!(!created_parent(&c));
        driver.create_network(&c).await.unwrap();

        // After a restart, the driver learns its networks back from the controller.
        let driver = MacvlanDriver::with_parent_ops(handle, ops);
        for net in [&a, &b, &c] {
            driver.restore_network(net, &[]);
        }
        driver.delete_network(&c).await.unwrap();
        driver.delete_network(&a).await.unwrap();
        assert!(*vlan10.lock().unwrap(), "b still uses eth0.10");
        driver.delete_network(&b).await.unwrap();
        assert!(!*vlan10.lock().unwrap(), "the last user deleted it");
    }

    #[tokio::test]
    async fn passthru_networks_do_not_share_a_parent() {
        let mut ops = MockLinkOps::new();
        ops.expect_get_link()
            .returning(|name| Ok(link(2, name, LinkKind::Veth)));
        let lab = crate::lab::Lab::new();
        let handle = Handle::in_netns(&lab.namespace("host").await.unwrap())
            .await
            .unwrap();
        let driver = MacvlanDriver::with_parent_ops(handle, Arc::new(ops));
        let mut whole = network('a', "eth0");
        if let DriverOptions::Macvlan(o) = &mut whole.options {
            o.mode = MacvlanMode::Passthru;
        }
        driver.restore_network(&whole, &[]);
        for mode in [MacvlanMode::Bridge, MacvlanMode::Passthru] {
            let mut other = network('b', "eth0");
            if let DriverOptions::Macvlan(o) = &mut other.options {
                o.mode = mode;
            }
            let e = driver.prepare_network(&mut other).await.unwrap_err();
            assert!(matches!(e, DriverError::ParentInUse { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains("passthru network \"net-a\" holds it whole"),
                "{e}"
            );
        }
        // A different parent is fine.
        let mut elsewhere = network('b', "eth1");
        driver.prepare_network(&mut elsewhere).await.unwrap();
    }
}
