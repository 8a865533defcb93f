//! Wake-ups for blocking queries, by what they watch: a watcher of one
//! service is woken by a change to that service, a KV watcher by a KV
//! write, and only views that read everything by every write. With
//! thousands of watchers, a write wakes the few that asked for it rather
//! than all of them re-reading the registry to find out.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::watch;

use super::Changes;

/// What a blocking query waits on.
#[derive(Debug, Clone, Copy)]
pub enum Topic<'a> {
    /// One service (its instances, their checks and nodes), lower-cased.
    Service(&'a str),
    /// One part of the registry (its `X-Consul-Index` moves with it).
    Table(Table),
    /// Any change at all.
    Any,
}

/// The parts of [`TableIndexes`](super::TableIndexes), one topic each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Services,
    Nodes,
    Checks,
    Kv,
    Sessions,
    Queries,
}

const TABLES: usize = 6;

impl Table {
    fn slot(self) -> usize {
        self as usize
    }

    fn changed(self, c: &Changes) -> bool {
        match self {
            Table::Services => !c.services.is_empty(),
            Table::Nodes => !c.nodes.is_empty(),
            Table::Checks => c.checks,
            Table::Kv => c.kv,
            Table::Sessions => c.sessions,
            Table::Queries => c.queries,
        }
    }
}

const ALL_TABLES: [Table; TABLES] = [
    Table::Services,
    Table::Nodes,
    Table::Checks,
    Table::Kv,
    Table::Sessions,
    Table::Queries,
];

/// One `watch` per watched service and per table: a receiver sees the
/// index of the last change to its topic.
pub(super) struct Topics {
    /// Watched services only: an entry is made by the first watcher and
    /// dropped once no receiver is left. std Mutex: held for a lookup or
    /// an insert, never across `.await`.
    services: Mutex<Services>,
    tables: [watch::Sender<u64>; TABLES],
}

#[derive(Default)]
struct Services {
    senders: HashMap<Box<str>, watch::Sender<u64>>,
    /// The size after the last sweep of entries nobody watches.
    swept_at: usize,
}

impl Topics {
    pub(super) fn new() -> Topics {
        Topics {
            services: Mutex::default(),
            tables: std::array::from_fn(|_| watch::channel(0).0),
        }
    }

    pub(super) fn subscribe_service(&self, lower: &str) -> watch::Receiver<u64> {
        let mut s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        // Watchers of services that come and go leave senders behind:
        // swept whenever the map has doubled since the last sweep.
        if s.senders.len() > 2 * s.swept_at + 64 {
            s.senders.retain(|_, tx| tx.receiver_count() > 0);
            s.swept_at = s.senders.len();
        }
        match s.senders.get(lower) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                s.senders.insert(lower.into(), tx);
                rx
            }
        }
    }

    pub(super) fn subscribe_table(&self, table: Table) -> watch::Receiver<u64> {
        self.tables[table.slot()].subscribe()
    }

    /// Wakes the watchers of what `changes` touched; the state at `index`
    /// is visible already.
    pub(super) fn publish(&self, index: u64, changes: &Changes) {
        for t in ALL_TABLES {
            if t.changed(changes) {
                self.tables[t.slot()].send_replace(index);
            }
        }
        let s = self.services.lock().unwrap_or_else(|e| e.into_inner());
        if s.senders.is_empty() {
            return;
        }
        // Walk the smaller side: a bulk write touches thousands of
        // services, of which a few are watched.
        if changes.services.len() <= s.senders.len() {
            for name in &changes.services {
                if let Some(tx) = s.senders.get(name.as_str()) {
                    tx.send_replace(index);
                }
            }
        } else {
            for (name, tx) in &s.senders {
                if changes.services.contains(&**name) {
                    tx.send_replace(index);
                }
            }
        }
    }
}
