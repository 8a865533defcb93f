//! The Docker engine as a source, doing Registrator's job: every running
//! container's ports become instances on signpost's own node, named by
//! Registrator's `SERVICE_*` conventions (env vars and labels, labels win),
//! with Docker's own HEALTHCHECK as a check.
//!
//! The loop: subscribe to the engine's container events first, then list
//! and inspect the running containers and replace every Docker entry with
//! what they give (a resync: gone ones removed, new ones added), then apply
//! each event as it comes by inspecting its container again. When the engine
//! goes away the entries stay as they were (DNS keeps answering the last
//! known containers) and the loop reconnects with backoff and jitter, then
//! resyncs. Nothing of this source is stored: a restart reads the engine
//! afresh, so no registration outlives its container.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bollard::models::{ContainerInspectResponse, EventMessage};
use bollard::query_parameters::{EventsOptions, ListContainersOptions};
use bollard::Docker;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::locks::MutexExt;
use crate::registry::definition::ServiceDef;
use crate::registry::{Check, CheckKind, Health, Instance, InstanceKey, Registry, Source};
pub use stats::DockerStats;

mod mapping;
mod stats;

pub use mapping::{contribution, OwnContainer};

/// The Docker engine to follow, and Registrator's address choices.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// `unix:///path` or `tcp://host:port` / `http://host:port`.
    pub url: String,
    /// Published ports are registered at this address. [default: the node
    /// address]
    pub host_ip: Option<IpAddr>,
    /// Exposed ports at the container's address instead.
    pub internal: bool,
    /// The network to take the container's address from.
    pub network: Option<String>,
}

/// The engine's default socket.
pub const DEFAULT_DOCKER: &str = "unix:///var/run/docker.sock";

/// What one container contributes: its instances and their checks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Contribution {
    pub instances: Vec<Instance>,
    pub checks: Vec<Check>,
    /// Why a port was skipped (a bad SERVICE_* value), for the log.
    pub skipped: Vec<String>,
}

/// The state `/v1/signpost/docker` shows.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerStatus {
    pub url: String,
    pub connected: bool,
    pub api_version: String,
    pub containers: usize,
    pub instances: usize,
    pub events: u64,
    pub resyncs: u64,
    pub last_error: Option<String>,
    /// Seconds since the engine last answered (0 while connected).
    pub disconnected_for_seconds: u64,
}

/// The source's handle: config, its status, and the containers it knows.
pub struct DockerSync {
    config: DockerConfig,
    /// The address published ports are registered at.
    host_ip: IpAddr,
    node: String,
    /// std mutexes: held only to copy or replace, never across an await.
    status: Mutex<DockerStatus>,
    disconnected_since: Mutex<Option<Instant>>,
    /// Container ID to what it registered, so an event replaces exactly
    /// that container's entries.
    known: Mutex<HashMap<String, Contribution>>,
    stats: DockerStats,
    /// The container signpost itself runs in, when it runs in one.
    own: Option<OwnContainer>,
}

/// Reconnect backoff: from 250 ms, doubling, to 5 s, with jitter (the
/// engine is local: trying it is cheap, and being back soon matters).
const BACKOFF_MIN: Duration = Duration::from_millis(250);

const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The earlier of two event times, either of which may be unknown.
fn earliest(a: Option<SystemTime>, b: Option<SystemTime>) -> Option<SystemTime> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Containers inspected at once while following events.
const INSPECTIONS: usize = 8;

/// A container as it is now, if it runs: its state decides, whatever the
/// event said (an event may be late, and `kill` with a harmless signal
/// stops nothing). Gone (404) or stopped: `None`.
async fn inspect(docker: &Docker, id: &str) -> Result<Option<ContainerInspectResponse>, String> {
    match docker.inspect_container(id, None).await {
        Ok(info) if running(&info) => Ok(Some(info)),
        Ok(_) => Ok(None),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(format!("cannot inspect container {id}: {e}")),
    }
}

impl DockerSync {
    pub fn new(
        config: DockerConfig,
        node_address: IpAddr,
        node: String,
        stats: DockerStats,
    ) -> Self {
        let host_ip = config.host_ip.unwrap_or(node_address);
        DockerSync {
            status: Mutex::new(DockerStatus {
                url: config.url.clone(),
                ..Default::default()
            }),
            config,
            host_ip,
            node,
            disconnected_since: Mutex::new(Some(Instant::now())),
            known: Mutex::new(HashMap::new()),
            stats,
            own: None,
        }
    }

    /// Names signpost's own container (see [`OwnContainer`]).
    pub fn with_own(mut self, own: Option<OwnContainer>) -> Self {
        self.own = own;
        self
    }

    pub fn status(&self) -> DockerStatus {
        let mut s = self.status.locked().clone();
        s.disconnected_for_seconds = self
            .disconnected_since
            .locked()
            .map(|t| t.elapsed().as_secs())
            .unwrap_or(0);
        s
    }

    fn set_status(&self, f: impl FnOnce(&mut DockerStatus)) {
        f(&mut self.status.locked());
    }

    fn connect(&self) -> Result<Docker, bollard::errors::Error> {
        let url = &self.config.url;
        if let Some(path) = url.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 30, bollard::API_DEFAULT_VERSION)
        } else {
            Docker::connect_with_http(url, 30, bollard::API_DEFAULT_VERSION)
        }
    }

    /// Follows the engine until `stop` turns true.
    pub async fn run(self: Arc<Self>, registry: Arc<Registry>, mut stop: watch::Receiver<bool>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            let outcome = tokio::select! {
                r = self.session(&registry) => r,
                _ = stop.changed() => return,
            };
            let Err(e) = outcome;
            let was_connected = self.status().connected;
            self.set_status(|s| {
                s.connected = false;
                s.last_error = Some(e.clone());
            });
            self.stats.connected.set(0);
            self.stats.errors.inc();
            {
                let mut since = self.disconnected_since.locked();
                since.get_or_insert_with(Instant::now);
            }
            if was_connected {
                backoff = BACKOFF_MIN;
                tracing::warn!(
                    url = %self.config.url,
                    "lost the Docker engine: {e}; keeping the last known containers in DNS and reconnecting"
                );
            } else {
                tracing::debug!(url = %self.config.url, "Docker engine unreachable: {e}");
            }
            let jitter = backoff.mul_f64(fastrand::f64() / 2.0);
            tokio::select! {
                _ = tokio::time::sleep(backoff + jitter) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One connection: subscribe, resync, then follow events until the
    /// stream ends or fails.
    async fn session(&self, registry: &Registry) -> Result<std::convert::Infallible, String> {
        let docker = self
            .connect()
            .map_err(|e| format!("cannot connect: {e}"))?
            .negotiate_version()
            .await
            .map_err(|e| format!("cannot reach the engine: {e}"))?;
        let version = docker.client_version().to_string();
        // Subscribed before listing, so that no change between the list and
        // the stream is missed (an event for a container already listed
        // only inspects it again).
        let filters = HashMap::from([("type".to_string(), vec!["container".to_string()])]);
        let events = docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        let listed = docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mut wanted: HashMap<String, Contribution> = HashMap::new();
        for c in listed {
            let Some(id) = c.id else { continue };
            match docker.inspect_container(&id, None).await {
                Ok(info) => {
                    wanted.insert(id, self.contribution(&info));
                }
                // Gone between the list and the inspect.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => return Err(format!("cannot inspect container {id}: {e}")),
            }
        }
        let (containers, instances) = self.resync(registry, wanted).await;
        let was_down = self.disconnected_since.locked().take();
        self.set_status(|s| {
            s.connected = true;
            s.api_version = version.clone();
            s.resyncs += 1;
            s.containers = containers;
            s.instances = instances;
        });
        self.stats.connected.set(1);
        self.stats.resyncs.inc();
        match was_down {
            Some(t) if t.elapsed() > Duration::from_secs(1) => tracing::info!(
                url = %self.config.url, api = %version, containers, instances,
                "connected to the Docker engine after {}s; resynced", t.elapsed().as_secs()
            ),
            _ => tracing::info!(
                url = %self.config.url, api = %version, containers, instances,
                "following the Docker engine"
            ),
        }
        self.follow(&docker, registry, events).await
    }

    /// Applies the event stream. Events are coalesced per container: a
    /// container whose inspection is queued or running gets no second one
    /// for a later event, only one more after the running one (its state
    /// then decides). Up to [`INSPECTIONS`] containers are inspected at
    /// once, so a burst of starts is not read one container at a time.
    async fn follow(
        &self,
        docker: &Docker,
        registry: &Registry,
        mut events: impl futures_util::Stream<Item = Result<EventMessage, bollard::errors::Error>>
            + Unpin,
    ) -> Result<std::convert::Infallible, String> {
        // Container ID → the time of its oldest event not yet applied.
        let mut queued: HashMap<String, Option<SystemTime>> = HashMap::new();
        let mut order: std::collections::VecDeque<String> = Default::default();
        // Being inspected, and whether another event came meanwhile (then
        // the time of the oldest such).
        let mut running: HashMap<String, Option<Option<SystemTime>>> = HashMap::new();
        let mut inspections = futures_util::stream::FuturesUnordered::new();
        loop {
            while running.len() < INSPECTIONS {
                let Some(id) = order.pop_front() else { break };
                let since = queued.remove(&id).flatten();
                running.insert(id.clone(), None);
                inspections.push(async move {
                    let found = inspect(docker, &id).await;
                    (id, since, found)
                });
            }
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else {
                        return Err("the engine closed the event stream".into());
                    };
                    let event = event.map_err(|e| format!("event stream failed: {e}"))?;
                    let Some(id) = self.relevant(&event) else { continue };
                    let at = event
                        .time_nano
                        .map(|n| SystemTime::UNIX_EPOCH + Duration::from_nanos(n.max(0) as u64));
                    if let Some(again) = running.get_mut(&id) {
                        *again = Some(earliest(again.flatten(), at));
                    } else if let Some(since) = queued.get_mut(&id) {
                        *since = earliest(*since, at);
                    } else {
                        queued.insert(id.clone(), at);
                        order.push_back(id);
                    }
                }
                Some((id, since, found)) = inspections.next(), if !inspections.is_empty() => {
                    let contribution = found?.map(|info| self.contribution(&info));
                    self.replace(registry, &id, contribution).await;
                    if let Some(at) = since {
                        if let Ok(lag) = SystemTime::now().duration_since(at) {
                            self.stats.event_to_dns.observe(lag.as_secs_f64());
                        }
                    }
                    if let Some(Some(again)) = running.remove(&id) {
                        queued.insert(id.clone(), again);
                        order.push_front(id);
                    }
                }
            }
        }
    }

    /// The container an event is about, if the event can change what it
    /// registers (counted).
    fn relevant(&self, event: &EventMessage) -> Option<String> {
        let id = event.actor.as_ref().and_then(|a| a.id.clone())?;
        let action = event.action.clone().unwrap_or_default();
        let relevant = [
            "start",
            "die",
            "stop",
            "kill",
            "destroy",
            "pause",
            "unpause",
            "rename",
            "restart",
            "health_status",
            "oom",
        ]
        .iter()
        .any(|a| action == *a || action.starts_with(&format!("{a}:")));
        if !relevant {
            return None;
        }
        self.stats.events.inc();
        self.set_status(|s| s.events += 1);
        Some(id)
    }

    /// Replaces one container's entries with `new` (none: it is gone).
    ///
    /// In a cluster the entries are every member's (written through etcd,
    /// under this member's node), so a container on one host is found from
    /// all; otherwise they are local.
    async fn replace(&self, registry: &Registry, id: &str, new: Option<Contribution>) {
        let old = self.known.locked().remove(id).unwrap_or_default();
        let new = new.unwrap_or_default();
        if old == new {
            if !new.instances.is_empty() {
                self.known.locked().insert(id.to_string(), new);
            }
            return;
        }
        for why in &new.skipped {
            tracing::warn!(container = %short(id), "not registered: {why}");
        }
        registry
            .write_agent(|txn| {
                for inst in &old.instances {
                    if !new.instances.iter().any(|i| i.key() == inst.key()) {
                        txn.remove_instance(&inst.key());
                    }
                }
                for c in &old.checks {
                    if !new.checks.iter().any(|n| n.id == c.id) {
                        txn.remove_check(&c.node, &c.id);
                    }
                }
                for inst in &new.instances {
                    let clash = txn
                        .state()
                        .instance(&inst.key())
                        .is_some_and(|i| i.source != Source::Docker);
                    if clash {
                        tracing::warn!(
                            container = %short(id), service_id = %inst.id,
                            "not registered: an entry from another source has this service ID"
                        );
                        continue;
                    }
                    txn.upsert_instance(inst.clone());
                }
                for c in &new.checks {
                    if txn
                        .state()
                        .instance(&InstanceKey::new(
                            &c.node,
                            c.service_id.as_deref().unwrap_or(""),
                        ))
                        .is_some_and(|i| i.source == Source::Docker)
                    {
                        txn.upsert_check(c.clone());
                    }
                }
            })
            .await;
        let mut known = self.known.locked();
        if !new.instances.is_empty() {
            known.insert(id.to_string(), new);
        }
        let (containers, instances) =
            (known.len(), known.values().map(|c| c.instances.len()).sum());
        drop(known);
        self.set_status(|s| {
            s.containers = containers;
            s.instances = instances;
        });
    }

    /// Makes the Docker entries exactly `wanted`: what is not there any
    /// more is removed, in one transaction with the additions.
    async fn resync(
        &self,
        registry: &Registry,
        wanted: HashMap<String, Contribution>,
    ) -> (usize, usize) {
        // This node's containers only: in a cluster the other members'
        // are theirs.
        let mut all = registry.read_latest(|s| s.keys_of(Source::Docker));
        all.instances.retain(|k| *k.node == *self.node);
        all.checks.retain(|(node, _)| *node == self.node);
        all.nodes.clear();
        let wanted: HashMap<String, Contribution> = wanted
            .into_iter()
            .filter(|(_, c)| !c.instances.is_empty() || !c.skipped.is_empty())
            .collect();
        registry
            .write_agent(|txn| {
                let mut stale = all.clone();
                for (id, c) in &wanted {
                    for why in &c.skipped {
                        tracing::warn!(container = %short(id), "not registered: {why}");
                    }
                    for inst in &c.instances {
                        if txn
                            .state()
                            .instance(&inst.key())
                            .is_some_and(|i| i.source != Source::Docker)
                        {
                            continue;
                        }
                        stale.instances.remove(&inst.key());
                        txn.upsert_instance(inst.clone());
                    }
                    for check in &c.checks {
                        stale.checks.remove(&(check.node.clone(), check.id.clone()));
                        txn.upsert_check(check.clone());
                    }
                }
                txn.remove_stale(Source::Docker, &stale);
            })
            .await;
        let instances = wanted.values().map(|c| c.instances.len()).sum();
        let containers = wanted.len();
        *self.known.locked() = wanted;
        (containers, instances)
    }

    /// Registrator's mapping of one container.
    pub fn contribution(&self, info: &ContainerInspectResponse) -> Contribution {
        contribution(
            info,
            &self.node,
            self.host_ip,
            &self.config,
            self.own.as_ref(),
        )
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn running(info: &ContainerInspectResponse) -> bool {
    info.state.as_ref().and_then(|s| s.running).unwrap_or(false)
}
