//! Catalog writes: nodes, service instances and checks, and a check's
//! status.

use super::*;

impl Txn<'_> {
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
        let keys: Vec<InstanceKey> = self.state.instances_on(name).map(Instance::key).collect();
        for k in keys {
            self.remove_instance(&k);
        }
        self.remove_checks_of(&CheckOwner {
            node: name.into(),
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
        debug_assert!(self.state.nodes.contains_key(&*inst.node));
        let key = inst.key();
        if let Some(old) = self.state.instance(&key) {
            inst.create_index = old.create_index;
            inst.modify_index = old.modify_index;
            if *old == inst {
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
        let inst = self.state.take_instance(key)?;
        self.touched.instances.insert(key.clone());
        let lower = inst.name.to_ascii_lowercase();
        self.state.unindex_service(&lower, key);
        self.remove_checks_of(&CheckOwner {
            node: Arc::clone(&key.node),
            service_id: Some(Arc::clone(&key.id)),
        });
        self.changes.services.insert(lower);
        self.changes.nodes.insert(key.node.to_string());
        Some(Arc::unwrap_or_clone(inst))
    }

    pub(super) fn remove_checks_of(&mut self, owner: &CheckOwner) {
        if let Some(map) = self.state.checks.remove(owner) {
            for id in map.keys() {
                let key = (owner.node.to_string(), id.clone());
                self.state.check_owner.remove(&key);
                self.touched.checks.insert(key);
            }
            self.changes.checks = true;
            self.state.check_defs += 1;
        }
    }

    pub(super) fn touch_owner(&mut self, owner: &CheckOwner) {
        self.changes.checks = true;
        self.changes.nodes.insert(owner.node.to_string());
        match &owner.service_id {
            Some(id) => {
                let key = InstanceKey::new(&owner.node, id);
                if let Some(name) = self.state.instance(&key).map(|i| i.name.to_string()) {
                    self.touch_service(&name);
                }
            }
            None => {
                let node = Arc::clone(&owner.node);
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
            node: check.node.as_str().into(),
            service_id: check.service_id.as_deref().map(Arc::from),
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
}
