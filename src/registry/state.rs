//! Reading the registry: services, instances with their node and health,
//! checks, KV, sessions and queries, as of one published state; and the
//! index upkeep writes use.

use super::*;

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
    pub(super) fn insert_instance(&mut self, mut inst: Instance) -> String {
        let lower = inst.name.to_ascii_lowercase();
        // Share the strings a million instances would otherwise each hold
        // a copy of with those already stored: the service's name and tags
        // with its first instance, the node's name with the node's first
        // instance. Only strings held by stored instances are shared, so
        // nothing outlives its last holder.
        let sibling = self
            .by_service
            .range(ServiceAt(&lower, "", "")..)
            .next()
            .filter(|s| s.0.name.eq_ignore_ascii_case(&lower));
        if let Some(sibling) = sibling {
            share_service_strings(&mut inst, &sibling.0);
        }
        let neighbour = self
            .instances
            .range(KeyAt(&inst.node, "")..)
            .next()
            .filter(|n| n.0.node == inst.node);
        if let Some(neighbour) = neighbour {
            inst.node = Arc::clone(&neighbour.0.node);
        }
        if self.put(Arc::new(inst)) {
            match self.services.get_mut(lower.as_str()) {
                Some(e) => e.instances += 1,
                None => {
                    let entry = ServiceEntry {
                        instances: 1,
                        ..Default::default()
                    };
                    self.services.insert(lower.as_str().into(), entry);
                }
            }
        }
        lower
    }

    /// Puts an instance in both orders, replacing the entry with its key;
    /// true when it is new to its service.
    fn put(&mut self, inst: Arc<Instance>) -> bool {
        let new = self
            .by_service
            .insert(ByService(Arc::clone(&inst)))
            .is_none();
        self.instances.insert(ByKey(inst));
        new
    }

    /// Takes an instance out of the key order only; `unindex_service`
    /// takes it out of its service.
    pub(super) fn take_instance(&mut self, key: &InstanceKey) -> Option<Arc<Instance>> {
        self.instances.remove(key).map(|i| i.0)
    }

    /// Replaces an instance's create index (a replicated write's own).
    pub(super) fn set_create_index(&mut self, key: &InstanceKey, create: u64) {
        if let Some(old) = self.instance(key) {
            let mut inst = old.clone();
            inst.create_index = create;
            self.put(Arc::new(inst));
        }
    }

    pub(super) fn has_instance(&self, key: &InstanceKey) -> bool {
        self.instances.contains(key)
    }

    pub(super) fn unindex_service(&mut self, lower: &str, key: &InstanceKey) {
        if self
            .by_service
            .remove(&ServiceAt(lower, &key.node, &key.id))
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

    pub(super) fn stamp(&mut self, changes: &Changes, index: u64) {
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
        self.instances.get(key).map(|i| &*i.0)
    }

    pub fn instances(&self) -> impl Iterator<Item = &Instance> {
        self.instances.iter().map(|i| &*i.0)
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
        let name = lower_name.to_string();
        self.by_service
            .range(ServiceAt(&name, "", "")..)
            .take_while(move |i| i.0.name.eq_ignore_ascii_case(&name))
            .map(move |i| self.view_of(&i.0))
    }

    /// Every instance with its node, in key order, in one pass and no
    /// look-up: instances sort by node name as nodes do, so the two maps
    /// are walked side by side. For reads of the whole catalog.
    pub fn members(&self) -> impl Iterator<Item = (&Instance, Option<&Node>)> {
        let mut nodes = self.nodes.iter().peekable();
        self.instances.iter().map(move |i| {
            let instance = &*i.0;
            while nodes
                .next_if(|(name, _)| name.as_str() < &*instance.node)
                .is_some()
            {}
            let node = nodes
                .peek()
                .filter(|(name, _)| name.as_str() == &*instance.node)
                .map(|(_, n)| &***n);
            (instance, node)
        })
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
            .filter(move |i| {
                i.0.connect_for()
                    .is_some_and(|f| f.eq_ignore_ascii_case(lower_name))
            })
            .map(move |i| self.view_of(&i.0))
    }

    /// Every instance on a node.
    pub fn node_instances<'a>(&'a self, node: &str) -> impl Iterator<Item = InstanceView<'a>> + 'a {
        self.instances_on(node).map(move |i| self.view_of(i))
    }

    /// A node's instances: keys sort by node first, so they are one range
    /// of the key order (no per-node index to keep in memory).
    pub(super) fn instances_on<'a>(
        &'a self,
        node: &str,
    ) -> impl Iterator<Item = &'a Instance> + 'a {
        let node = node.to_string();
        self.instances
            .range(KeyAt(&node, "")..)
            .map(|i| &*i.0)
            .take_while(move |i| *i.node == *node)
    }

    pub fn view(&self, key: &InstanceKey) -> Option<InstanceView<'_>> {
        Some(self.view_of(self.instance(key)?))
    }

    fn view_of<'a>(&'a self, instance: &'a Instance) -> InstanceView<'a> {
        InstanceView {
            instance,
            node: self.node(&instance.node),
            health: self.health_of(&instance.key()),
        }
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
        // Arc clones of the key's names: no allocation per look-up.
        let own = CheckOwner {
            node: Arc::clone(&key.node),
            service_id: Some(Arc::clone(&key.id)),
        };
        let node = CheckOwner {
            node: Arc::clone(&key.node),
            service_id: None,
        };
        let own = self.checks.get(&own).into_iter().flat_map(|m| m.values());
        let node = self.checks.get(&node).into_iter().flat_map(|m| m.values());
        own.chain(node)
    }

    /// A node's own checks (not its services').
    pub fn node_checks<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a Check> + 'a {
        let owner = CheckOwner {
            node: node.into(),
            service_id: None,
        };
        self.checks.get(&owner).into_iter().flat_map(|m| m.values())
    }

    pub fn check(&self, node: &str, id: &str) -> Option<&Check> {
        let owner = self.check_owner.get(&(node.to_string(), id.to_string()))?;
        self.checks.get(owner)?.get(id)
    }

    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.checks.values().flat_map(|m| m.values())
    }
}

/// Shares strings between instances as they are read from the store, one
/// at a time, before any is in a [`State`]: a restart of a million reads
/// them all first, and copies dropped only after the last was read would
/// leave the allocator's pages a third empty for good.
#[derive(Default)]
pub(super) struct Sharing {
    /// Lower-cased service name → where its first instance is in the
    /// loaded list.
    services: std::collections::HashMap<String, usize>,
    nodes: std::collections::HashSet<Arc<str>>,
}

impl Sharing {
    /// Points `inst`'s service name, tags and node at those of an instance
    /// of `loaded` (read before it), where they are equal.
    pub(super) fn share(&mut self, inst: &mut Instance, loaded: &[Instance]) {
        let lower = inst.name.to_ascii_lowercase();
        match self.services.get(&lower) {
            Some(&i) => share_service_strings(inst, &loaded[i]),
            None => {
                self.services.insert(lower, loaded.len());
            }
        }
        match self.nodes.get(&inst.node) {
            Some(node) => inst.node = Arc::clone(node),
            None => {
                self.nodes.insert(Arc::clone(&inst.node));
            }
        }
    }
}

/// Points `inst`'s name and tags at `sibling`'s (another instance of the
/// same service) where they are equal.
fn share_service_strings(inst: &mut Instance, sibling: &Instance) {
    if inst.name == sibling.name {
        inst.name = Arc::clone(&sibling.name);
    }
    if inst.tags == sibling.tags {
        inst.tags = Arc::clone(&sibling.tags);
    } else if inst.tags.iter().any(|t| sibling.tags.contains(t)) {
        inst.tags = inst
            .tags
            .iter()
            .map(|t| {
                let same = sibling.tags.iter().find(|s| *s == t);
                Arc::clone(same.unwrap_or(t))
            })
            .collect();
    }
}
