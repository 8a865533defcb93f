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
//! which the committer thread (`commit::committer`) hands each batch. The embedded redb
//! store (`store`) implements it; a replicated store is a second
//! implementation of the same thing.

mod catalog;
mod changes;
mod commit;
pub mod compact;
pub mod definition;
mod kv;
pub mod model;
mod order;
pub mod query;
mod sessions;
pub mod shared;
mod state;
pub mod store;
mod topics;

use std::collections::BTreeSet;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use compact::SmallMap;
use order::{ByKey, ByService, KeyAt, ServiceAt};

pub use changes::{ChangeListener, Changes, TableIndexes, Touched};
pub use commit::{Registry, StoreStatus};
pub use model::{
    Behavior, Check, CheckKind, Connect, Extra, ExtraFields, Health, HttpProbe, Instance,
    InstanceKey, KvEntry, Meta, Node, Session, Source, TaggedAddress, TcpProbe, Thresholds,
    Weights,
};
pub use store::{Store, StoreError};
pub use topics::{Table, Topic};

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
    pub node: Arc<str>,
    pub service_id: Option<Arc<str>>,
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
    /// Every instance, in key order (see [`order`]).
    instances: OrdSet<order::ByKey>,
    checks: OrdMap<CheckOwner, Arc<SmallMap<String, Check>>>,
    /// (node, check id) → owner, to find a check by the ID the API uses.
    check_owner: OrdMap<(String, String), CheckOwner>,
    /// Every instance again, in service order: one flat ordered set, so
    /// that a service's instances are a range and adding one to a service
    /// with 50,000 copies a path, not the service's whole list.
    by_service: OrdSet<order::ByService>,
    /// Lower-cased service name → its instance count and change index.
    /// `Arc<str>`: a path copy clones every key of its nodes.
    services: OrdMap<Arc<str>, ServiceEntry>,
    kv: OrdMap<String, Arc<KvEntry>>,
    sessions: OrdMap<String, Arc<Session>>,
    /// Prepared queries by ID.
    queries: OrdMap<String, Arc<query::PreparedQuery>>,
    index: u64,
    tables: TableIndexes,
    /// In a cluster: each shared-store key this member has applied, with
    /// its modification revision, which a write expects it still to have.
    /// Empty otherwise.
    revs: imbl::HashMap<Arc<str>, u64>,
    /// Moves when a check is added, removed or redefined, never on a status
    /// update: the health runner rescans its checks only when this moves.
    check_defs: u64,
}

/// The keys of one source's entries. A resync starts from the keys the
/// source has, strikes each one it writes again, and removes the rest: it
/// needs no list of everything it wrote, and never touches another
/// source's entries.
#[derive(Debug, Default, Clone)]
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
            let node = i.node.to_string();
            let lower = self.state.insert_instance(i);
            self.changes.services.insert(lower);
            self.changes.nodes.insert(node);
        }
        for c in saved.checks {
            let owner = CheckOwner {
                node: c.node.as_str().into(),
                service_id: c.service_id.as_deref().map(Arc::from),
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
                        Some(sid) => self.state.has_instance(&InstanceKey::new(node, sid)),
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
            if ours && self.state.instances_on(n).next().is_none() {
                self.remove_node(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node::new(name.into(), "10.0.0.1".into(), "dc1".into(), Source::Api)
    }

    fn instance(node: &str, id: &str) -> Instance {
        Instance {
            node: node.into(),
            id: id.into(),
            name: id.into(),
            tags: Arc::from([]),
            address: "".into(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            extra: Default::default(),
            source: Source::Api,
            create_index: 0,
            modify_index: 0,
        }
    }

    /// Instances read from the store share their service's name and tags
    /// and their node's name with the first read, whatever the case of the
    /// service name, before any of them reaches a state.
    #[test]
    fn instances_read_from_the_store_share_their_strings() {
        let mut sharing = state::Sharing::default();
        let mut loaded = Vec::new();
        for (node, id, name) in [("n1", "a", "web"), ("n1", "b", "Web"), ("n2", "c", "web")] {
            let mut i = instance(node, id);
            i.name = name.into();
            i.tags = ["v1", "primary"].map(Arc::from).into();
            sharing.share(&mut i, &loaded);
            loaded.push(i);
        }
        let [a, b, c] = &loaded[..] else {
            unreachable!()
        };
        assert!(Arc::ptr_eq(&a.tags, &b.tags) && Arc::ptr_eq(&a.tags, &c.tags));
        assert!(Arc::ptr_eq(&a.name, &c.name), "same spelling: one string");
        assert_eq!(&*b.name, "Web", "another spelling is kept as registered");
        assert!(Arc::ptr_eq(&a.node, &b.node) && !Arc::ptr_eq(&a.node, &c.node));
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
            r.read(|s| {
                s.node_instances(n)
                    .map(|v| v.instance.id.to_string())
                    .collect()
            })
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
