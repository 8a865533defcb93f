//! Every TTL check's clock, on one timer task. A TTL check is a map entry
//! and a heap entry (a few hundred bytes), not a task with its own timer
//! and wake-up: as tasks, 100,000 TTL checks cost 3.4 KiB each.
//!
//! The heap holds at most one live entry per clock, never later than the
//! clock is due; a refresh only moves the clock's instant, and the timer,
//! when it reaches the old entry, finds the clock not yet due and files it
//! again. So a refresh (the hot path: every service's keep-alive) costs a
//! map lookup and no heap work.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{CheckKey, Spec};
use crate::locks::MutexExt;
use crate::registry::definition::format_duration;
use crate::registry::{CheckKind, Health, InstanceKey, Registry, Thresholds};

/// Expiries written to the registry in one write: a cluster write is one
/// etcd transaction, whose operations etcd caps (128 by default).
const EXPIRE_BATCH: usize = 50;

pub(super) struct TtlClocks {
    /// std Mutex: held to read or change clocks, never across .await (the
    /// registry write that expires checks takes it inside its closure,
    /// which is synchronous).
    inner: Mutex<Clocks>,
    /// Wakes the timer when a clock became due earlier than the timer
    /// sleeps to (a new check, a check gone critical), or at shutdown.
    wake: Notify,
}

#[derive(Default)]
struct Clocks {
    /// Keys are `Arc`s shared with the heap: one copy of the names.
    by_key: HashMap<Arc<CheckKey>, Clock>,
    /// Earliest first. An entry whose instant is not its clock's
    /// `scheduled` (or whose clock is gone) is stale and dropped.
    queue: BinaryHeap<Reverse<(Instant, Arc<CheckKey>)>>,
}

/// Only what the clock needs of its check's spec (not the spec: a TTL
/// check's spec would cost a clock twice its size).
struct Clock {
    ttl: Duration,
    thresholds: Thresholds,
    service_id: Option<Box<str>>,
    refreshed: Instant,
    /// Written critical for this expiry already (a refresh clears it).
    expired: bool,
    /// Since when it has been critical, for `DeregisterCriticalServiceAfter`.
    critical_since: Option<Instant>,
    /// The instant of this clock's live heap entry.
    scheduled: Option<Instant>,
}

impl Clock {
    fn new(spec: &Spec, ttl: Duration, status: Health, now: Instant) -> Clock {
        Clock {
            ttl,
            thresholds: spec.thresholds,
            service_id: spec.service_id.as_deref().map(Box::from),
            refreshed: now,
            expired: false,
            critical_since: (status == Health::Critical).then_some(now),
            scheduled: None,
        }
    }

    /// Whether it is the clock of this spec (else it is restarted).
    fn is_of(&self, spec: &Spec) -> bool {
        spec.kind == (CheckKind::Ttl { ttl: self.ttl })
            && spec.thresholds == self.thresholds
            && spec.service_id.as_deref() == self.service_id.as_deref()
    }

    fn deregister_after(&self) -> Option<Duration> {
        let t = &self.thresholds;
        t.deregister_critical_after
            .filter(|_| self.service_id.is_some())
    }

    fn reap_at(&self) -> Option<Instant> {
        Some(self.critical_since? + self.deregister_after()?)
    }

    /// When something is next due: its expiry, or its deregistration.
    fn next(&self) -> Option<Instant> {
        let expiry = (!self.expired).then_some(self.refreshed + self.ttl);
        [expiry, self.reap_at()].into_iter().flatten().min()
    }
}

impl Clocks {
    /// Files the clock's next instant if it is earlier than its live
    /// entry; true if that is now the earliest of all.
    fn schedule(&mut self, key: &Arc<CheckKey>) -> bool {
        let Some(clock) = self.by_key.get_mut(key) else {
            return false;
        };
        let Some(next) = clock.next() else {
            return false;
        };
        if clock.scheduled.is_some_and(|s| s <= next) {
            return false;
        }
        clock.scheduled = Some(next);
        let earliest = self.queue.peek().is_none_or(|Reverse((at, _))| next < *at);
        self.queue.push(Reverse((next, Arc::clone(key))));
        earliest
    }
}

/// What the timer found due.
#[derive(Default)]
struct Due {
    expired: Vec<Arc<CheckKey>>,
    /// (check, service ID, after)
    reap: Vec<(Arc<CheckKey>, String, Duration)>,
}

impl TtlClocks {
    pub(super) fn new() -> TtlClocks {
        TtlClocks {
            inner: Mutex::new(Clocks::default()),
            wake: Notify::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.inner.locked().by_key.len()
    }

    /// Makes the clocks those of `wanted` (the TTL checks with their
    /// specs): a clock whose spec is unchanged keeps running; a new one
    /// starts now, critical-since-now if `status` says it is critical.
    pub(super) fn sync(&self, wanted: HashMap<CheckKey, Arc<Spec>>, registry: &Registry) {
        let now = Instant::now();
        let mut c = self.inner.locked();
        c.by_key
            .retain(|k, clock| wanted.get(&**k).is_some_and(|spec| clock.is_of(spec)));
        let new: Vec<(CheckKey, Arc<Spec>)> = wanted
            .into_iter()
            .filter(|(k, _)| !c.by_key.contains_key(k))
            .collect();
        if new.is_empty() {
            return;
        }
        let statuses: Vec<Health> = registry.read(|s| {
            new.iter()
                .map(|((node, id), _)| s.check(node, id).map_or(Health::Critical, |c| c.status))
                .collect()
        });
        let mut wake = false;
        for ((key, spec), status) in new.into_iter().zip(statuses) {
            let CheckKind::Ttl { ttl } = spec.kind else {
                continue;
            };
            let key = Arc::new(key);
            c.by_key
                .insert(Arc::clone(&key), Clock::new(&spec, ttl, status, now));
            wake |= c.schedule(&key);
        }
        // Entries of clocks just dropped go when popped; after a big
        // removal the heap is rebuilt rather than left mostly stale.
        if c.queue.len() > 2 * c.by_key.len() + 1024 {
            let Clocks { by_key, queue } = &mut *c;
            queue
                .retain(|Reverse((at, k))| by_key.get(k).is_some_and(|c| c.scheduled == Some(*at)));
        }
        drop(c);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Restarts a check's clock, about to be written with `status`. Call
    /// before the write, so an expiry racing with it never lands after.
    pub(super) fn touch(&self, key: &CheckKey, status: Health) {
        let mut c = self.inner.locked();
        let Some(key) = c.by_key.get_key_value(key).map(|(k, _)| Arc::clone(k)) else {
            return;
        };
        let Some(clock) = c.by_key.get_mut(&key) else {
            return;
        };
        clock.refreshed = Instant::now();
        clock.expired = false;
        clock.critical_since = match status {
            Health::Critical => clock.critical_since.or(Some(clock.refreshed)),
            _ => None,
        };
        let wake = c.schedule(&key);
        drop(c);
        if wake {
            self.wake.notify_one();
        }
    }

    /// Stops the timer's work: every clock goes.
    pub(super) fn clear(&self) {
        *self.inner.locked() = Clocks::default();
        self.wake.notify_one();
    }

    /// Pops what is due at `now` and files each clock again.
    fn due(&self, now: Instant) -> Due {
        let mut due = Due::default();
        let mut c = self.inner.locked();
        while let Some(Reverse((at, _))) = c.queue.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = c.queue.pop() else {
                break;
            };
            let Some(clock) = c.by_key.get_mut(&key) else {
                continue;
            };
            if clock.scheduled != Some(at) {
                continue;
            }
            clock.scheduled = None;
            if !clock.expired && clock.refreshed + clock.ttl <= now {
                clock.expired = true;
                clock.critical_since.get_or_insert(now);
                due.expired.push(Arc::clone(&key));
            }
            if let (Some(at), Some(after)) = (clock.reap_at(), clock.deregister_after()) {
                if at <= now {
                    let sid = clock.service_id.as_deref().unwrap_or_default().to_string();
                    due.reap.push((Arc::clone(&key), sid, after));
                    // Tried again after another period if the removal
                    // fails; when it succeeds the clock goes with the check.
                    clock.critical_since = Some(now);
                }
            }
            c.schedule(&key);
        }
        due
    }

    fn next_wake(&self) -> Option<Instant> {
        let c = self.inner.locked();
        c.queue.peek().map(|Reverse((at, _))| *at)
    }

    /// The timer: sleeps to the earliest clock, writes what expired and
    /// deregisters what was critical for too long. Ends at `stop`.
    pub(super) async fn run(&self, registry: &Registry, mut stop: watch::Receiver<bool>) {
        loop {
            let sleep = async {
                match self.next_wake() {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => continue,
                _ = stop.changed() => return,
                _ = sleep => {}
            }
            let due = self.due(Instant::now());
            for batch in due.expired.chunks(EXPIRE_BATCH) {
                registry
                    .write_agent(|t| {
                        let c = self.inner.locked();
                        for key in batch {
                            // A refresh that got in first wins.
                            let Some(clock) = c.by_key.get(key).filter(|c| c.expired) else {
                                continue;
                            };
                            let output = format!(
                                "TTL expired: no update for {}",
                                format_duration(clock.ttl)
                            );
                            t.set_check_status(&key.0, &key.1, Health::Critical, &output);
                        }
                    })
                    .await;
            }
            for (key, sid, after) in due.reap {
                tracing::info!(
                    node = %key.0, service = %sid, check = %key.1,
                    "deregistering a service critical for longer than {}",
                    format_duration(after)
                );
                let instance = InstanceKey::new(&key.0, &sid);
                if let Err(e) = registry.write_api(|t| t.remove_instance(&instance)).await {
                    tracing::error!("cannot deregister {sid}: {e}");
                }
            }
        }
    }
}
