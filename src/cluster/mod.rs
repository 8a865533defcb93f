//! Cluster mode: several signposts share one registry through etcd.
//!
//! * [`etcd`] — the etcd v3 client (its JSON gateway, over reqwest).
//!
//! A [`Cluster`] is the registry's shared store ([`Shared`]): a write is an
//! etcd transaction that compares the revision of every key it read. Two
//! tasks keep the member in the cluster:
//!
//! * **follow** reads everything under the prefix once, then applies the
//!   watch stream from the next revision, in order, into the registry
//!   (which every read and DNS answer comes from). When the stream breaks
//!   it resumes from the last revision applied; when that revision was
//!   compacted it reads everything again, and says which in the log.
//! * **live** keeps `members/NODE` on a lease (renewed every third of its
//!   TTL): when a signpost is gone its lease runs out and every member
//!   marks its node's `serfHealth` critical, which takes its instances out
//!   of DNS and invalidates its sessions. `agents/NODE` (no lease) keeps the
//!   node's address for when it is gone.

pub mod etcd;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crate::registry::shared::{self, Agent, CommitFuture, Committed, Event, Op, Shared};
use crate::registry::{Registry, StoreError};
use etcd::{Etcd, EtcdError, TxnOp};

/// What `--etcd` and friends set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Client URLs of the etcd members (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Every key signpost writes starts with this, then `/`.
    pub prefix: String,
    /// How long a member's lease outlives its last renewal.
    pub lease_ttl: Duration,
}

/// The default lease: a member gone is seen as failed 10-11 s later (etcd
/// checks leases every 500 ms), inside the 15 s Consul's serf takes.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// How often a quiet change stream is checked for changes it has not
/// delivered.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// How long a write may wait on etcd before it is refused.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters for `/metrics`, written by the tasks and the write path.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub commits: AtomicU64,
    /// Writes that found a key moved and ran again.
    pub conflicts: AtomicU64,
    pub write_failures: AtomicU64,
    pub events: AtomicU64,
    pub reloads: AtomicU64,
    pub stream_breaks: AtomicU64,
}

/// This member of the cluster.
pub struct Cluster {
    /// `Arc`s: a write's future owns what it needs, past `&self`.
    etcd: Arc<Etcd>,
    config: ClusterConfig,
    me: Agent,
    /// The registry the stream is applied to; set once by [`start`](Self::start)
    /// (the registry is built with this as its store, so it comes after).
    /// Weak: the registry owns this, not the other way round.
    registry: OnceLock<Weak<Registry>>,
    /// The whole registry has been read from etcd once: `/ready`.
    loaded: AtomicBool,
    /// etcd answered the last call: reads say `X-Consul-KnownLeader: true`.
    reachable: AtomicBool,
    /// `agents/NODE` and `members/NODE` are written: `/ready`.
    joined: AtomicBool,
    /// The lease of `members/NODE`, to revoke on a clean stop (0: none).
    lease: AtomicU64,
    /// Set once at [`leave`](Self::leave): the tasks end.
    stop: tokio::sync::watch::Sender<bool>,
    pub stats: Arc<ClusterStats>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, me: Agent) -> Result<Arc<Cluster>, EtcdError> {
        Ok(Arc::new(Cluster {
            etcd: Arc::new(Etcd::new(config.endpoints.clone())?),
            config,
            me,
            registry: OnceLock::new(),
            loaded: AtomicBool::new(false),
            joined: AtomicBool::new(false),
            reachable: AtomicBool::new(false),
            lease: AtomicU64::new(0),
            stop: tokio::sync::watch::channel(false).0,
            stats: Arc::default(),
        }))
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}/{rest}", self.config.prefix).into_bytes()
    }

    fn root(&self) -> Vec<u8> {
        self.key("")
    }

    /// Starts following etcd into `registry` and keeping this member alive.
    pub fn start(self: &Arc<Self>, registry: &Arc<Registry>) {
        let _ = self.registry.set(Arc::downgrade(registry));
        tokio::spawn(Arc::clone(self).follow());
        tokio::spawn(Arc::clone(self).live());
    }

    /// Read the whole registry once and joined: ready to serve.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Relaxed) && self.joined.load(Ordering::Relaxed)
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub fn endpoints(&self) -> &[String] {
        self.etcd.endpoints()
    }

    /// Leaves the cluster on a clean stop: the lease goes at once, so the
    /// others mark this node failed now rather than at the TTL.
    pub async fn leave(&self) {
        self.stop.send_replace(true);
        let lease = self.lease.swap(0, Ordering::Relaxed);
        if lease != 0 {
            if let Err(e) = self.etcd.revoke(lease).await {
                tracing::warn!("cannot leave the cluster cleanly ({e}); the others see this node fail when its lease runs out");
            }
        }
    }

    /// etcd's members as Consul's `/v1/status/peers` lists its servers
    /// (`host:port` of their peer URLs), and which of them leads.
    pub async fn peers(&self) -> Result<(Vec<String>, Option<String>), EtcdError> {
        let members = self.etcd.members().await?;
        let leader = self.etcd.leader().await.ok();
        let addr = |m: &etcd::Member| {
            m.peer_urls
                .first()
                .map(|u| {
                    u.split("://")
                        .last()
                        .unwrap_or(u)
                        .trim_end_matches('/')
                        .to_string()
                })
                .unwrap_or_default()
        };
        let lead = members
            .iter()
            .find(|m| Some(&m.id) == leader.as_ref())
            .map(addr);
        Ok((members.iter().map(addr).collect(), lead))
    }

    fn registry(&self) -> Option<Arc<Registry>> {
        self.registry.get().and_then(Weak::upgrade)
    }

    fn events(&self, kvs: impl IntoIterator<Item = (etcd::Kv, bool)>) -> Vec<Event> {
        let root = self.root();
        kvs.into_iter()
            .filter_map(|(kv, deleted)| {
                let key = kv.key.strip_prefix(root.as_slice())?;
                let key = String::from_utf8(key.to_vec()).ok()?;
                Some(Event {
                    key,
                    value: (!deleted).then_some(kv.value),
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                })
            })
            .collect()
    }

    fn report(&self, bad: Vec<shared::BadEvent>) {
        for b in bad {
            tracing::warn!("etcd change stream: {b}; left out");
        }
    }

    /// Reads everything; returns the revision to watch from.
    async fn load(&self, registry: &Registry) -> Result<u64, EtcdError> {
        let (revision, kvs) = self.etcd.range(&self.root()).await?;
        let keys = kvs.len();
        let events = self.events(kvs.into_iter().map(|kv| (kv, false)));
        self.report(registry.reload_shared(events, revision));
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        if !self.loaded.swap(true, Ordering::Relaxed) {
            tracing::info!(keys, revision, "loaded the registry from etcd");
        }
        Ok(revision + 1)
    }

    async fn follow(self: Arc<Self>) {
        let mut stopped = self.stop.subscribe();
        let throttle = crate::metrics::LogLimiter::default();
        let mut from: Option<u64> = None;
        loop {
            let Some(registry) = self.registry() else {
                return;
            };
            if *stopped.borrow() {
                return;
            }
            let next = match from {
                Some(n) => n,
                None => match self.load(&registry).await {
                    Ok(n) => n,
                    Err(e) => {
                        self.reachable.store(false, Ordering::Relaxed);
                        if throttle.due() {
                            tracing::warn!("cannot read the registry from {e}; trying again");
                        }
                        drop(registry);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            from = Some(next);
            let mut watch = match self.etcd.watch(&self.root(), next).await {
                Ok(w) => w,
                Err(e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    if throttle.due() {
                        tracing::warn!("cannot watch {e}; trying again from revision {next}");
                    }
                    drop(registry);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            drop(registry);
            let mut check = tokio::time::interval(STALL_CHECK);
            check.tick().await;
            let mut strikes = 0;
            loop {
                let got = tokio::select! {
                    got = watch.next() => Some(got),
                    _ = check.tick() => None,
                    _ = stopped.changed() => return,
                };
                let Some(got) = got else {
                    // A stream from an endpoint that hangs (stopped, cut
                    // off) delivers nothing and never ends: when the store
                    // has a change under the prefix that was not delivered
                    // at two checks in a row, watch again.
                    match self.etcd.latest_mod(&self.root()).await {
                        Ok(latest) if latest >= from.unwrap_or(u64::MAX) => strikes += 1,
                        _ => strikes = 0,
                    }
                    if strikes >= 2 {
                        self.stats.stream_breaks.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "etcd change stream from {} stalled (revision {} is committed, not delivered); watching again",
                            watch.endpoint,
                            from.unwrap_or(0)
                        );
                        break;
                    }
                    continue;
                };
                let Some(registry) = self.registry() else {
                    return;
                };
                match got {
                    Ok(Some(r)) if r.compact_revision > 0 => {
                        tracing::warn!(
                            "etcd compacted revision {} that this member was to resume from; reloading everything",
                            from.unwrap_or(0)
                        );
                        from = None;
                        break;
                    }
                    Ok(Some(r)) if r.canceled => {
                        tracing::warn!(
                            "etcd cancelled the watch ({}); watching again",
                            r.cancel_reason
                        );
                        break;
                    }
                    Ok(Some(r)) => {
                        self.reachable.store(true, Ordering::Relaxed);
                        if r.events.is_empty() && r.header.revision < from.unwrap_or(0) {
                            continue;
                        }
                        let count = r.events.len() as u64;
                        let events = self.events(r.events.into_iter().map(|e| {
                            let deleted = e.is_delete();
                            (e.kv, deleted)
                        }));
                        let last = events.last().map(|e| e.mod_revision).unwrap_or(0);
                        // The header of the response that opens a watch
                        // is the store's revision then, not what was sent:
                        // only events move the resume point.
                        if last > 0 {
                            self.report(registry.apply_events(events, last));
                            self.stats.events.fetch_add(count, Ordering::Relaxed);
                            from = Some(last + 1);
                        }
                    }
                    Ok(None) | Err(_) => {
                        self.stats.stream_breaks.fetch_add(1, Ordering::Relaxed);
                        let why = match got {
                            Err(e) => e.to_string(),
                            _ => format!("etcd {}: the stream ended", watch.endpoint),
                        };
                        tracing::warn!(
                            "etcd change stream broke ({why}); resuming from revision {}",
                            from.unwrap_or(0)
                        );
                        break;
                    }
                }
            }
        }
    }

    /// Registers this member and keeps its lease alive.
    async fn live(self: Arc<Self>) {
        let mut stopped = self.stop.subscribe();
        let throttle = crate::metrics::LogLimiter::default();
        let renew = self.config.lease_ttl / 3;
        let agent = serde_json::to_vec(&self.me).expect("an agent serializes");
        loop {
            if self.registry().is_none() || *stopped.borrow() {
                return;
            }
            let joined = async {
                self.etcd
                    .put(&self.key(&format!("agents/{}", self.me.name)), &agent, None)
                    .await?;
                let lease = self.etcd.grant(self.config.lease_ttl).await?;
                self.etcd
                    .put(
                        &self.key(&format!("members/{}", self.me.name)),
                        b"alive",
                        Some(lease),
                    )
                    .await?;
                Ok::<u64, EtcdError>(lease)
            }
            .await;
            let lease = match joined {
                Ok(l) => l,
                Err(e) => {
                    self.reachable.store(false, Ordering::Relaxed);
                    if throttle.due() {
                        tracing::warn!("cannot join the cluster through {e}; trying again");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.lease.store(lease, Ordering::Relaxed);
            self.joined.store(true, Ordering::Relaxed);
            self.reachable.store(true, Ordering::Relaxed);
            tracing::info!(node = %self.me.name, "joined the cluster");
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(renew) => {}
                    _ = stopped.wait_for(|s| *s) => return,
                }
                if self.registry().is_none() || self.lease.load(Ordering::Relaxed) != lease {
                    return;
                }
                match self.etcd.keepalive(lease).await {
                    Ok(ttl) if ttl > 0 => self.reachable.store(true, Ordering::Relaxed),
                    Ok(_) => {
                        tracing::warn!(
                            "this member's lease ran out (etcd was out of reach for longer than {} s); joining again",
                            self.config.lease_ttl.as_secs()
                        );
                        break;
                    }
                    Err(e) => {
                        self.reachable.store(false, Ordering::Relaxed);
                        if throttle.due() {
                            tracing::warn!("cannot renew this member's lease through {e}");
                        }
                    }
                }
            }
        }
    }
}

impl Shared for Cluster {
    fn commit(&self, ops: Vec<Op>) -> CommitFuture {
        let mut ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|o| TxnOp {
                key: self.key(&o.key),
                value: o.value,
                expect: Some(o.expect),
            })
            .collect();
        // Until this member has joined, its writes carry its node: an
        // instance must never reach the other members before the node it
        // is on.
        if !self.joined.load(Ordering::Relaxed) {
            ops.insert(
                0,
                TxnOp {
                    key: self.key(&format!("agents/{}", self.me.name)),
                    value: Some(serde_json::to_vec(&self.me).expect("an agent serializes")),
                    expect: None,
                },
            );
        }
        let etcd = Arc::clone(&self.etcd);
        let stats = Arc::clone(&self.stats);
        Box::pin(async move {
            let refused = |reason: String| {
                stats.write_failures.fetch_add(1, Ordering::Relaxed);
                StoreError::new("etcd", reason)
            };
            match tokio::time::timeout(WRITE_TIMEOUT, etcd.txn(&ops)).await {
                Ok(Ok((true, rev))) => {
                    stats.commits.fetch_add(1, Ordering::Relaxed);
                    Ok(Committed::At(rev))
                }
                Ok(Ok((false, rev))) => {
                    stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    Ok(Committed::Stale(rev))
                }
                Ok(Err(e)) => Err(refused(format!("the write was not committed: {e}"))),
                Err(_) => Err(refused(format!(
                    "no etcd endpoint ({}) answered within {} s; the write may not have been committed",
                    etcd.endpoints().join(", "),
                    WRITE_TIMEOUT.as_secs()
                ))),
            }
        })
    }
}

/// The cluster's counters and state for `/metrics`, read at scrape time.
#[derive(Debug)]
pub struct ClusterCollector(pub Arc<Cluster>);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.me.name)
            .field("endpoints", &self.config.endpoints)
            .finish()
    }
}

impl prometheus_client::collector::Collector for ClusterCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::metrics::{counter, gauge};
        let c = &self.0;
        gauge(
            &mut encoder,
            "cluster_etcd_reachable",
            "1 while etcd answers this member (0: DNS and reads go on from memory, writes are refused)",
            i64::from(c.is_reachable()),
        )?;
        let s = &c.stats;
        for (name, help, value) in [
            ("cluster_commits", "Writes committed in etcd through this member", &s.commits),
            ("cluster_conflicts", "Writes that found a key written by another member since they read it, and ran again", &s.conflicts),
            ("cluster_write_failures", "Writes refused because etcd did not commit them", &s.write_failures),
            ("cluster_events", "Changes applied from etcd's watch stream", &s.events),
            ("cluster_reloads", "Full reads of the registry from etcd (at start, or after a compacted revision)", &s.reloads),
            ("cluster_stream_breaks", "Times the watch stream broke and was resumed", &s.stream_breaks),
        ] {
            counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}
