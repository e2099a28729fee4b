//! A macvlan network's parent interface in the host namespace: checking it, and creating or
//! deleting the 802.1Q sub-interface a parent written `name.VLAN` stands for.
//!
//! Everything here goes through [`LinkOps`], so unit tests can substitute `MockLinkOps` and see
//! exactly which requests wharf sends (this machine's kernel has no 802.1Q support, so the
//! integration tests can only show the kernel's refusal).

use crate::sys::SysError;
use crate::sys::rtnl::{Link, LinkKind, LinkOps, LinkSpec};

/// The index of the loopback device in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: u32 = 1;

/// Splits `eth0.10` into (`eth0`, 10): a parent name that stands for an 802.1Q sub-interface.
/// The id must be 1 to 4094 and the base name non-empty.
///
/// ```
/// use wharf::driver::macvlan::vlan_of;
/// assert_eq!(vlan_of("eth0.10"), Some(("eth0", 10)));
/// assert_eq!(vlan_of("bond0.4094"), Some(("bond0", 4094)));
/// assert_eq!(vlan_of("eth0"), None);
/// assert_eq!(vlan_of("eth0.0"), None);
/// assert_eq!(vlan_of("eth0.4095"), None);
/// assert_eq!(vlan_of(".10"), None);
/// assert_eq!(vlan_of("eth0.1a"), None);
/// ```
pub fn vlan_of(name: &str) -> Option<(&str, u16)> {
    let (base, id) = name.rsplit_once('.')?;
    if base.is_empty() || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u16 = id.parse().ok()?;
    (1..=4094).contains(&id).then_some((base, id))
}

/// What the host namespace has for a parent name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// The interface exists.
    Exists(Link),
    /// `name.VLAN` is missing but its base interface exists: wharf would create it.
    MissingVlan {
        /// The base interface.
        base: Link,
        /// The 802.1Q id.
        id: u16,
    },
}

impl Found {
    /// The interface that carries the traffic: the parent, or the base of a missing vlan.
    pub(super) fn carrier(&self) -> &Link {
        match self {
            Self::Exists(l) | Self::MissingVlan { base: l, .. } => l,
        }
    }
}

/// Why a parent cannot be used, or a kernel failure while looking.
#[derive(Debug)]
pub(super) enum Problem {
    /// The parent is unusable; the string says why.
    Invalid(String),
    /// Looking it up failed.
    Kernel(SysError),
}

/// Looks `name` up and checks that it can carry macvlans: it (or, for a missing `base.VLAN`,
/// its base) exists, is not the loopback, has an Ethernet address and is not enslaved to a
/// bridge or bond (the kernel gives each device one receive handler: a bridge port cannot be a
/// macvlan parent too). `mtu`, if given, must not exceed the parent's.
pub(super) async fn inspect(
    ops: &dyn LinkOps,
    name: &str,
    mtu: Option<u32>,
) -> Result<Found, Problem> {
    let found = match ops.get_link(name).await {
        Ok(link) => Found::Exists(link),
        Err(e) if e.is_not_found() => match vlan_of(name) {
            Some((base, id)) => match ops.get_link(base).await {
                Ok(base) => Found::MissingVlan { base, id },
                Err(e) if e.is_not_found() => {
                    return Err(Problem::Invalid(format!(
                        "does not exist in the host namespace, nor does {base:?}, of which it \
                         would be the 802.1Q sub-interface {id}"
                    )));
                }
                Err(e) => return Err(Problem::Kernel(e)),
            },
            None => {
                return Err(Problem::Invalid(
                    "does not exist in the host namespace".into(),
                ));
            }
        },
        Err(e) => return Err(Problem::Kernel(e)),
    };
    let link = found.carrier();
    let whose = if link.name == name {
        String::new()
    } else {
        format!("its base {:?} ", link.name)
    };
    if link.index == LOOPBACK_INDEX {
        return Err(Problem::Invalid(format!(
            "{whose}is the loopback device, which cannot carry macvlans"
        )));
    }
    if link.mac.is_none() {
        return Err(Problem::Invalid(format!(
            "{whose}has no Ethernet address, so it cannot carry macvlans"
        )));
    }
    if let Some(master) = link.master {
        return Err(Problem::Invalid(format!(
            "{whose}is enslaved to link #{master} (a bridge or bond port); use the master or \
             another interface as the parent"
        )));
    }
    if let Some(mtu) = mtu {
        if mtu > link.mtu {
            return Err(Problem::Invalid(format!(
                "mtu {mtu} exceeds {whose}mtu {}",
                link.mtu
            )));
        }
    }
    Ok(found)
}

/// Makes sure the 802.1Q sub-interface `name` (`base.VLAN`) exists and is up, creating it on
/// its base if it is missing. Returns whether it was created now (so a caller that fails later
/// knows whether to delete it).
pub(super) async fn ensure_vlan(ops: &dyn LinkOps, name: &str) -> Result<bool, SysError> {
    match ops.get_link(name).await {
        Ok(_) => return Ok(false),
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    let Some((base, id)) = vlan_of(name) else {
        return Err(SysError::NotFound {
            what: format!("looking up parent {name:?}"),
        });
    };
    let base = ops.get_link(base).await?;
    ops.add_link(LinkSpec::vlan(name, base.index, id).up())
        .await?;
    Ok(true)
}

/// Deletes the 802.1Q sub-interface `name` that wharf created, if it is still there and still
/// a vlan device. Succeeds when it is gone.
pub(super) async fn delete_vlan(ops: &dyn LinkOps, name: &str) -> Result<(), SysError> {
    let link = match ops.get_link(name).await {
        Ok(l) => l,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    };
    if link.kind != Some(LinkKind::Vlan) {
        tracing::warn!(parent = %name, kind = ?link.kind, "not deleting a parent that is no longer a vlan device");
        return Ok(());
    }
    match ops.delete_link(link.index).await {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::SysErrorKind;
    use crate::sys::rtnl::{MacAddr, MockLinkOps};
    use netlink_packet_route::RouteNetlinkMessage;
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlags};

    fn link(index: u32, name: &str) -> Link {
        Link {
            index,
            name: name.into(),
            kind: Some(LinkKind::Veth),
            mtu: 1500,
            mac: Some(MacAddr([0x02, 0, 0, 0, 0, index as u8])),
            up: true,
            lower_up: true,
            master: None,
            group: 0,
            link: None,
            netns_id: None,
        }
    }

    fn not_found(name: &str) -> SysError {
        SysError::NotFound {
            what: format!("looking up link {name:?}"),
        }
    }

    /// The mock's host: `eth0` (#2) exists, `eth0.10` does not.
    fn host_without_vlan() -> MockLinkOps {
        let mut ops = MockLinkOps::new();
        ops.expect_get_link().returning(|name| match name {
            "eth0" => Ok(link(2, "eth0")),
            other => Err(not_found(other)),
        });
        ops
    }

    /// Checks that `spec` is exactly "ip link add link #2 name eth0.10 up type vlan id 10".
    fn is_vlan_10_on_eth0(spec: &LinkSpec) -> bool {
        let req = spec.request().expect("valid request");
        let RouteNetlinkMessage::NewLink(m) = &req.message else {
            return false;
        };
        let info = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i.clone()),
            _ => None,
        });
        spec.name() == "eth0.10"
            && m.header.flags.contains(LinkFlags::Up)
            && m.attributes.contains(&LinkAttribute::Link(2))
            && info
                == Some(vec![
                    netlink_packet_route::link::LinkInfo::Kind(InfoKind::Vlan),
                    netlink_packet_route::link::LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(
                        10,
                    )])),
                ])
    }

    #[tokio::test]
    async fn a_missing_vlan_parent_is_created_on_its_base() {
        let mut ops = host_without_vlan();
        ops.expect_add_link()
            .withf(is_vlan_10_on_eth0)
            .times(1)
            .returning(|_| Ok(()));
        assert!(ensure_vlan(&ops, "eth0.10").await.unwrap());
    }

    #[tokio::test]
    async fn an_existing_vlan_parent_is_used_as_it_is() {
        let mut ops = MockLinkOps::new();
        ops.expect_get_link().returning(|name| Ok(link(7, name)));
        ops.expect_add_link().never();
        assert!(!ensure_vlan(&ops, "eth0.10").await.unwrap());
    }

    #[tokio::test]
    async fn the_kernels_refusal_comes_back_typed() {
        let mut ops = host_without_vlan();
        ops.expect_add_link().returning(|spec| {
            Err(SysError::NotSupported {
                what: spec.describe(),
            })
        });
        let e = ensure_vlan(&ops, "eth0.10").await.unwrap_err();
        assert_eq!(e.kind(), SysErrorKind::NotSupported);
        assert!(
            e.to_string()
                .contains(r#"creating vlan "eth0.10" (id 10 on link #2)"#),
            "{e}"
        );
    }

    #[tokio::test]
    async fn inspect_tells_what_wharf_would_do() {
        let ops = host_without_vlan();
        assert_eq!(
            inspect(&ops, "eth0.10", None).await.unwrap(),
            Found::MissingVlan {
                base: link(2, "eth0"),
                id: 10
            }
        );
        assert_eq!(
            inspect(&ops, "eth0", Some(1500)).await.unwrap(),
            Found::Exists(link(2, "eth0"))
        );
        for (name, mtu, want) in [
            ("eth1", None, "does not exist"),
            ("eth1.10", None, "nor does \"eth1\""),
            ("eth0", Some(9000), "mtu 9000 exceeds mtu 1500"),
            ("eth0.10", Some(9000), "exceeds its base \"eth0\" mtu 1500"),
        ] {
            match inspect(&ops, name, mtu).await {
                Err(Problem::Invalid(why)) => assert!(why.contains(want), "{name}: {why}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn loopback_ports_and_devices_without_mac_are_refused() {
        let mut ops = MockLinkOps::new();
        ops.expect_get_link().returning(|name| {
            let mut l = link(5, name);
            match name {
                "lo" => l.index = LOOPBACK_INDEX,
                "port0" => l.master = Some(3),
                "wg0" => l.mac = None,
                _ => {}
            }
            Ok(l)
        });
        for (name, want) in [
            ("lo", "loopback"),
            ("port0", "enslaved to link #3"),
            ("wg0", "no Ethernet address"),
        ] {
            match inspect(&ops, name, None).await {
                Err(Problem::Invalid(why)) => assert!(why.contains(want), "{name}: {why}"),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn only_a_vlan_device_is_deleted() {
        let mut ops = MockLinkOps::new();
        ops.expect_get_link().returning(|name| {
            let mut l = link(9, name);
            if name == "eth0.10" {
                l.kind = Some(LinkKind::Vlan);
            }
            Ok(l)
        });
        ops.expect_delete_link()
            .withf(|i| *i == 9)
            .times(1)
            .returning(|_| Ok(()));
        delete_vlan(&ops, "eth0.10").await.unwrap();
        // Replaced by something else meanwhile: left alone.
        delete_vlan(&ops, "eth0.20x").await.unwrap();

        let mut gone = MockLinkOps::new();
        gone.expect_get_link().returning(|n| Err(not_found(n)));
        gone.expect_delete_link().never();
        delete_vlan(&gone, "eth0.10").await.unwrap();
    }
}
