//! The controller's orchestration against a mocked driver: every failure a driver can return at
//! each step leaves IPAM, the store and the records exactly as they were.
//!
//! These run on a lab namespace as the host (the controller opens real netlink handles), so they
//! need root like the integration tests; the driver's kernel work is what the mock replaces.

use std::sync::Arc;

use super::*;
use crate::driver::{DriverError, Joined, MockDriver};
use crate::lab::Lab;

fn injected(net: &NetworkInfo) -> DriverError {
    DriverError::Kernel {
        network: net.name.clone(),
        source: crate::sys::SysError::from_errno("injected failure", libc::EIO),
    }
}

/// A mock bridge driver that succeeds at everything except what `fail` names.
fn mock(fail: &'static str) -> MockDriver {
    let mut d = MockDriver::new();
    d.expect_kind().return_const(DriverKind::Bridge);
    d.expect_validate().returning(|_| Ok(()));
    d.expect_prepare_network().returning(|_| Ok(()));
    d.expect_restore_network().return_const(());
    d.expect_validate_endpoint().returning(|_, _| Ok(()));
    d.expect_create_network().returning(move |net| {
        // The predefined `bridge` is created at open; failures are injected after that.
        if fail == "create_network" && net.name != "bridge" {
            Err(injected(net))
        } else {
            Ok(())
        }
    });
    d.expect_delete_network().returning(move |net| {
        if fail == "delete_network" {
            Err(injected(net))
        } else {
            Ok(())
        }
    });
    d.expect_join().returning(move |net, _, _| {
        if fail == "join" {
            Err(injected(net))
        } else {
            Ok(Joined::default())
        }
    });
    d.expect_program_external_connectivity()
        .returning(move |net, _| {
            if fail == "program_external_connectivity" {
                Err(injected(net))
            } else {
                Ok(())
            }
        });
    d.expect_revoke_external_connectivity()
        .returning(|_, _| Ok(()));
    d.expect_network_present().returning(|_| Ok(true));
    d.expect_endpoint_present().returning(|_, _, _| Ok(true));
    d.expect_reconcile().returning(|_, _| Ok(()));
    d
}

struct Fixture {
    wharf: Controller,
    _lab: Lab,
}

async fn fixture(driver: MockDriver) -> Fixture {
    let lab = Lab::new();
    let host = lab.namespace("host").await.expect("lab host");
    let handle = Handle::in_netns(&host).await.expect("host handle");
    let mut config = ControllerConfig::new(lab.temp_dir("state").expect("state dir"))
        .host(host.clone())
        .netns_prefix(lab.netns_prefix());
    config.sandbox_files_dir = lab.temp_dir("files").expect("files dir");
    let mut drivers: HashMap<DriverKind, Arc<dyn Driver>> = HashMap::new();
    drivers.insert(DriverKind::Bridge, Arc::new(driver));
    drivers.insert(DriverKind::Host, Arc::new(HostDriver));
    drivers.insert(DriverKind::Null, Arc::new(NullDriver));
    let wharf = Controller::open_with(config, host, handle, drivers)
        .await
        .expect("controller opens");
    Fixture { wharf, _lab: lab }
}

/// Everything the controller and IPAM have recorded, for before/after comparisons. IPAM's
/// subnet-table generation counter is left out: it only ever grows (it is how concurrent subnet
/// requests detect each other) and carries no allocation.
async fn snapshot(wharf: &Controller) -> Vec<(String, String)> {
    wharf
        .inner
        .store
        .list("")
        .await
        .expect("store lists")
        .into_iter()
        .filter(|kv| !kv.key.ends_with("/subnet-table"))
        .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
        .collect()
}

#[tokio::test]
async fn a_failed_join_releases_the_address_and_records_nothing() {
    let f = fixture(mock("join")).await;
    f.wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap();
    f.wharf
        .create_sandbox(SandboxSpec::new("c1"))
        .await
        .unwrap();
    let before = snapshot(&f.wharf).await;

    let err = f
        .wharf
        .connect("c1", "net", EndpointSpec::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Driver(DriverError::Kernel { .. })),
        "{err}"
    );

    assert_eq!(
        snapshot(&f.wharf).await,
        before,
        "the store is exactly as before"
    );
    let net_id = f.wharf.inspect_network("net").unwrap().id;
    assert!(
        f.wharf.inner.ipam.allocated(&net_id).is_empty(),
        "no address stays reserved"
    );
    assert!(f.wharf.sandbox("c1").unwrap().endpoints.is_empty());
}

#[tokio::test]
async fn a_failed_external_connectivity_leaves_and_releases() {
    let mut driver = mock("program_external_connectivity");
    driver
        .expect_leave_sandbox()
        .times(1)
        .returning(|_, _, _| Ok(()));
    let f = fixture(driver).await;
    f.wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap();
    f.wharf
        .create_sandbox(SandboxSpec::new("c1"))
        .await
        .unwrap();
    let before = snapshot(&f.wharf).await;

    assert!(
        f.wharf
            .connect("c1", "net", EndpointSpec::default())
            .await
            .is_err()
    );
    assert_eq!(snapshot(&f.wharf).await, before);
    let net_id = f.wharf.inspect_network("net").unwrap().id;
    assert!(f.wharf.inner.ipam.allocated(&net_id).is_empty());
}

#[tokio::test]
async fn a_failed_network_creation_returns_its_subnet() {
    let f = fixture(mock("create_network")).await;
    let before = snapshot(&f.wharf).await;
    let err = f
        .wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Driver(_)), "{err}");
    assert_eq!(snapshot(&f.wharf).await, before);
    assert!(f.wharf.inspect_network("net").is_err());
    assert!(
        f.wharf
            .inner
            .ipam
            .all_subnets()
            .iter()
            .all(|l| l.network_name != "net")
    );
}

#[tokio::test]
async fn bad_input_is_refused_before_anything_is_reserved() {
    let f = fixture(mock("")).await;
    f.wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap();
    f.wharf
        .create_sandbox(SandboxSpec::new("c1"))
        .await
        .unwrap();
    let before = snapshot(&f.wharf).await;
    let net = |n: &str| NetworkSpec::new(n);
    let cases: Vec<Result<NetworkInspect>> = vec![
        f.wharf.create_network(net("")).await,
        f.wharf.create_network(net("../etc")).await,
        f.wharf.create_network(net("net")).await,
        f.wharf
            .create_network(net("h2").driver(DriverOptions::Host))
            .await,
        f.wharf
            .create_network(net("v6").ipam(IpamConfig::new().parse_subnet("fd00::/64").unwrap()))
            .await,
    ];
    for (i, r) in cases.into_iter().enumerate() {
        assert!(r.is_err(), "case {i} accepted");
    }
    let eps = [
        EndpointSpec {
            ifname: Some("this-name-is-too-long".into()),
            ..EndpointSpec::default()
        },
        EndpointSpec {
            aliases: vec!["bad alias".into()],
            ..EndpointSpec::default()
        },
        EndpointSpec {
            ipv4: Some("10.0.0.5".parse().unwrap()),
            ..EndpointSpec::default()
        },
        EndpointSpec {
            ipv6: Some("fd00::5".parse().unwrap()),
            ..EndpointSpec::default()
        },
    ];
    for (i, spec) in eps.into_iter().enumerate() {
        assert!(
            f.wharf.connect("c1", "net", spec).await.is_err(),
            "endpoint case {i} accepted"
        );
    }
    assert!(matches!(
        f.wharf
            .connect("nope", "net", EndpointSpec::default())
            .await,
        Err(Error::NotFound {
            kind: ObjectKind::Sandbox,
            ..
        })
    ));
    assert!(matches!(
        f.wharf.connect("c1", "nope", EndpointSpec::default()).await,
        Err(Error::NotFound {
            kind: ObjectKind::Network,
            ..
        })
    ));
    assert!(matches!(
        f.wharf.delete_network("bridge").await,
        Err(Error::Predefined { .. })
    ));
    assert_eq!(snapshot(&f.wharf).await, before);
}

#[tokio::test]
async fn a_network_with_endpoints_is_not_deleted() {
    let mut driver = mock("");
    driver.expect_leave_sandbox().returning(|_, _, _| Ok(()));
    let f = fixture(driver).await;
    f.wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap();
    f.wharf
        .create_sandbox(SandboxSpec::new("c1"))
        .await
        .unwrap();
    f.wharf
        .connect("c1", "net", EndpointSpec::default())
        .await
        .unwrap();
    let err = f.wharf.delete_network("net").await.unwrap_err();
    assert!(
        matches!(err, Error::NetworkInUse { ref sandboxes, .. } if sandboxes == &["c1"]),
        "{err}"
    );
    f.wharf.disconnect("c1", "net").await.unwrap();
    f.wharf.delete_network("net").await.unwrap();
}

#[tokio::test]
async fn networks_are_found_by_name_id_and_unique_prefix() {
    let f = fixture(mock("")).await;
    let net = f
        .wharf
        .create_network(NetworkSpec::new("net"))
        .await
        .unwrap();
    assert_eq!(f.wharf.inspect_network(&net.id).unwrap().name, "net");
    assert_eq!(f.wharf.inspect_network(&net.id[..12]).unwrap().name, "net");
    assert!(matches!(
        f.wharf.inspect_network("zzz"),
        Err(Error::NotFound { .. })
    ));
}

/// `disconnect_many` hands the driver the batch once, then detaches each endpoint as
/// `disconnect` does; if the batch removal fails, each endpoint's own leave does the work and
/// the outcome is the same: everything recorded for the endpoints is gone.
#[tokio::test]
async fn disconnect_many_batches_the_removal_and_survives_its_failure() {
    for batch_fails in [false, true] {
        let mut driver = mock("");
        driver
            .expect_remove_interfaces()
            .times(1)
            .returning(move |eps| {
                assert_eq!(eps.len(), 3, "one call for the three plain endpoints");
                if batch_fails {
                    Err(injected(eps[0].0))
                } else {
                    Ok(())
                }
            });
        driver
            .expect_leave_sandbox()
            .times(3)
            .returning(|_, _, _| Ok(()));
        let f = fixture(driver).await;
        f.wharf
            .create_network(NetworkSpec::new("net"))
            .await
            .unwrap();
        for c in ["c1", "c2", "c3"] {
            f.wharf.create_sandbox(SandboxSpec::new(c)).await.unwrap();
        }
        let before = snapshot(&f.wharf).await;
        for c in ["c1", "c2", "c3"] {
            f.wharf
                .connect(c, "net", EndpointSpec::default())
                .await
                .unwrap();
        }
        let results = f
            .wharf
            .disconnect_many(&[("c1", "net"), ("c2", "net"), ("c3", "net")])
            .await;
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        assert_eq!(
            snapshot(&f.wharf).await,
            before,
            "batch removal failed: {batch_fails}"
        );
    }
}
