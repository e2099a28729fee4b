//! One query in, one decision out: answer locally, forward, or drop.
//!
//! [`handle`] is a pure function of a [`Table`] snapshot, the asking sandbox and the query's
//! bytes. It never blocks and never panics on any input (a property test feeds it random
//! bytes); every reply it builds decodes as a DNS message. It makes no network calls: a
//! [`Action::Forward`] tells the server which upstreams to ask, and the forwarder does it.
//!
//! What is answered here (Docker's embedded DNS behaviour):
//! - `A`/`AAAA` for container names, aliases and `name.network` on networks the sandbox shares
//!   with them; a known name without an address of the asked family gets NOERROR and no records.
//! - `PTR` for those containers' addresses (`container.network.`).
//! - `MX` for a known name: NOERROR, no records (implicit MX, RFC 5321), as Docker does.
//! - Malformed queries get FORMERR, other opcodes NOTIMP; responses and runts are dropped.
//!
//! Everything else is forwarded, unless every network of the sandbox is internal (or it has none,
//! or no upstream is configured): then SERVFAIL, as Docker answers when it may not proxy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::Transport;
use super::records::{SandboxView, Table};

/// Docker's TTL for local answers.
pub const DEFAULT_TTL: u32 = 600;

/// The most upstream servers tried for one query (as Docker and glibc).
pub const MAX_UPSTREAMS: usize = 3;

/// The EDNS payload size wharf advertises and accepts over UDP.
pub const EDNS_PAYLOAD: u16 = 4096;

/// The smallest size of a question (root name, type, class) and of a resource record.
const MIN_QUESTION: usize = 5;
const MIN_RECORD: usize = 11;

/// Who asks, how, and where unanswered queries go.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The asking sandbox's id (the listener's).
    pub sandbox: &'a str,
    /// The sandbox's own upstreams, if it has any (first precedence).
    pub sandbox_upstreams: Option<&'a Arc<[SocketAddr]>>,
    /// The resolver's default upstreams (last precedence).
    pub default_upstreams: &'a Arc<[SocketAddr]>,
    /// The transport the query came in on (limits the reply size over UDP).
    pub transport: Transport,
    /// TTL of local answers.
    pub ttl: u32,
    /// Rotates multi-address answers (round robin); any value is fine.
    pub rotate: usize,
}

/// What to do with a query.
#[derive(Debug)]
pub enum Action {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Ask upstream servers, then pass their answer back unchanged.
    Forward(Forward),
    /// Send nothing (a response, or fewer bytes than a DNS header).
    Drop,
}

/// Where a query goes upstream.
#[derive(Debug, Clone)]
pub struct Forward {
    /// The servers to try in order (at most [`MAX_UPSTREAMS`]).
    pub upstreams: Arc<[SocketAddr]>,
    /// The end of the question section in the query: an upstream's reply must repeat
    /// `query[12..question_end]` (compared case-insensitively) to be accepted.
    pub question_end: usize,
}

/// Decides what to do with `query` from `cx.sandbox`.
pub fn handle(table: &Table, cx: &Context<'_>, query: &[u8]) -> Action {
    let Ok(header) = Header::read(&mut BinDecoder::new(query)) else {
        return Action::Drop;
    };
    if header.message_type() == MessageType::Response {
        return Action::Drop;
    }
    // Counts that cannot fit in the packet would make the decoder reserve memory for records
    // that are not there: refuse them before decoding.
    let body = query.len().saturating_sub(Header::len());
    let records = usize::from(header.answer_count())
        + usize::from(header.name_server_count())
        + usize::from(header.additional_count());
    if header.query_count() != 1
        || usize::from(header.query_count()) * MIN_QUESTION + records * MIN_RECORD > body
    {
        return Action::Reply(header_error(&header, ResponseCode::FormErr));
    }
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return Action::Reply(header_error(&header, ResponseCode::FormErr)),
    };
    if request.op_code() != OpCode::Query {
        return Action::Reply(reply(&request, ResponseCode::NotImp, Vec::new(), cx));
    }
    let Some(question) = request.query() else {
        return Action::Reply(header_error(&header, ResponseCode::FormErr));
    };
    let view = table.sandbox(cx.sandbox);
    if question.query_class() == DNSClass::IN {
        if let Some(view) = view {
            if let Some(answers) = local_answers(&view, question, cx) {
                return Action::Reply(reply(&request, ResponseCode::NoError, answers, cx));
            }
        }
    }
    let upstreams = match view {
        Some(view) if view.can_forward() => cx
            .sandbox_upstreams
            .or(view.network_upstreams())
            .unwrap_or(cx.default_upstreams),
        _ => return Action::Reply(reply(&request, ResponseCode::ServFail, Vec::new(), cx)),
    };
    if upstreams.is_empty() {
        return Action::Reply(reply(&request, ResponseCode::ServFail, Vec::new(), cx));
    }
    let upstreams = if upstreams.len() > MAX_UPSTREAMS {
        Arc::from(&upstreams[..MAX_UPSTREAMS])
    } else {
        upstreams.clone()
    };
    match question_end(query) {
        Some(question_end) => Action::Forward(Forward {
            upstreams,
            question_end,
        }),
        None => Action::Reply(header_error(&header, ResponseCode::FormErr)),
    }
}

/// The answer records for a local name, or `None` when the name is not local (forward it).
fn local_answers(view: &SandboxView<'_>, q: &Query, cx: &Context<'_>) -> Option<Vec<Record>> {
    let qtype = q.query_type();
    match qtype {
        RecordType::A | RecordType::AAAA | RecordType::MX => {
            let mut buf = [0u8; 256];
            let key = lower_key(q.name(), &mut buf)?;
            let addrs = view.lookup(key)?;
            let name = q.name().clone();
            let records = match qtype {
                RecordType::A => rotated(&addrs.v4, cx.rotate)
                    .map(|ip| Record::from_rdata(name.clone(), cx.ttl, RData::A(A(*ip))))
                    .collect(),
                RecordType::AAAA => rotated(&addrs.v6, cx.rotate)
                    .map(|ip| Record::from_rdata(name.clone(), cx.ttl, RData::AAAA(AAAA(*ip))))
                    .collect(),
                _ => Vec::new(),
            };
            Some(records)
        }
        RecordType::PTR => {
            let net = q.name().parse_arpa_name().ok()?;
            let full = match net.addr() {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            };
            if net.prefix_len() != full {
                return None;
            }
            let target = view.reverse(net.addr())?;
            Some(vec![Record::from_rdata(
                q.name().clone(),
                cx.ttl,
                RData::PTR(PTR(target.clone())),
            )])
        }
        _ => None,
    }
}

fn rotated<T>(items: &[T], by: usize) -> impl Iterator<Item = &T> {
    let at = if items.is_empty() {
        0
    } else {
        by % items.len()
    };
    items[at..].iter().chain(&items[..at])
}

/// Writes `name` lower-cased, labels joined by dots and without the trailing dot, into `buf`.
fn lower_key<'b>(name: &hickory_proto::rr::Name, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let mut len = 0;
    for label in name.iter() {
        if len != 0 {
            *buf.get_mut(len)? = b'.';
            len += 1;
        }
        let dst = buf.get_mut(len..len + label.len())?;
        for (d, s) in dst.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        len += label.len();
    }
    (len != 0).then_some(&buf[..len])
}

/// Where the question section of a well-formed query ends.
pub(crate) fn question_end(query: &[u8]) -> Option<usize> {
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).ok()?;
    for _ in 0..header.query_count() {
        Query::read(&mut decoder).ok()?;
    }
    Some(decoder.index())
}

/// The largest reply the client accepts over `transport`.
fn max_size(request: &Message, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => match request.extensions() {
            Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD)),
            None => 512,
        },
    }
}

/// A reply to `request` with `answers`; over UDP, answers are trimmed to fit the client's size
/// and the reply is marked truncated (the client then asks again over TCP).
fn reply(
    request: &Message,
    rcode: ResponseCode,
    mut answers: Vec<Record>,
    cx: &Context<'_>,
) -> Vec<u8> {
    let mut header = Header::response_from_request(request.header());
    header
        .set_recursion_available(true)
        .set_authoritative(rcode == ResponseCode::NoError)
        .set_response_code(rcode);
    let limit = max_size(request, cx.transport);
    loop {
        let mut msg = Message::new();
        msg.set_header(header);
        msg.add_queries(request.queries().iter().cloned());
        if request.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            msg.set_edns(edns);
        }
        let had_answers = !answers.is_empty();
        msg.insert_answers(std::mem::take(&mut answers));
        match msg.to_vec() {
            Ok(bytes) if bytes.len() <= limit || !had_answers => return bytes,
            Ok(_) => {
                answers = msg.take_answers();
                answers.pop();
                if cx.transport == Transport::Udp {
                    header.set_truncated(true);
                }
            }
            Err(_) => return header_error(request.header(), ResponseCode::ServFail),
        }
    }
}

/// A reply carrying only a header (no question): for queries that could not be decoded.
fn header_error(request: &Header, rcode: ResponseCode) -> Vec<u8> {
    let mut header = Header::response_from_request(request);
    header
        .set_recursion_available(true)
        .set_response_code(rcode);
    let mut msg = Message::new();
    msg.set_header(header);
    // A bare header always encodes; the fallback is a hand-made 12-byte FORMERR/SERVFAIL.
    msg.to_vec().unwrap_or_else(|_| {
        let mut out = vec![0u8; 12];
        out[..2].copy_from_slice(&request.id().to_be_bytes());
        out[2] = 0x80;
        out[3] = 0x80 | (u16::from(rcode) & 0x0f) as u8;
        out
    })
}

/// FORMERR for a query that was cut short or is too long to read (e.g. a UDP datagram larger
/// than the listener's buffer); `None` when not even a header is there.
pub fn format_error(query: &[u8]) -> Option<Vec<u8>> {
    let header = Header::read(&mut BinDecoder::new(query)).ok()?;
    (header.message_type() == MessageType::Query)
        .then(|| header_error(&header, ResponseCode::FormErr))
}

/// SERVFAIL for a query wharf could not get an upstream answer for (the query was well-formed
/// enough to be forwarded).
pub fn servfail(query: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    let cx = Context {
        sandbox: "",
        sandbox_upstreams: None,
        default_upstreams: &Arc::from(Vec::new()),
        transport,
        ttl: 0,
        rotate: 0,
    };
    Some(reply(&request, ResponseCode::ServFail, Vec::new(), &cx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::records::{EndpointDns, NetworkDns, NetworkKey, Records};
    use hickory_proto::rr::Name;

    fn table() -> Table {
        let mut r = Records::new();
        for (id, name, internal) in [("na", "alpine-net", false), ("ni", "inner", true)] {
            r.upsert_network(
                NetworkKey {
                    id: id.into(),
                    name: name.into(),
                },
                NetworkDns {
                    internal,
                    ..NetworkDns::default()
                },
            )
            .unwrap();
        }
        let ep = |net: &str, sb: &str, name: &str, v4: &str, v6: Option<&str>| EndpointDns {
            network_id: net.into(),
            sandbox_id: sb.into(),
            name: name.into(),
            aliases: vec!["web".into()],
            ipv4: Some(v4.parse().unwrap()),
            ipv6: v6.map(|a| a.parse().unwrap()),
        };
        r.upsert_endpoint(ep("na", "s1", "alpine1", "172.18.0.2", Some("fd00::2")))
            .unwrap();
        r.upsert_endpoint(ep("na", "s2", "alpine2", "172.18.0.3", None))
            .unwrap();
        r.upsert_endpoint(ep("ni", "s3", "alpine3", "10.9.0.2", None))
            .unwrap();
        r.table()
    }

    fn ask(table: &Table, sandbox: &str, name: &str, rtype: RecordType) -> Action {
        let mut m = Message::new();
        m.set_id(4242)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        let defaults: Arc<[SocketAddr]> = Arc::from(vec!["192.0.2.53:53".parse().unwrap()]);
        let cx = Context {
            sandbox,
            sandbox_upstreams: None,
            default_upstreams: &defaults,
            transport: Transport::Udp,
            ttl: DEFAULT_TTL,
            rotate: 0,
        };
        handle(table, &cx, &m.to_vec().unwrap())
    }

    fn answer(action: Action) -> Message {
        match action {
            Action::Reply(bytes) => {
                let m = Message::from_vec(&bytes).unwrap();
                assert_eq!(m.id(), 4242);
                assert_eq!(m.message_type(), MessageType::Response);
                m
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn local_names_are_answered() {
        let t = table();
        let m = answer(ask(&t, "s2", "Alpine1.", RecordType::A));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert_eq!(m.answers().len(), 1);
        assert_eq!(
            m.answers()[0].name().to_ascii(),
            "Alpine1.",
            "owner echoes the question"
        );
        assert!(matches!(m.answers()[0].data(), RData::A(a) if a.0.to_string() == "172.18.0.2"));
        let m = answer(ask(&t, "s2", "alpine1.alpine-net", RecordType::AAAA));
        assert!(matches!(m.answers()[0].data(), RData::AAAA(a) if a.0.to_string() == "fd00::2"));
        assert_eq!(
            answer(ask(&t, "s1", "web", RecordType::A)).answers().len(),
            2
        );
    }

    #[test]
    fn a_name_with_only_the_other_family_gets_an_empty_noerror() {
        let m = answer(ask(&table(), "s1", "alpine2", RecordType::AAAA));
        assert_eq!(m.response_code(), ResponseCode::NoError);
        assert!(m.answers().is_empty());
    }

    #[test]
    fn ptr_for_shared_containers() {
        let t = table();
        let m = answer(ask(&t, "s1", "3.0.18.172.in-addr.arpa.", RecordType::PTR));
        assert!(
            matches!(m.answers()[0].data(), RData::PTR(p) if p.0.to_ascii() == "alpine2.alpine-net.")
        );
        assert!(matches!(
            ask(&t, "s1", "2.0.9.10.in-addr.arpa.", RecordType::PTR),
            Action::Forward(_)
        ));
    }

    #[test]
    fn unshared_and_unknown_names_and_other_types_are_forwarded() {
        let t = table();
        for (name, rtype) in [
            ("alpine3", RecordType::A),
            ("example.com", RecordType::A),
            ("alpine1", RecordType::TXT),
        ] {
            match ask(&t, "s1", name, rtype) {
                Action::Forward(f) => {
                    assert_eq!(f.upstreams.len(), 1);
                    assert!(f.question_end > 12);
                }
                other => panic!("{name} {rtype}: {other:?}"),
            }
        }
    }

    #[test]
    fn internal_only_and_unknown_sandboxes_get_servfail() {
        let t = table();
        for sandbox in ["s3", "nobody"] {
            let m = answer(ask(&t, sandbox, "example.com", RecordType::A));
            assert_eq!(m.response_code(), ResponseCode::ServFail, "{sandbox}");
        }
        // Local names still resolve on an internal network.
        let m = answer(ask(&t, "s3", "alpine3", RecordType::A));
        assert_eq!(m.answers().len(), 1);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let t = table();
        let defaults: Arc<[SocketAddr]> = Arc::from(Vec::new());
        let cx = Context {
            sandbox: "s1",
            sandbox_upstreams: None,
            default_upstreams: &defaults,
            transport: Transport::Udp,
            ttl: 1,
            rotate: 0,
        };
        assert!(matches!(handle(&t, &cx, &[1, 2, 3]), Action::Drop));
        // qdcount 65535 in a 12-byte packet.
        let bogus = [0x12, 0x34, 0x01, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0];
        let Action::Reply(bytes) = handle(&t, &cx, &bogus) else {
            panic!("no reply");
        };
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.id(), m.response_code()), (0x1234, ResponseCode::FormErr));
    }

    #[test]
    fn big_answers_are_truncated_over_udp() {
        let mut r = Records::new();
        r.upsert_network(
            NetworkKey {
                id: "n".into(),
                name: "n".into(),
            },
            NetworkDns::default(),
        )
        .unwrap();
        for i in 0..100u8 {
            r.upsert_endpoint(EndpointDns {
                network_id: "n".into(),
                sandbox_id: format!("s{i}"),
                name: format!("c{i}"),
                aliases: vec!["many".into()],
                ipv4: Some([10, 0, 0, i].into()),
                ipv6: None,
            })
            .unwrap();
        }
        let m = answer(ask(&r.table(), "s0", "many", RecordType::A));
        assert!(m.truncated());
        assert!(!m.answers().is_empty() && m.answers().len() < 100);
        assert!(m.to_vec().unwrap().len() <= 512);
    }
}
