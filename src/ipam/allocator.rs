//! [`SubnetAllocator`]: the in-memory address allocator of one subnet (no persistence, no locks).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::Family;
use super::bitmap::AddressSet;
use super::net::{contains_net, from_u128, span, to_u128};

/// The reservation reason of a subnet's network address.
pub const NETWORK_ADDRESS: &str = "network address";
/// The reservation reason of an IPv4 subnet's broadcast address.
pub const BROADCAST_ADDRESS: &str = "broadcast address";

/// How the next free address is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AllocationMode {
    /// The lowest free address (local networks, like Docker).
    #[default]
    Lowest,
    /// The next free address after the last one handed out, wrapping around (cluster networks):
    /// a released address is not reused at once.
    Serial,
}

/// Why a [`SubnetAllocator`] call failed (the IPAM layer adds the network's name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The address is not in the subnet.
    #[error("address is outside the subnet")]
    OutsideSubnet,
    /// The address is in the subnet but outside the allocatable range.
    #[error("address is outside the allocatable range")]
    OutsideRange,
    /// The address is taken.
    #[error("address is in use")]
    InUse,
    /// The address is reserved; the string says by what.
    #[error("address is reserved ({0})")]
    Reserved(String),
    /// The address is not allocated.
    #[error("address is not allocated")]
    NotAllocated,
    /// No free address is left in the range.
    #[error("no free address left")]
    Exhausted,
}

/// The address allocator of one subnet: which addresses are reserved (network, broadcast,
/// gateway, auxiliary), which are allocated, and which is next.
///
/// Every operation is O(log n) over an [`AddressSet`]; nothing scans the subnet.
///
/// ```
/// use wharf::ipam::allocator::{AllocationMode, SubnetAllocator};
/// let mut a = SubnetAllocator::new("10.1.0.0/24".parse().unwrap(), None, AllocationMode::Lowest).unwrap();
/// a.reserve("10.1.0.1".parse().unwrap(), "gateway").unwrap();
/// assert_eq!(a.allocate().unwrap().to_string(), "10.1.0.2");
/// a.allocate_static("10.1.0.200".parse().unwrap()).unwrap();
/// a.release("10.1.0.2".parse().unwrap()).unwrap();
/// assert_eq!(a.allocate().unwrap().to_string(), "10.1.0.2");
/// assert_eq!(a.allocated(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct SubnetAllocator {
    subnet: IpNetwork,
    range: IpNetwork,
    family: Family,
    /// Integer value of the subnet's first address; offsets are relative to it.
    base: u128,
    /// Offset of the subnet's last address.
    last: u128,
    /// Allocatable window, as offsets (inclusive).
    range_lo: u128,
    range_hi: u128,
    /// Reserved offsets and what reserves them.
    reserved: BTreeMap<u128, String>,
    /// Reserved and allocated offsets.
    taken: AddressSet,
    mode: AllocationMode,
    /// Where the next serial search starts.
    cursor: u128,
}

impl SubnetAllocator {
    /// An allocator for `subnet`, handing out addresses only inside `ip_range` (default: the
    /// whole subnet). The network address (and for IPv4 the broadcast address) is reserved when
    /// the subnet has more than two addresses.
    ///
    /// Fails with [`AllocError::OutsideSubnet`] if `ip_range` is not inside `subnet`.
    pub fn new(
        subnet: IpNetwork,
        ip_range: Option<IpNetwork>,
        mode: AllocationMode,
    ) -> Result<Self, AllocError> {
        let range = ip_range.unwrap_or(subnet);
        if !contains_net(subnet, range) {
            return Err(AllocError::OutsideSubnet);
        }
        let family = Family::of_net(subnet);
        let (base, top) = span(subnet);
        let (rlo, rhi) = span(range);
        let mut a = SubnetAllocator {
            subnet,
            range,
            family,
            base,
            last: top - base,
            range_lo: rlo - base,
            range_hi: rhi - base,
            reserved: BTreeMap::new(),
            taken: AddressSet::new(),
            mode,
            cursor: rlo - base,
        };
        if a.last >= 3 {
            a.reserved.insert(0, NETWORK_ADDRESS.to_owned());
            a.taken.insert(0);
            if family == Family::V4 {
                a.reserved.insert(a.last, BROADCAST_ADDRESS.to_owned());
                a.taken.insert(a.last);
            }
        }
        Ok(a)
    }

    /// The subnet.
    pub fn subnet(&self) -> IpNetwork {
        self.subnet
    }

    /// The allocatable range (the ip-range, or the subnet).
    pub fn range(&self) -> IpNetwork {
        self.range
    }

    /// The allocation mode.
    pub fn mode(&self) -> AllocationMode {
        self.mode
    }

    fn offset(&self, ip: IpAddr) -> Result<u128, AllocError> {
        if Family::of(ip) != self.family || !self.subnet.contains(ip) {
            return Err(AllocError::OutsideSubnet);
        }
        Ok(to_u128(ip) - self.base)
    }

    fn addr(&self, offset: u128) -> IpAddr {
        from_u128(self.family, self.base + offset)
    }

    /// What reserves `ip`, if anything.
    pub fn reservation(&self, ip: IpAddr) -> Option<&str> {
        let off = self.offset(ip).ok()?;
        self.reserved.get(&off).map(String::as_str)
    }

    /// The first address of the subnet that is neither reserved nor taken (the default gateway).
    pub fn first_usable(&self) -> Option<IpAddr> {
        self.taken.first_free(0, self.last).map(|o| self.addr(o))
    }

    /// Reserves `ip` (gateway, auxiliary address): never handed out, never released. It may lie
    /// outside the allocatable range but must be inside the subnet.
    pub fn reserve(&mut self, ip: IpAddr, reason: &str) -> Result<(), AllocError> {
        let off = self.offset(ip)?;
        if let Some(by) = self.reserved.get(&off) {
            return Err(AllocError::Reserved(by.clone()));
        }
        if !self.taken.insert(off) {
            return Err(AllocError::InUse);
        }
        self.reserved.insert(off, reason.to_owned());
        Ok(())
    }

    /// Hands out the next free address of the range.
    pub fn allocate(&mut self) -> Result<IpAddr, AllocError> {
        let found = match self.mode {
            AllocationMode::Lowest => self.taken.first_free(self.range_lo, self.range_hi),
            AllocationMode::Serial => {
                self.taken
                    .next_free(self.cursor, self.range_lo, self.range_hi)
            }
        };
        let off = found.ok_or(AllocError::Exhausted)?;
        self.taken.insert(off);
        self.advance_cursor(off);
        Ok(self.addr(off))
    }

    fn advance_cursor(&mut self, off: u128) {
        self.cursor = if off >= self.range_hi {
            self.range_lo
        } else {
            off + 1
        };
    }

    /// Hands out exactly `ip` if it is free and inside the range.
    pub fn allocate_static(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let off = self.offset(ip)?;
        if let Some(by) = self.reserved.get(&off) {
            return Err(AllocError::Reserved(by.clone()));
        }
        if off < self.range_lo || off > self.range_hi {
            return Err(AllocError::OutsideRange);
        }
        if !self.taken.insert(off) {
            return Err(AllocError::InUse);
        }
        Ok(())
    }

    /// Marks `ip` allocated while rebuilding from a store: like
    /// [`allocate_static`](Self::allocate_static) but it may lie outside the range (the range of
    /// a stored network never changes, so this only happens with a hand-edited store) and it
    /// moves the serial cursor past the highest address seen. Returns false if it was taken.
    pub fn restore(&mut self, ip: IpAddr) -> Result<bool, AllocError> {
        let off = self.offset(ip)?;
        if self.reserved.contains_key(&off) {
            return Ok(false);
        }
        let fresh = self.taken.insert(off);
        if self.mode == AllocationMode::Serial && off >= self.cursor {
            self.advance_cursor(off);
        }
        Ok(fresh)
    }

    /// Makes `ip` free again.
    pub fn release(&mut self, ip: IpAddr) -> Result<(), AllocError> {
        let off = self.offset(ip)?;
        if let Some(by) = self.reserved.get(&off) {
            return Err(AllocError::Reserved(by.clone()));
        }
        if !self.taken.remove(off) {
            return Err(AllocError::NotAllocated);
        }
        Ok(())
    }

    /// True if `ip` is allocated (not merely reserved).
    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        self.offset(ip)
            .is_ok_and(|o| !self.reserved.contains_key(&o) && self.taken.contains(o))
    }

    /// Number of allocated (not reserved) addresses.
    pub fn allocated(&self) -> u128 {
        self.taken.len() - self.reserved.len() as u128
    }

    /// The allocated (not reserved) addresses, in order.
    pub fn allocated_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.taken
            .iter()
            .filter(|o| !self.reserved.contains_key(o))
            .map(|o| self.addr(o))
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.taken.heap_bytes() + self.reserved.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn serial_mode_does_not_reuse_at_once() {
        let mut a =
            SubnetAllocator::new("10.0.0.0/29".parse().unwrap(), None, AllocationMode::Serial)
                .unwrap();
        let first = a.allocate().unwrap();
        assert_eq!(first, ip("10.0.0.1"));
        a.release(first).unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.2"));
        for _ in 0..4 {
            a.allocate().unwrap();
        }
        // .3-.6 taken, .7 broadcast: wraps to .1
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.1"));
        assert_eq!(a.allocate(), Err(AllocError::Exhausted));
    }

    #[test]
    fn point_to_point_subnets_reserve_nothing() {
        let mut a =
            SubnetAllocator::new("10.0.0.0/31".parse().unwrap(), None, AllocationMode::Lowest)
                .unwrap();
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.0"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.1"));
    }

    #[test]
    fn ipv6_has_no_broadcast() {
        let mut a =
            SubnetAllocator::new("fd00::/126".parse().unwrap(), None, AllocationMode::Lowest)
                .unwrap();
        for want in ["fd00::1", "fd00::2", "fd00::3"] {
            assert_eq!(a.allocate().unwrap(), ip(want));
        }
        assert_eq!(a.allocate(), Err(AllocError::Exhausted));
    }

    #[test]
    fn range_and_reservations() {
        let mut a = SubnetAllocator::new(
            "10.0.0.0/24".parse().unwrap(),
            Some("10.0.0.8/30".parse().unwrap()),
            AllocationMode::Lowest,
        )
        .unwrap();
        a.reserve(ip("10.0.0.1"), "gateway").unwrap();
        a.reserve(ip("10.0.0.9"), "aux printer").unwrap();
        assert_eq!(
            a.allocate_static(ip("10.0.0.9")),
            Err(AllocError::Reserved("aux printer".into()))
        );
        assert_eq!(
            a.allocate_static(ip("10.0.0.20")),
            Err(AllocError::OutsideRange)
        );
        assert_eq!(
            a.allocate_static(ip("10.0.1.20")),
            Err(AllocError::OutsideSubnet)
        );
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.8"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.10"));
        assert_eq!(a.allocate().unwrap(), ip("10.0.0.11"));
        assert_eq!(a.allocate(), Err(AllocError::Exhausted));
        assert_eq!(
            a.release(ip("10.0.0.1")),
            Err(AllocError::Reserved("gateway".into()))
        );
        assert_eq!(a.release(ip("10.0.0.12")), Err(AllocError::NotAllocated));
        assert_eq!(a.allocated(), 3);
    }
}
