//! Prepared queries in DNS: plain queries' sets built like a service's,
//! and templates resolved when asked, cached per name.

use super::*;

impl Answers {
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

    /// A plain query's set: every local instance fit for DNS that `spec`
    /// matches, with the query's TTL; `None` when there is none.
    fn query_set(
        &self,
        state: &State,
        spec: &crate::registry::query::QuerySpec,
        service: &str,
    ) -> Option<Arc<RecordSet>> {
        let ttl = spec
            .ttl
            .unwrap_or_else(|| self.config().dns.service_ttl.get(service));
        let (mut entries, mut ids, mut node_txt) = (Vec::new(), HashMap::new(), HashMap::new());
        for v in state.service_instances(service) {
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
        (!entries.is_empty()).then(|| Arc::new(RecordSet::of(entries, ids.len() as u32)))
    }

    /// Puts a plain query's set under its keys, or takes it away.
    fn place_query(&self, q: &PlainQuery, set: Option<Arc<RecordSet>>) {
        for key in &q.keys {
            match &set {
                Some(set) => {
                    self.queries.insert(key.clone(), Arc::clone(set));
                }
                None => {
                    self.queries.remove(&**key);
                }
            }
        }
    }

    /// Rebuilds the plain queries that search one of `services` (and no
    /// others: a change costs what it touched, however many queries).
    pub(super) fn rebuild_queries_of(&self, state: &State, services: &BTreeSet<String>) {
        let by_service = self.query_services.locked();
        if by_service.is_empty() {
            return;
        }
        for service in services {
            for q in by_service.get(service).into_iter().flatten() {
                self.place_query(q, self.query_set(state, &q.spec, service));
            }
        }
    }

    /// Rebuilds every plain query's set and the template list (when a
    /// query itself changed).
    pub(super) fn build_queries(&self, state: &State) {
        use crate::registry::query::QuerySpec;
        let mut templates = Vec::new();
        let mut by_service: HashMap<String, Vec<PlainQuery>> = HashMap::new();
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
            let keys: Vec<Box<str>> = [lower, q.id.to_ascii_lowercase()]
                .into_iter()
                .filter(|k| !k.is_empty())
                .map(String::into_boxed_str)
                .collect();
            let spec = Arc::new(spec);
            if !spec.failover_datacenters().is_empty() {
                for key in &keys {
                    failover.insert(key.clone(), Arc::clone(&spec));
                }
            }
            if let Some(set) = self.query_set(state, &spec, &service) {
                for key in &keys {
                    keep.insert(key.clone(), Arc::clone(&set));
                }
            }
            by_service
                .entry(service)
                .or_default()
                .push(PlainQuery { keys, spec });
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
        *self.query_services.locked() = by_service;
    }
}

/// A plain prepared query, as the listener keeps it to rebuild its set
/// when its service changes.
pub(super) struct PlainQuery {
    /// Its lower-cased name (when it has one) and ID: the names DNS answers.
    keys: Vec<Box<str>>,
    spec: Arc<crate::registry::query::QuerySpec>,
}
