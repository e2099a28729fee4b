//! A private world of network namespaces for tests, examples and benchmarks.
//!
//! wharf's tests prove behaviour with real packets on the real kernel, but they must never touch
//! the machine's own network. A [`Lab`] hands out throwaway namespaces (one plays the host,
//! others play containers, an "internet", a LAN...) whose names are unique to the lab, and
//! deletes all of them when it is dropped, also when a test fails or panics. Deleting a namespace
//! deletes every interface in it, so the lab needs no other bookkeeping for links.
//!
//! Names look like `wlab-<pid>-<n>-<role>`. A process that was killed before its guards ran
//! leaves such names behind; [`Lab::new`] sweeps those of processes that no longer exist.
//!
//! The [`probe`] module holds the clients and servers (ICMP ping, TCP, UDP, DNS) that tests run
//! inside namespaces.
//!
//! This module is part of the library so that `tests/`, `examples/` and `benches/` share it; a
//! runtime has no use for it.

pub mod etcd;
pub mod probe;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use ipnetwork::IpNetwork;

use crate::sys::rtnl::{Handle, LinkSpec, VethPeer};
use crate::sys::{NetNs, SysResult};

/// The prefix of every namespace a lab creates.
pub const LAB_PREFIX: &str = "wlab-";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Panics with a clear message unless the process runs as root.
///
/// Lab tests need `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`; without them they must fail loudly, never
/// pass by skipping.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "this test builds network namespaces and needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); \
             run the suite as root, e.g. `sudo -E cargo test`"
        );
    }
}

/// A set of throwaway namespaces, all deleted on drop.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use wharf::lab::{Lab, probe};
/// let lab = Lab::new();
/// let host = lab.namespace("host").await?;    // plays the Docker host
/// let c1 = lab.namespace("c1").await?;        // plays a container
/// // ... connect them with wharf ...
/// assert!(probe::ping(&c1, "127.0.0.1".parse()?, probe::DEFAULT_TIMEOUT).await.is_ok());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Lab {
    id: String,
    namespaces: Mutex<Vec<String>>,
    dirs: Mutex<Vec<PathBuf>>,
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Lab {
    /// Starts an empty lab (and sweeps what killed processes left behind). Panics unless root.
    pub fn new() -> Self {
        require_root();
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Self {
            id: format!("{LAB_PREFIX}{}-{n}", std::process::id()),
            namespaces: Mutex::new(Vec::new()),
            dirs: Mutex::new(Vec::new()),
        }
    }

    /// The lab's unique prefix, e.g. `wlab-4242-0`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The full namespace name this lab uses for `role` (`wlab-4242-0-host`).
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.id)
    }

    /// The prefix of every namespace name of this lab (`wlab-4242-0-`). Hand it to code under
    /// test that creates namespaces (a controller's `netns_prefix`): the lab deletes whatever
    /// carries it.
    pub fn netns_prefix(&self) -> String {
        format!("{}-", self.id)
    }

    /// Creates the namespace for `role` (loopback up) and deletes it when the lab is dropped.
    pub async fn namespace(&self, role: &str) -> SysResult<NetNs> {
        let name = self.name(role);
        let ns = NetNs::create(&name).await?;
        self.adopt(&name);
        Ok(ns)
    }

    /// Makes the lab delete the named namespace on drop, e.g. a sandbox that code under test
    /// created with a name from [`Lab::name`].
    pub fn adopt(&self, name: &str) {
        let mut names = self.namespaces.lock().unwrap_or_else(|p| p.into_inner());
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }

    /// Wires two namespaces with a veth pair: interface `a.1` in `a.0` with address `a.2`, and
    /// `b.1` in `b.0` with address `b.2`, both up. Like a cable between two machines.
    pub async fn wire(
        &self,
        a: (&NetNs, &str, IpNetwork),
        b: (&NetNs, &str, IpNetwork),
    ) -> SysResult<()> {
        let ha = Handle::in_netns(a.0).await?;
        let hb = Handle::in_netns(b.0).await?;
        ha.link()
            .add(LinkSpec::veth(a.1).peer(VethPeer::new(b.1).netns(b.0)).up())
            .await?;
        let la = ha.link().get(a.1).await?;
        ha.address().add(la.index, a.2).await?;
        let lb = hb.link().get(b.1).await?;
        hb.address().add(lb.index, b.2).await?;
        hb.link().set_up(lb.index).await?;
        Ok(())
    }

    /// Several hosts on one segment: a namespace `underlay` holding a bridge (the switch) and,
    /// for each role, a host namespace whose `eth0` is plugged into it with address
    /// `198.18.0.<i+1>/24` (RFC 2544's benchmarking range, never routed). Returns the hosts with
    /// their underlay addresses, in order.
    pub async fn underlay(&self, roles: &[&str]) -> SysResult<Vec<(NetNs, std::net::Ipv4Addr)>> {
        let wire = self.namespace("underlay").await?;
        let sw = Handle::in_netns(&wire).await?;
        sw.link().add(LinkSpec::bridge("switch").up()).await?;
        let switch = sw.link().get("switch").await?.index;
        let mut hosts = Vec::with_capacity(roles.len());
        for (i, role) in roles.iter().enumerate() {
            let host = self.namespace(role).await?;
            let port = format!("port{i}");
            sw.link()
                .add(
                    LinkSpec::veth(&port)
                        .peer(VethPeer::new("eth0").netns(&host))
                        .master(switch)
                        .up(),
                )
                .await?;
            let octet = u8::try_from(i + 1).map_err(|_| crate::sys::SysError::InvalidArgument {
                what: format!("plugging host {role:?} into the underlay: more than 254 hosts"),
            })?;
            let addr = std::net::Ipv4Addr::new(198, 18, 0, octet);
            let h = Handle::in_netns(&host).await?;
            let eth0 = h.link().get("eth0").await?.index;
            h.address()
                .add(
                    eth0,
                    IpNetwork::V4(ipnetwork::Ipv4Network::new(addr, 24).map_err(|_| {
                        crate::sys::SysError::InvalidArgument {
                            what: format!("underlay address {addr}/24"),
                        }
                    })?),
                )
                .await?;
            h.link().set_up(eth0).await?;
            hosts.push((host, addr));
        }
        Ok(hosts)
    }

    /// A fresh private directory (0700) removed with the lab, e.g. a controller's state directory.
    pub fn temp_dir(&self, role: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(self.name(role));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        self.remove_on_drop(&dir);
        Ok(dir)
    }

    /// Makes the lab remove `path` (a directory tree) on drop.
    pub fn remove_on_drop(&self, path: &Path) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_owned());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut names =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|p| p.into_inner()));
        // Namespaces that code under test created with the lab's prefix (see
        // `Lab::netns_prefix`), e.g. a controller's sandboxes.
        let prefix = self.netns_prefix();
        for name in NetNs::list_named().unwrap_or_default() {
            if name.starts_with(&prefix) && !names.contains(&name) {
                names.insert(0, name);
            }
        }
        for name in names.iter().rev() {
            match NetNs::delete(name) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => eprintln!("lab cleanup: {e}"),
            }
            // Per-namespace resolv.conf/hosts that `ip netns exec` would bind-mount.
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        }
        for dir in std::mem::take(&mut *self.dirs.lock().unwrap_or_else(|p| p.into_inner())) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Deletes lab namespaces whose creating process no longer exists (a test run that was killed).
pub fn sweep_stale() {
    let Ok(names) = NetNs::list_named() else {
        return;
    };
    for name in names {
        let Some(rest) = name.strip_prefix(LAB_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = NetNs::delete(&name);
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&name));
        }
    }
}

/// Lab namespaces that currently exist (for leak checks).
pub fn leftover_namespaces() -> Vec<String> {
    NetNs::list_named()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(LAB_PREFIX))
        .collect()
}
