//! The write path: validate → persist → apply → notify, and never half.
//!
//! A write runs its transaction on the *tip*, a copy of the state that
//! holds every write so far (cheap: [`State`] is made of persistent maps).
//! Readers see *visible*, which only ever holds writes that are on disk.
//! A write the HTTP API must make durable is queued with the rows it
//! changed; the committer thread takes everything queued, writes it in one
//! redb transaction (one fsync for every writer waiting: group commit), and
//! then makes the tip as of that batch visible, rebuilds the DNS answers
//! for what changed and wakes watchers, before any writer in the batch is
//! answered. The disk is never touched under a lock that readers or the
//! DNS path take.
//!
//! The committer thread and what it does when the store refuses a batch
//! are in [`committer`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{oneshot, watch};

use super::shared::{self, Committed, Event, Shared};
use super::store::{Durable, Rows, StoreError};
use super::topics::{Topic, Topics};
use super::{ChangeListener, Changes, State, Touched, Txn};

mod committer;
use committer::commit_loop;

/// In a cluster: how many times a write runs again after another member
/// wrote a key it read, before it gives up.
const SHARED_RETRIES: usize = 32;
/// In a cluster: how long a committed write waits for this member's
/// change stream to bring it back before the writer is told so.
const APPLY_WAIT: Duration = Duration::from_secs(15);

/// Whether the store accepts writes; read by `/ready`, `/metrics` and the
/// status endpoint. Atomics and a small mutex: written by the committer
/// thread, read from anywhere, never held across anything slow.
#[derive(Debug, Default)]
pub struct StoreStatus {
    degraded: AtomicBool,
    /// Batches the store refused, ever.
    pub failed_batches: AtomicU64,
    /// Writes refused because the store failed, ever.
    pub refused_writes: AtomicU64,
    /// Batches written, and the writes they carried (their ratio is the
    /// group-commit factor).
    pub batches: AtomicU64,
    pub batched_writes: AtomicU64,
    /// Time spent in store commits (write + fsync), in nanoseconds.
    pub commit_nanos: AtomicU64,
    /// The reason of the failure that started the degraded state.
    reason: Mutex<Option<String>>,
}

impl StoreStatus {
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Why the store is degraded, while it is.
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// A write applied to the tip that readers cannot see yet.
struct Pending {
    /// What to write to the store; `None` for writes that need no disk.
    rows: Option<Rows>,
    changes: Changes,
    /// A write that needs no disk: its keys and the tip right after it, to
    /// put it back after a refused batch took the tip back. Durable writes
    /// keep no copy: a copy per write would make the next write copy its
    /// paths again, and the disk, not memory, is what they wait for.
    replay: Option<(Touched, State)>,
    reply: Option<Reply>,
}

/// The writers' side, under one mutex held only for in-memory work.
struct Writer {
    tip: State,
    /// Applied to `tip`, oldest first, not yet taken by the committer.
    queued: VecDeque<Pending>,
    /// Taken by the committer and being written now.
    in_flight: bool,
    stopping: bool,
}

impl Writer {
    /// Nothing applied to the tip is waiting to become visible.
    fn settled(&self) -> bool {
        self.queued.is_empty() && !self.in_flight
    }
}

/// The registry. Cheap to share: clone the `Arc` around it.
pub struct Registry {
    /// What readers see: only what is on disk (or needs no disk). An
    /// `ArcSwap` so that a read never takes a lock and never waits for a
    /// writer or the disk.
    visible: ArcSwap<State>,
    /// The tip and the queue. A std mutex: held for in-memory work only
    /// (one transaction, or publishing a batch), never across `.await` or a
    /// disk write.
    writer: Mutex<Writer>,
    /// Wakes the committer when something is queued.
    queued: Condvar,
    listener: Arc<dyn ChangeListener>,
    /// The visible change index, for blocking queries and anything else
    /// that waits for "something changed" without polling.
    index_tx: watch::Sender<u64>,
    /// The same, per service and per table, for blocking queries that
    /// watch one thing.
    topics: Topics,
    durable: bool,
    /// In a cluster, the store every member shares: writes go there first
    /// and come back through [`apply_events`](Self::apply_events). There
    /// is no committer then, and the tip is always the visible state.
    shared: Option<Arc<dyn Shared>>,
    status: Arc<StoreStatus>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Registry {
    /// A registry that keeps everything in memory.
    pub fn new(listener: Arc<dyn ChangeListener>) -> Arc<Registry> {
        Self::build(listener, false, None)
    }

    /// A cluster member's registry: API writes are committed in `shared`
    /// and become visible when its change stream brings them back.
    pub fn with_shared(
        listener: Arc<dyn ChangeListener>,
        shared: Arc<dyn Shared>,
    ) -> Arc<Registry> {
        Self::build(listener, false, Some(shared))
    }

    /// A registry whose API writes are made durable in `store` before they
    /// are visible. Starts the committer thread that owns the store.
    pub fn with_store(
        listener: Arc<dyn ChangeListener>,
        store: Option<Box<dyn Durable>>,
    ) -> Arc<Registry> {
        let Some(store) = store else {
            return Self::new(listener);
        };
        let registry = Self::build(listener, true, None);
        let weak = Arc::downgrade(&registry);
        let handle = std::thread::Builder::new()
            .name("store-commit".into())
            .spawn(move || commit_loop(weak, store))
            .expect("cannot start the store thread");
        *registry.committer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        registry
    }

    fn build(
        listener: Arc<dyn ChangeListener>,
        durable: bool,
        shared: Option<Arc<dyn Shared>>,
    ) -> Arc<Registry> {
        let (index_tx, _) = watch::channel(0);
        Arc::new(Registry {
            visible: ArcSwap::from_pointee(State::default()),
            writer: Mutex::new(Writer {
                tip: State::default(),
                queued: VecDeque::new(),
                in_flight: false,
                stopping: false,
            }),
            queued: Condvar::new(),
            listener,
            index_tx,
            topics: Topics::new(),
            durable,
            shared,
            status: Arc::new(StoreStatus::default()),
            committer: Mutex::new(None),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic inside a transaction may leave the tip half-changed; the
        // visible state is untouched, and a DNS server that stops taking
        // writes is worse than one that goes on: keep going.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index a local write commits at: the next one, or in a cluster
    /// the current revision (only the shared store moves the index there).
    fn next_index(&self, w: &Writer) -> u64 {
        match self.shared {
            Some(_) => w.tip.index,
            None => w.tip.index + 1,
        }
    }

    /// Runs `f` on the tip at `next_index`. Returns its output, what it
    /// changed and which keys it touched; the tip's index has moved to
    /// `next_index` when anything changed.
    fn apply<R>(
        w: &mut Writer,
        next_index: u64,
        f: impl FnOnce(&mut Txn<'_>) -> R,
    ) -> (R, Changes, Touched) {
        let mut txn = Txn {
            state: &mut w.tip,
            changes: Changes::default(),
            touched: Touched::default(),
            next_index,
        };
        let out = f(&mut txn);
        let changes = std::mem::take(&mut txn.changes);
        let touched = std::mem::take(&mut txn.touched);
        if !changes.is_empty() {
            w.tip.index = next_index;
            w.tip.stamp(&changes, next_index);
        }
        (out, changes, touched)
    }

    /// Shows `state` to readers, rebuilds the answers for `changes` and
    /// wakes watchers. Called with the writers' lock held, so publications
    /// happen in index order. Returns the state it replaced, for the caller
    /// to drop once the lock is released: freeing a batch's worth of
    /// replaced map nodes is work no writer should wait behind.
    #[must_use = "drop the replaced state after releasing the writers' lock"]
    fn publish(&self, state: State, changes: &Changes) -> Arc<State> {
        let index = state.index;
        let state = Arc::new(state);
        let old = self.visible.swap(state.clone());
        self.listener.changed(&state, changes);
        self.index_tx.send_replace(index);
        self.topics.publish(index, changes);
        old
    }

    /// Runs `f` as one transaction that needs no disk (zones/, Consul,
    /// health). When it changed anything the index moves by one; it is
    /// visible, in DNS and to watchers when this returns, unless durable
    /// writes are on their way to the disk: then it becomes visible with
    /// them, within one disk flush, in order.
    pub fn write<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> R) -> R {
        let mut w = self.lock();
        let next = self.next_index(&w);
        let (out, changes, touched) = Self::apply(&mut w, next, f);
        if changes.is_empty() {
            return out;
        }
        if w.settled() {
            let state = w.tip.clone();
            let replaced = self.publish(state, &changes);
            drop(w);
            drop(replaced);
        } else {
            let after = w.tip.clone();
            w.queued.push_back(Pending {
                rows: None,
                changes,
                replay: Some((touched, after)),
                reply: None,
            });
            self.queued.notify_one();
        }
        out
    }

    /// As [`write`](Self::write), and the API entries it touched are on
    /// disk before it is visible and before this returns. When the store
    /// refuses it, it was never visible and nothing changed.
    ///
    /// In a cluster it is committed in the shared store instead, and runs
    /// again (so `f` is `Fn`) when another member wrote what it read.
    pub async fn write_api<R>(&self, f: impl Fn(&mut Txn<'_>) -> R) -> Result<R, StoreError> {
        if let Some(shared) = &self.shared {
            return self.write_shared(shared.as_ref(), f).await;
        }
        if !self.durable {
            return Ok(self.write(f));
        }
        let rx = {
            let mut w = self.lock();
            let next = w.tip.index + 1;
            let (out, changes, touched) = Self::apply(&mut w, next, f);
            // A write that changed nothing still waits for the writes
            // before it: what it read of them must not be acknowledged
            // before they are on disk.
            if changes.is_empty() && w.settled() {
                return Ok(out);
            }
            let rows = (!touched.is_empty()).then(|| Rows::of(&w.tip, &touched));
            let (tx, rx) = oneshot::channel();
            w.queued.push_back(Pending {
                rows: Some(rows.unwrap_or_default()),
                changes,
                replay: None,
                reply: Some(tx),
            });
            self.queued.notify_one();
            (out, rx)
        };
        let (out, rx) = rx;
        match rx.await {
            Ok(Ok(())) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::stopped()),
        }
    }

    /// Puts back entries read from the store as they were, indexes and all,
    /// at the index the store had reached. Call once, before anything else
    /// writes.
    pub fn restore(&self, saved: super::store::Saved) -> usize {
        let count = saved.nodes.len()
            + saved.instances.len()
            + saved.checks.len()
            + saved.kv.len()
            + saved.sessions.len()
            + saved.queries.len();
        let mut w = self.lock();
        w.tip.index = w.tip.index.max(saved.index);
        let next = w.tip.index + 1;
        let (_, changes, _) = Self::apply(&mut w, next, |txn| txn.restore(saved));
        if !changes.is_empty() {
            let state = w.tip.clone();
            drop(self.publish(state, &changes));
        }
        count
    }

    /// A write by this agent of what it alone keeps (a check's status, its
    /// host's containers): local, except in a cluster, where every member
    /// must see it (an instance failing on one host leaves DNS on all). A
    /// write the shared store refused is logged: the source writes again
    /// at its next change or resync.
    pub async fn write_agent<R>(&self, f: impl Fn(&mut Txn<'_>) -> R) {
        match &self.shared {
            Some(shared) => {
                if let Err(e) = self.write_shared(shared.as_ref(), f).await {
                    tracing::warn!("cannot share this agent's write: {e}");
                }
            }
            None => drop(self.write(f)),
        }
    }

    /// A write in a cluster: run on a copy of the visible state, committed
    /// in the shared store if nothing it read moved, acknowledged once this
    /// member applied it.
    async fn write_shared<R>(
        &self,
        shared: &dyn Shared,
        f: impl Fn(&mut Txn<'_>) -> R,
    ) -> Result<R, StoreError> {
        for _ in 0..SHARED_RETRIES {
            let before = self.visible.load_full();
            let mut after = State::clone(&before);
            let mut txn = Txn {
                state: &mut after,
                changes: Changes::default(),
                touched: Touched::default(),
                next_index: before.index + 1,
            };
            let out = f(&mut txn);
            let touched = std::mem::take(&mut txn.touched);
            let ops = shared::ops(&before, &after, &touched);
            if ops.is_empty() {
                // Nothing shared: what it changed (if anything) is local.
                return Ok(self.write(&f));
            }
            match shared.commit(ops).await? {
                Committed::At(rev) => {
                    self.applied(rev).await?;
                    return Ok(out);
                }
                Committed::Stale(rev) => self.applied(rev).await?,
            }
        }
        Err(StoreError::new(
            "etcd",
            format!("{SHARED_RETRIES} tries in a row found a key written by another member since it was read; try again"),
        ))
    }

    /// Waits until this member has applied the shared store's `rev`.
    async fn applied(&self, rev: u64) -> Result<(), StoreError> {
        let mut rx = self.index_tx.subscribe();
        let reached = tokio::time::timeout(APPLY_WAIT, async {
            rx.wait_for(|i| *i >= rev).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok(()),
            _ => Err(StoreError::new(
                "etcd",
                format!(
                    "committed at revision {rev}, but this member's change stream has not brought it back within {} s",
                    APPLY_WAIT.as_secs()
                ),
            )),
        }
    }

    /// Applies a batch of the shared store's change stream, in revision
    /// order, and makes it visible at `revision` (the stream's header: it
    /// may be past the last event). Returns the events that could not be
    /// applied, for the caller to log.
    pub fn apply_events(&self, events: Vec<Event>, revision: u64) -> Vec<shared::BadEvent> {
        let mut bad = Vec::new();
        let mut all = Changes::default();
        let mut w = self.lock();
        for mut group in events
            .chunk_by(|a, b| a.mod_revision == b.mod_revision)
            .map(<[Event]>::to_vec)
        {
            shared::apply_order(&mut group);
            let rev = group[0].mod_revision.max(w.tip.index);
            let (_, changes, _) = Self::apply(&mut w, rev, |t| {
                bad.extend(group.iter().filter_map(|e| t.apply_event(e).err()));
            });
            all.merge(changes);
        }
        w.tip.index = w.tip.index.max(revision);
        let replaced = self.publish(w.tip.clone(), &all);
        drop(w);
        drop(replaced);
        bad
    }

    /// Replaces every shared entry with `events`, a full read of the
    /// shared store at `revision` (at start, or when the revision to resume
    /// from was compacted): keys this member has and the read has not are
    /// removed.
    pub fn reload_shared(&self, mut events: Vec<Event>, revision: u64) -> Vec<shared::BadEvent> {
        let gone: Vec<Event> = {
            let w = self.lock();
            let have: std::collections::HashSet<&str> =
                events.iter().map(|e| e.key.as_str()).collect();
            w.tip
                .shared_keys()
                .filter(|(k, _)| !have.contains(k))
                .map(|(k, _)| Event {
                    key: k.to_string(),
                    value: None,
                    create_revision: 0,
                    mod_revision: revision,
                })
                .collect()
        };
        events.extend(gone);
        shared::apply_order(&mut events);
        let mut bad = Vec::new();
        let mut w = self.lock();
        let next = revision.max(w.tip.index);
        let (_, changes, _) = Self::apply(&mut w, next, |t| {
            bad.extend(events.iter().filter_map(|e| t.apply_event(e).err()));
        });
        w.tip.index = next;
        let replaced = self.publish(w.tip.clone(), &changes);
        drop(w);
        drop(replaced);
        bad
    }

    /// Whether this registry is a cluster member's.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Whether API writes outlive the process.
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The store's health, for readiness and metrics.
    pub fn store_status(&self) -> &Arc<StoreStatus> {
        &self.status
    }

    /// Reads the visible state. Never waits for a writer or the disk.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.visible.load())
    }

    /// Reads the tip: every write so far, including those still on their
    /// way to the disk. For a writer that must see the writes before its
    /// own (a source computing what it no longer has); holds up writers
    /// while `f` runs.
    pub fn read_latest<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&self.lock().tip)
    }

    pub fn index(&self) -> u64 {
        *self.index_tx.borrow()
    }

    /// A receiver that wakes whenever the visible index moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.index_tx.subscribe()
    }

    /// A receiver that sees the index of each change to `topic` (and only
    /// to it) from now on.
    pub fn subscribe_to(&self, topic: Topic<'_>) -> watch::Receiver<u64> {
        match topic {
            Topic::Service(lower) => self.topics.subscribe_service(lower),
            Topic::Table(t) => self.topics.subscribe_table(t),
            Topic::Any => self.index_tx.subscribe(),
        }
    }

    /// Waits for queued writes to be written and stops the committer.
    pub fn close(&self) {
        self.lock().stopping = true;
        self.queued.notify_all();
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
