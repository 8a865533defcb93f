//! Consul's prepared queries: a stored, named search ("web, tagged v2,
//! passing only") that HTTP clients execute and DNS answers as
//! `name.query.consul`. Templates (`name_prefix_match`, `regexp`) turn one
//! stored query into a family of names, with `${name.full}`,
//! `${name.prefix}`, `${name.suffix}` and `${match(N)}` interpolated into
//! the service and tags.

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// `Failover.Datacenters` (tried in order in sidecar mode, see
    /// [`QuerySpec::failover_datacenters`]) and `NearestN` (kept for
    /// explain only: signpost has no network coordinates).
    pub failover: Value,
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn meta(v: Option<&Value>, what: &str) -> Result<Meta, String> {
    let mut out = Meta::new();
    for (k, v) in v.and_then(Value::as_object).into_iter().flatten() {
        let v = v
            .as_str()
            .ok_or_else(|| format!("{what}: value of {k:?} is not a string"))?;
        out.insert(k.clone(), v.to_string());
    }
    Ok(out)
}

impl QuerySpec {
    /// Reads a definition; `Err` is the reason, one line.
    pub fn parse(name: &str, def: &Value) -> Result<QuerySpec, String> {
        let service = field(def, "Service").ok_or("missing Service")?;
        let service_name = field(service, "Service")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if service_name.is_empty() {
            return Err("Must provide a Service name to query".into());
        }
        let tags = field(service, "Tags")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|t| {
                t.as_str()
                    .map(String::from)
                    .ok_or("Service.Tags: not strings")
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ttl = match field(def, "DNS").and_then(|d| field(d, "TTL")) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(
                super::definition::parse_duration(s)
                    .map_err(|e| format!("Bad DNS TTL {s:?}: {e}"))?
                    .as_secs() as u32,
            ),
            Some(other) => return Err(format!("Bad DNS TTL {other}")),
        };
        let template = match field(def, "Template") {
            None | Some(Value::Null) => None,
            Some(t) => {
                let kind = field(t, "Type").and_then(Value::as_str).unwrap_or("");
                let remove_empty = field(t, "RemoveEmptyTags")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                match kind {
                    "" => None,
                    "name_prefix_match" => Some((TemplateKind::Prefix, remove_empty)),
                    "regexp" => {
                        let re = field(t, "Regexp").and_then(Value::as_str).unwrap_or("");
                        let re =
                            Regex::new(re).map_err(|e| format!("Invalid Regexp {re:?}: {e}"))?;
                        Some((TemplateKind::Regexp(re), remove_empty))
                    }
                    other => return Err(format!("Bad Template.Type {other:?}")),
                }
            }
        };
        if template.is_none() && name.is_empty() && service_name.contains("${") {
            return Err("interpolation needs a Template".into());
        }
        Ok(QuerySpec {
            service: service_name,
            tags,
            only_passing: field(service, "OnlyPassing")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            node_meta: meta(field(service, "NodeMeta"), "Service.NodeMeta")?,
            service_meta: meta(field(service, "ServiceMeta"), "Service.ServiceMeta")?,
            ttl,
            template,
            failover: field(service, "Failover").cloned().unwrap_or(Value::Null),
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
        field(&self.failover, "Datacenters")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_ascii_lowercase))
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
                .all(|(k, want)| v.instance.meta.get(k) == Some(want))
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
