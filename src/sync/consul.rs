//! Sidecar mode: mirror a Consul agent's catalog and health into the
//! registry with blocking queries, so DNS answers come from memory.
//!
//! One watcher follows `/v1/catalog/services` for the set of services; one
//! watcher per service follows `/v1/health/service/:name`. Each keeps
//! Consul's blocking-query contract: the index is reset to 0 when it goes
//! backwards, an index below 1 is taken as 1, and a loop never runs more
//! often than every [`MIN_INTERVAL`]. At most `max_watches` requests are
//! open at once (a Consul agent serves 200 per client by default); with
//! more services than that, watchers take turns with short waits sized so
//! that each service is read again about every [`ROTATION`]: a change then
//! shows within about that long instead of at once, and the agent sees
//! more (short) requests. Raise `consul_max_watches` together with the
//! agent's `http_max_conns_per_client` to keep every watch blocking.
//!
//! When the agent is unreachable or answers 5xx, the last known view keeps
//! serving (instances known to be unhealthy stay out) while the watchers
//! retry with exponential backoff and jitter. Until the first full sync the
//! DNS side answers SERVFAIL instead of a false NXDOMAIN, and `/ready` says
//! not ready.
//!
//! Other datacenters are watched on demand: the first query for
//! `name.service.dc2.consul` starts a watcher with `?dc=dc2`, and a watcher
//! unused for [`REMOTE_IDLE`] is dropped with its entries. A datacenter the
//! agent does not list is never asked about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::consul_client::ConsulClient;
use crate::dns::handler::Remote;
use crate::locks::{MutexExt, RwLockExt};
use crate::metrics::Metrics;
use crate::registry::{
    Check, CheckKind, Connect, Health, Instance, InstanceKey, Node, Registry, Source,
    TaggedAddress, Thresholds, Weights,
};

/// The Consul agent to mirror.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// `http(s)://host:port`, no trailing slash.
    pub url: String,
    pub token: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// Certificate and key, both or neither.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Below a Consul agent's default `http_max_conns_per_client` (200).
    pub max_watches: usize,
}

/// A loop never starts requests closer together than this.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Consul's default blocking wait.
const LONG_WAIT: Duration = Duration::from_secs(300);
/// When watchers outnumber the slots they take turns with short waits,
/// sized so that every service is read again about this often.
const ROTATION: Duration = Duration::from_secs(2);
/// The shortest of those waits.
const MIN_SHARED_WAIT: Duration = Duration::from_millis(100);
/// A remote datacenter's service unused this long stops being watched.
pub const REMOTE_IDLE: Duration = Duration::from_secs(600);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot reach the consul agent: {0}")]
    Unreachable(String),
    #[error("consul agent answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("consul agent sent a body signpost cannot read: {0}")]
    Body(String),
    #[error("cannot set up the consul client: {0}")]
    Setup(String),
}

/// An entry of `/v1/health/service/:name`, as Consul sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    node: CNode,
    service: CService,
    #[serde(default)]
    checks: Vec<CCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CNode {
    node: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    meta: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CService {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default, deserialize_with = "null_default")]
    tags: Vec<String>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default, deserialize_with = "null_default")]
    meta: BTreeMap<String, String>,
    #[serde(default)]
    weights: Option<CWeights>,
    #[serde(default, deserialize_with = "null_default")]
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    #[serde(default)]
    enable_tag_override: bool,
    /// "connect-proxy" for a Connect sidecar proxy.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    proxy: Option<CProxy>,
    #[serde(default)]
    connect: Option<CConnect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CProxy {
    destination_service_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CConnect {
    native: bool,
}

impl CService {
    fn connect(&self) -> Option<Box<Connect>> {
        let destination = self
            .proxy
            .as_ref()
            .map(|p| p.destination_service_name.as_str());
        match (self.kind.as_str(), destination) {
            ("connect-proxy", Some(d)) if !d.is_empty() => Some(Box::new(Connect::Proxy {
                destination: d.to_string(),
            })),
            _ if self.connect.as_ref().is_some_and(|c| c.native) => Some(Box::new(Connect::Native)),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CWeights {
    passing: i64,
    warning: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CCheck {
    node: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    #[serde(default)]
    name: String,
    status: String,
    #[serde(default)]
    notes: String,
    #[serde(default)]
    output: String,
    #[serde(rename = "ServiceID", default)]
    service_id: String,
    #[serde(default)]
    service_name: String,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The next index to ask with: 0 (a full read) when Consul's went
/// backwards, and never below 1 otherwise.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// Exponential backoff with full jitter.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the sync stands, for `/v1/signpost/sync` and the logs.
#[derive(Debug, Serialize)]
pub struct Status {
    pub consul: String,
    pub synced: bool,
    /// Seconds since the agent last answered; `None` before any answer.
    pub last_contact_seconds_ago: Option<f64>,
    /// Seconds since requests started failing; `None` while they succeed.
    pub failing_for_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub services_watched: usize,
    pub remote_watches: Vec<String>,
    pub datacenters: Vec<String>,
}

struct RemoteWatch {
    last_used: Instant,
    task: AbortHandle,
    /// Resolved once the first answer is in the registry.
    first: Option<tokio::sync::watch::Receiver<bool>>,
}

pub struct ConsulSync {
    cfg: ConsulConfig,
    /// The agent's API, shared with the CLI's commands.
    client: ConsulClient,
    registry: Arc<Registry>,
    local_dc: String,
    metrics: Arc<Metrics>,
    synced: AtomicBool,
    started: Instant,
    /// std Mutexes below: held for a read or an update, never across .await.
    last_ok: Mutex<Option<Instant>>,
    failing_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    slots: Semaphore,
    /// Service watchers alive, local and remote, to choose the wait.
    watchers: AtomicUsize,
    datacenters: RwLock<BTreeSet<String>>,
    remote: Mutex<HashMap<(String, String), RemoteWatch>>,
    /// Watcher tasks, aborted at shutdown.
    tasks: Mutex<JoinSet<()>>,
    requests: AtomicU64,
}

impl ConsulSync {
    pub fn new(
        cfg: ConsulConfig,
        registry: Arc<Registry>,
        local_dc: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<ConsulSync>, SyncError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("signpost/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| SyncError::Setup(format!("{}: {e}", ca.display())))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| SyncError::Setup(format!("{}: {e}", ca.display())))?;
            b = b.add_root_certificate(cert);
        }
        if let Some((cert, key)) = &cfg.client_identity {
            let mut pem = std::fs::read(cert)
                .map_err(|e| SyncError::Setup(format!("{}: {e}", cert.display())))?;
            pem.extend(
                std::fs::read(key)
                    .map_err(|e| SyncError::Setup(format!("{}: {e}", key.display())))?,
            );
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| SyncError::Setup(format!("client certificate: {e}")))?;
            b = b.identity(id);
        }
        let http = b.build().map_err(|e| SyncError::Setup(e.to_string()))?;
        let client = ConsulClient::new(&cfg.url, cfg.token.clone(), http);
        Ok(Arc::new(ConsulSync {
            slots: Semaphore::new(cfg.max_watches),
            cfg,
            client,
            registry,
            local_dc,
            metrics,
            synced: AtomicBool::new(false),
            started: Instant::now(),
            last_ok: Mutex::new(None),
            failing_since: Mutex::new(None),
            last_error: Mutex::new(None),
            watchers: AtomicUsize::new(0),
            datacenters: RwLock::new(BTreeSet::new()),
            remote: Mutex::new(HashMap::new()),
            tasks: Mutex::new(JoinSet::new()),
            requests: AtomicU64::new(0),
        }))
    }

    /// Starts following the agent.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = self.tasks.locked();
        tasks.spawn(Arc::clone(self).follow_services());
        tasks.spawn(Arc::clone(self).follow_datacenters());
        tasks.spawn(Arc::clone(self).expire_remote());
    }

    /// Stops every watcher.
    pub async fn shutdown(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.locked());
        tasks.shutdown().await;
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }

    /// Seconds since the agent last answered (since start before that).
    pub fn staleness(&self) -> f64 {
        let last = *self.last_ok.locked();
        last.unwrap_or(self.started).elapsed().as_secs_f64()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn status(&self) -> Status {
        let lock = |m: &Mutex<Option<Instant>>| *m.locked();
        Status {
            consul: self.cfg.url.clone(),
            synced: self.is_synced(),
            last_contact_seconds_ago: lock(&self.last_ok).map(|t| t.elapsed().as_secs_f64()),
            failing_for_seconds: lock(&self.failing_since).map(|t| t.elapsed().as_secs_f64()),
            last_error: self.last_error.locked().clone(),
            services_watched: self.watchers.load(Ordering::Relaxed),
            remote_watches: self
                .remote
                .locked()
                .keys()
                .map(|(dc, s)| format!("{s}.service.{dc}"))
                .collect(),
            datacenters: self.datacenters.read_locked().iter().cloned().collect(),
        }
    }

    fn succeeded(&self) {
        *self.last_ok.locked() = Some(Instant::now());
        let was_failing = self.failing_since.locked().take();
        if let Some(since) = was_failing {
            tracing::info!(
                "consul agent {} answers again after {:.1}s",
                self.cfg.url,
                since.elapsed().as_secs_f64()
            );
        }
    }

    fn failed(&self, e: &SyncError) {
        self.metrics.consul_errors.inc();
        *self.last_error.locked() = Some(e.to_string());
        let mut since = self.failing_since.locked();
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                "{e}; serving the last known view ({:.1}s old) and retrying",
                self.staleness()
            );
        }
    }

    /// A GET against the agent: (index, body, when the response arrived).
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        dc: Option<&str>,
        index: u64,
        wait: Duration,
    ) -> Result<(u64, T, Instant), SyncError> {
        // A first read carries no index (0 means "not blocking", and some
        // Consul-API servers hold any request that has one), as Consul's
        // own client does.
        let mut params = Vec::new();
        if index > 0 {
            params.push(format!("index={index}&wait={}ms", wait.as_millis()));
        }
        if let Some(dc) = dc {
            params.push(format!("dc={}", segment(dc)));
        }
        let mut url = path.to_string();
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        self.metrics.consul_requests.inc();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .client
            .call(
                reqwest::Method::GET,
                &url,
                None,
                Some(wait + wait / 16 + Duration::from_secs(10)),
            )
            .await
            .map_err(|e| SyncError::Unreachable(e.reason))?;
        let arrived = Instant::now();
        if !reply.is_success() {
            return Err(SyncError::Status {
                status: reply.status,
                body: reply.text(200),
            });
        }
        self.succeeded();
        let value = serde_json::from_slice(&reply.body)
            .map_err(|e| SyncError::Body(format!("{path}: {e}")))?;
        Ok((reply.index, value, arrived))
    }

    fn wait(&self) -> Duration {
        let (watchers, slots) = (self.watchers.load(Ordering::Relaxed), self.cfg.max_watches);
        if watchers <= slots {
            LONG_WAIT
        } else {
            (ROTATION * slots as u32 / watchers as u32).max(MIN_SHARED_WAIT)
        }
    }

    async fn follow_services(self: Arc<Self>) {
        let mut index = 0;
        let mut backoff = Backoff::new();
        let mut watchers: HashMap<String, AbortHandle> = HashMap::new();
        let mut set = JoinSet::new();
        loop {
            let started = Instant::now();
            let result = self
                .get::<BTreeMap<String, Vec<String>>>(
                    "/v1/catalog/services",
                    None,
                    index,
                    LONG_WAIT,
                )
                .await;
            let (returned, services, _) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            let mut firsts = Vec::new();
            for name in services.keys() {
                if !watchers.contains_key(name) {
                    let (tx, rx) = oneshot::channel();
                    let h =
                        set.spawn(Arc::clone(&self).watch_service(None, name.clone(), Some(tx)));
                    watchers.insert(name.clone(), h);
                    firsts.push(rx);
                }
            }
            let gone: Vec<String> = watchers
                .keys()
                .filter(|n| !services.contains_key(*n))
                .cloned()
                .collect();
            for name in gone {
                if let Some(h) = watchers.remove(&name) {
                    h.abort();
                }
                self.purge(None, &name);
            }
            while set.try_join_next().is_some() {}
            if !self.is_synced() {
                // The first full sync: every service read once.
                for rx in firsts {
                    let _ = rx.await;
                }
                self.synced.store(true, Ordering::SeqCst);
                self.metrics.consul_synced.set(1);
                tracing::info!(
                    services = services.len(),
                    "first sync from consul done in {:.2}s",
                    self.started.elapsed().as_secs_f64()
                );
            }
            index = next_index(index, returned);
            tokio::time::sleep_until(started + MIN_INTERVAL).await;
        }
    }

    async fn watch_service(
        self: Arc<Self>,
        dc: Option<String>,
        name: String,
        mut first: Option<oneshot::Sender<()>>,
    ) {
        struct Count<'a>(&'a AtomicUsize);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let _count = Count(&self.watchers);
        let path = format!("/v1/health/service/{}", segment(&name));
        let mut index = 0;
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let result = {
                let _slot = self.slots.acquire().await.expect("never closed");
                self.get::<Vec<Entry>>(&path, dc.as_deref(), index, self.wait())
                    .await
            };
            let (returned, entries, arrived) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            if returned != index || first.is_some() {
                self.apply(dc.as_deref(), &name, entries);
                self.metrics
                    .consul_change_to_dns
                    .observe(arrived.elapsed().as_secs_f64());
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            index = next_index(index, returned);
            tokio::time::sleep_until(started + MIN_INTERVAL).await;
        }
    }

    /// Writes one service's entries as Consul reported them, and removes
    /// what Consul no longer reports. Entries of other sources are never
    /// touched.
    fn apply(&self, dc: Option<&str>, name: &str, entries: Vec<Entry>) {
        let dc = dc.unwrap_or(&self.local_dc).to_ascii_lowercase();
        let lower = name.to_ascii_lowercase();
        self.registry.write(|txn| {
            let mut keep_instances = BTreeSet::new();
            let mut keep_checks = BTreeSet::new();
            for e in entries {
                let node_dc = if e.node.datacenter.is_empty() {
                    dc.clone()
                } else {
                    e.node.datacenter.to_ascii_lowercase()
                };
                let node_name = e.node.node.clone();
                if txn
                    .state()
                    .node(&node_name)
                    .is_none_or(|n| n.source == Source::Consul)
                {
                    txn.upsert_node(Node {
                        meta: e.node.meta,
                        tagged_addresses: e.node.tagged_addresses,
                        ..Node::new(node_name.clone(), e.node.address, node_dc, Source::Consul)
                    });
                }
                let key = InstanceKey::new(&node_name, &e.service.id);
                if txn
                    .state()
                    .instance(&key)
                    .is_some_and(|i| i.source != Source::Consul)
                {
                    continue;
                }
                let connect = e.service.connect();
                let weights = match e.service.weights {
                    Some(w) if w.passing > 0 => Weights {
                        passing: w.passing.clamp(1, u16::MAX as i64) as u16,
                        warning: w.warning.clamp(0, u16::MAX as i64) as u16,
                    },
                    _ => Weights::default(),
                };
                txn.upsert_instance(Instance {
                    node: node_name.clone(),
                    id: e.service.id.clone(),
                    name: e.service.service.clone(),
                    tags: e.service.tags,
                    address: e.service.address,
                    port: e.service.port,
                    meta: e.service.meta,
                    weights,
                    tagged_addresses: e.service.tagged_addresses,
                    enable_tag_override: e.service.enable_tag_override,
                    connect,
                    source: Source::Consul,
                    create_index: 0,
                    modify_index: 0,
                });
                keep_instances.insert(key);
                for c in e.checks {
                    if txn
                        .state()
                        .check(&c.node, &c.check_id)
                        .is_some_and(|o| o.source != Source::Consul)
                    {
                        continue;
                    }
                    keep_checks.insert((c.node.clone(), c.check_id.clone()));
                    // Consul's maintenance status hides like critical.
                    let status = Health::parse(&c.status).unwrap_or(Health::Critical);
                    txn.upsert_check(Check {
                        node: c.node,
                        id: c.check_id,
                        name: c.name,
                        status,
                        output: c.output,
                        notes: c.notes,
                        service_id: (!c.service_id.is_empty()).then_some(c.service_id),
                        service_name: c.service_name,
                        kind: CheckKind::Static,
                        thresholds: Thresholds::default(),
                        source: Source::Consul,
                        create_index: 0,
                        modify_index: 0,
                    });
                }
            }
            // What Consul stopped reporting.
            let state = txn.state();
            let gone: Vec<InstanceKey> = mirrored(state, &lower, &dc)
                .into_iter()
                .filter(|k| !keep_instances.contains(k))
                .collect();
            let stale_checks: Vec<(String, String)> = keep_instances
                .iter()
                .flat_map(|k| state.checks_of(k))
                .filter(|c| c.source == Source::Consul)
                .map(|c| (c.node.clone(), c.id.clone()))
                .filter(|k| !keep_checks.contains(k))
                .collect();
            for (node, id) in stale_checks {
                txn.remove_check(&node, &id);
            }
            for key in gone {
                txn.remove_instance(&key);
                remove_if_orphan(txn, &key.node);
            }
        });
    }

    /// Removes a service's Consul entries in one datacenter.
    fn purge(&self, dc: Option<&str>, name: &str) {
        let dc = dc.unwrap_or(&self.local_dc).to_ascii_lowercase();
        let lower = name.to_ascii_lowercase();
        self.registry.write(|txn| {
            for key in mirrored(txn.state(), &lower, &dc) {
                txn.remove_instance(&key);
                remove_if_orphan(txn, &key.node);
            }
        });
    }

    async fn follow_datacenters(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            match self
                .get::<Vec<String>>("/v1/catalog/datacenters", None, 0, Duration::ZERO)
                .await
            {
                Ok((_, dcs, _)) => {
                    backoff.reset();
                    *self.datacenters.write_locked() =
                        dcs.into_iter().map(|d| d.to_ascii_lowercase()).collect();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    async fn expire_remote(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let idle: Vec<(String, String)> = {
                let mut remote = self.remote.locked();
                let idle: Vec<_> = remote
                    .iter()
                    .filter(|(_, w)| w.last_used.elapsed() >= REMOTE_IDLE)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &idle {
                    if let Some(w) = remote.remove(k) {
                        w.task.abort();
                    }
                }
                idle
            };
            for (dc, name) in idle {
                tracing::debug!("dropping the unused watch of {name} in {dc}");
                self.purge(Some(&dc), &name);
            }
        }
    }
}

/// The instances of a service in a datacenter that came from Consul.
fn mirrored(state: &crate::registry::State, lower: &str, dc: &str) -> Vec<InstanceKey> {
    state
        .service_instances(lower)
        .filter(|v| v.instance.source == Source::Consul)
        .filter(|v| v.node.is_none_or(|n| n.datacenter == dc))
        .map(|v| v.instance.key())
        .collect()
}

/// A Consul node left with no instance goes too.
fn remove_if_orphan(txn: &mut crate::registry::Txn<'_>, node: &str) {
    let orphan = txn
        .state()
        .node(node)
        .is_some_and(|n| n.source == Source::Consul)
        && txn.state().node_instances(node).next().is_none();
    if orphan {
        txn.remove_node(node);
    }
}

/// The DNS side's view of the sync: readiness and remote datacenters.
pub struct Sidecar(pub Arc<ConsulSync>);

impl Remote for Sidecar {
    fn ready(&self) -> bool {
        self.0.is_synced()
    }

    fn knows(&self, dc: &str) -> bool {
        self.0.datacenters.read_locked().contains(dc)
    }

    fn touch(&self, dc: &str, service: &str) -> bool {
        let mut remote = self.0.remote.locked();
        match remote.get_mut(&(dc.to_string(), service.to_string())) {
            Some(w) => {
                w.last_used = Instant::now();
                w.first.is_none()
            }
            None => false,
        }
    }

    fn watch(&self, dc: String, service: String) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut ready = {
                let mut remote = self.0.remote.locked();
                let key = (dc.clone(), service.clone());
                if let Some(w) = remote.get_mut(&key) {
                    w.last_used = Instant::now();
                    match &w.first {
                        Some(rx) => rx.clone(),
                        None => return,
                    }
                } else {
                    let (tx, rx) = oneshot::channel();
                    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
                    let sync = Arc::clone(&self.0);
                    let task = self.0.tasks.locked().spawn(Arc::clone(&sync).watch_service(
                        Some(dc.clone()),
                        service.clone(),
                        Some(tx),
                    ));
                    tokio::spawn(async move {
                        let _ = rx.await;
                        let _ = done_tx.send(true);
                        let mut remote = sync.remote.locked();
                        if let Some(w) = remote.get_mut(&key) {
                            w.first = None;
                        }
                    });
                    remote.insert(
                        (dc.clone(), service.clone()),
                        RemoteWatch {
                            last_used: Instant::now(),
                            task,
                            first: Some(done_rx.clone()),
                        },
                    );
                    done_rx
                }
            };
            let _ = ready.wait_for(|done| *done).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_query_index_contract() {
        assert_eq!(next_index(0, 42), 42);
        assert_eq!(next_index(42, 42), 42);
        assert_eq!(next_index(42, 50), 50);
        assert_eq!(next_index(42, 7), 0, "backwards: start over");
        assert_eq!(next_index(0, 0), 1, "below 1 is 1");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new();
        let first = b.next();
        assert!(first >= BACKOFF_MIN / 2 && first <= BACKOFF_MIN);
        for _ in 0..20 {
            assert!(b.next() <= BACKOFF_MAX);
        }
        b.reset();
        assert!(b.next() <= BACKOFF_MIN);
    }
}
