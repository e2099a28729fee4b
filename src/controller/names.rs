//! Names and ids: what is accepted, and how new ones are made.

use super::error::{Error, ObjectKind, Result};
use crate::sys::rtnl::MacAddr;

/// The longest network or sandbox name.
pub const MAX_NAME_LEN: usize = 64;

fn check_name(kind: ObjectKind, name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 64 characters");
    }
    let mut chars = name.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return bad("must start with a letter or digit");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return bad("only letters, digits, '_', '.' and '-' are allowed");
    }
    Ok(())
}

/// A network name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
pub fn validate_network_name(name: &str) -> Result<()> {
    check_name(ObjectKind::Network, name)
}

/// A sandbox (container) name: the same rule as Docker's container names. It can never escape
/// a directory: no `/`, no leading `.`.
pub fn validate_sandbox_name(name: &str) -> Result<()> {
    check_name(ObjectKind::Sandbox, name)
}

/// A hostname: DNS labels of letters, digits and `-`, at most 253 characters.
pub fn validate_hostname(name: &str) -> Result<()> {
    validate_dns_name(ObjectKind::Sandbox, name)
}

/// A DNS alias: a DNS name (labels of letters, digits, `-` and `_`).
pub fn validate_alias(name: &str) -> Result<()> {
    validate_dns_name(ObjectKind::Alias, name)
}

fn validate_dns_name(kind: ObjectKind, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            kind,
            name: name.to_owned(),
            reason: "not a DNS name (labels of letters, digits, '-', '_'; at most 253 characters)"
                .into(),
        })
    }
}

/// A new 64-hex-character id.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random locally administered unicast MAC, for endpoints without an IPv4 address.
pub fn random_mac() -> MacAddr {
    let mut b = [0u8; 6];
    fill_random(&mut b);
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

fn fill_random(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        // The kernel's random source failed (practically impossible); fall back to time and
        // a counter, which still gives unique ids within this process.
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (seed.rotate_left((i as u32 * 8) % 64) & 0xff) as u8;
        }
    }
}

/// The lowest `ethN` not in `taken`.
pub fn next_ifname<'a>(taken: impl Iterator<Item = &'a str>) -> String {
    let used: std::collections::HashSet<&str> = taken.collect();
    (0..)
        .map(|n| format!("eth{n}"))
        .find(|n| !used.contains(n.as_str()))
        .unwrap_or_else(|| "eth0".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_or_break_are_refused() {
        for bad in [
            "",
            "../x",
            "/",
            "a/b",
            ".hidden",
            "a\0b",
            "a b",
            "-x",
            &"x".repeat(65),
        ] {
            assert!(validate_network_name(bad).is_err(), "{bad:?}");
            assert!(validate_sandbox_name(bad).is_err(), "{bad:?}");
        }
        for good in ["alpine-net", "alpine1", "my_net.2", &"x".repeat(64)] {
            assert!(validate_network_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn aliases_are_dns_names() {
        assert!(validate_alias("web").is_ok());
        assert!(validate_alias("db.backend").is_ok());
        for bad in ["", "a..b", "-a", "a b", &"x".repeat(64)] {
            assert!(validate_alias(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ids_are_64_hex_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, new_id());
    }

    #[test]
    fn interfaces_are_numbered_from_the_lowest_free() {
        assert_eq!(next_ifname([].into_iter()), "eth0");
        assert_eq!(next_ifname(["eth0", "eth2"].into_iter()), "eth1");
    }

    #[test]
    fn random_macs_are_local_unicast() {
        let m = random_mac();
        assert!(m.is_locally_administered());
        assert!(!m.is_multicast());
    }
}
