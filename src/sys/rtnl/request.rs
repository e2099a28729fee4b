//! Sending requests and reading replies: the one place that speaks the netlink protocol.
//!
//! Every change goes out with `NLM_F_REQUEST | NLM_F_ACK` (plus `CREATE | EXCL` or the like for
//! creations) and waits for the kernel's acknowledgement; an error reply becomes a [`SysError`]
//! that names the operation, the object and the namespace. Dumps collect every part up to
//! `NLMSG_DONE` and are restarted when the kernel flags them as interrupted.
//!
//! Request *building* lives in the per-object files as pure functions returning [`Request`], so
//! unit tests check messages without root; this file only sends them.

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_proto::sys::SocketAddr;

use super::Handle;
use crate::sys::error::{SysError, SysResult};

/// Flags of a change: request, and acknowledge it.
pub(crate) const CHANGE: u16 = NLM_F_REQUEST | NLM_F_ACK;
/// Flags of a creation: fail if the object exists.
pub(crate) const CREATE: u16 = CHANGE | NLM_F_CREATE | NLM_F_EXCL;
/// Flags of a create-or-replace.
pub(crate) const REPLACE: u16 = CHANGE | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags of a create-or-append (several FDB destinations for one MAC).
pub(crate) const APPEND: u16 = CHANGE | NLM_F_CREATE | NLM_F_APPEND;
/// Flags of a dump.
pub(crate) const DUMP: u16 = NLM_F_REQUEST | NLM_F_DUMP;
/// Flags of a single get (the reply is the object, no separate ack).
pub(crate) const GET: u16 = NLM_F_REQUEST;

/// How many times an interrupted dump (`NLM_F_DUMP_INTR`) is restarted before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// A message ready to send, with its netlink flags. Built by pure functions; compared in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The route-netlink message.
    pub(crate) message: RouteNetlinkMessage,
    /// `NLM_F_*` flags of the netlink header.
    pub(crate) flags: u16,
}

impl Request {
    pub(crate) fn new(message: RouteNetlinkMessage, flags: u16) -> Self {
        Self { message, flags }
    }

    /// The full netlink message, header finalised (length and type), as it goes on the wire.
    pub(crate) fn to_netlink(&self) -> NetlinkMessage<RouteNetlinkMessage> {
        let mut header = NetlinkHeader::default();
        header.flags = self.flags;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(self.message.clone()));
        msg.finalize();
        msg
    }
}

/// Maps a netlink error code (a negative errno) to a typed error.
pub(crate) fn errno_error(what: String, code: i32) -> SysError {
    SysError::from_errno(what, code.saturating_abs())
}

impl Handle {
    /// The description of an operation, completed with the namespace the handle is bound to.
    pub(crate) fn what(&self, what: impl FnOnce() -> String) -> String {
        let mut s = what();
        s.push_str(&self.inner.place);
        s
    }

    fn send(
        &self,
        netlink: NetlinkMessage<RouteNetlinkMessage>,
        what: &dyn Fn() -> String,
    ) -> SysResult<impl futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>> + use<>> {
        self.inner
            .conn
            .request(netlink, SocketAddr::new(0, 0))
            .map_err(|e| SysError::Protocol {
                what: self.what(what),
                detail: e.to_string(),
            })
    }

    /// Sends a change and waits for its acknowledgement.
    pub(crate) async fn ack(&self, req: Request, what: impl Fn() -> String) -> SysResult<()> {
        tracing::trace!(flags = req.flags, message = ?req.message, "rtnl request");
        let mut replies = self.send(req.to_netlink(), &what)?;
        let mut acked = false;
        while let Some(reply) = replies.next().await {
            // Echoes and notifications are not asked for; anything but the ack is ignored.
            if let NetlinkPayload::Error(e) = reply.payload {
                match e.code {
                    None => acked = true,
                    Some(code) => return Err(errno_error(self.what(&what), code.get())),
                }
            }
        }
        if acked {
            Ok(())
        } else {
            Err(self.closed(&what))
        }
    }

    /// Sends a request whose answer is exactly one message (a `GET` of one object).
    pub(crate) async fn get_one(
        &self,
        req: Request,
        what: impl Fn() -> String,
    ) -> SysResult<RouteNetlinkMessage> {
        let mut replies = self.send(req.to_netlink(), &what)?;
        let mut found = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(msg) => found = Some(msg),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(errno_error(self.what(&what), code.get()));
                    }
                }
                _ => {}
            }
        }
        found.ok_or_else(|| self.closed(&what))
    }

    /// Dumps a table: collects every part up to `NLMSG_DONE`, restarting an interrupted dump.
    pub(crate) async fn dump(
        &self,
        req: Request,
        what: impl Fn() -> String,
    ) -> SysResult<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut replies = self.send(req.to_netlink(), &what)?;
            let mut parts = Vec::new();
            let mut done = false;
            let mut interrupted = false;
            while let Some(reply) = replies.next().await {
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(msg) => parts.push(msg),
                    NetlinkPayload::Done(d) => {
                        if d.code < 0 {
                            return Err(errno_error(self.what(&what), d.code));
                        }
                        done = true;
                    }
                    NetlinkPayload::Error(e) => {
                        if let Some(code) = e.code {
                            return Err(errno_error(self.what(&what), code.get()));
                        }
                        done = true;
                    }
                    NetlinkPayload::Overrun(_) => interrupted = true,
                    _ => {}
                }
            }
            if !done {
                return Err(self.closed(&what));
            }
            if !interrupted {
                return Ok(parts);
            }
            tracing::debug!(what = %self.what(&what), "dump interrupted by a concurrent change; restarting");
        }
        Err(SysError::Protocol {
            what: self.what(&what),
            detail: format!("dump interrupted {DUMP_ATTEMPTS} times in a row"),
        })
    }

    fn closed(&self, what: &dyn Fn() -> String) -> SysError {
        SysError::Protocol {
            what: self.what(what),
            detail: "the netlink connection closed before the kernel answered".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysErrorKind;
    use netlink_packet_route::link::LinkMessage;

    #[test]
    fn negative_codes_map_like_errno() {
        assert_eq!(
            errno_error("x".into(), -libc::EEXIST).kind(),
            SysErrorKind::AlreadyExists
        );
        assert_eq!(
            errno_error("x".into(), -libc::ENODEV).kind(),
            SysErrorKind::NotFound
        );
        assert_eq!(
            errno_error("x".into(), -libc::EOPNOTSUPP).kind(),
            SysErrorKind::NotSupported
        );
    }

    #[test]
    fn wire_header_is_finalised() {
        let req = Request::new(RouteNetlinkMessage::NewLink(LinkMessage::default()), CREATE);
        let msg = req.to_netlink();
        assert_eq!(msg.header.flags, CREATE);
        assert_eq!(msg.header.message_type, libc::RTM_NEWLINK);
        assert_eq!(msg.header.length as usize, msg.buffer_len());
    }
}
