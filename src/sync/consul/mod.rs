//! Sidecar mode: mirror a Consul agent's catalog and health into the
//! registry, so DNS answers come from memory.
//!
//! The local datacenter is followed over at most `max_connections`
//! connections, whatever the number of services ([`local`]): two blocking
//! reads (`/v1/catalog/services` and the checks that are not passing) tell
//! which services changed, and a few readers read only those. A Consul
//! agent serves 200 connections per client by default; the default here is
//! 8. Every blocking loop keeps Consul's contract: the index is reset to 0
//! when it goes backwards and an index below 1 is taken as 1. A loop never
//! runs more often than every [`MIN_INTERVAL`], except a local feed right
//! after a move, which pauses in proportion to the move's work
//! ([`feed_pace`]).
//!
//! When the agent is unreachable or answers 5xx, the last known view keeps
//! serving (instances known to be unhealthy stay out) while the loops
//! retry with exponential backoff and jitter. Until the first full sync the
//! DNS side answers SERVFAIL instead of a false NXDOMAIN, and `/ready` says
//! not ready.
//!
//! Other datacenters are watched on demand: the first query for
//! `name.service.dc2.consul` starts a blocking watch with `?dc=dc2` in the
//! remote slots (taking turns with short waits when they are more than the
//! slots), and a watch unused for [`REMOTE_IDLE`] is dropped with its
//! entries. A datacenter the agent does not list is never asked about.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::consul_client::ConsulClient;
use crate::dns::handler::Remote;
use crate::locks::{MutexExt, RwLockExt};
use crate::registry::{
    Check, CheckKind, Connect, Health, Instance, InstanceKey, Node, Registry, Source,
    TaggedAddress, Thresholds, Weights,
};
pub use stats::ConsulStats;

mod apply;
mod blocking;
mod local;
mod remote;
mod stats;
mod watch;
mod wire;

pub use blocking::next_index;
use blocking::Backoff;
use local::Dirty;
use remote::RemoteWatch;
pub use remote::Sidecar;
use wire::Entry;

/// The Consul agent to mirror.
#[derive(Debug, Clone)]
pub struct ConsulConfig {
    /// `http(s)://host:port`, no trailing slash.
    pub url: String,
    pub token: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    /// Certificate and key, both or neither.
    pub client_identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// Connections to the agent at most (a Consul agent allows 200 per
    /// client by default); at least [`Budget::MIN`].
    pub max_connections: usize,
}

/// How the connections are shared out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    /// The two blocking feeds of the local datacenter.
    pub feeds: usize,
    /// Readers of changed local services.
    pub readers: usize,
    /// Blocking watches of other datacenters' services, and the
    /// datacenter list.
    pub remote: usize,
}

impl Budget {
    /// Two feeds, a reader and a remote slot.
    pub const MIN: usize = 4;

    pub fn new(max_connections: usize) -> Budget {
        let max = max_connections.max(Self::MIN);
        let remote = ((max - 2) / 3).max(1);
        Budget {
            feeds: 2,
            readers: max - 2 - remote,
            remote,
        }
    }
}

/// A loop never starts requests closer together than this, except a feed
/// of the local datacenter right after its index moved (see [`feed_pace`]).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// After a move, a local feed asks again once it has waited a quarter as
/// long as the move's follow-up reads took, and at least this long.
const MIN_FEED_PAUSE: Duration = Duration::from_millis(5);

/// When a local feed may start its next blocking read. A return that moved
/// nothing (a timeout, a spurious wake-up) waits out [`MIN_INTERVAL`] from
/// the start of the read, so a misbehaving agent cannot make it spin. After
/// a move it waits a quarter as long as handling the move took (from
/// `arrived`), so under constant churn it keeps the agent busy at most four
/// fifths of one connection's time (Consul's own watches never wait),
/// rather than a fixed 100 ms that every change would wait behind.
fn feed_pace(started: Instant, arrived: Instant, moved: bool) -> Instant {
    if moved {
        let now = Instant::now();
        now + (now.duration_since(arrived) / 4).max(MIN_FEED_PAUSE)
    } else {
        started + MIN_INTERVAL
    }
}

/// Consul's default blocking wait.
const LONG_WAIT: Duration = Duration::from_secs(300);

/// When remote watches outnumber their slots they take turns with short
/// waits, sized so that every one is read again about this often.
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
    /// Local services mirrored.
    pub services: usize,
    /// Local services waiting to be read.
    pub queued: usize,
    pub max_connections: usize,
    pub remote_watches: Vec<String>,
    pub datacenters: Vec<String>,
}

pub struct ConsulSync {
    cfg: ConsulConfig,
    /// The agent's API, shared with the CLI's commands.
    client: ConsulClient,
    registry: Arc<Registry>,
    local_dc: String,
    pub stats: ConsulStats,
    synced: AtomicBool,
    started: Instant,
    /// std Mutexes below: held for a read or an update, never across .await.
    last_ok: Mutex<Option<Instant>>,
    failing_since: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    budget: Budget,
    /// Remote datacenters' slots.
    slots: Semaphore,
    /// Remote watches alive, to choose their wait.
    watchers: AtomicUsize,
    /// Local services the feeds marked changed; std Mutex, never held
    /// across .await.
    dirty: Mutex<Dirty>,
    /// Wakes the readers when services are marked.
    work: Notify,
    /// Wakes who waits for reads to finish (the first sync, a feed).
    read_done: Notify,
    /// The X-Consul-Index each local service was last read at: a read
    /// that finds nothing new writes nothing, and a feed tells whether the
    /// services it marked explain its move.
    indexes: Mutex<HashMap<String, u64>>,
    /// The agent has no `/v1/internal/ui/services`.
    no_summaries: AtomicBool,
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
        stats: ConsulStats,
    ) -> Result<Arc<ConsulSync>, SyncError> {
        let budget = Budget::new(cfg.max_connections);
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(budget.feeds + budget.readers + budget.remote)
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
            budget,
            slots: Semaphore::new(budget.remote),
            dirty: Mutex::new(Dirty::default()),
            work: Notify::new(),
            read_done: Notify::new(),
            indexes: Mutex::new(HashMap::new()),
            no_summaries: AtomicBool::new(false),
            cfg,
            client,
            registry,
            local_dc,
            stats,
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
        tasks.spawn(Arc::clone(self).follow_local());
        for _ in 0..self.budget.readers {
            tasks.spawn(Arc::clone(self).read_marked());
        }
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
            services: self.indexes.locked().len(),
            queued: self.dirty.locked().outstanding(),
            max_connections: self.budget.feeds + self.budget.readers + self.budget.remote,
            remote_watches: self
                .remote
                .locked()
                .keys()
                .map(|(dc, s)| format!("{s}.service.{dc}"))
                .collect(),
            datacenters: self.datacenters.read_locked().iter().cloned().collect(),
        }
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
    fn a_feed_waits_long_only_when_nothing_moved() {
        let started = Instant::now() - Duration::from_secs(60);
        let arrived = Instant::now() - Duration::from_millis(120);
        assert_eq!(feed_pace(started, arrived, false), started + MIN_INTERVAL);
        let next = feed_pace(started, arrived, true);
        let wait = next.duration_since(Instant::now());
        assert!(
            wait >= Duration::from_millis(25) && wait <= Duration::from_millis(31),
            "as long as the move's work took: {wait:?}"
        );
        let next = feed_pace(started, Instant::now(), true);
        assert!(next >= Instant::now() + MIN_FEED_PAUSE - Duration::from_millis(1));
    }

    #[test]
    fn the_connection_budget() {
        let b = Budget::new(8);
        assert_eq!((b.feeds, b.readers, b.remote), (2, 4, 2));
        let b = Budget::new(1);
        assert_eq!(
            (b.feeds, b.readers, b.remote),
            (2, 1, 1),
            "at least the minimum"
        );
        let b = Budget::new(200);
        assert_eq!(b.feeds + b.readers + b.remote, 200);
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
