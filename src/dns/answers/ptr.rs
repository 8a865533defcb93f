//! Reverse names: registered addresses and the names pointing at them,
//! encoded when a PTR question asks.

use super::*;

/// Which names point back at each registered address. Written only by the
/// registry listener, which runs one change at a time.
#[derive(Debug, Default)]
pub(super) struct PtrIndex {
    pub(super) names: HashMap<IpAddr, SmallSet<Box<str>>>,
    /// Node name → its address (its PTR target follows from the name).
    pub(super) node_ip: HashMap<String, IpAddr>,
    pub(super) service_ips: HashMap<String, (BTreeSet<IpAddr>, Box<str>)>,
}

impl PtrIndex {
    pub(super) fn unlink(&mut self, ip: IpAddr, target: &str) {
        if let Some(set) = self.names.get_mut(&ip) {
            set.remove(&target.into());
            if set.is_empty() {
                self.names.remove(&ip);
            }
        }
    }
}

impl Answers {
    /// PTR records for a registered address.
    pub fn ptr(&self, ip: &IpAddr) -> Option<Vec<Box<[u8]>>> {
        let index = self.ptr_index.read_locked();
        let names = index.names.get(ip).filter(|s| !s.is_empty())?;
        let ttl = self.config().dns.node_ttl;
        Some(
            names
                .iter()
                .filter_map(|n| Name::from_ascii(n).ok())
                .map(|n| owned_by_question(&rr_tail(RecordType::PTR, ttl, &RData::PTR(PTR(n)))))
                .collect(),
        )
    }

    /// Updates the PTR index for the services and nodes of one change.
    pub(super) fn update_ptr(&self, state: &State, changes: &Changes) {
        let cfg = self.config();
        let node_target = |name: &str| -> Box<str> {
            format!("{name}.node.{}.{}.", cfg.datacenter, cfg.domains[0]).into()
        };
        let mut index = self.ptr_index.write_locked();
        for lower in &changes.services {
            let mut ips = BTreeSet::new();
            let mut name = lower.clone();
            for v in state.service_instances(lower) {
                let Some(node) = v.node.filter(|n| n.datacenter == cfg.datacenter) else {
                    continue;
                };
                name = v.instance.name.to_string();
                let a = &v.instance.address;
                if !a.is_empty() && **a != *node.address {
                    if let Ok(ip) = a.parse() {
                        ips.insert(ip);
                    }
                }
            }
            let target: Box<str> =
                format!("{name}.service.{}.{}.", cfg.datacenter, cfg.domains[0]).into();
            if let Some((old_ips, old_target)) = index.service_ips.remove(lower) {
                for ip in old_ips {
                    index.unlink(ip, &old_target);
                }
            }
            for ip in &ips {
                index.names.entry(*ip).or_default().insert(target.clone());
            }
            if !ips.is_empty() {
                index.service_ips.insert(lower.clone(), (ips, target));
            }
        }
        for name in &changes.nodes {
            if let Some(ip) = index.node_ip.remove(name) {
                index.unlink(ip, &node_target(name));
            }
            let node = state.node(name).filter(|n| n.datacenter == cfg.datacenter);
            if let Some(ip) = node.and_then(|n| n.address.parse::<IpAddr>().ok()) {
                index.names.entry(ip).or_default().insert(node_target(name));
                index.node_ip.insert(name.clone(), ip);
            }
        }
    }
}
