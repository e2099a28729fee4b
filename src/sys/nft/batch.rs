//! Batches: the list of changes applied as one nftables transaction.
//!
//! Everything added to a [`Batch`] goes to the kernel in one datagram between
//! `NFNL_MSG_BATCH_BEGIN` and `NFNL_MSG_BATCH_END`; the kernel applies all of it or none of it.
//! Every message asks for an acknowledgement, and each carries a description of what it does
//! to which object, so an error names the message that failed.

use netlink_packet_core::{
    DefaultNla, Emitable, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST,
    NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_netfilter::nftables::{
    ChainAttribute, ChainMessage, ListAttribute, NfTablesMessage, RuleAttribute, RuleMessage,
    SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetMessage,
    TableAttribute, TableMessage,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

use super::chain::Chain;
use super::rule::Rule;
use super::set::{Elem, ElemData, MapData, Set};
use super::table::{Family, Table};
use crate::sys::error::SysError;

/// `NFNL_SUBSYS_NFTABLES`: the resource id of nftables batches.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_DESTROYTABLE` (Linux 6.3): delete a table if it exists.
const NFT_MSG_DESTROYTABLE: u8 = 26;
/// `NFTA_TABLE_NAME`
const NFTA_TABLE_NAME: u16 = 1;
/// The most element bytes put in one message (attribute lengths are 16 bits).
const MAX_ELEMENTS_BYTES: usize = 32 * 1024;

/// One message of a batch.
#[derive(Debug, Clone)]
pub(crate) struct Op {
    pub(crate) family: Family,
    pub(crate) msg: NfTablesMessage,
    pub(crate) flags: u16,
    /// What the message does, for errors: `adding rule to chain "x" of table inet "t"`.
    pub(crate) what: String,
}

/// A set of changes to apply atomically with [`NftHandle::apply`](super::NftHandle::apply).
///
/// ```
/// use wharf::sys::nft::{Batch, Chain, ChainType, Hook, Rule, Table, priority};
/// let t = Table::inet("wharf");
/// let mut b = Batch::new();
/// b.add_table(&t);
/// b.add_chain(&Chain::base(&t, "postrouting", Hook::Postrouting, ChainType::Nat,
///                          priority::SRCNAT));
/// b.add_rule(&Rule::new(&t, "postrouting").oifname_ne("br0").masquerade());
/// assert_eq!(b.len(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Batch {
    ops: Vec<Op>,
    next_set_id: u32,
    /// The first change refused before anything was sent (what it was, and why).
    invalid: Option<String>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when there is nothing to apply.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, family: Family, msg: NfTablesMessage, flags: u16, what: String) {
        self.ops.push(Op {
            family,
            msg,
            flags,
            what,
        });
    }

    /// `add table`: creates the table unless it exists (existing contents are kept).
    pub fn add_table(&mut self, t: &Table) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::NewTable(TableMessage {
                attributes: vec![TableAttribute::Name(t.name.clone())],
            }),
            NLM_F_CREATE,
            format!("adding {t}"),
        );
        self
    }

    /// `create table`: like [`Batch::add_table`] but fails with `AlreadyExists` if it exists.
    pub fn create_table(&mut self, t: &Table) -> &mut Self {
        self.add_table(t);
        if let Some(op) = self.ops.last_mut() {
            op.flags |= NLM_F_EXCL;
            op.what = format!("creating {t}");
        }
        self
    }

    /// `delete table`: removes the table and everything in it.
    pub fn delete_table(&mut self, t: &Table) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::DeleteTable(TableMessage {
                attributes: vec![TableAttribute::Name(t.name.clone())],
            }),
            0,
            format!("deleting {t}"),
        );
        self
    }

    /// `destroy table`: like [`Batch::delete_table`] but a missing table is not an error
    /// (`NFT_MSG_DESTROYTABLE`, Linux 6.3 and later; older kernels refuse the batch).
    pub fn destroy_table(&mut self, t: &Table) -> &mut Self {
        let mut name = t.name.clone().into_bytes();
        name.push(0);
        self.push(
            t.family,
            NfTablesMessage::Other {
                message_type: NFT_MSG_DESTROYTABLE,
                attributes: vec![DefaultNla::new(NFTA_TABLE_NAME, name)],
            },
            0,
            format!("destroying {t}"),
        );
        self
    }

    /// `add chain`: creates the chain unless it exists.
    pub fn add_chain(&mut self, c: &Chain) -> &mut Self {
        self.push(
            c.table.family,
            NfTablesMessage::NewChain(ChainMessage {
                attributes: c.to_attrs(),
            }),
            NLM_F_CREATE,
            format!("adding chain {:?} to {}", c.name, c.table),
        );
        self
    }

    /// `delete chain` (the chain must be empty and unreferenced).
    pub fn delete_chain(&mut self, t: &Table, name: &str) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::DeleteChain(ChainMessage {
                attributes: vec![
                    ChainAttribute::Table(t.name.clone()),
                    ChainAttribute::Name(name.to_owned()),
                ],
            }),
            0,
            format!("deleting chain {name:?} of {t}"),
        );
        self
    }

    /// `flush chain`: deletes every rule of the chain.
    pub fn flush_chain(&mut self, t: &Table, name: &str) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(t.name.clone()),
                    RuleAttribute::Chain(name.to_owned()),
                ],
            }),
            0,
            format!("flushing chain {name:?} of {t}"),
        );
        self
    }

    /// `add rule`: appends the rule at the end of its chain.
    pub fn add_rule(&mut self, r: &Rule) -> &mut Self {
        self.push(
            r.table.family,
            NfTablesMessage::NewRule(RuleMessage {
                attributes: r.to_attrs(),
            }),
            NLM_F_CREATE | NLM_F_APPEND,
            format!("adding rule to {r}"),
        );
        self
    }

    /// `add rule ... position H`: puts the rule right after the rule with handle `after`.
    pub fn add_rule_after(&mut self, r: &Rule, after: u64) -> &mut Self {
        let mut attributes = r.to_attrs();
        attributes.push(RuleAttribute::Position(after));
        self.push(
            r.table.family,
            NfTablesMessage::NewRule(RuleMessage { attributes }),
            NLM_F_CREATE | NLM_F_APPEND,
            format!("adding rule after rule {after} to {r}"),
        );
        self
    }

    /// `insert rule`: puts the rule at the start of its chain, or before the rule with
    /// handle `before`.
    pub fn insert_rule(&mut self, r: &Rule, before: Option<u64>) -> &mut Self {
        let mut attributes = r.to_attrs();
        if let Some(h) = before {
            attributes.push(RuleAttribute::Position(h));
        }
        self.push(
            r.table.family,
            NfTablesMessage::NewRule(RuleMessage { attributes }),
            NLM_F_CREATE,
            format!("inserting rule into {r}"),
        );
        self
    }

    /// `delete rule ... handle H`.
    pub fn delete_rule(&mut self, t: &Table, chain: &str, handle: u64) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::DeleteRule(RuleMessage {
                attributes: vec![
                    RuleAttribute::Table(t.name.clone()),
                    RuleAttribute::Chain(chain.to_owned()),
                    RuleAttribute::Handle(handle),
                ],
            }),
            0,
            format!("deleting rule {handle} from chain {chain:?} of {t}"),
        );
        self
    }

    /// `add set` / `add map`: creates it unless it exists.
    pub fn add_set(&mut self, s: &Set) -> &mut Self {
        self.next_set_id += 1;
        self.push(
            s.table.family,
            NfTablesMessage::NewSet(SetMessage {
                attributes: s.to_attrs(self.next_set_id),
            }),
            NLM_F_CREATE,
            format!("adding {s}"),
        );
        self
    }

    /// `delete set` / `delete map` (it must be unreferenced).
    pub fn delete_set(&mut self, t: &Table, name: &str) -> &mut Self {
        self.push(
            t.family,
            NfTablesMessage::DeleteSet(SetMessage {
                attributes: vec![
                    SetAttribute::Table(t.name.clone()),
                    SetAttribute::Name(name.to_owned()),
                ],
            }),
            0,
            format!("deleting set {name:?} of {t}"),
        );
        self
    }

    fn elements(&mut self, set: &Set, elems: &[Elem], add: bool) -> &mut Self {
        let n = elems.len();
        let plural = if n == 1 { "" } else { "s" };
        let (flags, what) = if add {
            (NLM_F_CREATE, format!("adding {n} element{plural} to {set}"))
        } else if n == 0 {
            (0, format!("flushing {set}"))
        } else {
            (0, format!("deleting {n} element{plural} from {set}"))
        };
        if let Some(problem) = elems
            .iter()
            .enumerate()
            .find_map(|(i, e)| mismatch(set, e, add).map(|p| format!("element {}: {p}", i + 1)))
        {
            self.invalid.get_or_insert(format!("{what} ({problem})"));
            return self;
        }
        // An attribute's length is 16 bits: split the elements over as many messages as
        // needed (all in the same transaction).
        let mut chunks: Vec<Vec<ListAttribute<SetElementAttribute>>> = vec![Vec::new()];
        let mut size = 0;
        for attr in elems.iter().flat_map(|e| e.to_attrs(set.interval)) {
            let len = attr.buffer_len();
            if size + len > MAX_ELEMENTS_BYTES && size > 0 {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(chunk) = chunks.last_mut() {
                chunk.push(attr);
            }
        }
        for chunk in chunks {
            let mut attributes = vec![
                SetElementList::Table(set.table.name.clone()),
                SetElementList::Set(set.name.clone()),
            ];
            if !chunk.is_empty() {
                attributes.push(SetElementList::Elements(chunk));
            }
            let msg = SetElementMessage { attributes };
            let msg = if add {
                NfTablesMessage::NewSetElement(msg)
            } else {
                NfTablesMessage::DeleteSetElement(msg)
            };
            self.push(set.table.family, msg, flags, what.clone());
        }
        self
    }

    /// `add element`: adds elements (map entries) to a set; existing ones are kept.
    ///
    /// Elements that do not fit the set (key fields, map data, ranges in a set without
    /// `interval`) make [`NftHandle::apply`](super::NftHandle::apply) fail with
    /// `InvalidArgument` before anything is sent.
    pub fn add_elements(&mut self, set: &Set, elems: &[Elem]) -> &mut Self {
        if elems.is_empty() {
            return self;
        }
        self.elements(set, elems, true)
    }

    /// `delete element`: removes elements (only their keys matter); a missing one fails the
    /// batch with `NotFound`.
    pub fn delete_elements(&mut self, set: &Set, elems: &[Elem]) -> &mut Self {
        if elems.is_empty() {
            return self;
        }
        self.elements(set, elems, false)
    }

    /// `flush set`: removes every element.
    pub fn flush_set(&mut self, set: &Set) -> &mut Self {
        self.elements(set, &[], false)
    }

    /// The first change refused before sending, if any, as the error `apply` returns.
    pub(crate) fn invalid(&self) -> Option<SysError> {
        self.invalid
            .clone()
            .map(|what| SysError::InvalidArgument { what })
    }

    /// Serialises the batch with sequence numbers from `seq`: begin, the messages, end.
    /// Returns the bytes and, per message, its sequence number and description.
    pub(crate) fn encode(&self, seq: u32) -> (Vec<u8>, Vec<(u32, String)>) {
        let mut out = Vec::new();
        let mut index = Vec::with_capacity(self.ops.len());
        let control = |m: ControlMessage| {
            NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
                m,
            )
        };
        emit(
            &mut out,
            control(ControlMessage::BatchBegin),
            NLM_F_REQUEST,
            seq,
        );
        for (i, op) in self.ops.iter().enumerate() {
            let s = seq.wrapping_add(1 + i as u32);
            let msg = NetfilterMessage::new(
                NetfilterHeader::new(op.family.proto(), 0, 0),
                op.msg.clone(),
            );
            emit(&mut out, msg, NLM_F_REQUEST | NLM_F_ACK | op.flags, s);
            index.push((s, op.what.clone()));
        }
        let end = seq.wrapping_add(1 + self.ops.len() as u32);
        emit(
            &mut out,
            control(ControlMessage::BatchEnd),
            NLM_F_REQUEST,
            end,
        );
        (out, index)
    }

    /// How many sequence numbers [`Batch::encode`] uses.
    pub(crate) fn seq_span(&self) -> u32 {
        self.ops.len() as u32 + 2
    }
}

/// Why `e` cannot be an element of `set`, if it cannot.
fn mismatch(set: &Set, e: &Elem, add: bool) -> Option<String> {
    let fields = set.key.fields().len();
    if e.key.len() != fields {
        return Some(format!("{} key fields, the set has {fields}", e.key.len()));
    }
    if e.key_end.is_some() && !set.interval {
        return Some("a range, the set has no `interval` flag".into());
    }
    if e.key_end.is_some() && fields != 1 {
        return Some("a range of a concatenation, which wharf does not support".into());
    }
    if add {
        match (&set.data, &e.data) {
            (None, Some(_)) => return Some("map data, the set is not a map".into()),
            (Some(_), None) => return Some("no map data, the set is a map".into()),
            (Some(MapData::Verdict), Some(ElemData::Value(_))) => {
                return Some("a value, the map holds verdicts".into());
            }
            (Some(MapData::Value(_)), Some(ElemData::Verdict(_))) => {
                return Some("a verdict, the map holds values".into());
            }
            _ => {}
        }
    }
    None
}

/// Appends one netlink message.
pub(crate) fn emit(out: &mut Vec<u8>, msg: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let start = out.len();
    out.resize(start + m.buffer_len(), 0);
    m.serialize(&mut out[start..]);
}
