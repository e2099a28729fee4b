//! The private world a tutorial scenario runs in: a namespace that plays the Docker host, an
//! "internet" namespace behind it with a name server that knows the public names the tutorial
//! uses, and a wharf controller on the host. Everything is deleted when the world is dropped.

use std::net::IpAddr;
use std::time::Duration;

use wharf::controller::{Controller, ControllerConfig};
use wharf::lab::{Lab, probe};
use wharf::sys::NetNs;
use wharf::sys::rtnl::{Handle, Route};

/// What the tutorial calls google.com, in the lab's internet.
pub const PUBLIC_NAME: &str = "google.com";
/// Its address.
pub const PUBLIC_IP: &str = "198.51.100.100";
/// The lab internet's name server, which the host's resolv.conf names.
pub const NAME_SERVER: &str = "198.51.100.53";

pub struct World {
    pub wharf: Controller,
    pub host: NetNs,
    /// A machine outside the host (for reaching published ports and host services).
    pub outside: NetNs,
    /// Whether the host is the machine's real namespace (`--real-host`).
    pub real_host: bool,
    _servers: Vec<probe::Server>,
    /// The lab, for scenarios that build more of the world (a LAN).
    pub lab: Lab,
}

impl World {
    /// A lab world (the default), or the machine's real network when `real_host` is set.
    pub async fn new(real_host: bool) -> Result<Self, Box<dyn std::error::Error>> {
        let lab = Lab::new();
        let mut servers = Vec::new();
        if real_host {
            // The machine's own namespace and resolv.conf; only the containers are lab-made.
            let host = NetNs::current()?;
            let outside = lab.namespace("outside").await?;
            let mut config = ControllerConfig::new(lab.temp_dir("state")?)
                .host(host.clone())
                .netns_prefix(lab.netns_prefix());
            config.sandbox_files_dir = lab.temp_dir("etc-netns")?;
            let wharf = Controller::open(config).await?;
            return Ok(Self {
                wharf,
                host,
                outside,
                real_host,
                _servers: servers,
                lab,
            });
        }
        let host = lab.namespace("host").await?;
        let internet = lab.namespace("internet").await?;
        {
            // host 198.51.100.1 --- 198.51.100.53 internet (name server, and google.com)
            lab.wire(
                (&host, "wan", "198.51.100.1/24".parse()?),
                (&internet, "eth0", "198.51.100.53/24".parse()?),
            )
            .await?;
            let h = Handle::in_netns(&host).await?;
            h.route()
                .add(Route::default_v4(NAME_SERVER.parse()?))
                .await?;
            let inet = Handle::in_netns(&internet).await?;
            let eth0 = inet.link().get("eth0").await?.index;
            inet.address()
                .add(eth0, format!("{PUBLIC_IP}/32").parse()?)
                .await?;
            let zone = [(PUBLIC_NAME, PUBLIC_IP.parse::<IpAddr>()?)];
            let (udp, tcp) =
                probe::serve_dns(&internet, format!("{NAME_SERVER}:53").parse()?, &zone).await?;
            servers.push(udp);
            servers.push(tcp);
        }
        // A client machine on the host's LAN: 192.0.2.1 (host) --- 192.0.2.2 (outside).
        let outside = lab.namespace("outside").await?;
        lab.wire(
            (&host, "lan", "192.0.2.1/24".parse()?),
            (&outside, "eth0", "192.0.2.2/24".parse()?),
        )
        .await?;

        let state = lab.temp_dir("state")?;
        let files = lab.temp_dir("etc-netns")?;
        let resolv = files.join("host-resolv.conf");
        std::fs::write(&resolv, format!("nameserver {NAME_SERVER}\n"))?;
        let mut config = ControllerConfig::new(state)
            .host(host.clone())
            .netns_prefix(lab.netns_prefix());
        config.sandbox_files_dir = files;
        config.host_resolv_conf = Some(resolv);
        let wharf = Controller::open(config).await?;
        Ok(Self {
            wharf,
            host,
            outside,
            real_host,
            _servers: servers,
            lab,
        })
    }
}

/// How long a check waits before calling a destination unreachable.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(1500);
