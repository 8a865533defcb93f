//! The local datacenter's mirror, over a fixed handful of connections.
//!
//! Two blocking reads tell what changed, and only what changed is read:
//!
//! * `/v1/catalog/services` moves on every change to any service instance.
//!   Its body (names and tags) shows services added, removed or retagged;
//!   each move also reads `/v1/internal/ui/services` once, whose per-service
//!   nodes, instance and check counts show instances added and removed. A
//!   move that neither explains (an instance changed in place: a new
//!   address or port under the same ID) re-reads every service, comparing
//!   indexes so that only the changed ones are written.
//! * `/v1/health/state/any?filter=Status != "passing"` moves on every check
//!   change. Its body is only the checks that are not passing (small in a
//!   healthy cluster), so a check that goes critical appears in it, one
//!   that recovers leaves it: either marks its service (or, for a node's
//!   own check, every service on that node).
//!
//! Marked services wait in one queue, each at most once, and
//! [`READERS`](super::Budget) reader tasks read `/v1/health/service/:name`
//! (non-blocking) and apply it. Every [`SWEEP_EVERY`] every service is read
//! again the same way, which heals what no feed shows (a passing check's
//! output, a node's new address).

use std::collections::{HashSet, VecDeque};

use super::blocking::segment;
use super::wire::{CheckState, Summary};
use super::*;

/// Every service is read again this often, whatever the feeds say.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// The checks feed: only checks that are not passing.
const NOT_PASSING: &str = "Status != \"passing\"";

/// Services waiting to be read, each once: a service marked again while it
/// is queued keeps its place; marked while being read, it is read again.
#[derive(Default)]
pub(super) struct Dirty {
    queue: VecDeque<String>,
    /// Queued, with when it was first marked (for the metric).
    queued: HashMap<String, Instant>,
    reading: HashSet<String>,
    /// Marked again while being read.
    again: HashMap<String, Instant>,
}

impl Dirty {
    fn mark(&mut self, name: &str, at: Instant) {
        if self.reading.contains(name) {
            self.again.entry(name.to_string()).or_insert(at);
        } else if !self.queued.contains_key(name) {
            self.queued.insert(name.to_string(), at);
            self.queue.push_back(name.to_string());
        }
    }

    fn take(&mut self) -> Option<(String, Instant)> {
        let name = self.queue.pop_front()?;
        let at = self.queued.remove(&name).unwrap_or_else(Instant::now);
        self.reading.insert(name.clone());
        Some((name, at))
    }

    /// A read is over: `retry` puts the service back (the read failed).
    fn done(&mut self, name: &str, at: Instant, retry: bool) {
        self.reading.remove(name);
        let again = self.again.remove(name);
        if retry || again.is_some() {
            self.mark(name, if retry { at } else { again.unwrap_or(at) });
        }
    }

    fn pending(&self, name: &str) -> bool {
        self.queued.contains_key(name) || self.reading.contains(name)
    }

    pub(super) fn outstanding(&self) -> usize {
        self.queue.len() + self.reading.len()
    }
}

/// What the feeds last saw, to tell what changed.
type Checks = HashMap<(String, String), CheckState>;

/// The services whose listing or summary differs between two reads.
fn changed_services<'a>(
    old: &'a BTreeMap<String, Vec<String>>,
    new: &'a BTreeMap<String, Vec<String>>,
    old_summaries: &'a Option<HashMap<String, Summary>>,
    new_summaries: &'a Option<HashMap<String, Summary>>,
) -> BTreeSet<&'a str> {
    let mut out = BTreeSet::new();
    for (name, tags) in new {
        if old.get(name) != Some(tags) {
            out.insert(name.as_str());
        }
    }
    out.extend(
        old.keys()
            .filter(|n| !new.contains_key(*n))
            .map(String::as_str),
    );
    if let (Some(old), Some(new)) = (old_summaries, new_summaries) {
        for (name, summary) in new {
            if old.get(name) != Some(summary) {
                out.insert(name.as_str());
            }
        }
        out.extend(
            old.keys()
                .filter(|n| !new.contains_key(*n))
                .map(String::as_str),
        );
    }
    out
}

impl ConsulSync {
    /// Marks services for reading and wakes a reader.
    fn mark<'a>(&self, names: impl IntoIterator<Item = &'a str>, at: Instant) -> usize {
        let mut dirty = self.dirty.locked();
        let mut n = 0;
        for name in names {
            dirty.mark(name, at);
            n += 1;
        }
        self.stats.queued.set(dirty.outstanding() as i64);
        drop(dirty);
        self.work.notify_waiters();
        self.work.notify_one();
        n
    }

    /// Marks every service the mirror knows or the agent lists.
    fn mark_all(&self, listed: &BTreeMap<String, Vec<String>>, at: Instant) {
        let known: Vec<String> = self.indexes.locked().keys().cloned().collect();
        self.mark(
            listed
                .keys()
                .map(String::as_str)
                .chain(known.iter().map(String::as_str)),
            at,
        );
    }

    /// The local mirror: a first full read, then the two feeds.
    pub(super) async fn follow_local(self: Arc<Self>) {
        let (checks_index, checks) = self.until_ok(|| self.read_checks(0)).await;
        let (mut index, mut services, _) = self
            .until_ok(|| {
                self.get::<BTreeMap<String, Vec<String>>>(
                    "/v1/catalog/services",
                    None,
                    0,
                    LONG_WAIT,
                )
            })
            .await;
        let mut summaries = self.read_summaries().await;
        self.mark_all(&services, Instant::now());
        self.drained().await;
        self.synced.store(true, Ordering::SeqCst);
        self.stats.synced.set(1);
        tracing::info!(
            services = services.len(),
            requests = self.requests(),
            "first sync from consul done in {:.2}s",
            self.started.elapsed().as_secs_f64()
        );
        self.tasks
            .locked()
            .spawn(Arc::clone(&self).follow_checks(checks_index, checks));

        let mut backoff = Backoff::new();
        let mut swept = Instant::now();
        let mut lost_contact = false;
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
            let (returned, now, arrived) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&e);
                    lost_contact = true;
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            let moved = returned != index || lost_contact;
            if moved {
                let fresh = self.read_summaries().await;
                if returned < index || index == 0 || lost_contact || swept.elapsed() >= SWEEP_EVERY
                {
                    // Consul started over (its index went backwards, and
                    // this or the next read, at index 0, sees it), the
                    // agent was out of reach, or it is time: read
                    // everything again.
                    self.mark_all(&now, arrived);
                    swept = Instant::now();
                } else {
                    let changed = changed_services(&services, &now, &summaries, &fresh);
                    // The service changed last is read at an index no lower
                    // than the listing's: if none of those found is, the
                    // last change is one neither body shows (an instance
                    // changed in place, under the same ID).
                    let placed = !changed.is_empty() && {
                        let names: Vec<String> = changed.iter().map(|n| n.to_string()).collect();
                        self.mark(changed, arrived);
                        self.read_through(&names).await;
                        let indexes = self.indexes.locked();
                        names.iter().filter_map(|n| indexes.get(n)).max() >= Some(&returned)
                    };
                    if !placed {
                        self.stats.sweeps.inc();
                        self.mark_all(&now, arrived);
                    }
                }
                summaries = fresh;
                lost_contact = false;
                // Forget the indexes of services gone and read.
                let dirty = self.dirty.locked();
                self.indexes
                    .locked()
                    .retain(|name, _| now.contains_key(name) || dirty.pending(name));
            }
            services = now;
            index = next_index(index, returned);
            tokio::time::sleep_until(feed_pace(started, arrived, moved)).await;
        }
    }

    /// Follows the checks that are not passing; a check that joins, leaves
    /// or changes in that set marks its service.
    async fn follow_checks(self: Arc<Self>, mut index: u64, mut checks: Checks) {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let (returned, now) = match self.read_checks(index).await {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            let arrived = Instant::now();
            let changed: Vec<&CheckState> = now
                .iter()
                .filter(|(k, c)| checks.get(*k) != Some(*c))
                .chain(checks.iter().filter(|(k, _)| !now.contains_key(*k)))
                .map(|(_, c)| c)
                .collect();
            if !changed.is_empty() {
                let mut names: BTreeSet<String> = BTreeSet::new();
                self.registry.read(|s| {
                    for c in &changed {
                        if c.service_name.is_empty() {
                            // The node's own check: all of its services.
                            names.extend(
                                s.node_instances(&c.node)
                                    .filter(|v| v.instance.source == Source::Consul)
                                    .map(|v| v.instance.name.to_string()),
                            );
                        } else {
                            names.insert(c.service_name.clone());
                        }
                    }
                });
                self.mark(names.iter().map(String::as_str), arrived);
            }
            let moved = returned != index;
            checks = now;
            index = next_index(index, returned);
            tokio::time::sleep_until(feed_pace(started, arrived, moved)).await;
        }
    }

    async fn read_checks(&self, index: u64) -> Result<(u64, Checks), SyncError> {
        let path = format!("/v1/health/state/any?filter={}", segment(NOT_PASSING));
        let (returned, list, _) = self
            .get::<Vec<CheckState>>(&path, None, index, LONG_WAIT)
            .await?;
        let checks = list
            .into_iter()
            .map(|c| ((c.node.clone(), c.check_id.clone()), c))
            .collect();
        Ok((returned, checks))
    }

    /// `/v1/internal/ui/services` by name, or `None` where the agent does
    /// not serve it (every unexplained move then re-reads every service).
    async fn read_summaries(&self) -> Option<HashMap<String, Summary>> {
        if self.no_summaries.load(Ordering::Relaxed) {
            return None;
        }
        match self
            .get::<Vec<Summary>>("/v1/internal/ui/services", None, 0, Duration::ZERO)
            .await
        {
            Ok((_, list, _)) => Some(
                list.into_iter()
                    .filter(|s| s.peer_name.is_empty())
                    .map(|s| (s.name.clone(), s))
                    .collect(),
            ),
            Err(SyncError::Status { status: 404, .. }) => {
                tracing::info!(
                    "the agent has no /v1/internal/ui/services: a change it cannot place re-reads every service"
                );
                self.no_summaries.store(true, Ordering::Relaxed);
                None
            }
            Err(e) => {
                self.failed(&e);
                None
            }
        }
    }

    /// Retries a read with backoff until it succeeds.
    async fn until_ok<T, F, Fut>(&self, read: F) -> T
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, SyncError>>,
    {
        let mut backoff = Backoff::new();
        loop {
            match read().await {
                Ok(v) => return v,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    /// Until nothing is queued or being read.
    async fn drained(&self) {
        loop {
            let read = self.read_done.notified();
            if self.dirty.locked().outstanding() == 0 {
                return;
            }
            read.await;
        }
    }

    /// Until these services are read (or a while has passed: the agent may
    /// be failing, and the feed must go on).
    async fn read_through(&self, names: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let read = self.read_done.notified();
            if !names.iter().any(|n| self.dirty.locked().pending(n)) {
                return;
            }
            if tokio::time::timeout_at(deadline, read).await.is_err() {
                return;
            }
        }
    }

    /// A reader: one connection's worth of `/v1/health/service/:name` reads
    /// of marked services.
    pub(super) async fn read_marked(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            let work = self.work.notified();
            let next = self.dirty.locked().take();
            let Some((name, marked)) = next else {
                work.await;
                continue;
            };
            let path = format!("/v1/health/service/{}", segment(&name));
            let result = self.get::<Vec<Entry>>(&path, None, 0, Duration::ZERO).await;
            let ok = match result {
                Ok((index, entries, _)) => {
                    backoff.reset();
                    let seen = self.indexes.locked().get(&name) == Some(&index);
                    if !seen {
                        self.apply(None, &name, entries);
                        self.indexes.locked().insert(name.clone(), index);
                    }
                    if self.is_synced() {
                        self.stats
                            .change_to_dns
                            .observe(marked.elapsed().as_secs_f64());
                    }
                    true
                }
                Err(e) => {
                    self.failed(&e);
                    false
                }
            };
            let outstanding = {
                let mut dirty = self.dirty.locked();
                dirty.done(&name, marked, !ok);
                dirty.outstanding()
            };
            self.stats.queued.set(outstanding as i64);
            self.read_done.notify_waiters();
            if !ok {
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_is_queued_once_and_read_again_if_marked_while_read() {
        let mut d = Dirty::default();
        let t = Instant::now();
        d.mark("web", t);
        d.mark("web", t);
        d.mark("db", t);
        assert_eq!(d.outstanding(), 2);
        let (first, _) = d.take().unwrap();
        assert_eq!(first, "web");
        d.mark("web", t);
        assert_eq!(d.outstanding(), 2, "marked while read: not queued twice");
        d.done("web", t, false);
        assert_eq!(d.outstanding(), 2, "read again");
        let (second, _) = d.take().unwrap();
        assert_eq!(second, "db");
        d.done("db", t, true);
        assert_eq!(
            d.queue.iter().filter(|n| *n == "db").count(),
            1,
            "failed: back"
        );
    }
}
