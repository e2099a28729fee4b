//! Many tasks connecting and disconnecting at once: afterwards the controller's view and the
//! kernel agree exactly, and no address is held twice.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Rng, World, ipv4_view};
use wharf::controller::{EndpointSpec, Error, NetworkSpec, SandboxSpec};
use wharf::sys::rtnl::Handle;

const NETWORKS: usize = 10;
const SANDBOXES: usize = 50;
const TASKS: usize = 200;
const OPS_PER_TASK: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_tasks_leave_state_and_kernel_in_agreement() {
    let w = World::new().await;
    for n in 0..NETWORKS {
        w.wharf
            .create_network(NetworkSpec::new(format!("net{n}")))
            .await
            .unwrap();
    }
    for s in 0..SANDBOXES {
        w.wharf
            .create_sandbox(SandboxSpec::new(format!("c{s}")))
            .await
            .unwrap();
    }

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let wharf = w.wharf.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng =
                Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
            for _ in 0..OPS_PER_TASK {
                let sb = format!("c{}", rng.below(SANDBOXES));
                let net = format!("net{}", rng.below(NETWORKS));
                let connected = wharf.endpoint(&sb, &net).is_ok();
                let result = if connected {
                    wharf.disconnect(&sb, &net).await
                } else {
                    wharf
                        .connect(&sb, &net, EndpointSpec::default())
                        .await
                        .map(|_| ())
                };
                match result {
                    Ok(()) => {}
                    // Another task got there first: a typed answer, not a failure.
                    Err(Error::AlreadyConnected { .. } | Error::NotConnected { .. }) => {}
                    Err(e) => panic!("{sb} <-> {net}: {e}"),
                }
            }
        }));
    }
    // A deadlock must fail the test with a name, not stall the suite: 600 operations take a
    // few seconds here.
    let all = futures::future::join_all(tasks);
    let done = tokio::time::timeout(std::time::Duration::from_secs(120), all)
        .await
        .expect("200 tasks did not finish within 120 s: a lock or a commit never came back");
    for t in done {
        t.expect("task");
    }

    // The controller's view.
    let mut want: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    let mut addresses = BTreeSet::new();
    let mut endpoints = 0;
    for sb in w.wharf.list_sandboxes() {
        let entry = want.entry(sb.name.clone()).or_default();
        for ep in &sb.endpoints {
            let ip = ep.ipv4.expect("an address");
            assert!(addresses.insert(ip), "{ip} is held twice");
            entry.insert((
                ep.ifname.clone(),
                format!("{ip}/{}", ep.ipv4_prefix.unwrap()),
            ));
            endpoints += 1;
        }
    }
    assert!(endpoints > 0, "the run connected nothing");

    // The kernel's view: each sandbox's interfaces and addresses, and the host's veths.
    for sb in w.wharf.list_sandboxes() {
        let ns = w.wharf.sandbox_netns(&sb.name).unwrap();
        let (got, defaults) = ipv4_view(&ns).await;
        assert_eq!(got, want[&sb.name], "sandbox {}", sb.name);
        assert_eq!(
            defaults,
            usize::from(!sb.endpoints.is_empty()),
            "default routes of {}",
            sb.name
        );
    }
    let host = Handle::in_netns(&w.host).await.unwrap();
    let veths = host
        .link()
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|l| l.name.starts_with("veth"))
        .count();
    assert_eq!(veths, endpoints, "host veths vs endpoints");
    for n in 0..NETWORKS {
        let inspect = w.wharf.inspect_network(&format!("net{n}")).unwrap();
        let ips: BTreeSet<&str> = inspect
            .containers
            .values()
            .map(|c| c.ipv4_address.as_str())
            .collect();
        assert_eq!(
            ips.len(),
            inspect.containers.len(),
            "net{n} lists an address twice"
        );
    }
}
