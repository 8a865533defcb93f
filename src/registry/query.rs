//! Consul's prepared queries: a stored, named search ("web, tagged v2,
//! passing only") that HTTP clients execute and DNS answers as
//! `name.query.consul`. Templates (`name_prefix_match`, `regexp`) turn one
//! stored query into a family of names, with `${name.full}`,
//! `${name.prefix}`, `${name.suffix}` and `${match(N)}` interpolated into
//! the service and tags.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::definition::{de_null_default, parse_duration};
use super::model::Meta;
use super::{Health, InstanceView};

/// A stored prepared query: its identity and its definition as Consul
/// takes it (the `Service`, `DNS` and `Template` objects, field names
/// canonical), kept whole so that a read gives back what was written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreparedQuery {
    pub id: String,
    pub name: String,
    pub session: String,
    pub definition: Value,
    pub create_index: u64,
    pub modify_index: u64,
}

/// How a template matches names.
#[derive(Clone, Debug)]
pub enum TemplateKind {
    /// The query's name is a prefix of the name asked.
    Prefix,
    /// The name asked matches this expression (its groups are `match(N)`).
    Regexp(Regex),
}

/// A query's definition as Consul takes it and shows it: what is stored
/// (as JSON, so that a read gives back every field Consul has).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryDef {
    #[serde(rename = "Service")]
    pub service: QueryService,
    #[serde(rename = "DNS")]
    pub dns: QueryDns,
    #[serde(rename = "Template")]
    pub template: QueryTemplate,
}

/// `Service` of a query definition: what to search for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryService {
    #[serde(rename = "Service")]
    pub service: String,
    #[serde(rename = "Tags", deserialize_with = "de_null_default")]
    pub tags: Vec<String>,
    #[serde(rename = "OnlyPassing")]
    pub only_passing: bool,
    #[serde(rename = "NodeMeta", deserialize_with = "de_null_default")]
    pub node_meta: Meta,
    #[serde(rename = "ServiceMeta", deserialize_with = "de_null_default")]
    pub service_meta: Meta,
    #[serde(rename = "Failover", deserialize_with = "de_null_default")]
    pub failover: Failover,
    /// Kept and shown only: signpost has no network coordinates.
    #[serde(rename = "Near")]
    pub near: String,
    #[serde(rename = "IgnoreCheckIDs", deserialize_with = "de_null_default")]
    pub ignore_check_ids: Vec<String>,
}

/// `Service.Failover`: the datacenters tried, in order, when none here
/// match (sidecar mode). `NearestN` is kept for explain only.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Failover {
    #[serde(rename = "NearestN")]
    pub nearest_n: i64,
    #[serde(rename = "Datacenters", deserialize_with = "de_null_default")]
    pub datacenters: Vec<String>,
}

/// `DNS` of a query definition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryDns {
    /// A Go duration; empty: the service TTL applies.
    #[serde(rename = "TTL")]
    pub ttl: String,
}

/// `Template` of a query definition.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct QueryTemplate {
    /// `name_prefix_match`, `regexp`, or empty (a plain query).
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Regexp")]
    pub regexp: String,
    #[serde(rename = "RemoveEmptyTags")]
    pub remove_empty_tags: bool,
}

/// A definition, validated: what to search for.
#[derive(Clone, Debug)]
pub struct QuerySpec {
    pub service: String,
    /// Tags every instance must have; `!tag`: must not have.
    pub tags: Vec<String>,
    pub only_passing: bool,
    pub node_meta: Meta,
    pub service_meta: Meta,
    /// `DNS.TTL`, in seconds.
    pub ttl: Option<u32>,
    pub template: Option<(TemplateKind, bool)>,
    pub failover: Failover,
}

impl QuerySpec {
    /// Reads a stored definition; `Err` is the reason, one line.
    pub fn parse(name: &str, def: &Value) -> Result<QuerySpec, String> {
        let def = QueryDef::deserialize(def).map_err(|e| e.to_string())?;
        QuerySpec::validate(name, def)
    }

    /// Validates a definition; `Err` is the reason, one line.
    pub fn validate(name: &str, def: QueryDef) -> Result<QuerySpec, String> {
        let QueryDef {
            service,
            dns,
            template,
        } = def;
        if service.service.is_empty() {
            return Err("Must provide a Service name to query".into());
        }
        let ttl = match dns.ttl.as_str() {
            "" => None,
            s => Some(
                parse_duration(s)
                    .map_err(|e| format!("Bad DNS TTL {s:?}: {e}"))?
                    .as_secs() as u32,
            ),
        };
        let remove_empty = template.remove_empty_tags;
        let template = match template.kind.as_str() {
            "" => None,
            "name_prefix_match" => Some((TemplateKind::Prefix, remove_empty)),
            "regexp" => {
                let re = &template.regexp;
                let re = Regex::new(re).map_err(|e| format!("Invalid Regexp {re:?}: {e}"))?;
                Some((TemplateKind::Regexp(re), remove_empty))
            }
            other => return Err(format!("Bad Template.Type {other:?}")),
        };
        if template.is_none() && name.is_empty() && service.service.contains("${") {
            return Err("interpolation needs a Template".into());
        }
        Ok(QuerySpec {
            service: service.service,
            tags: service.tags,
            only_passing: service.only_passing,
            node_meta: service.node_meta,
            service_meta: service.service_meta,
            ttl,
            template,
            failover: service.failover,
        })
    }

    /// For a template whose name is `prefix`, the concrete search for
    /// `asked` (`None`: the name does not match it).
    pub fn resolve(&self, prefix: &str, asked: &str) -> Option<QuerySpec> {
        let Some((kind, remove_empty)) = &self.template else {
            return Some(self.clone());
        };
        if !asked.starts_with(prefix) {
            return None;
        }
        let groups: Vec<String> = match kind {
            TemplateKind::Prefix => Vec::new(),
            TemplateKind::Regexp(re) => {
                let caps = re.captures(asked)?;
                caps.iter()
                    .map(|m| m.map(|m| m.as_str().to_string()).unwrap_or_default())
                    .collect()
            }
        };
        let fill = |text: &str| -> String {
            let mut out = text
                .replace("${name.full}", asked)
                .replace("${name.prefix}", prefix)
                .replace("${name.suffix}", &asked[prefix.len()..]);
            for (i, g) in groups.iter().enumerate() {
                out = out.replace(&format!("${{match({i})}}"), g);
            }
            out
        };
        let mut spec = self.clone();
        spec.service = fill(&self.service);
        spec.tags = self.tags.iter().map(|t| fill(t)).collect();
        if *remove_empty {
            spec.tags.retain(|t| !t.is_empty() && t != "!");
        }
        spec.template = None;
        Some(spec)
    }

    /// `Failover.Datacenters`, in order.
    pub fn failover_datacenters(&self) -> Vec<String> {
        (self.failover.datacenters.iter())
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }

    /// Whether an instance is one this search returns.
    pub fn matches(&self, v: &InstanceView<'_>) -> bool {
        let healthy = match v.health {
            Health::Passing => true,
            Health::Warning => !self.only_passing,
            Health::Critical => false,
        };
        healthy
            && self.tags.iter().all(|t| {
                let (want, tag) = match t.strip_prefix('!') {
                    Some(t) => (false, t),
                    None => (true, t.as_str()),
                };
                v.instance.tags.iter().any(|x| x.eq_ignore_ascii_case(tag)) == want
            })
            && self
                .service_meta
                .iter()
                .all(|(k, want)| v.instance.extra.meta.get(k) == Some(want))
            && self
                .node_meta
                .iter()
                .all(|(k, want)| v.node.and_then(|n| n.meta.get(k)) == Some(want))
    }
}

/// Finds the query that answers `asked` (lower-cased): by ID, by exact
/// name, else the template with the longest matching name prefix.
pub fn find<'a>(
    queries: impl Iterator<Item = &'a PreparedQuery>,
    asked: &str,
) -> Option<(&'a PreparedQuery, QuerySpec)> {
    let mut best: Option<(&PreparedQuery, QuerySpec)> = None;
    for q in queries {
        if q.id == asked {
            let spec = QuerySpec::parse(&q.name, &q.definition).ok()?;
            let spec = spec.resolve(&q.name, asked).unwrap_or(spec);
            return Some((q, spec));
        }
        let Ok(spec) = QuerySpec::parse(&q.name, &q.definition) else {
            continue;
        };
        let lower = q.name.to_ascii_lowercase();
        if spec.template.is_none() {
            if lower == asked {
                return Some((q, spec));
            }
            continue;
        }
        if let Some(concrete) = spec.resolve(&lower, asked) {
            if best
                .as_ref()
                .is_none_or(|(b, _)| b.name.len() < q.name.len())
            {
                best = Some((q, concrete));
            }
        }
    }
    best
}

/// Prepared-query writes.
impl super::Txn<'_> {
    /// Adds or replaces a prepared query, stamped with this index.
    pub fn upsert_query(&mut self, mut q: PreparedQuery) {
        q.create_index = self
            .state
            .queries
            .get(&q.id)
            .map(|o| o.create_index)
            .unwrap_or(self.next_index);
        q.modify_index = self.next_index;
        self.touched.queries.insert(q.id.clone());
        self.state
            .queries
            .insert(q.id.clone(), std::sync::Arc::new(q));
        self.changes.queries = true;
    }

    pub fn remove_query(&mut self, id: &str) -> bool {
        let existed = self.state.queries.remove(id).is_some();
        if existed {
            self.touched.queries.insert(id.to_string());
            self.changes.queries = true;
        }
        existed
    }
}
