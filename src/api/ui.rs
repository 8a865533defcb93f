//! The web UI at `/ui/`: static files embedded in the binary (no network,
//! no JavaScript toolchain at build time), and two reads made for it:
//! a service summary with sources and health counts, and "what does DNS
//! answer now", run through the real DNS handler in process.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use serde_json::json;

use super::{encoded, reply, Api, ApiError, ApiResult, Params};
use crate::dns::wire::Transport;
use crate::registry::{Health, Source};
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

/// The files, embedded: (path under /ui/, content type, body).
const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("ui/app.css"),
    ),
];

/// A version tag for caching: the files change only with the binary.
fn etag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let h = FILES.iter().fold(0xcbf29ce484222325u64, |h, (_, _, body)| {
            body.bytes()
                .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
        });
        format!("\"{}-{h:016x}\"", env!("CARGO_PKG_VERSION"))
    })
}

pub(super) async fn root() -> Redirect {
    Redirect::temporary("/ui/")
}

/// Each file gzipped once, on first use (they are small; the binary
/// carries them plain so that `cargo build` needs nothing else).
fn gzipped(i: usize) -> &'static [u8] {
    static GZ: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    &GZ.get_or_init(|| {
        FILES
            .iter()
            .map(|(_, _, body)| {
                use std::io::Write;
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                e.write_all(body.as_bytes()).expect("writing to memory");
                e.finish().expect("writing to memory")
            })
            .collect()
    })[i]
}

pub(super) async fn file(headers: HeaderMap, path: Option<Path<String>>) -> Response {
    let name = path.map(|Path(p)| p).unwrap_or_default();
    let Some(i) = FILES.iter().position(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let (_, kind, body) = FILES[i];
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let tag = etag();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == tag)
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let (encoding, bytes): (&str, &'static [u8]) = if gzip {
        ("gzip", gzipped(i))
    } else {
        ("identity", body.as_bytes())
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_ENCODING, encoding),
            (header::VARY, "Accept-Encoding"),
            // Revalidated each time (cheap: 304 by ETag), so an upgraded
            // binary's UI is never mixed with a cached old one.
            (header::CACHE_CONTROL, "no-cache"),
            (header::ETAG, tag),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
        ],
        bytes,
    )
        .into_response()
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Api => "API",
        Source::File => "zones/",
        Source::Consul => "Consul",
        Source::Docker => "Docker",
        Source::Cluster => "cluster",
    }
}

fn in_maintenance(s: &crate::registry::State, key: &crate::registry::InstanceKey) -> bool {
    s.checks_of(key)
        .any(|c| super::agent::is_maintenance_check(&c.id))
}

/// `/v1/signpost/ui/services`: every service with its tags, sources and
/// instance counts by health (maintenance apart), blocking on any change.
pub(super) async fn services(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Any, |s| {
        let mut out = Vec::new();
        for lower in s.service_names() {
            let mut name = lower.to_string();
            let mut tags = BTreeSet::new();
            let mut sources = BTreeSet::new();
            // Passing, warning, critical, maintenance.
            let mut counts = [0u32; 4];
            for v in s.service_instances(lower) {
                name = v.instance.name.to_string();
                tags.extend(v.instance.tags.iter().cloned());
                sources.insert(source_name(v.instance.source));
                let i = if in_maintenance(s, &v.instance.key()) {
                    3
                } else {
                    match v.health {
                        Health::Passing => 0,
                        Health::Warning => 1,
                        Health::Critical => 2,
                    }
                };
                counts[i] += 1;
            }
            out.push(json!({
                "Name": name, "Tags": tags, "Sources": sources,
                "Passing": counts[0], "Warning": counts[1],
                "Critical": counts[2], "Maintenance": counts[3],
            }));
        }
        encoded(s.index(), &out)
    })
    .await
}

/// `/v1/internal/ui/services`, the summary Consul's own UI reads: per
/// service its nodes, instance count and check counts (each check once,
/// the nodes' own included). Sidecars following this signpost read it to
/// tell which services changed.
pub(super) async fn consul_services(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Any, |s| {
        // One pass over the catalog, borrowed throughout: a mirror reads
        // this on every catalog change. Grouped by name in any case, as
        // services are.
        let mut by_name: HashMap<Folded<'_>, ServiceSummary<'_>, foldhash::fast::RandomState> =
            HashMap::default();
        for (instance, node) in s.members() {
            if node.is_none_or(|n| n.datacenter != api.datacenter) {
                continue;
            }
            let sum = by_name
                .entry(Folded(&instance.name))
                .or_insert_with(|| ServiceSummary {
                    name: &instance.name,
                    datacenter: &api.datacenter,
                    ..Default::default()
                });
            sum.instance_count += 1;
            sum.tags.extend(instance.tags.iter().map(|t| &**t));
            sum.nodes.insert(&instance.node);
            for c in s.checks_of(&instance.key()) {
                if sum.checks.insert((c.node.as_str(), c.id.as_str())) {
                    match c.status {
                        Health::Passing => sum.checks_passing += 1,
                        Health::Warning => sum.checks_warning += 1,
                        Health::Critical => sum.checks_critical += 1,
                    }
                }
            }
        }
        let mut out: Vec<_> = by_name.into_iter().collect();
        out.sort_unstable_by_key(|(name, _)| *name);
        let out: Vec<_> = out.into_iter().map(|(_, sum)| sum).collect();
        encoded(s.index(), &out)
    })
    .await
}

/// A name ordered and compared without regard to ASCII case.
#[derive(Clone, Copy)]
struct Folded<'a>(&'a str);

impl<'a> Ord for Folded<'a> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let fold = |s: &'a str| s.bytes().map(|b| b.to_ascii_lowercase());
        fold(self.0).cmp(fold(other.0))
    }
}

impl PartialOrd for Folded<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Folded<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(other.0)
    }
}

impl Eq for Folded<'_> {}

impl std::hash::Hash for Folded<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for b in self.0.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
    }
}

/// One entry of `/v1/internal/ui/services`, as Consul spells it.
#[derive(serde::Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ServiceSummary<'a> {
    kind: &'a str,
    name: &'a str,
    datacenter: &'a str,
    tags: BTreeSet<&'a str>,
    nodes: BTreeSet<&'a str>,
    external_sources: [(); 0],
    instance_count: u32,
    checks_passing: u32,
    checks_warning: u32,
    checks_critical: u32,
    connected_with_proxy: bool,
    connected_with_gateway: bool,
    /// Counted once each (a node's check is on every instance there).
    #[serde(skip)]
    checks: BTreeSet<(&'a str, &'a str)>,
}

/// `/v1/signpost/ui/nodes`: every node with its services and its own
/// checks, in one read (the Nodes view asked two per node per change).
pub(super) async fn nodes(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        let out: Vec<_> = s
            .nodes()
            .filter(|n| n.datacenter == api.datacenter)
            .map(|n| {
                let services: Vec<_> = s
                    .node_instances(&n.name)
                    .map(|v| json!({"ID": v.instance.id, "Service": v.instance.name}))
                    .collect();
                let checks: Vec<_> = s
                    .node_checks(&n.name)
                    .map(|c| json!({"Name": c.name, "Status": c.status.as_str()}))
                    .collect();
                json!({
                    "Node": n.name, "Address": n.address, "Meta": n.meta,
                    "Services": services, "Checks": checks,
                })
            })
            .collect();
        encoded(s.tables().nodes, &out)
    })
    .await
}

/// `/v1/signpost/ui/service/:name`: each instance with its checks, source,
/// and whether DNS answers it now and why not.
pub(super) async fn service(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let only_passing = api.only_passing();
    let lower = name.to_ascii_lowercase();
    api.blocking(&params, Topic::Service(&lower), |s| {
        let mut out = Vec::new();
        for v in s.service_instances(&lower) {
            let key = v.instance.key();
            let node = v.node;
            let worst = s
                .checks_of(&key)
                .filter(|c| c.status == v.health && v.health != Health::Passing)
                .map(|c| c.name.clone())
                .next();
            let why = if node.is_none_or(|n| n.datacenter != api.datacenter) {
                Some("in another datacenter".to_string())
            } else if in_maintenance(s, &key) {
                Some("in maintenance".to_string())
            } else {
                match v.health {
                    Health::Critical => Some(format!(
                        "critical: {}",
                        worst.unwrap_or_else(|| "a check".into())
                    )),
                    Health::Warning if only_passing => Some(format!(
                        "warning ({}), and only_passing is on",
                        worst.unwrap_or_else(|| "a check".into())
                    )),
                    _ => None,
                }
            };
            let checks: Vec<_> = s
                .checks_of(&key)
                .map(|c| super::shapes::CheckOut::new(c, Some(v.instance)))
                .collect();
            out.push(json!({
                "Node": v.instance.node,
                "NodeAddress": node.map(|n| n.address.as_str()).unwrap_or(""),
                "Service": super::shapes::ServiceOut::new(v.instance, node.map(|n| n.datacenter.as_str()).unwrap_or("")),
                "Source": source_name(v.instance.source),
                "Health": v.health,
                "InDNS": why.is_none(),
                "WhyNot": why,
                "Checks": checks,
            }));
        }
        encoded(s.service_index(&lower), &out)
    })
    .await
}

/// `/v1/signpost/dns?name=&type=`: the records signpost answers now, as
/// `dig` would print them, through the real handler (over its TCP path, so
/// nothing is truncated).
pub(super) async fn dns(State(api): Shared, params: Params) -> ApiResult {
    let name = params.get("name").unwrap_or("").trim();
    if name.is_empty() {
        return Err(ApiError::bad_request("missing name"));
    }
    let rtype: RecordType = params
        .get("type")
        .unwrap_or("A")
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| ApiError::bad_request("unknown record type"))?;
    let fqdn = if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    };
    let qname = Name::from_ascii(&fqdn)
        .map_err(|e| ApiError::bad_request(format!("invalid name {name:?}: {e}")))?;
    let mut m = Message::query();
    m.metadata.id = fastrand::u16(..);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname, rtype));
    let bytes = m.to_vec().map_err(|e| ApiError::internal(e.to_string()))?;
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let wire = api.dns.remote(&bytes, Transport::Tcp, client).await;
    let answer = Message::from_vec(&wire)
        .map_err(|e| ApiError::internal(format!("cannot read the answer: {e}")))?;
    let section = |records: &[hickory_proto::rr::Record]| -> Vec<String> {
        records.iter().map(|r| r.to_string()).collect()
    };
    let status = format!("{:?}", answer.metadata.response_code).to_ascii_uppercase();
    Ok(reply(
        api.registry.index(),
        &json!({
            "Question": format!("{fqdn} IN {rtype}"),
            "Status": status,
            "Authoritative": answer.metadata.authoritative,
            "Answer": section(&answer.answers),
            "Authority": section(&answer.authorities),
            "Additional": section(&answer.additionals),
        }),
    ))
}
