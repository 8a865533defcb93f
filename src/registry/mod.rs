//! The registry: nodes, service instances and checks, with one monotonic
//! change index.
//!
//! Writes go through [`Registry::write`], a transaction that records which
//! services and nodes it touched. On commit the index moves by one, the
//! [`ChangeListener`] (the DNS answer sets) rebuilds just what changed, and
//! watchers of the index wake. All of that happens before `write` returns,
//! so a write is visible in DNS by the time its caller acknowledges it.
//!
//! API writes are made durable first, through one seam: [`store::Durable`],
//! which the committer thread (`commit`) hands each batch. The embedded redb
//! store (`store`) implements it; a replicated store is a second
//! implementation of the same thing.

mod commit;
pub mod definition;
pub mod model;
pub mod query;
pub mod small;
pub mod store;

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use small::SmallMap;

pub use commit::{Registry, StoreStatus};
pub use model::{
    Behavior, Check, CheckKind, Connect, Health, Instance, InstanceKey, KvEntry, Meta, Node,
    Session, Source, TaggedAddress, Thresholds, Weights,
};
pub use store::{Store, StoreError};

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

/// A service that has instances: how many, and the index at which its
/// entries last changed. A service that is gone has no entry (an entry per
/// name ever registered would leak): its reads take the services table's
/// index, which moved when it went, so a blocking query on it still wakes
/// for its deregistration.
#[derive(Debug, Default, Clone, Copy)]
struct ServiceEntry {
    instances: u32,
    index: u64,
}

/// Checks are grouped by what they belong to: a node (`service_id: None`)
/// or one instance on it. An instance's health is the worst of its own
/// group and its node's group, so a status flip costs a look at a handful of
/// checks, never a scan of every check on the node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CheckOwner {
    pub node: String,
    pub service_id: Option<String>,
}

/// The registry's contents and their indexes. Every index is kept in step
/// by [`Txn`]; nothing outside this module mutates it.
///
/// Every map is a persistent one (`imbl`): cloning a `State` costs a few
/// reference counts, and a write to the clone copies only the paths it
/// changes. That is what lets a write be applied to a copy, made durable,
/// and only then shown to readers (see [`commit`]). Values sit behind `Arc`
/// so that copying a path never deep-copies an entry.
#[derive(Debug, Default, Clone)]
pub struct State {
    nodes: OrdMap<String, Arc<Node>>,
    instances: OrdMap<InstanceKey, Arc<Instance>>,
    checks: imbl::HashMap<CheckOwner, Arc<SmallMap<String, Check>>>,
    /// (node, check id) → owner, to find a check by the ID the API uses.
    check_owner: imbl::HashMap<(String, String), CheckOwner>,
    /// (lower-cased service name, instance): one flat ordered set, so that a
    /// service's instances are a range and adding one to a service with
    /// 50,000 copies a path, not the service's whole list. Names are
    /// `Arc<str>` here and below for the same reason as [`InstanceKey`]'s
    /// fields: a path copy clones every key of its nodes.
    by_service: OrdSet<(Arc<str>, InstanceKey)>,
    /// Lower-cased service name → its instance count and change index.
    services: OrdMap<Arc<str>, ServiceEntry>,
    kv: OrdMap<String, Arc<KvEntry>>,
    sessions: OrdMap<String, Arc<Session>>,
    /// Prepared queries by ID.
    queries: OrdMap<String, Arc<query::PreparedQuery>>,
    index: u64,
    tables: TableIndexes,
    /// Moves when a check is added, removed or redefined, never on a status
    /// update: the health runner rescans its checks only when this moves.
    check_defs: u64,
}

/// The keys of one source's entries. A resync starts from the keys the
/// source has, strikes each one it writes again, and removes the rest: it
/// needs no list of everything it wrote, and never touches another
/// source's entries.
#[derive(Debug, Default)]
pub struct SourceKeys {
    pub nodes: BTreeSet<String>,
    pub instances: BTreeSet<InstanceKey>,
    pub checks: BTreeSet<(String, String)>,
}

/// An instance as DNS and the health endpoints see it.
#[derive(Debug, Clone, Copy)]
pub struct InstanceView<'a> {
    pub instance: &'a Instance,
    pub node: Option<&'a Node>,
    pub health: Health,
}

impl State {
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn tables(&self) -> &TableIndexes {
        &self.tables
    }

    /// The index of one service's entries (lower-cased name): its own while
    /// it exists, the services table's once it is gone or if it never was.
    pub fn service_index(&self, lower: &str) -> u64 {
        self.services
            .get(lower)
            .map(|e| e.index)
            .unwrap_or(self.tables.services)
    }

    pub fn check_defs(&self) -> u64 {
        self.check_defs
    }

    pub fn session(&self, id: &str) -> Option<&Session> {
        self.sessions.get(id).map(|s| &**s)
    }

    pub fn query(&self, id: &str) -> Option<&query::PreparedQuery> {
        self.queries.get(id).map(|q| &**q)
    }

    pub fn queries(&self) -> impl Iterator<Item = &query::PreparedQuery> {
        self.queries.values().map(|q| &**q)
    }

    pub fn sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions.values().map(|s| &**s)
    }

    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key).map(|e| &**e)
    }

    /// KV entries whose key starts with `prefix`, in key order.
    pub fn kv_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, v)| &**v)
    }

    /// Stores an instance and indexes it by service; returns its
    /// lower-cased service name.
    fn insert_instance(&mut self, inst: Instance) -> String {
        let key = inst.key();
        let lower = inst.name.to_ascii_lowercase();
        let shared: Arc<str> = lower.as_str().into();
        if self
            .by_service
            .insert((shared.clone(), key.clone()))
            .is_none()
        {
            self.services.entry(shared).or_default().instances += 1;
        }
        self.instances.insert(key, Arc::new(inst));
        lower
    }

    fn unindex_service(&mut self, lower: &str, key: &InstanceKey) {
        if self
            .by_service
            .remove(&(Arc::from(lower), key.clone()))
            .is_some()
        {
            if let Some(e) = self.services.get_mut(lower) {
                e.instances -= 1;
                if e.instances == 0 {
                    self.services.remove(lower);
                }
            }
        }
    }

    fn stamp(&mut self, changes: &Changes, index: u64) {
        let t = &mut self.tables;
        for s in &changes.services {
            if let Some(e) = self.services.get_mut(s.as_str()) {
                e.index = index;
            }
            t.services = index;
        }
        if !changes.nodes.is_empty() {
            t.nodes = index;
        }
        if changes.checks {
            t.checks = index;
        }
        if changes.kv {
            t.kv = index;
        }
        if changes.sessions {
            t.sessions = index;
        }
        if changes.queries {
            t.queries = index;
        }
    }

    /// The keys of every entry that came from `source`.
    pub fn keys_of(&self, source: Source) -> SourceKeys {
        SourceKeys {
            nodes: self
                .nodes()
                .filter(|n| n.source == source)
                .map(|n| n.name.clone())
                .collect(),
            instances: self
                .instances()
                .filter(|i| i.source == source)
                .map(Instance::key)
                .collect(),
            checks: self
                .checks()
                .filter(|c| c.source == source)
                .map(|c| (c.node.clone(), c.id.clone()))
                .collect(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(|n| &**n)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(|n| &**n)
    }

    pub fn instance(&self, key: &InstanceKey) -> Option<&Instance> {
        self.instances.get(key).map(|i| &**i)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values().map(|i| &**i)
    }

    /// Lower-cased names of every service with at least one instance.
    pub fn service_names(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(|k| &**k)
    }

    /// Every instance of a service (by lower-cased name), with its node and
    /// health.
    pub fn service_instances<'a>(
        &'a self,
        lower_name: &str,
    ) -> impl Iterator<Item = InstanceView<'a>> + 'a {
        let name: Arc<str> = lower_name.into();
        self.by_service
            .range((name.clone(), InstanceKey::new("", ""))..)
            .take_while(move |(n, _)| *n == name)
            .filter_map(move |(_, k)| self.view(k))
    }

    /// Every instance that carries Connect traffic for a service (by
    /// lower-cased name): its native instances and the proxies in front of
    /// it. A scan of every instance: Connect lookups are HTTP reads, rare
    /// beside DNS, which never calls this.
    pub fn connect_instances<'a>(
        &'a self,
        lower_name: &'a str,
    ) -> impl Iterator<Item = InstanceView<'a>> + 'a {
        self.instances
            .iter()
            .filter(move |(_, i)| {
                i.connect_for()
                    .is_some_and(|f| f.eq_ignore_ascii_case(lower_name))
            })
            .filter_map(move |(k, _)| self.view(k))
    }

    /// Every instance on a node.
    pub fn node_instances<'a>(&'a self, node: &str) -> impl Iterator<Item = InstanceView<'a>> + 'a {
        self.keys_on(node).filter_map(move |k| self.view(k))
    }

    /// The keys of a node's instances: keys sort by node first, so they are
    /// one range of the instance map (no per-node index to keep in memory).
    fn keys_on<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a InstanceKey> + 'a {
        let node = node.to_string();
        let from = InstanceKey::new(&node, "");
        self.instances
            .range(from..)
            .map(|(k, _)| k)
            .take_while(move |k| *k.node == *node)
    }

    pub fn view(&self, key: &InstanceKey) -> Option<InstanceView<'_>> {
        let instance = self.instances.get(key)?;
        Some(InstanceView {
            instance,
            node: self.node(&key.node),
            health: self.health_of(key),
        })
    }

    /// The worst status among an instance's checks and its node's checks;
    /// passing when it has none.
    pub fn health_of(&self, key: &InstanceKey) -> Health {
        self.checks_of(key)
            .map(|c| c.status)
            .max()
            .unwrap_or(Health::Passing)
    }

    /// An instance's own checks followed by its node's checks.
    pub fn checks_of<'a>(&'a self, key: &InstanceKey) -> impl Iterator<Item = &'a Check> + 'a {
        let own = CheckOwner {
            node: key.node.to_string(),
            service_id: Some(key.id.to_string()),
        };
        let node = CheckOwner {
            node: key.node.to_string(),
            service_id: None,
        };
        let own = self.checks.get(&own).into_iter().flat_map(|m| m.values());
        let node = self.checks.get(&node).into_iter().flat_map(|m| m.values());
        own.chain(node)
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        let owner = self.check_owner.get(&(node.to_string(), id.to_string()))?;
        self.checks.get(owner)?.get(id)
    }

    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values().flat_map(|m| m.values())
    }
}

/// A write transaction: mutations plus the record of what they touched.
pub struct Txn<'a> {
    state: &'a mut State,
    changes: Changes,
    touched: Touched,
    /// The index this transaction commits at, stamped on what it writes.
    next_index: u64,
}

impl Txn<'_> {
    pub fn state(&self) -> &State {
        self.state
    }

    /// Runs `f`; when it fails, everything it did is undone, so a
    /// multi-step write (`/v1/txn`) applies whole or not at all. Cheap: the
    /// state is a persistent map, so the copy shares all its nodes.
    pub fn all_or_nothing<R, E>(
        &mut self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<R, E>,
    ) -> Result<R, E> {
        let saved = (
            self.state.clone(),
            self.changes.clone(),
            self.touched.clone(),
        );
        let out = f(self);
        if out.is_err() {
            (*self.state, self.changes, self.touched) = saved;
        }
        out
    }

    fn touch_service(&mut self, name: &str) {
        self.changes.services.insert(name.to_ascii_lowercase());
    }

    fn touch_node(&mut self, name: &str) {
        self.changes.nodes.insert(name.to_string());
        // A node's address, meta and node-level checks shape the answers of
        // every service with an instance on it.
        let names: Vec<String> = self
            .state
            .node_instances(name)
            .map(|v| v.instance.name.to_ascii_lowercase())
            .collect();
        self.changes.services.extend(names);
    }

    /// Adds or replaces a node. Unchanged content is not a change.
    pub fn upsert_node(&mut self, mut node: Node) {
        if let Some(old) = self.state.nodes.get(&node.name) {
            node.create_index = old.create_index;
            node.modify_index = old.modify_index;
            if **old == node {
                return;
            }
        } else {
            node.create_index = self.next_index;
        }
        node.modify_index = self.next_index;
        let name = node.name.clone();
        self.state.nodes.insert(name.clone(), Arc::new(node));
        self.touched.nodes.insert(name.clone());
        self.touch_node(&name);
    }

    /// Removes a node with its instances and checks.
    pub fn remove_node(&mut self, name: &str) -> bool {
        let keys: Vec<InstanceKey> = self.state.keys_on(name).cloned().collect();
        for k in keys {
            self.remove_instance(&k);
        }
        self.remove_checks_of(&CheckOwner {
            node: name.to_string(),
            service_id: None,
        });
        let existed = self.state.nodes.remove(name).is_some();
        if existed {
            self.touched.nodes.insert(name.to_string());
            self.touch_node(name);
        }
        existed
    }

    /// Adds or replaces an instance. Its node must exist. Unchanged content
    /// is not a change.
    pub fn upsert_instance(&mut self, mut inst: Instance) {
        debug_assert!(self.state.nodes.contains_key(&inst.node));
        let key = inst.key();
        if let Some(old) = self.state.instances.get(&key) {
            inst.create_index = old.create_index;
            inst.modify_index = old.modify_index;
            if **old == inst {
                return;
            }
            if !old.name.eq_ignore_ascii_case(&inst.name) {
                let old_name = old.name.to_ascii_lowercase();
                self.state.unindex_service(&old_name, &key);
                self.changes.services.insert(old_name);
            }
        } else {
            inst.create_index = self.next_index;
        }
        inst.modify_index = self.next_index;
        let lower = self.state.insert_instance(inst);
        self.touched.instances.insert(key.clone());
        self.changes.services.insert(lower);
        self.changes.nodes.insert(key.node.to_string());
    }

    /// Removes an instance and its checks.
    pub fn remove_instance(&mut self, key: &InstanceKey) -> Option<Instance> {
        let inst = self.state.instances.remove(key)?;
        self.touched.instances.insert(key.clone());
        let lower = inst.name.to_ascii_lowercase();
        self.state.unindex_service(&lower, key);
        self.remove_checks_of(&CheckOwner {
            node: key.node.to_string(),
            service_id: Some(key.id.to_string()),
        });
        self.changes.services.insert(lower);
        self.changes.nodes.insert(key.node.to_string());
        Some(Arc::unwrap_or_clone(inst))
    }

    fn remove_checks_of(&mut self, owner: &CheckOwner) {
        if let Some(map) = self.state.checks.remove(owner) {
            for id in map.keys() {
                let key = (owner.node.clone(), id.clone());
                self.state.check_owner.remove(&key);
                self.touched.checks.insert(key);
            }
            self.changes.checks = true;
            self.state.check_defs += 1;
        }
    }

    fn touch_owner(&mut self, owner: &CheckOwner) {
        self.changes.checks = true;
        self.changes.nodes.insert(owner.node.clone());
        match &owner.service_id {
            Some(id) => {
                let key = InstanceKey::new(&owner.node, id);
                if let Some(name) = self.state.instances.get(&key).map(|i| i.name.clone()) {
                    self.touch_service(&name);
                }
            }
            None => {
                let node = owner.node.clone();
                self.touch_node(&node);
            }
        }
    }

    /// Adds or replaces a check (by node and ID). A check with the same ID
    /// under another owner moves.
    pub fn upsert_check(&mut self, mut check: Check) {
        if check.output.len() > model::check_output_max() {
            check.output = model::cap_output(std::mem::take(&mut check.output));
        }
        let owner = CheckOwner {
            node: check.node.clone(),
            service_id: check.service_id.clone(),
        };
        let id_key = (check.node.clone(), check.id.clone());
        if let Some(old_owner) = self.state.check_owner.get(&id_key).cloned() {
            if let Some(old) = self
                .state
                .checks
                .get(&old_owner)
                .and_then(|m| m.get(&check.id))
            {
                check.create_index = old.create_index;
                check.modify_index = old.modify_index;
                if *old == check {
                    return;
                }
            }
            if old_owner != owner {
                self.remove_check(&check.node.clone(), &check.id.clone());
                check.create_index = self.next_index;
            }
        } else {
            check.create_index = self.next_index;
        }
        check.modify_index = self.next_index;
        let redefined = self.state.check(&check.node, &check.id).is_none_or(|old| {
            old.kind != check.kind
                || old.thresholds != check.thresholds
                || old.service_id != check.service_id
                || old.source != check.source
        });
        if redefined {
            self.state.check_defs += 1;
        }
        self.touched.checks.insert(id_key.clone());
        self.state.check_owner.insert(id_key, owner.clone());
        self.state.checks.entry(owner.clone()).or_default();
        Arc::make_mut(self.state.checks.get_mut(&owner).expect("just added"))
            .insert(check.id.clone(), check);
        self.touch_owner(&owner);
    }

    pub fn remove_check(&mut self, node: &str, id: &str) -> Option<Check> {
        let key = (node.to_string(), id.to_string());
        let owner = self.state.check_owner.remove(&key)?;
        self.touched.checks.insert(key);
        self.state.check_defs += 1;
        let map = Arc::make_mut(self.state.checks.get_mut(&owner)?);
        let check = map.remove(id);
        if map.is_empty() {
            self.state.checks.remove(&owner);
        }
        self.touch_owner(&owner);
        check
    }

    /// Sets a check's status and output; false when there is no such check.
    pub fn set_check_status(&mut self, node: &str, id: &str, status: Health, output: &str) -> bool {
        let output = if output.len() > model::check_output_max() {
            &model::cap_output(output.to_string())
        } else {
            output
        };
        let Some(owner) = self
            .state
            .check_owner
            .get(&(node.to_string(), id.to_string()))
            .cloned()
        else {
            return false;
        };
        let Some(check) = self
            .state
            .checks
            .get_mut(&owner)
            .and_then(|m| Arc::make_mut(m).get_mut(id))
        else {
            return false;
        };
        if check.status == status && check.output == output {
            return true;
        }
        check.status = status;
        check.output = output.to_string();
        check.modify_index = self.next_index;
        self.touched
            .checks
            .insert((node.to_string(), id.to_string()));
        self.touch_owner(&owner);
        true
    }

    /// Writes a KV key. With `cas`, only when the key's ModifyIndex equals
    /// it (0: only when the key does not exist). False when the CAS failed.
    pub fn kv_put(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: Option<u64>) -> bool {
        let old = self.state.kv.get(key);
        if let Some(cas) = cas {
            let current = old.map(|e| e.modify_index).unwrap_or(0);
            if current != cas {
                return false;
            }
        }
        let lock_index = old.map(|e| e.lock_index).unwrap_or(0);
        let session = old.and_then(|e| e.session.clone());
        self.kv_write(key, value, flags, lock_index, session);
        true
    }

    /// Stores a key's new value and lock state, stamped with this
    /// transaction's index: the one place KV entries are written.
    fn kv_write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        lock_index: u64,
        session: Option<String>,
    ) {
        let create_index = self
            .state
            .kv
            .get(key)
            .map(|e| e.create_index)
            .unwrap_or(self.next_index);
        self.state.kv.insert(
            key.to_string(),
            Arc::new(KvEntry {
                key: key.to_string(),
                value,
                flags,
                create_index,
                modify_index: self.next_index,
                lock_index,
                session,
            }),
        );
        self.touched.kv.insert(key.to_string());
        self.changes.kv = true;
    }

    /// Writes `key` and takes its lock for `session`, as `?acquire=`: false
    /// when another session holds it. Taking it again by its holder only
    /// writes the value. The session must exist.
    pub fn kv_acquire(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let old = self.state.kv.get(key);
        let held = old.map(|e| e.lock_index).unwrap_or(0);
        let lock_index = match old.and_then(|e| e.session.as_deref()) {
            Some(holder) if holder != session => return false,
            Some(_) => held,
            None => held + 1,
        };
        self.kv_write(key, value, flags, lock_index, Some(session.to_string()));
        true
    }

    /// Writes `key` and lets go of its lock, as `?release=`: false when
    /// `session` does not hold it.
    pub fn kv_release(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let Some(old) = self.state.kv.get(key) else {
            return false;
        };
        if old.session.as_deref() != Some(session) {
            return false;
        }
        let lock_index = old.lock_index;
        self.kv_write(key, value, flags, lock_index, None);
        true
    }

    /// Adds or replaces a prepared query, stamped with this index.
    pub fn upsert_query(&mut self, mut q: query::PreparedQuery) {
        q.create_index = self
            .state
            .queries
            .get(&q.id)
            .map(|o| o.create_index)
            .unwrap_or(self.next_index);
        q.modify_index = self.next_index;
        self.touched.queries.insert(q.id.clone());
        self.state.queries.insert(q.id.clone(), Arc::new(q));
        self.changes.queries = true;
    }

    pub fn remove_query(&mut self, id: &str) -> bool {
        let existed = self.state.queries.remove(id).is_some();
        if existed {
            self.touched.queries.insert(id.to_string());
            self.changes.queries = true;
        }
        existed
    }

    /// Adds a session.
    pub fn create_session(&mut self, mut session: Session) {
        session.create_index = self.next_index;
        session.modify_index = self.next_index;
        self.touched.sessions.insert(session.id.clone());
        self.state
            .sessions
            .insert(session.id.clone(), Arc::new(session));
        self.changes.sessions = true;
    }

    /// Invalidates a session: its locks are released or its keys deleted,
    /// as its behavior says. Returns the session and the keys it held.
    pub fn destroy_session(&mut self, id: &str) -> Option<(Session, Vec<String>)> {
        let session = self.state.sessions.remove(id)?;
        self.touched.sessions.insert(id.to_string());
        self.changes.sessions = true;
        // Prepared queries tied to the session go with it, as Consul's.
        let queries: Vec<String> = self
            .state
            .queries
            .values()
            .filter(|q| q.session == id)
            .map(|q| q.id.clone())
            .collect();
        for q in queries {
            self.remove_query(&q);
        }
        let held: Vec<String> = self
            .state
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        for key in &held {
            match session.behavior {
                Behavior::Delete => {
                    self.kv_delete(key, None);
                }
                Behavior::Release => {
                    let e = self.state.kv.get(key).cloned().expect("held key");
                    self.kv_release(key, e.value.clone(), e.flags, id);
                }
            }
        }
        Some((Arc::unwrap_or_clone(session), held))
    }

    /// Deletes a key; with `cas`, only when its ModifyIndex equals it.
    /// True when the key is gone afterwards as asked.
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        if let Some(cas) = cas {
            match self.state.kv.get(key) {
                Some(e) if e.modify_index == cas => {}
                _ => return false,
            }
        }
        if self.state.kv.remove(key).is_some() {
            self.touched.kv.insert(key.to_string());
            self.changes.kv = true;
        }
        true
    }

    /// Deletes every key under `prefix`.
    pub fn kv_delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .state
            .kv_prefix(prefix)
            .map(|e| e.key.clone())
            .collect();
        for k in keys {
            self.kv_delete(&k, None);
        }
    }

    /// Marks every service and node changed, so the listener rebuilds all
    /// of them (after its settings changed on reload).
    pub fn touch_all(&mut self) {
        let services: Vec<String> = self.state.services.keys().map(|k| k.to_string()).collect();
        let nodes: Vec<String> = self.state.nodes.keys().cloned().collect();
        self.changes.services.extend(services);
        self.changes.nodes.extend(nodes);
    }

    /// Puts back entries read from the store as they were, indexes and all.
    pub fn restore(&mut self, saved: store::Saved) {
        for n in saved.nodes {
            let name = n.name.clone();
            self.state.nodes.insert(name.clone(), Arc::new(n));
            self.touch_node(&name);
        }
        for i in saved.instances {
            let node = i.node.clone();
            let lower = self.state.insert_instance(i);
            self.changes.services.insert(lower);
            self.changes.nodes.insert(node);
        }
        for c in saved.checks {
            let owner = CheckOwner {
                node: c.node.clone(),
                service_id: c.service_id.clone(),
            };
            self.state
                .check_owner
                .insert((c.node.clone(), c.id.clone()), owner.clone());
            Arc::make_mut(self.state.checks.entry(owner.clone()).or_default())
                .insert(c.id.clone(), c);
            self.state.check_defs += 1;
            self.touch_owner(&owner);
        }
        for e in saved.kv {
            self.state.kv.insert(e.key.clone(), Arc::new(e));
            self.changes.kv = true;
        }
        for s in saved.sessions {
            self.state.sessions.insert(s.id.clone(), Arc::new(s));
            self.changes.sessions = true;
        }
        for q in saved.queries {
            self.state.queries.insert(q.id.clone(), Arc::new(q));
            self.changes.queries = true;
        }
    }

    /// Makes the keys in `touched` what they are in `from`: a write that
    /// needs no disk, put back on a tip that a refused batch took back (see
    /// `commit`). An entry whose node or instance is not here is left out:
    /// it belonged to the refused writes.
    pub fn replay(&mut self, from: &State, touched: &Touched) {
        for name in &touched.nodes {
            if let Some(n) = from.node(name) {
                self.upsert_node(n.clone());
            }
        }
        for key in &touched.instances {
            if let Some(i) = from.instance(key) {
                if self.state.nodes.contains_key(&*key.node) {
                    self.upsert_instance(i.clone());
                }
            }
        }
        for (node, id) in &touched.checks {
            match from.check(node, id) {
                Some(c) => {
                    let owner_here = match &c.service_id {
                        Some(sid) => self
                            .state
                            .instances
                            .contains_key(&InstanceKey::new(node, sid)),
                        None => self.state.nodes.contains_key(node),
                    };
                    if owner_here {
                        self.upsert_check(c.clone());
                    }
                }
                None => {
                    self.remove_check(node, id);
                }
            }
        }
        for key in &touched.instances {
            if from.instance(key).is_none() {
                self.remove_instance(key);
            }
        }
        for name in &touched.nodes {
            if from.node(name).is_none() {
                self.remove_node(name);
            }
        }
        for key in &touched.kv {
            match from.kv_get(key) {
                Some(e) => {
                    self.kv_put(key, e.value.clone(), e.flags, None);
                }
                None => {
                    self.kv_delete(key, None);
                }
            }
        }
    }

    /// Removes the entries of `stale` that still belong to `source` (a
    /// concurrent write may have claimed one for another source since), and
    /// nodes of `source` among them once no instance is left on them.
    pub fn remove_stale(&mut self, source: Source, stale: &SourceKeys) {
        for k in &stale.instances {
            if self.state.instance(k).is_some_and(|i| i.source == source) {
                self.remove_instance(k);
            }
        }
        for (node, id) in &stale.checks {
            if self
                .state
                .check(node, id)
                .is_some_and(|c| c.source == source)
            {
                self.remove_check(node, id);
            }
        }
        for n in &stale.nodes {
            let ours = self.state.node(n).is_some_and(|n| n.source == source);
            if ours && self.state.keys_on(n).next().is_none() {
                self.remove_node(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn node(name: &str) -> Node {
        Node::new(name.into(), "10.0.0.1".into(), "dc1".into(), Source::Api)
    }

    fn instance(node: &str, id: &str) -> Instance {
        Instance {
            node: node.into(),
            id: id.into(),
            name: id.into(),
            tags: vec![],
            address: String::new(),
            port: 80,
            meta: Meta::new(),
            weights: Weights::default(),
            tagged_addresses: BTreeMap::new(),
            enable_tag_override: false,
            connect: None,
            source: Source::Api,
            create_index: 0,
            modify_index: 0,
        }
    }

    /// A node's instances are a range of the instance map; names that
    /// extend one another ("web", "web-2", "web2") must not bleed into it.
    #[test]
    fn node_scoped_reads_and_removal_stay_on_their_node() {
        let r = Registry::new(Arc::new(()));
        r.write(|t| {
            for n in ["web", "web-2", "web2", "wea"] {
                t.upsert_node(node(n));
                t.upsert_instance(instance(n, &format!("{n}-a")));
                t.upsert_instance(instance(n, "shared"));
            }
        });
        let on = |n: &str| -> Vec<String> {
            r.read(|s| s.node_instances(n).map(|v| v.instance.id.clone()).collect())
        };
        assert_eq!(on("web"), ["shared", "web-a"]);
        assert_eq!(on("web2"), ["shared", "web2-a"]);
        let changed = r.write(|t| {
            t.upsert_node(Node {
                address: "10.0.0.2".into(),
                ..node("web")
            });
            t.changes.services.clone()
        });
        assert_eq!(changed, BTreeSet::from(["shared".into(), "web-a".into()]));
        r.write(|t| assert!(t.remove_node("web")));
        assert!(on("web").is_empty());
        for n in ["web-2", "web2", "wea"] {
            assert_eq!(on(n).len(), 2, "{n} lost instances");
        }
        let shared = r.read(|s| s.service_instances("shared").count());
        assert_eq!(shared, 3);
    }

    /// Names come and go for good (a container per deploy): after 200,000
    /// registrations and deregistrations of new names, nothing of them is
    /// left in any map, yet the services index has moved for each.
    #[test]
    fn names_that_are_gone_leave_nothing_behind() {
        let r = Registry::new(Arc::new(()));
        r.write(|t| t.upsert_node(node("n")));
        let sizes = |s: &State| {
            (
                s.nodes.len(),
                s.instances.len(),
                s.by_service.len(),
                s.services.len(),
                s.checks.len(),
                s.check_owner.len(),
            )
        };
        let start = r.read(sizes);
        for i in 0..200_000 {
            let id = format!("svc-{i}");
            r.write(|t| t.upsert_instance(instance("n", &id)));
            r.write(|t| t.remove_instance(&InstanceKey::new("n", &id)));
        }
        assert_eq!(r.read(sizes), start);
        let after = r.read(|s| (s.tables().services, s.service_index("svc-7")));
        assert_eq!(after.0, r.index(), "the last deregistration moved it");
        assert_eq!(
            after.1, after.0,
            "a gone service answers with the services index"
        );
    }
}
