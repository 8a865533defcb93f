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

mod build;
mod listener;
mod ptr;
mod queries;
mod sets;
mod tags;

use ptr::PtrIndex;
pub use sets::*;
use tags::TagIndex;

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
    /// Plain queries by the lower-cased service they search, so that a
    /// change to one service rebuilds its queries and no others. Listener
    /// only.
    query_services: Mutex<HashMap<String, Vec<queries::PlainQuery>>>,
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

/// The key of a service's answer set in another datacenter.
fn remote_key(lower: &str, dc: &str) -> String {
    format!("{lower}\0{dc}")
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
            query_services: Mutex::new(HashMap::new()),
            query_failover: NameMap::default(),
            tags: TagIndex::default(),
            latest: arc_swap::ArcSwapOption::empty(),
            template_sets: NameMap::default(),
            template_sets_full: Default::default(),
            template_sets_cleared: Default::default(),
        }
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

    /// Whether some local instance carries `tag` (any case).
    pub fn has_tag(&self, tag: &[u8]) -> bool {
        let tag = String::from_utf8_lossy(tag).to_ascii_lowercase();
        self.tags.counts.contains_key(tag.as_str())
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
