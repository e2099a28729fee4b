//! Address pools and how subnets are carved from them.
//!
//! A pool is a base prefix cut into subnets of one size, like an entry of Docker's
//! `default-address-pools` (`{"base": "172.17.0.0/16", "size": 16}`). A new network takes the
//! first subnet, in pool order, that overlaps no existing network and no prefix the caller asks
//! to avoid (the host's routes). The search jumps over each occupied prefix at once, so it costs
//! O(occupied prefixes), not O(candidate subnets).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::net::{from_u128, has_host_bits, span};
use super::{Family, IpamError};

/// One address pool: `base` cut into subnets of prefix length `size`.
///
/// ```
/// use wharf::ipam::PoolSpec;
/// let pool: PoolSpec = serde_json::from_str(r#"{"base":"10.10.0.0/16","size":24}"#).unwrap();
/// assert_eq!(pool.subnets().next().unwrap().to_string(), "10.10.0.0/24");
/// assert_eq!(pool.subnets().count(), 256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// The prefix the subnets are cut from.
    pub base: IpNetwork,
    /// The prefix length of each subnet.
    pub size: u8,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8, size: u8) -> PoolSpec {
    let base = match Ipv4Network::new_checked(Ipv4Addr::new(a, b, c, d), prefix) {
        Some(net) => net,
        None => panic!("invalid built-in pool"),
    };
    PoolSpec {
        base: IpNetwork::V4(base),
        size,
    }
}

/// Docker's local default pools, in order: 172.17-19.0.0/16, 172.20.0.0/14, 172.24.0.0/14,
/// 172.28.0.0/14 (all cut into /16s), then 192.168.0.0/16 cut into /20s. The default `bridge`
/// network takes the first subnet.
pub const LOCAL_DEFAULT_POOLS: [PoolSpec; 7] = [
    v4(172, 17, 0, 0, 16, 16),
    v4(172, 18, 0, 0, 16, 16),
    v4(172, 19, 0, 0, 16, 16),
    v4(172, 20, 0, 0, 14, 16),
    v4(172, 24, 0, 0, 14, 16),
    v4(172, 28, 0, 0, 14, 16),
    v4(192, 168, 0, 0, 16, 20),
];

/// The default pool of cluster (overlay) networks: 10.0.0.0/8 cut into /24s.
pub const CLUSTER_DEFAULT_POOLS: [PoolSpec; 1] = [v4(10, 0, 0, 0, 8, 24)];

/// The default IPv6 pool of a host: a unique local /48 (RFC 4193) whose 40-bit global ID is
/// derived from a stable host identifier (e.g. the bytes of `/etc/machine-id`), cut into /64s.
///
/// The same identifier always gives the same /48; different hosts almost surely differ.
///
/// ```
/// use wharf::ipam::ula_pool;
/// let pool = ula_pool(b"4c4c4544-0042-3510-8052-b4c04f4e4d32");
/// assert_eq!(pool.size, 64);
/// assert_eq!(pool.base.prefix(), 48);
/// assert!(pool.base.to_string().starts_with("fd"));
/// assert_eq!(pool, ula_pool(b"4c4c4544-0042-3510-8052-b4c04f4e4d32"));
/// ```
pub fn ula_pool(host_id: &[u8]) -> PoolSpec {
    let digest = Sha256::new()
        .chain_update(b"wharf ULA global ID v1\0")
        .chain_update(host_id)
        .finalize();
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    bytes[1..6].copy_from_slice(&digest[..5]);
    let base = Ipv6Network::new_checked(Ipv6Addr::from(bytes), 48)
        .map(IpNetwork::V6)
        // /48 is always a valid IPv6 prefix length; this arm is never taken.
        .unwrap_or(IpNetwork::V6(Ipv6Network::from(Ipv6Addr::from(bytes))));
    PoolSpec { base, size: 64 }
}

impl PoolSpec {
    /// A pool, validated: `base` without host bits, `base.prefix() <= size <= 32/128`, and
    /// `size` not 0.
    pub fn new(base: IpNetwork, size: u8) -> Result<Self, IpamError> {
        let spec = PoolSpec { base, size };
        spec.validate()?;
        Ok(spec)
    }

    /// Checks the invariants [`PoolSpec::new`] promises (deserialized pools skip `new`).
    pub fn validate(&self) -> Result<(), IpamError> {
        let bad = |reason| IpamError::InvalidPool {
            base: self.base,
            size: self.size,
            reason,
        };
        if has_host_bits(self.base) {
            return Err(bad("the base has host bits set"));
        }
        if self.size < self.base.prefix() {
            return Err(bad("the size is shorter than the base prefix"));
        }
        if self.size > self.family().bits() {
            return Err(bad("the size is longer than an address"));
        }
        if self.size == 0 {
            return Err(bad("the size is 0"));
        }
        Ok(())
    }

    /// The family of the pool.
    pub fn family(&self) -> Family {
        Family::of_net(self.base)
    }

    /// Addresses per subnet, as an integer stride (`size` is at least 1, so it fits).
    fn stride(&self) -> u128 {
        1u128 << u32::from(self.family().bits() - self.size)
    }

    /// The subnet that starts at integer address `start` (aligned to the stride).
    fn subnet_at(&self, start: u128) -> Option<IpNetwork> {
        IpNetwork::new(from_u128(self.family(), start), self.size).ok()
    }

    /// Every subnet of the pool, in order.
    pub fn subnets(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        let (lo, hi) = span(self.base);
        let stride = self.stride();
        let mut next = Some(lo);
        std::iter::from_fn(move || {
            let start = next?;
            next = start.checked_add(stride).filter(|n| *n <= hi);
            self.subnet_at(start)
        })
    }
}

/// Sorted, merged integer intervals of occupied address space.
#[derive(Debug, Default, Clone)]
pub(crate) struct Occupied {
    spans: Vec<(u128, u128)>,
}

impl Occupied {
    /// Builds the set from prefixes (any family; only `family` is kept).
    pub(crate) fn new(family: Family, prefixes: impl IntoIterator<Item = IpNetwork>) -> Self {
        let mut spans: Vec<(u128, u128)> = prefixes
            .into_iter()
            .filter(|p| Family::of_net(*p) == family)
            .map(span)
            .collect();
        spans.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(spans.len());
        for (lo, hi) in spans {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Occupied { spans: merged }
    }

    /// The first occupied interval that meets `lo..=hi`.
    fn conflict(&self, lo: u128, hi: u128) -> Option<(u128, u128)> {
        let i = self.spans.partition_point(|s| s.1 < lo);
        self.spans.get(i).copied().filter(|s| s.0 <= hi)
    }
}

/// The first subnet of `pools` (in order, only those of `family`) that meets nothing in
/// `occupied`.
pub(crate) fn first_free_subnet(
    pools: &[PoolSpec],
    family: Family,
    occupied: &Occupied,
) -> Option<IpNetwork> {
    for pool in pools.iter().filter(|p| p.family() == family) {
        let (plo, phi) = span(pool.base);
        let stride = pool.stride();
        let mut start = plo;
        while let Some(end) = start.checked_add(stride - 1).filter(|e| *e <= phi) {
            match occupied.conflict(start, end) {
                None => {
                    if let Some(subnet) = pool.subnet_at(start) {
                        return Some(subnet);
                    }
                    break;
                }
                Some((_, taken_hi)) => {
                    // Jump to the first aligned start after the occupied interval.
                    let Some(next) = taken_hi
                        .checked_add(1)
                        .and_then(|n| n.checked_add(stride - 1))
                        .map(|n| n / stride * stride)
                    else {
                        break;
                    };
                    start = next;
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn default_pools_are_valid() {
        for p in LOCAL_DEFAULT_POOLS
            .iter()
            .chain(CLUSTER_DEFAULT_POOLS.iter())
        {
            p.validate().unwrap();
        }
    }

    #[test]
    fn carving_skips_occupied_and_jumps() {
        let pools = [PoolSpec::new(net("10.0.0.0/16"), 24).unwrap()];
        let occ = Occupied::new(
            Family::V4,
            [net("10.0.0.0/23"), net("10.0.2.128/25"), net("fd00::/8")],
        );
        assert_eq!(
            first_free_subnet(&pools, Family::V4, &occ),
            Some(net("10.0.3.0/24"))
        );
        let full = Occupied::new(Family::V4, [net("10.0.0.0/16")]);
        assert_eq!(first_free_subnet(&pools, Family::V4, &full), None);
        assert_eq!(first_free_subnet(&pools, Family::V6, &occ), None);
    }

    #[test]
    fn ula_differs_per_host() {
        assert_ne!(ula_pool(b"host-a"), ula_pool(b"host-b"));
        ula_pool(b"host-a").validate().unwrap();
    }

    #[test]
    fn invalid_pools_are_refused() {
        assert!(PoolSpec::new(net("10.0.0.0/16"), 8).is_err());
        assert!(PoolSpec::new(net("10.0.0.1/16"), 24).is_err());
        assert!(PoolSpec::new(net("10.0.0.0/16"), 33).is_err());
    }
}
