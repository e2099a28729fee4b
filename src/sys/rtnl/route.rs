//! Routes: add, delete and list IPv4 and IPv6 routes (`ip route`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};

use super::Handle;
use super::request::{CHANGE, CREATE, DUMP, Request};
use crate::sys::error::{SysError, SysResult};

/// The main routing table.
pub const TABLE_MAIN: u32 = 254;

/// `0.0.0.0/0`.
const DEFAULT_V4: ipnetwork::Ipv4Network =
    match ipnetwork::Ipv4Network::new_checked(Ipv4Addr::UNSPECIFIED, 0) {
        Some(n) => n,
        None => panic!("0.0.0.0/0 is a valid network"),
    };

/// `::/0`.
const DEFAULT_V6: ipnetwork::Ipv6Network =
    match ipnetwork::Ipv6Network::new_checked(Ipv6Addr::UNSPECIFIED, 0) {
        Some(n) => n,
        None => panic!("::/0 is a valid network"),
    };

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IpVersion {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpVersion {
    pub(crate) fn family(self) -> AddressFamily {
        match self {
            Self::V4 => AddressFamily::Inet,
            Self::V6 => AddressFamily::Inet6,
        }
    }

    /// The version of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }
}

/// How far a route or an address reaches (`RT_SCOPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Anywhere (`global`).
    Universe,
    /// Within the site (IPv6).
    Site,
    /// On the link only: directly reachable.
    Link,
    /// On this host only.
    Host,
    /// Nowhere (a wildcard in deletions).
    Nowhere,
    /// Another value.
    Other(u8),
}

impl Scope {
    pub(crate) fn to_route(self) -> RouteScope {
        match self {
            Self::Universe => RouteScope::Universe,
            Self::Site => RouteScope::Site,
            Self::Link => RouteScope::Link,
            Self::Host => RouteScope::Host,
            Self::Nowhere => RouteScope::NoWhere,
            Self::Other(v) => RouteScope::Other(v),
        }
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Universe,
            200 => Self::Site,
            253 => Self::Link,
            254 => Self::Host,
            255 => Self::Nowhere,
            v => Self::Other(v),
        }
    }
}

/// The type of a route (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RouteKind {
    /// A gateway or direct route.
    Unicast,
    /// A local address.
    Local,
    /// A broadcast address.
    Broadcast,
    /// A multicast route.
    Multicast,
    /// Packets are dropped silently.
    Blackhole,
    /// Packets are refused with "unreachable".
    Unreachable,
    /// Packets are refused with "prohibited".
    Prohibit,
    /// Anything else.
    Other,
}

impl RouteKind {
    fn from_netlink(t: RouteType) -> Self {
        match t {
            RouteType::Unicast => Self::Unicast,
            RouteType::Local => Self::Local,
            RouteType::Broadcast => Self::Broadcast,
            RouteType::Multicast => Self::Multicast,
            RouteType::BlackHole => Self::Blackhole,
            RouteType::Unreachable => Self::Unreachable,
            RouteType::Prohibit => Self::Prohibit,
            _ => Self::Other,
        }
    }
}

/// A route to add or delete: `ip route add DST [via GW] [dev OIF] [metric M] [table T]`.
///
/// ```
/// use wharf::sys::rtnl::{Route, Scope};
/// let r = Route::default_v4("172.17.0.1".parse().unwrap()).oif(3);
/// assert_eq!(r.describe(), "route default via 172.17.0.1 dev #3");
/// let r = Route::new("10.1.0.0/16".parse().unwrap()).oif(3).metric(100);
/// assert_eq!(r.effective_scope(), Scope::Link);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Route {
    /// Destination prefix (`0.0.0.0/0` or `::/0` for a default route).
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Metric (`RTA_PRIORITY`).
    pub metric: Option<u32>,
    /// Routing table (main unless set).
    pub table: Option<u32>,
    /// Scope; by default `link` without a gateway, `universe` with one.
    pub scope: Option<Scope>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
}

impl Route {
    /// A route to `dst`.
    pub fn new(dst: IpNetwork) -> Self {
        Self {
            dst,
            gateway: None,
            oif: None,
            metric: None,
            table: None,
            scope: None,
            src: None,
        }
    }

    /// `default via GW` (IPv4).
    pub fn default_v4(gateway: Ipv4Addr) -> Self {
        Self::new(IpNetwork::V4(DEFAULT_V4)).via(IpAddr::V4(gateway))
    }

    /// `default via GW` (IPv6).
    pub fn default_v6(gateway: Ipv6Addr) -> Self {
        Self::new(IpNetwork::V6(DEFAULT_V6)).via(IpAddr::V6(gateway))
    }

    /// Sets the next hop.
    pub fn via(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }
    /// Sets the output interface.
    pub fn oif(mut self, index: u32) -> Self {
        self.oif = Some(index);
        self
    }
    /// Sets the metric.
    pub fn metric(mut self, metric: u32) -> Self {
        self.metric = Some(metric);
        self
    }
    /// Sets the table.
    pub fn table(mut self, table: u32) -> Self {
        self.table = Some(table);
        self
    }
    /// Sets the scope.
    pub fn scope(mut self, scope: Scope) -> Self {
        self.scope = Some(scope);
        self
    }
    /// Sets the preferred source address.
    pub fn src(mut self, src: IpAddr) -> Self {
        self.src = Some(src);
        self
    }

    /// The scope the route is added with.
    pub fn effective_scope(&self) -> Scope {
        self.scope.unwrap_or(if self.gateway.is_some() {
            Scope::Universe
        } else {
            Scope::Link
        })
    }

    /// The route as `ip route` would print it.
    pub fn describe(&self) -> String {
        let mut s = if self.dst.prefix() == 0 {
            "route default".to_owned()
        } else {
            format!("route {}", self.dst)
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev #{oif}"));
        }
        if let Some(m) = self.metric {
            s.push_str(&format!(" metric {m}"));
        }
        if let Some(t) = self.table {
            s.push_str(&format!(" table {t}"));
        }
        s
    }

    fn check(&self, what: impl Fn() -> String) -> SysResult<()> {
        let version = IpVersion::of(&self.dst.ip());
        let mismatch = [self.gateway, self.src]
            .iter()
            .flatten()
            .any(|ip| IpVersion::of(ip) != version);
        if mismatch {
            return Err(SysError::InvalidArgument {
                what: format!("{}: mixes IPv4 and IPv6", what()),
            });
        }
        Ok(())
    }

    fn message(&self, deleting: bool) -> RouteMessage {
        let mut msg = RouteMessage::default();
        let h: &mut RouteHeader = &mut msg.header;
        h.address_family = IpVersion::of(&self.dst.ip()).family();
        h.destination_prefix_length = self.dst.prefix();
        let table = self.table.unwrap_or(TABLE_MAIN);
        h.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        if deleting {
            // As `ip route del`: unset fields are wildcards.
            h.scope = self.scope.map_or(RouteScope::NoWhere, Scope::to_route);
            h.protocol = RouteProtocol::Unspec;
            h.kind = RouteType::Unspec;
        } else {
            h.scope = self.effective_scope().to_route();
            h.protocol = RouteProtocol::Static;
            h.kind = RouteType::Unicast;
        }
        let a = &mut msg.attributes;
        if self.dst.prefix() != 0 {
            a.push(RouteAttribute::Destination(RouteAddress::from(
                self.dst.network(),
            )));
        }
        if let Some(gw) = self.gateway {
            a.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        if let Some(src) = self.src {
            a.push(RouteAttribute::PrefSource(RouteAddress::from(src)));
        }
        if let Some(oif) = self.oif {
            a.push(RouteAttribute::Oif(oif));
        }
        if let Some(m) = self.metric {
            a.push(RouteAttribute::Priority(m));
        }
        a.push(RouteAttribute::Table(table));
        msg
    }

    /// The `RTM_NEWROUTE` request. Pure.
    pub(crate) fn add_request(&self) -> SysResult<Request> {
        self.check(|| format!("adding {}", self.describe()))?;
        Ok(Request::new(
            RouteNetlinkMessage::NewRoute(self.message(false)),
            CREATE,
        ))
    }

    /// The `RTM_DELROUTE` request. Pure.
    pub(crate) fn delete_request(&self) -> SysResult<Request> {
        self.check(|| format!("deleting {}", self.describe()))?;
        Ok(Request::new(
            RouteNetlinkMessage::DelRoute(self.message(true)),
            CHANGE,
        ))
    }
}

/// A route as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RouteEntry {
    /// Destination prefix.
    pub dst: IpNetwork,
    /// Next hop.
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub oif: Option<u32>,
    /// Metric.
    pub metric: Option<u32>,
    /// Table.
    pub table: u32,
    /// Scope.
    pub scope: Scope,
    /// Type.
    pub kind: RouteKind,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Who installed it (`RTPROT_*`: 2 kernel, 3 boot, 4 static...).
    pub protocol: u8,
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

impl RouteEntry {
    fn from_message(msg: &RouteMessage) -> Option<Self> {
        let h = &msg.header;
        let v6 = match h.address_family {
            AddressFamily::Inet => false,
            AddressFamily::Inet6 => true,
            _ => return None,
        };
        let mut dst_ip = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let mut e = RouteEntry {
            dst: IpNetwork::new(dst_ip, 0).ok()?,
            gateway: None,
            oif: None,
            metric: None,
            table: u32::from(h.table),
            scope: Scope::from_u8(u8::from(h.scope)),
            kind: RouteKind::from_netlink(h.kind),
            src: None,
            protocol: u8::from(h.protocol),
        };
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst_ip = route_ip(a)?,
                RouteAttribute::Gateway(a) => e.gateway = route_ip(a),
                RouteAttribute::PrefSource(a) => e.src = route_ip(a),
                RouteAttribute::Oif(i) => e.oif = Some(*i),
                RouteAttribute::Priority(m) => e.metric = Some(*m),
                RouteAttribute::Table(t) => e.table = *t,
                _ => {}
            }
        }
        e.dst = IpNetwork::new(dst_ip, h.destination_prefix_length).ok()?;
        Some(e)
    }
}

pub(crate) fn dump_request(version: IpVersion) -> Request {
    let mut msg = RouteMessage::default();
    msg.header.address_family = version.family();
    Request::new(RouteNetlinkMessage::GetRoute(msg), DUMP)
}

/// Route operations of a [`Handle`]: `ip route`.
#[derive(Debug, Clone, Copy)]
pub struct Routes<'a> {
    handle: &'a Handle,
}

impl<'a> Routes<'a> {
    pub(crate) fn new(handle: &'a Handle) -> Self {
        Self { handle }
    }

    /// Adds a route: `ip route add`. [`SysError::AlreadyExists`] if it exists.
    ///
    /// ```no_run
    /// # async fn demo(h: &wharf::sys::rtnl::Handle) -> Result<(), Box<dyn std::error::Error>> {
    /// use wharf::sys::rtnl::Route;
    /// let eth0 = h.link().get("eth0").await?;
    /// h.route().add(Route::default_v4("172.17.0.1".parse()?).oif(eth0.index)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add(&self, route: Route) -> SysResult<()> {
        let req = route.add_request()?;
        self.handle
            .ack(req, || format!("adding {}", route.describe()))
            .await
    }

    /// Deletes a route: `ip route del`. Unset fields match any value.
    pub async fn delete(&self, route: Route) -> SysResult<()> {
        let req = route.delete_request()?;
        self.handle
            .ack(req, || format!("deleting {}", route.describe()))
            .await
    }

    /// Lists the routes of every table for one IP version: `ip route show table all`.
    pub async fn list(&self, version: IpVersion) -> SysResult<Vec<RouteEntry>> {
        let msgs = self
            .handle
            .dump(dump_request(version), || {
                format!("listing {version:?} routes")
            })
            .await?;
        Ok(msgs
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => RouteEntry::from_message(r),
                _ => None,
            })
            .collect())
    }

    /// Lists the routes of one table (254 is `main`).
    pub async fn list_table(&self, version: IpVersion, table: u32) -> SysResult<Vec<RouteEntry>> {
        let mut routes = self.list(version).await?;
        routes.retain(|r| r.table == table);
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysErrorKind;

    #[test]
    fn default_route_message() {
        let req = Route::default_v4("172.17.0.1".parse().unwrap())
            .oif(3)
            .add_request()
            .unwrap();
        assert_eq!(req.flags, CREATE);
        let RouteNetlinkMessage::NewRoute(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert_eq!(m.header.scope, RouteScope::Universe);
        assert_eq!(m.header.table, 254);
        assert!(
            m.attributes
                .contains(&RouteAttribute::Gateway(RouteAddress::Inet(
                    "172.17.0.1".parse().unwrap()
                )))
        );
        assert!(m.attributes.contains(&RouteAttribute::Oif(3)));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Destination(_)))
        );
    }

    #[test]
    fn v6_prefix_route_in_big_table() {
        let req = Route::new("fd00:1::/64".parse().unwrap())
            .oif(2)
            .metric(10)
            .table(1000)
            .add_request()
            .unwrap();
        let RouteNetlinkMessage::NewRoute(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.address_family, AddressFamily::Inet6);
        assert_eq!(m.header.scope, RouteScope::Link);
        assert_eq!(m.header.table, 0);
        assert!(m.attributes.contains(&RouteAttribute::Table(1000)));
        assert!(m.attributes.contains(&RouteAttribute::Priority(10)));
    }

    #[test]
    fn mixed_families_are_refused() {
        let e = Route::new("10.0.0.0/8".parse().unwrap())
            .via("fe80::1".parse().unwrap())
            .add_request()
            .unwrap_err();
        assert_eq!(e.kind(), SysErrorKind::InvalidArgument);
    }

    #[test]
    fn delete_uses_wildcards() {
        let req = Route::default_v6("fe80::1".parse().unwrap())
            .delete_request()
            .unwrap();
        let RouteNetlinkMessage::DelRoute(m) = &req.message else {
            panic!()
        };
        assert_eq!(m.header.scope, RouteScope::NoWhere);
        assert_eq!(req.flags, CHANGE);
    }

    #[test]
    fn serde_round_trip() {
        let r = Route::default_v4("10.0.0.1".parse().unwrap()).metric(5);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Route>(&json).unwrap(), r);
    }
}
