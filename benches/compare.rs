//! wharf against its peers: attach and detach of a container namespace to a bridge network.
//!
//! One run, one machine, four tools, each driving its own lab host namespace:
//!
//! - **wharf**: `Controller::connect` / `Controller::disconnect` in process (the sandbox is
//!   created and deleted outside the timing, as in `benches/attach.rs`);
//! - **netavark** (Debian's `netavark`, 1.4): `netavark setup|teardown /run/netns/<ns>` with the
//!   network JSON on stdin, run as a child process inside the lab host namespace, iptables
//!   firewall driver (what 1.4 uses without firewalld), a private `--config` directory;
//! - **CNI** (Debian's `containernetworking-plugins`): the `bridge` plugin with `host-local`
//!   IPAM (private `dataDir`), `CNI_COMMAND=ADD|DEL`, with and without `ipMasq`;
//! - **ip**: the floor for a process-per-step tool: `ip -n` commands (veth with the peer created
//!   in the container's namespace, enslave and up, address, up, default route; delete).
//!
//! Child processes enter the lab host namespace with `setns(2)` before `exec` (what
//! `ip netns exec` does, minus its private mount namespace and `/sys` remount, which would add
//! ~1 ms per call to every peer); the launch cost of an empty child is printed as a reference.
//! The tools run round-robin, one iteration of each in turn, so that load from anything else on
//! the machine spreads over all of them. Nothing is installed: a missing tool is skipped with the
//! name of the Debian package that has it.
//!
//! Prints medians, p90s and wharf's ratio to each peer, and writes the distributions as an SVG
//! chart (default `docs/bench-attach.svg`).
//!
//! `sudo -E cargo bench --bench compare` (or `benches/compare/run.sh`); environment:
//! `COMPARE_ITERS` (default 200), `COMPARE_SVG` (chart path, `-` for none), `COMPARE_ONLY`
//! (comma-separated tool labels), `COMPARE_VERBOSE=1` (print each host namespace's nftables
//! ruleset at the end).

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wharf::controller::{Controller, ControllerConfig, EndpointSpec, NetworkSpec, SandboxSpec};
use wharf::lab::Lab;
use wharf::sys::NetNs;

const NETAVARK: &str = "/usr/lib/podman/netavark";
const CNI_DIR: &str = "/usr/lib/cni";

/// Docker 20.10 `network connect` / `disconnect`, measured earlier on this machine (ms, median);
/// Docker is not installed here, so it is quoted, not measured.
const DOCKER_REFERENCE: (f64, f64) = (44.0, 65.0);

type Res<T> = Result<T, String>;

/// One tool under test. `prepare` and `cleanup` are not timed; `attach` and `detach` are.
trait Peer {
    fn label(&self) -> &'static str;
    /// Creates the container namespace for iteration `i`; returns its name.
    fn prepare(&mut self, i: usize) -> Res<String>;
    fn attach(&mut self, i: usize, ns: &str) -> Res<()>;
    fn detach(&mut self, i: usize, ns: &str) -> Res<()>;
    fn cleanup(&mut self, i: usize, ns: &str) -> Res<()>;
    /// The lab namespace the tool works in.
    fn host(&self) -> &NetNs;
}

/// Runs `cmd`, feeding `stdin`; an error carries the output.
fn run(mut cmd: Command, stdin: Option<&str>, what: &str) -> Res<()> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{what}: spawning: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().ok_or("no stdin")?;
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("{what}: stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: waiting: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A container address in 10.<net>.0.0/16 for iteration `i` (never .0 or .1).
fn addr(net: u8, i: usize) -> Ipv4Addr {
    let n = (i % 65_000) as u32 + 2;
    Ipv4Addr::new(10, net, (n >> 8) as u8, n as u8)
}

// ---------------------------------------------------------------------------------------------
// wharf

struct Wharf {
    rt: tokio::runtime::Runtime,
    ctl: Controller,
    host: NetNs,
}

impl Wharf {
    fn new(lab: &Lab) -> Res<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (ctl, host) = rt.block_on(async {
            let host = lab
                .namespace("wharf")
                .await
                .map_err(|e| format!("wharf host namespace: {e}"))?;
            let mut config = ControllerConfig::new(lab.temp_dir("wharf-state").map_err(s)?)
                .host(host.clone())
                .netns_prefix(lab.netns_prefix());
            config.sandbox_files_dir = lab.temp_dir("wharf-files").map_err(s)?;
            let ctl = Controller::open(config).await.map_err(s)?;
            ctl.create_network(NetworkSpec::new("net"))
                .await
                .map_err(s)?;
            Ok::<_, String>((ctl, host))
        })?;
        Ok(Self { rt, ctl, host })
    }
}

fn s(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Peer for Wharf {
    fn label(&self) -> &'static str {
        "wharf"
    }
    fn prepare(&mut self, i: usize) -> Res<String> {
        let name = format!("w{i}");
        self.rt
            .block_on(self.ctl.create_sandbox(SandboxSpec::new(&name)))
            .map_err(s)?;
        Ok(name)
    }
    fn attach(&mut self, _: usize, ns: &str) -> Res<()> {
        self.rt
            .block_on(self.ctl.connect(ns, "net", EndpointSpec::default()))
            .map(drop)
            .map_err(s)
    }
    fn detach(&mut self, _: usize, ns: &str) -> Res<()> {
        self.rt.block_on(self.ctl.disconnect(ns, "net")).map_err(s)
    }
    fn cleanup(&mut self, _: usize, ns: &str) -> Res<()> {
        self.rt.block_on(self.ctl.delete_sandbox(ns)).map_err(s)
    }
    fn host(&self) -> &NetNs {
        &self.host
    }
}

// ---------------------------------------------------------------------------------------------
// External tools: container namespaces are plain lab namespaces.

struct External {
    label: &'static str,
    lab_prefix: String,
    host: NetNs,
    kind: Kind,
    config_dir: PathBuf,
}

enum Kind {
    Netavark,
    Cni { masq: bool },
    Ip,
}

impl External {
    fn new(lab: &Lab, rt: &tokio::runtime::Runtime, label: &'static str, kind: Kind) -> Res<Self> {
        let role = label.replace(' ', "-");
        let host = rt
            .block_on(lab.namespace(&role))
            .map_err(|e| format!("{label} host namespace: {e}"))?;
        let config_dir = lab.temp_dir(&format!("{role}-config")).map_err(s)?;
        let this = Self {
            label,
            lab_prefix: lab.netns_prefix(),
            host,
            kind,
            config_dir,
        };
        if let Kind::Ip = this.kind {
            // The bridge the `ip` baseline plugs into (the others create theirs on first use).
            this.ip(&["link", "add", "br0", "type", "bridge"], None)?;
            this.ip(&["addr", "add", "10.93.0.1/16", "dev", "br0"], None)?;
            this.ip(&["link", "set", "br0", "up"], None)?;
        }
        Ok(this)
    }

    /// `ip -n <ns> ARGS` in the container's namespace, or in the host's when `netns` is None.
    fn ip(&self, args: &[&str], netns: Option<&str>) -> Res<()> {
        let ns = netns.unwrap_or_else(|| self.host.name().unwrap_or_default());
        let mut cmd = Command::new("ip");
        cmd.args(["-n", ns]).args(args);
        run(cmd, None, &format!("ip {}", args.join(" ")))
    }

    fn netavark_json(&self, i: usize, ns: &str) -> String {
        serde_json::json!({
            "container_id": format!("{:064x}", i + 1),
            "container_name": ns,
            "networks": {
                "cmp": { "interface_name": "eth0", "static_ips": [addr(91, i).to_string()] }
            },
            "network_info": {
                "cmp": {
                    "name": "cmp",
                    "id": format!("{:064x}", 0xc0ffee),
                    "driver": "bridge",
                    "network_interface": "nv0",
                    "subnets": [{ "subnet": "10.91.0.0/16", "gateway": "10.91.0.1" }],
                    "ipv6_enabled": false,
                    "internal": false,
                    "dns_enabled": false,
                    "ipam_options": { "driver": "host-local" }
                }
            },
            "port_mappings": []
        })
        .to_string()
    }

    fn netavark(&self, verb: &str, i: usize, ns: &str) -> Res<()> {
        let mut cmd = self.host.command(NETAVARK);
        cmd.env("NETAVARK_FW", "iptables")
            .arg("--config")
            .arg(&self.config_dir)
            .args(["--rootless", "false", verb])
            .arg(format!("/run/netns/{ns}"));
        run(
            cmd,
            Some(&self.netavark_json(i, ns)),
            &format!("netavark {verb}"),
        )
    }

    fn cni(&self, verb: &str, i: usize, ns: &str, masq: bool) -> Res<()> {
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": if masq { "cmp-masq" } else { "cmp" },
            "type": "bridge",
            "bridge": "cni0",
            "isGateway": true,
            "ipMasq": masq,
            "ipam": {
                "type": "host-local",
                "subnet": "10.92.0.0/16",
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.config_dir.join("host-local"),
            }
        })
        .to_string();
        let mut cmd = self.host.command(Path::new(CNI_DIR).join("bridge"));
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", format!("cmp{i}"))
            .env("CNI_NETNS", format!("/run/netns/{ns}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR);
        run(cmd, Some(&conf), &format!("CNI {verb}"))
    }
}

impl Peer for External {
    fn label(&self) -> &'static str {
        self.label
    }
    fn prepare(&mut self, i: usize) -> Res<String> {
        let tag = match self.kind {
            Kind::Netavark => "n",
            Kind::Cni { masq: true } => "m",
            Kind::Cni { masq: false } => "c",
            Kind::Ip => "i",
        };
        let name = format!("{}{tag}{i}", self.lab_prefix);
        NetNs::create_sync(&name).map_err(s)?;
        Ok(name)
    }
    fn attach(&mut self, i: usize, ns: &str) -> Res<()> {
        match self.kind {
            Kind::Netavark => self.netavark("setup", i, ns),
            Kind::Cni { masq } => self.cni("ADD", i, ns, masq),
            Kind::Ip => {
                let veth = format!("vip{i}");
                let a = format!("{}/16", addr(93, i));
                self.ip(
                    &[
                        "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
                    ],
                    None,
                )?;
                self.ip(&["link", "set", &veth, "master", "br0", "up"], None)?;
                self.ip(&["addr", "add", &a, "dev", "eth0"], Some(ns))?;
                self.ip(&["link", "set", "eth0", "up"], Some(ns))?;
                self.ip(&["route", "add", "default", "via", "10.93.0.1"], Some(ns))
            }
        }
    }
    fn detach(&mut self, i: usize, ns: &str) -> Res<()> {
        match self.kind {
            Kind::Netavark => self.netavark("teardown", i, ns),
            Kind::Cni { masq } => self.cni("DEL", i, ns, masq),
            Kind::Ip => self.ip(&["link", "del", &format!("vip{i}")], None),
        }
    }
    fn cleanup(&mut self, _: usize, ns: &str) -> Res<()> {
        NetNs::delete(ns).map_err(s)
    }
    fn host(&self) -> &NetNs {
        &self.host
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics and output

#[derive(Default)]
struct Samples {
    attach: Vec<f64>,
    detach: Vec<f64>,
    failed: Option<String>,
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted samples (`p` in 0..=1).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Launch cost of an empty child that enters a namespace (setns + exec of `true`), and of
/// `ip netns exec NS true` for comparison.
fn launch_cost(ns: &NetNs) -> (f64, f64) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let _ = ns.command("true").status();
        a.push(ms(t.elapsed()));
        let t = Instant::now();
        let _ = Command::new("ip")
            .args(["netns", "exec", ns.name().unwrap_or_default(), "true"])
            .status();
        b.push(ms(t.elapsed()));
    }
    (pct(&sorted(&a), 0.5), pct(&sorted(&b), 0.5))
}

/// Checks (untimed, once per tool) that the container got an IPv4 address on eth0 and a default
/// route: the tools must all have done the same job.
fn check_attached(ns: &str, label: &str) -> Res<()> {
    let ns = if label == "wharf" {
        // wharf names the namespace `<prefix><sandbox>`; find it by its suffix.
        NetNs::list_named()
            .map_err(s)?
            .into_iter()
            .find(|n| n.ends_with(&format!("-{ns}")))
            .ok_or(format!("no namespace for sandbox {ns}"))?
    } else {
        ns.to_owned()
    };
    let out = |args: &[&str]| {
        Command::new("ip")
            .args(["-n", &ns])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let a = out(&["-o", "-4", "addr", "show", "dev", "eth0"]);
    let r = out(&["route", "show", "default"]);
    if a.contains("inet ") && r.starts_with("default via") {
        Ok(())
    } else {
        Err(format!(
            "{label}: after attach, eth0 has {a:?} and the default route is {r:?}"
        ))
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What the machine's root namespace looks like (links, routes, nftables), to check that the
/// run changed nothing there. Read-only.
fn root_fingerprint() -> String {
    let mut out = String::new();
    for args in [
        &["-o", "link", "show"][..],
        &["route", "show", "table", "all"][..],
    ] {
        if let Ok(o) = Command::new("ip").args(args).output() {
            // Link statistics change with traffic; keep names and flags only.
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                out.push_str(line.split(" qlen").next().unwrap_or(line));
                out.push('\n');
            }
        }
    }
    if let Ok(o) = Command::new("nft").args(["list", "ruleset"]).output() {
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    out
}

fn nft_ruleset(ns: &NetNs) -> String {
    ns.command("nft")
        .args(["list", "ruleset"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn which(path: &str) -> bool {
    Path::new(path).exists()
}

fn in_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).exists()))
        .unwrap_or(false)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("compare: run with `cargo bench --bench compare`");
        return;
    }
    let iters: usize = std::env::var("COMPARE_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let svg_path = std::env::var("COMPARE_SVG").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/docs/bench-attach.svg").to_owned()
    });
    let only: Option<Vec<String>> = std::env::var("COMPARE_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let verbose = std::env::var("COMPARE_VERBOSE").is_ok_and(|v| v == "1");
    let wanted = |label: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == label));

    let mut missing = Vec::new();
    if !which(NETAVARK) {
        missing.push(("netavark", "netavark"));
    }
    if !which(&format!("{CNI_DIR}/bridge")) || !which(&format!("{CNI_DIR}/host-local")) {
        missing.push(("CNI bridge", "containernetworking-plugins"));
    }
    if !in_path("iptables") {
        // netavark 1.4 and the CNI bridge plugin's ipMasq program the firewall with it.
        missing.push(("netavark, CNI bridge+masq", "iptables"));
    }
    for (what, pkg) in &missing {
        println!("compare: {what} needs the Debian package `{pkg}` (apt-get install {pkg})");
    }
    let missing_pkg = |pkg: &str| missing.iter().any(|(_, p)| *p == pkg);

    let fingerprint = root_fingerprint();
    let load_before = loadavg();
    let lab = Lab::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut peers: Vec<Box<dyn Peer>> = Vec::new();
    if wanted("wharf") {
        peers.push(Box::new(Wharf::new(&lab).expect("wharf")));
    }
    // (label, kind, Debian packages it needs)
    type ExternalSpec = (&'static str, fn() -> Kind, &'static [&'static str]);
    let externals: [ExternalSpec; 4] = [
        ("netavark", || Kind::Netavark, &["netavark", "iptables"]),
        (
            "CNI bridge+masq",
            || Kind::Cni { masq: true },
            &["containernetworking-plugins", "iptables"],
        ),
        (
            "CNI bridge",
            || Kind::Cni { masq: false },
            &["containernetworking-plugins"],
        ),
        ("ip", || Kind::Ip, &[]),
    ];
    for (label, kind, pkgs) in externals {
        if !wanted(label) {
            continue;
        }
        if pkgs.iter().any(|p| missing_pkg(p)) {
            println!("compare: {label}: skipped");
            continue;
        }
        match External::new(&lab, &rt, label, kind()) {
            Ok(p) => peers.push(Box::new(p)),
            Err(e) => println!("compare: {label}: {e}; skipped"),
        }
    }
    let (setns_launch, ipnetns_launch) = launch_cost(peers[0].host());

    let mut samples: Vec<Samples> = peers.iter().map(|_| Samples::default()).collect();
    let started = Instant::now();
    let mut load_during = Vec::new();
    for i in 0..iters {
        for (p, smp) in peers.iter_mut().zip(samples.iter_mut()) {
            if smp.failed.is_some() {
                continue;
            }
            let mut step = || -> Res<(f64, f64)> {
                let ns = p.prepare(i)?;
                let t = Instant::now();
                p.attach(i, &ns)?;
                let a = ms(t.elapsed());
                if i == 0 {
                    check_attached(&ns, p.label())?;
                }
                let t = Instant::now();
                p.detach(i, &ns)?;
                let d = ms(t.elapsed());
                p.cleanup(i, &ns)?;
                Ok((a, d))
            };
            match step() {
                Ok((a, d)) => {
                    smp.attach.push(a);
                    smp.detach.push(d);
                }
                Err(e) => {
                    eprintln!("compare: {} failed at iteration {i}: {e}", p.label());
                    smp.failed = Some(e);
                }
            }
        }
        if i % 50 == 25 {
            load_during.push(loadavg());
        }
    }
    let elapsed = started.elapsed();

    // What each tool left in its host namespace's firewall.
    println!("\nnftables in each lab host namespace after the run:");
    for p in &peers {
        let rules = nft_ruleset(p.host());
        let tables: Vec<&str> = rules.lines().filter(|l| l.starts_with("table")).collect();
        println!(
            "  {:<16} {} lines; {}",
            p.label(),
            rules.lines().count(),
            if tables.is_empty() {
                "no tables".to_owned()
            } else {
                tables.join(", ").replace(" {", "")
            }
        );
        if verbose {
            println!("{rules}");
        }
    }

    // The table.
    let w = samples
        .first()
        .filter(|_| peers[0].label() == "wharf")
        .map(|s| (pct(&sorted(&s.attach), 0.5), pct(&sorted(&s.detach), 0.5)));
    println!(
        "\nattach/detach of a namespace to a bridge, {iters} iterations each, ms \
         (round-robin over the tools, {:.0} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "\n| tool | attach median | attach p90 | detach median | detach p90 | attach vs wharf | detach vs wharf |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (p, smp) in peers.iter().zip(&samples) {
        let (a, d) = (sorted(&smp.attach), sorted(&smp.detach));
        let ratio = |x: f64, wx: f64| {
            if p.label() == "wharf" {
                "1".to_owned()
            } else {
                format!("{:.1}x", x / wx)
            }
        };
        let (ra, rd) = w
            .map(|(wa, wd)| (ratio(pct(&a, 0.5), wa), ratio(pct(&d, 0.5), wd)))
            .unwrap_or_default();
        println!(
            "| {}{} | {:.2} | {:.2} | {:.2} | {:.2} | {ra} | {rd} |",
            p.label(),
            if smp.failed.is_some() {
                " (FAILED)"
            } else {
                ""
            },
            pct(&a, 0.5),
            pct(&a, 0.9),
            pct(&d, 0.5),
            pct(&d, 0.9),
        );
    }
    if let Some((wa, wd)) = w {
        println!(
            "| Docker 20.10 (earlier, not measured in this run) | {:.0} | | {:.0} | | {:.1}x | {:.1}x |",
            DOCKER_REFERENCE.0,
            DOCKER_REFERENCE.1,
            DOCKER_REFERENCE.0 / wa,
            DOCKER_REFERENCE.1 / wd
        );
    }
    println!(
        "\nlaunching an empty child in a namespace: {setns_launch:.2} ms with setns+exec (how \
         the peers are run), {ipnetns_launch:.2} ms with `ip netns exec`"
    );
    println!(
        "load average: before {load_before}; during {}; after {}",
        load_during.join(" | "),
        loadavg()
    );

    if svg_path != "-" {
        let series = |f: fn(&Samples) -> &Vec<f64>| -> Vec<(String, Vec<f64>)> {
            peers
                .iter()
                .zip(&samples)
                .filter(|(_, s)| !f(s).is_empty())
                .map(|(p, s)| (p.label().to_owned(), f(s).clone()))
                .collect()
        };
        let svg = chart::svg(
            &format!(
                "Attach / detach of a container namespace to a bridge ({iters} runs each, same machine)"
            ),
            &[
                ("attach", series(|s| &s.attach)),
                ("detach", series(|s| &s.detach)),
            ],
        );
        match std::fs::write(&svg_path, svg) {
            Ok(()) => println!("chart: {svg_path}"),
            Err(e) => println!("chart: writing {svg_path}: {e}"),
        }
    }

    drop(peers);
    drop(lab);
    if root_fingerprint() == fingerprint {
        println!("root namespace: links, routes and nftables unchanged");
    } else {
        println!("root namespace: CHANGED during the run (links, routes or nftables)");
        std::process::exit(1);
    }
}

mod chart {
    //! A hand-written SVG: one panel per measurement, one row per tool, log-scale time axis;
    //! every sample as a dot, the box from p25 to p75, whiskers p10..p90, the median as a bar.

    use std::fmt::Write as _;

    const ROW: f64 = 34.0;
    const LEFT: f64 = 150.0;
    const WIDTH: f64 = 900.0;
    const PLOT_W: f64 = WIDTH - LEFT - 30.0;
    const COLORS: [&str; 6] = [
        "#d9480f", "#1971c2", "#2f9e44", "#7048e8", "#868e96", "#e8590c",
    ];

    fn nice_ticks(lo: f64, hi: f64) -> Vec<f64> {
        let mut ticks = Vec::new();
        let mut decade = 10f64.powf(lo.log10().floor());
        while decade <= hi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                let t = decade * m;
                if t >= lo * 0.9999 && t <= hi * 1.0001 {
                    ticks.push(t);
                }
            }
            decade *= 10.0;
        }
        ticks
    }

    /// One row of a panel: a tool and its samples (ms).
    pub type Series = Vec<(String, Vec<f64>)>;

    pub fn svg(title: &str, panels: &[(&str, Series)]) -> String {
        let all = panels
            .iter()
            .flat_map(|(_, s)| s.iter().flat_map(|(_, v)| v.iter().copied()))
            .filter(|v| *v > 0.0);
        let (min, max) = all.fold((f64::MAX, 0f64), |(a, b), v| (a.min(v), b.max(v)));
        let (min, max) = if max <= 0.0 { (0.1, 100.0) } else { (min, max) };
        let lo = 10f64.powf(min.log10().floor());
        let hi = {
            let d = 10f64.powf(max.log10().floor());
            [1.0, 2.0, 5.0, 10.0]
                .iter()
                .map(|m| d * m)
                .find(|v| *v >= max)
                .unwrap_or(d * 10.0)
        };
        let x =
            |v: f64| LEFT + (v.max(lo).log10() - lo.log10()) / (hi.log10() - lo.log10()) * PLOT_W;

        let mut body = String::new();
        let mut y = 50.0;
        for (name, series) in panels {
            let top = y;
            let _ = writeln!(
                body,
                r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{name} (ms, log scale)</text>"#,
                y + 4.0
            );
            y += 14.0;
            let height = ROW * series.len() as f64;
            for t in nice_ticks(lo, hi) {
                let _ = writeln!(
                    body,
                    r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="#dee2e6"/><text x="{0:.1}" y="{3:.1}" font-size="11" text-anchor="middle" fill="#495057">{4}</text>"##,
                    x(t),
                    y,
                    y + height,
                    y + height + 14.0,
                    if t < 1.0 {
                        format!("{t}")
                    } else {
                        format!("{t:.0}")
                    }
                );
            }
            for (row, (label, values)) in series.iter().enumerate() {
                let color = COLORS[row % COLORS.len()];
                let cy = y + ROW * row as f64 + ROW / 2.0;
                let mut v = values.clone();
                v.sort_by(f64::total_cmp);
                let p = |q: f64| super::pct(&v, q);
                let _ = writeln!(
                    body,
                    r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{label}</text>"#,
                    LEFT - 8.0,
                    cy + 4.0
                );
                // Samples, spread vertically by a deterministic jitter.
                for (k, s) in values.iter().enumerate() {
                    let jitter = ((k * 7919) % 17) as f64 / 16.0 - 0.5;
                    let _ = write!(
                        body,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="1.6" fill="{color}" fill-opacity="0.35"/>"#,
                        x(*s),
                        cy + jitter * (ROW * 0.6)
                    );
                }
                body.push('\n');
                let _ = writeln!(
                    body,
                    r#"<line x1="{:.1}" x2="{:.1}" y1="{cy:.1}" y2="{cy:.1}" stroke="{color}" stroke-width="1.2"/><rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="{color}" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" font-size="11" fill="{color}">{:.1}</text>"#,
                    x(p(0.1)),
                    x(p(0.9)),
                    x(p(0.25)),
                    cy - ROW * 0.3,
                    (x(p(0.75)) - x(p(0.25))).max(1.0),
                    ROW * 0.6,
                    x(p(0.9)) + 6.0,
                    cy + 4.0,
                    p(0.5)
                );
                // Median bar drawn over the box.
                let _ = writeln!(
                    body,
                    r#"<line x1="{0:.1}" x2="{0:.1}" y1="{1:.1}" y2="{2:.1}" stroke="{color}" stroke-width="3"/>"#,
                    x(p(0.5)),
                    cy - ROW * 0.3,
                    cy + ROW * 0.3
                );
            }
            let _ = writeln!(
                body,
                r##"<rect x="{LEFT}" y="{:.1}" width="{PLOT_W}" height="{height:.1}" fill="none" stroke="#adb5bd"/>"##,
                y
            );
            y += height + 40.0;
            let _ = top;
        }
        let total_h = y;
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{total_h:.0}" viewBox="0 0 {WIDTH} {total_h:.0}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="24" font-size="15" font-weight="bold">{title}</text>
<text x="{LEFT}" y="40" font-size="11" fill="#495057">dots: every sample; box: p25-p75; whiskers: p10-p90; thick bar and number: median (ms)</text>
{body}</svg>
"##
        )
    }
}
