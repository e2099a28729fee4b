//! Kernel change notifications of one namespace: the netlink multicast groups that announce
//! nftables changes (`NFNLGRP_NFTABLES`) and link changes (`RTNLGRP_LINK`), reduced to the
//! deletions a reconciler cares about: which table lost something, which link went away.
//!
//! What it deliberately does not do: interpret the objects (a deleted rule is reported by its
//! table only) or decide what is whose; the caller filters by its own table and link names.

use std::collections::VecDeque;
use std::io;

use super::nft::socket::NfSocket;
use super::{NetNs, SysError, SysResult};
use netlink_sys::Socket;
use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE};

/// `NFNLGRP_NFTABLES`: every committed nftables change.
const NFNLGRP_NFTABLES: u32 = 7;
/// `RTNLGRP_LINK`: link changes.
const RTNLGRP_LINK: u32 = 1;
/// `NFNL_SUBSYS_NFTABLES`: the high byte of an nftables message type.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `NFT_MSG_DELTABLE`, `DELCHAIN`, `DELRULE`, `DELSET`.
const NFT_DELETIONS: [u16; 4] = [2, 5, 8, 11];
const RTM_DELLINK: u16 = 17;
/// `NFTA_TABLE_NAME`, `NFTA_CHAIN_TABLE`, `NFTA_RULE_TABLE`, `NFTA_SET_TABLE`: all 1.
const NFTA_TABLE: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct nfgenmsg` and `struct ifinfomsg`.
const NFGENMSG_LEN: usize = 4;
const IFINFOMSG_LEN: usize = 16;

/// A deletion the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A table, or a chain, rule or set in it, was deleted.
    NftDeleted {
        /// The table's family (`NFPROTO_*`: 1 inet, 7 bridge, ...).
        family: u8,
        /// The table's name.
        table: String,
    },
    /// A link was deleted.
    LinkDeleted {
        /// Its name.
        name: String,
    },
    /// Notifications were lost (the receive queue overflowed): anything may have changed.
    Overrun,
}

/// A subscription to the deletions of nftables objects and links in one namespace.
pub struct KernelEvents {
    nft: NfSocket,
    link: NfSocket,
    pending: VecDeque<KernelEvent>,
}

impl std::fmt::Debug for KernelEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelEvents")
            .field("pending", &self.pending)
            .finish()
    }
}

fn subscribe(protocol: isize, group: u32) -> io::Result<Socket> {
    let mut sock = Socket::new(protocol)?;
    sock.bind_auto()?;
    sock.add_membership(group)?;
    sock.set_non_blocking(true)?;
    Ok(sock)
}

impl KernelEvents {
    /// Subscribes in `ns` (the sockets are made on a thread inside it and stay bound to it).
    /// Must run inside a tokio runtime.
    pub async fn open(ns: &NetNs) -> SysResult<Self> {
        let what = format!("subscribing to nftables and link changes in {ns}");
        let (nft, link) = ns
            .run(|| {
                Ok::<_, io::Error>((
                    subscribe(NETLINK_NETFILTER, NFNLGRP_NFTABLES)?,
                    subscribe(NETLINK_ROUTE, RTNLGRP_LINK)?,
                ))
            })
            .await?
            .map_err(|e| SysError::from_io(what.clone(), e))?;
        Ok(Self {
            nft: NfSocket::new(nft).map_err(|e| SysError::from_io(what.clone(), e))?,
            link: NfSocket::new(link).map_err(|e| SysError::from_io(what.clone(), e))?,
            pending: VecDeque::new(),
        })
    }

    /// The next deletion (waits for one).
    pub async fn next(&mut self) -> SysResult<KernelEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            let (from_nft, got) = tokio::select! {
                r = self.nft.recv() => (true, r),
                r = self.link.recv() => (false, r),
            };
            match got {
                Ok(buf) if from_nft => self.pending.extend(parse_nft(&buf)),
                Ok(buf) => self.pending.extend(parse_link(&buf)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.pending.push_back(KernelEvent::Overrun)
                }
                Err(e) => return Err(SysError::from_io("reading kernel change notifications", e)),
            }
        }
    }
}

/// The netlink messages in one datagram: `(type, payload)`.
fn messages(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut rest = buf;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let kind = u16::from_ne_bytes([rest[4], rest[5]]);
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        out.push((kind, &rest[NLMSG_HDRLEN..len]));
        rest = &rest[align(len).min(rest.len())..];
    }
    out
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// The value of the first attribute of type `wanted` in `attrs`, as a string.
fn attr_str(attrs: &[u8], wanted: u16) -> Option<String> {
    let mut rest = attrs;
    while rest.len() >= 4 {
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits.
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            return None;
        }
        if kind == wanted {
            let value = &rest[4..len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return std::str::from_utf8(&value[..end]).ok().map(str::to_owned);
        }
        rest = &rest[align(len).min(rest.len())..];
    }
    None
}

fn parse_nft(buf: &[u8]) -> Vec<KernelEvent> {
    messages(buf)
        .into_iter()
        .filter(|(kind, _)| {
            kind >> 8 == NFNL_SUBSYS_NFTABLES && NFT_DELETIONS.contains(&(kind & 0xff))
        })
        .filter_map(|(_, payload)| {
            let family = *payload.first()?;
            let table = attr_str(payload.get(NFGENMSG_LEN..)?, NFTA_TABLE)?;
            Some(KernelEvent::NftDeleted { family, table })
        })
        .collect()
}

fn parse_link(buf: &[u8]) -> Vec<KernelEvent> {
    messages(buf)
        .into_iter()
        .filter(|(kind, _)| *kind == RTM_DELLINK)
        .filter_map(|(_, payload)| {
            let name = attr_str(payload.get(IFINFOMSG_LEN..)?, IFLA_IFNAME)?;
            Some(KernelEvent::LinkDeleted { name })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, fixed: usize, attr_kind: u16, value: &[u8]) -> Vec<u8> {
        let attr_len = 4 + value.len();
        let len = NLMSG_HDRLEN + fixed + align(attr_len);
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(kind.to_ne_bytes());
        m.extend([0u8; 10]);
        let mut head = vec![0u8; fixed];
        if fixed > 0 {
            head[0] = 1; // family inet (nfgenmsg) / AF_UNSPEC padding (ifinfomsg)
        }
        m.extend(head);
        m.extend((attr_len as u16).to_ne_bytes());
        m.extend(attr_kind.to_ne_bytes());
        m.extend(value);
        m.resize(len, 0);
        m
    }

    #[test]
    fn deletions_of_tables_and_links_are_recognised() {
        let mut buf = message((10 << 8) | 2, NFGENMSG_LEN, 1, b"wharf\0");
        // A new rule is not a deletion.
        buf.extend(message((10 << 8) | 6, NFGENMSG_LEN, 1, b"wharf\0"));
        buf.extend(message((10 << 8) | 8, NFGENMSG_LEN, 1, b"other\0"));
        assert_eq!(
            parse_nft(&buf),
            [
                KernelEvent::NftDeleted {
                    family: 1,
                    table: "wharf".into()
                },
                KernelEvent::NftDeleted {
                    family: 1,
                    table: "other".into()
                },
            ]
        );
        let mut buf = message(17, IFINFOMSG_LEN, 3, b"br-0123\0");
        buf.extend(message(16, IFINFOMSG_LEN, 3, b"veth1\0"));
        assert_eq!(
            parse_link(&buf),
            [KernelEvent::LinkDeleted {
                name: "br-0123".into()
            }]
        );
        // Truncated input is ignored, not a panic.
        assert!(parse_link(&buf[..10]).is_empty());
        assert!(parse_nft(&[0xff; 40]).is_empty());
    }
}
