//! Durable state: what the HTTP API registered (nodes, instances, checks)
//! and the KV store, kept in `--data-dir/signpost.redb`.
//!
//! redb gives ACID transactions that are on disk when `commit` returns, so
//! a write the API acknowledged survives a crash or `kill -9`. Entries from
//! zones/ files or from Consul are never stored here: their source is the
//! truth and is read again at start.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Check, Instance, KvEntry, Node, Source, State, Touched};

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

pub const FILE_NAME: &str = "signpost.redb";

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct StoreError {
    path: PathBuf,
    reason: String,
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

/// What the store held at start.
#[derive(Debug, Default)]
pub struct Saved {
    pub index: u64,
    pub nodes: Vec<Node>,
    pub instances: Vec<Instance>,
    pub checks: Vec<Check>,
    pub kv: Vec<KvEntry>,
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry entries serialize")
}

/// redb's page cache; see [`Store::open`].
const STORE_CACHE_BYTES: usize = 8 << 20;

fn pair_key(a: &str, b: &str) -> String {
    format!("{a}\0{b}")
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(FILE_NAME);
        let fail = |reason: String| StoreError {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create data dir: {e}")))?;
        // The registry in memory answers every read; the store is written
        // through and read back only at start. redb's default 1 GiB page
        // cache would keep a copy of the whole file resident (~70 MiB for
        // 100,000 registrations) for nothing; a few MiB keep the upper
        // B-tree pages of the write path.
        let db = redb::Builder::new()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| fail(format!("cannot open store: {e}")))?;
        let store = Store { db, path };
        // Create the tables up front so that reads never meet a missing one.
        store.run(|txn| {
            txn.open_table(NODES)?;
            txn.open_table(INSTANCES)?;
            txn.open_table(CHECKS)?;
            txn.open_table(KV_VALUES)?;
            txn.open_table(KV_META)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        Ok(store)
    }

    fn error(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    fn run(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.error(e))?;
        f(&txn).map_err(|e| self.error(e))?;
        txn.commit().map_err(|e| self.error(e))
    }

    pub fn load(&self) -> Result<Saved, StoreError> {
        self.load_inner().map_err(|e| self.error(e))
    }

    fn load_inner(&self) -> Result<Saved, Box<dyn std::error::Error>> {
        let txn = self.db.begin_read()?;
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
        for row in txn.open_table(INSTANCES)?.iter()? {
            saved
                .instances
                .push(serde_json::from_slice(row?.1.value())?);
        }
        for row in txn.open_table(CHECKS)?.iter()? {
            saved.checks.push(serde_json::from_slice(row?.1.value())?);
        }
        let values = txn.open_table(KV_VALUES)?;
        for row in txn.open_table(KV_META)?.iter()? {
            let (key, meta) = row?;
            let key = key.value().to_string();
            let (flags, create_index, modify_index) = meta.value();
            let value = values
                .get(key.as_str())?
                .map(|v| v.value().to_vec())
                .unwrap_or_default();
            saved.kv.push(KvEntry {
                key,
                value,
                flags,
                create_index,
                modify_index,
            });
        }
        Ok(saved)
    }

    /// Writes the API entries among `touched` as `state` has them now, and
    /// forgets the others; on disk when this returns.
    pub fn commit(&self, state: &State, touched: &Touched) -> Result<(), StoreError> {
        self.run(|txn| {
            let mut nodes = txn.open_table(NODES)?;
            for name in &touched.nodes {
                match state.node(name).filter(|n| n.source == Source::Api) {
                    Some(n) => nodes.insert(name.as_str(), json(n).as_slice())?,
                    None => nodes.remove(name.as_str())?,
                };
            }
            let mut instances = txn.open_table(INSTANCES)?;
            for key in &touched.instances {
                let k = pair_key(&key.node, &key.id);
                match state.instance(key).filter(|i| i.source == Source::Api) {
                    Some(i) => instances.insert(k.as_str(), json(i).as_slice())?,
                    None => instances.remove(k.as_str())?,
                };
            }
            let mut checks = txn.open_table(CHECKS)?;
            for (node, id) in &touched.checks {
                let k = pair_key(node, id);
                match state.check(node, id).filter(|c| c.source == Source::Api) {
                    Some(c) => checks.insert(k.as_str(), json(c).as_slice())?,
                    None => checks.remove(k.as_str())?,
                };
            }
            let mut values = txn.open_table(KV_VALUES)?;
            let mut meta = txn.open_table(KV_META)?;
            for key in &touched.kv {
                match state.kv_get(key) {
                    Some(e) => {
                        values.insert(key.as_str(), e.value.as_slice())?;
                        meta.insert(key.as_str(), (e.flags, e.create_index, e.modify_index))?;
                    }
                    None => {
                        values.remove(key.as_str())?;
                        meta.remove(key.as_str())?;
                    }
                }
            }
            txn.open_table(META)?.insert("index", state.index())?;
            Ok(())
        })
    }
}
