//! The seam for a store that several members share (a cluster's etcd).
//!
//! In a cluster the registry's API entries live in the shared store. A
//! write runs on a copy of what this member has applied; what it touched
//! becomes [`Op`]s, each key with the revision this member saw it at; the
//! store commits them only if none of those keys moved since (optimistic
//! concurrency, as Kubernetes' API server does over etcd), and otherwise
//! the write runs again on the newer state. Every member, the writer
//! included, applies the store's change stream in revision order
//! ([`Registry::apply_events`](super::Registry::apply_events)), and a write
//! is acknowledged once its own revision is applied here: the revision is
//! the registry's index, so `X-Consul-Index` means the same on every
//! member.
//!
//! Keys, under the cluster's prefix: `nodes/N`, `instances/N/ID`,
//! `checks/N/ID`, `kv/KEY`, `sessions/ID`, `queries/ID` (the entry as JSON,
//! its indexes taken from the store's revisions), and per member
//! `agents/N` (its node, kept) and `members/N` (on a lease: alive).

use std::future::Future;
use std::pin::Pin;

use super::*;

/// One key to write (`Some`) or delete (`None`), committed only if its
/// modification revision is still `expect` (0: the key must not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expect: u64,
}

/// What the shared store did with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Committed at this revision.
    At(u64),
    /// A key moved since it was read; the store was at this revision.
    Stale(u64),
}

pub type CommitFuture = Pin<Box<dyn Future<Output = Result<Committed, StoreError>> + Send>>;

/// A store shared by the members of a cluster.
pub trait Shared: Send + Sync {
    /// Commits `ops` in one transaction, all or nothing, if every key is
    /// still at the revision it expects.
    fn commit(&self, ops: Vec<Op>) -> CommitFuture;
}

/// One change from the store's stream (or one key of a full read).
#[derive(Debug, Clone)]
pub struct Event {
    pub key: String,
    /// `None`: the key was deleted.
    pub value: Option<Vec<u8>>,
    pub create_revision: u64,
    pub mod_revision: u64,
}

/// A member of the cluster as its `agents/N` key describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    pub name: String,
    pub address: String,
    pub datacenter: String,
}

/// The check every member's node carries, as Consul's agents' do.
pub const SERF_CHECK: &str = "serfHealth";

/// The order keys are applied in within one revision: an instance after
/// its node, a check after its owner; removals the other way round.
const TABLES: [&str; 8] = [
    "agents/",
    "members/",
    "nodes/",
    "instances/",
    "checks/",
    "kv/",
    "sessions/",
    "queries/",
];

fn table_rank(key: &str) -> usize {
    TABLES
        .iter()
        .position(|t| key.starts_with(t))
        .unwrap_or(TABLES.len())
}

/// Sorts one revision's events into the order they can be applied in.
pub fn apply_order(events: &mut [Event]) {
    events.sort_by_key(|e| match e.value {
        Some(_) => (0, table_rank(&e.key)),
        None => (1, TABLES.len() - table_rank(&e.key)),
    });
}

/// Entries of these sources live in the shared store (the API's, and each
/// host's containers under its node); the others (zones/ files, a mirrored
/// Consul, the cluster's own derived entries) stay local.
fn is_shared(source: Source) -> bool {
    matches!(source, Source::Api | Source::Docker)
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry entries serialize")
}

impl State {
    /// The modification revision this member last applied for `key`.
    fn rev(&self, key: &str) -> u64 {
        self.revs.get(key).copied().unwrap_or(0)
    }

    /// Keys of the shared store this member holds, with their revisions.
    pub fn shared_keys(&self) -> impl Iterator<Item = (&str, u64)> {
        self.revs.iter().map(|(k, r)| (&**k, *r))
    }
}

/// What a write changed, as operations on the shared store: the entries
/// among `touched` that `after` has (from a shared source), and deletions
/// of those `before` had.
pub fn ops(before: &State, after: &State, touched: &Touched) -> Vec<Op> {
    let mut out = Vec::new();
    let mut push = |key: String, value: Option<Vec<u8>>, had: bool| {
        if value.is_some() || had {
            let expect = before.rev(&key);
            out.push(Op { key, value, expect });
        }
    };
    for name in &touched.nodes {
        let had = before.node(name).is_some_and(|n| is_shared(n.source));
        let now = after.node(name).filter(|n| is_shared(n.source));
        push(format!("nodes/{name}"), now.map(json), had);
    }
    for key in &touched.instances {
        let had = before.instance(key).is_some_and(|i| is_shared(i.source));
        let now = after.instance(key).filter(|i| is_shared(i.source));
        push(
            format!("instances/{}/{}", key.node, key.id),
            now.map(json),
            had,
        );
    }
    for (node, id) in &touched.checks {
        let had = before.check(node, id).is_some_and(|c| is_shared(c.source));
        let now = after.check(node, id).filter(|c| is_shared(c.source));
        push(format!("checks/{node}/{id}"), now.map(json), had);
    }
    for key in &touched.kv {
        let had = before.kv_get(key).is_some();
        push(format!("kv/{key}"), after.kv_get(key).map(json), had);
    }
    for id in &touched.sessions {
        let had = before.session(id).is_some();
        push(format!("sessions/{id}"), after.session(id).map(json), had);
    }
    for id in &touched.queries {
        let had = before.query(id).is_some();
        push(format!("queries/{id}"), after.query(id).map(json), had);
    }
    out
}

/// Why an event could not be applied (a value that is not what signpost
/// writes there); the caller logs it and goes on.
#[derive(Debug, thiserror::Error)]
#[error("cannot apply {key}: {reason}")]
pub struct BadEvent {
    pub key: String,
    pub reason: String,
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, BadEvent> {
    serde_json::from_slice(value).map_err(|e| BadEvent {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

impl Txn<'_> {
    /// Applies one event of the shared store. Its entry gets the store's
    /// revisions as its Create and Modify indexes.
    pub fn apply_event(&mut self, ev: &Event) -> Result<(), BadEvent> {
        let key = ev.key.as_str();
        let (table, rest) = key.split_once('/').unwrap_or((key, ""));
        let create = ev.create_revision;
        match (table, &ev.value) {
            ("agents", Some(v)) => {
                let agent: Agent = decode(key, v)?;
                if self.state.node(&agent.name).is_none() {
                    self.upsert_node(Node::new(
                        agent.name.clone(),
                        agent.address,
                        agent.datacenter,
                        Source::Cluster,
                    ));
                }
                if self.state.check(&agent.name, SERF_CHECK).is_none() {
                    self.upsert_check(serf_check(&agent.name, false));
                }
            }
            ("agents", None) => {}
            ("members", alive) => {
                if self.state.node(rest).is_some() {
                    let alive = alive.is_some();
                    let c = serf_check(rest, alive);
                    if self.state.check(rest, SERF_CHECK).is_none() {
                        self.upsert_check(c);
                    } else {
                        self.set_check_status(rest, SERF_CHECK, c.status, &c.output);
                    }
                }
            }
            ("nodes", Some(v)) => {
                let node: Node = decode(key, v)?;
                let name = node.name.clone();
                self.upsert_node(node);
                if let Some(n) = self.state.nodes.get_mut(&name) {
                    Arc::make_mut(n).create_index = create;
                }
            }
            ("nodes", None) => {
                self.remove_node(rest);
            }
            ("instances", Some(v)) => {
                let inst: Instance = decode(key, v)?;
                if self.state.node(&inst.node).is_none() {
                    return Err(BadEvent {
                        key: key.into(),
                        reason: format!("its node {} is not registered", inst.node),
                    });
                }
                let ikey = inst.key();
                self.upsert_instance(inst);
                self.state.set_create_index(&ikey, create);
            }
            ("instances", None) => {
                if let Some((node, id)) = rest.split_once('/') {
                    self.remove_instance(&InstanceKey::new(node, id));
                }
            }
            ("checks", Some(v)) => {
                let check: Check = decode(key, v)?;
                let owner_here = match &check.service_id {
                    Some(sid) => self.state.has_instance(&InstanceKey::new(&check.node, sid)),
                    None => self.state.nodes.contains_key(&check.node),
                };
                if !owner_here {
                    return Err(BadEvent {
                        key: key.into(),
                        reason: "what it checks is not registered".into(),
                    });
                }
                self.upsert_check(check);
            }
            ("checks", None) => {
                if let Some((node, id)) = rest.split_once('/') {
                    self.remove_check(node, id);
                }
            }
            ("kv", Some(v)) => {
                let mut e: KvEntry = decode(key, v)?;
                e.create_index = create;
                e.modify_index = ev.mod_revision;
                self.touched.kv.insert(e.key.clone());
                self.state.kv.insert(e.key.clone(), Arc::new(e));
                self.changes.kv = true;
            }
            ("kv", None) => {
                if self.state.kv.remove(rest).is_some() {
                    self.touched.kv.insert(rest.to_string());
                    self.changes.kv = true;
                }
            }
            ("sessions", Some(v)) => {
                let mut s: Session = decode(key, v)?;
                s.create_index = create;
                s.modify_index = ev.mod_revision;
                self.touched.sessions.insert(s.id.clone());
                self.state.sessions.insert(s.id.clone(), Arc::new(s));
                self.changes.sessions = true;
            }
            ("sessions", None) => {
                if self.state.sessions.remove(rest).is_some() {
                    self.touched.sessions.insert(rest.to_string());
                    self.changes.sessions = true;
                }
            }
            ("queries", Some(v)) => {
                let q: query::PreparedQuery = decode(key, v)?;
                self.upsert_query(q);
            }
            ("queries", None) => {
                self.remove_query(rest);
            }
            _ => {
                return Err(BadEvent {
                    key: key.into(),
                    reason: "not a key signpost writes".into(),
                })
            }
        }
        match ev.value {
            Some(_) => self.state.revs.insert(Arc::from(key), ev.mod_revision),
            None => self.state.revs.remove(key),
        };
        Ok(())
    }
}

/// A member's `serfHealth` check: passing while its lease is alive (and
/// always, for a standalone agent's own node).
pub fn serf_check(node: &str, alive: bool) -> Check {
    let (status, output) = if alive {
        (Health::Passing, "Agent alive and reachable")
    } else {
        (Health::Critical, "Agent not live or unreachable")
    };
    Check {
        node: node.to_string(),
        id: SERF_CHECK.into(),
        name: "Serf Health Status".into(),
        status,
        output: output.into(),
        notes: String::new(),
        service_id: None,
        service_name: String::new(),
        kind: CheckKind::Static,
        thresholds: Thresholds::default(),
        source: Source::Cluster,
        create_index: 0,
        modify_index: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(key: &str, value: Option<&str>, rev: u64) -> Event {
        Event {
            key: key.into(),
            value: value.map(|v| v.as_bytes().to_vec()),
            create_revision: rev,
            mod_revision: rev,
        }
    }

    #[test]
    fn one_revision_applies_nodes_before_what_is_on_them() {
        let mut events = vec![
            ev("checks/n/c", Some("{}"), 5),
            ev("instances/n/web", Some("{}"), 5),
            ev("kv/a", None, 5),
            ev("nodes/n", Some("{}"), 5),
            ev("nodes/m", None, 5),
            ev("instances/m/x", None, 5),
            ev("agents/n", Some("{}"), 5),
        ];
        apply_order(&mut events);
        let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "agents/n",
                "nodes/n",
                "instances/n/web",
                "checks/n/c",
                "kv/a",
                "instances/m/x",
                "nodes/m"
            ]
        );
    }
}
