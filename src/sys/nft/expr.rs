//! Typed nftables expressions: the kernel's virtual-machine instructions, one variant per
//! kernel expression, plus their netlink encoding and decoding.
//!
//! [`Expr`] is deliberately low level (registers, offsets, raw bytes): it is what a rule *is* in
//! the kernel, so that a listed rule can be compared with the one wharf built. The
//! [`Rule`](super::Rule) builder turns nft-like matches (`ip saddr 10.0.0.0/24`) into these.
//!
//! `netlink-packet-netfilter` encodes meta, payload, cmp, bitwise, lookup and immediate; the
//! expressions it lacks (nat, masq, redir, ct, counter, fib) are encoded here with typed
//! attributes ([`NatAttr`], [`MasqAttr`], [`RedirAttr`], [`CtAttr`], [`CounterAttr`],
//! [`FibAttr`]) that implement netlink-packet-core's `Nla` and `Parseable`.

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, NlasIterator, Parseable, emit_u32_be,
    emit_u64_be, parse_u8, parse_u32_be, parse_u64_be,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, Cmp, DataAttribute, ExpressionAttribute, Expressions, Immediate, ListAttribute,
    Lookup, Meta, MetaKey as NlMetaKey, Operator, Payload, Register, Verdict as NlVerdict,
    VerdictAttribute,
};
use serde::{Deserialize, Serialize};

/// A register of the nftables virtual machine.
///
/// Register 0 holds the verdict; registers 1-4 are 16 bytes wide and alias the 32-bit
/// registers `reg32(0..16)` (register 1 = `reg32(0)`..`reg32(3)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reg(pub u32);

impl Reg {
    /// The verdict register.
    pub const VERDICT: Reg = Reg(0);
    /// The first 16-byte data register.
    pub const R1: Reg = Reg(1);
    /// The second 16-byte data register.
    pub const R2: Reg = Reg(2);
    /// The third 16-byte data register.
    pub const R3: Reg = Reg(3);
    /// The fourth 16-byte data register.
    pub const R4: Reg = Reg(4);

    /// The 32-bit register number `index` (0..16), as concatenations use them.
    pub const fn reg32(index: u32) -> Reg {
        Reg(8 + index)
    }

    /// The register `words` 4-byte words after the start of register 1: where field number n
    /// of a concatenation goes. A 16-byte-aligned position is named as the 16-byte register
    /// (word 0 is register 1, word 4 register 2), as the kernel reports it back.
    pub const fn at_word(words: u32) -> Reg {
        if words % 4 == 0 {
            Reg(1 + words / 4)
        } else {
            Reg::reg32(words)
        }
    }
}

impl From<Reg> for Register {
    fn from(r: Reg) -> Self {
        Register::from(r.0)
    }
}

impl From<Register> for Reg {
    fn from(r: Register) -> Self {
        Reg(u32::from(r))
    }
}

/// What a `meta` expression loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MetaKey {
    /// Packet length (`meta length`).
    Len,
    /// Ethertype (`meta protocol`), big endian, 2 bytes.
    Protocol,
    /// Packet mark (`meta mark`), 4 bytes host order.
    Mark,
    /// Input interface index (`meta iif`).
    Iif,
    /// Output interface index (`meta oif`).
    Oif,
    /// Input interface name (`iifname`), 16 bytes.
    IifName,
    /// Output interface name (`oifname`), 16 bytes.
    OifName,
    /// Netfilter protocol family (`meta nfproto`), 1 byte.
    NfProto,
    /// Layer 4 protocol number (`meta l4proto`), 1 byte.
    L4Proto,
    /// Any other key, by number.
    Other(u32),
}

impl From<MetaKey> for NlMetaKey {
    fn from(k: MetaKey) -> Self {
        match k {
            MetaKey::Len => NlMetaKey::Length,
            MetaKey::Protocol => NlMetaKey::EtherTypeProtocol,
            MetaKey::Mark => NlMetaKey::Mark,
            MetaKey::Iif => NlMetaKey::Iif,
            MetaKey::Oif => NlMetaKey::Oif,
            MetaKey::IifName => NlMetaKey::Iifname,
            MetaKey::OifName => NlMetaKey::Oifname,
            MetaKey::NfProto => NlMetaKey::Nfproto,
            MetaKey::L4Proto => NlMetaKey::from(16u32),
            MetaKey::Other(n) => NlMetaKey::from(n),
        }
    }
}

impl From<NlMetaKey> for MetaKey {
    fn from(k: NlMetaKey) -> Self {
        match u32::from(k) {
            0 => MetaKey::Len,
            1 => MetaKey::Protocol,
            3 => MetaKey::Mark,
            4 => MetaKey::Iif,
            5 => MetaKey::Oif,
            6 => MetaKey::IifName,
            7 => MetaKey::OifName,
            15 => MetaKey::NfProto,
            16 => MetaKey::L4Proto,
            n => MetaKey::Other(n),
        }
    }
}

/// Where a `payload` expression's offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PayloadBase {
    /// The link-layer header.
    Link,
    /// The network header (IPv4/IPv6).
    Network,
    /// The transport header (TCP/UDP...).
    Transport,
    /// Any other base, by number.
    Other(u32),
}

impl PayloadBase {
    fn to_u32(self) -> u32 {
        match self {
            Self::Link => 0,
            Self::Network => 1,
            Self::Transport => 2,
            Self::Other(n) => n,
        }
    }
    fn from_u32(n: u32) -> Self {
        match n {
            0 => Self::Link,
            1 => Self::Network,
            2 => Self::Transport,
            n => Self::Other(n),
        }
    }
}

/// A comparison operator of `cmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CmpOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl From<CmpOp> for Operator {
    fn from(op: CmpOp) -> Self {
        match op {
            CmpOp::Eq => Operator::Equal,
            CmpOp::Ne => Operator::NotEqual,
            CmpOp::Lt => Operator::LessThan,
            CmpOp::Le => Operator::LessThanEqual,
            CmpOp::Gt => Operator::GreaterThan,
            CmpOp::Ge => Operator::GreatherThanEqual,
        }
    }
}

impl CmpOp {
    fn from_u32(n: u32) -> Option<Self> {
        Some(match n {
            0 => Self::Eq,
            1 => Self::Ne,
            2 => Self::Lt,
            3 => Self::Le,
            4 => Self::Gt,
            5 => Self::Ge,
            _ => return None,
        })
    }
}

/// A verdict: what happens to the packet (or where evaluation continues).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    /// Accept the packet (at this hook).
    Accept,
    /// Drop the packet.
    Drop,
    /// Continue with the next rule.
    Continue,
    /// Return to the calling chain (or apply the base chain's policy).
    Return,
    /// Evaluate the named chain, then come back.
    Jump(String),
    /// Evaluate the named chain without coming back.
    Goto(String),
}

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

impl Verdict {
    pub(crate) fn to_attrs(&self) -> Vec<VerdictAttribute> {
        match self {
            Self::Accept => vec![VerdictAttribute::Code(NlVerdict::Other(NF_ACCEPT))],
            Self::Drop => vec![VerdictAttribute::Code(NlVerdict::Other(NF_DROP))],
            Self::Continue => vec![VerdictAttribute::Code(NlVerdict::Continue)],
            Self::Return => vec![VerdictAttribute::Code(NlVerdict::Return)],
            Self::Jump(chain) => vec![
                VerdictAttribute::Code(NlVerdict::Jump),
                VerdictAttribute::Chain(chain.clone()),
            ],
            Self::Goto(chain) => vec![
                VerdictAttribute::Code(NlVerdict::Goto),
                VerdictAttribute::Chain(chain.clone()),
            ],
        }
    }

    pub(crate) fn from_attrs(attrs: &[VerdictAttribute]) -> Option<Self> {
        let mut code = None;
        let mut chain = None;
        for a in attrs {
            match a {
                VerdictAttribute::Code(c) => code = Some(u32::from(*c)),
                VerdictAttribute::Chain(name) => chain = Some(name.clone()),
                _ => {}
            }
        }
        Some(match (code?, chain) {
            (NF_ACCEPT, _) => Self::Accept,
            (NF_DROP, _) => Self::Drop,
            (c, _) if c == u32::from(NlVerdict::Continue) => Self::Continue,
            (c, _) if c == u32::from(NlVerdict::Return) => Self::Return,
            (c, Some(chain)) if c == u32::from(NlVerdict::Jump) => Self::Jump(chain),
            (c, Some(chain)) if c == u32::from(NlVerdict::Goto) => Self::Goto(chain),
            _ => return None,
        })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Accept => f.write_str("accept"),
            Self::Drop => f.write_str("drop"),
            Self::Continue => f.write_str("continue"),
            Self::Return => f.write_str("return"),
            Self::Jump(c) => write!(f, "jump {c}"),
            Self::Goto(c) => write!(f, "goto {c}"),
        }
    }
}

/// What a `ct` expression loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CtKey {
    /// The connection state bits ([`CtState`]), 4 bytes host order.
    State,
    /// The direction of the packet (0 original, 1 reply), 1 byte.
    Direction,
    /// The conntrack status bits, 4 bytes host order.
    Status,
    /// The connection mark, 4 bytes host order.
    Mark,
    /// Any other key, by number.
    Other(u32),
}

impl CtKey {
    fn to_u32(self) -> u32 {
        match self {
            Self::State => 0,
            Self::Direction => 1,
            Self::Status => 2,
            Self::Mark => 3,
            Self::Other(n) => n,
        }
    }
    fn from_u32(n: u32) -> Self {
        match n {
            0 => Self::State,
            1 => Self::Direction,
            2 => Self::Status,
            3 => Self::Mark,
            n => Self::Other(n),
        }
    }
}

/// A set of connection states, as `ct state` matches them (`established,related`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CtState(pub u32);

impl CtState {
    /// `invalid`
    pub const INVALID: CtState = CtState(1);
    /// `established`
    pub const ESTABLISHED: CtState = CtState(2);
    /// `related`
    pub const RELATED: CtState = CtState(4);
    /// `new`
    pub const NEW: CtState = CtState(8);
    /// `untracked`
    pub const UNTRACKED: CtState = CtState(64);
}

impl std::ops::BitOr for CtState {
    type Output = CtState;
    fn bitor(self, rhs: CtState) -> CtState {
        CtState(self.0 | rhs.0)
    }
}

/// Connection status bits (`IPS_*`), as `ct status` matches them (`ct status dnat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct CtStatus(pub u32);

impl CtStatus {
    /// `expected`
    pub const EXPECTED: CtStatus = CtStatus(1);
    /// `seen-reply`
    pub const SEEN_REPLY: CtStatus = CtStatus(2);
    /// `assured`
    pub const ASSURED: CtStatus = CtStatus(4);
    /// `confirmed`
    pub const CONFIRMED: CtStatus = CtStatus(8);
    /// `snat`: the connection's source is translated.
    pub const SNAT: CtStatus = CtStatus(16);
    /// `dnat`: the connection's destination is translated.
    pub const DNAT: CtStatus = CtStatus(32);
}

impl std::ops::BitOr for CtStatus {
    type Output = CtStatus;
    fn bitor(self, rhs: CtStatus) -> CtStatus {
        CtStatus(self.0 | rhs.0)
    }
}

/// What a `fib` expression looks up with (`NFTA_FIB_F_*`): `fib daddr` is [`FibFlags::DADDR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct FibFlags(pub u32);

impl FibFlags {
    /// `saddr`
    pub const SADDR: FibFlags = FibFlags(1);
    /// `daddr`
    pub const DADDR: FibFlags = FibFlags(2);
    /// `mark`
    pub const MARK: FibFlags = FibFlags(4);
    /// `iif`
    pub const IIF: FibFlags = FibFlags(8);
    /// `oif`
    pub const OIF: FibFlags = FibFlags(16);
    /// `present` (result is a boolean: a route exists)
    pub const PRESENT: FibFlags = FibFlags(32);
}

impl std::ops::BitOr for FibFlags {
    type Output = FibFlags;
    fn bitor(self, rhs: FibFlags) -> FibFlags {
        FibFlags(self.0 | rhs.0)
    }
}

/// What a `fib` expression returns (`NFT_FIB_RESULT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum FibResult {
    /// The output interface index (`oif`), 4 bytes.
    Oif,
    /// The output interface name (`oifname`), 16 bytes.
    OifName,
    /// The route type of the address (`type`: `RTN_LOCAL`, `RTN_UNICAST`...), 4 bytes host
    /// order.
    AddrType,
    /// Any other result, by number.
    Other(u32),
}

impl FibResult {
    fn to_u32(self) -> u32 {
        match self {
            Self::Oif => 1,
            Self::OifName => 2,
            Self::AddrType => 3,
            Self::Other(n) => n,
        }
    }
    fn from_u32(n: u32) -> Self {
        match n {
            1 => Self::Oif,
            2 => Self::OifName,
            3 => Self::AddrType,
            n => Self::Other(n),
        }
    }
}

/// `RTN_LOCAL`: the route type of the host's own addresses (`fib daddr type local`).
pub const RTN_LOCAL: u32 = 2;

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NatKind {
    /// Rewrite the source (`snat`).
    Snat,
    /// Rewrite the destination (`dnat`).
    Dnat,
}

/// The IP version of an address (for NAT, whose family must be given in `inet` tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// IPv4 (`ip`).
    V4,
    /// IPv6 (`ip6`).
    V6,
}

impl IpVersion {
    /// The `NFPROTO_*` number.
    pub fn nfproto(self) -> u8 {
        match self {
            Self::V4 => 2,
            Self::V6 => 10,
        }
    }
    fn from_nfproto(n: u32) -> Option<Self> {
        match n {
            2 => Some(Self::V4),
            10 => Some(Self::V6),
            _ => None,
        }
    }
}

/// `NF_NAT_RANGE_*` flags of nat, masquerade and redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct NatFlags(pub u32);

impl NatFlags {
    /// Addresses are given (set by the kernel when an address register is).
    pub const MAP_IPS: NatFlags = NatFlags(1);
    /// Ports are given (set by the kernel when a port register is).
    pub const PROTO_SPECIFIED: NatFlags = NatFlags(2);
    /// `random`
    pub const RANDOM: NatFlags = NatFlags(4);
    /// `persistent`
    pub const PERSISTENT: NatFlags = NatFlags(8);
    /// `fully-random`
    pub const RANDOM_FULLY: NatFlags = NatFlags(16);
}

impl std::ops::BitOr for NatFlags {
    type Output = NatFlags;
    fn bitor(self, rhs: NatFlags) -> NatFlags {
        NatFlags(self.0 | rhs.0)
    }
}

/// A pair of registers holding the low and high end of a range (equal for a single value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegRange {
    /// Register of the low end.
    pub min: Reg,
    /// Register of the high end.
    pub max: Reg,
}

impl RegRange {
    /// A range of one value held in `reg`.
    pub const fn one(reg: Reg) -> Self {
        Self { min: reg, max: reg }
    }
}

/// One nftables expression, as the kernel runs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Expr {
    /// `meta load KEY => dreg`
    Meta {
        /// What to load.
        key: MetaKey,
        /// Where to.
        dreg: Reg,
    },
    /// `payload load LEN @ BASE + OFFSET => dreg`
    Payload {
        /// Header the offset counts from.
        base: PayloadBase,
        /// Offset in bytes.
        offset: u32,
        /// Length in bytes.
        len: u32,
        /// Where to.
        dreg: Reg,
    },
    /// `cmp OP sreg DATA`: the rule stops unless the comparison holds.
    Cmp {
        /// Register compared.
        sreg: Reg,
        /// Operator.
        op: CmpOp,
        /// Value compared with (as many bytes as are compared).
        data: Vec<u8>,
    },
    /// `bitwise dreg = (sreg & mask) ^ xor`
    Bitwise {
        /// Source register.
        sreg: Reg,
        /// Destination register.
        dreg: Reg,
        /// Mask (its length is the operation's length).
        mask: Vec<u8>,
        /// Xor value (same length as the mask).
        xor: Vec<u8>,
    },
    /// `lookup sreg in @set [=> dreg]`: membership test, or map lookup when `dreg` is set
    /// (a verdict map writes the verdict register).
    Lookup {
        /// Name of the set or map.
        set: String,
        /// Register holding the key (the first of a concatenation).
        sreg: Reg,
        /// Register the mapped data goes to, for maps.
        dreg: Option<Reg>,
        /// Match when the key is *not* in the set.
        invert: bool,
    },
    /// `immediate dreg = DATA`
    Immediate {
        /// Destination register.
        dreg: Reg,
        /// The value.
        data: Vec<u8>,
    },
    /// A verdict (an immediate into the verdict register).
    Verdict(Verdict),
    /// `ct load KEY [DIRECTION] => dreg`
    Ct {
        /// What to load.
        key: CtKey,
        /// Where to.
        dreg: Reg,
        /// For per-direction keys (0 original, 1 reply).
        direction: Option<u8>,
    },
    /// `counter`; values are zero when adding, the current counts when listed.
    Counter {
        /// Packets counted.
        packets: u64,
        /// Bytes counted.
        bytes: u64,
    },
    /// `snat`/`dnat` to the addresses (and ports) held in registers.
    Nat {
        /// Source or destination.
        kind: NatKind,
        /// Address family of the registers' addresses.
        family: IpVersion,
        /// Registers holding the address range.
        addr: Option<RegRange>,
        /// Registers holding the port range (2 bytes, big endian).
        proto: Option<RegRange>,
        /// Range flags.
        flags: NatFlags,
    },
    /// `masquerade` (source NAT to the output interface's address).
    Masquerade {
        /// Range flags.
        flags: NatFlags,
        /// Registers holding a port range, if any.
        proto: Option<RegRange>,
    },
    /// `redirect` (destination NAT to the host itself).
    Redirect {
        /// Range flags.
        flags: NatFlags,
        /// Registers holding a port range, if any.
        proto: Option<RegRange>,
    },
    /// `fib FLAGS RESULT => dreg`: a routing lookup (`fib daddr type`).
    Fib {
        /// What the lookup uses.
        flags: FibFlags,
        /// What it returns.
        result: FibResult,
        /// Where to.
        dreg: Reg,
    },
    /// `numgen inc|random mod MODULUS [offset OFFSET] => dreg`: a number generator, the load
    /// balancer's choice of backend (a counter that goes round, or a random number), a 32-bit
    /// value in host byte order (as a `mark` key).
    Numgen {
        /// Incrementing or random.
        kind: NumgenKind,
        /// The numbers are `offset..offset + modulus`.
        modulus: u32,
        /// Added to each number.
        offset: u32,
        /// Where to.
        dreg: Reg,
    },
    /// An expression wharf does not model, kept as its name and raw attributes.
    Other {
        /// Expression name (`fib`, `limit`, ...).
        name: String,
        /// The raw `NFTA_EXPR_DATA` payload.
        data: Vec<u8>,
    },
}

// ---------------------------------------------------------------------------------------------
// Typed attributes of the expressions netlink-packet-netfilter does not know.

/// Writes a NUL-free fixed-width value; the closures here never fail on buffers sized by
/// `value_len`, so errors are impossible and ignored.
fn put_u32(buf: &mut [u8], v: u32) {
    let _ = emit_u32_be(buf, v);
}

fn put_u64(buf: &mut [u8], v: u64) {
    let _ = emit_u64_be(buf, v);
}

macro_rules! u32_attrs {
    (
        $(#[$doc:meta])*
        $name:ident { $($(#[$vdoc:meta])* $variant:ident = $kind:expr),* $(,)? }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vdoc])* $variant(u32),)*
            /// An attribute wharf does not model.
            Other(DefaultNla),
        }

        impl Nla for $name {
            fn value_len(&self) -> usize {
                match self {
                    $(Self::$variant(_) => 4,)*
                    Self::Other(a) => a.value_len(),
                }
            }
            fn kind(&self) -> u16 {
                match self {
                    $(Self::$variant(_) => $kind,)*
                    Self::Other(a) => a.kind(),
                }
            }
            fn emit_value(&self, buf: &mut [u8]) {
                match self {
                    $(Self::$variant(v) => put_u32(buf, *v),)*
                    Self::Other(a) => a.emit_value(buf),
                }
            }
        }

        impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for $name {
            fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
                Ok(match buf.kind() {
                    $($kind => Self::$variant(parse_u32_be(buf.value())?),)*
                    _ => Self::Other(DefaultNla::parse(buf)?),
                })
            }
        }
    };
}

u32_attrs! {
    /// Attributes of the `nat` expression (`NFTA_NAT_*`).
    NatAttr {
        /// `NFTA_NAT_TYPE`: 0 snat, 1 dnat.
        Type = 1,
        /// `NFTA_NAT_FAMILY`: `NFPROTO_IPV4` or `NFPROTO_IPV6`.
        Family = 2,
        /// `NFTA_NAT_REG_ADDR_MIN`
        RegAddrMin = 3,
        /// `NFTA_NAT_REG_ADDR_MAX`
        RegAddrMax = 4,
        /// `NFTA_NAT_REG_PROTO_MIN`
        RegProtoMin = 5,
        /// `NFTA_NAT_REG_PROTO_MAX`
        RegProtoMax = 6,
        /// `NFTA_NAT_FLAGS`
        Flags = 7,
    }
}

u32_attrs! {
    /// Attributes of the `masq` expression (`NFTA_MASQ_*`).
    MasqAttr {
        /// `NFTA_MASQ_FLAGS`
        Flags = 1,
        /// `NFTA_MASQ_REG_PROTO_MIN`
        RegProtoMin = 2,
        /// `NFTA_MASQ_REG_PROTO_MAX`
        RegProtoMax = 3,
    }
}

u32_attrs! {
    /// Attributes of the `redir` expression (`NFTA_REDIR_*`).
    RedirAttr {
        /// `NFTA_REDIR_REG_PROTO_MIN`
        RegProtoMin = 1,
        /// `NFTA_REDIR_REG_PROTO_MAX`
        RegProtoMax = 2,
        /// `NFTA_REDIR_FLAGS`
        Flags = 3,
    }
}

u32_attrs! {
    /// Attributes of the `fib` expression (`NFTA_FIB_*`).
    FibAttr {
        /// `NFTA_FIB_DREG`
        Dreg = 1,
        /// `NFTA_FIB_RESULT`
        Result = 2,
        /// `NFTA_FIB_FLAGS`
        Flags = 3,
    }
}

u32_attrs! {
    /// Attributes of the `numgen` expression (`NFTA_NG_*`).
    NumgenAttr {
        /// `NFTA_NG_DREG`
        Dreg = 1,
        /// `NFTA_NG_MODULUS`
        Modulus = 2,
        /// `NFTA_NG_TYPE`: 0 incremental, 1 random.
        Type = 3,
        /// `NFTA_NG_OFFSET`
        Offset = 4,
    }
}

/// How `numgen` makes its numbers (`NFT_NG_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NumgenKind {
    /// `inc`: 0, 1, ... modulus - 1, 0, ... (round robin).
    Inc,
    /// `random`.
    Random,
}

impl NumgenKind {
    fn to_u32(self) -> u32 {
        match self {
            Self::Inc => 0,
            Self::Random => 1,
        }
    }

    fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Inc),
            1 => Some(Self::Random),
            _ => None,
        }
    }
}

/// Attributes of the `ct` expression (`NFTA_CT_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CtAttr {
    /// `NFTA_CT_DREG`
    Dreg(u32),
    /// `NFTA_CT_KEY`
    Key(u32),
    /// `NFTA_CT_DIRECTION` (one byte)
    Direction(u8),
    /// `NFTA_CT_SREG`
    Sreg(u32),
    /// An attribute wharf does not model.
    Other(DefaultNla),
}

impl Nla for CtAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Dreg(_) | Self::Key(_) | Self::Sreg(_) => 4,
            Self::Direction(_) => 1,
            Self::Other(a) => a.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Dreg(_) => 1,
            Self::Key(_) => 2,
            Self::Direction(_) => 3,
            Self::Sreg(_) => 4,
            Self::Other(a) => a.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Self::Dreg(v) | Self::Key(v) | Self::Sreg(v) => put_u32(buf, *v),
            Self::Direction(d) => buf[0] = *d,
            Self::Other(a) => a.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for CtAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            1 => Self::Dreg(parse_u32_be(v)?),
            2 => Self::Key(parse_u32_be(v)?),
            3 => Self::Direction(parse_u8(v)?),
            4 => Self::Sreg(parse_u32_be(v)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// Attributes of the `counter` expression (`NFTA_COUNTER_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CounterAttr {
    /// `NFTA_COUNTER_BYTES`
    Bytes(u64),
    /// `NFTA_COUNTER_PACKETS`
    Packets(u64),
    /// An attribute wharf does not model (e.g. padding).
    Other(DefaultNla),
}

impl Nla for CounterAttr {
    fn value_len(&self) -> usize {
        match self {
            Self::Bytes(_) | Self::Packets(_) => 8,
            Self::Other(a) => a.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            Self::Bytes(_) => 1,
            Self::Packets(_) => 2,
            Self::Other(a) => a.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            Self::Bytes(v) | Self::Packets(v) => put_u64(buf, *v),
            Self::Other(a) => a.emit_value(buf),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Parseable<NlaBuffer<&'a T>> for CounterAttr {
    fn parse(buf: &NlaBuffer<&'a T>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            1 => Self::Bytes(parse_u64_be(v)?),
            2 => Self::Packets(parse_u64_be(v)?),
            _ => Self::Other(DefaultNla::parse(buf)?),
        })
    }
}

/// Converts a typed attribute to the `DefaultNla` that netlink-packet-netfilter carries for
/// expressions it does not know.
pub(crate) fn to_default<N: Nla>(nla: &N) -> DefaultNla {
    let mut value = vec![0u8; nla.value_len()];
    nla.emit_value(&mut value);
    DefaultNla::new(nla.kind(), value)
}

/// The bytes of a list of attributes, as they are on the wire.
pub(crate) fn emit_all<E: Nla>(items: &[E]) -> Vec<u8> {
    let mut buf = vec![0u8; Emitable::buffer_len(&items)];
    Emitable::emit(&items, &mut buf);
    buf
}

/// Parses attributes carried as `DefaultNla`s into a typed attribute enum.
pub(crate) fn from_defaults<N>(attrs: &[DefaultNla]) -> Result<Vec<N>, DecodeError>
where
    N: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
{
    let bytes = emit_all(attrs);
    NlasIterator::new(bytes.as_slice())
        .map(|nla| N::parse(&nla?))
        .collect()
}

fn other(name: &str, attrs: Vec<DefaultNla>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_owned(),
        attributes: attrs,
    }
}

fn range_attrs<A>(range: Option<RegRange>, min: fn(u32) -> A, max: fn(u32) -> A) -> Vec<A> {
    match range {
        Some(r) => vec![min(r.min.0), max(r.max.0)],
        None => Vec::new(),
    }
}

impl Expr {
    /// The kernel's name of the expression (`meta`, `cmp`, `nat`...).
    pub fn name(&self) -> &str {
        match self {
            Self::Meta { .. } => "meta",
            Self::Payload { .. } => "payload",
            Self::Cmp { .. } => "cmp",
            Self::Bitwise { .. } => "bitwise",
            Self::Lookup { .. } => "lookup",
            Self::Immediate { .. } | Self::Verdict(_) => "immediate",
            Self::Ct { .. } => "ct",
            Self::Counter { .. } => "counter",
            Self::Nat { .. } => "nat",
            Self::Masquerade { .. } => "masq",
            Self::Redirect { .. } => "redir",
            Self::Fib { .. } => "fib",
            Self::Numgen { .. } => "numgen",
            Self::Other { name, .. } => name,
        }
    }

    /// The `NFTA_EXPR_DATA` content, in netlink-packet-netfilter's form.
    pub(crate) fn to_expressions(&self) -> Expressions {
        match self {
            Self::Meta { key, dreg } => Expressions::Meta(vec![
                Meta::Key((*key).into()),
                Meta::DestinationRegister((*dreg).into()),
            ]),
            Self::Payload {
                base,
                offset,
                len,
                dreg,
            } => Expressions::Payload(vec![
                Payload::DestinationRegister((*dreg).into()),
                Payload::Base(base.to_u32()),
                Payload::Offset(*offset),
                Payload::Len(*len),
            ]),
            Self::Cmp { sreg, op, data } => Expressions::Cmp(vec![
                Cmp::SourceRegister((*sreg).into()),
                Cmp::Op((*op).into()),
                Cmp::Data(DataAttribute::Value(data.clone())),
            ]),
            Self::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => Expressions::Bitwise(vec![
                Bitwise::SourceRegister((*sreg).into()),
                Bitwise::DestinationRegister((*dreg).into()),
                Bitwise::Length(mask.len() as u32),
                Bitwise::Mask(DataAttribute::Value(mask.clone())),
                Bitwise::Xor(DataAttribute::Value(xor.clone())),
            ]),
            Self::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                let mut attrs = vec![
                    Lookup::SourceRegister((*sreg).into()),
                    Lookup::Set(set.clone()),
                ];
                if let Some(dreg) = dreg {
                    attrs.push(Lookup::DestinationRegister((*dreg).into()));
                }
                if *invert {
                    attrs.push(Lookup::Flags(1));
                }
                Expressions::Lookup(attrs)
            }
            Self::Immediate { dreg, data } => Expressions::Immediate(vec![
                Immediate::DestinationRegister((*dreg).into()),
                Immediate::Data(DataAttribute::Value(data.clone())),
            ]),
            Self::Verdict(v) => Expressions::Immediate(vec![
                Immediate::DestinationRegister(Reg::VERDICT.into()),
                Immediate::Data(DataAttribute::Verdict(v.to_attrs())),
            ]),
            Self::Ct {
                key,
                dreg,
                direction,
            } => {
                let mut attrs = vec![CtAttr::Key(key.to_u32()), CtAttr::Dreg(dreg.0)];
                if let Some(d) = direction {
                    attrs.push(CtAttr::Direction(*d));
                }
                other("ct", attrs.iter().map(to_default).collect())
            }
            Self::Counter { packets, bytes } => {
                let attrs: Vec<CounterAttr> = if *packets == 0 && *bytes == 0 {
                    Vec::new()
                } else {
                    vec![CounterAttr::Bytes(*bytes), CounterAttr::Packets(*packets)]
                };
                other("counter", attrs.iter().map(to_default).collect())
            }
            Self::Nat {
                kind,
                family,
                addr,
                proto,
                flags,
            } => {
                let mut attrs = vec![
                    NatAttr::Type(match kind {
                        NatKind::Snat => 0,
                        NatKind::Dnat => 1,
                    }),
                    NatAttr::Family(family.nfproto().into()),
                ];
                attrs.extend(range_attrs(*addr, NatAttr::RegAddrMin, NatAttr::RegAddrMax));
                attrs.extend(range_attrs(
                    *proto,
                    NatAttr::RegProtoMin,
                    NatAttr::RegProtoMax,
                ));
                if flags.0 != 0 {
                    attrs.push(NatAttr::Flags(flags.0));
                }
                other("nat", attrs.iter().map(to_default).collect())
            }
            Self::Masquerade { flags, proto } => {
                let mut attrs = Vec::new();
                if flags.0 != 0 {
                    attrs.push(MasqAttr::Flags(flags.0));
                }
                attrs.extend(range_attrs(
                    *proto,
                    MasqAttr::RegProtoMin,
                    MasqAttr::RegProtoMax,
                ));
                other("masq", attrs.iter().map(to_default).collect())
            }
            Self::Redirect { flags, proto } => {
                let mut attrs = range_attrs(*proto, RedirAttr::RegProtoMin, RedirAttr::RegProtoMax);
                if flags.0 != 0 {
                    attrs.push(RedirAttr::Flags(flags.0));
                }
                other("redir", attrs.iter().map(to_default).collect())
            }
            Self::Fib {
                flags,
                result,
                dreg,
            } => {
                let attrs = [
                    FibAttr::Dreg(dreg.0),
                    FibAttr::Result(result.to_u32()),
                    FibAttr::Flags(flags.0),
                ];
                other("fib", attrs.iter().map(to_default).collect())
            }
            Self::Numgen {
                kind,
                modulus,
                offset,
                dreg,
            } => {
                // As nft sends it: the offset always, zero included.
                let attrs = [
                    NumgenAttr::Dreg(dreg.0),
                    NumgenAttr::Modulus(*modulus),
                    NumgenAttr::Type(kind.to_u32()),
                    NumgenAttr::Offset(*offset),
                ];
                other("numgen", attrs.iter().map(to_default).collect())
            }
            Self::Other { name, data } => {
                let attrs = NlasIterator::new(data.as_slice())
                    .filter_map(|nla| DefaultNla::parse(&nla.ok()?).ok())
                    .collect();
                other(name, attrs)
            }
        }
    }

    /// The rule-list element (`NFTA_LIST_ELEM { NAME, DATA }`) of this expression.
    pub(crate) fn to_list_attr(&self) -> ListAttribute<ExpressionAttribute> {
        ListAttribute::Element(vec![
            ExpressionAttribute::Name(self.name().to_owned()),
            ExpressionAttribute::Data(self.to_expressions()),
        ])
    }

    /// Decodes one rule-list element back into an [`Expr`]; anything not modelled (or not in
    /// the shape wharf emits) becomes [`Expr::Other`], so listing never fails on foreign rules.
    pub(crate) fn from_list_attr(attr: &ListAttribute<ExpressionAttribute>) -> Expr {
        let ListAttribute::Element(parts) = attr else {
            return Expr::Other {
                name: String::new(),
                data: Vec::new(),
            };
        };
        let mut name = String::new();
        let mut data = None;
        for p in parts {
            match p {
                ExpressionAttribute::Name(n) => name = n.clone(),
                ExpressionAttribute::Data(d) => data = Some(d),
                _ => {}
            }
        }
        let Some(data) = data else {
            return Expr::Other {
                name,
                data: Vec::new(),
            };
        };
        decode(&name, data).unwrap_or_else(|| Expr::Other {
            name,
            data: {
                let mut buf = vec![0u8; data.buffer_len()];
                data.emit(&mut buf);
                buf
            },
        })
    }
}

fn value(d: &DataAttribute) -> Option<Vec<u8>> {
    match d {
        DataAttribute::Value(v) => Some(v.clone()),
        _ => None,
    }
}

fn range(min: Option<u32>, max: Option<u32>) -> Option<RegRange> {
    let min = Reg(min?);
    Some(RegRange {
        min,
        max: max.map(Reg).unwrap_or(min),
    })
}

fn decode(name: &str, data: &Expressions) -> Option<Expr> {
    Some(match data {
        Expressions::Meta(attrs) => {
            let (mut key, mut dreg) = (None, None);
            for a in attrs {
                match a {
                    Meta::Key(k) => key = Some(MetaKey::from(*k)),
                    Meta::DestinationRegister(r) => dreg = Some(Reg::from(*r)),
                    _ => return None,
                }
            }
            Expr::Meta {
                key: key?,
                dreg: dreg?,
            }
        }
        Expressions::Payload(attrs) => {
            let (mut base, mut offset, mut len, mut dreg) = (None, None, None, None);
            for a in attrs {
                match a {
                    Payload::Base(b) => base = Some(PayloadBase::from_u32(*b)),
                    Payload::Offset(o) => offset = Some(*o),
                    Payload::Len(l) => len = Some(*l),
                    Payload::DestinationRegister(r) => dreg = Some(Reg::from(*r)),
                    _ => return None,
                }
            }
            Expr::Payload {
                base: base?,
                offset: offset?,
                len: len?,
                dreg: dreg?,
            }
        }
        Expressions::Cmp(attrs) => {
            let (mut sreg, mut op, mut bytes) = (None, None, None);
            for a in attrs {
                match a {
                    Cmp::SourceRegister(r) => sreg = Some(Reg::from(*r)),
                    Cmp::Op(o) => op = CmpOp::from_u32(u32::from(*o)),
                    Cmp::Data(d) => bytes = value(d),
                    _ => return None,
                }
            }
            Expr::Cmp {
                sreg: sreg?,
                op: op?,
                data: bytes?,
            }
        }
        Expressions::Bitwise(attrs) => {
            let (mut sreg, mut dreg, mut mask, mut xor) = (None, None, None, None);
            for a in attrs {
                match a {
                    Bitwise::SourceRegister(r) => sreg = Some(Reg::from(*r)),
                    Bitwise::DestinationRegister(r) => dreg = Some(Reg::from(*r)),
                    Bitwise::Mask(d) => mask = value(d),
                    Bitwise::Xor(d) => xor = value(d),
                    Bitwise::Length(_) => {}
                    // NFT_BITWISE_BOOL (mask and xor) is the only operation wharf emits.
                    Bitwise::Op(0) => {}
                    _ => return None,
                }
            }
            Expr::Bitwise {
                sreg: sreg?,
                dreg: dreg?,
                mask: mask?,
                xor: xor?,
            }
        }
        Expressions::Lookup(attrs) => {
            let (mut set, mut sreg, mut dreg, mut invert) = (None, None, None, false);
            for a in attrs {
                match a {
                    Lookup::Set(s) => set = Some(s.clone()),
                    Lookup::SourceRegister(r) => sreg = Some(Reg::from(*r)),
                    Lookup::DestinationRegister(r) => dreg = Some(Reg::from(*r)),
                    Lookup::Flags(f) => invert = f & 1 != 0,
                    Lookup::SetId(_) => {}
                    _ => return None,
                }
            }
            Expr::Lookup {
                set: set?,
                sreg: sreg?,
                dreg,
                invert,
            }
        }
        Expressions::Immediate(attrs) => {
            let (mut dreg, mut data) = (None, None);
            for a in attrs {
                match a {
                    Immediate::DestinationRegister(r) => dreg = Some(Reg::from(*r)),
                    Immediate::Data(d) => data = Some(d),
                    _ => return None,
                }
            }
            match (dreg?, data?) {
                (Reg::VERDICT, DataAttribute::Verdict(v)) => Expr::Verdict(Verdict::from_attrs(v)?),
                (dreg, DataAttribute::Value(v)) => Expr::Immediate {
                    dreg,
                    data: v.clone(),
                },
                _ => return None,
            }
        }
        Expressions::Other { attributes, .. } => decode_other(name, attributes)?,
        _ => return None,
    })
}

fn decode_other(name: &str, attrs: &[DefaultNla]) -> Option<Expr> {
    Some(match name {
        "ct" => {
            let (mut key, mut dreg, mut direction) = (None, None, None);
            for a in from_defaults::<CtAttr>(attrs).ok()? {
                match a {
                    CtAttr::Key(k) => key = Some(CtKey::from_u32(k)),
                    CtAttr::Dreg(r) => dreg = Some(Reg(r)),
                    CtAttr::Direction(d) => direction = Some(d),
                    _ => return None,
                }
            }
            Expr::Ct {
                key: key?,
                dreg: dreg?,
                direction,
            }
        }
        "counter" => {
            let (mut packets, mut bytes) = (0, 0);
            for a in from_defaults::<CounterAttr>(attrs).ok()? {
                match a {
                    CounterAttr::Packets(p) => packets = p,
                    CounterAttr::Bytes(b) => bytes = b,
                    CounterAttr::Other(_) => {} // NFTA_COUNTER_PAD
                }
            }
            Expr::Counter { packets, bytes }
        }
        "nat" => {
            let (mut kind, mut family, mut flags) = (None, None, NatFlags(0));
            let (mut amin, mut amax, mut pmin, mut pmax) = (None, None, None, None);
            for a in from_defaults::<NatAttr>(attrs).ok()? {
                match a {
                    NatAttr::Type(0) => kind = Some(NatKind::Snat),
                    NatAttr::Type(1) => kind = Some(NatKind::Dnat),
                    NatAttr::Family(f) => family = IpVersion::from_nfproto(f),
                    NatAttr::RegAddrMin(r) => amin = Some(r),
                    NatAttr::RegAddrMax(r) => amax = Some(r),
                    NatAttr::RegProtoMin(r) => pmin = Some(r),
                    NatAttr::RegProtoMax(r) => pmax = Some(r),
                    NatAttr::Flags(f) => flags = NatFlags(f),
                    _ => return None,
                }
            }
            Expr::Nat {
                kind: kind?,
                family: family?,
                addr: range(amin, amax),
                proto: range(pmin, pmax),
                flags,
            }
        }
        "masq" => {
            let (mut flags, mut pmin, mut pmax) = (NatFlags(0), None, None);
            for a in from_defaults::<MasqAttr>(attrs).ok()? {
                match a {
                    MasqAttr::Flags(f) => flags = NatFlags(f),
                    MasqAttr::RegProtoMin(r) => pmin = Some(r),
                    MasqAttr::RegProtoMax(r) => pmax = Some(r),
                    _ => return None,
                }
            }
            Expr::Masquerade {
                flags,
                proto: range(pmin, pmax),
            }
        }
        "fib" => {
            let (mut flags, mut result, mut dreg) = (FibFlags(0), None, None);
            for a in from_defaults::<FibAttr>(attrs).ok()? {
                match a {
                    FibAttr::Flags(f) => flags = FibFlags(f),
                    FibAttr::Result(r) => result = Some(FibResult::from_u32(r)),
                    FibAttr::Dreg(r) => dreg = Some(Reg(r)),
                    _ => return None,
                }
            }
            Expr::Fib {
                flags,
                result: result?,
                dreg: dreg?,
            }
        }
        "numgen" => {
            let (mut kind, mut modulus, mut offset, mut dreg) = (None, None, 0, None);
            for a in from_defaults::<NumgenAttr>(attrs).ok()? {
                match a {
                    NumgenAttr::Dreg(r) => dreg = Some(Reg(r)),
                    NumgenAttr::Modulus(m) => modulus = Some(m),
                    NumgenAttr::Type(t) => kind = NumgenKind::from_u32(t),
                    NumgenAttr::Offset(o) => offset = o,
                    _ => return None,
                }
            }
            Expr::Numgen {
                kind: kind?,
                modulus: modulus?,
                offset,
                dreg: dreg?,
            }
        }
        "redir" => {
            let (mut flags, mut pmin, mut pmax) = (NatFlags(0), None, None);
            for a in from_defaults::<RedirAttr>(attrs).ok()? {
                match a {
                    RedirAttr::Flags(f) => flags = NatFlags(f),
                    RedirAttr::RegProtoMin(r) => pmin = Some(r),
                    RedirAttr::RegProtoMax(r) => pmax = Some(r),
                    _ => return None,
                }
            }
            Expr::Redirect {
                flags,
                proto: range(pmin, pmax),
            }
        }
        _ => return None,
    })
}
