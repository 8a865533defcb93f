//! Health checks: runs the HTTP, TCP and TTL checks that standalone
//! registrations carry and writes their status into the registry, which
//! takes failing instances out of DNS at once.
//!
//! A supervisor task keeps one task per HTTP or TCP check and a clock per
//! TTL check (all on one timer, `ttl`), started and stopped as the
//! registry's check definitions change (it rescans only when they do,
//! never on a status update). `status` holds Consul's threshold state
//! machine, `probe` the HTTP and TCP probes. Checks mirrored from Consul are
//! not run here: Consul's own status is used as synced.

pub mod probe;
pub mod status;
mod ttl;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::locks::MutexExt;
use crate::metrics::ResultLabel;

/// Health check runs by result, for `/metrics`. A handle: clones count
/// into the same family.
#[derive(Debug, Clone, Default)]
pub struct CheckRuns(Family<ResultLabel, Counter>);

impl CheckRuns {
    pub fn register(&self, m: &mut crate::metrics::Metrics) {
        m.add("check_runs", "Health check runs by result", self.0.clone());
    }
}
use crate::registry::definition::format_duration;
use crate::registry::{CheckKind, Health, HttpProbe, InstanceKey, Registry, Source, Thresholds};
use probe::{HttpCheck, HttpClients};
use status::StatusMachine;

/// How many probes may run at once. A hanging target holds one slot for
/// at most its timeout, so it cannot hold up the others.
pub const MAX_CONCURRENT_PROBES: usize = 512;

/// The least time between two rescans of the checks.
const RESCAN_GAP: Duration = Duration::from_millis(100);

/// (node, check id)
pub type CheckKey = (String, String);

/// What a check task runs; a change of any of it restarts the task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    kind: CheckKind,
    thresholds: Thresholds,
    service_id: Option<String>,
}

struct Shared {
    clients: HttpClients,
    permits: Semaphore,
    /// Check tasks alive right now, counted by the tasks themselves, so a
    /// leak shows.
    running: AtomicUsize,
    /// Every TTL check's clock.
    ttl: ttl::TtlClocks,
    /// Probe results: passing, warning, critical.
    runs: [AtomicU64; 3],
    /// The same, for `/metrics`.
    check_runs: CheckRuns,
    /// In a cluster, the node whose checks this agent runs (each member
    /// runs its own node's); `None`: every check.
    only_node: Option<String>,
}

/// Counts a live check task; drops with the task, however it ends.
struct Live<'a>(&'a AtomicUsize);

impl<'a> Live<'a> {
    fn new(n: &'a AtomicUsize) -> Live<'a> {
        n.fetch_add(1, Ordering::SeqCst);
        Live(n)
    }
}

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct HealthChecks {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// The supervisor; taken by `shutdown`. std Mutex: never held across
    /// .await (the handle is moved out first).
    supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl HealthChecks {
    /// Starts the supervisor. Must run inside a tokio runtime.
    pub fn start(
        registry: Arc<Registry>,
        check_runs: CheckRuns,
        only_node: Option<String>,
    ) -> Arc<HealthChecks> {
        let shared = Arc::new(Shared {
            clients: HttpClients::new(),
            permits: Semaphore::new(MAX_CONCURRENT_PROBES),
            running: AtomicUsize::new(0),
            ttl: ttl::TtlClocks::new(),
            runs: Default::default(),
            check_runs,
            only_node,
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(registry, Arc::clone(&shared), stopped));
        Arc::new(HealthChecks {
            shared,
            stop,
            supervisor: Mutex::new(Some(task)),
        })
    }

    /// Checks being run right now: HTTP and TCP check tasks alive, and
    /// TTL clocks.
    pub fn running(&self) -> usize {
        self.shared.running.load(Ordering::SeqCst) + self.shared.ttl.len()
    }

    /// Probe runs so far by result: passing, warning, critical.
    pub fn runs(&self) -> [u64; 3] {
        self.shared
            .runs
            .each_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    /// Restarts a TTL check's clock, about to be written with `status`.
    /// Call before writing it, so an expiry racing with the refresh never
    /// lands after it.
    pub fn touch_ttl(&self, node: &str, id: &str, status: Health) {
        let key = (node.to_string(), id.to_string());
        self.shared.ttl.touch(&key, status);
    }

    /// Stops every check and waits until none is left running.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.supervisor.locked().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

fn specs(registry: &Registry, only_node: Option<&str>) -> HashMap<CheckKey, Arc<Spec>> {
    registry.read(|s| {
        s.checks()
            .filter(|c| c.source != Source::Consul && c.kind != CheckKind::Static)
            .filter(|c| only_node.is_none_or(|n| c.node == n))
            .map(|c| {
                (
                    (c.node.clone(), c.id.clone()),
                    Arc::new(Spec {
                        kind: c.kind.clone(),
                        thresholds: c.thresholds,
                        service_id: c.service_id.clone(),
                    }),
                )
            })
            .collect()
    })
}

async fn supervise(registry: Arc<Registry>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let timer = tokio::spawn({
        let (registry, shared, stop) = (Arc::clone(&registry), Arc::clone(&shared), stop.clone());
        async move { shared.ttl.run(&registry, stop).await }
    });
    let mut changes = registry.subscribe();
    // The spec is shared with the task: one copy per check, not two.
    let mut tasks: HashMap<CheckKey, (Arc<Spec>, AbortHandle)> = HashMap::new();
    let mut set = JoinSet::new();
    let mut seen = None;
    let mut last_scan: Option<Instant> = None;
    loop {
        changes.borrow_and_update();
        let mut defs = registry.read(|s| s.check_defs());
        if seen != Some(defs) {
            // A rescan walks every check: a burst of definition changes (a
            // bulk load) gets one per RESCAN_GAP, not one per write.
            if let Some(due) = last_scan.map(|at| at + RESCAN_GAP) {
                if Instant::now() < due {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = stop.changed() => break,
                    }
                    changes.borrow_and_update();
                    defs = registry.read(|s| s.check_defs());
                }
            }
            last_scan = Some(Instant::now());
            seen = Some(defs);
            let (ttl, mut wanted): (HashMap<_, _>, HashMap<_, _>) =
                specs(&registry, shared.only_node.as_deref())
                    .into_iter()
                    .partition(|(_, spec)| matches!(spec.kind, CheckKind::Ttl { .. }));
            shared.ttl.sync(ttl, &registry);
            tasks.retain(|key, (spec, handle)| {
                let keep = wanted.get(key) == Some(spec) && !handle.is_finished();
                if keep {
                    wanted.remove(key);
                } else {
                    handle.abort();
                }
                keep
            });
            for (key, spec) in wanted {
                let handle = set.spawn(run_check(
                    Arc::clone(&registry),
                    Arc::clone(&shared),
                    key.clone(),
                    Arc::clone(&spec),
                ));
                tasks.insert(key, (spec, handle));
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { break },
            _ = stop.changed() => break,
            Some(_) = set.join_next(), if !set.is_empty() => {}
        }
    }
    set.shutdown().await;
    let _ = timer.await;
    shared.ttl.clear();
}

/// An HTTP or TCP check's task (TTL checks have clocks, not tasks).
fn run_check(
    registry: Arc<Registry>,
    shared: Arc<Shared>,
    key: CheckKey,
    spec: Arc<Spec>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let reaper = Reaper::new(&spec);
    let interval = match &spec.kind {
        CheckKind::Http(p) => p.interval,
        CheckKind::Tcp(p) => p.interval,
        CheckKind::Ttl { .. } | CheckKind::Static => return Box::pin(std::future::ready(())),
    };
    Box::pin(async move {
        let _live = Live::new(&shared.running);
        run_periodic(&registry, &shared, &key, &spec, interval, reaper).await
    })
}

/// Deregisters a service once its check has been critical for
/// `DeregisterCriticalServiceAfter`.
struct Reaper {
    after: Option<Duration>,
    service_id: Option<String>,
    critical_since: Option<Instant>,
}

impl Reaper {
    fn new(spec: &Spec) -> Reaper {
        Reaper {
            after: spec
                .thresholds
                .deregister_critical_after
                .filter(|_| spec.service_id.is_some()),
            service_id: spec.service_id.clone(),
            critical_since: None,
        }
    }

    /// Notes the check's current status; true once it is due.
    fn due(&mut self, registry: &Registry, key: &CheckKey) -> bool {
        let Some(after) = self.after else {
            return false;
        };
        let critical = registry.read(|s| {
            s.check(&key.0, &key.1)
                .is_some_and(|c| c.status == Health::Critical)
        });
        if !critical {
            self.critical_since = None;
            return false;
        }
        let since = *self.critical_since.get_or_insert_with(Instant::now);
        since.elapsed() >= after
    }

    async fn reap(&self, registry: &Registry, key: &CheckKey) {
        let Some(sid) = &self.service_id else { return };
        let instance = InstanceKey::new(&key.0, sid);
        tracing::info!(
            node = %key.0, service = %sid, check = %key.1,
            "deregistering a service critical for longer than {}",
            format_duration(self.after.unwrap_or_default())
        );
        if let Err(e) = registry.write_api(|t| t.remove_instance(&instance)).await {
            tracing::error!("cannot deregister {sid}: {e}");
        }
    }
}

async fn run_periodic(
    registry: &Registry,
    shared: &Shared,
    key: &CheckKey,
    spec: &Spec,
    interval: Duration,
    mut reaper: Reaper,
) {
    let mut machine = StatusMachine::new(spec.thresholds);
    reaper.due(registry, key);
    // Spread the first runs of checks registered together over an interval.
    tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let (result, output) = {
            let _slot = shared.permits.acquire().await.expect("never closed");
            match &spec.kind {
                CheckKind::Http(p) => {
                    let HttpProbe {
                        url,
                        method,
                        headers,
                        body,
                        tls_skip_verify,
                        timeout,
                        ..
                    } = &**p;
                    let check = HttpCheck {
                        url,
                        method,
                        headers,
                        body,
                        tls_skip_verify: *tls_skip_verify,
                        timeout: *timeout,
                    };
                    probe::http(&shared.clients, &check).await
                }
                CheckKind::Tcp(p) => probe::tcp(&p.address, p.timeout).await,
                _ => return,
            }
        };
        let slot = match result {
            Health::Passing => 0,
            Health::Warning => 1,
            Health::Critical => 2,
        };
        shared.runs[slot].fetch_add(1, Ordering::Relaxed);
        shared
            .check_runs
            .0
            .get_or_create(&ResultLabel {
                result: result.as_str(),
            })
            .inc();
        if let Some(status) = machine.observe(result) {
            registry
                .write_agent(|t| t.set_check_status(&key.0, &key.1, status, &output))
                .await;
        }
        if reaper.due(registry, key) {
            reaper.reap(registry, key).await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::definition::ServiceDef;
    use crate::registry::Node;

    fn registry_with(service: &str) -> Arc<Registry> {
        let registry = Registry::new(Arc::new(()));
        let def: ServiceDef = serde_json::from_str(service).unwrap();
        registry.write(|t| {
            t.upsert_node(Node::new(
                "n".into(),
                "127.0.0.1".into(),
                "dc1".into(),
                Source::Api,
            ));
            let (inst, checks) = def.into_parts("n", Source::Api);
            t.upsert_instance(inst);
            for c in checks {
                t.upsert_check(c);
            }
        });
        registry
    }

    fn status(r: &Registry, id: &str) -> Option<Health> {
        r.read(|s| s.check("n", id).map(|c| c.status))
    }

    #[tokio::test(start_paused = true)]
    async fn ttl_expires_on_time_and_refresh_restarts_the_clock() {
        let r = registry_with(
            r#"{"Name": "s", "Check": {"CheckID": "t", "TTL": "10s", "Status": "passing"}}"#,
        );
        let health = HealthChecks::start(Arc::clone(&r), CheckRuns::default(), None);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(status(&r, "t"), Some(Health::Passing));
        health.touch_ttl("n", "t", Health::Passing);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            status(&r, "t"),
            Some(Health::Passing),
            "refresh restarted the clock"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(status(&r, "t"), Some(Health::Critical));
        health.shutdown().await;
        assert_eq!(health.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn critical_for_long_enough_deregisters() {
        let r = registry_with(
            r#"{"Name": "s", "ID": "s1", "Check": {"CheckID": "t", "TTL": "10s",
                "DeregisterCriticalServiceAfter": "1m"}}"#,
        );
        let health = HealthChecks::start(Arc::clone(&r), CheckRuns::default(), None);
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(r.read(|s| s.instance(&InstanceKey::new("n", "s1")).is_some()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(r.read(|s| s.instance(&InstanceKey::new("n", "s1")).is_none()));
        assert_eq!(status(&r, "t"), None, "its checks went with it");
        health.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_ttl_check_counts_toward_deregistration_from_the_fail() {
        let r = registry_with(
            r#"{"Name": "s", "ID": "s1", "Check": {"CheckID": "t", "TTL": "10m",
                "Status": "passing", "DeregisterCriticalServiceAfter": "1m"}}"#,
        );
        let health = HealthChecks::start(Arc::clone(&r), CheckRuns::default(), None);
        tokio::time::sleep(Duration::from_secs(5)).await;
        health.touch_ttl("n", "t", Health::Critical);
        r.write(|t| t.set_check_status("n", "t", Health::Critical, "failed"));
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert!(r.read(|s| s.instance(&InstanceKey::new("n", "s1")).is_some()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(r.read(|s| s.instance(&InstanceKey::new("n", "s1")).is_none()));
        assert_eq!(health.running(), 0, "its clock went with it");
        health.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_of_ttl_clocks_expire_on_one_timer() {
        let r = Registry::new(Arc::new(()));
        r.write(|t| {
            t.upsert_node(Node::new(
                "n".into(),
                "127.0.0.1".into(),
                "dc1".into(),
                Source::Api,
            ));
            for i in 0..5_000 {
                let text = format!(
                    r#"{{"Name": "s", "ID": "s{i}", "Check": {{"CheckID": "t{i}",
                        "TTL": "{}s", "Status": "passing"}}}}"#,
                    10 + i % 2
                );
                let def: ServiceDef = serde_json::from_str(&text).unwrap();
                let (inst, checks) = def.into_parts("n", Source::Api);
                t.upsert_instance(inst);
                checks.into_iter().for_each(|c| t.upsert_check(c));
            }
        });
        let health = HealthChecks::start(Arc::clone(&r), CheckRuns::default(), None);
        let critical =
            |r: &Registry| r.read(|s| s.checks().filter(|c| c.status == Health::Critical).count());
        tokio::time::sleep(Duration::from_millis(9_500)).await;
        assert_eq!(health.running(), 5_000);
        // Half are refreshed just before they expire.
        for i in (0..5_000).step_by(2) {
            health.touch_ttl("n", &format!("t{i}"), Health::Passing);
        }
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(
            critical(&r),
            0,
            "none of the 10 s ones refreshed, none due yet"
        );
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(critical(&r), 2_500, "the 11 s ones, never refreshed");
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(critical(&r), 5_000, "and the refreshed ones 10 s later");
        health.shutdown().await;
        assert_eq!(health.running(), 0);
    }
}
