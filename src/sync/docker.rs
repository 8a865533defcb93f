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
use crate::metrics::Metrics;
use crate::registry::definition::ServiceDef;
use crate::registry::{Check, CheckKind, Health, Instance, InstanceKey, Registry, Source};

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
    metrics: Arc<Metrics>,
    /// The container signpost itself runs in, when it runs in one.
    own: Option<OwnContainer>,
}

/// signpost's own container: registered at the ports signpost serves only
/// (an image's `EXPOSE` may name others, which nothing listens on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContainer {
    pub id: String,
    /// (container port, udp) pairs signpost listens on.
    pub served: Vec<(u16, bool)>,
}

impl OwnContainer {
    /// The container this process runs in, read from `/proc/self/mountinfo`
    /// (Docker mounts the container's `hostname` and `resolv.conf` from
    /// `.../containers/<id>/`); `None` outside a container.
    pub fn detect(served: Vec<(u16, bool)>) -> Option<OwnContainer> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let id = container_id_in_mountinfo(&text)?;
        tracing::info!(
            "running in container {}: registering it at the ports signpost serves only",
            short(&id)
        );
        Some(OwnContainer { id, served })
    }
}

/// The 64-hex-digit ID in a `/containers/<id>/` mount source, if any.
fn container_id_in_mountinfo(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.split("/containers/").nth(1)?;
        let id = rest.split('/').next()?;
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

/// Reconnect backoff: from 250 ms, doubling, to 5 s, with jitter (the
/// engine is local: trying it is cheap, and being back soon matters).
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl DockerSync {
    pub fn new(
        config: DockerConfig,
        node_address: IpAddr,
        node: String,
        metrics: Arc<Metrics>,
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
            metrics,
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
            self.metrics.docker_connected.set(0);
            self.metrics.docker_errors.inc();
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
        let mut events = docker.events(Some(EventsOptions {
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
        let (containers, instances) = self.resync(registry, wanted);
        let was_down = self.disconnected_since.locked().take();
        self.set_status(|s| {
            s.connected = true;
            s.api_version = version.clone();
            s.resyncs += 1;
            s.containers = containers;
            s.instances = instances;
        });
        self.metrics.docker_connected.set(1);
        self.metrics.docker_resyncs.inc();
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
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| format!("event stream failed: {e}"))?;
            self.apply_event(&docker, registry, event).await?;
        }
        Err("the engine closed the event stream".into())
    }

    async fn apply_event(
        &self,
        docker: &Docker,
        registry: &Registry,
        event: EventMessage,
    ) -> Result<(), String> {
        let Some(id) = event.actor.as_ref().and_then(|a| a.id.clone()) else {
            return Ok(());
        };
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
            return Ok(());
        }
        self.metrics.docker_events.inc();
        self.set_status(|s| s.events += 1);
        // The container's state now decides, whatever the event said: an
        // event may be late, and `kill` with a harmless signal stops nothing.
        let contribution = match docker.inspect_container(&id, None).await {
            Ok(info) if running(&info) => Some(self.contribution(&info)),
            Ok(_) => None,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => None,
            Err(e) => return Err(format!("cannot inspect container {id}: {e}")),
        };
        self.replace(registry, &id, contribution);
        if let Some(nanos) = event.time_nano {
            let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
            if let Ok(lag) = SystemTime::now().duration_since(at) {
                self.metrics.docker_event_to_dns.observe(lag.as_secs_f64());
            }
        }
        Ok(())
    }

    /// Replaces one container's entries with `new` (none: it is gone).
    fn replace(&self, registry: &Registry, id: &str, new: Option<Contribution>) {
        let mut known = self.known.locked();
        let old = known.remove(id).unwrap_or_default();
        let new = new.unwrap_or_default();
        if old == new {
            if !new.instances.is_empty() {
                known.insert(id.to_string(), new);
            }
            return;
        }
        for why in &new.skipped {
            tracing::warn!(container = %short(id), "not registered: {why}");
        }
        registry.write(|txn| {
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
        });
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
    fn resync(&self, registry: &Registry, wanted: HashMap<String, Contribution>) -> (usize, usize) {
        let mut stale = registry.read_latest(|s| s.keys_of(Source::Docker));
        let wanted: HashMap<String, Contribution> = wanted
            .into_iter()
            .filter(|(_, c)| !c.instances.is_empty() || !c.skipped.is_empty())
            .collect();
        registry.write(|txn| {
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
            stale.nodes.clear();
            txn.remove_stale(Source::Docker, &stale);
        });
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

/// The container's `SERVICE_*` settings: env vars, then labels over them.
fn settings(info: &ContainerInspectResponse) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(config) = &info.config {
        for e in config.env.iter().flatten() {
            if let Some((k, v)) = e.split_once('=') {
                if k.starts_with("SERVICE_") {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        for (k, v) in config.labels.iter().flatten() {
            if k.starts_with("SERVICE_") {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

/// A port a container offers: the container's port and protocol, and
/// where it is reached.
struct Port {
    private: u16,
    udp: bool,
    address: String,
    port: u16,
}

fn ports(info: &ContainerInspectResponse, host_ip: IpAddr, config: &DockerConfig) -> Vec<Port> {
    let Some(net) = &info.network_settings else {
        return Vec::new();
    };
    let parse = |key: &str| -> Option<(u16, bool)> {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        Some((port.parse().ok()?, proto == "udp"))
    };
    let mut out: Vec<Port> = Vec::new();
    if config.internal {
        let address = container_address(info, config.network.as_deref());
        let Some(address) = address else {
            return Vec::new();
        };
        let exposed = info
            .config
            .as_ref()
            .and_then(|c| c.exposed_ports.as_ref())
            .map(|e| e.iter().map(|k| k.to_string()).collect::<Vec<_>>())
            .unwrap_or_default();
        for key in exposed {
            if let Some((private, udp)) = parse(&key) {
                out.push(Port {
                    private,
                    udp,
                    address: address.clone(),
                    port: private,
                });
            }
        }
    } else {
        for (key, bindings) in net.ports.iter().flatten() {
            let Some((private, udp)) = parse(key) else {
                continue;
            };
            // One instance a published port: the IPv4 binding when the
            // engine published it on both families.
            let mut bindings: Vec<_> = bindings.iter().flatten().collect();
            bindings.sort_by_key(|b| b.host_ip.as_deref().is_some_and(|ip| ip.contains(':')));
            let Some(b) = bindings.first() else { continue };
            let Some(port) = b.host_port.as_deref().and_then(|p| p.parse().ok()) else {
                continue;
            };
            let address = match b.host_ip.as_deref() {
                Some(ip) if !ip.is_empty() && ip != "0.0.0.0" && ip != "::" => ip.to_string(),
                _ => host_ip.to_string(),
            };
            out.push(Port {
                private,
                udp,
                address,
                port,
            });
        }
    }
    out.sort_by_key(|p| (p.private, p.udp));
    out
}

/// The container's address on `network` (or on its only or first network
/// by name), IPv4 first, else its IPv6 address.
fn container_address(info: &ContainerInspectResponse, network: Option<&str>) -> Option<String> {
    let net = info.network_settings.as_ref()?;
    let networks = net.networks.as_ref();
    let endpoint = match network {
        Some(name) => networks.and_then(|n| n.get(name)),
        None => networks.and_then(|n| {
            let mut names: Vec<&String> = n.keys().collect();
            names.sort();
            names.first().and_then(|k| n.get(*k))
        }),
    }?;
    let v4 = endpoint.ip_address.clone().filter(|a| !a.is_empty());
    let v6 = endpoint
        .global_ipv6_address
        .clone()
        .filter(|a| !a.is_empty());
    v4.or(v6)
}

/// The image's base name: `registry:5000/team/web:1.2` is `web`.
fn image_name(info: &ContainerInspectResponse) -> String {
    let image = info
        .config
        .as_ref()
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or(&image);
    let base = last.split(['@', ':']).next().unwrap_or(last);
    base.to_string()
}

/// Registrator's mapping, as a pure function of the inspect data.
pub fn contribution(
    info: &ContainerInspectResponse,
    node: &str,
    host_ip: IpAddr,
    config: &DockerConfig,
    own: Option<&OwnContainer>,
) -> Contribution {
    let mut out = Contribution::default();
    if !running(info) {
        return out;
    }
    let own = own.filter(|o| info.id.as_deref() == Some(o.id.as_str()));
    let set = settings(info);
    let truthy = |v: Option<&String>| v.is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
    if truthy(set.get("SERVICE_IGNORE")) {
        return out;
    }
    let container_name = info
        .name
        .as_deref()
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    let mut ports = ports(info, host_ip, config);
    if let Some(own) = own {
        ports.retain(|p| {
            let served = own.served.contains(&(p.private, p.udp));
            if !served {
                out.skipped.push(format!(
                    "port {}{}: signpost's own container, and signpost does not listen there",
                    p.private,
                    if p.udp { "/udp" } else { "" }
                ));
            }
            served
        });
    }
    let many = ports.len() > 1;
    let paused = info.state.as_ref().and_then(|s| s.paused).unwrap_or(false);
    let health = info.state.as_ref().and_then(|s| s.health.as_ref());
    for p in &ports {
        let pk = |key: &str| set.get(&format!("SERVICE_{}_{key}", p.private));
        let get = |key: &str| pk(key).or_else(|| set.get(&format!("SERVICE_{key}")));
        if truthy(pk("IGNORE")) {
            continue;
        }
        let name = match (pk("NAME"), set.get("SERVICE_NAME")) {
            (Some(n), _) => n.clone(),
            (None, Some(n)) if many => format!("{n}-{}", p.private),
            (None, Some(n)) => n.clone(),
            (None, None) if many => format!("{}-{}", image_name(info), p.private),
            (None, None) => image_name(info),
        };
        let id = match (pk("ID"), set.get("SERVICE_ID")) {
            (Some(id), _) => id.clone(),
            (None, Some(id)) if !many => id.clone(),
            _ => format!(
                "{node}:{container_name}:{}{}",
                p.private,
                if p.udp { ":udp" } else { "" }
            ),
        };
        let tags: Vec<String> = get("TAGS")
            .map(|t| {
                t.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        // Any other SERVICE_<key> (or SERVICE_<port>_<key>) goes to Meta.
        let reserved = ["NAME", "ID", "TAGS", "IGNORE"];
        let mut meta = serde_json::Map::new();
        for (k, v) in &set {
            let rest = &k["SERVICE_".len()..];
            let key = match rest.split_once('_') {
                Some((port, key)) if port.parse::<u16>().is_ok() => {
                    if port != p.private.to_string() {
                        continue;
                    }
                    key
                }
                _ if rest.chars().next().is_some_and(|c| c.is_ascii_digit()) => continue,
                _ => rest,
            };
            if reserved.contains(&key) || key.starts_with("CHECK_") || key.is_empty() {
                continue;
            }
            meta.insert(key.to_ascii_lowercase(), json!(v));
        }
        let mut def = json!({
            "Name": name,
            "ID": id,
            "Address": p.address,
            "Port": p.port,
            "Tags": tags,
            "Meta": meta,
        });
        if let Some(check) = check_def(&get, &p.address, p.port) {
            def["Check"] = check;
        }
        let def: ServiceDef = match serde_json::from_value(def) {
            Ok(d) => d,
            Err(e) => {
                out.skipped.push(format!("port {}: {e}", p.private));
                continue;
            }
        };
        let (inst, checks) = def.into_parts(node, Source::Docker);
        let state_check = |status: Health, output: String| Check {
            node: node.to_string(),
            id: format!("docker:{}", inst.id),
            name: "Docker container".into(),
            status,
            output,
            notes: format!("container {container_name}"),
            service_id: Some(inst.id.clone()),
            service_name: inst.name.clone(),
            kind: CheckKind::Static,
            thresholds: Default::default(),
            source: Source::Docker,
            create_index: 0,
            modify_index: 0,
        };
        if paused {
            out.checks
                .push(state_check(Health::Critical, "container is paused".into()));
        } else if let Some(h) = health {
            let status = h.status.map(|s| s.to_string()).unwrap_or_default();
            let last = h
                .log
                .as_ref()
                .and_then(|l| l.last())
                .and_then(|l| l.output.clone())
                .unwrap_or_default();
            let (health, output) = match status.as_str() {
                "healthy" => (
                    Health::Passing,
                    format!("HEALTHCHECK healthy: {}", last.trim()),
                ),
                "unhealthy" => (
                    Health::Critical,
                    format!("HEALTHCHECK unhealthy: {}", last.trim()),
                ),
                "starting" => (
                    Health::Critical,
                    "HEALTHCHECK starting: not answered until healthy".to_string(),
                ),
                _ => (Health::Passing, String::new()),
            };
            if !status.is_empty() && status != "none" {
                out.checks.push(state_check(
                    health,
                    crate::registry::model::cap_output(output),
                ));
            }
        }
        out.checks.extend(checks);
        out.instances.push(inst);
    }
    out
}

/// Registrator's `SERVICE_CHECK_*` keys as a check definition.
fn check_def<'a>(
    get: &impl Fn(&str) -> Option<&'a String>,
    address: &str,
    port: u16,
) -> Option<Value> {
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let mut check = if let Some(path) = get("CHECK_HTTP") {
        json!({"HTTP": format!("http://{host}:{port}{path}")})
    } else if let Some(path) = get("CHECK_HTTPS") {
        json!({"HTTP": format!("https://{host}:{port}{path}"), "TLSSkipVerify": true})
    } else if get("CHECK_TCP").is_some() {
        json!({"TCP": format!("{host}:{port}")})
    } else if let Some(ttl) = get("CHECK_TTL") {
        json!({"TTL": ttl})
    } else {
        return None;
    };
    if check.get("TTL").is_none() {
        check["Interval"] = json!(get("CHECK_INTERVAL").map(String::as_str).unwrap_or("10s"));
    }
    if let Some(t) = get("CHECK_TIMEOUT") {
        check["Timeout"] = json!(t);
    }
    if let Some(s) = get("CHECK_INITIAL_STATUS") {
        check["Status"] = json!(s);
    }
    if let Some(d) = get("CHECK_DEREGISTER_AFTER") {
        check["DeregisterCriticalServiceAfter"] = json!(d);
    }
    Some(check)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An inspect response as the engine sends it, trimmed to what the
    /// mapping reads.
    fn inspect(
        id: &str,
        env: &[&str],
        exposed: &[&str],
        published: &[(&str, &str)],
    ) -> ContainerInspectResponse {
        let exposed: serde_json::Map<String, serde_json::Value> =
            exposed.iter().map(|p| (p.to_string(), json!({}))).collect();
        let ports: serde_json::Map<String, serde_json::Value> = published
            .iter()
            .map(|(p, host)| {
                (
                    p.to_string(),
                    json!([{"HostIp": "0.0.0.0", "HostPort": host}]),
                )
            })
            .collect();
        serde_json::from_value(json!({
            "Id": id,
            "Name": "/app-1",
            "State": {"Running": true, "Paused": false},
            "Config": {"Image": "registry.example/team/app:1.2", "Env": env, "ExposedPorts": exposed},
            "NetworkSettings": {
                "Ports": ports,
                "Networks": {"apps": {"IPAddress": "10.9.0.7"}}
            }
        }))
        .unwrap()
    }

    fn config(internal: bool) -> DockerConfig {
        DockerConfig {
            url: String::new(),
            host_ip: None,
            internal,
            network: None,
        }
    }

    fn names(c: &Contribution) -> Vec<(String, String, u16)> {
        c.instances
            .iter()
            .map(|i| (i.name.clone(), i.address.clone(), i.port))
            .collect()
    }

    #[test]
    fn registrators_mapping() {
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        /// What, the inspect data, internal, and the (name, address, port)s.
        type Case<'a> = (
            &'a str,
            ContainerInspectResponse,
            bool,
            Vec<(&'a str, &'a str, u16)>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "one published port: the image's base name",
                inspect("a", &[], &["80/tcp"], &[("80/tcp", "8080")]),
                false,
                vec![("app", "192.0.2.1", 8080)],
            ),
            (
                "SERVICE_NAME, and an exposed port never published is left out",
                inspect(
                    "a",
                    &["SERVICE_NAME=web"],
                    &["80/tcp", "81/tcp"],
                    &[("80/tcp", "8080")],
                ),
                false,
                vec![("web", "192.0.2.1", 8080)],
            ),
            (
                "several ports: the name gets the port",
                inspect(
                    "a",
                    &["SERVICE_NAME=web"],
                    &[],
                    &[("80/tcp", "8080"), ("443/tcp", "8443")],
                ),
                false,
                vec![
                    ("web-443", "192.0.2.1", 8443),
                    ("web-80", "192.0.2.1", 8080),
                ],
            ),
            (
                "SERVICE_<port>_NAME and SERVICE_<port>_IGNORE",
                inspect(
                    "a",
                    &["SERVICE_80_NAME=front", "SERVICE_443_IGNORE=1"],
                    &[],
                    &[("80/tcp", "8080"), ("443/tcp", "8443")],
                ),
                false,
                vec![("front", "192.0.2.1", 8080)],
            ),
            (
                "SERVICE_IGNORE",
                inspect("a", &["SERVICE_IGNORE=true"], &[], &[("80/tcp", "8080")]),
                false,
                vec![],
            ),
            (
                "internal: exposed ports at the container's address",
                inspect("a", &["SERVICE_NAME=web"], &["8080/tcp"], &[]),
                true,
                vec![("web", "10.9.0.7", 8080)],
            ),
        ];
        for (what, info, internal, want) in cases {
            let got = contribution(&info, "n1", host, &config(internal), None);
            let mut got = names(&got);
            got.sort();
            let want: Vec<(String, String, u16)> = want
                .into_iter()
                .map(|(n, a, p)| (n.to_string(), a.to_string(), p))
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn its_own_container_is_registered_at_served_ports_only() {
        let id = "f".repeat(64);
        let info = inspect(&id, &[], &["8600/udp", "8600/tcp", "53/udp", "53/tcp"], &[]);
        let own = OwnContainer {
            id: id.clone(),
            served: vec![(53, true), (53, false), (8500, false)],
        };
        let host: IpAddr = "192.0.2.1".parse().unwrap();
        let got = contribution(&info, "n1", host, &config(true), Some(&own));
        let mut ports: Vec<u16> = got.instances.iter().map(|i| i.port).collect();
        ports.sort();
        assert_eq!(ports, [53, 53]);
        assert_eq!(got.skipped.len(), 2, "{:?}", got.skipped);
        // Another container with the same ports keeps them all.
        let other = inspect(&"e".repeat(64), &[], &["8600/udp", "8600/tcp"], &[]);
        assert_eq!(
            contribution(&other, "n1", host, &config(true), Some(&own))
                .instances
                .len(),
            2
        );
    }

    #[test]
    fn own_container_id_from_mountinfo() {
        let id = "0123456789abcdef".repeat(4);
        let text = format!(
            "590 570 0:50 / / rw,relatime - overlay overlay rw\n\
             601 590 8:1 /var/lib/docker/containers/{id}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_in_mountinfo(&text), Some(id));
        assert_eq!(
            container_id_in_mountinfo("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
    }
}
