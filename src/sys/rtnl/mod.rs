//! Route netlink: the links, addresses, routes, neighbours and FDB entries of one network
//! namespace, as a typed async API.
//!
//! A [`Handle`] is a netlink route socket bound to one namespace for its whole life. It is opened
//! on a short-lived dedicated thread that enters the namespace ([`NetNs::run`]), and the socket is
//! handed back; the connection's I/O then runs as a task on the tokio runtime. No tokio worker
//! ever changes namespace.
//!
//! Each kind of kernel object has a small accessor that reads like the `ip` command it replaces:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wharf::sys::NetNs;
//! use wharf::sys::rtnl::{Handle, LinkSpec, Route, VethPeer};
//! let host = Handle::current().await?;
//! let c1 = NetNs::open("c1")?;
//! host.link().add(LinkSpec::bridge("wharf0").mtu(1500).up()).await?;  // ip link add wharf0 type bridge
//! let br = host.link().get("wharf0").await?;
//! host.address().add(br.index, "172.17.0.1/16".parse()?).await?;       // ip addr add 172.17.0.1/16 dev wharf0
//! host.link()
//!     .add(LinkSpec::veth("vethab12").peer(VethPeer::new("eth0").netns(&c1)).master(br.index).up())
//!     .await?;                                                          // veth, peer "eth0" inside c1
//! let inside = Handle::in_netns(&c1).await?;
//! let eth0 = inside.link().get("eth0").await?;
//! inside.address().add(eth0.index, "172.17.0.2/16".parse()?).await?;
//! inside.link().set_up(eth0.index).await?;
//! inside.route().add(Route::default_v4("172.17.0.1".parse()?).oif(eth0.index)).await?;
//! # Ok(()) }
//! ```
//!
//! What this module does not do: it knows nothing of containers, networks or endpoints, keeps no
//! state besides the socket, and never spawns `ip`.

mod address;
mod link;
mod mac;
mod neigh;
mod request;
mod route;

use std::sync::Arc;

use netlink_packet_route::RouteNetlinkMessage;
use netlink_proto::{Connection, ConnectionHandle};

use super::error::{SysError, SysResult};
use super::netns::NetNs;

pub use address::{Address, Addresses};
#[cfg(test)]
pub(crate) use link::MockLinkOps;
pub use link::{
    IFNAME_MAX_LEN, Link, LinkChange, LinkKind, LinkOps, LinkSpec, Links, MacvlanMode, VXLAN_PORT,
    VethPeer, VxlanSpec, validate_ifname,
};
pub use mac::{MacAddr, ParseMacError};
pub use neigh::{Fdb, FdbEntry, NeighState, Neighbour, NeighbourEntry, Neighbours};
pub use route::{IpVersion, Route, RouteEntry, RouteKind, Routes, Scope, TABLE_MAIN};

/// A route-netlink connection bound to one network namespace.
///
/// Cheap to clone (clones share the socket); the socket closes when the last clone is dropped.
/// While open, it keeps its namespace alive.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionHandle<RouteNetlinkMessage>,
    ns: NetNs,
    /// `" in namespace \"NAME\""`, or empty for the process's own namespace.
    place: String,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("ns", &self.inner.ns)
            .finish()
    }
}

type Conn = Connection<RouteNetlinkMessage>;

impl Handle {
    /// A handle on the namespace the process runs in.
    ///
    /// Must be called inside a tokio runtime (the connection runs as a task on it).
    pub async fn current() -> SysResult<Self> {
        let ns = NetNs::current()?;
        let what = "opening a route netlink socket";
        let rt = runtime(what)?;
        let (conn, handle) = {
            let _entered = rt.enter();
            connect().map_err(|e| SysError::from_io(what, e))?
        };
        Ok(Self::start(&rt, conn, handle, ns, String::new()))
    }

    /// A handle on the named namespace `/run/netns/NAME` (as `ip -n NAME`).
    pub async fn open(name: &str) -> SysResult<Self> {
        Self::in_netns(&NetNs::open(name)?).await
    }

    /// A handle on any namespace. The socket is opened on a dedicated thread that enters `ns`;
    /// the calling thread never changes namespace.
    pub async fn in_netns(ns: &NetNs) -> SysResult<Self> {
        let place = format!(" in {ns}");
        let what = || format!("opening a route netlink socket{place}");
        let rt = runtime(&what())?;
        let rt2 = rt.clone();
        let (conn, handle) = ns
            .run(move || {
                // Registering the socket with the runtime's reactor needs the runtime's context,
                // not the namespace of any of its threads.
                let _entered = rt2.enter();
                connect()
            })
            .await?
            .map_err(|e| SysError::from_io(what(), e))?;
        Ok(Self::start(&rt, conn, handle, ns.clone(), place))
    }

    fn start(
        rt: &tokio::runtime::Handle,
        conn: Conn,
        handle: ConnectionHandle<RouteNetlinkMessage>,
        ns: NetNs,
        place: String,
    ) -> Self {
        rt.spawn(conn);
        Self {
            inner: Arc::new(Inner {
                conn: handle,
                ns,
                place,
            }),
        }
    }

    /// The namespace this handle is bound to.
    pub fn netns(&self) -> &NetNs {
        &self.inner.ns
    }

    /// Links (network interfaces): `ip link`.
    pub fn link(&self) -> Links<'_> {
        Links::new(self)
    }

    /// Interface addresses: `ip address`.
    pub fn address(&self) -> Addresses<'_> {
        Addresses::new(self)
    }

    /// Routes: `ip route`.
    pub fn route(&self) -> Routes<'_> {
        Routes::new(self)
    }

    /// Neighbour (ARP / NDP) entries: `ip neigh`.
    pub fn neigh(&self) -> Neighbours<'_> {
        Neighbours::new(self)
    }

    /// Bridge forwarding database entries: `bridge fdb`.
    pub fn fdb(&self) -> Fdb<'_> {
        Fdb::new(self)
    }
}

fn runtime(what: &str) -> SysResult<tokio::runtime::Handle> {
    tokio::runtime::Handle::try_current().map_err(|e| SysError::Protocol {
        what: what.to_owned(),
        detail: format!("must be called inside a tokio runtime: {e}"),
    })
}

/// Opens a route netlink socket in the calling thread's namespace and wraps it in a connection.
fn connect() -> std::io::Result<(Conn, ConnectionHandle<RouteNetlinkMessage>)> {
    let (mut conn, handle, unsolicited) =
        netlink_proto::new_connection(netlink_sys::protocols::NETLINK_ROUTE)?;
    // No multicast groups are joined; dropping the receiver lets the connection end once the
    // last handle is gone.
    drop(unsolicited);
    // Hand acks and end-of-dump markers to the requester, so that a reply is positively seen
    // rather than inferred from a closed stream.
    conn.set_forward_ack(true);
    conn.set_forward_done(true);
    // Error replies need not echo the whole request back.
    let sock = netlink_proto::sys::AsyncSocket::socket_mut(conn.socket_mut());
    sock.set_cap_ack(true)?;
    Ok((conn, handle))
}
