//! Answer sets: the read-optimised view of the registry that DNS answers
//! from.
//!
//! For every service (and every tag of it) with at least one instance fit to
//! answer, for every node, and for every registered address (PTR), the
//! resource records are encoded once, when the registry changes, as wire
//! bytes owned by the question name (a compression pointer to offset 12).
//! A query only picks records, in a rotated order, and copies them: its cost
//! does not depend on how the records were made, and the registry lock is
//! never on the query path.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use dashmap::DashMap;
use hickory_proto::rr::rdata::{CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use super::name::DomainName;
use super::settings::DnsConfig;
use super::wire::{CLASS_IN, QNAME_OFFSET};
use crate::locks::{MutexExt, RwLockExt};
use crate::registry::compact::SmallSet;
use crate::registry::{ChangeListener, Changes, Health, InstanceView, Meta, State};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// What shapes answers, fixed for the life of an [`Answers`].
#[derive(Debug, Clone)]
pub struct AnswerConfig {
    /// The domain, then the alternative domain if any. Records naming a
    /// target in the domain are made once per domain, so an answer stays in
    /// the domain the question used.
    pub domains: Vec<DomainName>,
    pub datacenter: String,
    pub dns: DnsConfig,
    /// signpost's own node: the NS target of the domain.
    pub node_name: String,
    pub node_address: IpAddr,
}

/// Where the SRV target name starts inside a ready-made SRV record:
/// owner pointer (2), type, class, TTL, RDLENGTH (10), priority, weight,
/// port (6).
pub const SRV_TARGET_AT: usize = 18;
/// Where the RDATA starts in a record with a 2-byte owner pointer.
pub const RDATA_AT: usize = 12;

/// The `node_txt` of every instance whose node has no meta: an empty `Arc`
/// still allocates, and there is one per instance.
static NO_TXT: std::sync::LazyLock<Arc<[Box<[u8]>]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

/// One instance's ready-made records.
#[derive(Debug)]
pub struct Entry {
    /// Its A or AAAA record; `None` when the address is a host name.
    pub addr_rr: Option<Box<[u8]>>,
    pub is_v6: bool,
    /// For a host-name address: a CNAME to it.
    pub cname_rr: Option<Box<[u8]>>,
    /// Its SRV record, one per domain (same order as `AnswerConfig::domains`).
    pub srv_rr: Vec<Box<[u8]>>,
    /// Whether `addr_rr` is also the glue of the SRV target.
    pub glue: bool,
    /// The node's meta as TXT records (type..RDATA), for the additional
    /// section of SRV answers whose target is the node.
    pub node_txt: Arc<[Box<[u8]>]>,
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
    /// Every entry has the same weight: a weighted order is a uniform one.
    pub uniform: bool,
    /// Where the next round-robin answer starts.
    pub next: AtomicU32,
}

impl RecordSet {
    /// A set of `entries`, with what is derived from them: `targets`
    /// distinct SRV targets, and whether every weight is the same.
    pub fn of(entries: Vec<Arc<Entry>>, targets: u32) -> RecordSet {
        RecordSet {
            uniform: entries.windows(2).all(|p| p[0].weight == p[1].weight),
            targets,
            entries,
            next: AtomicU32::default(),
        }
    }
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
    /// Node meta as TXT records owned by the question name.
    pub txt_rr: Vec<Box<[u8]>>,
}

/// Records of a domain apex, minus their owner (written as a pointer to
/// the domain part of the question name).
#[derive(Debug)]
pub struct Apex {
    /// The SOA for negative answers and SOA queries; TTL = SOA minimum.
    pub soa_tail: Box<[u8]>,
    pub ns_tail: Box<[u8]>,
    /// Glue for the NS target: type..RDATA.
    pub ns_glue_tail: Box<[u8]>,
}

/// Which names point back at each registered address. Written only by the
/// registry listener, which runs one change at a time.
#[derive(Debug, Default)]
struct PtrIndex {
    names: HashMap<IpAddr, SmallSet<Box<str>>>,
    /// Node name → its address (its PTR target follows from the name).
    node_ip: HashMap<String, IpAddr>,
    service_ips: HashMap<String, (BTreeSet<IpAddr>, Box<str>)>,
}

/// The configuration answers are built with, and the apex records that
/// follow from it; swapped whole on reload.
pub struct Settings {
    pub cfg: AnswerConfig,
    /// One per domain.
    apex: Vec<Apex>,
}

impl std::ops::Deref for Settings {
    type Target = AnswerConfig;
    fn deref(&self) -> &AnswerConfig {
        &self.cfg
    }
}

impl Settings {
    fn new(cfg: AnswerConfig) -> Settings {
        let apex = cfg
            .domains
            .iter()
            .map(|d| Answers::build_apex(&cfg, d))
            .collect();
        Settings { cfg, apex }
    }

    /// The apex records of domain `d` (an index into `domains`).
    pub fn apex(&self, d: usize) -> &Apex {
        &self.apex[d]
    }
}

/// Name → answer set, hashed with foldhash: every query hashes a name, and
/// std's SipHash cost as much as the rest of the lookup. foldhash is seeded
/// at random per map, so names cannot be picked ahead of time to collide.
type NameMap<V> = DashMap<Box<str>, V, foldhash::fast::RandomState>;

pub struct Answers {
    /// Read once per query (an arc-swap load takes no lock and
    /// no reference count); replaced by a reload.
    settings: ArcSwap<Settings>,
    /// Lower-cased service name → its answer set; a service with no
    /// instance fit to answer has no entry (NXDOMAIN). A DashMap because DNS
    /// threads read single entries while the registry listener replaces
    /// single entries: a reader holds a shard lock only long enough to
    /// clone the `Arc`, never across `.await` or while writing a reply.
    services: NameMap<Arc<ServiceSet>>,
    /// Lower-cased node name → its records (same locking rule).
    nodes: NameMap<Arc<NodeSet>>,
    /// Registered address → the names pointing back at it. PTR records are
    /// encoded when asked for (PTR questions are rare; a ready-made set per
    /// address cost ~200 bytes a node). The listener writes, queries read;
    /// never held across .await.
    ptr_index: std::sync::RwLock<PtrIndex>,
    /// Lower-cased service name → the other datacenters it has answer sets
    /// for, so they can be dropped when they empty. Listener only.
    remote_dcs: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Prepared queries: lower-cased name (and ID) → the answer set of a
    /// plain query, built by the listener like a service's (same locking
    /// rule as `services`).
    queries: NameMap<Arc<RecordSet>>,
    /// Templates, longest name first, resolved when a name is asked (their
    /// names cannot be known in advance); replaced whole by the listener.
    templates: ArcSwap<Vec<(String, crate::registry::query::QuerySpec)>>,
    /// Lower-cased service names that plain queries search, so that a
    /// change to one rebuilds them. Listener only.
    query_services: Mutex<BTreeSet<String>>,
    /// Every tag some local instance carries, counted by service, for the
    /// empty non-terminals of RFC 2782 names (`_v1.service.consul`).
    tags: TagIndex,
    /// Plain queries with `Failover.Datacenters`: name (and ID) → the
    /// search to repeat in those datacenters when none is here.
    query_failover: NameMap<Arc<crate::registry::query::QuerySpec>>,
    /// The state of the last change, for template searches (their names
    /// are known only when asked). Memory, never the disk.
    latest: arc_swap::ArcSwapOption<State>,
    /// Asked name → the answers of the template search it resolved to
    /// (and that search's lower-cased service), built at the first ask from
    /// `latest` and dropped when the service or any query changes. At most
    /// [`MAX_TEMPLATE_SETS`]; cleared whole when full.
    template_sets: NameMap<(Box<str>, Arc<RecordSet>)>,
    template_sets_full: crate::metrics::LogLimiter,
    /// Times `template_sets` was full and cleared, for `/metrics`.
    pub template_sets_cleared: std::sync::atomic::AtomicU64,
}

/// Template answer sets kept at most (see `Answers::template_sets`).
pub const MAX_TEMPLATE_SETS: usize = 4096;

/// type, class, TTL, RDLENGTH and RDATA of a record, encoded by hickory
/// with no name compression, so it can be copied into any message.
pub fn rr_tail(rtype: RecordType, ttl: u32, rdata: &RData) -> Vec<u8> {
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
pub fn owned_by_question(tail: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(2 + tail.len());
    out.extend_from_slice(&(0xC000 | QNAME_OFFSET).to_be_bytes());
    out.extend_from_slice(tail);
    out.into_boxed_slice()
}

fn addr_tail(ip: IpAddr, ttl: u32) -> (Vec<u8>, bool) {
    use hickory_proto::rr::rdata::{A, AAAA};
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

/// RFC 1464: `key=value`, with `` ` ``, `=` and leading/trailing blanks of
/// the key escaped by a backquote; cut to one 255-byte string.
pub fn meta_txt(key: &str, value: &str) -> String {
    let mut k = String::with_capacity(key.len());
    let last = key.chars().count().saturating_sub(1);
    for (i, c) in key.chars().enumerate() {
        let edge_blank = c == ' ' && (i == 0 || i == last);
        if c == '`' || c == '=' || edge_blank {
            k.push('`');
        }
        k.push(c);
    }
    let mut s = format!("{k}={value}");
    if s.len() > 255 {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn txt_tails(meta: &Meta, ttl: u32) -> Vec<Box<[u8]>> {
    meta.iter()
        .map(|(k, v)| {
            rr_tail(
                RecordType::TXT,
                ttl,
                &RData::TXT(TXT::new(vec![meta_txt(k, v)])),
            )
            .into_boxed_slice()
        })
        .collect()
}

impl Answers {
    pub fn new(cfg: AnswerConfig) -> Answers {
        Answers {
            settings: ArcSwap::from_pointee(Settings::new(cfg)),
            services: NameMap::default(),
            nodes: NameMap::default(),
            ptr_index: std::sync::RwLock::new(PtrIndex::default()),
            remote_dcs: Mutex::new(HashMap::new()),
            queries: NameMap::default(),
            templates: ArcSwap::from_pointee(Vec::new()),
            query_services: Mutex::new(BTreeSet::new()),
            query_failover: NameMap::default(),
            tags: TagIndex::default(),
            latest: arc_swap::ArcSwapOption::empty(),
            template_sets: NameMap::default(),
            template_sets_full: Default::default(),
            template_sets_cleared: Default::default(),
        }
    }

    /// Template names whose answers are cached now.
    pub fn template_cache_len(&self) -> usize {
        self.template_sets.len()
    }

    /// The answers of a template's search (`spec`, resolved from the
    /// lower-cased `asked` name): every local instance fit for DNS that the
    /// search matches (tags, `OnlyPassing`, service and node meta), with the
    /// query's TTL, exactly as `execute` selects them.
    pub fn template_set(
        &self,
        asked: &str,
        spec: &crate::registry::query::QuerySpec,
    ) -> Option<Arc<RecordSet>> {
        if let Some(hit) = self.template_sets.get(asked) {
            return Some(Arc::clone(&hit.1));
        }
        let state = self.latest.load_full()?;
        let service = spec.service.to_ascii_lowercase();
        let ttl = spec
            .ttl
            .unwrap_or_else(|| self.config().dns.service_ttl.get(&service));
        let (mut entries, mut ids, mut node_txt) = (Vec::new(), HashMap::new(), HashMap::new());
        for v in state.service_instances(&service) {
            let local = v
                .node
                .is_some_and(|n| n.datacenter == self.config().datacenter);
            if local && self.fit(&v) && spec.matches(&v) {
                if let Some(e) = self.entry(&v, ttl, &mut ids, &mut node_txt) {
                    entries.push(Arc::new(e));
                }
            }
        }
        let set = Arc::new(RecordSet::of(entries, ids.len() as u32));
        // Kept only if no change was published meanwhile: a set built from
        // an older state must not outlive the change that dropped it.
        let current = self.latest.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &state)) {
            if self.template_sets.len() >= MAX_TEMPLATE_SETS {
                self.template_sets.clear();
                self.template_sets_cleared
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if self.template_sets_full.due() {
                    tracing::warn!(
                        "prepared-query template answers: {MAX_TEMPLATE_SETS} names cached, cleared (counted in signpost_dns_template_cache_cleared_total)"
                    );
                }
            }
            self.template_sets
                .insert(asked.into(), (service.into_boxed_str(), Arc::clone(&set)));
        }
        Some(set)
    }

    /// Whether some local instance carries `tag` (any case).
    pub fn has_tag(&self, tag: &[u8]) -> bool {
        let tag = String::from_utf8_lossy(tag).to_ascii_lowercase();
        self.tags.counts.contains_key(tag.as_str())
    }

    /// The search of a plain query that fails over to other datacenters.
    pub fn query_failover(&self, lower: &str) -> Option<Arc<crate::registry::query::QuerySpec>> {
        self.query_failover.get(lower).map(|s| Arc::clone(&s))
    }

    /// A plain prepared query's answers, by lower-cased name or ID.
    pub fn query(&self, lower: &str) -> Option<Arc<RecordSet>> {
        self.queries.get(lower).map(|s| Arc::clone(&s))
    }

    /// The template that answers `lower` (the longest matching name), and
    /// the concrete search it gives.
    pub fn template(&self, lower: &str) -> Option<crate::registry::query::QuerySpec> {
        self.templates
            .load()
            .iter()
            .find_map(|(prefix, spec)| spec.resolve(prefix, lower))
    }

    /// Rebuilds every plain query's set and the template list.
    fn build_queries(&self, state: &State) {
        use crate::registry::query::QuerySpec;
        let mut templates = Vec::new();
        let mut services = BTreeSet::new();
        let mut keep: HashMap<Box<str>, Arc<RecordSet>> = HashMap::new();
        let mut failover: HashMap<Box<str>, Arc<QuerySpec>> = HashMap::new();
        for q in state.queries() {
            let Ok(spec) = QuerySpec::parse(&q.name, &q.definition) else {
                continue;
            };
            let lower = q.name.to_ascii_lowercase();
            if spec.template.is_some() {
                templates.push((lower, spec));
                continue;
            }
            let service = spec.service.to_ascii_lowercase();
            services.insert(service.clone());
            if !spec.failover_datacenters().is_empty() {
                let spec = Arc::new(spec.clone());
                for key in [lower.clone(), q.id.to_ascii_lowercase()] {
                    if !key.is_empty() {
                        failover.insert(key.into_boxed_str(), Arc::clone(&spec));
                    }
                }
            }
            let ttl = spec
                .ttl
                .unwrap_or_else(|| self.config().dns.service_ttl.get(&service));
            let mut entries = Vec::new();
            let mut ids = HashMap::new();
            let mut node_txt = HashMap::new();
            for v in state.service_instances(&service) {
                let local = v
                    .node
                    .is_some_and(|n| n.datacenter == self.config().datacenter);
                if !local || !self.fit(&v) || !spec.matches(&v) {
                    continue;
                }
                if let Some(e) = self.entry(&v, ttl, &mut ids, &mut node_txt) {
                    entries.push(Arc::new(e));
                }
            }
            if entries.is_empty() {
                continue;
            }
            let set = Arc::new(RecordSet::of(entries, ids.len() as u32));
            if !lower.is_empty() {
                keep.insert(lower.into_boxed_str(), Arc::clone(&set));
            }
            keep.insert(q.id.to_ascii_lowercase().into_boxed_str(), set);
        }
        templates.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
        self.templates.store(Arc::new(templates));
        self.queries.retain(|k, _| keep.contains_key(k));
        for (k, v) in keep {
            self.queries.insert(k, v);
        }
        self.query_failover.retain(|k, _| failover.contains_key(k));
        for (k, v) in failover {
            self.query_failover.insert(k, v);
        }
        *self.query_services.locked() = services;
    }

    /// The settings answers are built with now.
    pub fn config(&self) -> Guard<Arc<Settings>> {
        self.settings.load()
    }

    /// Takes new settings; answer sets follow as the registry rebuilds them
    /// (see `Txn::touch_all`).
    pub fn set_config(&self, cfg: AnswerConfig) {
        self.settings.store(Arc::new(Settings::new(cfg)));
    }

    fn in_domain(&self, d: usize, prefix: &[&str]) -> Option<Name> {
        let cfg = self.config();
        let mut labels: Vec<&str> = prefix.to_vec();
        labels.extend(cfg.domains[d].labels().iter().map(String::as_str));
        name_of(&labels)
    }

    fn build_apex(cfg: &AnswerConfig, domain: &DomainName) -> Apex {
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

    /// The answer set of a service, by lower-cased name.
    pub fn service(&self, lower: &str) -> Option<Arc<ServiceSet>> {
        self.services.get(lower).map(|e| Arc::clone(e.value()))
    }

    /// The answer set of a service in another datacenter (lower-cased).
    pub fn service_in(&self, dc: &str, lower: &str) -> Option<Arc<ServiceSet>> {
        self.services
            .get(remote_key(lower, dc).as_str())
            .map(|e| Arc::clone(e.value()))
    }

    /// A node's records, by lower-cased name.
    pub fn node(&self, lower: &str) -> Option<Arc<NodeSet>> {
        self.nodes.get(lower).map(|e| Arc::clone(e.value()))
    }

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

    fn fit(&self, v: &InstanceView<'_>) -> bool {
        match v.health {
            Health::Passing => true,
            Health::Warning => !self.config().dns.only_passing,
            Health::Critical => false,
        }
    }

    fn entry(
        &self,
        v: &InstanceView<'_>,
        ttl: u32,
        target_ids: &mut HashMap<Vec<u8>, u32>,
        node_txt: &mut HashMap<String, Arc<[Box<[u8]>]>>,
    ) -> Option<Entry> {
        let node = v.node?;
        let inst = v.instance;
        let address = if inst.address.is_empty() {
            &node.address
        } else {
            &inst.address
        };
        let ip: Option<IpAddr> = address.parse().ok();
        let dc = node.datacenter.as_str();
        let on_node = inst.address.is_empty() || inst.address == node.address;
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
        let (addr_rr, is_v6, cname_rr) = match ip {
            Some(ip) => {
                let (tail, v6) = addr_tail(ip, ttl);
                (Some(owned_by_question(&tail)), v6, None)
            }
            None => {
                let tail = rr_tail(
                    RecordType::CNAME,
                    ttl,
                    &RData::CNAME(CNAME(targets[0].clone())),
                );
                (None, false, Some(owned_by_question(&tail)))
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
        Some(Entry {
            addr_rr,
            is_v6,
            cname_rr,
            srv_rr,
            glue: ip.is_some(),
            node_txt,
            target_id,
            weight,
        })
    }

    /// The service's answer sets, one per datacenter its instances are in.
    fn build_service(&self, state: &State, lower: &str) -> HashMap<String, ServiceSet> {
        let ttl = self.config().dns.service_ttl.get(lower);
        let mut target_ids: HashMap<String, HashMap<Vec<u8>, u32>> = HashMap::new();
        let mut node_txt = HashMap::new();
        let mut sets: HashMap<String, ServiceSet> = HashMap::new();
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
            let set = sets.entry(dc).or_default();
            let entry = Arc::new(entry);
            for tag in &v.instance.tags {
                let key = tag.to_ascii_lowercase().into_boxed_str();
                let tagged = set.tags.entry(key).or_default();
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
        for (dc, set) in sets.iter_mut() {
            let targets = target_ids.get(dc).map(|t| t.len() as u32).unwrap_or(0);
            for r in std::iter::once(&mut set.all).chain(set.tags.values_mut()) {
                *r = RecordSet::of(std::mem::take(&mut r.entries), targets);
            }
        }
        sets
    }

    fn build_node(&self, state: &State, name: &str) -> Option<NodeSet> {
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

    /// Updates the PTR index for the services and nodes of one change.
    fn update_ptr(&self, state: &State, changes: &Changes) {
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
                name = v.instance.name.clone();
                let a = &v.instance.address;
                if !a.is_empty() && *a != node.address {
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

impl PtrIndex {
    fn unlink(&mut self, ip: IpAddr, target: &str) {
        if let Some(set) = self.names.get_mut(&ip) {
            set.remove(&target.into());
            if set.is_empty() {
                self.names.remove(&ip);
            }
        }
    }
}

/// Tags of local services: service → its tags, tag → how many services
/// carry it.
#[derive(Debug, Default)]
struct TagIndex {
    /// Written by the listener only; never held across an await.
    by_service: Mutex<HashMap<String, Vec<Box<str>>>>,
    /// Read by DNS queries (the NXDOMAIN path): a sharded map, so that a
    /// flood of such queries on every DNS thread takes no common lock.
    counts: NameMap<u32>,
}

impl TagIndex {
    fn set(&self, service: &str, tags: Vec<Box<str>>) {
        let mut by_service = self.by_service.locked();
        for old in by_service.remove(service).unwrap_or_default() {
            if let dashmap::Entry::Occupied(mut c) = self.counts.entry(old) {
                *c.get_mut() -= 1;
                if *c.get() == 0 {
                    c.remove();
                }
            }
        }
        for t in &tags {
            *self.counts.entry(t.clone()).or_default() += 1;
        }
        if !tags.is_empty() {
            by_service.insert(service.to_string(), tags);
        }
    }
}

/// The key of a service's answer set in another datacenter.
fn remote_key(lower: &str, dc: &str) -> String {
    format!("{lower}\0{dc}")
}

impl ChangeListener for Answers {
    fn changed(&self, state: &Arc<State>, changes: &Changes) {
        self.latest.store(Some(Arc::clone(state)));
        if changes.queries {
            self.template_sets.clear();
        } else if !changes.services.is_empty() && !self.template_sets.is_empty() {
            self.template_sets
                .retain(|_, (service, _)| !changes.services.contains(&**service));
        }
        let queried = changes.queries || {
            let services = self.query_services.locked();
            !services.is_empty() && changes.services.iter().any(|s| services.contains(s))
        };
        if queried {
            self.build_queries(state);
        }
        let mut remote = self.remote_dcs.locked();
        for lower in &changes.services {
            let mut sets = self.build_service(state, lower);
            let tags = sets
                .get(&self.config().datacenter)
                .map(|set| set.tags.keys().cloned().collect())
                .unwrap_or_default();
            self.tags.set(lower, tags);
            match sets.remove(&self.config().datacenter) {
                Some(set) => {
                    self.services
                        .insert(lower.clone().into_boxed_str(), Arc::new(set));
                }
                None => {
                    self.services.remove(lower.as_str());
                }
            }
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

/// The DNS answer sets' template cache, read at scrape time.
pub struct AnswersCollector(pub Arc<Answers>);

impl std::fmt::Debug for AnswersCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswersCollector")
    }
}

impl Collector for AnswersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "dns_template_cache_names",
            "Prepared-query template names whose answers are cached now",
            self.0.template_cache_len() as i64,
        )?;
        counter(
            &mut encoder,
            "dns_template_cache_cleared",
            "Times the template answer cache was full and cleared",
            self.0
                .template_sets_cleared
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::meta_txt;

    #[test]
    fn rfc_1464_escaping() {
        assert_eq!(meta_txt("rack", "r1"), "rack=r1");
        assert_eq!(meta_txt("a=b", "c=d"), "a`=b=c=d");
        assert_eq!(meta_txt(" k ", "v"), "` k` =v");
        assert_eq!(meta_txt("q`", "v"), "q``=v");
        assert_eq!(meta_txt("k", &"x".repeat(300)).len(), 255);
    }
}
