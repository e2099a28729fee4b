//! Encoding tests: wharf's messages against the bytes `nft` sends for the same rule, and
//! encode/decode round trips. No kernel needed.

use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nftables::{NfTablesMessage, RuleMessage};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterMessageInner};

use super::nft_vectors::VECTORS;
use super::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test vector is hex"))
        .collect()
}

/// The NEWRULE payload (nfgenmsg + attributes) wharf sends for `r`.
fn rule_payload(r: &Rule) -> Vec<u8> {
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(r.table.family.proto(), 0, 0),
        NfTablesMessage::NewRule(RuleMessage {
            attributes: r.to_attrs(),
        }),
    );
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.emit(&mut buf);
    buf
}

fn vector(name: &str) -> (&'static str, Vec<u8>) {
    let (_, text, bytes) = VECTORS
        .iter()
        .find(|(n, ..)| *n == name)
        .expect("vector exists");
    (text, unhex(bytes))
}

fn t() -> Table {
    Table::inet("t")
}

fn same_bytes(name: &str, r: &Rule) {
    let (text, want) = vector(name);
    let got = rule_payload(r);
    assert_eq!(hex(&got), hex(&want), "`{text}` encodes as nft does");
}

#[test]
fn masquerade_matches_nft() {
    same_bytes(
        "masquerade",
        &Rule::new(&t(), "c")
            .saddr_in("10.1.0.0/24".parse().expect("net"))
            .oifname_ne("br0")
            .counter()
            .masquerade(),
    );
}

#[test]
fn ct_state_matches_nft() {
    same_bytes(
        "ct_state",
        &Rule::new(&t(), "c")
            .ct_state_in(CtState::ESTABLISHED | CtState::RELATED)
            .accept(),
    );
}

/// nft also sends `NFTA_LOOKUP_SET_ID` (its own transaction id of the set); the kernel finds
/// the set by name first, so wharf sends the name only. The rules are otherwise the same.
#[test]
fn set_lookups_match_nft() {
    let cases = [
        (
            "iifname_in_set",
            Rule::new(&t(), "c").iifname_in("s").accept(),
        ),
        (
            "iifname_not_in_set",
            Rule::new(&t(), "c")
                .not_in_set(&[Field::IifName], "s")
                .drop(),
        ),
        (
            "iifname_vmap",
            Rule::new(&t(), "c").vmap(&[Field::IifName], "vm"),
        ),
    ];
    for (name, rule) in cases {
        let (text, want) = vector(name);
        assert_eq!(decode_rule(&want), rule, "`{text}`");
    }
}

#[test]
fn jumps_and_prefixes_match_nft() {
    same_bytes(
        "tcp_dport_jump",
        &Rule::new(&t(), "c").tcp_dport_eq(8080).jump("c"),
    );
    same_bytes(
        "daddr_prefix20_goto",
        &Rule::new(&t(), "c")
            .daddr_in("10.1.0.0/20".parse().expect("net"))
            .goto("c"),
    );
    same_bytes(
        "ip6_prefix_return",
        &Rule::new(&t(), "c")
            .saddr_in("fd00::/64".parse().expect("net"))
            .ret(),
    );
    same_bytes(
        "ifnames_drop",
        &Rule::new(&t(), "c")
            .iifname_eq("br0")
            .oifname_eq("br0")
            .drop(),
    );
}

#[test]
fn comment_matches_nft() {
    same_bytes(
        "counter_comment",
        &Rule::new(&t(), "c").counter().comment("hi"),
    );
}

/// nft sends only the low registers of a NAT range and lets the kernel fill in the rest;
/// wharf sends what the kernel reports back (max = min, flags), so a listed rule equals the
/// built one. Everything before the nat expression is byte-identical.
#[test]
fn nat_rules_match_nft_up_to_the_nat_expression() {
    let cases = [
        (
            "dnat_map",
            Rule::new(&t(), "c").dnat_map(
                &[Field::IpDaddr, Field::TcpDport],
                "ports",
                &DataType::Ipv4Addr.concat(DataType::InetService),
            ),
        ),
        (
            "dnat6_map",
            Rule::new(&t(), "c").dnat_map(
                &[Field::Ip6Daddr, Field::TcpDport],
                "p6",
                &DataType::Ipv6Addr.concat(DataType::InetService),
            ),
        ),
        (
            "snat",
            Rule::new(&t(), "c")
                .saddr_in("10.1.0.0/24".parse().expect("net"))
                .snat(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1))),
        ),
        (
            "dnat_numgen",
            Rule::new(&t(), "c").dnat_numgen(3, "be", IpVersion::V4, None),
        ),
        (
            "dnat_addr_port",
            Rule::new(&t(), "c")
                .l4proto_eq(IPPROTO_TCP)
                .dnat(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), Some(80)),
        ),
    ];
    for (name, rule) in cases {
        let (text, want) = vector(name);
        let parsed = decode_rule(&want);
        assert_eq!(parsed.exprs.len(), rule.exprs.len(), "`{text}`");
        let n = rule.exprs.len();
        assert_eq!(parsed.exprs[..n - 1], rule.exprs[..n - 1], "`{text}`");
        match (&parsed.exprs[n - 1], &rule.exprs[n - 1]) {
            (
                Expr::Nat {
                    kind: k1,
                    family: f1,
                    addr: a1,
                    proto: p1,
                    ..
                },
                Expr::Nat {
                    kind: k2,
                    family: f2,
                    addr: a2,
                    proto: p2,
                    ..
                },
            ) => {
                assert_eq!((k1, f1), (k2, f2), "`{text}`");
                assert_eq!(a1.map(|r| r.min), a2.map(|r| r.min), "`{text}`");
                assert_eq!(p1.map(|r| r.min), p2.map(|r| r.min), "`{text}`");
            }
            other => panic!("`{text}`: not nat expressions: {other:?}"),
        }
    }
}

/// Decodes a NEWRULE payload as a listing would.
fn decode_rule(payload: &[u8]) -> Rule {
    use netlink_packet_core::ParseableParametrized;
    let m = NetfilterMessage::parse_with_param(payload, (10 << 8) | 6).expect("parses");
    let NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(r)) = m.inner else {
        panic!("not a rule");
    };
    Rule::from_attrs(&t(), &r.attributes).expect("rule of table t")
}

#[test]
fn every_vector_decodes_to_what_the_builder_makes() {
    for (name, text, bytes) in VECTORS {
        let r = decode_rule(&unhex(bytes));
        assert!(
            r.exprs.iter().all(|e| !matches!(e, Expr::Other { .. })),
            "{name}: `{text}` has an undecoded expression: {:?}",
            r.exprs
        );
    }
}

#[test]
fn built_rules_round_trip() {
    let rules = [
        Rule::new(&t(), "c")
            .daddr_in("10.1.0.0/20".parse().expect("net"))
            .counter()
            .dnat(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), Some(80))
            .comment("published 8080"),
        Rule::new(&t(), "c").dnat_map(
            &[Field::IpDaddr, Field::TcpDport],
            "ports",
            &DataType::Ipv4Addr.concat(DataType::InetService),
        ),
        Rule::new(&t(), "c").ct_state_in(CtState::NEW).masquerade(),
        Rule::new(&t(), "c")
            .fib_daddr_local()
            .nfproto_eq(IpVersion::V4)
            .dnat_map(
                &[Field::TcpDport],
                "any",
                &DataType::Ipv4Addr.concat(DataType::InetService),
            ),
        Rule::new(&t(), "c")
            .ct_status_in(CtStatus::DNAT)
            .masquerade(),
        Rule::new(&t(), "c").tcp_dport_eq(80).dnat_numgen(
            5,
            "be_tcp_80",
            IpVersion::V4,
            Some(8080),
        ),
    ];
    for r in rules {
        let back = decode_rule(&rule_payload(&r));
        assert_eq!(back, r);
    }
}

#[test]
fn batch_is_framed_begin_messages_end() {
    let t = Table::inet("wharf");
    let mut b = Batch::new();
    b.add_table(&t)
        .add_chain(&Chain::base(
            &t,
            "forward",
            Hook::Forward,
            ChainType::Filter,
            priority::FILTER,
        ))
        .add_rule(&Rule::new(&t, "forward").accept());
    let (bytes, index) = b.encode(100);
    assert_eq!(index.len(), 3);
    assert_eq!(
        index[2],
        (
            103,
            "adding rule to chain \"forward\" of table inet \"wharf\"".into()
        )
    );
    let mut off = 0;
    let mut seen = Vec::new();
    while off < bytes.len() {
        let len = u32::from_ne_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
        let m = NetlinkMessage::<NetfilterMessage>::deserialize(&bytes[off..off + len])
            .expect("parses");
        let flags = m.header.flags;
        seen.push((m.header.message_type, m.header.sequence_number, flags));
        if let NetlinkPayload::InnerMessage(inner) = &m.payload {
            if m.header.message_type == 0x10 || m.header.message_type == 0x11 {
                assert_eq!(
                    inner.header.res_id, 10,
                    "batch res_id is NFNL_SUBSYS_NFTABLES"
                );
            }
        }
        off += len;
    }
    let types: Vec<u16> = seen.iter().map(|s| s.0).collect();
    // BATCH_BEGIN, NEWTABLE, NEWCHAIN, NEWRULE, BATCH_END
    assert_eq!(types, [0x10, 0x0a00, 0x0a03, 0x0a06, 0x11]);
    assert_eq!(
        seen.iter().map(|s| s.1).collect::<Vec<_>>(),
        [100, 101, 102, 103, 104]
    );
    // Every change asks for an ACK.
    assert!(seen[1..4].iter().all(|s| s.2 & 4 != 0));
}

#[test]
fn set_types_encode_as_nft() {
    let c = DataType::Ipv4Addr.concat(DataType::InetService);
    assert_eq!(c.id(), 0x1cd);
    assert_eq!(c.byte_len(), 8);
    assert_eq!(KeyType::from_id(0x1cd, 8), c);
    assert_eq!(KeyType::from(DataType::IfName).byte_len(), 16);
    assert_eq!(KeyType::from_id(41, 16), KeyType::from(DataType::IfName));
    let e = Elem::new([Value::Ipv4(Ipv4Addr::new(10, 0, 0, 1)), Value::Port(8080)])
        .to([Value::Ipv4(Ipv4Addr::new(10, 1, 0, 2)), Value::Port(80)]);
    let s = Set::map(&t(), "ports", c.clone(), c);
    assert_eq!(Elem::from_kernel(&s, &e.to_attrs(false)), vec![e.clone()]);
    assert_eq!(
        hex(&set::concat_bytes(&e.key)),
        "0a0000011f900000",
        "as nft sends `10.0.0.1 . 8080`"
    );
}

#[test]
fn many_elements_are_split_into_messages_of_one_transaction() {
    let s = Set::new(&t(), "ports", DataType::InetService);
    let elems: Vec<Elem> = (1..=5000u16).map(Elem::port).collect();
    let mut b = Batch::new();
    b.add_elements(&s, &elems);
    assert!(b.len() > 1, "{} messages", b.len());
    let (bytes, index) = b.encode(1);
    assert!(bytes.len() > 5000 * 12);
    assert!(
        index
            .iter()
            .all(|(_, w)| w == "adding 5000 elements to set \"ports\" of table inet \"t\"")
    );
}

#[test]
fn elements_that_do_not_fit_the_set_are_refused_before_sending() {
    let map = Set::vmap(&t(), "vm", DataType::IfName);
    let mut b = Batch::new();
    b.add_elements(&map, &[Elem::ifname("br0")]);
    let err = b.invalid().expect("refused");
    assert_eq!(
        err.to_string(),
        "adding 1 element to map \"vm\" of table inet \"t\" (element 1: no map data, the set is \
         a map): invalid argument"
    );
    assert!(b.is_empty());
}

/// `nft add element inet t ips { 10.1.0.0/24 }` into an interval set: a start and an end
/// marker; wharf reads them back as the prefix and writes the same two elements.
#[test]
fn interval_elements_match_nft() {
    use netlink_packet_core::ParseableParametrized;
    use netlink_packet_netfilter::nftables::SetElementList;
    let nft = "010000000600010074000000080002006970730008000400000000052c000380100001800c000180080001000a0100001800028008000300000000010c000180080001000a010100";
    let m =
        NetfilterMessage::parse_with_param(unhex(nft).as_slice(), (10 << 8) | 12).expect("parses");
    let NetfilterMessageInner::NfTables(NfTablesMessage::NewSetElement(m)) = m.inner else {
        panic!("not an element message");
    };
    let list = m
        .attributes
        .into_iter()
        .find_map(|a| match a {
            SetElementList::Elements(l) => Some(l),
            _ => None,
        })
        .expect("elements");
    let ips = Set::new(&t(), "ips", DataType::Ipv4Addr).interval();
    let prefix = Elem::prefix("10.1.0.0/24".parse().expect("net"));
    assert_eq!(Elem::from_kernel(&ips, &list), vec![prefix.clone()]);
    let ours = prefix.to_attrs(true);
    assert_eq!(Elem::from_kernel(&ips, &ours), vec![prefix]);
    assert_eq!(ours.len(), 2);
}

/// `nft --debug=netlink` (1.0.6) shows `fib daddr type local` as
/// `[ fib daddr type => reg 1 ] [ cmp eq reg 1 0x00000002 ]` and `ct status dnat` as
/// `[ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & 0x00000020 ) ^ 0x00000000 ]
/// [ cmp neq reg 1 0x00000000 ]`.
#[test]
fn fib_and_ct_status_are_what_nft_generates() {
    let r = Rule::new(&t(), "c").fib_daddr_local();
    assert_eq!(
        r.exprs,
        [
            Expr::Fib {
                flags: FibFlags::DADDR,
                result: FibResult::AddrType,
                dreg: Reg::R1
            },
            Expr::Cmp {
                sreg: Reg::R1,
                op: CmpOp::Eq,
                data: 2u32.to_ne_bytes().to_vec()
            },
        ]
    );
    let r = Rule::new(&t(), "c").ct_status_in(CtStatus::DNAT);
    assert_eq!(
        r.exprs[1],
        Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: 0x20u32.to_ne_bytes().to_vec(),
            xor: vec![0; 4]
        }
    );
    assert_eq!(
        r.exprs[2],
        Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Ne,
            data: vec![0; 4]
        }
    );
}
