//! Reconciliation: the kernel made to match the records again.
//!
//! At open, [`Controller::recover_journal`] reads the journal ([`super::journal`]): what a
//! crash interrupted is finished or undone. A `pending` endpoint whose kernel objects all exist
//! is rolled forward (the caller may have seen success), one with only some of them is rolled
//! back (remnants deleted, addresses released); a `removing` endpoint, sandbox or network is
//! removed; an `active` endpoint whose interfaces are gone while its sandbox lives is joined
//! again with the same addresses and MAC. IPAM subnets and addresses that no record holds (a
//! crash between IPAM and the record) are released. Then [`Controller::reconcile_kernel`] has
//! every driver restore its per-network objects (a bridge deleted from outside, wharf's
//! flushed nftables tables with every network, endpoint and port element) and, at open only,
//! prune what nothing needs (stale elements in wharf's own tables, `veth…` ports of wharf's
//! bridges that no endpoint owns). Objects wharf did not make are never touched: wharf finds
//! its own by the journal, its own tables and its own bridges, never by a name pattern alone.
//!
//! Endpoints of cluster networks wait for a second pass, [`Controller::recover_cluster_journal`],
//! run once the cluster watcher's first listing made those networks known: the same decisions,
//! plus withdrawing or publishing the endpoint's record in the cluster store, releasing its
//! cluster addresses only while they are still its own, making the sandboxes' egress-bridge
//! endpoints agree with their overlays, and removing what this node left in the cluster store
//! or as an overlay's data plane without a local endpoint.
//!
//! [`Controller::reconcile`] is the public, online version (firewall drift): it restores but
//! does not prune, under the network lock and each sandbox's lock in turn, so it may run
//! beside any other call.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::journal::{addresses, local_addresses};
use super::model::{EndpointRecord, NetworkRecord, SandboxRecord, Status, StoredNamespace};
use super::{Controller, KEY_ENDPOINTS, KEY_NETWORKS, KEY_SANDBOXES, Result, records};
use crate::driver::bridge::{bridge_name, firewall};
use crate::driver::overlay;
use crate::driver::{DriverKind, NetworkState, SandboxContext};
use crate::store::Op;
use crate::sys::NetNs;
use crate::sys::events::{KernelEvent, KernelEvents};
use crate::sys::rtnl::{IpVersion, Route};

impl Controller {
    /// Makes the kernel match wharf's records again, without waiting for a restart: recreates
    /// bridges deleted from outside, restores wharf's nftables tables (static rules and every
    /// network, endpoint and published-port element) if someone flushed or edited them, and
    /// joins endpoints whose interfaces were deleted again (same addresses and MAC). Objects
    /// that are right are left as they are, so traffic that flows keeps flowing. Runs beside
    /// other calls; [`Controller::open`] does the same (and more) at every start.
    pub async fn reconcile(&self) -> Result<()> {
        self.reconcile_kernel(false).await
    }

    /// The sandbox's kernel handles, if its namespace is there.
    pub(super) fn sandbox_context(&self, sb: &SandboxRecord) -> Option<SandboxContext> {
        let live = self.live();
        let l = live.get(&sb.id)?;
        Some(SandboxContext {
            name: sb.name.clone(),
            ns: l.ns.clone()?,
            handle: l.handle.clone()?,
            is_host: sb.namespace == StoredNamespace::Host,
        })
    }

    /// At open, before anything else uses the records: finishes or undoes every operation a
    /// crash interrupted, then releases IPAM reservations no record holds.
    pub(super) async fn recover_journal(&self) -> Result<()> {
        let (networks, sandboxes, mut endpoints) = {
            let r = self.records();
            (
                r.networks.clone(),
                r.sandboxes().clone(),
                r.endpoints().values().cloned().collect::<Vec<_>>(),
            )
        };
        endpoints.sort_by_key(|e| e.seq);
        for ep in &endpoints {
            self.recover_endpoint(ep, &networks, &sandboxes).await?;
        }
        for sb in sandboxes.values() {
            self.recover_sandbox(sb).await?;
        }
        for net in networks.values() {
            self.recover_network(net).await?;
        }
        self.release_unheld_addresses().await;
        Ok(())
    }

    async fn recover_endpoint(
        &self,
        ep: &EndpointRecord,
        networks: &HashMap<String, NetworkRecord>,
        sandboxes: &HashMap<String, SandboxRecord>,
    ) -> Result<()> {
        let id = &ep.info.id;
        if !networks.contains_key(&ep.network_id) && self.cluster().is_some() {
            // A cluster network lives in the cluster store, learnt after this: its endpoints
            // are recovered once the cluster's records are listed (`recover_cluster_journal`).
            return Ok(());
        }
        let (Some(net), Some(sb)) = (networks.get(&ep.network_id), sandboxes.get(&ep.sandbox_id))
        else {
            // Its network or sandbox record is gone: nothing can use it.
            tracing::warn!(endpoint = %id, "endpoint without its network or sandbox: removing its record");
            return self.delete_endpoint_record(id).await;
        };
        let driver = self.driver(net.info.options.kind())?;
        let ctx = self.sandbox_context(sb);
        let gone = ep.status == Status::Removing || sb.status == Status::Removing;
        let present = match (&ctx, gone || ep.status == Status::Active) {
            (Some(ctx), false) => driver.endpoint_present(&net.info, &ep.info, ctx).await?,
            _ => false,
        };
        match (ep.status, present) {
            // Completed: kept. One whose interfaces are gone is joined again once the drivers
            // restored their networks (`repair_sandbox`); one whose namespace is gone stays
            // until it is disconnected (Docker keeps a stopped container's endpoints too).
            (Status::Active, _) if !gone => {}
            (Status::Pending, true) => {
                tracing::info!(sandbox = %sb.name, network = %net.info.name, "rolling an interrupted attach forward");
                let mut active = ep.clone();
                active.status = Status::Active;
                self.journal_attached(&active, None).await?;
                self.records_mut().insert_endpoint(active);
            }
            _ => {
                tracing::info!(sandbox = %sb.name, network = %net.info.name, status = ?ep.status, "removing an interrupted endpoint");
                let _ = driver
                    .revoke_external_connectivity(&net.info, &ep.info)
                    .await;
                driver
                    .leave_sandbox(&net.info, &ep.info, ctx.as_ref())
                    .await?;
                self.inner
                    .store
                    .apply(vec![Op::Delete {
                        key: format!("{KEY_ENDPOINTS}{id}"),
                    }])
                    .await?;
                self.release_addresses(&net.info, &addresses(&ep.info))
                    .await;
                self.records_mut().remove_endpoint(id);
            }
        }
        Ok(())
    }

    /// The second recovery pass at open, for endpoints of cluster networks, once the cluster
    /// watcher's first listing made those networks known (called by `start_cluster`, before
    /// this host's endpoint records are published again). The same decisions as
    /// [`Controller::recover_journal`], plus the cluster's share:
    /// - a `pending` endpoint whose kernel objects all exist is rolled forward (its
    ///   [`super::ClusterEndpoint`] record is then published with the others);
    /// - a `pending` one with only some of them, a `removing` one, and one whose sandbox or
    ///   network is gone are rolled back or finished: record withdrawn from the cluster store,
    ///   remnants deleted (the network's data plane with its last local endpoint), its cluster
    ///   addresses released if they are still its own, local record deleted;
    /// - an `active` one whose interfaces are gone while its sandbox lives is joined again (and
    ///   the network's peer entries programmed from the kernel);
    /// - then every sandbox's egress-bridge endpoint is made to agree with its overlays (one
    ///   if and only if it is on a non-internal overlay), records and addresses this node left
    ///   in the cluster store without a local endpoint are removed, and the data-plane
    ///   namespace of a cluster network with no local endpoint is deleted.
    pub(super) async fn recover_cluster_journal(&self) -> Result<()> {
        if self.cluster().is_none() {
            return Ok(());
        }
        let mut endpoints: Vec<EndpointRecord> = {
            let r = self.records();
            r.endpoints()
                .values()
                .filter(|e| {
                    r.networks
                        .get(&e.network_id)
                        .is_none_or(|n| n.info.options.kind().is_cluster_scoped())
                })
                .cloned()
                .collect()
        };
        endpoints.sort_by_key(|e| e.seq);
        self.remove_plane_placeholders();
        for ep in &endpoints {
            self.recover_cluster_endpoint(ep).await?;
        }
        self.settle_egress_endpoints().await?;
        self.remove_cluster_orphans().await?;
        self.remove_unused_planes().await;
        Ok(())
    }

    async fn recover_cluster_endpoint(&self, ep: &EndpointRecord) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Ok(());
        };
        let id = &ep.info.id;
        let (net, sb) = {
            let r = self.records();
            (
                r.networks.get(&ep.network_id).cloned(),
                r.sandboxes().get(&ep.sandbox_id).cloned(),
            )
        };
        let Some(net) = net else {
            // Deleted from the cluster store (possible while no host had published an endpoint
            // on it): nothing here can use the endpoint; its data plane, if any, stays.
            tracing::warn!(endpoint = %id, network = %ep.network_id, "endpoint of a cluster network that no longer exists: removing its record");
            self.forget_cluster_endpoint(ep, &ep.network_id).await?;
            return Ok(());
        };
        let info = &net.info;
        let driver = self.driver(info.options.kind())?;
        let ctx = sb.as_ref().and_then(|sb| self.sandbox_context(sb));
        let gone = ep.status == Status::Removing
            || sb.as_ref().is_none_or(|sb| sb.status == Status::Removing);
        let present = match (&ctx, gone) {
            (Some(ctx), false) => driver.endpoint_present(info, &ep.info, ctx).await?,
            _ => false,
        };
        let sb_name = sb.as_ref().map_or("", |s| s.name.as_str());
        let mut guard = cluster.lock(&info.id).await;
        match (ep.status, present, &ctx) {
            (Status::Active, true, _) if !gone => {}
            // Its namespace is gone: kept until disconnected, as for local networks.
            (Status::Active, false, None) if !gone => {}
            (Status::Active, false, Some(ctx)) if !gone => {
                tracing::warn!(sandbox = %sb_name, network = %info.name, "endpoint incomplete: joining it again");
                self.rejoin(info, ep, ctx).await?;
                self.cluster_rejoined(&mut guard, &info.id).await;
            }
            (Status::Pending, true, _) if !gone => {
                tracing::info!(sandbox = %sb_name, network = %info.name, "rolling an interrupted attach forward");
                let mut active = ep.clone();
                active.status = Status::Active;
                self.journal_attached(&active, None).await?;
                self.records_mut().insert_endpoint(active);
            }
            _ => {
                tracing::info!(sandbox = %sb_name, network = %info.name, status = ?ep.status, "removing an interrupted endpoint");
                // As a disconnect does: withdrawn first, so the others stop sending to it.
                self.withdraw_endpoint(&info.id, id).await?;
                let _ = driver.revoke_external_connectivity(info, &ep.info).await;
                driver.leave_sandbox(info, &ep.info, ctx.as_ref()).await?;
                self.forget_cluster_endpoint(ep, &info.id).await?;
                self.inner
                    .resolver
                    .remove_endpoint(&info.id, &ep.sandbox_id);
                self.cluster_left(&mut guard, &info.id);
            }
        }
        Ok(())
    }

    /// The end of a cluster endpoint's rollback: its record withdrawn (again: idempotent), its
    /// cluster addresses released while still its own, its local record deleted.
    async fn forget_cluster_endpoint(&self, ep: &EndpointRecord, network_id: &str) -> Result<()> {
        let id = &ep.info.id;
        self.withdraw_endpoint(network_id, id).await?;
        self.release_owned_addresses(network_id, id, &addresses(&ep.info))
            .await;
        self.delete_endpoint_record(id).await
    }

    /// Deletes an endpoint's record, durably, and forgets it.
    async fn delete_endpoint_record(&self, id: &str) -> Result<()> {
        self.inner
            .store
            .apply(vec![Op::Delete {
                key: format!("{KEY_ENDPOINTS}{id}"),
            }])
            .await?;
        self.records_mut().remove_endpoint(id);
        Ok(())
    }

    /// Makes every sandbox's egress-bridge endpoint agree with its overlays after recovery: a
    /// crash between an overlay's connect or disconnect and the egress bridge's (they are two
    /// operations, each journalled) leaves a sandbox on a non-internal overlay without its way
    /// out, or one on the egress bridge with no overlay left.
    async fn settle_egress_endpoints(&self) -> Result<()> {
        let mut sandboxes: Vec<SandboxRecord> =
            self.records().sandboxes().values().cloned().collect();
        sandboxes.sort_by(|a, b| a.name.cmp(&b.name));
        for sb in sandboxes {
            let lock = self.sandbox_lock(&sb.name);
            let _guard = lock.lock().await;
            let needs = self.needs_gwbridge(&sb.id);
            match self.gwbridge_endpoint(&sb.id) {
                None if needs && self.sandbox_context(&sb).is_some() => {
                    tracing::info!(sandbox = %sb.name, "joining the egress bridge an interrupted connect did not reach");
                    self.ensure_gwbridge().await?;
                    self.connect_locked(&sb.id, super::GWBRIDGE_NETWORK, Default::default())
                        .await?;
                }
                Some(ep) if !needs => {
                    tracing::info!(sandbox = %sb.name, "leaving the egress bridge an interrupted disconnect did not");
                    self.disconnect_locked(&ep).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes the namespace files of overlay data planes that hold no namespace: a process
    /// killed inside [`NetNs::create`], between making the mount target and mounting the new
    /// namespace on it, leaves an empty file that no open accepts (and that would fail every
    /// later leave and join of the network here). Only the driver's own names for the planes
    /// of networks this host knows are looked at.
    fn remove_plane_placeholders(&self) {
        let Ok(named) = NetNs::list_named() else {
            return;
        };
        let names: Vec<String> = self
            .records()
            .networks
            .values()
            .filter(|n| n.info.options.kind() == DriverKind::Overlay)
            .map(|n| overlay::netns_name(&self.inner.config.netns_prefix, &n.info))
            .filter(|name| named.contains(name))
            .collect();
        for name in names {
            if let Err(crate::sys::SysError::InvalidArgument { .. }) = NetNs::open(&name) {
                tracing::info!(netns = %name, "deleting the namespace file an interrupted creation left");
                if let Err(e) = NetNs::delete(&name) {
                    tracing::warn!(netns = %name, error = %e, "deleting an empty namespace file");
                }
            }
        }
    }

    /// Deletes the data-plane namespace of every cluster network that has no local endpoint
    /// (left by a first attach whose rollback found the plane half made, so the driver's leave
    /// did not recognise it). Best effort: failures are logged.
    async fn remove_unused_planes(&self) {
        let Ok(named) = NetNs::list_named() else {
            return;
        };
        let unused: Vec<crate::driver::NetworkInfo> = {
            let r = self.records();
            r.networks
                .values()
                .filter(|n| n.info.options.kind() == DriverKind::Overlay)
                .filter(|n| r.endpoints_on(&n.info.id).next().is_none())
                .map(|n| n.info.clone())
                .collect()
        };
        let Some(cluster) = self.cluster() else {
            return;
        };
        for info in unused {
            let name = overlay::netns_name(&self.inner.config.netns_prefix, &info);
            if !named.contains(&name) {
                continue;
            }
            let _guard = cluster.lock(&info.id).await;
            tracing::info!(network = %info.name, netns = %name, "deleting the data plane of an overlay without local endpoints");
            let deleted = match self.driver(info.options.kind()) {
                Ok(driver) => driver.delete_network(&info).await.map_err(Into::into),
                Err(e) => Err(e),
            };
            if let Err(e) = deleted {
                tracing::warn!(network = %info.name, error = %e, "deleting an unused overlay data plane");
            }
        }
    }

    /// Joins an endpoint whose kernel objects are (partly) gone again, as it was: remnants
    /// first deleted, then the same interface, addresses and MAC; its default route is put
    /// back by [`Controller::fix_default_routes`].
    async fn rejoin(
        &self,
        net: &crate::driver::NetworkInfo,
        ep: &EndpointRecord,
        ctx: &SandboxContext,
    ) -> Result<()> {
        let driver = self.driver(net.options.kind())?;
        let _ = driver.revoke_external_connectivity(net, &ep.info).await;
        driver.leave_sandbox(net, &ep.info, Some(ctx)).await?;
        driver.join(net, &ep.info, ctx).await?;
        driver.program_external_connectivity(net, &ep.info).await?;
        Ok(())
    }

    async fn recover_sandbox(&self, sb: &SandboxRecord) -> Result<()> {
        let has_ns = self
            .live()
            .get(&sb.id)
            .is_some_and(|l| l.ns.is_some() && l.handle.is_some());
        match (sb.status, has_ns) {
            (Status::Active, _) => Ok(()),
            (Status::Pending, true) => {
                tracing::info!(sandbox = %sb.name, "rolling an interrupted sandbox creation forward");
                let mut active = sb.clone();
                active.status = Status::Active;
                self.journal_put(KEY_SANDBOXES, &sb.id, &active, false)
                    .await?;
                self.records_mut().insert_sandbox(active);
                if let Err(e) = self.write_files(&sb.id) {
                    tracing::warn!(sandbox = %sb.name, error = %e, "writing sandbox files");
                }
                Ok(())
            }
            _ => {
                tracing::info!(sandbox = %sb.name, status = ?sb.status, "removing an interrupted sandbox");
                self.live_mut().remove(&sb.id);
                if let StoredNamespace::Owned(netns) = &sb.namespace {
                    match NetNs::delete(netns) {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e.into()),
                    }
                    let dir = self.inner.config.sandbox_files_dir.join(netns);
                    let _ = std::fs::remove_dir_all(dir);
                }
                self.journal_delete(KEY_SANDBOXES, &sb.id, true).await?;
                self.records_mut().remove_sandbox(&sb.id);
                Ok(())
            }
        }
    }

    async fn recover_network(&self, net: &NetworkRecord) -> Result<()> {
        if net.status == Status::Active {
            return Ok(());
        }
        let info = &net.info;
        let driver = self.driver(info.options.kind())?;
        if net.status == Status::Pending && driver.network_present(info).await? {
            tracing::info!(network = %info.name, "rolling an interrupted network creation forward");
            let mut active = net.clone();
            active.status = Status::Active;
            self.journal_put(KEY_NETWORKS, &info.id, &active, false)
                .await?;
            self.records_mut().networks.insert(info.id.clone(), active);
            return Ok(());
        }
        tracing::info!(network = %info.name, status = ?net.status, "removing an interrupted network");
        driver.delete_network(info).await?;
        self.release_subnets(info).await;
        self.journal_delete(KEY_NETWORKS, &info.id, true).await?;
        self.records_mut().networks.remove(&info.id);
        Ok(())
    }

    /// Releases the local IPAM's subnets of networks that have no record and addresses that no
    /// endpoint holds (a crash between IPAM and the record, or before the journal existed).
    async fn release_unheld_addresses(&self) {
        let (networks, held): (Vec<String>, Vec<(String, IpAddr)>) = {
            let r = self.records();
            (
                r.networks
                    .values()
                    .filter(|n| local_addresses(&n.info))
                    .map(|n| n.info.id.clone())
                    .collect(),
                r.endpoints()
                    .values()
                    .flat_map(|e| {
                        addresses(&e.info)
                            .into_iter()
                            .map(|ip| (e.network_id.clone(), ip))
                    })
                    .collect(),
            )
        };
        let ipam = &self.inner.ipam;
        for lease in ipam.all_subnets() {
            if !networks.contains(&lease.network_id) {
                tracing::warn!(subnet = %lease.subnet, network = %lease.network_name, "releasing the subnet of a network that does not exist");
                if let Err(e) = ipam.release_subnet(&lease.network_id, lease.subnet).await {
                    tracing::warn!(subnet = %lease.subnet, error = %e, "releasing an orphaned subnet");
                }
            }
        }
        for net in &networks {
            for ip in ipam.allocated(net) {
                if !held.iter().any(|(n, h)| n == net && *h == ip) {
                    tracing::warn!(%ip, network = %net, "releasing an address no endpoint holds");
                    if let Err(e) = ipam.release(net, ip).await {
                        tracing::warn!(%ip, error = %e, "releasing an orphaned address");
                    }
                }
            }
        }
    }

    /// Has every driver restore its networks' kernel objects (and, with `prune`, remove what
    /// nothing needs), joins endpoints whose interfaces are gone again, and puts default routes
    /// where the records say. Errors are collected: everything is tried, the first is returned.
    pub(super) async fn reconcile_kernel(&self, prune: bool) -> Result<()> {
        let mut first_error = None;
        {
            // No connect, disconnect or network change meanwhile: the snapshot is the truth.
            let _gate = self.inner.kernel_gate.write().await;
            let _networks = self.inner.network_lock.lock().await;
            if let Err(e) = self.reconcile_drivers(prune).await {
                tracing::warn!(error = %e, "reconciling the drivers' networks");
                first_error.get_or_insert(e);
            }
        }
        // Then sandbox by sandbox, each under its own lock (connects to others go on).
        let sandboxes: Vec<(String, String)> = self
            .records()
            .sandboxes()
            .values()
            .map(|s| (s.id.clone(), s.name.clone()))
            .collect();
        for (id, name) in sandboxes {
            let lock = self.sandbox_lock(&name);
            let _guard = lock.lock().await;
            if let Err(e) = self.repair_sandbox(&id).await {
                tracing::warn!(sandbox = %name, error = %e, "repairing a sandbox's endpoints");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn reconcile_drivers(&self, prune: bool) -> Result<()> {
        let mut by_kind: HashMap<DriverKind, Vec<NetworkState>> = HashMap::new();
        {
            let r = self.records();
            for kind in self.inner.drivers.keys() {
                by_kind.entry(*kind).or_default();
            }
            for net in r.networks.values() {
                let mut endpoints: Vec<&EndpointRecord> = r.endpoints_on(&net.info.id).collect();
                endpoints.sort_by_key(|e| e.seq);
                by_kind
                    .entry(net.info.options.kind())
                    .or_default()
                    .push(NetworkState {
                        info: net.info.clone(),
                        endpoints: endpoints.into_iter().map(|e| e.info.clone()).collect(),
                    });
            }
        }
        for (kind, states) in &by_kind {
            let Some(driver) = self.inner.drivers.get(kind) else {
                continue;
            };
            driver.reconcile(states, prune).await?;
        }
        Ok(())
    }

    /// Joins the sandbox's endpoints whose interfaces are gone again and fixes its default
    /// routes (sandbox lock held).
    async fn repair_sandbox(&self, id: &str) -> Result<()> {
        let (sb, endpoints) = {
            let r = self.records();
            let Some(sb) = r.sandboxes().get(id).cloned() else {
                return Ok(());
            };
            let eps: Vec<(EndpointRecord, NetworkRecord)> = r
                .endpoints_of(id)
                .into_iter()
                .filter_map(|e| Some((e.clone(), r.networks.get(&e.network_id)?.clone())))
                .collect();
            (sb, eps)
        };
        let Some(ctx) = self.sandbox_context(&sb) else {
            return Ok(());
        };
        for (ep, net) in &endpoints {
            let driver = self.driver(net.info.options.kind())?;
            // A cluster network's joins are ordered by its lock, and a rejoin may make its
            // data plane anew: its peer entries are then programmed from the kernel.
            let mut cluster_guard = match self.cluster() {
                Some(c) if net.info.options.kind().is_cluster_scoped() => {
                    Some(c.lock(&net.info.id).await)
                }
                _ => None,
            };
            if !driver.endpoint_present(&net.info, &ep.info, &ctx).await? {
                tracing::warn!(sandbox = %sb.name, network = %net.info.name, "endpoint incomplete: joining it again");
                self.rejoin(&net.info, ep, &ctx).await?;
                if let Some(guard) = cluster_guard.as_mut() {
                    self.cluster_rejoined(guard, &net.info.id).await;
                }
            }
        }
        self.fix_default_routes(&sb, &endpoints, &ctx).await
    }

    /// Makes the sandbox's default routes and its record agree: a route the kernel has through
    /// one of its endpoints names that endpoint as the owner; a sandbox without one gets it
    /// through its first endpoint that can carry it (as connect would have given it).
    async fn fix_default_routes(
        &self,
        sb: &SandboxRecord,
        endpoints: &[(EndpointRecord, NetworkRecord)],
        ctx: &SandboxContext,
    ) -> Result<()> {
        if ctx.is_host {
            return Ok(());
        }
        let h = &ctx.handle;
        let links = h.link().list().await?;
        let mut new = sb.clone();
        for v in [IpVersion::V4, IpVersion::V6] {
            let via: Option<String> = h
                .route()
                .list(v)
                .await?
                .into_iter()
                .filter(|r| r.dst.prefix() == 0)
                .filter_map(|r| r.oif)
                .filter_map(|oif| links.iter().find(|l| l.index == oif))
                .find_map(|l| {
                    endpoints
                        .iter()
                        .find(|(e, _)| e.info.ifname == l.name)
                        .map(|(e, _)| e.info.id.clone())
                });
            let owner = match via {
                Some(id) => Some(id),
                None => {
                    let mut added = None;
                    for (ep, net) in endpoints {
                        let info = &net.info;
                        if info.internal || info.options.kind().is_cluster_scoped() {
                            continue;
                        }
                        let gw = match v {
                            IpVersion::V4 => info.ipv4(),
                            IpVersion::V6 => info.ipv6(),
                        }
                        .and_then(|s| s.gateway);
                        let Some(link) = links.iter().find(|l| l.name == ep.info.ifname) else {
                            continue;
                        };
                        let route = match gw {
                            Some(IpAddr::V4(g)) => Route::default_v4(g),
                            Some(IpAddr::V6(g)) => Route::default_v6(g),
                            None => continue,
                        };
                        if h.route().add(route.oif(link.index)).await.is_ok() {
                            added = Some(ep.info.id.clone());
                            break;
                        }
                    }
                    added
                }
            };
            match v {
                IpVersion::V4 => new.gateway_v4 = owner,
                IpVersion::V6 => new.gateway_v6 = owner,
            }
        }
        if new != *sb {
            self.inner
                .store
                .apply_relaxed(vec![Op::Put {
                    key: format!("{KEY_SANDBOXES}{}", sb.id),
                    value: records::encode(&new)?,
                }])
                .await?;
            self.records_mut().insert_sandbox(new);
        }
        Ok(())
    }

    /// Starts the opt-in watch ([`super::ControllerConfig::watch_kernel`]): a task that
    /// reconciles when one of wharf's tables loses something or one of its bridges is deleted.
    /// It holds the controller weakly and ends within a second of the controller being dropped.
    pub(super) async fn start_kernel_watch(&self) -> Result<()> {
        let mut events = KernelEvents::open(&self.inner.host).await?;
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {
                        if weak.strong_count() == 0 {
                            return;
                        }
                        continue;
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                let controller = Controller { inner };
                let relevant = match &event {
                    Ok(KernelEvent::NftDeleted { table, .. }) => {
                        table == firewall::table().name.as_str()
                    }
                    Ok(KernelEvent::LinkDeleted { name }) => controller.is_our_bridge(name),
                    Ok(KernelEvent::Overrun) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "kernel watch failed; it stops");
                        return;
                    }
                };
                if !relevant {
                    continue;
                }
                // A flush comes as a burst of deletions: let it finish first.
                tokio::time::sleep(WATCH_SETTLE).await;
                tracing::warn!(event = ?event, "wharf's kernel objects changed from outside: reconciling");
                if let Err(e) = controller.reconcile().await {
                    tracing::warn!(error = %e, "reconcile after a kernel change");
                }
            }
        });
        Ok(())
    }

    /// Whether `name` is the bridge device of one of wharf's bridge networks.
    fn is_our_bridge(&self, name: &str) -> bool {
        self.records()
            .networks
            .values()
            .any(|n| n.info.options.kind() == DriverKind::Bridge && bridge_name(&n.info) == name)
    }
}

/// How long the watch waits after a deletion before it reconciles.
const WATCH_SETTLE: Duration = Duration::from_millis(50);
