//! The HTTP API: Consul's agent, catalog, health, KV and status endpoints,
//! with Consul's shapes, status codes and blocking queries, so Consul's
//! clients (curl recipes, python-consul, Registrator) work unchanged.
//!
//! `agent`, `catalog`, `health` and `kv` hold the handlers, `shapes` the
//! JSON they return. Writes go through [`Registry::write_api`]: stored and
//! visible in DNS before the response is sent.

mod agent;
mod catalog;
pub mod event;
pub mod filter;
mod health;
mod kv;
mod ops;
mod query;
pub mod serve;
pub mod session;
mod shapes;
mod txn;
mod ui;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::registry::{Registry, State, StoreError};
use filter::Filter;

/// Bodies above this are refused with 413 (the KV value cap is lower).
pub const MAX_BODY: usize = 1 << 20;
/// Consul's default and largest blocking wait.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);
const MAX_WAIT: Duration = Duration::from_secs(600);

/// What every handler can reach.
pub struct Api {
    pub registry: Arc<Registry>,
    /// signpost's own node: the agent's node.
    pub node: String,
    pub node_address: IpAddr,
    pub datacenter: String,
    pub token: Option<String>,
    /// Session TTL timers and lock delays.
    pub sessions: Arc<session::Sessions>,
    /// The shortest session TTL accepted.
    pub session_ttl_min: Duration,
    /// Reads need the token too (ACL default policy `deny`).
    pub token_for_reads: bool,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// For TTL refreshes.
    pub health: Arc<crate::health::HealthChecks>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// User events received, for `/v1/event/list`.
    pub events: event::Events,
    /// Sidecar mode's sync, for readiness and its status.
    pub consul: Option<Arc<crate::sync::consul::ConsulSync>>,
    /// The Docker source, for its status.
    pub docker: Option<Arc<crate::sync::docker::DockerSync>>,
    /// The DNS handler, for the UI's "what does DNS answer now".
    pub dns: Arc<crate::dns::handler::Handler>,
    /// Serve the web UI at /ui/.
    pub ui: bool,
    /// Host names browsers may use to reach the API besides IP literals
    /// and `localhost` (`http_allowed_hosts`).
    pub allowed_hosts: Vec<String>,
}

impl Api {
    pub fn only_passing(&self) -> bool {
        self.dns.only_passing()
    }
}

type Shared = AxState<Arc<Api>>;

/// An error answer: a status and a one-line reason, as Consul sends them.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!("store write failed: {e}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("cannot store the change: {e}"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let line = self.message.replace('\n', " ");
        (self.status, format!("{line}\n")).into_response()
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// The query string, with Consul's conventions: repeatable keys (`tag`),
/// and flags that count when present without a value (`?passing`).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        Params(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `?flag`, `?flag=true`, `?flag=1`.
    pub fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true") || v == "1")
    }

    /// `?filter=`, with `?node-meta=key:value` (repeatable) added as
    /// `and` clauses on `node_meta` (the node meta selector of this
    /// endpoint's items; `None` where Consul takes no `node-meta`).
    pub fn filter(&self, node_meta: Option<&[&str]>) -> Result<Option<Filter>, ApiError> {
        let mut filter = match self.get("filter") {
            None | Some("") => None,
            Some(expr) => {
                Some(Filter::parse(expr).map_err(|e| ApiError::bad_request(e.to_string()))?)
            }
        };
        for pair in node_meta.into_iter().flat_map(|_| self.all("node-meta")) {
            let (key, value) = pair.split_once(':').ok_or_else(|| {
                ApiError::bad_request(format!("invalid node-meta {pair:?}: use key:value"))
            })?;
            let mut selector = node_meta.unwrap_or_default().to_vec();
            selector.push(key);
            let clause = Filter::equal(&selector, value);
            filter = Some(match filter {
                Some(f) => f.and(clause),
                None => clause,
            });
        }
        Ok(filter)
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid {key} {v:?}: not a whole number"))
                })
            })
            .transpose()
    }
}

/// A JSON response with Consul's headers.
pub fn reply<T: Serialize>(index: u64, body: &T) -> Response {
    let mut r = axum::Json(body).into_response();
    index_headers(r.headers_mut(), index);
    r
}

pub fn index_headers(h: &mut HeaderMap, index: u64) {
    h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    h.insert("X-Consul-KnownLeader", HeaderValue::from_static("true"));
    h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
}

/// A read's index and JSON, encoded while the view still borrows the
/// registry.
pub fn encoded<T: Serialize>(index: u64, body: &T) -> Result<(u64, Vec<u8>), ApiError> {
    Ok((
        index,
        serde_json::to_vec(body).expect("response shapes serialize"),
    ))
}

/// Keeps the items `filter` matches, judged on their JSON.
pub fn keep<T: Serialize>(filter: Option<&Filter>, items: &mut Vec<T>) {
    if let Some(f) = filter {
        items.retain(|i| f.matches(&serde_json::to_value(i).expect("shapes serialize")));
    }
}

/// [`keep`] for the map-shaped answers of the agent endpoints.
pub fn keep_values<K: Ord, T: Serialize>(filter: Option<&Filter>, items: &mut BTreeMap<K, T>) {
    if let Some(f) = filter {
        items.retain(|_, i| f.matches(&serde_json::to_value(i).expect("shapes serialize")));
    }
}

/// The field names request bodies use, as the definitions spell them.
const FIELDS: &[&str] = &[
    "Address",
    "AliasService",
    "Args",
    "Body",
    "Check",
    "CheckID",
    "Checks",
    "Datacenter",
    "Definition",
    "DeregisterCriticalServiceAfter",
    "DockerContainerID",
    "EnableTagOverride",
    "FailuresBeforeCritical",
    "FailuresBeforeWarning",
    "GRPC",
    "H2PING",
    "HTTP",
    "Header",
    "ID",
    "Interval",
    "Kind",
    "Meta",
    "Method",
    "Name",
    "Node",
    "NodeMeta",
    "Notes",
    "OSService",
    "Output",
    "Passing",
    "Port",
    "Service",
    "ServiceID",
    "SkipNodeUpdate",
    "Status",
    "SuccessBeforePassing",
    "TCP",
    "TLSSkipVerify",
    "TTL",
    "TaggedAddresses",
    "Tags",
    "Timeout",
    "Type",
    "UDP",
    "Warning",
    "Weights",
    "ScriptArgs",
    "ServiceMeta",
    "KV",
    "Verb",
    "Template",
    "Regexp",
    "RemoveEmptyTags",
    "OnlyPassing",
    "Failover",
    "Datacenters",
    "NearestN",
    "DNS",
    "Token",
    "IgnoreCheckIDs",
    "Near",
    "Key",
    "Value",
    "Flags",
    "Index",
    "Session",
];

/// Maps whose keys are the user's (kept as sent), not field names.
const USER_MAPS: &[&str] = &[
    "Meta",
    "NodeMeta",
    "ServiceMeta",
    "TaggedAddresses",
    "Header",
];

/// FIELDS by their folded spelling, built once: a body's every key is
/// looked up here (folding every field for every key cost a few hundred
/// allocations a registration).
static FOLDED_FIELDS: std::sync::LazyLock<std::collections::HashMap<String, &'static str>> =
    std::sync::LazyLock::new(|| FIELDS.iter().map(|f| (folded(f), *f)).collect());

fn folded(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Renames keys to the spelling the definitions take, matching as Consul
/// decodes: case and underscores ignored, so `serviceid`, `service_id` and
/// `ServiceID` are one field (python-consul sends the first).
pub(crate) fn canonical_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            // Only keys spelled otherwise move; a body in Consul's own
            // spelling (the common case) is left as parsed.
            let renames: Vec<(String, &'static str)> = map
                .keys()
                .filter(|k| !FIELDS.contains(&k.as_str()))
                .filter_map(|k| {
                    let canonical = FOLDED_FIELDS.get(folded(k).as_str())?;
                    Some((k.clone(), *canonical))
                })
                .collect();
            for (old, new) in renames {
                if let Some(v) = map.remove(&old) {
                    map.insert(new.to_string(), v);
                }
            }
            for (k, val) in map.iter_mut() {
                if !USER_MAPS.contains(&k.as_str()) {
                    canonical_keys(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonical_keys),
        _ => {}
    }
}

/// Parses a JSON request body, keys matched as Consul matches them; a bad
/// one is a 400 with serde's reason.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request decode failed: empty body"));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))?;
    canonical_keys(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))
}

pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body too large: the limit is {MAX_BODY} bytes")
        } else {
            format!("cannot read request body: {e}")
        },
    })
}

impl Api {
    /// Refuses a read for another datacenter, as Consul does when it has no
    /// path there.
    pub fn check_dc(&self, params: &Params) -> Result<(), ApiError> {
        match params.get("dc") {
            Some(dc) if !dc.is_empty() && !dc.eq_ignore_ascii_case(&self.datacenter) => {
                Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("No path to datacenter {dc:?}"),
                })
            }
            _ => Ok(()),
        }
    }

    /// Answers a read, as a blocking query when `?index=` asks for one.
    /// `view` encodes its JSON while it holds the registry (see [`encoded`]).
    pub async fn blocking(
        &self,
        params: &Params,
        view: impl Fn(&State) -> Result<(u64, Vec<u8>), ApiError>,
    ) -> ApiResult {
        let (index, body) = self.wait_for(params, view).await?;
        let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        index_headers(r.headers_mut(), index);
        Ok(r)
    }

    /// The blocking-query loop: `view` computes a result and its index from
    /// the registry; while that index is not above the client's `?index=`,
    /// wait for the registry's change index to move (no polling), up to
    /// `?wait` plus jitter, then answer with what there is.
    pub async fn wait_for<T>(
        &self,
        params: &Params,
        view: impl Fn(&State) -> Result<(u64, T), ApiError>,
    ) -> Result<(u64, T), ApiError> {
        self.check_dc(params)?;
        let min_index = params.u64("index")?.unwrap_or(0);
        let deadline = wait_deadline(params)?;
        let mut changes = self.registry.subscribe();
        loop {
            changes.borrow_and_update();
            let (index, body) = self.registry.read(&view)?;
            let index = index.max(1);
            let expired = tokio::time::Instant::now() >= deadline;
            if min_index == 0 || index > min_index || expired {
                return Ok((index, body));
            }
            // Woken by the next change anywhere; the view decides whether
            // it is one this query waits for.
            let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        }
    }
}

/// When a blocking read gives up waiting: `?wait` (Consul's default 5
/// minutes, at most 10) plus up to 1/16 of it as jitter, which spreads the
/// wake-ups of many watchers started together.
pub fn wait_deadline(params: &Params) -> Result<tokio::time::Instant, ApiError> {
    let wait = match params.get("wait") {
        None | Some("") => DEFAULT_WAIT,
        Some(w) => crate::registry::definition::parse_duration(w)
            .map_err(|e| ApiError::bad_request(format!("invalid wait: {e}")))?
            .min(MAX_WAIT),
    };
    let jitter = wait.mul_f64(fastrand::f64() / 16.0);
    Ok(tokio::time::Instant::now() + wait + jitter)
}

fn token_ok(api: &Api, headers: &HeaderMap, params: &Params) -> bool {
    let Some(want) = &api.token else {
        return true;
    };
    let given = headers
        .get("X-Consul-Token")
        .and_then(|v| v.to_str().ok())
        .or_else(|| {
            headers
                .get("Authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
        })
        .or_else(|| params.get("token"));
    // Compare without an early exit, so timing says nothing of the token.
    given.is_some_and(|g| {
        g.len() == want.len()
            && g.bytes()
                .zip(want.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    })
}

/// Writes (anything but GET and HEAD) need the token when one is set;
/// reads too with `http_token_for_reads`, except liveness, readiness and
/// metrics, which probes and scrapers must reach.
async fn require_token(AxState(api): Shared, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let open_path = matches!(req.uri().path(), "/health" | "/ready" | "/metrics");
    if read && (!api.token_for_reads || open_path) {
        return next.run(req).await;
    }
    let params = Params::parse(req.uri().query());
    if token_ok(&api, req.headers(), &params) {
        next.run(req).await
    } else if read {
        ApiError::forbidden("Permission denied: a valid token is required for reads")
            .into_response()
    } else {
        ApiError::forbidden("Permission denied: a valid token is required for writes")
            .into_response()
    }
}

/// DNS rebinding protection: a request a browser sends (it carries
/// `Sec-Fetch-Site` or `Origin`) must name the listener by an IP literal,
/// `localhost`, or a name in `http_allowed_hosts`; otherwise a page on
/// another site could reach the API through a name it points at
/// 127.0.0.1. Programs (curl, Consul's clients) send neither header and
/// are unaffected.
async fn browser_host_check(AxState(api): Shared, req: Request, next: Next) -> Response {
    let from_browser =
        req.headers().contains_key("Sec-Fetch-Site") || req.headers().contains_key("Origin");
    if from_browser {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !host_allowed(host, &api.allowed_hosts) {
            return ApiError::forbidden(format!(
                "host {host:?} is not an address of this listener: add it to http_allowed_hosts to use it from a browser"
            ))
            .into_response();
        }
    }
    next.run(req).await
}

/// An IP literal, `localhost`, or an allowed name, with or without a port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map(|(h, _)| h)
            .unwrap_or(host)
    };
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Every answer carries `X-Consul-Index`, errors included: Consul's
/// clients (python-consul) read it from every response and fail without it.
/// Reads also carry the consistency they were served with, and refuse
/// `?stale` with `?consistent`, as Consul. A single signpost is its own
/// leader, so every mode reads the same, current data.
async fn index_on_every_reply(AxState(api): Shared, req: Request, next: Next) -> Response {
    let mut consistency = None;
    if req.method() == Method::GET && req.uri().path().starts_with("/v1/") {
        let params = Params::parse(req.uri().query());
        consistency = Some(match (params.get("stale"), params.get("consistent")) {
            (Some(_), Some(_)) => {
                let mut r = ApiError::bad_request(
                    "Cannot specify ?stale with ?consistent, conflicting semantics.",
                )
                .into_response();
                index_headers(r.headers_mut(), api.registry.index());
                return r;
            }
            (Some(_), None) => "stale",
            (None, Some(_)) => "consistent",
            (None, None) => "leader",
        });
    }
    let cached =
        req.method() == Method::GET && Params::parse(req.uri().query()).get("cached").is_some();
    let mut r = next.run(req).await;
    if cached && r.status().is_success() {
        // Consul's agent cache headers (Traefik, Fabio and consul-template
        // send ?cached): every signpost read is from memory, current now.
        r.headers_mut()
            .insert("X-Cache", HeaderValue::from_static("HIT"));
        r.headers_mut()
            .insert(header::AGE, HeaderValue::from_static("0"));
    }
    if !r.headers().contains_key("X-Consul-Index") {
        index_headers(r.headers_mut(), api.registry.index());
    }
    if let Some(c) = consistency {
        r.headers_mut().insert(
            "X-Consul-Effective-Consistency",
            HeaderValue::from_static(c),
        );
    }
    r
}

/// Gives every refusal a one-line reason: the router's own 405 (and any
/// other error that a layer below answered with no body) says what was
/// wrong, as every handler's [`ApiError`] does.
async fn reason_on_every_refusal(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let r = next.run(req).await;
    let status = r.status();
    if !(status.is_client_error() || status.is_server_error())
        || axum::body::HttpBody::size_hint(r.body()).exact() != Some(0)
    {
        return r;
    }
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        let allowed = r
            .headers()
            .get(header::ALLOW)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut m = format!("method {method} is not allowed on {path}");
        if !allowed.is_empty() {
            m.push_str(&format!(" (allowed: {allowed})"));
        }
        if path.ends_with('/') {
            m.push_str("; is an ID or name missing at the end of the path?");
        }
        m
    } else {
        format!(
            "{method} {path}: {}",
            status
                .canonical_reason()
                .unwrap_or("refused")
                .to_lowercase()
        )
    };
    let (mut parts, _) = r.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Response::from_parts(parts, axum::body::Body::from(format!("{message}\n")))
}

/// Reads a request's body within the body timeout, so that a client that
/// sends headers and then trickles (or never sends) its body is cut: 408.
async fn read_body_in_time(AxState(api): Shared, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(api.body_timeout, axum::body::to_bytes(body, MAX_BODY)).await {
        Err(_) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "request body not received within {}s",
                api.body_timeout.as_secs()
            ),
        }
        .into_response(),
        Ok(Err(_)) => ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body too large or cut off: the limit is {MAX_BODY} bytes"),
        }
        .into_response(),
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
    }
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {method} {}", uri.path()))
}

pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/agent/service/register", put(agent::register_service))
        .route(
            "/agent/service/deregister/{*id}",
            put(agent::deregister_service),
        )
        .route("/agent/service/maintenance/{*id}", put(agent::maintenance))
        .route("/agent/check/register", put(agent::register_check))
        .route(
            "/agent/check/deregister/{*id}",
            put(agent::deregister_check),
        )
        .route("/agent/check/pass/{*id}", put(agent::pass))
        .route("/agent/check/warn/{*id}", put(agent::warn))
        .route("/agent/check/fail/{*id}", put(agent::fail))
        .route("/agent/check/update/{*id}", put(agent::update_check))
        .route("/agent/services", get(agent::services))
        .route("/agent/maintenance", put(agent::node_maintenance))
        .route(
            "/agent/health/service/name/{name}",
            get(agent::health_by_name),
        )
        .route("/agent/health/service/id/{*id}", get(agent::health_by_id))
        .route("/catalog/node-services/{node}", get(catalog::node_services))
        .route(
            "/coordinate/datacenters",
            get(catalog::coordinate_datacenters),
        )
        .route("/coordinate/nodes", get(catalog::coordinate_nodes))
        .route("/coordinate/node/{node}", get(catalog::coordinate_node))
        .route("/txn", put(txn::txn))
        .route(
            "/query",
            axum::routing::post(query::create).get(query::list),
        )
        .route(
            "/query/{id}",
            get(query::get).put(query::update).delete(query::delete),
        )
        .route("/query/{id}/execute", get(query::execute))
        .route("/query/{id}/explain", get(query::explain))
        .route("/event/fire/{name}", put(event::fire))
        .route("/event/list", get(event::list))
        .route("/agent/service/{*id}", get(agent::service))
        .route("/agent/checks", get(agent::checks))
        .route("/agent/self", get(agent::this_agent))
        .route("/agent/members", get(agent::members))
        .route("/agent/metrics", get(ops::agent_metrics))
        .route("/catalog/register", put(catalog::register))
        .route("/catalog/deregister", put(catalog::deregister))
        .route("/catalog/services", get(catalog::services))
        .route("/catalog/service/{name}", get(catalog::service))
        .route("/catalog/connect/{name}", get(catalog::connect))
        .route("/health/connect/{name}", get(health::connect))
        .route("/catalog/nodes", get(catalog::nodes))
        .route("/catalog/node/{node}", get(catalog::node))
        .route("/catalog/datacenters", get(catalog::datacenters))
        .route("/health/service/{name}", get(health::service))
        .route("/health/checks/{service}", get(health::checks))
        .route("/health/node/{node}", get(health::node))
        .route("/health/state/{state}", get(health::state))
        .route("/status/leader", get(catalog::leader))
        .route("/status/peers", get(catalog::peers))
        .route("/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/kv/", put(kv::put).get(kv::get).delete(kv::delete))
        .route("/session/create", put(session::create))
        .route("/session/destroy/{id}", put(session::destroy))
        .route("/session/renew/{id}", put(session::renew))
        .route("/session/info/{id}", get(session::info))
        .route("/session/list", get(session::list))
        .route("/session/node/{node}", get(session::node));
    let v1 = v1
        .route("/signpost/sync", get(ops::sync_status))
        .route("/signpost/docker", get(ops::docker_status))
        .route("/signpost/dns", get(ui::dns))
        .route("/signpost/ui/services", get(ui::services))
        .route("/signpost/ui/service/{name}", get(ui::service));
    let mut app = Router::new();
    if api.ui {
        app = app
            .route("/", get(ui::root))
            .route("/ui", get(ui::root))
            .route("/ui/", get(ui::file))
            .route("/ui/{*path}", get(ui::file));
    }
    app.route("/health", get(ops::live))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .nest("/v1", v1)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            api.clone(),
            read_body_in_time,
        ))
        .layer(middleware::from_fn_with_state(api.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            api.clone(),
            browser_host_check,
        ))
        .layer(middleware::from_fn_with_state(
            api.clone(),
            index_on_every_reply,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(reason_on_every_refusal))
        .with_state(api)
}
