//! A watched service's entries applied to the registry: what Consul has
//! now replaces what the sync had, never another source's entries.

use super::*;

/// The instances of a service in a datacenter that came from Consul.
pub(super) fn mirrored(state: &crate::registry::State, lower: &str, dc: &str) -> Vec<InstanceKey> {
    state
        .service_instances(lower)
        .filter(|v| v.instance.source == Source::Consul)
        .filter(|v| v.node.is_none_or(|n| n.datacenter == dc))
        .map(|v| v.instance.key())
        .collect()
}

/// A Consul node left with no instance goes too.
pub(super) fn remove_if_orphan(txn: &mut crate::registry::Txn<'_>, node: &str) {
    let orphan = txn
        .state()
        .node(node)
        .is_some_and(|n| n.source == Source::Consul)
        && txn.state().node_instances(node).next().is_none();
    if orphan {
        txn.remove_node(node);
    }
}

impl ConsulSync {
    /// Writes one service's entries as Consul reported them, and removes
    /// what Consul no longer reports. Entries of other sources are never
    /// touched.
    pub(super) fn apply(&self, dc: Option<&str>, name: &str, entries: Vec<Entry>) {
        let dc = dc.unwrap_or(&self.local_dc).to_ascii_lowercase();
        let lower = name.to_ascii_lowercase();
        self.registry.write(|txn| {
            let mut keep_instances = BTreeSet::new();
            let mut keep_checks = BTreeSet::new();
            for e in entries {
                let node_dc = if e.node.datacenter.is_empty() {
                    dc.clone()
                } else {
                    e.node.datacenter.to_ascii_lowercase()
                };
                let node_name = e.node.node.clone();
                if txn
                    .state()
                    .node(&node_name)
                    .is_none_or(|n| n.source == Source::Consul)
                {
                    txn.upsert_node(Node {
                        meta: e.node.meta,
                        tagged_addresses: e.node.tagged_addresses,
                        ..Node::new(node_name.clone(), e.node.address, node_dc, Source::Consul)
                    });
                }
                let key = InstanceKey::new(&node_name, &e.service.id);
                if txn
                    .state()
                    .instance(&key)
                    .is_some_and(|i| i.source != Source::Consul)
                {
                    continue;
                }
                let connect = e.service.connect();
                let weights = match e.service.weights {
                    Some(w) if w.passing > 0 => Weights {
                        passing: w.passing.clamp(1, u16::MAX as i64) as u16,
                        warning: w.warning.clamp(0, u16::MAX as i64) as u16,
                    },
                    _ => Weights::default(),
                };
                txn.upsert_instance(Instance {
                    node: node_name.as_str().into(),
                    id: e.service.id.as_str().into(),
                    name: e.service.service.as_str().into(),
                    tags: e.service.tags.into_iter().map(Arc::from).collect(),
                    address: e.service.address.into(),
                    port: e.service.port,
                    weights,
                    enable_tag_override: e.service.enable_tag_override,
                    source: Source::Consul,
                    extra: crate::registry::Extra::new(
                        e.service.meta,
                        e.service.tagged_addresses,
                        connect,
                    ),
                    create_index: 0,
                    modify_index: 0,
                });
                keep_instances.insert(key);
                for c in e.checks {
                    if txn
                        .state()
                        .check(&c.node, &c.check_id)
                        .is_some_and(|o| o.source != Source::Consul)
                    {
                        continue;
                    }
                    keep_checks.insert((c.node.clone(), c.check_id.clone()));
                    // Consul's maintenance status hides like critical.
                    let status = Health::parse(&c.status).unwrap_or(Health::Critical);
                    txn.upsert_check(Check {
                        node: c.node,
                        id: c.check_id,
                        name: c.name,
                        status,
                        output: c.output,
                        notes: c.notes,
                        service_id: (!c.service_id.is_empty()).then_some(c.service_id),
                        service_name: c.service_name,
                        kind: CheckKind::Static,
                        thresholds: Thresholds::default(),
                        source: Source::Consul,
                        create_index: 0,
                        modify_index: 0,
                    });
                }
            }
            // What Consul stopped reporting.
            let state = txn.state();
            let gone: Vec<InstanceKey> = mirrored(state, &lower, &dc)
                .into_iter()
                .filter(|k| !keep_instances.contains(k))
                .collect();
            let stale_checks: Vec<(String, String)> = keep_instances
                .iter()
                .flat_map(|k| state.checks_of(k))
                .filter(|c| c.source == Source::Consul)
                .map(|c| (c.node.clone(), c.id.clone()))
                .filter(|k| !keep_checks.contains(k))
                .collect();
            for (node, id) in stale_checks {
                txn.remove_check(&node, &id);
            }
            for key in gone {
                txn.remove_instance(&key);
                remove_if_orphan(txn, &key.node);
            }
        });
    }

    /// Removes a service's Consul entries in one datacenter.
    pub(super) fn purge(&self, dc: Option<&str>, name: &str) {
        let dc = dc.unwrap_or(&self.local_dc).to_ascii_lowercase();
        let lower = name.to_ascii_lowercase();
        self.registry.write(|txn| {
            for key in mirrored(txn.state(), &lower, &dc) {
                txn.remove_instance(&key);
                remove_if_orphan(txn, &key.node);
            }
        });
    }
}
