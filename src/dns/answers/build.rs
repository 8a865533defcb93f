//! Building the sets of one service or node from the registry, for just
//! what a change touched.

use super::*;

impl Answers {
    pub(super) fn fit(&self, v: &InstanceView<'_>) -> bool {
        match v.health {
            Health::Passing => true,
            Health::Warning => !self.config().dns.only_passing,
            Health::Critical => false,
        }
    }

    pub(super) fn entry(
        &self,
        v: &InstanceView<'_>,
        ttl: u32,
        target_ids: &mut HashMap<Vec<u8>, u32>,
        node_txt: &mut HashMap<String, Arc<[Box<[u8]>]>>,
    ) -> Option<Entry> {
        let node = v.node?;
        let inst = v.instance;
        let address: &str = if inst.address.is_empty() {
            &node.address
        } else {
            &inst.address
        };
        let ip: Option<IpAddr> = address.parse().ok();
        let dc = node.datacenter.as_str();
        let on_node = inst.address.is_empty() || *inst.address == *node.address;
        let targets: Vec<Name> = match ip {
            Some(_) if on_node => {
                // A node name with dots (`t2.320`, as Consul allows) is
                // several labels of the target, not one.
                let mut prefix: Vec<&str> = node.name.split('.').collect();
                prefix.extend(["node", dc]);
                (0..self.config().domains.len())
                    .map(|d| self.in_domain(d, &prefix))
                    .collect::<Option<_>>()?
            }
            Some(ip) => (0..self.config().domains.len())
                .map(|d| self.in_domain(d, &[&addr_hex(ip), "addr", dc]))
                .collect::<Option<_>>()?,
            None => {
                let mut n = Name::from_ascii(address).ok()?;
                n.set_fqdn(true);
                vec![n; self.config().domains.len()]
            }
        };
        let weight = inst.weights.for_health(v.health);
        let srv_rr: Vec<Box<[u8]>> = targets
            .iter()
            .map(|t| {
                let srv = SRV::new(1, weight, inst.port, t.clone());
                owned_by_question(&rr_tail(RecordType::SRV, ttl, &RData::SRV(srv)))
            })
            .collect();
        let next = target_ids.len() as u32;
        let target_id = *target_ids
            .entry(srv_rr[0][SRV_TARGET_AT..].to_ascii_lowercase())
            .or_insert(next);
        let (head, first) = match ip {
            Some(ip) => {
                let (tail, v6) = addr_tail(ip, ttl);
                let head = if v6 { Head::V6 } else { Head::V4 };
                (head, owned_by_question(&tail))
            }
            None => {
                let tail = rr_tail(
                    RecordType::CNAME,
                    ttl,
                    &RData::CNAME(CNAME(targets[0].clone())),
                );
                (Head::Cname, owned_by_question(&tail))
            }
        };
        let node_txt = if ip.is_some() && on_node && self.config().dns.node_meta_txt {
            let node_ttl = self.config().dns.node_ttl;
            node_txt
                .entry(node.name.clone())
                .or_insert_with(|| match txt_tails(&node.meta, node_ttl) {
                    t if t.is_empty() => Arc::clone(&NO_TXT),
                    t => t.into(),
                })
                .clone()
        } else {
            Arc::clone(&NO_TXT)
        };
        Some(Entry::new(
            head, &first, &srv_rr, node_txt, target_id, weight,
        ))
    }

    /// The service's answer sets, one per datacenter its instances are in.
    pub(super) fn build_service(&self, state: &State, lower: &str) -> HashMap<String, ServiceSet> {
        let ttl = self.config().dns.service_ttl.get(lower);
        let mut target_ids: HashMap<String, HashMap<Vec<u8>, u32>> = HashMap::new();
        let mut node_txt = HashMap::new();
        type Building = (Vec<Arc<Entry>>, HashMap<Arc<str>, Vec<Arc<Entry>>>);
        let mut sets: HashMap<String, Building> = HashMap::new();
        for v in state.service_instances(lower) {
            if !self.fit(&v) {
                continue;
            }
            let Some(dc) = v.node.map(|n| n.datacenter.clone()) else {
                continue;
            };
            let ids = target_ids.entry(dc.clone()).or_default();
            let Some(entry) = self.entry(&v, ttl, ids, &mut node_txt) else {
                continue;
            };
            let (all, tags) = sets.entry(dc).or_default();
            let entry = Arc::new(entry);
            for tag in v.instance.tags.iter() {
                // The registry's string when it is already lower case.
                let tagged = match tag.bytes().any(|b| b.is_ascii_uppercase()) {
                    true => tags.entry(tag.to_ascii_lowercase().into()),
                    false => tags.entry(Arc::clone(tag)),
                }
                .or_default();
                // A tag listed twice on one instance counts once.
                if !tagged.last().is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                    tagged.push(Arc::clone(&entry));
                }
            }
            all.push(entry);
        }
        sets.into_iter()
            .map(|(dc, (all, tags))| {
                let targets = target_ids.get(&dc).map(|t| t.len() as u32).unwrap_or(0);
                (dc, ServiceSet::new(all, tags, targets))
            })
            .collect()
    }

    pub(super) fn build_node(&self, state: &State, name: &str) -> Option<NodeSet> {
        let node = state.node(name)?;
        if node.datacenter != self.config().datacenter {
            return None;
        }
        let ttl = self.config().dns.node_ttl;
        let (addr_rr, is_v6) = match node.address.parse::<IpAddr>() {
            Ok(ip) => {
                let (tail, v6) = addr_tail(ip, ttl);
                (Some(owned_by_question(&tail)), v6)
            }
            Err(_) => (None, false),
        };
        let txt_rr = txt_tails(&node.meta, ttl)
            .iter()
            .map(|t| owned_by_question(t))
            .collect();
        Some(NodeSet {
            addr_rr,
            is_v6,
            txt_rr,
        })
    }

    pub(super) fn build_apex(cfg: &AnswerConfig, domain: &DomainName) -> Apex {
        let labels: Vec<&str> = domain.labels().iter().map(String::as_str).collect();
        let with = |prefix: &[&str]| {
            let mut l = prefix.to_vec();
            l.extend(&labels);
            name_of(&l).expect("configured names are valid")
        };
        let ns_name = with(&[&cfg.node_name, "node", &cfg.datacenter]);
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = &cfg.dns.soa;
        let rdata = SOA::new(
            ns_name.clone(),
            with(&["hostmaster"]),
            serial,
            soa.refresh as i32,
            soa.retry as i32,
            soa.expire as i32,
            soa.min_ttl,
        );
        Apex {
            soa_tail: rr_tail(RecordType::SOA, soa.min_ttl, &RData::SOA(rdata)).into_boxed_slice(),
            ns_tail: rr_tail(RecordType::NS, cfg.dns.node_ttl, &RData::NS(NS(ns_name)))
                .into_boxed_slice(),
            ns_glue_tail: addr_tail(cfg.node_address, cfg.dns.node_ttl)
                .0
                .into_boxed_slice(),
        }
    }
}
