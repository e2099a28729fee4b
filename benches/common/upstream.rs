//! A minimal upstream name server for the DNS benches: answers every query with one A record
//! (203.0.113.80, TEST-NET-3), so forwarding is measured without a real resolver behind it.
//!
//! Included by path (`#[path = "common/upstream.rs"] mod upstream;`).

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};

/// Serves `sock` until it fails.
pub async fn serve(sock: &tokio::net::UdpSocket) {
    let mut buf = [0u8; 1500];
    while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
        let Ok(q) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        let Some(question) = q.query().cloned() else {
            continue;
        };
        let mut r = Message::new();
        r.set_id(q.id())
            .set_message_type(MessageType::Response)
            .set_recursion_available(true)
            .add_answer(Record::from_rdata(
                question.name().clone(),
                60,
                RData::A(A([203, 0, 113, 80].into())),
            ))
            .add_query(question);
        if let Ok(bytes) = r.to_vec() {
            let _ = sock.send_to(&bytes, peer).await;
        }
    }
}
