//! Rules, and the builder that writes them the way `nft` rules read.
//!
//! Each builder method appends the expressions `nft` itself would generate for the same words,
//! including the implicit dependencies (`ip saddr` in an `inet` table first checks
//! `meta nfproto ipv4`; `tcp dport` first checks `meta l4proto tcp`), so a rule built here and
//! the same rule typed into `nft` are byte-for-byte the same in the kernel.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_netfilter::nftables::RuleAttribute;
use serde::{Deserialize, Serialize};

use super::expr::{
    CmpOp, CtKey, CtState, CtStatus, Expr, FibFlags, FibResult, IpVersion, MetaKey, NatFlags,
    NatKind, PayloadBase, RTN_LOCAL, Reg, RegRange, Verdict,
};
use super::set::{DataType, KeyType, Value};
use super::table::{Family, Table};

/// A packet field a rule can match on or use as a set key (the left-hand side of an `nft`
/// match: `iifname`, `ip saddr`, `tcp dport`...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Field {
    /// `iifname`
    IifName,
    /// `oifname`
    OifName,
    /// `meta nfproto`
    NfProto,
    /// `meta l4proto`
    L4Proto,
    /// `meta mark`
    Mark,
    /// `ip saddr`
    IpSaddr,
    /// `ip daddr`
    IpDaddr,
    /// `ip6 saddr`
    Ip6Saddr,
    /// `ip6 daddr`
    Ip6Daddr,
    /// `tcp sport`
    TcpSport,
    /// `tcp dport`
    TcpDport,
    /// `udp sport`
    UdpSport,
    /// `udp dport`
    UdpDport,
}

/// `IPPROTO_TCP`
pub const IPPROTO_TCP: u8 = 6;
/// `IPPROTO_UDP`
pub const IPPROTO_UDP: u8 = 17;
/// `IPPROTO_ICMP`
pub const IPPROTO_ICMP: u8 = 1;

/// A check a field needs before it can be loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dep {
    Ip(IpVersion),
    L4(u8),
}

impl Field {
    /// The datatype of the field's value (what a set keyed by it holds).
    pub fn data_type(self) -> DataType {
        match self {
            Self::IifName | Self::OifName => DataType::IfName,
            Self::NfProto => DataType::Other { id: 0, len: 1 },
            Self::L4Proto => DataType::InetProto,
            Self::Mark => DataType::Mark,
            Self::IpSaddr | Self::IpDaddr => DataType::Ipv4Addr,
            Self::Ip6Saddr | Self::Ip6Daddr => DataType::Ipv6Addr,
            Self::TcpSport | Self::TcpDport | Self::UdpSport | Self::UdpDport => {
                DataType::InetService
            }
        }
    }

    fn len(self) -> u32 {
        match self {
            Self::NfProto => 1,
            other => other.data_type().byte_len(),
        }
    }

    fn dep(self) -> Option<Dep> {
        match self {
            Self::IpSaddr | Self::IpDaddr => Some(Dep::Ip(IpVersion::V4)),
            Self::Ip6Saddr | Self::Ip6Daddr => Some(Dep::Ip(IpVersion::V6)),
            Self::TcpSport | Self::TcpDport => Some(Dep::L4(IPPROTO_TCP)),
            Self::UdpSport | Self::UdpDport => Some(Dep::L4(IPPROTO_UDP)),
            _ => None,
        }
    }

    /// The expression loading this field into `dreg`.
    pub fn load(self, dreg: Reg) -> Expr {
        let meta = |key| Expr::Meta { key, dreg };
        let payload = |base, offset, len| Expr::Payload {
            base,
            offset,
            len,
            dreg,
        };
        match self {
            Self::IifName => meta(MetaKey::IifName),
            Self::OifName => meta(MetaKey::OifName),
            Self::NfProto => meta(MetaKey::NfProto),
            Self::L4Proto => meta(MetaKey::L4Proto),
            Self::Mark => meta(MetaKey::Mark),
            Self::IpSaddr => payload(PayloadBase::Network, 12, 4),
            Self::IpDaddr => payload(PayloadBase::Network, 16, 4),
            Self::Ip6Saddr => payload(PayloadBase::Network, 8, 16),
            Self::Ip6Daddr => payload(PayloadBase::Network, 24, 16),
            Self::TcpSport | Self::UdpSport => payload(PayloadBase::Transport, 0, 2),
            Self::TcpDport | Self::UdpDport => payload(PayloadBase::Transport, 2, 2),
        }
    }

    fn with_len(self, len: u32, dreg: Reg) -> Expr {
        match self.load(dreg) {
            Expr::Payload {
                base, offset, dreg, ..
            } => Expr::Payload {
                base,
                offset,
                len,
                dreg,
            },
            other => other,
        }
    }
}

/// `NFTNL_UDATA_RULE_COMMENT`: the userdata TLV type `nft` stores comments under.
const UDATA_RULE_COMMENT: u8 = 0;

/// A rule: a list of expressions in a chain, with an optional comment.
///
/// ```
/// use wharf::sys::nft::{Rule, Table};
/// let t = Table::inet("wharf");
/// let subnet = "10.1.0.0/24".parse().unwrap();
/// // ip saddr 10.1.0.0/24 oifname != "br0" counter masquerade
/// let r = Rule::new(&t, "postrouting")
///     .saddr_in(subnet)
///     .oifname_ne("br0")
///     .counter()
///     .masquerade();
/// assert_eq!(r.exprs.len(), 8);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// The table of the chain.
    pub table: Table,
    /// The chain.
    pub chain: String,
    /// The expressions, in order.
    pub exprs: Vec<Expr>,
    /// A comment (`comment "..."`), stored as rule userdata as `nft` does.
    pub comment: Option<String>,
    /// The kernel's handle, when listed (used to delete or insert relative to the rule).
    pub handle: Option<u64>,
}

impl Rule {
    /// An empty rule for `chain` of `table`.
    pub fn new(table: &Table, chain: impl Into<String>) -> Self {
        Self {
            table: table.clone(),
            chain: chain.into(),
            exprs: Vec::new(),
            comment: None,
            handle: None,
        }
    }

    /// Appends a raw expression.
    pub fn expr(mut self, e: Expr) -> Self {
        self.exprs.push(e);
        self
    }

    /// Sets the comment.
    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = Some(c.into());
        self
    }

    /// Whether this rule does the same as `other`: same place, expressions and comment,
    /// ignoring counter values and handles (what a reconcile compares).
    pub fn same_as(&self, other: &Rule) -> bool {
        fn norm(e: &Expr) -> Expr {
            match e {
                Expr::Counter { .. } => Expr::Counter {
                    packets: 0,
                    bytes: 0,
                },
                e => e.clone(),
            }
        }
        self.table == other.table
            && self.chain == other.chain
            && self.comment == other.comment
            && self.exprs.len() == other.exprs.len()
            && self
                .exprs
                .iter()
                .zip(&other.exprs)
                .all(|(a, b)| norm(a) == norm(b))
    }

    // ---- dependencies ----------------------------------------------------------------------

    fn has_check(&self, key: MetaKey, data: &[u8]) -> bool {
        self.exprs.windows(2).any(|w| {
            matches!(&w[0], Expr::Meta { key: k, dreg: Reg::R1 } if *k == key)
                && matches!(&w[1], Expr::Cmp { sreg: Reg::R1, op: CmpOp::Eq, data: d } if d == data)
        })
    }

    fn check(mut self, key: MetaKey, data: Vec<u8>) -> Self {
        if !self.has_check(key, &data) {
            self.exprs.push(Expr::Meta { key, dreg: Reg::R1 });
            self.exprs.push(Expr::Cmp {
                sreg: Reg::R1,
                op: CmpOp::Eq,
                data,
            });
        }
        self
    }

    fn dep(self, dep: Option<Dep>) -> Self {
        match dep {
            None => self,
            Some(Dep::L4(proto)) => self.check(MetaKey::L4Proto, vec![proto]),
            Some(Dep::Ip(v)) => match self.table.family {
                Family::Inet => self.check(MetaKey::NfProto, vec![v.nfproto()]),
                Family::Bridge | Family::Netdev => {
                    let ethertype: u16 = match v {
                        IpVersion::V4 => 0x0800,
                        IpVersion::V6 => 0x86dd,
                    };
                    self.check(MetaKey::Protocol, ethertype.to_be_bytes().to_vec())
                }
                Family::Ip | Family::Ip6 | Family::Arp => self,
            },
        }
    }

    // ---- matches ---------------------------------------------------------------------------

    /// `FIELD OP VALUE`, e.g. `tcp dport != 22`.
    pub fn cmp(self, field: Field, op: CmpOp, value: &Value) -> Self {
        let mut data = value.to_bytes();
        data.resize(field.len() as usize, 0);
        let mut r = self.dep(field.dep());
        r.exprs.push(field.load(Reg::R1));
        r.exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op,
            data,
        });
        r
    }

    /// `iifname "NAME"`
    pub fn iifname_eq(self, name: &str) -> Self {
        self.cmp(Field::IifName, CmpOp::Eq, &Value::IfName(name.into()))
    }

    /// `iifname != "NAME"`
    pub fn iifname_ne(self, name: &str) -> Self {
        self.cmp(Field::IifName, CmpOp::Ne, &Value::IfName(name.into()))
    }

    /// `oifname "NAME"`
    pub fn oifname_eq(self, name: &str) -> Self {
        self.cmp(Field::OifName, CmpOp::Eq, &Value::IfName(name.into()))
    }

    /// `oifname != "NAME"`
    pub fn oifname_ne(self, name: &str) -> Self {
        self.cmp(Field::OifName, CmpOp::Ne, &Value::IfName(name.into()))
    }

    /// `meta l4proto PROTO` (e.g. [`IPPROTO_TCP`]).
    pub fn l4proto_eq(self, proto: u8) -> Self {
        self.cmp(Field::L4Proto, CmpOp::Eq, &Value::Proto(proto))
    }

    /// `tcp dport PORT`
    pub fn tcp_dport_eq(self, port: u16) -> Self {
        self.cmp(Field::TcpDport, CmpOp::Eq, &Value::Port(port))
    }

    /// `udp dport PORT`
    pub fn udp_dport_eq(self, port: u16) -> Self {
        self.cmp(Field::UdpDport, CmpOp::Eq, &Value::Port(port))
    }

    fn prefix(self, v4: Field, v6: Field, net: IpNetwork, op: CmpOp) -> Self {
        let (field, addr) = match net {
            IpNetwork::V4(n) => (v4, n.network().octets().to_vec()),
            IpNetwork::V6(n) => (v6, n.network().octets().to_vec()),
        };
        let prefix = u32::from(net.prefix());
        let mut r = self.dep(field.dep());
        if prefix == 0 {
            // Matches every address of the family: the dependency alone says it.
            return r;
        }
        if prefix % 8 == 0 {
            let len = prefix / 8;
            r.exprs.push(field.with_len(len, Reg::R1));
            r.exprs.push(Expr::Cmp {
                sreg: Reg::R1,
                op,
                data: addr[..len as usize].to_vec(),
            });
        } else {
            let mask: Vec<u8> = (0..addr.len() as u32)
                .map(|i| {
                    let bits = prefix.saturating_sub(i * 8).min(8);
                    (0xffu16 << (8 - bits)) as u8
                })
                .collect();
            r.exprs.push(field.load(Reg::R1));
            r.exprs.push(Expr::Bitwise {
                sreg: Reg::R1,
                dreg: Reg::R1,
                xor: vec![0; mask.len()],
                mask,
            });
            r.exprs.push(Expr::Cmp {
                sreg: Reg::R1,
                op,
                data: addr,
            });
        }
        r
    }

    /// `ip saddr NET` / `ip6 saddr NET` (an address is a /32 or /128 network).
    pub fn saddr_in(self, net: IpNetwork) -> Self {
        self.prefix(Field::IpSaddr, Field::Ip6Saddr, net, CmpOp::Eq)
    }

    /// `ip saddr != NET` / `ip6 saddr != NET`
    pub fn saddr_not_in(self, net: IpNetwork) -> Self {
        self.prefix(Field::IpSaddr, Field::Ip6Saddr, net, CmpOp::Ne)
    }

    /// `ip daddr NET` / `ip6 daddr NET`
    pub fn daddr_in(self, net: IpNetwork) -> Self {
        self.prefix(Field::IpDaddr, Field::Ip6Daddr, net, CmpOp::Eq)
    }

    /// `ip daddr != NET` / `ip6 daddr != NET`
    pub fn daddr_not_in(self, net: IpNetwork) -> Self {
        self.prefix(Field::IpDaddr, Field::Ip6Daddr, net, CmpOp::Ne)
    }

    /// `ip saddr NET` for an IPv4 network (the brief's spelling of [`Rule::saddr_in`]).
    pub fn ip_saddr_in(self, net: ipnetwork::Ipv4Network) -> Self {
        self.saddr_in(IpNetwork::V4(net))
    }

    /// `ip daddr NET` for an IPv4 network.
    pub fn ip_daddr_in(self, net: ipnetwork::Ipv4Network) -> Self {
        self.daddr_in(IpNetwork::V4(net))
    }

    /// `ct state STATES`, e.g. `CtState::ESTABLISHED | CtState::RELATED`.
    pub fn ct_state_in(mut self, states: CtState) -> Self {
        self.exprs.push(Expr::Ct {
            key: CtKey::State,
            dreg: Reg::R1,
            direction: None,
        });
        self.exprs.push(Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: states.0.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        });
        self.exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Ne,
            data: vec![0; 4],
        });
        self
    }

    /// `ct status STATUS`: any of the given status bits is set, e.g. `ct status dnat`.
    pub fn ct_status_in(mut self, status: CtStatus) -> Self {
        self.exprs.push(Expr::Ct {
            key: CtKey::Status,
            dreg: Reg::R1,
            direction: None,
        });
        self.exprs.push(Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: status.0.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        });
        self.exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Ne,
            data: vec![0; 4],
        });
        self
    }

    /// `fib daddr type local`: the destination is one of the host's own addresses (any
    /// interface's, loopback included).
    pub fn fib_daddr_local(mut self) -> Self {
        self.exprs.push(Expr::Fib {
            flags: FibFlags::DADDR,
            result: FibResult::AddrType,
            dreg: Reg::R1,
        });
        self.exprs.push(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        });
        self
    }

    /// `meta nfproto ipv4` / `ipv6` (in an `inet` table: the packet's IP version).
    pub fn nfproto_eq(self, v: IpVersion) -> Self {
        self.check(MetaKey::NfProto, vec![v.nfproto()])
    }

    /// Loads `fields` as a (concatenated) key starting at register 1, with their
    /// dependencies first, as `nft` does.
    fn load_key(mut self, fields: &[Field]) -> Self {
        for f in fields {
            self = self.dep(f.dep());
        }
        let mut words = 0;
        for f in fields {
            self.exprs.push(f.load(Reg::at_word(words)));
            words += f.len().div_ceil(4);
        }
        self
    }

    fn lookup(self, fields: &[Field], set: &str, dreg: Option<Reg>, invert: bool) -> Self {
        let mut r = self.load_key(fields);
        r.exprs.push(Expr::Lookup {
            set: set.to_owned(),
            sreg: Reg::R1,
            dreg,
            invert,
        });
        r
    }

    /// `KEY @SET`: the (concatenated) key is in the set, e.g. `iifname @bridges`.
    pub fn in_set(self, key: &[Field], set: &str) -> Self {
        self.lookup(key, set, None, false)
    }

    /// `KEY != @SET`
    pub fn not_in_set(self, key: &[Field], set: &str) -> Self {
        self.lookup(key, set, None, true)
    }

    /// `iifname @SET`
    pub fn iifname_in(self, set: &str) -> Self {
        self.in_set(&[Field::IifName], set)
    }

    /// `oifname @SET`
    pub fn oifname_in(self, set: &str) -> Self {
        self.in_set(&[Field::OifName], set)
    }

    /// `KEY vmap @MAP`: the verdict is what the key maps to (no verdict if it is absent).
    pub fn vmap(self, key: &[Field], map: &str) -> Self {
        self.lookup(key, map, Some(Reg::VERDICT), false)
    }

    // ---- statements ------------------------------------------------------------------------

    /// `counter`
    pub fn counter(mut self) -> Self {
        self.exprs.push(Expr::Counter {
            packets: 0,
            bytes: 0,
        });
        self
    }

    /// A verdict statement.
    pub fn verdict(mut self, v: Verdict) -> Self {
        self.exprs.push(Expr::Verdict(v));
        self
    }

    /// `accept`
    pub fn accept(self) -> Self {
        self.verdict(Verdict::Accept)
    }

    /// `drop`
    pub fn drop(self) -> Self {
        self.verdict(Verdict::Drop)
    }

    /// `return`
    pub fn ret(self) -> Self {
        self.verdict(Verdict::Return)
    }

    /// `jump CHAIN`
    pub fn jump(self, chain: &str) -> Self {
        self.verdict(Verdict::Jump(chain.into()))
    }

    /// `goto CHAIN`
    pub fn goto(self, chain: &str) -> Self {
        self.verdict(Verdict::Goto(chain.into()))
    }

    /// `masquerade`
    pub fn masquerade(mut self) -> Self {
        self.exprs.push(Expr::Masquerade {
            flags: NatFlags::default(),
            proto: None,
        });
        self
    }

    fn nat_to(mut self, kind: NatKind, addr: IpAddr, port: Option<u16>) -> Self {
        let (family, bytes) = match addr {
            IpAddr::V4(a) => (IpVersion::V4, a.octets().to_vec()),
            IpAddr::V6(a) => (IpVersion::V6, a.octets().to_vec()),
        };
        self.exprs.push(Expr::Immediate {
            dreg: Reg::R1,
            data: bytes,
        });
        let mut flags = NatFlags::MAP_IPS;
        let mut proto = None;
        if let Some(port) = port {
            self.exprs.push(Expr::Immediate {
                dreg: Reg::R2,
                data: port.to_be_bytes().to_vec(),
            });
            flags = flags | NatFlags::PROTO_SPECIFIED;
            proto = Some(RegRange::one(Reg::R2));
        }
        self.exprs.push(Expr::Nat {
            kind,
            family,
            addr: Some(RegRange::one(Reg::R1)),
            proto,
            flags,
        });
        self
    }

    /// `snat ip to ADDR` (or `ip6`).
    pub fn snat(self, addr: IpAddr) -> Self {
        self.nat_to(NatKind::Snat, addr, None)
    }

    /// `dnat ip to ADDR[:PORT]` (or `ip6`).
    pub fn dnat(self, addr: IpAddr, port: Option<u16>) -> Self {
        self.nat_to(NatKind::Dnat, addr, port)
    }

    /// `dnat ip to KEY map @MAP`, the published-port rule: the (concatenated) key is looked up
    /// in `map`, whose values are of type `data` (`ipv4_addr` or `ipv4_addr . inet_service`,
    /// or the IPv6 equivalents); the packet's destination is rewritten to the value found.
    ///
    /// ```
    /// use wharf::sys::nft::{DataType, Field, Rule, Table};
    /// let t = Table::inet("wharf");
    /// // dnat ip to ip daddr . tcp dport map @ports
    /// let r = Rule::new(&t, "prerouting").dnat_map(
    ///     &[Field::IpDaddr, Field::TcpDport],
    ///     "ports",
    ///     &DataType::Ipv4Addr.concat(DataType::InetService),
    /// );
    /// assert_eq!(r.exprs.len(), 8);
    /// ```
    pub fn dnat_map(self, key: &[Field], map: &str, data: &KeyType) -> Self {
        let mut r = self.lookup(key, map, Some(Reg::R1), false);
        let (family, addr_len) = match data.fields().first() {
            Some(DataType::Ipv6Addr) => (IpVersion::V6, 16),
            _ => (IpVersion::V4, 4),
        };
        let has_port = data.fields().get(1) == Some(&DataType::InetService);
        let mut flags = NatFlags::MAP_IPS;
        let mut proto = None;
        if has_port {
            flags = flags | NatFlags::PROTO_SPECIFIED;
            proto = Some(RegRange::one(Reg::at_word(addr_len / 4)));
        }
        r.exprs.push(Expr::Nat {
            kind: NatKind::Dnat,
            family,
            addr: Some(RegRange::one(Reg::R1)),
            proto,
            flags,
        });
        r
    }

    /// `dnat ip to numgen inc mod N map @MAP [: PORT]`, a load balancer: a number that goes
    /// round `0..modulus` picks the new destination from `map` (type `mark : ipv4_addr`, or
    /// `ipv6_addr`; elements `0..modulus`, keys as [`Value::Mark`](super::Value::Mark)), and
    /// the destination port becomes `port` if given. Each new connection takes the next
    /// element; conntrack keeps a connection on the one it got.
    ///
    /// ```
    /// use wharf::sys::nft::{Expr, IpVersion, Rule, Table};
    /// let t = Table::ip("mesh");
    /// let r = Rule::new(&t, "prerouting").tcp_dport_eq(80).dnat_numgen(3, "be", IpVersion::V4, Some(8080));
    /// assert!(matches!(r.exprs[r.exprs.len() - 4], Expr::Numgen { modulus: 3, .. }));
    /// ```
    pub fn dnat_numgen(
        mut self,
        modulus: u32,
        map: &str,
        family: IpVersion,
        port: Option<u16>,
    ) -> Self {
        self.exprs.push(Expr::Numgen {
            kind: super::expr::NumgenKind::Inc,
            modulus,
            offset: 0,
            dreg: Reg::R1,
        });
        self.exprs.push(Expr::Lookup {
            set: map.to_owned(),
            sreg: Reg::R1,
            dreg: Some(Reg::R1),
            invert: false,
        });
        let mut flags = NatFlags::MAP_IPS;
        let mut proto = None;
        if let Some(port) = port {
            self.exprs.push(Expr::Immediate {
                dreg: Reg::R2,
                data: port.to_be_bytes().to_vec(),
            });
            flags = flags | NatFlags::PROTO_SPECIFIED;
            proto = Some(RegRange::one(Reg::R2));
        }
        self.exprs.push(Expr::Nat {
            kind: NatKind::Dnat,
            family,
            addr: Some(RegRange::one(Reg::R1)),
            proto,
            flags,
        });
        self
    }

    // ---- encoding --------------------------------------------------------------------------

    pub(crate) fn to_attrs(&self) -> Vec<RuleAttribute> {
        let mut attrs = vec![
            RuleAttribute::Table(self.table.name.clone()),
            RuleAttribute::Chain(self.chain.clone()),
            RuleAttribute::Expressions(self.exprs.iter().map(Expr::to_list_attr).collect()),
        ];
        if let Some(c) = &self.comment {
            attrs.push(RuleAttribute::UserData(comment_udata(c)));
        }
        attrs
    }

    pub(crate) fn from_attrs(table: &Table, attrs: &[RuleAttribute]) -> Option<Self> {
        let mut rule = Rule::new(table, "");
        let mut tname = None;
        for a in attrs {
            match a {
                RuleAttribute::Table(t) => tname = Some(t.as_str()),
                RuleAttribute::Chain(c) => rule.chain = c.clone(),
                RuleAttribute::Handle(h) => rule.handle = Some(*h),
                RuleAttribute::Expressions(list) => {
                    rule.exprs = list.iter().map(Expr::from_list_attr).collect();
                }
                RuleAttribute::UserData(u) => rule.comment = parse_comment(u),
                _ => {}
            }
        }
        (tname? == table.name).then_some(rule)
    }
}

impl std::fmt::Display for Rule {
    /// `rule in chain "forward" of table inet "wharf"`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "chain {:?} of {}", self.chain, self.table)
    }
}

/// The userdata `nft` writes for a comment: a TLV of type 0 holding the NUL-terminated text
/// (cut to 254 bytes, the TLV length limit).
fn comment_udata(comment: &str) -> Vec<u8> {
    let text: Vec<u8> = comment.bytes().filter(|b| *b != 0).take(254).collect();
    let mut out = vec![UDATA_RULE_COMMENT, text.len() as u8 + 1];
    out.extend(text);
    out.push(0);
    out
}

fn parse_comment(mut udata: &[u8]) -> Option<String> {
    while let [kind, len, rest @ ..] = udata {
        let len = usize::from(*len);
        let value = rest.get(..len)?;
        if *kind == UDATA_RULE_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return String::from_utf8(value[..end].to_vec()).ok();
        }
        udata = &rest[len..];
    }
    None
}
