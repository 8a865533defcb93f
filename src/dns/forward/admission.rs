//! Which forwarded queries may be in flight: at most `total`, at most
//! `per_client` from one address. Past either, the oldest in flight (of
//! all, or of that client) is cancelled to admit the new one: its client
//! has likely retried by now, and a resolver that answers the fresh
//! questions is worth more than one that finishes the stale ones. Each
//! cancellation is counted and reported in the log at most every 10 s.
//!
//! A cancelled query's task may not have run yet (the runtime is behind
//! the flood): it counts until it ends, and past twice the limit of tasks
//! alive, new queries are refused (SERVFAIL at once) instead of spawned.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::locks::MutexExt;
use tokio_util::sync::CancellationToken;

pub struct Admission {
    total: usize,
    per_client: usize,
    /// std Mutex: held for a few map operations, never across `.await`.
    state: Mutex<State>,
    /// Queries cancelled to admit newer ones.
    pub shed: AtomicU64,
    /// Queries refused because too many cancelled ones had not ended yet.
    pub refused: AtomicU64,
    reports: crate::metrics::LogLimiter,
}

#[derive(Default)]
struct State {
    next: u64,
    /// In flight: sequence → (client, its cancellation).
    live: HashMap<u64, (IpAddr, CancellationToken)>,
    /// Sequences in admission order; ones no longer live are skipped.
    order: VecDeque<u64>,
    per_client: HashMap<IpAddr, usize>,
    /// Cancelled, their tasks not ended yet.
    cancelled_alive: usize,
    shed_since_report: u64,
}

impl State {
    fn remove(&mut self, seq: u64) -> Option<CancellationToken> {
        let (client, token) = self.live.remove(&seq)?;
        if let Some(n) = self.per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&client);
            }
        }
        Some(token)
    }

    /// Cancels the oldest live query (of `client` when given).
    fn shed_oldest(&mut self, client: Option<IpAddr>) {
        let pos = self.order.iter().position(|seq| {
            self.live
                .get(seq)
                .is_some_and(|(c, _)| client.is_none_or(|want| *c == want))
        });
        let Some(pos) = pos else { return };
        let seq = self.order.remove(pos).expect("found");
        if let Some(token) = self.remove(seq) {
            token.cancel();
            self.cancelled_alive += 1;
            self.shed_since_report += 1;
        }
    }
}

/// A forwarded query's place in flight; gives it back when dropped.
pub struct Ticket {
    admission: Arc<Admission>,
    seq: u64,
    /// Cancelled when the query is shed for a newer one.
    pub cancelled: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        if s.remove(self.seq).is_none() {
            s.cancelled_alive -= 1;
        }
    }
}

impl Admission {
    pub fn new(total: usize, per_client: usize) -> Arc<Admission> {
        Arc::new(Admission {
            total: total.max(1),
            per_client: per_client.clamp(1, total.max(1)),
            state: Mutex::new(State::default()),
            shed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            reports: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.locked()
    }

    /// Admits a query from `client`, shedding the oldest to make room;
    /// `None` while the shed ones' tasks have not ended (answer SERVFAIL).
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Ticket> {
        let mut s = self.lock();
        if s.live.len() + s.cancelled_alive >= 2 * self.total {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let before = s.shed_since_report;
        if s.per_client.get(&client).copied().unwrap_or(0) >= self.per_client {
            s.shed_oldest(Some(client));
        }
        while s.live.len() >= self.total {
            s.shed_oldest(None);
        }
        // Completed queries leave their sequence behind in `order`; drop
        // them before it outgrows the live set.
        if s.order.len() > 2 * self.total {
            let State { order, live, .. } = &mut *s;
            order.retain(|seq| live.contains_key(seq));
        }
        let seq = s.next;
        s.next += 1;
        let token = CancellationToken::new();
        s.live.insert(seq, (client, token.clone()));
        s.order.push_back(seq);
        *s.per_client.entry(client).or_default() += 1;
        let shed_now = s.shed_since_report - before;
        if shed_now > 0 {
            self.shed.fetch_add(shed_now, Ordering::Relaxed);
            if self.reports.due() {
                tracing::warn!(
                    in_flight = s.live.len(),
                    limit = self.total,
                    per_client = self.per_client,
                    "forwarding at its limit: shed the oldest queries in flight ({} since the last report)",
                    s.shed_since_report
                );
                s.shed_since_report = 0;
            }
        }
        Some(Ticket {
            admission: Arc::clone(self),
            seq,
            cancelled: token,
        })
    }

    /// Queries in flight now.
    pub fn in_flight(&self) -> usize {
        self.lock().live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_the_oldest_overall_and_per_client() {
        let a = Admission::new(4, 2);
        let c1: IpAddr = "10.0.0.1".parse().unwrap();
        let c2: IpAddr = "10.0.0.2".parse().unwrap();
        let t1 = a.admit(c1).unwrap();
        let t2 = a.admit(c1).unwrap();
        let t3 = a.admit(c1).unwrap(); // c1 at its limit: its oldest (t1) goes
        assert!(t1.cancelled.is_cancelled() && !t2.cancelled.is_cancelled());
        let t4 = a.admit(c2).unwrap();
        let t5 = a.admit(c2).unwrap();
        let t6 = a.admit(c2).unwrap(); // total and c2 at their limits
        assert!(t4.cancelled.is_cancelled());
        assert_eq!(a.in_flight(), 4);
        // Two shed but not ended, four live: two more may wait.
        let t7 = a.admit(c2).unwrap();
        let t8 = a.admit(c2).unwrap();
        assert!(a.admit(c2).is_none(), "past twice the limit alive: refused");
        drop((t7, t8));
        drop((t1, t2, t3, t4, t5, t6));
        assert_eq!(a.in_flight(), 0);
        assert_eq!(a.shed.load(Ordering::Relaxed), 4);
        assert_eq!(a.lock().cancelled_alive, 0);
        // Nothing left behind per client either.
        assert!(a.lock().per_client.is_empty());
    }
}
