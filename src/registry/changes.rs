//! What a write changed: the names it touched (for the DNS answer sets and
//! blocking queries), the rows it touched (for the store), and each table's
//! last index.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

/// Told of every change as it becomes visible, synchronously, while the
/// writers' lock is held: it sees the new state and the names that changed.
/// It must be quick (it holds up writers) and must not call back into the
/// registry. `Arc`: a listener may keep the state to read later (the
/// registry never changes a published state).
pub trait ChangeListener: Send + Sync {
    fn changed(&self, state: &Arc<State>, changes: &Changes);
}

/// No listener: a registry that nothing reads answers from (tests, the
/// registry-only memory bench).
impl ChangeListener for () {
    fn changed(&self, _: &Arc<State>, _: &Changes) {}
}

/// Names touched by one transaction: services lower-cased as DNS looks
/// them up, nodes as registered.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub services: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
    /// Any check added, removed or updated.
    pub checks: bool,
    /// Any KV key written or deleted.
    pub kv: bool,
    /// Any session created or destroyed.
    pub sessions: bool,
    /// Any prepared query created, updated or deleted.
    pub queries: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.nodes.is_empty()
            && !self.checks
            && !self.kv
            && !self.sessions
            && !self.queries
    }

    /// Adds another transaction's changes (a batch is published at once).
    pub fn merge(&mut self, other: Changes) {
        self.services.extend(other.services);
        self.nodes.extend(other.nodes);
        self.checks |= other.checks;
        self.kv |= other.kv;
        self.sessions |= other.sessions;
        self.queries |= other.queries;
    }
}

/// Keys a transaction wrote or removed, whatever their source: the store
/// keeps the API's entries among them and forgets the others.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    pub nodes: BTreeSet<String>,
    pub instances: BTreeSet<InstanceKey>,
    pub checks: BTreeSet<(String, String)>,
    pub kv: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
    pub queries: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.instances.is_empty()
            && self.checks.is_empty()
            && self.kv.is_empty()
            && self.sessions.is_empty()
            && self.queries.is_empty()
    }
}

/// The index at which each part of the registry last changed, for the
/// `X-Consul-Index` of HTTP reads: a blocking query on one service wakes
/// when that service changes, not on every write anywhere.
#[derive(Debug, Default, Clone)]
pub struct TableIndexes {
    pub services: u64,
    pub nodes: u64,
    pub checks: u64,
    pub kv: u64,
    pub sessions: u64,
    pub queries: u64,
}
