//! The registry's change listener: rebuilds what a change touched.

use super::*;

impl ChangeListener for Answers {
    fn changed(&self, state: &Arc<State>, changes: &Changes) {
        self.latest.store(Some(Arc::clone(state)));
        if changes.queries {
            self.template_sets.clear();
        } else if !changes.services.is_empty() && !self.template_sets.is_empty() {
            self.template_sets
                .retain(|_, (service, _)| !changes.services.contains(&**service));
        }
        if changes.queries {
            self.build_queries(state);
        } else if !changes.services.is_empty() {
            self.rebuild_queries_of(state, &changes.services);
        }
        let mut remote = self.remote_dcs.locked();
        for lower in &changes.services {
            let mut sets = self.build_service(state, lower);
            let new = sets.remove(&self.config().datacenter).map(Arc::new);
            let old = match &new {
                Some(set) => self
                    .services
                    .insert(lower.clone().into_boxed_str(), Arc::clone(set)),
                None => self.services.remove(lower.as_str()).map(|(_, set)| set),
            };
            self.tags.replace(old.as_deref(), new.as_deref());
            let gone: Vec<String> = remote
                .get(lower)
                .map(|dcs| {
                    dcs.iter()
                        .filter(|dc| !sets.contains_key(*dc))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            for dc in gone {
                self.services.remove(remote_key(lower, &dc).as_str());
            }
            if sets.is_empty() {
                remote.remove(lower);
            } else {
                remote.insert(lower.clone(), sets.keys().cloned().collect());
            }
            for (dc, set) in sets {
                self.services
                    .insert(remote_key(lower, &dc).into_boxed_str(), Arc::new(set));
            }
        }
        drop(remote);
        for name in &changes.nodes {
            let lower = name.to_ascii_lowercase();
            match self.build_node(state, name) {
                Some(set) => {
                    self.nodes.insert(lower.into_boxed_str(), Arc::new(set));
                }
                None => {
                    self.nodes.remove(lower.as_str());
                }
            }
        }
        self.update_ptr(state, changes);
    }
}
