//! A lab world for controller tests: a host namespace, a controller on it, and helpers that look
//! at the kernel the way `ip` would.
#![allow(dead_code)]

pub mod cluster;
pub mod crash;
pub mod services;

use std::path::PathBuf;

use wharf::controller::{Controller, ControllerConfig};
use wharf::lab::Lab;
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, IpVersion};

/// Opens a controller on `config` (after the previous one was dropped: `drop(w.wharf)`; the
/// state store admits one controller at a time).
pub async fn reopen(config: &ControllerConfig) -> Controller {
    Controller::open(config.clone())
        .await
        .expect("controller reopens")
}

/// The lab's internet namespace and its name server (stopped on drop).
pub struct Internet {
    pub ns: NetNs,
    _servers: (wharf::lab::probe::Server, wharf::lab::probe::Server),
}

/// A lab host with a controller on it. Everything is deleted on drop.
pub struct World {
    pub wharf: Controller,
    pub host: NetNs,
    pub files_dir: PathBuf,
    pub config: ControllerConfig,
    // Dropped last: the namespaces outlive the controller's handles.
    pub lab: Lab,
}

impl World {
    pub async fn new() -> Self {
        let lab = Lab::new();
        let host = lab.namespace("host").await.expect("lab host namespace");
        let state = lab.temp_dir("state").expect("state dir");
        let files_dir = lab.temp_dir("etc-netns").expect("files dir");
        let resolv = files_dir.join("host-resolv.conf");
        std::fs::write(&resolv, "nameserver 198.51.100.53\nnameserver 127.0.0.53\n").unwrap();
        let mut config = ControllerConfig::new(state)
            .host(host.clone())
            .netns_prefix(lab.netns_prefix());
        config.sandbox_files_dir = files_dir.clone();
        config.host_resolv_conf = Some(resolv);
        let wharf = Controller::open(config.clone())
            .await
            .expect("controller opens");
        Self {
            wharf,
            host,
            files_dir,
            config,
            lab,
        }
    }

    /// `docker network create NET` and `docker run --network NET` for each name.
    pub async fn network_with(&self, net: &str, containers: &[&str]) {
        self.wharf
            .create_network(wharf::controller::NetworkSpec::new(net))
            .await
            .expect("network");
        for name in containers {
            self.run(name, net).await;
        }
    }

    /// `docker run --name NAME --network NET`: a sandbox connected to one network.
    pub async fn run(&self, name: &str, net: &str) {
        self.wharf
            .create_sandbox(wharf::controller::SandboxSpec::new(name))
            .await
            .expect("sandbox");
        self.wharf
            .connect(name, net, wharf::controller::EndpointSpec::default())
            .await
            .expect("connect");
    }

    /// A namespace "client" wired to the host: host 192.0.2.1/24, client 192.0.2.2/24.
    pub async fn client(&self) -> NetNs {
        let client = self.lab.namespace("client").await.unwrap();
        self.lab
            .wire(
                (&self.host, "uplink", "192.0.2.1/24".parse().unwrap()),
                (&client, "eth0", "192.0.2.2/24".parse().unwrap()),
            )
            .await
            .unwrap();
        client
    }

    /// The lab's internet: a namespace wired to the host (host 198.51.100.1/24, internet
    /// 198.51.100.53/24) running the name server the host's `resolv.conf` names, which knows
    /// `google.com` (198.51.100.53 itself).
    pub async fn internet(&self) -> Internet {
        let ns = self.lab.namespace("internet").await.unwrap();
        self.lab
            .wire(
                (&self.host, "wan", "198.51.100.1/24".parse().unwrap()),
                (&ns, "eth0", "198.51.100.53/24".parse().unwrap()),
            )
            .await
            .unwrap();
        let zone = [("google.com", "198.51.100.53".parse().unwrap())];
        let servers = wharf::lab::probe::serve_dns(&ns, "198.51.100.53:53".parse().unwrap(), &zone)
            .await
            .unwrap();
        Internet {
            ns,
            _servers: servers,
        }
    }

    pub async fn links_in(&self, ns: &NetNs) -> Vec<String> {
        link_names(ns).await
    }

    pub async fn host_links(&self) -> Vec<String> {
        self.links_in(&self.host).await
    }

    pub async fn addresses_of(&self, ns: &NetNs, ifname: &str) -> Vec<String> {
        let h = Handle::in_netns(ns).await.unwrap();
        let link = h.link().get(ifname).await.unwrap();
        h.address()
            .list_on(link.index)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.addr.to_string())
            .collect()
    }

    pub async fn default_gateway(&self, ns: &NetNs) -> Option<String> {
        let h = Handle::in_netns(ns).await.unwrap();
        h.route()
            .list(IpVersion::V4)
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.dst.prefix() == 0)
            .and_then(|r| r.gateway)
            .map(|g| g.to_string())
    }
}

/// A small deterministic generator (xorshift), so a failure can be replayed from its seed.
pub struct Rng(pub u64);

impl Rng {
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The names of the links in a namespace, sorted (`ip -o link` in it).
pub async fn link_names(ns: &NetNs) -> Vec<String> {
    let h = Handle::in_netns(ns).await.unwrap();
    let mut names: Vec<String> = h
        .link()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    names.sort();
    names
}

/// What a sandbox's namespace holds, as `ip -4 addr` and `ip -4 route` show it: each interface
/// but `lo` with its IPv4 addresses (`("eth0", "172.18.0.2/16")`), and the number of IPv4
/// default routes.
pub async fn ipv4_view(ns: &NetNs) -> (std::collections::BTreeSet<(String, String)>, usize) {
    let h = Handle::in_netns(ns).await.unwrap();
    let mut got = std::collections::BTreeSet::new();
    for l in h.link().list().await.unwrap() {
        if l.name == "lo" {
            continue;
        }
        for a in h.address().list_on(l.index).await.unwrap() {
            if a.addr.is_ipv4() {
                got.insert((l.name.clone(), a.addr.to_string()));
            }
        }
    }
    let defaults = h
        .route()
        .list(IpVersion::V4)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.dst.prefix() == 0)
        .count();
    (got, defaults)
}
