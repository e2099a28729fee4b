//! The intent journal: every operation that changes the kernel records what it is about to do
//! before it starts and that it finished after, so that a process killed at any instant leaves
//! state the next start understands ([`super::reconcile`] reads it).
//!
//! The records are the journal: a network, sandbox or endpoint record carries a
//! [`Status`]. An attach writes its endpoint record `pending` in one durable batch together with
//! the keys of its IPAM addresses ([`crate::ipam::Ipam::reserve`]), then makes the kernel
//! objects, then writes the record `active` with [`Store::apply_relaxed`] (no fsync: if a crash
//! loses it, recovery finds a `pending` record whose kernel objects are all there and rolls it
//! forward, since the caller may have seen success). So an attach costs exactly one durable
//! commit. A detach writes `removing` (relaxed), tears down, then deletes the record and frees
//! the addresses in one durable batch (which also makes the `removing` durable): a crash in
//! between leaves `removing` (finished by recovery) or, if the relaxed write was lost too, an
//! `active` record with some objects gone (repaired by recovery: the detach never returned).
//! Networks and sandboxes follow the same pattern; their creation and deletion are rare, so
//! they may spend a commit more.
//!
//! Cluster networks keep their addresses in the cluster store, not beside the record: there the
//! address is allocated (committed) first, in the name of this host and the endpoint, and
//! released by recovery when it rolls back, or found by that name when a crash came before the
//! record was written ([`super::reconcile`], `recover_cluster_journal`).

use std::net::IpAddr;

use super::model::{EndpointRecord, SandboxRecord, Status};
use super::{Controller, KEY_ENDPOINTS, KEY_SANDBOXES, Result, records};
use crate::driver::{EndpointInfo, NetworkInfo};
use crate::ipam::{AddressRequest, Reservation};
use crate::store::{Op, StoreError};

/// An address an attach holds before its intent is committed.
#[derive(Debug)]
pub(super) enum Held {
    /// Reserved in memory; its key goes into the intent's batch.
    Reserved(Reservation),
    /// Allocated in the cluster store already.
    Allocated(IpAddr),
}

impl Held {
    pub fn ip(&self) -> IpAddr {
        match self {
            Held::Reserved(r) => r.ip(),
            Held::Allocated(ip) => *ip,
        }
    }
}

/// The endpoint's addresses.
pub(super) fn addresses(ep: &EndpointInfo) -> Vec<IpAddr> {
    ep.ipv4
        .map(|n| IpAddr::V4(n.ip()))
        .into_iter()
        .chain(ep.ipv6.map(|n| IpAddr::V6(n.ip())))
        .collect()
}

/// Whether the network's addresses live in the controller's own store (committed with the
/// records) rather than in a cluster store.
pub(super) fn local_addresses(net: &NetworkInfo) -> bool {
    !net.options.kind().is_cluster_scoped()
}

fn endpoint_key(id: &str) -> String {
    format!("{KEY_ENDPOINTS}{id}")
}

fn put(key: String, value: Vec<u8>) -> Op {
    Op::Put { key, value }
}

impl Controller {
    /// Takes an address for an attach of endpoint `endpoint_id`: reserved in memory for a
    /// local network (committed by [`Controller::journal_attach`]), allocated for a cluster
    /// network, in the name of this host and the endpoint ([`Controller::address_owner`]), so
    /// that recovery can tell its own addresses after a crash.
    pub(super) async fn hold_address(
        &self,
        net: &NetworkInfo,
        endpoint_id: &str,
        req: AddressRequest,
        held: &mut Vec<Held>,
    ) -> Result<IpAddr> {
        let ipam = self.ipam_for(net);
        let h = if local_addresses(net) {
            Held::Reserved(ipam.reserve(&net.id, req).await?)
        } else {
            let owner = self.address_owner(endpoint_id);
            Held::Allocated(ipam.allocate_for(&net.id, req, &owner).await?)
        };
        let ip = h.ip();
        held.push(h);
        Ok(ip)
    }

    /// Gives back addresses whose intent was never committed.
    pub(super) async fn drop_held(&self, net: &NetworkInfo, held: &[Held]) {
        for h in held {
            match h {
                Held::Reserved(r) => self.ipam_for(net).abandon(r, false),
                Held::Allocated(ip) => self.release_addresses(net, &[*ip]).await,
            }
        }
    }

    /// The intent of an attach: the endpoint record, `pending`, and its address keys in one
    /// durable batch. On failure nothing is held any more.
    pub(super) async fn journal_attach(
        &self,
        record: &EndpointRecord,
        net: &NetworkInfo,
        held: &[Held],
    ) -> Result<()> {
        debug_assert_eq!(record.status, Status::Pending);
        let mut ops = vec![put(endpoint_key(&record.info.id), records::encode(record)?)];
        ops.extend(held.iter().filter_map(|h| match h {
            Held::Reserved(r) => Some(r.op()),
            Held::Allocated(_) => None,
        }));
        let ipam = self.ipam_for(net);
        if let Err(e) = self.inner.store.apply(ops).await {
            for h in held {
                match h {
                    Held::Reserved(r) => {
                        let taken =
                            matches!(&e, StoreError::AlreadyExists { key } if key == r.key());
                        ipam.abandon(r, taken);
                    }
                    Held::Allocated(ip) => self.release_addresses(net, &[*ip]).await,
                }
            }
            return Err(e.into());
        }
        let mut confirmed = Ok(());
        for h in held {
            if let Held::Reserved(r) = h {
                if let Err(e) = ipam.confirm(r) {
                    confirmed = Err(e);
                }
            }
        }
        if let Err(e) = confirmed {
            // The network's subnet is being released under us: undo the intent.
            self.journal_attach_failed(record, net, None).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// The completion of an attach: the record `active` (and the sandbox's new default-route
    /// owner), without waiting for durability.
    pub(super) async fn journal_attached(
        &self,
        record: &EndpointRecord,
        sb: Option<&SandboxRecord>,
    ) -> Result<()> {
        let mut ops = vec![put(endpoint_key(&record.info.id), records::encode(record)?)];
        if let Some(sb) = sb {
            ops.push(put(
                format!("{KEY_SANDBOXES}{}", sb.id),
                records::encode(sb)?,
            ));
        }
        self.inner.store.apply_relaxed(ops).await?;
        Ok(())
    }

    /// An attach failed after its intent was committed (its kernel work is undone already):
    /// the record and the address keys go (relaxed: if the delete is lost, recovery finds the
    /// `pending` record without its kernel objects and rolls it back), and `sb` is written back
    /// if given. Best effort: failures are logged.
    pub(super) async fn journal_attach_failed(
        &self,
        record: &EndpointRecord,
        net: &NetworkInfo,
        sb: Option<&SandboxRecord>,
    ) {
        let addrs = addresses(&record.info);
        let local = local_addresses(net);
        let ipam = self.ipam_for(net);
        let mut ops = vec![Op::Delete {
            key: endpoint_key(&record.info.id),
        }];
        if local {
            ops.extend(addrs.iter().map(|ip| ipam.release_op(&net.id, *ip)));
        }
        if let Some(sb) = sb {
            match records::encode(sb) {
                Ok(v) => ops.push(put(format!("{KEY_SANDBOXES}{}", sb.id), v)),
                Err(e) => tracing::warn!(sandbox = %sb.name, error = %e, "encoding a sandbox"),
            }
        }
        match self.inner.store.apply_relaxed(ops).await {
            Ok(_) if local => {
                for ip in &addrs {
                    ipam.forget(&net.id, *ip);
                }
            }
            Ok(_) => self.release_addresses(net, &addrs).await,
            Err(e) => {
                tracing::warn!(endpoint = %record.info.id, error = %e, "undoing the intent of a failed attach; recovery will")
            }
        }
    }

    /// The intent of a detach: the record `removing`, relaxed.
    pub(super) async fn journal_detach(&self, record: &EndpointRecord) -> Result<()> {
        let mut removing = record.clone();
        removing.status = Status::Removing;
        self.inner
            .store
            .apply_relaxed(vec![put(
                endpoint_key(&record.info.id),
                records::encode(&removing)?,
            )])
            .await?;
        Ok(())
    }

    /// A detach failed and its endpoint stays: the record goes back to `active`.
    pub(super) async fn journal_detach_failed(&self, record: &EndpointRecord) {
        let written = async {
            let value = records::encode(record)?;
            self.inner
                .store
                .apply_relaxed(vec![put(endpoint_key(&record.info.id), value)])
                .await?;
            Ok::<(), super::Error>(())
        }
        .await;
        if let Err(e) = written {
            tracing::warn!(endpoint = %record.info.id, error = %e, "marking an endpoint active again");
        }
    }

    /// The completion of a detach: the record deleted, its addresses freed and the sandbox's
    /// new default-route owner written, in one durable batch.
    pub(super) async fn journal_detached(
        &self,
        record: &EndpointRecord,
        net: &NetworkInfo,
        sb: Option<&SandboxRecord>,
    ) -> Result<()> {
        let addrs = addresses(&record.info);
        let local = local_addresses(net);
        let ipam = self.ipam_for(net);
        let mut base = vec![Op::Delete {
            key: endpoint_key(&record.info.id),
        }];
        if let Some(sb) = sb {
            base.push(put(
                format!("{KEY_SANDBOXES}{}", sb.id),
                records::encode(sb)?,
            ));
        }
        let releases: Vec<Op> = if local {
            addrs
                .iter()
                .filter(|ip| ipam.is_allocated(&net.id, **ip))
                .map(|ip| ipam.release_op(&net.id, *ip))
                .collect()
        } else {
            Vec::new()
        };
        let with_releases: Vec<Op> = base.iter().cloned().chain(releases).collect();
        match self.inner.store.apply(with_releases).await {
            Ok(_) => {}
            // An address key already gone (a state from before the journal): the rest.
            Err(StoreError::NotFound { key }) if key != endpoint_key(&record.info.id) => {
                self.inner.store.apply(base).await?;
            }
            Err(e) => return Err(e.into()),
        }
        if local {
            for ip in &addrs {
                ipam.forget(&net.id, *ip);
            }
        } else {
            self.release_addresses(net, &addrs).await;
        }
        Ok(())
    }

    /// Writes a network or sandbox record (`durable`: fsynced before returning).
    pub(super) async fn journal_put<T: serde::Serialize>(
        &self,
        prefix: &str,
        id: &str,
        value: &T,
        durable: bool,
    ) -> Result<()> {
        let ops = vec![put(format!("{prefix}{id}"), records::encode(value)?)];
        if durable {
            self.inner.store.apply(ops).await?;
        } else {
            self.inner.store.apply_relaxed(ops).await?;
        }
        Ok(())
    }

    /// Deletes a network or sandbox record (`durable`: fsynced before returning); a record
    /// already gone is fine.
    pub(super) async fn journal_delete(&self, prefix: &str, id: &str, durable: bool) -> Result<()> {
        let ops = vec![Op::Delete {
            key: format!("{prefix}{id}"),
        }];
        let done = if durable {
            self.inner.store.apply(ops).await
        } else {
            self.inner.store.apply_relaxed(ops).await
        };
        match done {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
