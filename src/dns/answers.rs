//! Answer sets: the read-optimised view of the registry that DNS answers
//! from.
//!
//! For every service (and every tag of it) with at least one instance fit to
//! answer, and for every node, the resource records are encoded once, when
//! the registry changes, and kept as wire bytes owned by the question name
//! (a compression pointer to offset 12). A query only picks records, in a
//! rotated order, and copies them: its cost does not depend on how the
//! records were made, and the registry lock is never on the query path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::name::DomainName;
use super::wire::{CLASS_IN, QNAME_OFFSET};
use crate::config::Soa;
use crate::registry::{ChangeListener, Changes, Health, InstanceView, State};

/// What shapes answers, fixed for the life of an [`Answers`].
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    pub domain: DomainName,
    pub datacenter: String,
    pub service_ttl: u32,
    pub node_ttl: u32,
    pub only_passing: bool,
    pub soa: Soa,
    /// signpost's own node: the NS target of the domain.
    pub node_name: String,
    pub node_address: IpAddr,
}

/// Where the SRV target name starts inside a ready-made SRV record:
/// owner pointer (2), type, class, TTL, RDLENGTH (10), priority, weight,
/// port (6).
pub const SRV_TARGET_AT: usize = 18;

/// One instance's ready-made records.
#[derive(Debug)]
pub struct Entry {
    /// Its A or AAAA record, owned by the question name; `None` when the
    /// address is a host name.
    pub addr_rr: Option<Box<[u8]>>,
    pub is_v6: bool,
    /// Its SRV record, owned by the question name.
    pub srv_rr: Box<[u8]>,
    /// Whether `addr_rr` is also the glue of the SRV target (the target is
    /// a name in signpost's domain that resolves to that address).
    pub glue: bool,
    /// Instances on the same target share one id, so glue is sent once.
    pub target_id: u32,
    /// SRV weight for its health state; also the weight of weighted order.
    pub weight: u16,
}

impl Entry {
    /// The A/AAAA record minus its owner: type, class, TTL, RDLENGTH, RDATA.
    pub fn addr_tail(&self) -> Option<&[u8]> {
        self.addr_rr.as_deref().map(|rr| &rr[2..])
    }
}

/// The records of one service or one tag of it.
#[derive(Debug, Default)]
pub struct RecordSet {
    pub entries: Vec<Arc<Entry>>,
    /// Distinct SRV targets among the service's instances (the bound of
    /// `Entry::target_id`).
    pub targets: u32,
}

#[derive(Debug, Default)]
pub struct ServiceSet {
    pub all: RecordSet,
    /// Lower-cased tag → the instances carrying it.
    pub tags: HashMap<Box<str>, RecordSet>,
}

#[derive(Debug)]
pub struct NodeSet {
    pub addr_rr: Option<Box<[u8]>>,
    pub is_v6: bool,
}

/// Records of the domain apex, minus their owner (written as a pointer to
/// the domain part of the question name).
#[derive(Debug)]
pub struct Apex {
    /// The SOA for negative answers and SOA queries; TTL = SOA minimum.
    pub soa_tail: Box<[u8]>,
    pub ns_tail: Box<[u8]>,
    /// Glue for the NS target: type..RDATA.
    pub ns_glue_tail: Box<[u8]>,
}

/// Offset of the NS target inside an NS record written after a 2-byte
/// owner pointer: pointer (2) + type, class, TTL, RDLENGTH (10).
pub const NS_TARGET_AT: usize = 12;

pub struct Answers {
    cfg: AnswerConfig,
    /// Lower-cased service name → its answer set; a service with no
    /// instance fit to answer has no entry (NXDOMAIN). A DashMap because DNS
    /// threads read single entries while the registry listener replaces
    /// single entries: a reader holds a shard lock only long enough to
    /// clone the `Arc`, never across `.await` or while writing a reply.
    services: DashMap<Box<str>, Arc<ServiceSet>>,
    /// Lower-cased node name → its address record (same locking rule).
    nodes: DashMap<Box<str>, Arc<NodeSet>>,
    apex: Apex,
}

/// type, class, TTL, RDLENGTH and RDATA of a record, encoded by hickory
/// with no name compression, so it can be copied into any message.
fn rr_tail(rtype: RecordType, ttl: u32, rdata: &RData) -> Vec<u8> {
    let mut rd = Vec::with_capacity(64);
    {
        let mut enc = BinEncoder::new(&mut rd);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        rdata.emit(&mut enc).expect("encoding to a Vec cannot fail");
    }
    let mut out = Vec::with_capacity(10 + rd.len());
    out.extend_from_slice(&u16::from(rtype).to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rd.len() as u16).to_be_bytes());
    out.extend_from_slice(&rd);
    out
}

/// A record owned by the question name.
fn owned_by_question(tail: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(2 + tail.len());
    out.extend_from_slice(&(0xC000 | QNAME_OFFSET).to_be_bytes());
    out.extend_from_slice(tail);
    out.into_boxed_slice()
}

fn addr_tail(ip: IpAddr, ttl: u32) -> (Vec<u8>, bool) {
    match ip {
        IpAddr::V4(v4) => (rr_tail(RecordType::A, ttl, &RData::A(A(v4))), false),
        IpAddr::V6(v6) => (rr_tail(RecordType::AAAA, ttl, &RData::AAAA(AAAA(v6))), true),
    }
}

/// `<hex of the address>`, the label of `.addr.` names.
pub fn addr_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

fn name_of(labels: &[&str]) -> Option<Name> {
    let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
    n.set_fqdn(true);
    Some(n)
}

impl Answers {
    pub fn new(cfg: AnswerConfig) -> Answers {
        let apex = Self::build_apex(&cfg);
        Answers {
            cfg,
            services: DashMap::new(),
            nodes: DashMap::new(),
            apex,
        }
    }

    pub fn config(&self) -> &AnswerConfig {
        &self.cfg
    }

    pub fn apex(&self) -> &Apex {
        &self.apex
    }

    fn domain_name(&self, prefix: &[&str]) -> Option<Name> {
        let mut labels: Vec<&str> = prefix.to_vec();
        labels.extend(self.cfg.domain.labels().iter().map(String::as_str));
        name_of(&labels)
    }

    fn build_apex(cfg: &AnswerConfig) -> Apex {
        let domain: Vec<&str> = cfg.domain.labels().iter().map(String::as_str).collect();
        let with = |prefix: &[&str]| {
            let mut l = prefix.to_vec();
            l.extend(&domain);
            name_of(&l).expect("configured names are valid")
        };
        let ns_name = with(&[&cfg.node_name, "node", &cfg.datacenter]);
        let serial = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as u32)
            .unwrap_or(1);
        let soa = SOA::new(
            ns_name.clone(),
            with(&["hostmaster"]),
            serial,
            cfg.soa.refresh as i32,
            cfg.soa.retry as i32,
            cfg.soa.expire as i32,
            cfg.soa.min_ttl,
        );
        let ttl = cfg.soa.min_ttl;
        Apex {
            soa_tail: rr_tail(RecordType::SOA, ttl, &RData::SOA(soa)).into_boxed_slice(),
            ns_tail: rr_tail(RecordType::NS, cfg.node_ttl, &RData::NS(NS(ns_name)))
                .into_boxed_slice(),
            ns_glue_tail: addr_tail(cfg.node_address, cfg.node_ttl)
                .0
                .into_boxed_slice(),
        }
    }

    /// The answer set of a service, by lower-cased name.
    pub fn service(&self, lower: &str) -> Option<Arc<ServiceSet>> {
        self.services.get(lower).map(|e| Arc::clone(e.value()))
    }

    /// A node's records, by lower-cased name.
    pub fn node(&self, lower: &str) -> Option<Arc<NodeSet>> {
        self.nodes.get(lower).map(|e| Arc::clone(e.value()))
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    fn fit(&self, v: &InstanceView<'_>) -> bool {
        match v.health {
            Health::Passing => true,
            Health::Warning => !self.cfg.only_passing,
            Health::Critical => false,
        }
    }

    fn entry(&self, v: &InstanceView<'_>, target_ids: &mut HashMap<Vec<u8>, u32>) -> Option<Entry> {
        let node = v.node?;
        let inst = v.instance;
        let ttl = self.cfg.service_ttl;
        let address = if inst.address.is_empty() {
            &node.address
        } else {
            &inst.address
        };
        let ip: Option<IpAddr> = address.parse().ok();
        let dc = node.datacenter.as_str();
        let (target, glue) = match ip {
            Some(_) if inst.address.is_empty() || inst.address == node.address => {
                (self.domain_name(&[&node.name, "node", dc])?, true)
            }
            Some(ip) => (self.domain_name(&[&addr_hex(ip), "addr", dc])?, true),
            None => {
                let mut n = Name::from_ascii(address).ok()?;
                n.set_fqdn(true);
                (n, false)
            }
        };
        let weight = inst.weights.for_health(v.health);
        let srv = SRV::new(1, weight, inst.port, target);
        let srv_tail = rr_tail(RecordType::SRV, ttl, &RData::SRV(srv));
        let next = target_ids.len() as u32;
        let target_id = *target_ids
            .entry(srv_tail[SRV_TARGET_AT - 2..].to_ascii_lowercase())
            .or_insert(next);
        let (addr_rr, is_v6) = match ip {
            Some(ip) => {
                let (tail, v6) = addr_tail(ip, ttl);
                (Some(owned_by_question(&tail)), v6)
            }
            None => (None, false),
        };
        Some(Entry {
            addr_rr,
            is_v6,
            srv_rr: owned_by_question(&srv_tail),
            glue: glue && ip.is_some(),
            target_id,
            weight,
        })
    }

    fn build_service(&self, state: &State, lower: &str) -> Option<ServiceSet> {
        let mut target_ids = HashMap::new();
        let mut set = ServiceSet::default();
        for v in state.service_instances(lower) {
            if !self.fit(&v) {
                continue;
            }
            // Another datacenter's instances are answered under its name.
            if v.node
                .map(|n| n.datacenter != self.cfg.datacenter)
                .unwrap_or(true)
            {
                continue;
            }
            let Some(entry) = self.entry(&v, &mut target_ids) else {
                continue;
            };
            let entry = Arc::new(entry);
            for tag in &v.instance.tags {
                let tags = &mut set.tags;
                let key = tag.to_ascii_lowercase().into_boxed_str();
                let tagged = tags.entry(key).or_default();
                // A tag listed twice on one instance counts once.
                if !tagged
                    .entries
                    .last()
                    .is_some_and(|e| Arc::ptr_eq(e, &entry))
                {
                    tagged.entries.push(Arc::clone(&entry));
                }
            }
            set.all.entries.push(entry);
        }
        if set.all.entries.is_empty() {
            return None;
        }
        let targets = target_ids.len() as u32;
        set.all.targets = targets;
        for t in set.tags.values_mut() {
            t.targets = targets;
        }
        Some(set)
    }

    fn build_node(&self, state: &State, name: &str) -> Option<NodeSet> {
        let node = state.node(name)?;
        if node.datacenter != self.cfg.datacenter {
            return None;
        }
        let (addr_rr, is_v6) = match node.address.parse::<IpAddr>() {
            Ok(ip) => {
                let (tail, v6) = addr_tail(ip, self.cfg.node_ttl);
                (Some(owned_by_question(&tail)), v6)
            }
            Err(_) => (None, false),
        };
        Some(NodeSet { addr_rr, is_v6 })
    }
}

impl ChangeListener for Answers {
    fn changed(&self, state: &State, changes: &Changes) {
        for lower in &changes.services {
            match self.build_service(state, lower) {
                Some(set) => {
                    self.services
                        .insert(lower.clone().into_boxed_str(), Arc::new(set));
                }
                None => {
                    self.services.remove(lower.as_str());
                }
            }
        }
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
    }
}
