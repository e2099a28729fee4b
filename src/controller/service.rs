//! Services: replicated tasks placed over the hosts of a cluster (the part of Docker swarm that
//! its overlay tutorial uses).
//!
//! A service is a name, a replica count, cluster networks and optionally published ports
//! ([`ServiceSpec`]). Its definition lives in the cluster store as one typed record,
//! `cluster/v1/services/<id>` ([`ServiceRecord`]), created together with
//! `cluster/v1/service-names/<name>` (cluster-wide unique names), and changed only by
//! compare-and-swap, so any host's controller can create, inspect, update or remove it.
//!
//! **Placement** is written into the record by whichever controller changes it: each replica is
//! a *task* (slot 1..=replicas, a task id, a node), spread evenly over the live hosts (the
//! membership records `cluster/v1/nodes/<node>`, which live on each host's lease): each new
//! slot goes to the host with the fewest tasks of the service, ties by node name. A change of
//! networks or ports redeploys every task (new task ids, placed again), as Docker does; a change
//! of the replica count keeps the tasks of the remaining slots.
//!
//! **Each host runs its own tasks.** The cluster watcher hands service records to this module;
//! a reconciler task per controller compares the tasks placed on this node with the sandboxes
//! it runs for them (`wharf/v1/tasks/<task id>` in the local store), deletes those no longer
//! wanted first (Docker's stop-first update order) and then creates the missing ones: a
//! sandbox named `<service>.<slot>.<task id>` connected to each of the service's networks with
//! the aliases `<service>` and `tasks.<service>`. Tasks join networks that are not attachable
//! (what [`Error::NotAttachable`] keeps standalone sandboxes from). A reconcile that fails is
//! retried.
//!
//! **Names**: the service name and `tasks.<service>` resolve to every replica on a network
//! the asking container shares with it, on every host (local tasks through their aliases,
//! remote ones through their cluster endpoint records), rotated between answers. Docker's
//! default endpoint mode gives the service name one virtual IP instead (IPVS, absent from
//! this kernel); wharf answers as Docker's `dnsrr` endpoint mode does.
//!
//! What is not done: a dead host's tasks are not placed elsewhere (its records vanish with its
//! lease; `docker service` would reschedule them); there are no rolling-update options.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cluster::{KEY_C_NODES, NodeRecord};
use super::{Controller, EndpointSpec, Error, Inner, ObjectKind, Result, SandboxSpec, names};
use crate::driver::Protocol;
use crate::store::{KeyValue, Op, Revision, StoreError, WatchEvent};

/// Service records, `cluster/v1/services/<id>`.
pub(crate) const KEY_C_SERVICES: &str = "cluster/v1/services/";
/// Service names, `cluster/v1/service-names/<name>` -> id.
const KEY_C_SERVICE_NAMES: &str = "cluster/v1/service-names/";
/// This host's tasks, in its local store: `wharf/v1/tasks/<task id>`.
const KEY_TASKS: &str = "wharf/v1/tasks/";

/// The longest service name: its task sandboxes are named `<name>.<slot>.<12 hex>`, and a
/// sandbox name has at most 64 characters.
pub const MAX_SERVICE_NAME_LEN: usize = 40;
/// The most replicas a service may have.
pub const MAX_REPLICAS: u32 = 9999;

/// How long the reconciler waits before retrying after a failure.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// A published port of a service (`docker service create --publish published:target`).
///
/// It is reached on every host's addresses and balanced over all replicas (the routing mesh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    /// TCP or UDP.
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// The port on every host.
    pub published: u16,
    /// The port the replicas listen on.
    pub target: u16,
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl ServicePort {
    /// A TCP port `published` on every host, forwarded to `target` on a replica.
    pub fn tcp(published: u16, target: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            published,
            target,
        }
    }
}

/// How to create or update a service (`docker service create` / `update`).
///
/// ```
/// use wharf::controller::{ServicePort, ServiceSpec};
/// let spec = ServiceSpec::new("my-nginx")
///     .replicas(5)
///     .network("nginx-net")
///     .publish(ServicePort::tcp(80, 80));
/// assert_eq!(spec.replicas, 5);
/// let json = r#"{"name": "web", "replicas": 2, "networks": ["front"]}"#;
/// let spec: ServiceSpec = serde_json::from_str(json).unwrap();
/// assert_eq!(spec.networks, ["front"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSpec {
    /// The unique name (also its DNS name).
    pub name: String,
    /// How many replicas (tasks) run, over all hosts (default 1).
    pub replicas: u32,
    /// Cluster (overlay) networks the replicas join, by name or id, in this order.
    pub networks: Vec<String>,
    /// Published ports, reached through every host (the routing mesh).
    pub ports: Vec<ServicePort>,
    /// User labels, shown by inspect.
    pub labels: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            name: String::new(),
            replicas: 1,
            networks: Vec::new(),
            ports: Vec::new(),
            labels: BTreeMap::new(),
        }
    }
}

impl ServiceSpec {
    /// One replica, no network, no port.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Sets the replica count.
    pub fn replicas(mut self, n: u32) -> Self {
        self.replicas = n;
        self
    }

    /// Adds a network.
    pub fn network(mut self, name_or_id: impl Into<String>) -> Self {
        self.networks.push(name_or_id.into());
        self
    }

    /// Adds a published port.
    pub fn publish(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }
}

/// One replica of a service, as placed by the controller that wrote the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The replica's slot, 1..=replicas.
    pub slot: u32,
    /// The task's id (12 hex characters; a redeployed slot gets a new one).
    pub id: String,
    /// The node that runs it.
    pub node: String,
}

/// A service as the cluster store holds it (`cluster/v1/services/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The 64-hex-character id.
    pub id: String,
    /// The unique name.
    pub name: String,
    /// Incremented by every update.
    pub version: u64,
    /// The replica count.
    pub replicas: u32,
    /// The networks' ids, in the spec's order.
    pub networks: Vec<String>,
    /// Published ports.
    pub ports: Vec<ServicePort>,
    /// User labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Time of the last update, RFC 3339.
    pub updated: String,
    /// The placement: one task per slot.
    pub tasks: Vec<TaskRecord>,
}

impl ServiceRecord {
    /// The sandbox (container) name of a task: `<service>.<slot>.<task id>`, as Docker names
    /// a task's container.
    pub fn task_name(&self, task: &TaskRecord) -> String {
        format!("{}.{}.{}", self.name, task.slot, task.id)
    }

    /// The DNS aliases every replica gets on each of the service's networks.
    pub fn aliases(&self) -> Vec<String> {
        vec![self.name.clone(), format!("tasks.{}", self.name)]
    }
}

/// A service as [`Controller::inspect_service`] shows it (`docker service inspect` and
/// `docker service ps` in one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceInspect {
    /// The id.
    #[serde(rename = "ID")]
    pub id: String,
    /// The name.
    pub name: String,
    /// The record's version (incremented by each update).
    pub version: u64,
    /// Creation time.
    pub created_at: String,
    /// Time of the last update.
    pub updated_at: String,
    /// Replicas wanted.
    pub replicas: u32,
    /// Replicas running: with an endpoint on every network of the service.
    pub running: u32,
    /// The networks, in order.
    pub networks: Vec<ServiceNetworkInspect>,
    /// Published ports.
    pub ports: Vec<ServicePort>,
    /// User labels.
    pub labels: BTreeMap<String, String>,
    /// Every task, by slot.
    pub tasks: Vec<TaskInspect>,
}

/// A network of a service in [`ServiceInspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceNetworkInspect {
    /// The network's id.
    pub target: String,
    /// Its name (empty if the network is gone).
    pub name: String,
}

/// A task in [`ServiceInspect`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskInspect {
    /// The task id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its sandbox (container) name.
    pub name: String,
    /// Its slot.
    pub slot: u32,
    /// The node it is placed on.
    pub node: String,
    /// `running` (an endpoint on every network of the service, as the cluster sees it) or
    /// `pending`.
    pub state: String,
    /// Its addresses, one per network that has it, in the service's network order.
    #[serde(rename = "Addresses")]
    pub addresses: Vec<std::net::IpAddr>,
}

/// A task this host runs, for the runtime to start the replica's process in
/// ([`Controller::local_tasks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTask {
    /// The service's name.
    pub service: String,
    /// The slot.
    pub slot: u32,
    /// The task id.
    pub id: String,
    /// The sandbox's name (`<service>.<slot>.<task id>`).
    pub sandbox: String,
}

/// What this host stores about a task it runs (`wharf/v1/tasks/<task id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LocalTaskRecord {
    service_id: String,
    service: String,
    slot: u32,
    id: String,
    sandbox: String,
}

/// The service side of a cluster controller: the watcher's copy of the service records and
/// the reconciler's wake-up.
#[derive(Debug, Default)]
pub(crate) struct Services {
    records: Mutex<ServiceMirror>,
    /// Set by the watcher on every change; the reconciler wakes up.
    pub wake: Arc<tokio::sync::Notify>,
    /// Orders reconciles (the loop and explicit calls).
    reconcile: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct ServiceMirror {
    by_id: BTreeMap<String, (Revision, ServiceRecord)>,
    seen: HashMap<String, Revision>,
}

impl Services {
    fn mirror(&self) -> std::sync::MutexGuard<'_, ServiceMirror> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the mirror with a listing of [`KEY_C_SERVICES`] and wakes the reconciler.
    pub fn replace(&self, listing: &[KeyValue]) {
        {
            let mut m = self.mirror();
            m.by_id.clear();
            m.seen.clear();
            for kv in listing {
                m.put(kv);
            }
        }
        self.wake.notify_one();
    }

    /// Applies a watch event on a service key (unless the mirror has something newer).
    pub fn apply(&self, event: &WatchEvent) {
        {
            let mut m = self.mirror();
            if m.seen
                .get(event.key())
                .is_some_and(|seen| *seen >= event.revision())
            {
                return;
            }
            match event {
                WatchEvent::Put(kv) => m.put(kv),
                WatchEvent::Delete { key, revision } => {
                    m.seen.insert(key.clone(), *revision);
                    if let Some(id) = key.strip_prefix(KEY_C_SERVICES) {
                        m.by_id.remove(id);
                    }
                }
            }
        }
        self.wake.notify_one();
    }

    /// The networks some service uses, with the services' names.
    pub fn users_of(&self, network_id: &str) -> Vec<String> {
        self.mirror()
            .by_id
            .values()
            .filter(|(_, s)| s.networks.iter().any(|n| n == network_id))
            .map(|(_, s)| s.name.clone())
            .collect()
    }

    fn all(&self) -> Vec<ServiceRecord> {
        self.mirror()
            .by_id
            .values()
            .map(|(_, s)| s.clone())
            .collect()
    }
}

impl ServiceMirror {
    fn put(&mut self, kv: &KeyValue) {
        let Some(id) = kv.key.strip_prefix(KEY_C_SERVICES) else {
            return;
        };
        match serde_json::from_slice::<ServiceRecord>(&kv.value) {
            Ok(r) => {
                self.by_id.insert(id.to_owned(), (kv.revision, r));
                self.seen.insert(kv.key.clone(), kv.revision);
            }
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "unreadable service record"),
        }
    }
}

/// Places `slots` over `nodes`, each on the node with the fewest tasks so far (`load`), ties
/// by node name. Returns the chosen node per slot, in order.
pub(crate) fn place(
    nodes: &[String],
    load: &mut BTreeMap<String, u32>,
    slots: &[u32],
) -> Vec<(u32, String)> {
    for n in nodes {
        load.entry(n.clone()).or_insert(0);
    }
    let mut out = Vec::new();
    for slot in slots {
        let Some(node) = load
            .iter()
            .filter(|(n, _)| nodes.contains(n))
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(n, _)| n.clone())
        else {
            break;
        };
        *load.entry(node.clone()).or_insert(0) += 1;
        out.push((*slot, node));
    }
    out
}

fn task_id() -> String {
    names::new_id()[..12].to_owned()
}

fn now() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

fn service_key(id: &str) -> String {
    format!("{KEY_C_SERVICES}{id}")
}

fn name_key(name: &str) -> String {
    format!("{KEY_C_SERVICE_NAMES}{name}")
}

fn invalid(name: &str, reason: impl Into<String>) -> Error {
    Error::InvalidRequest {
        kind: ObjectKind::Service,
        name: name.to_owned(),
        reason: reason.into(),
    }
}

impl Controller {
    fn services(&self) -> Option<&Services> {
        self.cluster().map(|c| &c.services)
    }

    fn require_services(&self, name: &str) -> Result<&Services> {
        self.services().ok_or_else(|| {
            invalid(
                name,
                "services need a controller in cluster mode (ControllerConfig::cluster)",
            )
        })
    }

    /// Checks a spec and resolves its networks to ids (cluster networks only).
    async fn check_service_spec(&self, spec: &ServiceSpec) -> Result<Vec<String>> {
        names::validate_network_name(&spec.name).map_err(|e| match e {
            Error::InvalidName { name, reason, .. } => Error::InvalidName {
                kind: ObjectKind::Service,
                name,
                reason,
            },
            e => e,
        })?;
        names::validate_alias(&spec.name).map_err(|_| Error::InvalidName {
            kind: ObjectKind::Service,
            name: spec.name.clone(),
            reason: "a service name must be a DNS name (letters, digits, '-', '_', '.')".into(),
        })?;
        if spec.name.len() > MAX_SERVICE_NAME_LEN {
            return Err(Error::InvalidName {
                kind: ObjectKind::Service,
                name: spec.name.clone(),
                reason: format!("longer than {MAX_SERVICE_NAME_LEN} characters"),
            });
        }
        if spec.replicas > MAX_REPLICAS {
            return Err(invalid(
                &spec.name,
                format!("at most {MAX_REPLICAS} replicas"),
            ));
        }
        if spec.networks.is_empty() {
            return Err(invalid(&spec.name, "a service needs at least one network"));
        }
        let mut seen = BTreeSet::new();
        for p in &spec.ports {
            if p.published == 0 || p.target == 0 {
                return Err(invalid(
                    &spec.name,
                    format!(
                        "port {}:{} : port 0 cannot be published",
                        p.published, p.target
                    ),
                ));
            }
            if !seen.insert((p.protocol, p.published)) {
                return Err(invalid(
                    &spec.name,
                    format!("{} port {} is published twice", p.protocol, p.published),
                ));
            }
        }
        let mut ids = Vec::new();
        for net in &spec.networks {
            if matches!(self.records().network(net), Err(Error::NotFound { .. })) {
                self.learn_from_store(net).await?;
            }
            let (id, scoped, ingress) = {
                let records = self.records();
                let n = records.network(net)?;
                (
                    n.info.id.clone(),
                    n.info.options.kind().is_cluster_scoped(),
                    super::is_ingress(n),
                )
            };
            if !scoped || ingress {
                return Err(invalid(
                    &spec.name,
                    format!("network {net:?} is not a cluster (overlay) network a service can use"),
                ));
            }
            if ids.contains(&id) {
                return Err(invalid(
                    &spec.name,
                    format!("network {net:?} is given twice"),
                ));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// The live nodes of the cluster (their membership records), in name order; this node is
    /// always one.
    async fn live_nodes(&self) -> Result<Vec<String>> {
        let Some(cluster) = self.cluster() else {
            return Ok(Vec::new());
        };
        let mut nodes: BTreeSet<String> = cluster
            .config
            .store
            .list(KEY_C_NODES)
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice::<NodeRecord>(&kv.value).ok())
            .map(|n| n.node)
            .collect();
        nodes.insert(cluster.config.node.clone());
        Ok(nodes.into_iter().collect())
    }

    /// Refuses published ports another service already publishes.
    async fn check_ports_unused(&self, spec: &ServiceSpec, except: Option<&str>) -> Result<()> {
        for other in self.read_services().await? {
            if Some(other.id.as_str()) == except {
                continue;
            }
            for p in &spec.ports {
                if other
                    .ports
                    .iter()
                    .any(|o| o.protocol == p.protocol && o.published == p.published)
                {
                    return Err(Error::PortAlreadyPublished {
                        protocol: p.protocol,
                        host_port: p.published,
                        host_ip: None,
                        owner: format!("service {}", other.name),
                        network: super::INGRESS_NETWORK.into(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn read_services(&self) -> Result<Vec<ServiceRecord>> {
        let Some(cluster) = self.cluster() else {
            return Ok(Vec::new());
        };
        cluster
            .config
            .store
            .list(KEY_C_SERVICES)
            .await?
            .iter()
            .map(|kv| {
                serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
                    key: kv.key.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Reads a service record by name, id or unique id prefix, with its revision.
    async fn read_service(&self, name_or_id: &str) -> Result<(Revision, ServiceRecord)> {
        let cluster = self.cluster().ok_or_else(|| Error::NotFound {
            kind: ObjectKind::Service,
            name: name_or_id.to_owned(),
        })?;
        let store = cluster.config.store.as_ref();
        let id = match store.get(&name_key(name_or_id)).await? {
            Some(kv) => String::from_utf8_lossy(&kv.value).into_owned(),
            None => {
                let matches: Vec<String> = store
                    .list(KEY_C_SERVICES)
                    .await?
                    .iter()
                    .filter_map(|kv| kv.key.strip_prefix(KEY_C_SERVICES))
                    .filter(|id| !name_or_id.is_empty() && id.starts_with(name_or_id))
                    .map(str::to_owned)
                    .collect();
                match matches.as_slice() {
                    [one] => one.clone(),
                    [] => {
                        return Err(Error::NotFound {
                            kind: ObjectKind::Service,
                            name: name_or_id.to_owned(),
                        });
                    }
                    _ => {
                        return Err(Error::Ambiguous {
                            kind: ObjectKind::Service,
                            prefix: name_or_id.to_owned(),
                            matches,
                        });
                    }
                }
            }
        };
        let key = service_key(&id);
        let kv = store.get(&key).await?.ok_or_else(|| Error::NotFound {
            kind: ObjectKind::Service,
            name: name_or_id.to_owned(),
        })?;
        let record = serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
            key,
            reason: e.to_string(),
        })?;
        Ok((kv.revision, record))
    }

    /// Creates a service (`docker service create`): its record, with the replicas placed over
    /// the live hosts. Each host then starts the replicas placed on it (in the background;
    /// [`ServiceInspect::running`] counts them).
    pub async fn create_service(&self, spec: ServiceSpec) -> Result<ServiceInspect> {
        self.require_services(&spec.name)?;
        let networks = self.check_service_spec(&spec).await?;
        self.check_ports_unused(&spec, None).await?;
        if !spec.ports.is_empty() {
            self.ensure_ingress().await?;
        }
        let nodes = self.live_nodes().await?;
        let slots: Vec<u32> = (1..=spec.replicas).collect();
        let tasks = place(&nodes, &mut BTreeMap::new(), &slots)
            .into_iter()
            .map(|(slot, node)| TaskRecord {
                slot,
                id: task_id(),
                node,
            })
            .collect();
        let created = now();
        let record = ServiceRecord {
            id: names::new_id(),
            name: spec.name.clone(),
            version: 1,
            replicas: spec.replicas,
            networks,
            ports: spec.ports.clone(),
            labels: spec.labels.clone(),
            created: created.clone(),
            updated: created,
            tasks,
        };
        let Some(cluster) = self.cluster() else {
            return Err(invalid(&spec.name, "not in cluster mode"));
        };
        let ops = vec![
            Op::Create {
                key: name_key(&record.name),
                value: record.id.clone().into_bytes(),
            },
            Op::Create {
                key: service_key(&record.id),
                value: super::records::encode(&record)?,
            },
        ];
        match cluster.config.store.apply(ops).await {
            Ok(_) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return Err(Error::AlreadyExists {
                    kind: ObjectKind::Service,
                    name: spec.name,
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(service = %record.name, replicas = record.replicas, "service created");
        Ok(self.service_inspect(&record))
    }

    /// Updates a service (`docker service update`) to `spec` (its name must stay). Changing
    /// the networks or ports redeploys every replica; changing only the replica count starts
    /// or stops the difference.
    pub async fn update_service(
        &self,
        name_or_id: &str,
        spec: ServiceSpec,
    ) -> Result<ServiceInspect> {
        self.require_services(name_or_id)?;
        let networks = self.check_service_spec(&spec).await?;
        let Some(cluster) = self.cluster() else {
            return Err(invalid(name_or_id, "not in cluster mode"));
        };
        if !spec.ports.is_empty() {
            self.ensure_ingress().await?;
        }
        // Compare-and-swap: another host's concurrent update makes this one read again.
        for _ in 0..8 {
            let (revision, old) = self.read_service(name_or_id).await?;
            if spec.name != old.name {
                return Err(invalid(
                    &old.name,
                    format!("a service cannot be renamed (to {:?})", spec.name),
                ));
            }
            self.check_ports_unused(&spec, Some(&old.id)).await?;
            let nodes = self.live_nodes().await?;
            let redeploy = networks != old.networks || spec.ports != old.ports;
            let kept: Vec<TaskRecord> = if redeploy {
                Vec::new()
            } else {
                old.tasks
                    .iter()
                    .filter(|t| t.slot <= spec.replicas)
                    .cloned()
                    .collect()
            };
            let mut load: BTreeMap<String, u32> = BTreeMap::new();
            for t in &kept {
                *load.entry(t.node.clone()).or_insert(0) += 1;
            }
            let missing: Vec<u32> = (1..=spec.replicas)
                .filter(|s| !kept.iter().any(|t| t.slot == *s))
                .collect();
            let mut tasks = kept;
            tasks.extend(
                place(&nodes, &mut load, &missing)
                    .into_iter()
                    .map(|(slot, node)| TaskRecord {
                        slot,
                        id: task_id(),
                        node,
                    }),
            );
            tasks.sort_by_key(|t| t.slot);
            let record = ServiceRecord {
                version: old.version + 1,
                replicas: spec.replicas,
                networks: networks.clone(),
                ports: spec.ports.clone(),
                labels: spec.labels.clone(),
                updated: now(),
                tasks,
                ..old
            };
            let op = Op::Swap {
                key: service_key(&record.id),
                expected: revision,
                value: super::records::encode(&record)?,
            };
            match cluster.config.store.apply(vec![op]).await {
                Ok(_) => {
                    tracing::info!(service = %record.name, version = record.version, redeploy, "service updated");
                    return Ok(self.service_inspect(&record));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(Error::NotFound {
                        kind: ObjectKind::Service,
                        name: name_or_id.to_owned(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(invalid(
            name_or_id,
            "the service kept changing under the update; try again",
        ))
    }

    /// Removes a service (`docker service rm`): its record and name go at once, and every host
    /// stops its replicas in the background.
    pub async fn remove_service(&self, name_or_id: &str) -> Result<()> {
        let Some(cluster) = self.cluster() else {
            return Err(Error::NotFound {
                kind: ObjectKind::Service,
                name: name_or_id.to_owned(),
            });
        };
        let (revision, record) = self.read_service(name_or_id).await?;
        let store = cluster.config.store.as_ref();
        let mut ops = vec![Op::DeleteIf {
            key: service_key(&record.id),
            expected: revision,
        }];
        if let Some(kv) = store.get(&name_key(&record.name)).await? {
            if kv.value == record.id.as_bytes() {
                ops.push(Op::DeleteIf {
                    key: kv.key,
                    expected: kv.revision,
                });
            }
        }
        match store.apply(ops).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. } | StoreError::NotFound { .. }) => {
                return Err(Error::NotFound {
                    kind: ObjectKind::Service,
                    name: name_or_id.to_owned(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(service = %record.name, "service removed");
        Ok(())
    }

    /// One service, with its tasks and how many run (`docker service inspect` + `ps`).
    pub async fn inspect_service(&self, name_or_id: &str) -> Result<ServiceInspect> {
        let (_, record) = self.read_service(name_or_id).await?;
        Ok(self.service_inspect(&record))
    }

    /// Every service, in name order (`docker service ls`).
    pub async fn list_services(&self) -> Result<Vec<ServiceInspect>> {
        let mut all = self.read_services().await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all.iter().map(|r| self.service_inspect(r)).collect())
    }

    /// The tasks this host runs (their sandboxes exist and are connected to every network
    /// they join), in service and slot order: where a runtime starts the replicas' processes.
    pub fn local_tasks(&self) -> Vec<LocalTask> {
        let Some(cluster) = self.cluster() else {
            return Vec::new();
        };
        let mut out: Vec<LocalTask> = cluster
            .services
            .all()
            .iter()
            .flat_map(|s| {
                s.tasks
                    .iter()
                    .filter(|t| t.node == cluster.config.node)
                    .map(|t| LocalTask {
                        service: s.name.clone(),
                        slot: t.slot,
                        id: t.id.clone(),
                        sandbox: s.task_name(t),
                    })
                    // Started: on every network it joins.
                    .filter(|t| self.task_started(s, &t.sandbox))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| (&a.service, a.slot).cmp(&(&b.service, b.slot)));
        out
    }

    /// The networks a task of `r` joins: the service's, then `ingress` if it publishes ports.
    fn task_networks(&self, r: &ServiceRecord) -> Vec<String> {
        let mut nets = r.networks.clone();
        if !r.ports.is_empty() {
            let ingress = self
                .records()
                .network_by_name(super::INGRESS_NETWORK)
                .filter(|n| super::is_ingress(n))
                .map(|n| n.info.id.clone());
            // Unknown here yet: no task can have joined it.
            nets.push(ingress.unwrap_or_default());
        }
        nets
    }

    fn service_inspect(&self, r: &ServiceRecord) -> ServiceInspect {
        let needed = self.task_networks(r);
        // Read before the mirror's lock: the two locks are never held together.
        let local_names: HashMap<String, String> = {
            let records = self.records();
            r.networks
                .iter()
                .filter_map(|id| Some((id.clone(), records.networks.get(id)?.info.name.clone())))
                .collect()
        };
        let (endpoints, networks) = match self.cluster() {
            Some(c) => {
                let mirror = c.mirror();
                let mut by_name: HashMap<String, Vec<(String, Option<std::net::IpAddr>)>> =
                    HashMap::new();
                for net in &needed {
                    for (_, e) in mirror
                        .endpoints
                        .get(net)
                        .into_iter()
                        .flat_map(|m| m.values())
                    {
                        by_name
                            .entry(e.name.clone())
                            .or_default()
                            .push((net.clone(), e.ipv4.map(std::net::IpAddr::V4)));
                    }
                }
                let networks: Vec<ServiceNetworkInspect> = r
                    .networks
                    .iter()
                    .map(|id| ServiceNetworkInspect {
                        target: id.clone(),
                        name: mirror
                            .networks
                            .get(id)
                            .map(|(_, n)| n.info.name.clone())
                            .or_else(|| local_names.get(id).cloned())
                            .unwrap_or_default(),
                    })
                    .collect();
                (by_name, networks)
            }
            None => (HashMap::new(), Vec::new()),
        };
        let tasks: Vec<TaskInspect> = r
            .tasks
            .iter()
            .map(|t| {
                let name = r.task_name(t);
                let eps = endpoints.get(&name).cloned().unwrap_or_default();
                let running = needed.iter().all(|n| eps.iter().any(|(en, _)| en == n));
                let addresses = r
                    .networks
                    .iter()
                    .filter_map(|n| eps.iter().find(|(en, _)| en == n).and_then(|(_, ip)| *ip))
                    .collect();
                TaskInspect {
                    id: t.id.clone(),
                    name,
                    slot: t.slot,
                    node: t.node.clone(),
                    state: if running { "running" } else { "pending" }.into(),
                    addresses,
                }
            })
            .collect();
        ServiceInspect {
            id: r.id.clone(),
            name: r.name.clone(),
            version: r.version,
            created_at: r.created.clone(),
            updated_at: r.updated.clone(),
            replicas: r.replicas,
            running: tasks.iter().filter(|t| t.state == "running").count() as u32,
            networks,
            ports: r.ports.clone(),
            labels: r.labels.clone(),
            tasks,
        }
    }

    /// Refuses to delete a cluster network that a service uses.
    pub(crate) fn refuse_if_service_network(&self, network_id: &str, network: &str) -> Result<()> {
        let users = self
            .services()
            .map(|s| s.users_of(network_id))
            .unwrap_or_default();
        if users.is_empty() {
            return Ok(());
        }
        Err(Error::NetworkInUse {
            network: network.to_owned(),
            sandboxes: users.into_iter().map(|s| format!("service {s}")).collect(),
        })
    }

    // ---- this host's tasks ---------------------------------------------------------------

    /// Brings this host's tasks in line with the service records: stops the tasks no longer
    /// placed here, then starts the missing ones. `Ok(false)`: something failed (retried).
    pub(crate) async fn reconcile_services(&self) -> bool {
        let Some(cluster) = self.cluster() else {
            return true;
        };
        let _order = cluster.services.reconcile.lock().await;
        let node = cluster.config.node.clone();
        let services = cluster.services.all();
        let wanted: BTreeMap<String, (ServiceRecord, TaskRecord)> = services
            .iter()
            .flat_map(|s| {
                s.tasks
                    .iter()
                    .filter(|t| t.node == node)
                    .map(|t| (t.id.clone(), (s.clone(), t.clone())))
                    .collect::<Vec<_>>()
            })
            .collect();
        let have: Vec<LocalTaskRecord> = match self.inner.store.list(KEY_TASKS).await {
            Ok(kvs) => kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing this host's tasks; will retry");
                return false;
            }
        };
        let mut ok = true;
        // Stop first.
        let mut running = BTreeSet::new();
        for t in &have {
            let sandbox_alive = self.records().sandbox_by_name(&t.sandbox).is_some();
            if let (Some((s, _)), true) = (wanted.get(&t.id), sandbox_alive) {
                // A task that did not join all its networks (a start that failed half-way)
                // is started again: `start_task` does only what is missing.
                if self.task_started(s, &t.sandbox) {
                    running.insert(t.id.clone());
                }
                continue;
            }
            if let Err(e) = self.stop_task(t).await {
                tracing::warn!(task = %t.sandbox, error = %e, "stopping a task; will retry");
                ok = false;
            }
        }
        // Then start what is missing, all at once.
        let starts = wanted
            .values()
            .filter(|(_, t)| !running.contains(&t.id))
            .map(|(s, t)| async move {
                let name = s.task_name(t);
                match self.start_task(s, t).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(task = %name, error = %e, "starting a task; will retry");
                        false
                    }
                }
            });
        for started in futures::future::join_all(starts).await {
            ok &= started;
        }
        ok &= self.reconcile_mesh(&services).await;
        ok
    }

    /// Whether a task's sandbox is on every network the task joins.
    fn task_started(&self, s: &ServiceRecord, sandbox: &str) -> bool {
        let needed = self.task_networks(s);
        let records = self.records();
        records.sandbox_by_name(sandbox).is_some_and(|sb| {
            let eps = records.endpoints_of(&sb.id);
            needed
                .iter()
                .all(|n| eps.iter().any(|e| &e.network_id == n))
        })
    }

    async fn stop_task(&self, t: &LocalTaskRecord) -> Result<()> {
        match self.delete_sandbox(&t.sandbox).await {
            Ok(()) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        match self
            .inner
            .store
            .delete(&format!("{KEY_TASKS}{}", t.id))
            .await
        {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        tracing::info!(task = %t.sandbox, "task stopped");
        Ok(())
    }

    async fn start_task(&self, s: &ServiceRecord, t: &TaskRecord) -> Result<()> {
        let name = s.task_name(t);
        let local = LocalTaskRecord {
            service_id: s.id.clone(),
            service: s.name.clone(),
            slot: t.slot,
            id: t.id.clone(),
            sandbox: name.clone(),
        };
        // Recorded first, so a failure half-way is cleaned up by the next reconcile.
        self.put(KEY_TASKS, &t.id, &local).await?;
        if self.records().sandbox_by_name(&name).is_none() {
            self.create_sandbox(SandboxSpec::new(&name)).await?;
        }
        let aliases = s.aliases();
        let mut joins: Vec<(String, Vec<String>)> = s
            .networks
            .iter()
            .map(|n| (n.clone(), aliases.clone()))
            .collect();
        if !s.ports.is_empty() {
            // The routing mesh reaches replicas through their ingress endpoint; no names there.
            let ingress = self.ingress_id().await?;
            joins.push((ingress, Vec::new()));
        }
        for (net, aliases) in joins {
            let connected = {
                let records = self.records();
                records.sandbox_by_name(&name).is_some_and(|sb| {
                    records
                        .endpoints_of(&sb.id)
                        .iter()
                        .any(|e| e.network_id == net)
                })
            };
            if connected {
                continue;
            }
            let spec = EndpointSpec {
                aliases,
                ..EndpointSpec::default()
            };
            self.connect_as(&name, &net, spec, super::Joiner::Task)
                .await?;
        }
        tracing::info!(task = %name, "task started");
        Ok(())
    }
}

/// The reconciler: runs [`Controller::reconcile_services`] when the watcher saw a change, and
/// again after [`RETRY_DELAY`] while it fails. Holds the controller only while reconciling and
/// stops when it is dropped.
pub(crate) async fn service_loop(
    weak: Weak<Inner>,
    wake: Arc<tokio::sync::Notify>,
    mut shutdown: tokio::sync::watch::Receiver<()>,
) {
    let mut retry = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(RETRY_DELAY), if retry => {}
        }
        let Some(inner) = weak.upgrade() else { return };
        let controller = Controller { inner };
        retry = !controller.reconcile_services().await;
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn replicas_spread_evenly_ties_by_name() {
        let n = nodes(&["manager", "worker-1", "worker-2"]);
        let placed = place(&n, &mut BTreeMap::new(), &[1, 2, 3, 4, 5]);
        let on: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            on,
            ["manager", "worker-1", "worker-2", "manager", "worker-1"]
        );
    }

    #[test]
    fn new_slots_go_to_the_least_loaded_nodes() {
        let n = nodes(&["a", "b", "c"]);
        let mut load = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        let placed = place(&n, &mut load, &[4, 5, 6]);
        let on: Vec<&str> = placed.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(on, ["c", "b", "c"]);
        // A node that left is never chosen, whatever its load.
        let mut load = BTreeMap::from([("gone".to_string(), 0)]);
        let placed = place(&nodes(&["a"]), &mut load, &[1]);
        assert_eq!(placed, [(1, "a".to_string())]);
        assert!(place(&[], &mut BTreeMap::new(), &[1]).is_empty());
    }

    fn record(name: &str, version: u64) -> ServiceRecord {
        ServiceRecord {
            id: format!("id-{name}"),
            name: name.into(),
            version,
            replicas: 1,
            networks: vec!["net".into()],
            ports: vec![],
            labels: BTreeMap::new(),
            created: String::new(),
            updated: String::new(),
            tasks: vec![],
        }
    }

    fn put(r: &ServiceRecord, revision: Revision) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: service_key(&r.id),
            value: serde_json::to_vec(r).unwrap(),
            revision,
        })
    }

    #[test]
    fn the_mirror_ignores_events_older_than_what_it_has() {
        let s = Services::default();
        let v1 = record("web", 1);
        let v2 = record("web", 2);
        // The listing (revision 5) has v2; a put of v1 (3) that raced it changes nothing.
        s.replace(&[KeyValue {
            key: service_key(&v2.id),
            value: serde_json::to_vec(&v2).unwrap(),
            revision: 5,
        }]);
        s.apply(&put(&v1, 3));
        assert_eq!(s.all(), std::slice::from_ref(&v2));
        assert_eq!(s.users_of("net"), ["web"]);
        // Deleted at 6; a replayed put at 5 does not bring it back.
        s.apply(&WatchEvent::Delete {
            key: service_key(&v2.id),
            revision: 6,
        });
        s.apply(&put(&v2, 5));
        assert!(s.all().is_empty());
        assert!(s.users_of("net").is_empty());
    }

    #[test]
    fn task_names_and_aliases() {
        let r = ServiceRecord {
            id: "x".into(),
            name: "my-nginx".into(),
            version: 1,
            replicas: 1,
            networks: vec![],
            ports: vec![],
            labels: BTreeMap::new(),
            created: String::new(),
            updated: String::new(),
            tasks: vec![],
        };
        let t = TaskRecord {
            slot: 3,
            id: "0123456789ab".into(),
            node: "n".into(),
        };
        assert_eq!(r.task_name(&t), "my-nginx.3.0123456789ab");
        assert!(r.task_name(&t).len() <= 64);
        assert_eq!(r.aliases(), ["my-nginx", "tasks.my-nginx"]);
    }
}
