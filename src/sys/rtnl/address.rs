//! Interface addresses: add, delete and list IPv4 and IPv6 addresses (`ip address`).
//!
//! IPv6 addresses are added with `IFA_F_NODAD`: wharf assigns them from its own IPAM, so
//! duplicate address detection would only delay them by a second or more.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use super::Handle;
use super::request::{CHANGE, CREATE, DUMP, Request};
use super::route::{IpVersion, Scope};
use crate::sys::error::{SysError, SysResult};

/// An address as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Address {
    /// Index of the interface.
    pub index: u32,
    /// Address and prefix length.
    pub addr: IpNetwork,
    /// Scope (`host` for loopback, `link` for IPv6 link-local...).
    pub scope: Scope,
    /// The IPv4 label (`eth0`, `eth0:1`).
    pub label: Option<String>,
    /// Still undergoing duplicate address detection (IPv6).
    pub tentative: bool,
}

impl Address {
    fn from_message(msg: &AddressMessage) -> Option<Self> {
        let mut addr = None;
        let mut local = None;
        let mut label = None;
        let mut flags = AddressFlags::from_bits_retain(u32::from(msg.header.flags.bits()));
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Address(a) => addr = Some(*a),
                AddressAttribute::Local(a) => local = Some(*a),
                AddressAttribute::Label(l) => label = Some(l.clone()),
                AddressAttribute::Flags(f) => flags = *f,
                _ => {}
            }
        }
        // For IPv4 IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
        // point-to-point links); IPv6 only sends IFA_ADDRESS.
        let ip = local.or(addr)?;
        Some(Self {
            index: msg.header.index,
            addr: IpNetwork::new(ip, msg.header.prefix_len).ok()?,
            scope: Scope::from_u8(u8::from(msg.header.scope)),
            label,
            tentative: flags.contains(AddressFlags::Tentative),
        })
    }
}

fn base_message(index: u32, net: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = IpVersion::of(&net.ip()).family();
    msg.header.prefix_len = net.prefix();
    msg.header.index = index;
    msg
}

/// `RTM_NEWADDR` for `net` on `index`. Pure.
pub(crate) fn add_request(index: u32, net: IpNetwork) -> Request {
    let mut msg = base_message(index, net);
    let ip = net.ip();
    msg.header.scope = if ip.is_loopback() {
        AddressScope::Host
    } else {
        AddressScope::Universe
    };
    match ip {
        IpAddr::V4(_) => {
            msg.attributes.push(AddressAttribute::Local(ip));
            msg.attributes.push(AddressAttribute::Address(ip));
            if let IpNetwork::V4(n) = net {
                if n.prefix() < 31 {
                    msg.attributes
                        .push(AddressAttribute::Broadcast(n.broadcast()));
                }
            }
        }
        IpAddr::V6(_) => {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Address(ip));
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    Request::new(RouteNetlinkMessage::NewAddress(msg), CREATE)
}

/// `RTM_DELADDR` for `net` on `index`. Pure.
pub(crate) fn delete_request(index: u32, net: IpNetwork) -> Request {
    let mut msg = base_message(index, net);
    let ip = net.ip();
    if ip.is_ipv4() {
        msg.attributes.push(AddressAttribute::Local(ip));
    }
    msg.attributes.push(AddressAttribute::Address(ip));
    Request::new(RouteNetlinkMessage::DelAddress(msg), CHANGE)
}

pub(crate) fn dump_request(family: AddressFamily) -> Request {
    let mut msg = AddressMessage::default();
    msg.header.family = family;
    Request::new(RouteNetlinkMessage::GetAddress(msg), DUMP)
}

/// Address operations of a [`Handle`]: `ip address`.
#[derive(Debug, Clone, Copy)]
pub struct Addresses<'a> {
    handle: &'a Handle,
}

impl<'a> Addresses<'a> {
    pub(crate) fn new(handle: &'a Handle) -> Self {
        Self { handle }
    }

    /// Adds `net` (address and prefix length) to interface `index`: `ip addr add`.
    /// [`SysError::AlreadyExists`] if it is already there.
    ///
    /// ```no_run
    /// # async fn demo(h: &wharf::sys::rtnl::Handle) -> Result<(), Box<dyn std::error::Error>> {
    /// let br = h.link().get("wharf0").await?;
    /// h.address().add(br.index, "172.17.0.1/16".parse()?).await?;
    /// h.address().add(br.index, "fd00:17::1/64".parse()?).await?; // no DAD delay
    /// # Ok(()) }
    /// ```
    pub async fn add(&self, index: u32, net: IpNetwork) -> SysResult<()> {
        self.handle
            .ack(add_request(index, net), || {
                format!("adding address {net} to link #{index}")
            })
            .await
    }

    /// Removes `net` from interface `index`: `ip addr del`. [`SysError::NotFound`] if the
    /// interface does not have it (the kernel's `EADDRNOTAVAIL`).
    pub async fn delete(&self, index: u32, net: IpNetwork) -> SysResult<()> {
        let res = self
            .handle
            .ack(delete_request(index, net), || {
                format!("deleting address {net} from link #{index}")
            })
            .await;
        match res {
            Err(SysError::Kernel { what, source })
                if source.raw_os_error() == Some(libc::EADDRNOTAVAIL) =>
            {
                Err(SysError::NotFound { what })
            }
            other => other,
        }
    }

    /// Lists every address of the namespace: `ip addr show`.
    pub async fn list(&self) -> SysResult<Vec<Address>> {
        let msgs = self
            .handle
            .dump(dump_request(AddressFamily::Unspec), || {
                "listing addresses".into()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => Address::from_message(a),
                _ => None,
            })
            .collect())
    }

    /// Lists the addresses of interface `index`.
    pub async fn list_on(&self, index: u32) -> SysResult<Vec<Address>> {
        let mut all = self.list().await?;
        all.retain(|a| a.index == index);
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_add_sets_local_address_and_broadcast() {
        let req = add_request(3, "172.17.0.1/16".parse().unwrap());
        assert_eq!(req.flags, CREATE);
        let RouteNetlinkMessage::NewAddress(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Inet);
        assert_eq!(m.header.prefix_len, 16);
        assert_eq!(m.header.index, 3);
        let ip: IpAddr = "172.17.0.1".parse().unwrap();
        assert!(m.attributes.contains(&AddressAttribute::Local(ip)));
        assert!(m.attributes.contains(&AddressAttribute::Address(ip)));
        assert!(m.attributes.contains(&AddressAttribute::Broadcast(
            "172.17.255.255".parse().unwrap()
        )));
    }

    #[test]
    fn v6_add_skips_dad() {
        let req = add_request(3, "fd00::2/64".parse().unwrap());
        let RouteNetlinkMessage::NewAddress(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.family, AddressFamily::Inet6);
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
        assert!(
            m.attributes
                .contains(&AddressAttribute::Flags(AddressFlags::Nodad))
        );
    }

    #[test]
    fn parse_back() {
        let req = add_request(3, "10.1.2.3/24".parse().unwrap());
        let RouteNetlinkMessage::NewAddress(m) = &req.message else {
            panic!()
        };
        let a = Address::from_message(m).unwrap();
        assert_eq!(a.addr, "10.1.2.3/24".parse::<IpNetwork>().unwrap());
        assert_eq!(a.index, 3);
        assert_eq!(a.scope, Scope::Universe);
    }
}
