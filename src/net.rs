//! Connection admission shared by the HTTP and DNS-over-TCP accept loops:
//! a table of open connections with a total and a per-client cap.
//!
//! At either cap the newcomer is admitted by closing a connection already
//! open, rather than refused: a client's new query or health probe is
//! answered however many connections that client (or anyone) holds.
//! * at the per-client cap, one of that client's own connections goes;
//! * at the total cap, one of the connections of whoever holds the most;
//! * of those, an idle connection that has been answered goes first (the
//!   longest idle), then one that has not sent a whole request yet (the one
//!   waiting longest: for HTTP, the slowest headers), then, where the
//!   listener allows it, a busy one, which closes after its answer.
//!
//! A connection told to close stops when its task next looks; the place in
//! the table is free at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

tokio::task_local! {
    /// The connection of the request being served, for a blocking query
    /// to wait in a way the table can end early ([`ConnState::hold`]).
    pub static CONNECTION: Arc<ConnState>;
}

use crate::locks::MutexExt;
use crate::metrics::LogLimiter;

/// What a listener admits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most.
    pub max: usize,
    /// Open connections from one address at most.
    pub per_client: usize,
    /// Whether a connection with a request in progress may be chosen to
    /// close (after its answer): DNS answers take microseconds; an HTTP
    /// request may be a blocking query held for minutes, never cut.
    pub evict_busy: bool,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AdmissionStats {
    pub open: AtomicU64,
    /// Connections closed to admit a newer one at the total cap.
    pub evicted_total: AtomicU64,
    /// Connections closed to admit a newer one from the same client at the
    /// per-client cap.
    pub evicted_per_client: AtomicU64,
    /// Newcomers closed at once: every candidate was busy.
    pub refused: AtomicU64,
    /// Blocking queries waiting for a change right now.
    pub held: AtomicU64,
    /// Blocking queries answered early to make room for a newcomer.
    pub answered_early: AtomicU64,
}

/// One connection's state, shared by its task and the table.
#[derive(Debug)]
pub struct ConnState {
    /// Requests (queries) of its in progress.
    busy: AtomicUsize,
    /// Of those, blocking queries waiting for a change: they may be
    /// answered early (Consul's contract allows it; the client asks again)
    /// to make room, where a request being worked on never is.
    held: AtomicUsize,
    /// Cancelled when the table chose this connection and it was only
    /// holding blocking queries: they answer now, and the connection closes
    /// after the answer.
    pub answer_now: CancellationToken,
    /// It has answered at least one.
    served: AtomicBool,
    /// Since when it is idle: its last answer, or its start. std Mutex:
    /// a store per answer, a load per eviction.
    since: Mutex<Instant>,
    /// Cancelled when the table chose it to close.
    pub close: CancellationToken,
    /// The table's counters.
    stats: Arc<AdmissionStats>,
}

impl ConnState {
    fn new(stats: Arc<AdmissionStats>) -> ConnState {
        ConnState {
            stats,
            busy: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            answer_now: CancellationToken::new(),
            served: AtomicBool::new(false),
            since: Mutex::new(Instant::now()),
            close: CancellationToken::new(),
        }
    }

    /// A request (query) of this connection starts.
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A request (query) of this connection was answered.
    pub fn end(&self) {
        *self.since.locked() = Instant::now();
        self.served.store(true, Ordering::Relaxed);
        self.busy.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closes it to make room: at once, or when it only holds blocking
    /// queries, after they answer (now).
    fn make_room(&self) {
        let busy = self.busy.load(Ordering::Relaxed);
        if busy > 0 && self.held.load(Ordering::Relaxed) >= busy {
            self.stats.answered_early.fetch_add(1, Ordering::Relaxed);
            self.answer_now.cancel();
        } else {
            self.close.cancel();
        }
    }

    /// Waits for `change` as a blocking query of this connection, which
    /// may be told to answer early to make room: `None` then.
    pub async fn hold<T>(&self, change: impl std::future::Future<Output = T>) -> Option<T> {
        // Counted down however the wait ends (a timeout drops it).
        struct Held<'a>(&'a ConnState);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.held.fetch_sub(1, Ordering::Relaxed);
                self.0.stats.held.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.held.fetch_add(1, Ordering::Relaxed);
        self.stats.held.fetch_add(1, Ordering::Relaxed);
        let _held = Held(self);
        tokio::select! {
            v = change => Some(v),
            _ = self.answer_now.cancelled() => None,
        }
    }

    /// Whether it answered anything yet.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Lower goes first: (idle and answered, idle and never answered,
    /// holding blocking queries, busy), then the longest idle or waiting.
    fn rank(&self, evict_busy: bool) -> Option<(u8, Instant)> {
        let busy = self.busy.load(Ordering::Relaxed);
        let class = if busy > 0 && self.held.load(Ordering::Relaxed) >= busy {
            2
        } else if busy > 0 {
            if !evict_busy {
                return None;
            }
            3
        } else if self.served() {
            0
        } else {
            1
        };
        Some((class, *self.since.locked()))
    }
}

struct Entry {
    client: IpAddr,
    state: Arc<ConnState>,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Entry>,
    by_client: HashMap<IpAddr, HashSet<u64>>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.conns.remove(&id)?;
        if let Some(ids) = self.by_client.get_mut(&e.client) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_client.remove(&e.client);
            }
        }
        Some(e)
    }

    /// The connection of `client` to close first, if any may be.
    fn victim_of(&self, client: IpAddr, evict_busy: bool) -> Option<u64> {
        self.by_client
            .get(&client)?
            .iter()
            .filter_map(|id| Some((self.conns.get(id)?.state.rank(evict_busy)?, *id)))
            .min()
            .map(|(_, id)| id)
    }
}

/// The open connections of one listener. std Mutex: taken once per
/// connection opened or closed, never across `.await`; the scans at a cap
/// cover one client's connections.
pub struct Admission {
    limits: Limits,
    /// `"http"` or `"dns over tcp"`, for log lines.
    what: &'static str,
    table: Mutex<Table>,
    /// Arc: the listener's metrics collector reads it.
    pub stats: Arc<AdmissionStats>,
    reports: LogLimiter,
}

/// A connection's place in the table; gives it back when dropped.
pub struct Place {
    admission: Arc<Admission>,
    id: u64,
    pub state: Arc<ConnState>,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.admission.lock().remove(self.id).is_some() {
            self.admission.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Admission {
    pub fn new(what: &'static str, limits: Limits) -> Arc<Admission> {
        Self::with_stats(what, limits, Arc::default())
    }

    /// The table, counting into `stats` (created before the listener).
    pub fn with_stats(
        what: &'static str,
        limits: Limits,
        stats: Arc<AdmissionStats>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            limits,
            what,
            table: Mutex::new(Table::default()),
            stats,
            reports: LogLimiter::default(),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.locked()
    }

    /// Logs at most every 10 s.
    pub fn report(&self, what: &str) {
        if self.reports.due() {
            tracing::warn!(
                open = self.stats.open.load(Ordering::Relaxed),
                limit = self.limits.max,
                per_client = self.limits.per_client,
                "{}: {what} (counted in /metrics, logged every 10 s)",
                self.what
            );
        }
    }

    /// A place for a new connection from `client`, closing another
    /// connection when a cap is reached (see the module's doc); `None`
    /// when every candidate is busy.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Place> {
        let mut t = self.lock();
        let mine = t.by_client.get(&client).map_or(0, HashSet::len);
        let evicting = if mine >= self.limits.per_client {
            Some((
                client,
                &self.stats.evicted_per_client,
                "its own connection limit",
            ))
        } else if t.conns.len() >= self.limits.max {
            let hog = t
                .by_client
                .iter()
                .max_by_key(|(_, ids)| ids.len())
                .map(|(c, _)| *c)
                .unwrap_or(client);
            Some((hog, &self.stats.evicted_total, "the connection limit"))
        } else {
            None
        };
        if let Some((from, counter, cap)) = evicting {
            let Some(id) = t.victim_of(from, self.limits.evict_busy) else {
                drop(t);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.report(&format!(
                    "{client} reached {cap} and every candidate connection is busy; closing the new one"
                ));
                return None;
            };
            if let Some(e) = t.remove(id) {
                e.state.make_room();
                self.stats.open.fetch_sub(1, Ordering::Relaxed);
            }
            counter.fetch_add(1, Ordering::Relaxed);
            drop(t);
            self.report(&format!(
                "{client} reached {cap}: closing {from}'s longest-idle connection to admit it"
            ));
            t = self.lock();
        }
        let id = t.next;
        t.next += 1;
        let state = Arc::new(ConnState::new(Arc::clone(&self.stats)));
        t.conns.insert(
            id,
            Entry {
                client,
                state: Arc::clone(&state),
            },
        );
        t.by_client.entry(client).or_default().insert(id);
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Place {
            admission: Arc::clone(self),
            id,
            state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn a_client_at_its_cap_loses_its_own_longest_idle_connection() {
        let a = Admission::new(
            "test",
            Limits {
                max: 100,
                per_client: 3,
                evict_busy: false,
            },
        );
        let first = a.admit(ip(1)).unwrap();
        let second = a.admit(ip(1)).unwrap();
        let third = a.admit(ip(1)).unwrap();
        // The second has answered and idles; the others never sent anything.
        second.state.begin();
        second.state.end();
        let other = a.admit(ip(2)).unwrap();
        let fourth = a.admit(ip(1)).unwrap();
        assert!(
            second.state.close.is_cancelled(),
            "answered and idle goes first"
        );
        assert!(!first.state.close.is_cancelled() && !third.state.close.is_cancelled());
        let _fifth = a.admit(ip(1)).unwrap();
        assert!(
            first.state.close.is_cancelled(),
            "then the one waiting longest"
        );
        assert!(!other.state.close.is_cancelled(), "never another client's");
        // Busy ones are kept when the listener says so: the newcomer goes.
        third.state.begin();
        fourth.state.begin();
        _fifth.state.begin();
        assert!(a.admit(ip(1)).is_none());
        assert_eq!(a.stats.refused.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.evicted_per_client.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn at_the_total_cap_the_biggest_holder_gives_way() {
        let a = Admission::new(
            "test",
            Limits {
                max: 4,
                per_client: 10,
                evict_busy: true,
            },
        );
        let hog: Vec<Place> = (0..3).map(|_| a.admit(ip(1)).unwrap()).collect();
        let small = a.admit(ip(2)).unwrap();
        for p in &hog {
            p.state.begin();
        }
        let _new = a.admit(ip(3)).unwrap();
        assert!(hog[0].state.close.is_cancelled(), "busy ones may go here");
        assert!(!small.state.close.is_cancelled());
        assert_eq!(a.stats.open.load(Ordering::Relaxed), 4);
        drop(hog);
        assert_eq!(a.stats.open.load(Ordering::Relaxed), 2);
    }
}
