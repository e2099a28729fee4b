//! Published ports across the host: a host port (on an address, or on every address) belongs
//! to one endpoint at a time, whatever its network. The controller checks this before anything
//! is created, because it alone knows every endpoint's ports.

use std::net::IpAddr;

use crate::driver::{DriverOptions, PortMapping};

/// The host address a mapping is published on: its own, else the network's default
/// (`host_binding_ip`), else every address (`None`).
pub(crate) fn effective_host_ip(p: &PortMapping, net: &DriverOptions) -> Option<IpAddr> {
    match net {
        DriverOptions::Bridge(o) => p.host_ip.or(o.host_binding_ip),
        _ => p.host_ip,
    }
}

/// Checks one endpoint's mappings on their own: ports and counts start at 1, ranges end by
/// 65535, and no two mappings of the request share a host port.
pub(crate) fn validate(ports: &[PortMapping]) -> Result<(), String> {
    for (i, p) in ports.iter().enumerate() {
        if p.count == 0 || p.host_port == 0 || p.container_port == 0 {
            return Err(format!(
                "{} {}:{}: ports and counts start at 1",
                p.protocol, p.host_port, p.container_port
            ));
        }
        let end = |first: u16| u32::from(first) + u32::from(p.count) - 1;
        if end(p.host_port) > 65535 || end(p.container_port) > 65535 {
            return Err(format!(
                "{} {}:{} (count {}): the range runs past port 65535",
                p.protocol, p.host_port, p.container_port, p.count
            ));
        }
        if let Some(q) = ports[..i]
            .iter()
            .find(|q| clash(q, q.host_ip, p, p.host_ip))
        {
            return Err(format!(
                "{} host port {} is asked for twice ({}:{} and {}:{})",
                p.protocol,
                p.host_port,
                q.host_port,
                q.container_port,
                p.host_port,
                p.container_port
            ));
        }
    }
    Ok(())
}

/// Whether two mappings (with their effective host addresses) want a common host port.
pub(crate) fn clash(
    a: &PortMapping,
    a_ip: Option<IpAddr>,
    b: &PortMapping,
    b_ip: Option<IpAddr>,
) -> bool {
    let overlap = |x: &PortMapping, y: &PortMapping| {
        let (x0, x1) = (
            u32::from(x.host_port),
            u32::from(x.host_port) + u32::from(x.count),
        );
        let (y0, y1) = (
            u32::from(y.host_port),
            u32::from(y.host_port) + u32::from(y.count),
        );
        x0 < y1 && y0 < x1
    };
    a.protocol == b.protocol && overlap(a, b) && addresses_clash(a_ip, b_ip)
}

/// `None` is every address; `0.0.0.0` every IPv4 address; `::` every IPv6 address.
fn addresses_clash(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => {
            a.is_ipv4() == b.is_ipv4() && (a == b || a.is_unspecified() || b.is_unspecified())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(p: PortMapping, ip: &str) -> PortMapping {
        PortMapping {
            host_ip: Some(ip.parse().unwrap()),
            ..p
        }
    }

    #[test]
    fn clashes() {
        let a = PortMapping::tcp(8080, 80);
        let mut range = PortMapping::tcp(8070, 80);
        range.count = 11;
        let cases = [
            (a, PortMapping::tcp(8080, 81), true),
            (a, PortMapping::udp(8080, 80), false),
            (a, PortMapping::tcp(8081, 80), false),
            (a, range, true),
            (PortMapping::tcp(8081, 80), range, false),
            (a, on(a, "192.0.2.1"), true),
            (on(a, "192.0.2.1"), on(a, "192.0.2.2"), false),
            (on(a, "192.0.2.1"), on(a, "0.0.0.0"), true),
            (on(a, "192.0.2.1"), on(a, "::"), false),
            (on(a, "2001:db8::1"), on(a, "::"), true),
        ];
        for (x, y, want) in cases {
            assert_eq!(clash(&x, x.host_ip, &y, y.host_ip), want, "{x:?} vs {y:?}");
            assert_eq!(clash(&y, y.host_ip, &x, x.host_ip), want, "{y:?} vs {x:?}");
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&[PortMapping::tcp(8080, 80), PortMapping::udp(8080, 80)]).is_ok());
        assert!(validate(&[PortMapping::tcp(8080, 80), PortMapping::tcp(8080, 81)]).is_err());
        assert!(validate(&[PortMapping::tcp(0, 80)]).is_err());
        let mut r = PortMapping::tcp(65530, 80);
        r.count = 7;
        assert!(validate(&[r]).is_err());
    }
}
