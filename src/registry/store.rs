//! Durable state: what the HTTP API registered (nodes, instances, checks)
//! and the KV store, kept in `--data-dir/signpost.redb`.
//!
//! redb gives ACID transactions that are on disk when `commit` returns, so
//! a write the API acknowledged survives a crash or `kill -9`. Entries from
//! zones/ files or from Consul are never stored here: their source is the
//! truth and is read again at start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Check, Instance, KvEntry, Node, Session, Source, State, Touched};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
/// Key: `node \0 id`.
const INSTANCES: TableDefinition<&str, &[u8]> = TableDefinition::new("instances");
/// Key: `node \0 check id`.
const CHECKS: TableDefinition<&str, &[u8]> = TableDefinition::new("checks");
const KV_VALUES: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_values");
/// flags, CreateIndex, ModifyIndex.
const KV_META: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("kv_meta");
/// `index`: the registry's change index, so it never goes backwards across
/// a restart.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Key: session ID; value: the session as JSON.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// Key: prepared query ID; value: the query as JSON.
const QUERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("queries");
/// A KV key's LockIndex and the session holding it ("" for none); a table
/// of its own so that stores written before sessions open unchanged.
const KV_LOCKS: TableDefinition<&str, (u64, &str)> = TableDefinition::new("kv_locks");
/// `node`: the node that signpost's own agent registrations belong to,
/// recorded at first start (see [`Store::adopt_node`]).
const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");

pub const FILE_NAME: &str = "signpost.redb";

#[derive(Debug, Clone, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StoreError {
    path: PathBuf,
    reason: String,
}

impl StoreError {
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> StoreError {
        StoreError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The committer thread is gone (signpost is shutting down).
    pub fn stopped() -> StoreError {
        StoreError {
            path: PathBuf::from(FILE_NAME),
            reason: "the store is closed (shutting down)".into(),
        }
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// The store. The database handle is dropped after a failed write and
/// opened again before the next one: redb refuses every write after an I/O
/// error until the handle is reopened ("previous I/O error").
pub struct Store {
    db: Option<Database>,
    path: PathBuf,
}

/// The seam where a store plugs into the registry's write path: the
/// committer thread hands it each batch of writes' rows, and a write is
/// acknowledged (and made visible) only once the batch is durable. The
/// embedded store ([`Store`], redb in `--data-dir`) is one implementation;
/// a replicated one (a cluster's) is another.
pub trait Durable: Send {
    /// Makes a batch durable in one transaction: all of it when this
    /// returns `Ok`, none of it otherwise.
    fn write(&mut self, batch: &[&Rows]) -> Result<(), StoreError>;
    /// After a failed write: whatever the failure left behind is dropped,
    /// so the next write starts afresh.
    fn reset(&mut self);
    /// A write that changes nothing, to learn whether writes are taken
    /// again (a full disk freed, a store that came back).
    fn probe(&mut self) -> Result<(), StoreError>;
}

impl Durable for Store {
    fn write(&mut self, batch: &[&Rows]) -> Result<(), StoreError> {
        Store::write(self, batch)
    }

    fn reset(&mut self) {
        Store::reset(self)
    }

    fn probe(&mut self) -> Result<(), StoreError> {
        Store::probe(self)
    }
}

/// What the store held at start.
#[derive(Debug, Default)]
pub struct Saved {
    pub index: u64,
    pub nodes: Vec<Node>,
    pub instances: Vec<Instance>,
    pub checks: Vec<Check>,
    pub kv: Vec<KvEntry>,
    pub sessions: Vec<Session>,
    pub queries: Vec<super::query::PreparedQuery>,
}

/// One write's changes to the store, serialized when the write was
/// applied: `None` removes the key.
#[derive(Debug, Default)]
pub struct Rows {
    index: u64,
    nodes: Vec<(String, Option<Vec<u8>>)>,
    instances: Vec<(String, Option<Vec<u8>>)>,
    checks: Vec<(String, Option<Vec<u8>>)>,
    kv: Vec<(String, Option<KvRow>)>,
    sessions: Vec<(String, Option<Vec<u8>>)>,
    queries: Vec<(String, Option<Vec<u8>>)>,
}

/// A KV row: the value, (flags, CreateIndex, ModifyIndex), and (LockIndex,
/// holding session or "").
type KvRow = (Vec<u8>, (u64, u64, u64), (u64, String));

impl Rows {
    /// The API entries among `touched` as `state` has them, and removals
    /// of the others (an entry that another source took over is forgotten).
    pub fn of(state: &State, touched: &Touched) -> Rows {
        Rows {
            index: state.index(),
            nodes: touched
                .nodes
                .iter()
                .map(|name| {
                    let row = state.node(name).filter(|n| n.source == Source::Api);
                    (name.clone(), row.map(json))
                })
                .collect(),
            instances: touched
                .instances
                .iter()
                .map(|key| {
                    let row = state.instance(key).filter(|i| i.source == Source::Api);
                    (pair_key(&key.node, &key.id), row.map(json))
                })
                .collect(),
            checks: touched
                .checks
                .iter()
                .map(|(node, id)| {
                    let row = state.check(node, id).filter(|c| c.source == Source::Api);
                    (pair_key(node, id), row.map(json))
                })
                .collect(),
            kv: touched
                .kv
                .iter()
                .map(|key| {
                    let row = state.kv_get(key).map(|e| {
                        (
                            e.value.clone(),
                            (e.flags, e.create_index, e.modify_index),
                            (e.lock_index, e.session.clone().unwrap_or_default()),
                        )
                    });
                    (key.clone(), row)
                })
                .collect(),
            sessions: touched
                .sessions
                .iter()
                .map(|id| (id.clone(), state.session(id).map(json)))
                .collect(),
            queries: touched
                .queries
                .iter()
                .map(|id| (id.clone(), state.query(id).map(json)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.instances.is_empty()
            && self.checks.is_empty()
            && self.kv.is_empty()
            && self.sessions.is_empty()
            && self.queries.is_empty()
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry entries serialize")
}

/// redb's page cache; see [`Store::open`].
const STORE_CACHE_BYTES: usize = 8 << 20;

fn pair_key(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

/// What to do with a store that cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damaged {
    /// Stop with the file and the reason.
    Refuse,
    /// Rename the file to `signpost.redb.damaged-<unix time>` and start
    /// with an empty store.
    MoveAside,
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

thread_local! {
    /// Set while this thread runs redb code under [`guarded`]: a panic
    /// there is a damaged store, reported as an error, so the panic hook
    /// stays quiet instead of printing what looks like a crash.
    static IN_STORE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (redb code) so that a panic inside redb, which it has been
/// seen to raise on damaged pages (`unreachable`, an invalid page type),
/// becomes an error naming it, at start or on any later read or write.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_STORE.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    let was = IN_STORE.with(|q| q.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    IN_STORE.with(|q| q.set(was));
    result.map_err(|p| format!("the store is corrupted (redb: {})", panic_text(p)))
}

impl Store {
    /// Opens (or creates) the store in `dir` and reads it back whole. A
    /// store that cannot be read (empty file, bad header, failed integrity
    /// check, a panic inside redb) stops startup with the file and the
    /// reason, or with [`Damaged::MoveAside`] is moved aside, never deleted.
    pub fn open_and_load(dir: &Path, damaged: Damaged) -> Result<(Store, Saved), StoreError> {
        let path = dir.join(FILE_NAME);
        let fail = |reason: String| StoreError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create data dir: {e}")))?;
        let first = Self::try_open_and_load(&path);
        let reason = match first {
            Ok(done) => return Ok(done),
            Err(reason) => reason,
        };
        match damaged {
            Damaged::Refuse => Err(fail(format!(
                "{reason}; the store is damaged or not a signpost store. Start with \
                 --move-damaged-store to move it aside and start empty (it is kept, never \
                 deleted), or restore it from a backup"
            ))),
            Damaged::MoveAside => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = path.with_file_name(format!("{FILE_NAME}.damaged-{secs}"));
                std::fs::rename(&path, &aside).map_err(|e| {
                    fail(format!(
                        "{reason}; cannot move it aside to {}: {e}",
                        aside.display()
                    ))
                })?;
                tracing::error!(
                    "store {} is damaged ({reason}); moved it aside to {} and starting with an empty store",
                    path.display(),
                    aside.display()
                );
                Self::try_open_and_load(&path).map_err(fail)
            }
        }
    }

    fn try_open_and_load(path: &Path) -> Result<(Store, Saved), String> {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.len() == 0 {
                return Err("the file is empty (0 bytes)".into());
            }
        }
        let path = path.to_path_buf();
        guarded(move || -> Result<(Store, Saved), String> {
            let mut db = Self::open_db(&path).map_err(|e| format!("cannot open: {e}"))?;
            let repaired = !db
                .check_integrity()
                .map_err(|e| format!("integrity check failed: {e}"))?;
            if repaired {
                tracing::warn!(
                    "store {} was not closed cleanly and has been repaired; writes not yet committed when it stopped are lost",
                    path.display()
                );
            }
            let mut store = Store { db: Some(db), path };
            store.create_tables().map_err(|e| e.reason)?;
            let saved = store
                .load_inner()
                .map_err(|e| format!("cannot read: {e}"))?;
            Ok((store, saved))
        })?
    }

    fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
        // The registry in memory answers every read; the store is written
        // through and read back only at start. redb's default 1 GiB page
        // cache would keep a copy of the whole file resident (~70 MiB for
        // 100,000 registrations) for nothing; a few MiB keep the upper
        // B-tree pages of the write path.
        let shown = path.display().to_string();
        redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .set_repair_callback(move |session| {
                if session.progress() == 0.0 {
                    tracing::warn!("repairing store {shown} (it was not closed cleanly)");
                }
                // redb reports this stage only when the last commit fails
                // its checksums. Every commit is two-phase (see `run`), so
                // a crash cannot cause that: the file is damaged, and rolling
                // back to the commit before would drop acknowledged writes.
                if (session.progress() - 0.3).abs() < 1e-9 {
                    tracing::error!(
                        "store {shown}: its last commit fails its checksums; refusing to roll back to an older commit"
                    );
                    session.abort();
                }
            })
            .create(path)
    }

    fn error(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The open database, opening it again after a failure.
    fn db(&mut self) -> Result<&Database, StoreError> {
        if self.db.is_none() {
            let db = guarded(|| Self::open_db(&self.path))
                .map_err(|e| self.error(format!("cannot reopen: {e}")))?
                .map_err(|e| self.error(format!("cannot reopen: {e}")))?;
            self.db = Some(db);
        }
        Ok(self.db.as_ref().expect("just opened"))
    }

    /// Drops the database handle after a failed write, so that the next
    /// write reopens it.
    pub fn reset(&mut self) {
        self.db = None;
    }

    fn run(
        &mut self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let db = self.db()?;
        let result = guarded(|| {
            let mut txn = db.begin_write()?;
            // Two-phase: the commit slot is switched only once the data is
            // on disk, so a crash never leaves a last commit that fails its
            // checksums, and one that does is damage, refused at start
            // rather than rolled back over acknowledged writes.
            txn.set_two_phase_commit(true);
            f(&txn)?;
            txn.commit()?;
            Ok::<(), redb::Error>(())
        });
        match result {
            Ok(r) => r.map_err(|e| self.error(e)),
            Err(panicked) => {
                // The handle saw damage: the next write reopens it.
                self.db = None;
                Err(self.error(panicked))
            }
        }
    }

    fn create_tables(&mut self) -> Result<(), StoreError> {
        // Up front, so that reads never meet a missing table.
        self.run(|txn| {
            txn.open_table(NODES)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(CHECKS)?;
            txn.open_table(KV_VALUES)?;
            txn.open_table(KV_META)?;
            txn.open_table(META)?;
            txn.open_table(IDENTITY)?;
            txn.open_table(SESSIONS)?;
            txn.open_table(QUERIES)?;
            txn.open_table(KV_LOCKS)?;
            Ok(())
        })
    }

    fn load_inner(&self) -> Result<Saved, Box<dyn std::error::Error>> {
        let db = self.db.as_ref().ok_or("the store is not open")?;
        let txn = db.begin_read()?;
        let mut saved = Saved {
            index: txn
                .open_table(META)?
                .get("index")?
                .map(|v| v.value())
                .unwrap_or(0),
            ..Saved::default()
        };
        for row in txn.open_table(NODES)?.iter()? {
            saved.nodes.push(serde_json::from_slice(row?.1.value())?);
        }
        let mut sharing = super::state::Sharing::default();
        for row in txn.open_table(INSTANCES)?.iter()? {
            let mut inst = serde_json::from_slice(row?.1.value())?;
            sharing.share(&mut inst, &saved.instances);
            saved.instances.push(inst);
        }
        for row in txn.open_table(CHECKS)?.iter()? {
            saved.checks.push(serde_json::from_slice(row?.1.value())?);
        }
        let values = txn.open_table(KV_VALUES)?;
        let locks = txn.open_table(KV_LOCKS)?;
        for row in txn.open_table(KV_META)?.iter()? {
            let (key, meta) = row?;
            let key = key.value().to_string();
            let (flags, create_index, modify_index) = meta.value();
            let value = values
                .get(key.as_str())?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            let (lock_index, session) = match locks.get(key.as_str())? {
                Some(l) => {
                    let (i, s) = l.value();
                    (i, (!s.is_empty()).then(|| s.to_string()))
                }
                None => (0, None),
            };
            saved.kv.push(KvEntry {
                key,
                value,
                flags,
                create_index,
                modify_index,
                lock_index,
                session,
                lock_delay_until: 0,
            });
        }
        for row in txn.open_table(SESSIONS)?.iter()? {
            saved.sessions.push(serde_json::from_slice(row?.1.value())?);
        }
        for row in txn.open_table(QUERIES)?.iter()? {
            saved.queries.push(serde_json::from_slice(row?.1.value())?);
        }
        Ok(saved)
    }

    /// The node recorded as signpost's own, if any.
    pub fn recorded_node(&self) -> Result<Option<String>, StoreError> {
        let db = self
            .db
            .as_ref()
            .ok_or_else(|| self.error("the store is not open"))?;
        let read = || -> Result<Option<String>, redb::Error> {
            let txn = db.begin_read()?;
            let t = txn.open_table(IDENTITY)?;
            Ok(t.get("node")?.map(|v| v.value().to_string()))
        };
        guarded(read)
            .map_err(|e| self.error(e))?
            .map_err(|e| self.error(e))
    }

    /// Records `node` as signpost's own and, when another node was recorded,
    /// moves the API entries of `saved` that were on it to `node`, in one
    /// transaction: agent registrations follow signpost when its node name
    /// changes (a renamed host, a recreated container). Returns how many
    /// instances and checks moved; `saved` is changed to match.
    pub fn adopt_node(
        &mut self,
        node: &str,
        saved: &mut Saved,
    ) -> Result<(usize, usize), StoreError> {
        let old = self.recorded_node()?;
        let old = match old {
            Some(old) if old == node => return Ok((0, 0)),
            other => other,
        };
        let mut moved = (0, 0);
        self.run(|txn| {
            if let Some(old) = &old {
                let mut instances = txn.open_table(INSTANCES)?;
                for i in saved.instances.iter_mut().filter(|i| *i.node == **old) {
                    instances.remove(pair_key(old, &i.id).as_str())?;
                    i.node = node.into();
                    instances.insert(pair_key(node, &i.id).as_str(), json(i).as_slice())?;
                    moved.0 += 1;
                }
                let mut checks = txn.open_table(CHECKS)?;
                for c in saved.checks.iter_mut().filter(|c| &c.node == old) {
                    checks.remove(pair_key(old, &c.id).as_str())?;
                    c.node = node.to_string();
                    checks.insert(pair_key(node, &c.id).as_str(), json(c).as_slice())?;
                    moved.1 += 1;
                }
            }
            txn.open_table(IDENTITY)?.insert("node", node)?;
            Ok(())
        })?;
        if let Some(old) = old {
            tracing::warn!(
                instances = moved.0,
                checks = moved.1,
                "node name changed from {old:?} to {node:?} since the last start: moved the agent registrations of {old:?} to {node:?}"
            );
        }
        Ok(moved)
    }

    /// Writes a batch of writes' rows in one transaction: on disk when this
    /// returns, or none of it is.
    pub fn write(&mut self, batch: &[&Rows]) -> Result<(), StoreError> {
        self.run(|txn| {
            let mut nodes = txn.open_table(NODES)?;
            let mut instances = txn.open_table(INSTANCES)?;
            let mut checks = txn.open_table(CHECKS)?;
            let mut values = txn.open_table(KV_VALUES)?;
            let mut meta = txn.open_table(KV_META)?;
            let mut locks = txn.open_table(KV_LOCKS)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            let mut queries = txn.open_table(QUERIES)?;
            let mut index = 0;
            for rows in batch {
                index = index.max(rows.index);
                for (table, list) in [
                    (&mut nodes, &rows.nodes),
                    (&mut instances, &rows.instances),
                    (&mut checks, &rows.checks),
                    (&mut sessions, &rows.sessions),
                    (&mut queries, &rows.queries),
                ] {
                    for (key, row) in list {
                        match row {
                            Some(v) => table.insert(key.as_str(), v.as_slice())?,
                            None => table.remove(key.as_str())?,
                        };
                    }
                }
                for (key, row) in &rows.kv {
                    match row {
                        Some((v, m, (lock_index, session))) => {
                            values.insert(key.as_str(), v.as_slice())?;
                            meta.insert(key.as_str(), *m)?;
                            if *lock_index == 0 && session.is_empty() {
                                locks.remove(key.as_str())?;
                            } else {
                                locks.insert(key.as_str(), (*lock_index, session.as_str()))?;
                            }
                        }
                        None => {
                            values.remove(key.as_str())?;
                            meta.remove(key.as_str())?;
                            locks.remove(key.as_str())?;
                        }
                    }
                }
            }
            txn.open_table(META)?.insert("index", index)?;
            Ok(())
        })
    }

    /// A write that changes nothing, to see whether the store takes writes.
    pub fn probe(&mut self) -> Result<(), StoreError> {
        self.run(|txn| {
            let mut meta = txn.open_table(META)?;
            let index = meta.get("index")?.map(|v| v.value()).unwrap_or(0);
            meta.insert("index", index)?;
            Ok(())
        })
    }
}
