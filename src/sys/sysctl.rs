//! Per-namespace sysctls: `net.*` keys under `/proc/sys/net`, read and written inside a network
//! namespace.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens the file, so each call
//! runs on a short-lived dedicated thread that has entered the namespace ([`NetNs::run`]). No
//! `sysctl` process is spawned and no other thread changes namespace.
//!
//! Keys are written with `/` (`net/ipv4/ip_forward`, `net/ipv4/conf/eth0.100/route_localnet`)
//! or, when they contain no `/`, with dots (`net.ipv4.ip_forward`). Only `net/` keys are
//! accepted: the others are not per network namespace, and writing them would change the host.

use std::path::PathBuf;

use super::error::{SysError, SysResult};
use super::netns::NetNs;

/// The path of `key` under `/proc/sys`, after checking that it is a `net/` key that cannot
/// escape that directory.
///
/// ```
/// use wharf::sys::sysctl::key_path;
/// assert_eq!(key_path("net.ipv4.ip_forward").unwrap().to_str(), Some("/proc/sys/net/ipv4/ip_forward"));
/// assert!(key_path("kernel/hostname").is_err());
/// assert!(key_path("net/../kernel/hostname").is_err());
/// ```
pub fn key_path(key: &str) -> SysResult<PathBuf> {
    let bad = |reason| {
        Err(SysError::InvalidName {
            what: "naming a sysctl".into(),
            name: key.to_owned(),
            reason,
        })
    };
    let normal = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let parts: Vec<&str> = normal.split('/').collect();
    if parts.first() != Some(&"net") || parts.len() < 2 {
        return bad("not a per-namespace net/ key");
    }
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return bad("empty, '.' or '..' component");
    }
    Ok(PathBuf::from("/proc/sys").join(normal))
}

/// Reads `key` inside `ns` (trailing newline removed).
///
/// ```no_run
/// # async fn demo() -> wharf::sys::SysResult<()> {
/// use wharf::sys::{NetNs, sysctl};
/// let ns = NetNs::open("c1")?;
/// let v = sysctl::read(&ns, "net/ipv4/ip_forward").await?;
/// # Ok(()) }
/// ```
pub async fn read(ns: &NetNs, key: &str) -> SysResult<String> {
    let path = key_path(key)?;
    let what = format!("reading sysctl {key} in {ns}");
    let out = ns.run(move || std::fs::read_to_string(path)).await?;
    out.map(|s| s.trim_end_matches('\n').to_owned())
        .map_err(|e| SysError::from_io(what, e))
}

/// Writes `value` to `key` inside `ns`.
///
/// ```no_run
/// # async fn demo() -> wharf::sys::SysResult<()> {
/// use wharf::sys::{NetNs, sysctl};
/// let ns = NetNs::open("lab-host")?;
/// sysctl::write(&ns, "net/ipv4/ip_forward", "1").await?;
/// # Ok(()) }
/// ```
pub async fn write(ns: &NetNs, key: &str, value: &str) -> SysResult<()> {
    write_many(ns, &[(key, value)]).await
}

/// Writes several keys inside `ns` on one dedicated thread, in order; stops at the first
/// failure, which names its key.
pub async fn write_many(ns: &NetNs, pairs: &[(&str, &str)]) -> SysResult<()> {
    let mut jobs = Vec::with_capacity(pairs.len());
    for (key, value) in pairs {
        jobs.push((key_path(key)?, (*key).to_owned(), (*value).to_owned()));
    }
    let place = ns.to_string();
    ns.run(move || {
        for (path, key, value) in jobs {
            std::fs::write(&path, value.as_bytes()).map_err(|e| {
                SysError::from_io(format!("writing sysctl {key}={value} in {place}"), e)
            })?;
        }
        Ok(())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysErrorKind;

    #[test]
    fn keys() {
        assert_eq!(
            key_path("net/ipv4/conf/eth0.100/route_localnet").unwrap(),
            PathBuf::from("/proc/sys/net/ipv4/conf/eth0.100/route_localnet")
        );
        assert_eq!(
            key_path("net.ipv6.conf.all.disable_ipv6").unwrap(),
            PathBuf::from("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        );
        for bad in [
            "",
            "net",
            "net/",
            "vm/swappiness",
            "net/ipv4/../../kernel/x",
            "/net/ipv4",
        ] {
            assert_eq!(
                key_path(bad).unwrap_err().kind(),
                SysErrorKind::InvalidName,
                "{bad:?}"
            );
        }
    }
}
