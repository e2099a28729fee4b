//! The bridge driver: one Linux bridge per network, a veth pair per endpoint.
//!
//! The bridge holds the gateway address(es). An endpoint's veth is created with its peer directly
//! inside the sandbox, already named (`eth0`, ...) and with its MAC, while the host end is
//! enslaved to the bridge and brought up in the same netlink request: no create-then-move, no
//! rename. Deleting the host end deletes the pair, which is also what the kernel does by itself
//! when the sandbox's namespace disappears.
//!
//! The host side of a network (IP forwarding, NAT, isolation, published ports) is the
//! [`firewall`]'s: creating a network enables forwarding in the host namespace and adds the
//! network to wharf's nftables tables; connecting an endpoint publishes its ports there.

pub mod firewall;

use std::sync::Arc;

use ipnetwork::IpNetwork;

use async_trait::async_trait;

use super::{
    BridgeOptions, Driver, DriverError, DriverKind, DriverOptions, EndpointInfo, Joined,
    NetworkInfo, NetworkState, SandboxContext,
};
use crate::sys::rtnl::{Handle, LinkKind, LinkSpec, MacAddr, VethPeer, validate_ifname};
use crate::sys::{SysError, sysctl};
use firewall::{Firewall, FwNetwork, FwPort};

/// The bridge device of the default `bridge` network (Docker's is `docker0`; wharf's differs so
/// both can live on one host).
pub const DEFAULT_BRIDGE_NAME: &str = "wharf0";

/// The bridge driver, working in one host namespace.
#[derive(Debug, Clone)]
pub struct BridgeDriver {
    host: Handle,
    firewall: Arc<Firewall>,
}

impl BridgeDriver {
    /// A bridge driver whose bridges (and firewall) live in the namespace of `host`.
    pub fn new(host: Handle) -> Self {
        let firewall = Arc::new(Firewall::new(host.netns().clone()));
        Self { host, firewall }
    }

    /// The firewall this driver programs.
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// The host-namespace sysctls a network needs: forwarding, and `route_localnet` on the
    /// bridge so that the host's 127.0.0.1 reaches published ports (see [`firewall`]).
    async fn enable_forwarding(&self, net: &NetworkInfo, bridge: &str) -> Result<(), SysError> {
        let mut keys = vec![("net/ipv4/ip_forward".to_owned(), "1")];
        if net.ipv6().is_some() {
            keys.push(("net/ipv6/conf/all/forwarding".to_owned(), "1"));
        }
        if !net.internal {
            keys.push((format!("net/ipv4/conf/{bridge}/route_localnet"), "1"));
        }
        let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        sysctl::write_many(self.host.netns(), &pairs).await
    }
}

fn is_isolated(net: &NetworkInfo) -> bool {
    matches!(&net.options, DriverOptions::Bridge(o) if !o.icc())
}

fn options(net: &NetworkInfo) -> Result<&BridgeOptions, DriverError> {
    match &net.options {
        DriverOptions::Bridge(o) => Ok(o),
        other => Err(DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Bridge,
            reason: format!("options are for the {} driver", other.kind()),
        }),
    }
}

/// The bridge device's name: the one given in the options, `wharf0` for the default network,
/// otherwise `br-` and the first 12 hex digits of the network id.
pub fn bridge_name(net: &NetworkInfo) -> String {
    match &net.options {
        DriverOptions::Bridge(BridgeOptions {
            name: Some(name), ..
        }) => name.clone(),
        DriverOptions::Bridge(BridgeOptions {
            default_bridge: true,
            ..
        }) => DEFAULT_BRIDGE_NAME.to_owned(),
        _ => format!("br-{}", net.id.get(..12).unwrap_or(&net.id)),
    }
}

/// A stable, locally administered MAC address for a network's bridge, derived from its id.
pub fn bridge_mac(net: &NetworkInfo) -> MacAddr {
    let mut mac = [0x02, 0x42, 0, 0, 0, 0];
    let hex = net.id.as_bytes();
    for (i, byte) in mac.iter_mut().skip(2).enumerate() {
        let pair = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|p| std::str::from_utf8(p).ok());
        *byte = pair
            .and_then(|p| u8::from_str_radix(p, 16).ok())
            .unwrap_or(0);
    }
    // 02:42:ac:.. is what containers get; keep the bridge clear of that range.
    mac[1] = 0x43;
    MacAddr(mac)
}

/// The host end of an endpoint's veth pair: `veth` and the first 7 hex digits of its id.
pub fn host_veth_name(ep: &EndpointInfo) -> String {
    format!("veth{}", ep.id.get(..7).unwrap_or(&ep.id))
}

#[async_trait]
impl Driver for BridgeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Bridge
    }

    fn validate(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        let opts = options(net)?;
        let invalid = |reason: String| DriverError::InvalidOption {
            network: net.name.clone(),
            driver: DriverKind::Bridge,
            reason,
        };
        validate_ifname(&bridge_name(net)).map_err(|e| invalid(e.to_string()))?;
        if let Some(ip) = opts.host_binding_ip {
            if ip.is_loopback() || ip.is_multicast() {
                return Err(invalid(format!(
                    "host_binding_ip {ip} cannot publish ports"
                )));
            }
        }
        if let Some(mtu) = opts.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
            }
        }
        Ok(())
    }

    async fn create_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        self.make_bridge(net, true).await
    }

    async fn network_present(&self, net: &NetworkInfo) -> Result<bool, DriverError> {
        match self.host.link().get(&bridge_name(net)).await {
            Ok(l) => Ok(l.kind == Some(LinkKind::Bridge)),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(DriverError::kernel(&net.name)(e)),
        }
    }

    async fn endpoint_present(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<bool, DriverError> {
        let kernel = DriverError::kernel(&net.name);
        let links = self.host.link();
        let host_end = match links.get(&host_veth_name(ep)).await {
            Ok(l) => l,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(kernel(e)),
        };
        // Enslaved to its bridge and up: the last things join does on the host side.
        let bridge = match links.get(&bridge_name(net)).await {
            Ok(b) => Some(b.index),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(kernel(e)),
        };
        if bridge.is_none() || host_end.master != bridge || !host_end.up {
            return Ok(false);
        }
        super::sandbox_side_present(ep, sandbox)
            .await
            .map_err(DriverError::kernel(&net.name))
    }

    async fn reconcile(&self, networks: &[NetworkState], prune: bool) -> Result<(), DriverError> {
        let mut fw_networks = Vec::new();
        let mut ports = Vec::new();
        let mut isolated = Vec::new();
        let mut bridges = Vec::new();
        for n in networks {
            bridges.push(self.restore_bridge(n).await?);
            fw_networks.push(FwNetwork::of(&n.info));
            for ep in &n.endpoints {
                if is_isolated(&n.info) {
                    isolated.push(host_veth_name(ep));
                }
                if let Ok(p) = FwPort::of_endpoint(&n.info, ep) {
                    ports.extend(p);
                }
            }
        }
        let every = |e| DriverError::Kernel {
            network: "every bridge network".into(),
            source: e,
        };
        if prune {
            // Host veths on wharf's bridges that no endpoint owns (only wharf plugs `veth…`
            // ports into its bridges; Docker's veths of the same pattern sit on its own).
            let owned: Vec<String> = networks
                .iter()
                .flat_map(|n| n.endpoints.iter().map(host_veth_name))
                .collect();
            let links = self.host.link();
            for l in links.list().await.map_err(every)? {
                let on_ours = l.master.is_some_and(|m| bridges.contains(&m));
                if on_ours && l.name.starts_with("veth") && !owned.contains(&l.name) {
                    tracing::warn!(veth = %l.name, "deleting a veth no endpoint owns");
                    match links.delete(l.index).await {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(every(e)),
                    }
                }
            }
        }
        self.firewall
            .restore(&fw_networks, &ports, &isolated, prune)
            .await
            .map_err(every)
    }

    async fn delete_network(&self, net: &NetworkInfo) -> Result<(), DriverError> {
        self.firewall
            .remove_network(&FwNetwork::of(net))
            .await
            .map_err(DriverError::kernel(&net.name))?;
        match self.host.link().delete_by_name(&bridge_name(net)).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(DriverError::kernel(&net.name)(e)),
        }
    }

    fn validate_endpoint(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        if ep.ports.is_empty() {
            return Ok(());
        }
        let unsupported = |reason: String| DriverError::Unsupported {
            network: net.name.clone(),
            driver: DriverKind::Bridge,
            reason,
        };
        if net.internal {
            return Err(unsupported(
                "an internal network cannot publish ports".into(),
            ));
        }
        FwPort::of_endpoint(net, ep).map_err(unsupported)?;
        Ok(())
    }

    async fn join(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
        sandbox: &SandboxContext,
    ) -> Result<Joined, DriverError> {
        let opts = options(net)?;
        let kernel = DriverError::kernel(&net.name);
        let links = self.host.link();
        let bridge = links.get(&bridge_name(net)).await.map_err(kernel)?;
        let veth = host_veth_name(ep);
        let mtu = opts.mtu();
        // An icc-off port is cut off before it exists: no moment of open traffic.
        let isolated = is_isolated(net);
        if isolated {
            self.firewall
                .isolate_port(&veth)
                .await
                .map_err(DriverError::kernel(&net.name))?;
        }
        let unisolate = async || {
            if isolated {
                if let Err(e) = self.firewall.release_port(&veth).await {
                    tracing::warn!(veth = %veth, error = %e, "rollback of port isolation failed");
                }
            }
        };
        let added = links
            .add(
                LinkSpec::veth(&veth)
                    .peer(
                        VethPeer::new(&ep.ifname)
                            .netns(&sandbox.ns)
                            .mac(ep.mac)
                            .mtu(mtu),
                    )
                    .master(bridge.index)
                    .mtu(mtu)
                    .up(),
            )
            .await;
        if let Err(e) = added {
            unisolate().await;
            return Err(DriverError::kernel(&net.name)(e));
        }
        let inside = &sandbox.handle;
        // No link-local address for an IPv4-only endpoint: see the helper.
        let configured = super::configure_sandbox_interface(inside, ep).await;
        match configured {
            Ok(ifindex) => Ok(Joined {
                ifindex: Some(ifindex),
                gateway_v4: net.ipv4().and_then(|s| s.gateway).and_then(|g| match g {
                    std::net::IpAddr::V4(g) => Some(g),
                    std::net::IpAddr::V6(_) => None,
                }),
                gateway_v6: net.ipv6().and_then(|s| s.gateway).and_then(|g| match g {
                    std::net::IpAddr::V6(g) => Some(g),
                    std::net::IpAddr::V4(_) => None,
                }),
            }),
            Err(e) => {
                if let Err(undo) = links.delete_by_name(&veth).await {
                    tracing::warn!(veth = %veth, error = %undo, "rollback of veth creation failed");
                }
                unisolate().await;
                Err(DriverError::kernel(&net.name)(e))
            }
        }
    }

    async fn leave(&self, net: &NetworkInfo, ep: &EndpointInfo) -> Result<(), DriverError> {
        let veth = host_veth_name(ep);
        match self.host.link().delete_by_name(&veth).await {
            Ok(()) => {}
            // The pair is gone already: the sandbox's namespace was destroyed with it.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(DriverError::kernel(&net.name)(e)),
        }
        if is_isolated(net) {
            self.firewall
                .release_port(&veth)
                .await
                .map_err(DriverError::kernel(&net.name))?;
        }
        Ok(())
    }

    /// The host ends of the endpoints' veths go into a fresh link group, and the group is
    /// deleted in one request (`ip link del group N`): one teardown for the lot. Each endpoint's
    /// `leave` afterwards only releases what else it holds (an isolated port).
    async fn remove_interfaces<'a>(
        &self,
        endpoints: &[(&'a NetworkInfo, &'a EndpointInfo)],
    ) -> Result<(), DriverError> {
        let Some((first, _)) = endpoints.first() else {
            return Ok(());
        };
        let links = self.host.link();
        let group = batch_group();
        let veths: Vec<String> = endpoints.iter().map(|(_, ep)| host_veth_name(ep)).collect();
        // Pipelined: the requests share one netlink socket and are answered in order.
        let grouped = futures::future::join_all(
            veths
                .iter()
                .map(|veth| links.set_group_by_name(veth, group)),
        )
        .await;
        let mut moved = Vec::new();
        let mut failed = None;
        for (veth, result) in veths.iter().zip(grouped) {
            match result {
                Ok(()) => moved.push(veth),
                // Gone already: its sandbox's namespace was destroyed with it.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let deleted = match failed {
            None if moved.is_empty() => return Ok(()),
            None => links.delete_group(group).await,
            Some(e) => Err(e),
        };
        if let Err(e) = deleted {
            // Back to the default group, so nothing is left in a group no one will delete.
            for veth in moved {
                if let Err(undo) = links.set_group_by_name(veth, 0).await {
                    tracing::warn!(veth = %veth, error = %undo, "taking a veth out of a batch group");
                }
            }
            return Err(DriverError::kernel(&first.name)(e.within(format!(
                "removing {} veths as link group {group}",
                endpoints.len()
            ))));
        }
        Ok(())
    }

    async fn program_external_connectivity(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
    ) -> Result<(), DriverError> {
        if ep.ports.is_empty() {
            return Ok(());
        }
        let ports = FwPort::of_endpoint(net, ep).map_err(|reason| DriverError::Unsupported {
            network: net.name.clone(),
            driver: DriverKind::Bridge,
            reason,
        })?;
        // A container reaching its own published port through the host: with br_netfilter,
        // the DNATed frame is bridged back out of the port it came in on.
        let links = self.host.link();
        let veth = links
            .get(&host_veth_name(ep))
            .await
            .map_err(DriverError::kernel(&net.name))?;
        links
            .set_hairpin(veth.index, true)
            .await
            .map_err(DriverError::kernel(&net.name))?;
        self.firewall.publish(&ports).await.map_err(|e| {
            DriverError::kernel(&net.name)(e.within(format!(
                "publishing the ports of endpoint {}",
                short(&ep.id)
            )))
        })
    }

    async fn revoke_external_connectivity(
        &self,
        net: &NetworkInfo,
        ep: &EndpointInfo,
    ) -> Result<(), DriverError> {
        if ep.ports.is_empty() {
            return Ok(());
        }
        // Ports that could not have been published were never published.
        let Ok(ports) = FwPort::of_endpoint(net, ep) else {
            return Ok(());
        };
        self.firewall.unpublish(&ports).await.map_err(|e| {
            DriverError::kernel(&net.name)(e.within(format!(
                "withdrawing the ports of endpoint {}",
                short(&ep.id)
            )))
        })
    }
}

impl BridgeDriver {
    /// Creates the network's bridge with its gateway addresses and sysctls, and (if
    /// `firewall`) adds the network to the firewall; deletes the bridge again on failure.
    async fn make_bridge(&self, net: &NetworkInfo, firewall: bool) -> Result<(), DriverError> {
        let opts = options(net)?;
        let name = bridge_name(net);
        let links = self.host.link();
        // What the kernel would do over every port on each attach, it is spared: a bridge whose
        // MAC address was set keeps it instead of taking the lowest MAC of its ports, and one
        // without multicast snooping re-arms no query timers on its ports.
        links
            .add(
                LinkSpec::bridge(&name)
                    .mtu(opts.mtu())
                    .mac(bridge_mac(net))
                    .multicast_snooping(opts.multicast_snooping())
                    .up(),
            )
            .await
            .map_err(DriverError::kernel(&net.name))?;
        let configured: Result<(), SysError> = async {
            let bridge = links.get(&name).await?;
            for s in &net.subnets {
                if let Some(addr) = s.gateway_address()? {
                    self.host.address().add(bridge.index, addr).await?;
                }
            }
            self.enable_forwarding(net, &name).await?;
            if firewall {
                self.firewall.add_network(&FwNetwork::of(net)).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = configured {
            // Deleting the bridge takes its addresses with it.
            if let Err(undo) = links.delete_by_name(&name).await {
                tracing::warn!(bridge = %name, error = %undo, "rollback of bridge creation failed");
            }
            return Err(DriverError::kernel(&net.name)(e));
        }
        Ok(())
    }

    /// [`Driver::reconcile`] for one network: the bridge is made again if it is gone (its
    /// ports were released by the kernel then: they are enslaved again), brought up, given
    /// back its gateway addresses; the host ends of existing endpoints are enslaved and up,
    /// with hairpin where ports are published. Endpoints whose veth is gone are left to the
    /// controller. Returns the bridge's index.
    async fn restore_bridge(&self, n: &NetworkState) -> Result<u32, DriverError> {
        let net = &n.info;
        let kernel = || DriverError::kernel(&net.name);
        let links = self.host.link();
        let name = bridge_name(net);
        let bridge = match links.get(&name).await {
            Ok(b) => b,
            Err(e) if e.is_not_found() => {
                tracing::warn!(bridge = %name, network = %net.name, "bridge is gone: making it again");
                self.make_bridge(net, false).await?;
                links.get(&name).await.map_err(kernel())?
            }
            Err(e) => return Err(kernel()(e)),
        };
        if !bridge.up {
            links.set_up(bridge.index).await.map_err(kernel())?;
        }
        let have: Vec<IpNetwork> = self
            .host
            .address()
            .list_on(bridge.index)
            .await
            .map_err(kernel())?
            .into_iter()
            .map(|a| a.addr)
            .collect();
        for s in &net.subnets {
            let Some(addr) = s.gateway_address().map_err(kernel())? else {
                continue;
            };
            if !have.contains(&addr) {
                self.host
                    .address()
                    .add(bridge.index, addr)
                    .await
                    .map_err(kernel())?;
            }
        }
        for ep in &n.endpoints {
            let veth = match links.get(&host_veth_name(ep)).await {
                Ok(v) => v,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(kernel()(e)),
            };
            if veth.master != Some(bridge.index) {
                links
                    .set_master(veth.index, bridge.index)
                    .await
                    .map_err(kernel())?;
            }
            if !veth.up {
                links.set_up(veth.index).await.map_err(kernel())?;
            }
            if !ep.ports.is_empty() && !links.hairpin(veth.index).await.unwrap_or(false) {
                links
                    .set_hairpin(veth.index, true)
                    .await
                    .map_err(kernel())?;
            }
        }
        Ok(bridge.index)
    }
}

/// A link group for one batch removal: random, so that two batches (or two controllers) do not
/// share one, and never 0 (every link's default group). A link someone else put in the same
/// group of 2^32 would go with the batch; wharf's own links are all in group 0.
fn batch_group() -> u32 {
    let random = getrandom::u32().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            ^ std::process::id()
    });
    random.max(1)
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}
