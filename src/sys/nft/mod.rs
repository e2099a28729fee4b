//! nftables over netfilter netlink: tables, chains, rules, sets and maps, applied in atomic
//! batches and listed back in typed form.
//!
//! Why it exists: wharf's firewalling (bridge NAT, isolation between networks, published
//! ports) lives in its own nftables table, changed only through transactions, so a failure
//! never leaves half a change behind and a crash leaves nothing wharf cannot find again. The
//! API reads like the `nft` language ([`Rule::new`]`(..).oifname_ne("br0").masquerade()`) and
//! keeps netlink out of sight; what goes to the kernel is exactly what `nft` would send for
//! the same words.
//!
//! What it deliberately does not do: it never runs `nft` or `iptables`; it does not parse or
//! print the nft language; it models only the expressions wharf needs (anything else listed
//! comes back as [`Expr::Other`]); it does not manage tables it did not create, except to
//! list them; it knows nothing of containers or networks.
//!
//! ```no_run
//! # async fn demo(ns: &wharf::sys::NetNs) -> wharf::sys::SysResult<()> {
//! use wharf::sys::nft::*;
//! let t = Table::inet("wharf");
//! let nft = NftHandle::open(ns).await?;
//! let mut b = Batch::new();
//! b.add_table(&t);
//! b.add_chain(&Chain::base(&t, "postrouting", Hook::Postrouting, ChainType::Nat,
//!                          priority::SRCNAT));
//! b.add_rule(&Rule::new(&t, "postrouting")
//!     .saddr_in("172.17.0.0/16".parse().unwrap())
//!     .oifname_ne("docker0")
//!     .counter()
//!     .masquerade());
//! let bridges = Set::new(&t, "bridges", DataType::IfName);
//! b.add_set(&bridges);
//! b.add_elements(&bridges, &[Elem::ifname("docker0")]);
//! nft.apply(&b).await?;
//! # Ok(()) }
//! ```

mod batch;
mod chain;
mod expr;
mod rule;
mod set;
pub(crate) mod socket;
mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::{
    ChainMessage, NfTablesMessage, RuleAttribute, RuleMessage, SetAttribute, SetElementList,
    SetElementMessage, SetMessage, TableAttribute, TableMessage,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use tokio::sync::Mutex;

pub use batch::Batch;
pub use chain::{BaseChain, Chain, ChainType, Hook, Policy, priority};
pub use expr::{
    CmpOp, CounterAttr, CtAttr, CtKey, CtState, CtStatus, Expr, FibAttr, FibFlags, FibResult,
    IpVersion, MasqAttr, MetaKey, NatAttr, NatFlags, NatKind, NumgenAttr, NumgenKind, PayloadBase,
    RTN_LOCAL, RedirAttr, Reg, RegRange, Verdict,
};
pub use rule::{Field, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, Rule};
pub use set::{DataType, Elem, ElemData, IFNAMSIZ, KeyType, MapData, Set, Value, ifname_bytes};
pub use table::{Family, Table};

use super::error::{SysError, SysResult};
use super::netns::NetNs;
use socket::NfSocket;

/// How long to wait for the kernel's answer before calling the exchange broken.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long to wait for the rest of a batch's acknowledgements once the first arrived: the
/// kernel queues them all before `sendmsg` returns, so a gap means it will send no more (it
/// stops acknowledging after a malformed message).
const MORE_ACKS_TIMEOUT: Duration = Duration::from_secs(2);

/// A handle on nftables in one network namespace.
///
/// Cloning is cheap; clones share one socket and take turns on it.
#[derive(Clone)]
pub struct NftHandle {
    inner: Arc<Inner>,
}

struct Inner {
    sock: Mutex<NfSocket>,
    seq: AtomicU32,
    ns: String,
}

impl std::fmt::Debug for NftHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NftHandle")
            .field("ns", &self.inner.ns)
            .finish()
    }
}

impl NftHandle {
    /// Opens nftables in `ns`: the socket is created on a short-lived thread inside the
    /// namespace and stays bound to it.
    pub async fn open(ns: &NetNs) -> SysResult<Self> {
        let what = format!("opening nftables in {ns}");
        let raw = ns
            .run(socket::open_raw)
            .await?
            .map_err(|e| SysError::from_io(what.clone(), e))?;
        Self::from_raw(raw, ns.to_string(), what)
    }

    /// Opens nftables in the namespace of the calling thread (the process's own, unless the
    /// caller moved it).
    pub fn open_current() -> SysResult<Self> {
        let what = "opening nftables in the current namespace".to_owned();
        let raw = socket::open_raw().map_err(|e| SysError::from_io(what.clone(), e))?;
        Self::from_raw(raw, "the current namespace".into(), what)
    }

    fn from_raw(raw: netlink_sys::Socket, ns: String, what: String) -> SysResult<Self> {
        let sock = NfSocket::new(raw).map_err(|e| SysError::from_io(what, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                sock: Mutex::new(sock),
                seq: AtomicU32::new(1),
                ns,
            }),
        })
    }

    fn next_seq(&self, span: u32) -> u32 {
        self.inner.seq.fetch_add(span, Ordering::Relaxed)
    }

    fn protocol(&self, what: &str, detail: impl Into<String>) -> SysError {
        SysError::Protocol {
            what: format!("{what} in {}", self.inner.ns),
            detail: detail.into(),
        }
    }

    /// Applies `batch` as one transaction: everything in it takes effect, or nothing does.
    ///
    /// On failure the error names the first message the kernel refused, e.g.
    /// `adding rule to chain "forward" of table inet "wharf": not found`.
    pub async fn apply(&self, batch: &Batch) -> SysResult<()> {
        if let Some(e) = batch.invalid() {
            return Err(e);
        }
        if batch.is_empty() {
            return Ok(());
        }
        let seq = self.next_seq(batch.seq_span());
        let (bytes, index) = batch.encode(seq);
        let what = "applying an nftables batch";
        let sock = self.inner.sock.lock().await;
        sock.send(&bytes)
            .await
            .map_err(|e| SysError::from_io(format!("{what} in {}", self.inner.ns), e))?;

        let mut pending: Vec<Option<&str>> = index.iter().map(|(_, w)| Some(w.as_str())).collect();
        let mut outstanding = pending.len();
        // The first refused message in batch order (the kernel reports every one).
        let mut failure: Option<(usize, i32)> = None;
        let mut wait = REPLY_TIMEOUT;
        while outstanding > 0 {
            let dgram = match tokio::time::timeout(wait, sock.recv()).await {
                Ok(r) => {
                    r.map_err(|e| SysError::from_io(format!("{what} in {}", self.inner.ns), e))?
                }
                Err(_) => match failure {
                    // The kernel reports errors for the failing message even when it stops
                    // acknowledging the rest; what failed is known.
                    Some((i, code)) => {
                        return Err(SysError::from_errno(index[i].1.clone(), -code));
                    }
                    None => {
                        return Err(self.protocol(
                            what,
                            format!("{outstanding} message(s) never acknowledged"),
                        ));
                    }
                },
            };
            wait = MORE_ACKS_TIMEOUT;
            for msg in parse_all(&dgram).map_err(|d| self.protocol(what, d))? {
                let s = msg.header.sequence_number;
                let NetlinkPayload::Error(err) = msg.payload else {
                    continue;
                };
                let code = err.raw_code();
                if s == seq {
                    // The batch as a whole was refused (no permission, malformed batch).
                    return Err(SysError::from_errno(
                        format!("{what} in {}", self.inner.ns),
                        -code,
                    ));
                }
                let Some(i) = s.checked_sub(seq + 1).map(|i| i as usize) else {
                    continue;
                };
                if let Some(slot) = pending.get_mut(i) {
                    if slot.take().is_some() {
                        outstanding -= 1;
                        if code != 0 && failure.is_none_or(|(j, _)| i < j) {
                            failure = Some((i, code));
                        }
                    }
                }
            }
        }
        match failure {
            None => Ok(()),
            Some((i, code)) => Err(SysError::from_errno(index[i].1.clone(), -code)),
        }
    }

    /// Sends a dump request and collects the nftables messages of the reply, with the family
    /// of each.
    async fn dump(
        &self,
        what: &str,
        family: Option<Family>,
        msg: NfTablesMessage,
    ) -> SysResult<Vec<(Option<Family>, NfTablesMessage)>> {
        let seq = self.next_seq(1);
        let header = NetfilterHeader::new(
            family.map_or(NetfilterProtoFamily::Unspec, Family::proto),
            0,
            0,
        );
        let mut bytes = Vec::new();
        batch::emit(
            &mut bytes,
            NetfilterMessage::new(header, msg),
            NLM_F_REQUEST | NLM_F_DUMP,
            seq,
        );
        let err = |e| SysError::from_io(format!("{what} in {}", self.inner.ns), e);
        let sock = self.inner.sock.lock().await;
        sock.send(&bytes).await.map_err(err)?;
        let mut out = Vec::new();
        loop {
            let dgram = tokio::time::timeout(REPLY_TIMEOUT, sock.recv())
                .await
                .map_err(|_| self.protocol(what, "no reply from the kernel"))?
                .map_err(err)?;
            for msg in parse_all(&dgram).map_err(|d| self.protocol(what, d))? {
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) if e.raw_code() != 0 => {
                        return Err(SysError::from_errno(
                            format!("{what} in {}", self.inner.ns),
                            -e.raw_code(),
                        ));
                    }
                    NetlinkPayload::Error(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(m) => {
                        let fam = Family::from_proto(m.header.family);
                        if let NetfilterMessageInner::NfTables(m) = m.inner {
                            out.push((fam, m));
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Every table of every family in the namespace (wharf's and anyone else's).
    pub async fn list_tables(&self) -> SysResult<Vec<Table>> {
        let msgs = self
            .dump(
                "listing nftables tables",
                None,
                NfTablesMessage::GetTable(TableMessage { attributes: vec![] }),
            )
            .await?;
        Ok(msgs
            .into_iter()
            .filter_map(|(fam, m)| match m {
                NfTablesMessage::NewTable(t) => t.attributes.iter().find_map(|a| match a {
                    TableAttribute::Name(n) => Some(Table::new(fam?, n.clone())),
                    _ => None,
                }),
                _ => None,
            })
            .collect())
    }

    /// Whether the table exists.
    pub async fn table_exists(&self, t: &Table) -> SysResult<bool> {
        Ok(self.list_tables().await?.contains(t))
    }

    /// The chains of table `t` (empty if the table does not exist).
    pub async fn list_chains(&self, t: &Table) -> SysResult<Vec<Chain>> {
        let msgs = self
            .dump(
                &format!("listing chains of {t}"),
                Some(t.family),
                NfTablesMessage::GetChain(ChainMessage { attributes: vec![] }),
            )
            .await;
        Ok(empty_if_missing(msgs)?
            .into_iter()
            .filter_map(|(_, m)| match m {
                NfTablesMessage::NewChain(c) => Chain::from_attrs(t, &c.attributes),
                _ => None,
            })
            .collect())
    }

    /// The rules of table `t`, chain by chain in order, with their handles (empty if the
    /// table does not exist).
    pub async fn list_rules(&self, t: &Table) -> SysResult<Vec<Rule>> {
        let msgs = self
            .dump(
                &format!("listing rules of {t}"),
                Some(t.family),
                NfTablesMessage::GetRule(RuleMessage {
                    attributes: vec![RuleAttribute::Table(t.name.clone())],
                }),
            )
            .await;
        Ok(empty_if_missing(msgs)?
            .into_iter()
            .filter_map(|(_, m)| match m {
                NfTablesMessage::NewRule(r) => Rule::from_attrs(t, &r.attributes),
                _ => None,
            })
            .collect())
    }

    /// The named sets and maps of table `t` (empty if the table does not exist).
    pub async fn list_sets(&self, t: &Table) -> SysResult<Vec<Set>> {
        let msgs = self
            .dump(
                &format!("listing sets of {t}"),
                Some(t.family),
                NfTablesMessage::GetSet(SetMessage {
                    attributes: vec![SetAttribute::Table(t.name.clone())],
                }),
            )
            .await;
        Ok(empty_if_missing(msgs)?
            .into_iter()
            .filter_map(|(_, m)| match m {
                NfTablesMessage::NewSet(s) => Set::from_attrs(t, &s.attributes),
                _ => None,
            })
            .collect())
    }

    /// The set or map `name` of table `t`, if it exists.
    pub async fn get_set(&self, t: &Table, name: &str) -> SysResult<Option<Set>> {
        Ok(self
            .list_sets(t)
            .await?
            .into_iter()
            .find(|s| s.name == name))
    }

    /// The elements of `set` (as listed by [`NftHandle::list_sets`] or built by the caller:
    /// its types say how to decode the elements). Fails with `NotFound` if it does not exist.
    pub async fn list_elements(&self, set: &Set) -> SysResult<Vec<Elem>> {
        let msgs = self
            .dump(
                &format!("listing elements of {set}"),
                Some(set.table.family),
                NfTablesMessage::GetSetElement(SetElementMessage {
                    attributes: vec![
                        SetElementList::Table(set.table.name.clone()),
                        SetElementList::Set(set.name.clone()),
                    ],
                }),
            )
            .await?;
        let mut all = Vec::new();
        for (_, m) in msgs {
            if let NfTablesMessage::NewSetElement(m) = m {
                for a in m.attributes {
                    if let SetElementList::Elements(list) = a {
                        all.extend(list);
                    }
                }
            }
        }
        Ok(Elem::from_kernel(set, &all))
    }
}

fn empty_if_missing<T>(r: SysResult<Vec<T>>) -> SysResult<Vec<T>> {
    match r {
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        other => other,
    }
}

/// Splits a datagram into netlink messages.
fn parse_all(mut buf: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, String> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return Err(format!(
                "bad message length {len} in a {}-byte datagram",
                buf.len()
            ));
        }
        let msg = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[..len])
            .map_err(|e| format!("undecodable message: {e}"))?;
        out.push(msg);
        buf = buf.get(len.div_ceil(4) * 4..).unwrap_or(&[]);
    }
    Ok(out)
}

#[cfg(test)]
mod nft_vectors;
#[cfg(test)]
mod tests;
