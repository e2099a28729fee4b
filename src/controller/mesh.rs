//! The routing mesh: a service's published port is reached through every host's addresses and
//! balanced over all its replicas, wherever they run.
//!
//! Docker's layout, with nftables where Docker uses IPVS (absent from this kernel):
//!
//! - The `ingress` overlay ([`INGRESS_NETWORK`], created by wharf, predefined, not attachable)
//!   spans every host. Each replica of a service with published ports gets an endpoint on it
//!   (no names there), and each host has one sandbox on it, `ingress-sbox` ([`INGRESS_SANDBOX`]),
//!   which is also on the host's egress bridge `wharf_gwbridge` (as every sandbox on a
//!   non-internal overlay) and forwards (`net.ipv4.ip_forward=1` in its namespace only).
//! - On the host, the published port is an ordinary published port of `ingress-sbox`'s egress
//!   bridge endpoint (the bridge firewall's maps: any host address, port P -> its egress
//!   address, port P), so traffic from outside, and from the host, reaches `ingress-sbox`.
//! - In `ingress-sbox`, table `ip wharf-mesh`: the `prerouting` chain DNATs port P to
//!   `numgen inc mod N map @be_<proto>_<P>` (the N replicas' ingress addresses, every host's,
//!   in a fixed order), port T (the target port); `postrouting` masquerades what it DNATed out
//!   of its ingress interface, so a replica answers `ingress-sbox` and the reply goes back the
//!   way it came (over VXLAN for a replica on another host); `forward` (policy drop) passes
//!   only those DNATed connections, so the sandbox routes nothing else. Conntrack keeps each connection
//!   on the replica it got; each new connection takes the next replica.
//! - Every host rebuilds its table (one atomic batch) whenever a service's ports or replicas'
//!   ingress endpoints change: the watcher sees both in the cluster store.
//!
//! Differences from Docker: no virtual IP per service on its networks (names resolve to the
//! replicas, Docker's `dnsrr` mode); the balancing is round robin per host (IPVS's default
//! `rr` too); the host-side hop uses the bridge firewall's published-port maps instead of a
//! `DOCKER-INGRESS` chain; `ingress-sbox` is a wharf sandbox that [`Controller::sandbox`]
//! shows, created by [`Controller::join_routing_mesh`] or with the first published service.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use super::{
    Controller, EndpointSpec, Error, GWBRIDGE_NETWORK, INGRESS_NETWORK, Joiner, NetworkSpec,
    ObjectKind, Result, SandboxSpec,
};
use crate::driver::{DriverKind, DriverOptions, OverlayOptions, PortMapping, Protocol};
use crate::sys::nft::{
    Batch, Chain, ChainType, CtStatus, DataType, Elem, Hook, IPPROTO_TCP, IPPROTO_UDP, IpVersion,
    NftHandle, Policy, Rule, Set, Table, Value, priority,
};

/// The name of each host's routing-mesh sandbox.
pub const INGRESS_SANDBOX: &str = "ingress-sbox";

/// The mesh's table in `ingress-sbox`.
const MESH_TABLE: &str = "wharf-mesh";

/// A published port as this host's routing mesh serves it ([`Controller::routing_mesh`]; on
/// a Docker host, what `ipvsadm -L` shows in the ingress sandbox).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MeshPort {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The port on this host's addresses.
    pub published: u16,
    /// The replicas' port.
    pub target: u16,
    /// The replicas' ingress addresses, every host's, in balancing order.
    pub backends: Vec<Ipv4Addr>,
}

/// The balancing table: published port -> (target port, the replicas' ingress addresses).
pub(crate) type Balancing = BTreeMap<(Protocol, u16), (u16, Vec<Ipv4Addr>)>;

/// What this host's mesh looks like, as last programmed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct MeshState {
    /// Host ports published to `ingress-sbox`.
    pub host_ports: BTreeSet<(Protocol, u16)>,
    /// The balancing table: port -> (target port, backends).
    pub table: Option<Balancing>,
}

impl Controller {
    /// Creates the `ingress` overlay if the cluster has none yet (any host may; a race
    /// between hosts is decided by the store, the loser learns the winner's).
    pub(crate) async fn ensure_ingress(&self) -> Result<()> {
        if self.ingress_known().await? {
            return Ok(());
        }
        let _guard = self.inner.network_lock.lock().await;
        if self.ingress_known().await? {
            return Ok(());
        }
        let spec = NetworkSpec {
            name: INGRESS_NETWORK.into(),
            driver: DriverOptions::Overlay(OverlayOptions::default()),
            ..NetworkSpec::default()
        };
        match self.create_cluster_network(spec, true).await {
            Ok(_) => {
                tracing::info!("routing mesh network {INGRESS_NETWORK} created");
                Ok(())
            }
            Err(Error::AlreadyExists { .. }) => {
                self.learn_from_store(INGRESS_NETWORK).await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn ingress_known(&self) -> Result<bool> {
        if self
            .records()
            .network_by_name(INGRESS_NETWORK)
            .is_some_and(super::is_ingress)
        {
            return Ok(true);
        }
        self.learn_from_store(INGRESS_NETWORK).await
    }

    /// The id of the `ingress` network (created if missing).
    pub(crate) async fn ingress_id(&self) -> Result<String> {
        self.ensure_ingress().await?;
        self.records()
            .network_by_name(INGRESS_NETWORK)
            .filter(|n| super::is_ingress(n))
            .map(|n| n.info.id.clone())
            .ok_or_else(|| Error::NotFound {
                kind: ObjectKind::Network,
                name: INGRESS_NETWORK.into(),
            })
    }

    /// The published ports this host serves now, with the replicas it balances them over:
    /// programmed in `ingress-sbox` and published on the host.
    pub async fn routing_mesh(&self) -> Vec<MeshPort> {
        let Some(cluster) = self.cluster() else {
            return Vec::new();
        };
        let state = cluster.mesh.lock().await;
        let Some(table) = &state.table else {
            return Vec::new();
        };
        table
            .iter()
            .filter(|(p, _)| state.host_ports.contains(p))
            .map(|((protocol, published), (target, backends))| MeshPort {
                protocol: *protocol,
                published: *published,
                target: *target,
                backends: backends.clone(),
            })
            .collect()
    }

    /// Joins this host to the routing mesh (part of Docker's `swarm init` / `join`): the
    /// `ingress` overlay exists afterwards (created if the cluster has none) and so do this
    /// host's `ingress-sbox` and the egress bridge `wharf_gwbridge`. Services with published
    /// ports do this by themselves on every host.
    pub async fn join_routing_mesh(&self) -> Result<()> {
        if self.cluster().is_none() {
            return Err(Error::InvalidRequest {
                kind: ObjectKind::Network,
                name: INGRESS_NETWORK.into(),
                reason: "the routing mesh needs a controller in cluster mode".into(),
            });
        }
        let ingress = self.ingress_id().await?;
        if self.records().sandbox_by_name(INGRESS_SANDBOX).is_none() {
            self.create_sandbox(SandboxSpec::new(INGRESS_SANDBOX))
                .await?;
        }
        let connected = {
            let records = self.records();
            records.sandbox_by_name(INGRESS_SANDBOX).is_some_and(|sb| {
                records
                    .endpoints_of(&sb.id)
                    .iter()
                    .any(|e| e.network_id == ingress)
            })
        };
        if !connected {
            self.connect_as(
                INGRESS_SANDBOX,
                &ingress,
                EndpointSpec::default(),
                Joiner::Task,
            )
            .await?;
        }
        let ns = self.sandbox_netns(INGRESS_SANDBOX)?;
        crate::sys::sysctl::write(&ns, "net.ipv4.ip_forward", "1").await?;
        Ok(())
    }

    /// Brings this host's mesh in line with the services' published ports and their replicas'
    /// ingress endpoints. `Ok(false)`: something failed (retried).
    pub(crate) async fn reconcile_mesh(&self, services: &[super::service::ServiceRecord]) -> bool {
        let Some(cluster) = self.cluster() else {
            return true;
        };
        let published: Vec<&super::service::ServiceRecord> =
            services.iter().filter(|s| !s.ports.is_empty()).collect();
        let mut state = cluster.mesh.lock().await;
        if published.is_empty() && state.host_ports.is_empty() && state.table.is_none() {
            return true;
        }
        if !published.is_empty() {
            if let Err(e) = self.join_routing_mesh().await {
                tracing::warn!(error = %e, "joining the routing mesh; will retry");
                return false;
            }
        }
        let Some(ingress) = self
            .records()
            .network_by_name(INGRESS_NETWORK)
            .filter(|n| super::is_ingress(n))
            .map(|n| n.info.id.clone())
        else {
            return published.is_empty();
        };

        // The balancing table: every replica's ingress address, every host's.
        let mut wanted: Balancing = BTreeMap::new();
        {
            let mirror = cluster.mirror();
            let eps = mirror.endpoints.get(&ingress);
            for s in &published {
                let tasks: BTreeSet<String> = s.tasks.iter().map(|t| s.task_name(t)).collect();
                let mut backends: Vec<Ipv4Addr> = eps
                    .into_iter()
                    .flat_map(|m| m.values())
                    .filter(|(_, e)| tasks.contains(&e.name))
                    .filter_map(|(_, e)| e.ipv4)
                    .collect();
                backends.sort();
                for p in &s.ports {
                    wanted.insert((p.protocol, p.published), (p.target, backends.clone()));
                }
            }
        }
        let mut ok = true;
        if state.table.as_ref() != Some(&wanted) {
            match self.program_mesh_table(&ingress, &wanted).await {
                Ok(()) => state.table = Some(wanted.clone()),
                Err(e) => {
                    tracing::warn!(error = %e, "programming the routing mesh; will retry");
                    state.table = None;
                    ok = false;
                }
            }
        }

        // The host's ports, to ingress-sbox.
        let host_wanted: BTreeSet<(Protocol, u16)> = wanted.keys().copied().collect();
        let remove: Vec<(Protocol, u16)> =
            state.host_ports.difference(&host_wanted).copied().collect();
        let add: Vec<(Protocol, u16)> =
            host_wanted.difference(&state.host_ports).copied().collect();
        for p in remove {
            match self.mesh_host_port(p, false).await {
                Ok(()) => {
                    state.host_ports.remove(&p);
                }
                Err(e) => {
                    tracing::warn!(port = p.1, error = %e, "unpublishing a mesh port; will retry");
                    ok = false;
                }
            }
        }
        for p in add {
            match self.mesh_host_port(p, true).await {
                Ok(()) => {
                    state.host_ports.insert(p);
                }
                Err(e) => {
                    tracing::warn!(port = p.1, error = %e, "publishing a mesh port; will retry");
                    ok = false;
                }
            }
        }
        ok
    }

    /// Publishes (or withdraws) host port `p` to `ingress-sbox`'s egress-bridge address, as
    /// a container's published port. A publish first withdraws what a previous controller may
    /// have left for the same port, so it is idempotent.
    async fn mesh_host_port(&self, p: (Protocol, u16), publish: bool) -> Result<()> {
        let (net, ep) = {
            let records = self.records();
            let sb = records.sandbox(INGRESS_SANDBOX)?;
            let net = records.network(GWBRIDGE_NETWORK)?.clone();
            let ep = records
                .endpoints_of(&sb.id)
                .into_iter()
                .find(|e| e.network_id == net.info.id)
                .cloned()
                .ok_or_else(|| Error::NotConnected {
                    sandbox: INGRESS_SANDBOX.into(),
                    network: GWBRIDGE_NETWORK.into(),
                })?;
            (net, ep)
        };
        let mut info = ep.info.clone();
        info.ports = vec![PortMapping {
            protocol: p.0,
            host_port: p.1,
            container_port: p.1,
            count: 1,
            host_ip: None,
        }];
        let driver = self.driver(DriverKind::Bridge)?;
        // Withdrawing what is not there fails; that is fine here.
        let revoked = driver.revoke_external_connectivity(&net.info, &info).await;
        if !publish {
            return revoked.map_err(Error::from);
        }
        driver
            .program_external_connectivity(&net.info, &info)
            .await?;
        Ok(())
    }

    /// Rebuilds the balancing table in `ingress-sbox` in one atomic batch.
    async fn program_mesh_table(&self, ingress: &str, wanted: &Balancing) -> Result<()> {
        let ns = self.sandbox_netns(INGRESS_SANDBOX)?;
        let ifname = self.endpoint(INGRESS_SANDBOX, ingress).map(|e| e.ifname)?;
        let nft = NftHandle::open(&ns).await?;
        let t = Table::ip(MESH_TABLE);
        let mut b = Batch::new();
        b.destroy_table(&t);
        b.add_table(&t);
        b.add_chain(&Chain::base(
            &t,
            "prerouting",
            Hook::Prerouting,
            ChainType::Nat,
            priority::DSTNAT,
        ));
        b.add_chain(&Chain::base(
            &t,
            "postrouting",
            Hook::Postrouting,
            ChainType::Nat,
            priority::SRCNAT,
        ));
        // The sandbox forwards only the mesh's own connections (both directions carry the
        // DNAT status): nobody uses it as a router between ingress and the egress bridge.
        b.add_chain(
            &Chain::base(
                &t,
                "forward",
                Hook::Forward,
                ChainType::Filter,
                priority::FILTER,
            )
            .policy(Policy::Drop),
        );
        b.add_rule(
            &Rule::new(&t, "forward")
                .ct_status_in(CtStatus::DNAT)
                .accept(),
        );
        for ((proto, port), (target, backends)) in wanted {
            if backends.is_empty() {
                continue;
            }
            let map = Set::map(
                &t,
                format!("be_{proto}_{port}"),
                DataType::Mark,
                DataType::Ipv4Addr,
            );
            b.add_set(&map);
            let elems: Vec<Elem> = backends
                .iter()
                .enumerate()
                .map(|(i, ip)| Elem::new([Value::Mark(i as u32)]).to([Value::Ipv4(*ip)]))
                .collect();
            b.add_elements(&map, &elems);
            let rule = Rule::new(&t, "prerouting").l4proto_eq(match proto {
                Protocol::Tcp => IPPROTO_TCP,
                Protocol::Udp => IPPROTO_UDP,
            });
            let rule = match proto {
                Protocol::Tcp => rule.tcp_dport_eq(*port),
                Protocol::Udp => rule.udp_dport_eq(*port),
            };
            b.add_rule(&rule.dnat_numgen(
                backends.len() as u32,
                &map.name,
                IpVersion::V4,
                Some(*target),
            ));
        }
        b.add_rule(
            &Rule::new(&t, "postrouting")
                .oifname_eq(&ifname)
                .ct_status_in(CtStatus::DNAT)
                .masquerade(),
        );
        nft.apply(&b).await?;
        tracing::debug!(ports = wanted.len(), "routing mesh programmed");
        Ok(())
    }
}
