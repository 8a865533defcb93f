//! The committer thread: takes what writers queued, writes it to the store
//! in one transaction, and publishes it.
//!
//! When the store refuses a batch, nothing of it ever becomes visible: the
//! tip goes back to the visible state, every durable write since (they were
//! built on the refused ones) is refused with the same reason, and writes
//! that need no disk (health, zones/, Consul) are put back by their keys.
//! The committer then reopens the store and tries again on the next write,
//! or every few seconds until it can write again.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Changes, Pending, Registry, State};
use crate::registry::store::{Durable, Rows, StoreError};

/// How long the committer waits before probing a failed store again when
/// no write asks it to.
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The committer thread: takes what is queued, writes it, publishes it.
/// Holds only a weak reference, so that a dropped registry ends it.
pub(super) fn commit_loop(registry: std::sync::Weak<Registry>, mut store: Box<dyn Durable>) {
    let mut failing_since: Option<(Instant, u64)> = None;
    loop {
        let Some(reg) = registry.upgrade() else {
            return;
        };
        // The batch and the tip right after it: taken together under the
        // lock, so the tip holds exactly the writes of the batch.
        let (batch, after): (Vec<Pending>, State) = {
            let mut w = reg.lock();
            while w.queued.is_empty() && !w.stopping {
                let wait = if failing_since.is_some() {
                    PROBE_EVERY
                } else {
                    // Wake now and then to notice a dropped registry.
                    Duration::from_secs(1)
                };
                let (guard, timeout) = reg
                    .queued
                    .wait_timeout(w, wait)
                    .unwrap_or_else(|e| e.into_inner());
                w = guard;
                if timeout.timed_out() {
                    break;
                }
            }
            if w.queued.is_empty() {
                if w.stopping {
                    return;
                }
                drop(w);
                if failing_since.is_some() {
                    probe(&reg, store.as_mut(), &mut failing_since);
                }
                continue;
            }
            w.in_flight = true;
            (w.queued.drain(..).collect(), w.tip.clone())
        };
        let rows: Vec<&Rows> = batch.iter().filter_map(|p| p.rows.as_ref()).collect();
        let started = Instant::now();
        let written = if rows.iter().all(|r| r.is_empty()) {
            Ok(())
        } else {
            store.write(&rows)
        };
        reg.status
            .commit_nanos
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let writes = rows.len() as u64;
        match written {
            Ok(()) => {
                if writes > 0 {
                    reg.status.batches.fetch_add(1, Ordering::Relaxed);
                    reg.status
                        .batched_writes
                        .fetch_add(writes, Ordering::Relaxed);
                    recovered(&reg, &mut failing_since);
                }
                let mut batch = batch;
                let mut changes = Changes::default();
                let mut replies = Vec::with_capacity(batch.len());
                for p in &mut batch {
                    changes.merge(std::mem::take(&mut p.changes));
                    replies.extend(p.reply.take());
                }
                let mut w = reg.lock();
                let replaced = (!changes.is_empty()).then(|| reg.publish(after, &changes));
                w.in_flight = false;
                drop(w);
                for r in replies {
                    let _ = r.send(Ok(()));
                }
                // Freed only once the writers have their answers: the
                // batch's rows and the state it replaced are the bulk of a
                // batch's deallocations.
                drop((batch, replaced));
            }
            Err(e) => {
                failed(&reg, &e, &mut failing_since);
                refuse(&reg, batch, &e);
                store.reset();
            }
        }
    }
}

/// A refused batch: the tip goes back to what readers see, writes that
/// need no disk are put back on it, and every durable write since the
/// visible state is refused.
fn refuse(reg: &Registry, batch: Vec<Pending>, e: &StoreError) {
    let mut w = reg.lock();
    let later: Vec<Pending> = w.queued.drain(..).collect();
    w.tip = State::clone(&reg.visible.load());
    let mut changes = Changes::default();
    let mut replies = Vec::new();
    for p in batch.into_iter().chain(later) {
        replies.extend(p.reply);
        if let Some((touched, after)) = p.replay {
            let next = w.tip.index + 1;
            let (_, c, _) = Registry::apply(&mut w, next, |t| t.replay(&after, &touched));
            changes.merge(c);
        }
    }
    let replaced = (!changes.is_empty()).then(|| {
        let state = w.tip.clone();
        reg.publish(state, &changes)
    });
    w.in_flight = false;
    drop(w);
    drop(replaced);
    reg.status
        .refused_writes
        .fetch_add(replies.len() as u64, Ordering::Relaxed);
    for r in replies {
        let _ = r.send(Err(e.clone()));
    }
}

fn failed(reg: &Registry, e: &StoreError, since: &mut Option<(Instant, u64)>) {
    reg.status.failed_batches.fetch_add(1, Ordering::Relaxed);
    match since {
        Some((_, n)) => {
            *n += 1;
            tracing::debug!("store still refusing writes: {e}");
        }
        None => {
            tracing::error!(
                "store refused a write; refusing API writes until it accepts them again (reads and DNS go on): {e}"
            );
            *since = Some((Instant::now(), 1));
            reg.status.degraded.store(true, Ordering::Relaxed);
            *reg.status.reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }
}

fn recovered(reg: &Registry, since: &mut Option<(Instant, u64)>) {
    if let Some((at, n)) = since.take() {
        tracing::warn!(
            failed_batches = n,
            "store accepts writes again after {:.1}s degraded",
            at.elapsed().as_secs_f64()
        );
        reg.status.degraded.store(false, Ordering::Relaxed);
        *reg.status.reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// While degraded and idle: see whether the store takes a write again, so
/// that `/ready` recovers without waiting for a client to try.
fn probe(reg: &Registry, store: &mut dyn Durable, since: &mut Option<(Instant, u64)>) {
    match store.probe() {
        Ok(()) => recovered(reg, since),
        Err(e) => {
            tracing::debug!("store probe failed: {e}");
            store.reset();
        }
    }
}
