//! Sets and maps: named collections in a table that rules look keys up in, so that adding the
//! 1000th interface or published port is one element, not one more rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{DefaultNla, NlaBuffer, NlasIterator, Parseable};
use std::time::Duration;

use netlink_packet_netfilter::nftables::{
    DataAttribute, ListAttribute, SetAttribute, SetElementAttribute, SetElementFlags, SetFlags,
};
use serde::{Deserialize, Serialize};

use super::expr::Verdict;
use super::table::Table;

/// `IFNAMSIZ`: interface names are compared as 16 zero-padded bytes.
pub const IFNAMSIZ: usize = 16;

/// The type of one field of a set key or map value (`nft`'s datatypes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataType {
    /// `ipv4_addr`
    Ipv4Addr,
    /// `ipv6_addr`
    Ipv6Addr,
    /// `ether_addr`
    EtherAddr,
    /// `inet_proto` (layer 4 protocol number)
    InetProto,
    /// `inet_service` (a port)
    InetService,
    /// `mark`
    Mark,
    /// `ifname`
    IfName,
    /// Any other `nft` datatype, by number and byte length.
    Other {
        /// The datatype number.
        id: u32,
        /// Its length in bytes.
        len: u32,
    },
}

impl DataType {
    /// `nft`'s datatype number.
    pub fn id(self) -> u32 {
        match self {
            Self::Ipv4Addr => 7,
            Self::Ipv6Addr => 8,
            Self::EtherAddr => 9,
            Self::InetProto => 12,
            Self::InetService => 13,
            Self::Mark => 19,
            Self::IfName => 41,
            Self::Other { id, .. } => id,
        }
    }

    /// Length in bytes.
    pub fn byte_len(self) -> u32 {
        match self {
            Self::Ipv4Addr | Self::Mark => 4,
            Self::Ipv6Addr => 16,
            Self::EtherAddr => 6,
            Self::InetProto => 1,
            Self::InetService => 2,
            Self::IfName => IFNAMSIZ as u32,
            Self::Other { len, .. } => len,
        }
    }

    fn from_id(id: u32) -> Self {
        match id {
            7 => Self::Ipv4Addr,
            8 => Self::Ipv6Addr,
            9 => Self::EtherAddr,
            12 => Self::InetProto,
            13 => Self::InetService,
            19 => Self::Mark,
            41 => Self::IfName,
            id => Self::Other { id, len: 0 },
        }
    }

    /// A concatenation `self . next` (`ipv4_addr . inet_service`).
    pub fn concat(self, next: DataType) -> KeyType {
        KeyType(vec![self, next])
    }
}

/// The type of a set key or map value: one datatype or a concatenation of several.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyType(pub Vec<DataType>);

/// Bits per datatype in a concatenation's type number (`nft`'s `TYPE_BITS`).
const TYPE_BITS: u32 = 6;

impl KeyType {
    /// Appends a field to the concatenation.
    pub fn concat(mut self, next: DataType) -> KeyType {
        self.0.push(next);
        self
    }

    /// The fields.
    pub fn fields(&self) -> &[DataType] {
        &self.0
    }

    /// The type number the kernel stores (concatenations pack 6 bits per field).
    pub fn id(&self) -> u32 {
        match self.0.as_slice() {
            [one] => one.id(),
            many => many.iter().fold(0, |acc, t| (acc << TYPE_BITS) | t.id()),
        }
    }

    /// The key length in bytes (each field of a concatenation padded to 4 bytes).
    pub fn byte_len(&self) -> u32 {
        match self.0.as_slice() {
            [one] => one.byte_len(),
            many => many.iter().map(|t| t.byte_len().div_ceil(4) * 4).sum(),
        }
    }

    /// True for a type with no field (never valid).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Decodes a type number (and key length, to tell a single datatype from a
    /// concatenation).
    pub(crate) fn from_id(id: u32, len: u32) -> Self {
        let single = DataType::from_id(id);
        if !matches!(single, DataType::Other { .. }) && single.byte_len() == len {
            return KeyType(vec![single]);
        }
        let mut fields = Vec::new();
        let mut rest = id;
        while rest != 0 {
            fields.push(DataType::from_id(rest & ((1 << TYPE_BITS) - 1)));
            rest >>= TYPE_BITS;
        }
        fields.reverse();
        let known: u32 = fields.iter().map(|t| t.byte_len().div_ceil(4) * 4).sum();
        if fields.len() > 1 && known == len && fields.iter().all(|t| t.byte_len() > 0) {
            KeyType(fields)
        } else {
            KeyType(vec![DataType::Other { id, len }])
        }
    }
}

impl From<DataType> for KeyType {
    fn from(t: DataType) -> Self {
        KeyType(vec![t])
    }
}

/// What a map maps its keys to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapData {
    /// A verdict (`vmap`): `accept`, `drop`, `jump CHAIN`...
    Verdict,
    /// Data of the given type (`ipv4_addr . inet_service` for a dnat map).
    Value(KeyType),
}

/// `NFTNL_UDATA_SET_KEYBYTEORDER`: the set userdata TLV `nft` reads a key's byte order from.
const UDATA_SET_KEYBYTEORDER: u8 = 0;
/// nft's `BYTEORDER_HOST_ENDIAN` (interface names are strings, compared as stored).
const BYTEORDER_HOST_ENDIAN: u32 = 1;

/// `NFT_DATA_VERDICT`: the data type of verdict maps.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Set {
    /// The table it is in.
    pub table: Table,
    /// Its name.
    pub name: String,
    /// Key type.
    pub key: KeyType,
    /// For maps: what keys map to. `None` for a plain set.
    pub data: Option<MapData>,
    /// `flags constant`: the contents cannot change once a rule uses it.
    pub constant: bool,
    /// `flags timeout; timeout T`: elements expire after T unless they say otherwise.
    pub timeout: Option<Duration>,
    /// `flags interval`: elements are ranges or prefixes (single-field keys only).
    pub interval: bool,
}

impl Set {
    /// `set NAME { type KEY; }`.
    pub fn new(table: &Table, name: impl Into<String>, key: impl Into<KeyType>) -> Self {
        Self {
            table: table.clone(),
            name: name.into(),
            key: key.into(),
            data: None,
            constant: false,
            timeout: None,
            interval: false,
        }
    }

    /// `map NAME { type KEY : DATA; }`.
    pub fn map(
        table: &Table,
        name: impl Into<String>,
        key: impl Into<KeyType>,
        data: impl Into<KeyType>,
    ) -> Self {
        Self {
            data: Some(MapData::Value(data.into())),
            ..Self::new(table, name, key)
        }
    }

    /// `map NAME { type KEY : verdict; }` (used with [`Rule::vmap`](super::Rule::vmap)).
    pub fn vmap(table: &Table, name: impl Into<String>, key: impl Into<KeyType>) -> Self {
        Self {
            data: Some(MapData::Verdict),
            ..Self::new(table, name, key)
        }
    }

    /// Marks the set constant.
    pub fn constant(mut self) -> Self {
        self.constant = true;
        self
    }

    /// `flags interval`: elements are ranges ([`Elem::range`], [`Elem::prefix`]); a plain
    /// element is the range of one key. Single-field keys only.
    pub fn interval(mut self) -> Self {
        self.interval = true;
        self
    }

    /// Makes elements expire: after `default` unless an element sets its own
    /// ([`Elem::timeout`]). Millisecond resolution.
    pub fn with_timeout(mut self, default: Duration) -> Self {
        self.timeout = Some(default);
        self
    }

    pub(crate) fn to_attrs(&self, id: u32) -> Vec<SetAttribute> {
        let mut flags = SetFlags::empty();
        if self.data.is_some() {
            flags |= SetFlags::Map;
        }
        if self.constant {
            flags |= SetFlags::Constant;
        }
        if self.timeout.is_some() {
            flags |= SetFlags::Timeout;
        }
        if self.interval {
            flags |= SetFlags::Interval;
        }
        let mut attrs = vec![
            SetAttribute::Table(self.table.name.clone()),
            SetAttribute::Name(self.name.clone()),
            SetAttribute::Flags(flags),
            SetAttribute::KeyType(self.key.id()),
            SetAttribute::KeyLen(self.key.byte_len()),
        ];
        match &self.data {
            None => {}
            Some(MapData::Verdict) => {
                attrs.push(SetAttribute::DataType(NFT_DATA_VERDICT));
                attrs.push(SetAttribute::DataLen(0));
            }
            Some(MapData::Value(t)) => {
                attrs.push(SetAttribute::DataType(t.id()));
                attrs.push(SetAttribute::DataLen(t.byte_len()));
            }
        }
        if let Some(t) = self.timeout {
            attrs.push(SetAttribute::Timeout(millis(t)));
        }
        if self.key.fields() == [DataType::IfName] {
            // Tells `nft list` how to print the keys (it shows `""` otherwise); the kernel
            // ignores it.
            let mut udata = vec![UDATA_SET_KEYBYTEORDER, 4];
            udata.extend(BYTEORDER_HOST_ENDIAN.to_ne_bytes());
            attrs.push(SetAttribute::UserData(udata));
        }
        attrs.push(SetAttribute::Id(id));
        attrs
    }

    pub(crate) fn from_attrs(table: &Table, attrs: &[SetAttribute]) -> Option<Self> {
        let (mut tname, mut name, mut flags) = (None, None, SetFlags::empty());
        let (mut ktype, mut klen, mut dtype, mut dlen) = (None, 0, None, 0);
        let mut timeout = None;
        for a in attrs {
            match a {
                SetAttribute::Table(t) => tname = Some(t.as_str()),
                SetAttribute::Name(n) => name = Some(n.clone()),
                SetAttribute::Flags(f) => flags = *f,
                SetAttribute::KeyType(t) => ktype = Some(*t),
                SetAttribute::KeyLen(l) => klen = *l,
                SetAttribute::DataType(t) => dtype = Some(*t),
                SetAttribute::DataLen(l) => dlen = *l,
                SetAttribute::Timeout(ms) => timeout = Some(Duration::from_millis(*ms)),
                _ => {}
            }
        }
        if tname? != table.name || flags.contains(SetFlags::Anonymous) {
            return None;
        }
        let data = match (flags.contains(SetFlags::Map), dtype) {
            (true, Some(NFT_DATA_VERDICT)) => Some(MapData::Verdict),
            (true, Some(t)) => Some(MapData::Value(KeyType::from_id(t, dlen))),
            _ => None,
        };
        Some(Self {
            table: table.clone(),
            name: name?,
            key: KeyType::from_id(ktype.unwrap_or(0), klen),
            data,
            constant: flags.contains(SetFlags::Constant),
            timeout: timeout.filter(|_| flags.contains(SetFlags::Timeout)),
            interval: flags.contains(SetFlags::Interval),
        })
    }
}

impl std::fmt::Display for Set {
    /// `set "bridges" of table inet "wharf"` (or `map ...`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.data.is_some() { "map" } else { "set" };
        write!(f, "{kind} {:?} of {}", self.name, self.table)
    }
}

/// One field value of a set key or map value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
    /// A MAC address.
    Ether([u8; 6]),
    /// A layer 4 protocol number.
    Proto(u8),
    /// A port.
    Port(u16),
    /// A packet mark.
    Mark(u32),
    /// An interface name (at most 15 bytes).
    IfName(String),
    /// Bytes of a type wharf does not model.
    Raw(Vec<u8>),
}

impl From<Ipv4Addr> for Value {
    fn from(a: Ipv4Addr) -> Self {
        Value::Ipv4(a)
    }
}

impl From<Ipv6Addr> for Value {
    fn from(a: Ipv6Addr) -> Self {
        Value::Ipv6(a)
    }
}

impl From<IpAddr> for Value {
    fn from(a: IpAddr) -> Self {
        match a {
            IpAddr::V4(a) => Value::Ipv4(a),
            IpAddr::V6(a) => Value::Ipv6(a),
        }
    }
}

impl Value {
    /// The bytes the kernel compares (network order for addresses and ports, host order for
    /// marks, NUL-padded for interface names).
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Ipv4(a) => a.octets().to_vec(),
            Self::Ipv6(a) => a.octets().to_vec(),
            Self::Ether(m) => m.to_vec(),
            Self::Proto(p) => vec![*p],
            Self::Port(p) => p.to_be_bytes().to_vec(),
            Self::Mark(m) => m.to_ne_bytes().to_vec(),
            Self::IfName(n) => ifname_bytes(n).to_vec(),
            Self::Raw(b) => b.clone(),
        }
    }

    fn from_bytes(t: DataType, b: &[u8]) -> Value {
        let fixed = |n: usize| b.get(..n);
        let parsed =
            match t {
                DataType::Ipv4Addr => fixed(4)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok().map(|o| Value::Ipv4(o.into()))),
                DataType::Ipv6Addr => fixed(16)
                    .and_then(|b| <[u8; 16]>::try_from(b).ok().map(|o| Value::Ipv6(o.into()))),
                DataType::EtherAddr => fixed(6).and_then(|b| b.try_into().ok().map(Value::Ether)),
                DataType::InetProto => b.first().map(|p| Value::Proto(*p)),
                DataType::InetService => fixed(2).and_then(|b| {
                    b.try_into()
                        .ok()
                        .map(|p| Value::Port(u16::from_be_bytes(p)))
                }),
                DataType::Mark => fixed(4).and_then(|b| {
                    b.try_into()
                        .ok()
                        .map(|m| Value::Mark(u32::from_ne_bytes(m)))
                }),
                DataType::IfName => {
                    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
                    std::str::from_utf8(&b[..end])
                        .ok()
                        .map(|s| Value::IfName(s.to_owned()))
                }
                DataType::Other { .. } => None,
            };
        parsed.unwrap_or_else(|| Value::Raw(b.to_vec()))
    }
}

/// An interface name as the kernel compares it: 16 bytes, NUL padded (longer names are cut,
/// as the kernel would never report them).
pub fn ifname_bytes(name: &str) -> [u8; IFNAMSIZ] {
    let mut out = [0u8; IFNAMSIZ];
    for (dst, src) in out.iter_mut().zip(name.bytes().take(IFNAMSIZ - 1)) {
        *dst = src;
    }
    out
}

/// The bytes of a concatenation of values: each field padded to 4 bytes (a single field is
/// not padded).
pub(crate) fn concat_bytes(values: &[Value]) -> Vec<u8> {
    if let [one] = values {
        return one.to_bytes();
    }
    let mut out = Vec::new();
    for v in values {
        let mut b = v.to_bytes();
        b.resize(b.len().div_ceil(4) * 4, 0);
        out.extend(b);
    }
    out
}

fn split_values(t: &KeyType, bytes: &[u8]) -> Vec<Value> {
    match t.fields() {
        [one] => vec![Value::from_bytes(*one, bytes)],
        many => {
            let mut out = Vec::new();
            let mut at = 0usize;
            for f in many {
                let len = f.byte_len() as usize;
                let end = (at + len).min(bytes.len());
                out.push(Value::from_bytes(*f, &bytes[at.min(end)..end]));
                at += len.div_ceil(4) * 4;
            }
            out
        }
    }
}

/// What a map element maps its key to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElemData {
    /// A value (its fields, for a concatenation).
    Value(Vec<Value>),
    /// A verdict, in a verdict map.
    Verdict(Verdict),
}

/// A set element (or map entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Elem {
    /// The key's fields (one, or several for a concatenation); the first key of a range.
    pub key: Vec<Value>,
    /// In an interval set: the last key of the range (inclusive); `None` for one key.
    pub key_end: Option<Vec<Value>>,
    /// For maps, what the key maps to.
    pub data: Option<ElemData>,
    /// In a set with timeouts: this element's own timeout (`None`: the set's default).
    pub timeout: Option<Duration>,
}

impl Elem {
    /// An element with the given key fields (`10.0.0.1 . 8080`).
    pub fn new(key: impl IntoIterator<Item = Value>) -> Self {
        Self {
            key: key.into_iter().collect(),
            key_end: None,
            data: None,
            timeout: None,
        }
    }

    /// An interface name element (`"br0"`).
    pub fn ifname(name: impl Into<String>) -> Self {
        Self::new([Value::IfName(name.into())])
    }

    /// An address element.
    pub fn addr(addr: impl Into<IpAddr>) -> Self {
        Self::new([Value::from(addr.into())])
    }

    /// A port element.
    pub fn port(port: u16) -> Self {
        Self::new([Value::Port(port)])
    }

    /// A range element `START-END` (inclusive) of an interval set.
    pub fn range(start: Value, end: Value) -> Self {
        let mut e = Self::new([start]);
        if e.key != [end.clone()] {
            e.key_end = Some(vec![end]);
        }
        e
    }

    /// A prefix element (`10.0.0.0/24`) of an interval set: the range of its addresses.
    pub fn prefix(net: IpNetwork) -> Self {
        Self::range(Value::from(net.network()), Value::from(net.broadcast()))
    }

    /// Makes this a map entry: `KEY : VALUE`.
    pub fn to(mut self, data: impl IntoIterator<Item = Value>) -> Self {
        self.data = Some(ElemData::Value(data.into_iter().collect()));
        self
    }

    /// Gives the element its own timeout (`KEY timeout 30s`); the set needs timeouts.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Makes this a verdict map entry: `KEY : VERDICT`.
    pub fn to_verdict(mut self, verdict: Verdict) -> Self {
        self.data = Some(ElemData::Verdict(verdict));
        self
    }

    /// The kernel elements of this one: one, or for a range in an interval set the start and
    /// the end marker (the key after the range, flagged `INTERVAL_END`; none when the range
    /// runs to the last key), as `nft` sends them.
    pub(crate) fn to_attrs(&self, interval: bool) -> Vec<ListAttribute<SetElementAttribute>> {
        let key = concat_bytes(&self.key);
        let mut attrs = vec![SetElementAttribute::Key(DataAttribute::Value(key.clone()))];
        match &self.data {
            None => {}
            Some(ElemData::Value(v)) => attrs.push(SetElementAttribute::Data(
                DataAttribute::Value(concat_bytes(v)),
            )),
            Some(ElemData::Verdict(v)) => attrs.push(SetElementAttribute::Data(
                DataAttribute::Verdict(v.to_attrs()),
            )),
        }
        if let Some(t) = self.timeout {
            attrs.push(SetElementAttribute::Timeout(millis(t)));
        }
        let mut out = vec![ListAttribute::Element(attrs)];
        if interval {
            let last = self.key_end.as_ref().map_or(key, |k| concat_bytes(k));
            if let Some(after) = increment(&last) {
                out.push(ListAttribute::Element(vec![
                    SetElementAttribute::Key(DataAttribute::Value(after)),
                    SetElementAttribute::Flags(SetElementFlags::IntervalEnd),
                ]));
            }
        }
        out
    }

    /// Rebuilds the elements of `set` from what the kernel lists, pairing interval starts with
    /// their end markers.
    pub(crate) fn from_kernel(
        set: &Set,
        attrs: &[ListAttribute<SetElementAttribute>],
    ) -> Vec<Self> {
        let mut raw: Vec<(Vec<u8>, bool, Elem)> = attrs
            .iter()
            .filter_map(|a| Elem::from_attr(set, a))
            .collect();
        if !set.interval {
            return raw.into_iter().map(|(_, _, e)| e).collect();
        }
        raw.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut iter = raw.into_iter().peekable();
        while let Some((key, is_end, mut elem)) = iter.next() {
            if is_end {
                // An end marker with no start before it (`nft` adds one at key 0).
                continue;
            }
            let last = match iter.peek() {
                Some((next, true, _)) => {
                    let last = decrement(next);
                    iter.next();
                    last
                }
                _ => Some(vec![0xff; key.len()]),
            };
            if let Some(last) = last.filter(|l| *l != key) {
                elem.key_end = Some(split_values(&set.key, &last));
            }
            out.push(elem);
        }
        out
    }

    /// One kernel element: its key bytes, whether it is an interval end marker, and the
    /// element.
    fn from_attr(
        set: &Set,
        attr: &ListAttribute<SetElementAttribute>,
    ) -> Option<(Vec<u8>, bool, Self)> {
        let reparsed;
        let attrs = match attr {
            ListAttribute::Element(attrs) => attrs,
            // libnftnl numbers element nests 1, 2, 3... instead of NFTA_LIST_ELEM; the
            // kernel ignores the number, and so does wharf.
            ListAttribute::Other(nla) => {
                reparsed = reparse_elem(nla)?;
                &reparsed
            }
            _ => return None,
        };
        let mut elem = Elem::new([]);
        let mut key = Vec::new();
        let mut is_end = false;
        for a in attrs {
            match a {
                SetElementAttribute::Key(DataAttribute::Value(b)) => {
                    elem.key = split_values(&set.key, b);
                    key = b.clone();
                }
                SetElementAttribute::Flags(f) => is_end = f.contains(SetElementFlags::IntervalEnd),
                SetElementAttribute::Data(DataAttribute::Value(b)) => {
                    let t = match &set.data {
                        Some(MapData::Value(t)) => t.clone(),
                        _ => KeyType(vec![DataType::Other { id: 0, len: 0 }]),
                    };
                    elem.data = Some(ElemData::Value(split_values(&t, b)));
                }
                SetElementAttribute::Data(DataAttribute::Verdict(v)) => {
                    elem.data = Some(ElemData::Verdict(Verdict::from_attrs(v)?));
                }
                SetElementAttribute::Timeout(ms)
                    if set.timeout.is_none_or(|d| millis(d) != *ms) =>
                {
                    elem.timeout = Some(Duration::from_millis(*ms));
                }
                _ => {}
            }
        }
        Some((key, is_end, elem))
    }
}

fn reparse_elem(nla: &DefaultNla) -> Option<Vec<SetElementAttribute>> {
    let bytes = super::expr::emit_all(std::slice::from_ref(nla));
    let outer = NlaBuffer::new_checked(bytes.as_slice()).ok()?;
    NlasIterator::new(outer.value())
        .map(|a| SetElementAttribute::parse(&a.ok()?).ok())
        .collect()
}

/// The key after `b` (big-endian + 1), or `None` after the last key.
fn increment(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.to_vec();
    for byte in out.iter_mut().rev() {
        let (v, carry) = byte.overflowing_add(1);
        *byte = v;
        if !carry {
            return Some(out);
        }
    }
    None
}

/// The key before `b` (big-endian - 1), or `None` before the first key.
fn decrement(b: &[u8]) -> Option<Vec<u8>> {
    let mut out = b.to_vec();
    for byte in out.iter_mut().rev() {
        let (v, borrow) = byte.overflowing_sub(1);
        *byte = v;
        if !borrow {
            return Some(out);
        }
    }
    None
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
