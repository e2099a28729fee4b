//! Fuzz-style property tests of the query handler: any bytes in, never a panic, and every
//! reply a well-formed DNS response to the same id. Runs in-process, without root.

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};

use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;
use wharf::dns::Transport;
use wharf::dns::handler::{self, Action, Context};
use wharf::dns::records::Records;
use wharf::dns::{EndpointDns, NetworkDns, NetworkKey, Table};

fn table() -> &'static Table {
    static TABLE: LazyLock<Table> = LazyLock::new(build);
    &TABLE
}

fn build() -> Table {
    let mut r = Records::new();
    r.upsert_network(
        NetworkKey {
            id: "n1".into(),
            name: "alpine-net".into(),
        },
        NetworkDns::default(),
    )
    .unwrap();
    for i in 0..40u8 {
        r.upsert_endpoint(EndpointDns {
            network_id: "n1".into(),
            sandbox_id: format!("s{i}"),
            name: format!("alpine{i}"),
            aliases: vec!["web".into()],
            ipv4: Some([172, 18, 0, i].into()),
            ipv6: Some(format!("fd00::{i}").parse().unwrap()),
        })
        .unwrap();
    }
    r.table()
}

fn valid_query(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(0xbeef)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn check(table: &Table, bytes: &[u8], transport: Transport) {
    let defaults: Arc<[SocketAddr]> = Arc::from(vec!["192.0.2.53:53".parse().unwrap()]);
    let cx = Context {
        sandbox: "s1",
        sandbox_upstreams: None,
        default_upstreams: &defaults,
        transport,
        ttl: 600,
        rotate: bytes.len(),
    };
    match handler::handle(table, &cx, bytes) {
        Action::Reply(reply) => {
            let m = Message::from_vec(&reply).expect("reply decodes");
            assert_eq!(m.message_type(), MessageType::Response);
            assert_eq!(m.id().to_be_bytes(), bytes[..2], "reply keeps the query id");
            if transport == Transport::Udp {
                assert!(reply.len() <= usize::from(handler::EDNS_PAYLOAD));
            }
        }
        Action::Forward(plan) => {
            assert!(!plan.upstreams.is_empty() && plan.upstreams.len() <= 3);
            assert!(plan.question_end >= 12 && plan.question_end <= bytes.len());
            let sf =
                handler::servfail(bytes, transport).expect("a forwardable query has a SERVFAIL");
            let m = Message::from_vec(&sf).expect("SERVFAIL decodes");
            assert_eq!(m.id().to_be_bytes(), bytes[..2]);
        }
        Action::Drop => assert!(
            bytes.len() < 12 || bytes[2] & 0x80 != 0,
            "only runts and responses are dropped"
        ),
    }
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("alpine1".to_owned()),
        Just("WEB.alpine-net.".to_owned()),
        Just("3.0.18.172.in-addr.arpa.".to_owned()),
        Just("example.com".to_owned()),
        "[a-z0-9]{1,20}(\\.[a-z0-9]{1,10}){0,3}",
    ]
}

fn rtypes() -> impl Strategy<Value = RecordType> {
    prop_oneof![
        Just(RecordType::A),
        Just(RecordType::AAAA),
        Just(RecordType::PTR),
        Just(RecordType::MX),
        Just(RecordType::TXT),
        any::<u16>().prop_map(RecordType::from),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_break_the_handler(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let t = table();
        check(t, &bytes, Transport::Udp);
        check(t, &bytes, Transport::Tcp);
    }

    #[test]
    fn mutated_queries_never_break_the_handler(
        name in names(),
        rtype in rtypes(),
        edns in proptest::option::of(any::<u16>()),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        cut in any::<usize>(),
        keep_all in any::<bool>(),
    ) {
        let t = table();
        let mut q = valid_query(&name, rtype, edns);
        for (at, byte) in flips {
            let at = at % q.len();
            q[at] = byte;
        }
        if !keep_all {
            q.truncate(cut % (q.len() + 1));
        }
        check(t, &q, Transport::Udp);
        check(t, &q, Transport::Tcp);
    }
}

#[test]
fn a_huge_alias_set_still_fits_udp_and_tcp() {
    let t = table();
    for (edns, transport) in [
        (None, Transport::Udp),
        (Some(1232), Transport::Udp),
        (None, Transport::Tcp),
    ] {
        check(t, &valid_query("web", RecordType::AAAA, edns), transport);
    }
}
