//! `/v1/session/*`: Consul's sessions, the owners of KV locks (leader
//! election, `consul lock`, Patroni's DCS).
//!
//! Sessions live in the registry and the store like every API write; their
//! TTL timers and the keys' lock delays are kept here, in memory: after a
//! restart every session gets a fresh TTL, as Consul gives one after a
//! leader election. A session whose TTL runs out without a renewal, or
//! whose node check goes critical, is invalidated: its locks are released
//! or its keys deleted (its Behavior), in one write that wakes blocking
//! readers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{body_bytes, reply, Api, ApiError, ApiResult, Params};
use crate::locks::MutexExt;
use crate::registry::definition::de_null_default;
use crate::registry::shared::SERF_CHECK;
use crate::registry::{Behavior, Health, Registry, Session};
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

/// The longest session TTL (Consul's); the shortest is the
/// `session_ttl_min` setting (10 s by default, as Consul's).
const TTL_MAX: Duration = Duration::from_secs(86_400);
/// Consul invalidates a session at twice its TTL without a renewal.
const TTL_MULTIPLIER: u32 = 2;
/// Consul's default lock delay.
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);

/// TTL deadlines and lock delays. std Mutexes: a lookup or insert each,
/// never across `.await`.
#[derive(Default)]
pub struct Sessions {
    deadlines: Mutex<HashMap<String, Instant>>,
    /// Key → until when no session may acquire it.
    lock_delays: Mutex<HashMap<String, Instant>>,
    wake: tokio::sync::Notify,
    /// In a cluster, the node whose sessions' TTLs this member keeps (the
    /// others' members keep theirs; a session renewed through another
    /// member than its node's is not seen renewed here); `None`: all.
    only_node: Option<String>,
}

impl Sessions {
    /// Sessions whose TTLs are kept here: `node`'s only, or all.
    pub fn new(only_node: Option<String>) -> Sessions {
        Sessions {
            only_node,
            ..Sessions::default()
        }
    }

    fn arm(&self, s: &Session) {
        if let Some(ttl) = s.ttl {
            self.deadlines
                .locked()
                .insert(s.id.clone(), Instant::now() + ttl * TTL_MULTIPLIER);
            self.wake.notify_one();
        }
    }

    fn disarm(&self, id: &str) {
        self.deadlines.locked().remove(id);
    }

    /// Whether `key` is inside a lock delay now.
    pub fn delayed(&self, key: &str) -> bool {
        let mut d = self.lock_delays.locked();
        match d.get(key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                d.remove(key);
                false
            }
            None => false,
        }
    }

    fn delay(&self, keys: &[String], for_: Duration) {
        if for_.is_zero() {
            return;
        }
        let until = Instant::now() + for_;
        let mut d = self.lock_delays.locked();
        for k in keys {
            d.insert(k.clone(), until);
        }
    }

    /// Invalidates expired sessions and those tied to a critical check,
    /// until `stop`. Restored sessions get a fresh TTL.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut changes = registry.subscribe();
        // Sessions armed once already: a session seen for the first time
        // (restored at start, or in a cluster read from etcd) gets a fresh
        // TTL; one seen again keeps its deadline.
        let mut seen = std::collections::HashSet::new();
        let mut sessions_index = None;
        loop {
            let index = registry.read(|s| s.tables().sessions);
            if sessions_index != Some(index) {
                sessions_index = Some(index);
                registry.read(|s| {
                    seen.retain(|id: &String| s.session(id).is_some());
                    for sess in s.sessions() {
                        let mine = self.only_node.as_ref().is_none_or(|n| *n == sess.node);
                        if mine && seen.insert(sess.id.clone()) {
                            self.arm(sess);
                        }
                    }
                });
            }
            let next = self
                .deadlines
                .locked()
                .values()
                .min()
                .copied()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = self.wake.notified() => {}
                r = changes.changed() => if r.is_err() { return },
                _ = stop.changed() => return,
            }
            let now = Instant::now();
            let mut doomed: Vec<(String, &str)> = self
                .deadlines
                .locked()
                .iter()
                .filter(|(_, d)| **d <= now)
                .map(|(id, _)| (id.clone(), "its TTL ran out without a renewal"))
                .collect();
            doomed.extend(registry.read(|s| {
                s.sessions()
                    .filter(|sess| {
                        sess.checks().any(|c| {
                            s.check(&sess.node, c)
                                .is_none_or(|c| c.status == Health::Critical)
                        })
                    })
                    .map(|sess| (sess.id.clone(), "a check it is tied to is critical or gone"))
                    .collect::<Vec<_>>()
            }));
            for (id, why) in doomed {
                self.disarm(&id);
                match registry.write_api(|t| t.destroy_session(&id)).await {
                    Ok(Some((s, keys))) => {
                        tracing::info!(session = %id, name = %s.name, keys = keys.len(), "session invalidated: {why}");
                        self.delay(&keys, s.lock_delay);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!("cannot invalidate session {id}: {e}; trying again in 1 s");
                        self.deadlines
                            .locked()
                            .insert(id, Instant::now() + Duration::from_secs(1));
                    }
                }
            }
        }
    }
}

/// A random version-4 UUID, as Consul's session IDs.
pub fn uuid() -> String {
    let mut b: [u8; 16] = fastrand::u128(..).to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A duration as Consul takes one in JSON: a Go duration string, or a
/// number of nanoseconds.
fn duration(v: &Value, what: &str) -> Result<Duration, ApiError> {
    match v {
        Value::String(s) if s.is_empty() => Ok(Duration::ZERO),
        Value::String(s) => crate::registry::definition::parse_duration(s)
            .map_err(|e| ApiError::bad_request(format!("request decode failed: {what}: {e}"))),
        Value::Number(n) => Ok(Duration::from_nanos(n.as_u64().unwrap_or(0))),
        Value::Null => Ok(Duration::ZERO),
        _ => Err(ApiError::bad_request(format!(
            "request decode failed: {what}: not a duration"
        ))),
    }
}

/// A session TTL as Consul shows it: Consul echoes the TTL as the client
/// sent it, which clients send in whole seconds (`"60s"`, where Go's
/// `Duration.String()`, [`format_duration`](crate::registry::definition::format_duration),
/// would say `1m0s`), or in milliseconds below a second.
pub(crate) fn ttl_text(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A session as Consul shows it.
pub fn shape(s: &Session) -> Value {
    json!({
        "ID": s.id,
        "Name": s.name,
        "Node": s.node,
        "LockDelay": s.lock_delay.as_nanos() as u64,
        "Behavior": match s.behavior { Behavior::Release => "release", Behavior::Delete => "delete" },
        "TTL": s.ttl.map(ttl_text).unwrap_or_default(),
        "NodeChecks": s.node_checks,
        "ServiceChecks": (!s.service_checks.is_empty()).then(|| {
            s.service_checks.iter().map(|id| json!({"ID": id, "Namespace": ""})).collect::<Vec<_>>()
        }),
        "Checks": s.node_checks,
        "CreateIndex": s.create_index,
        "ModifyIndex": s.modify_index,
    })
}

/// A session create body as Consul takes it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct CreateBody {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Node")]
    node: String,
    #[serde(rename = "Behavior")]
    behavior: String,
    /// A Go duration, or nanoseconds (see [`duration`]).
    #[serde(rename = "TTL")]
    ttl: Option<Value>,
    #[serde(rename = "LockDelay")]
    lock_delay: Option<Value>,
    #[serde(rename = "Checks")]
    checks: Option<Vec<String>>,
    #[serde(rename = "NodeChecks")]
    node_checks: Option<Vec<String>>,
    /// Objects: `[{"ID": "service:web-1", "Namespace": ""}]`.
    #[serde(rename = "ServiceChecks", deserialize_with = "de_null_default")]
    service_checks: Vec<ServiceCheck>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceCheck {
    #[serde(rename = "ID")]
    id: String,
}

fn parse_create(api: &Api, body: &[u8]) -> Result<Session, ApiError> {
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody::default()
    } else {
        crate::fold::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))?
    };
    let behavior = match body.behavior.as_str() {
        "" | "release" => Behavior::Release,
        "delete" => Behavior::Delete,
        other => {
            return Err(ApiError::bad_request(format!(
                "Invalid Behavior setting '{other}'"
            )))
        }
    };
    let ttl = match &body.ttl {
        Some(v) => duration(v, "TTL")?,
        None => Duration::ZERO,
    };
    // A 500, as Consul answers it: Patroni recognises this exact reply and
    // then reads the minimum from /v1/agent/self.
    if !ttl.is_zero() && !(api.session_ttl_min..=TTL_MAX).contains(&ttl) {
        return Err(ApiError::internal(format!(
            "Invalid Session TTL '{}', must be between [{}={}]",
            ttl_text(ttl),
            ttl_text(api.session_ttl_min),
            "24h0m0s"
        )));
    }
    let lock_delay = match &body.lock_delay {
        Some(v) => duration(v, "LockDelay")?,
        None => DEFAULT_LOCK_DELAY,
    };
    let node = match body.node {
        n if n.is_empty() => api.node.clone(),
        n => n,
    };
    let listed = body.checks.is_some() || body.node_checks.is_some();
    let mut checks: Vec<String> = body.checks.into_iter().flatten().collect();
    checks.extend(body.node_checks.into_iter().flatten());
    // Consul ties a session to its node's serfHealth unless told
    // otherwise; a cluster member's node has one, so its failure
    // invalidates the sessions (and frees the locks) made through it.
    if !listed && api.registry.read(|s| s.check(&node, SERF_CHECK).is_some()) {
        checks.push(SERF_CHECK.to_string());
    }
    let service_checks: Vec<String> = body.service_checks.into_iter().map(|c| c.id).collect();
    Ok(Session {
        id: uuid(),
        name: body.name,
        node,
        lock_delay,
        behavior,
        ttl: (!ttl.is_zero()).then_some(ttl),
        node_checks: checks,
        service_checks,
        create_index: 0,
        modify_index: 0,
    })
}

pub async fn create(State(api): Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let body = body_bytes(body)?;
    let session = parse_create(&api, &body)?;
    let id = session.id.clone();
    let created = api
        .registry
        .write_api(|t| {
            let state = t.state();
            if state.node(&session.node).is_none() {
                return Err(ApiError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("Missing node registration: {:?}", session.node),
                });
            }
            for c in session.checks() {
                match state.check(&session.node, c) {
                    None => {
                        return Err(ApiError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            message: format!("Missing check '{c}' registration"),
                        })
                    }
                    Some(check) if check.status == Health::Critical => {
                        return Err(ApiError {
                            status: StatusCode::INTERNAL_SERVER_ERROR,
                            message: format!("Check '{c}' is in critical state"),
                        })
                    }
                    Some(_) => {}
                }
            }
            t.create_session(session.clone());
            Ok(session.clone())
        })
        .await??;
    api.sessions.arm(&created);
    Ok(reply(api.registry.index(), &json!({ "ID": id })))
}

pub async fn destroy(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    api.sessions.disarm(&id);
    if let Some((s, keys)) = api.registry.write_api(|t| t.destroy_session(&id)).await? {
        api.sessions.delay(&keys, s.lock_delay);
    }
    Ok(reply(api.registry.index(), &true))
}

pub async fn renew(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    match api.registry.read(|s| s.session(&id).cloned()) {
        Some(s) => {
            api.sessions.arm(&s);
            Ok(reply(api.registry.index(), &[shape(&s)]))
        }
        None => Err(ApiError::not_found(format!("Session id '{id}' not found"))),
    }
}

pub async fn info(State(api): Shared, Path(id): Path<String>, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Sessions), |s| {
        let out: Vec<Value> = s.session(&id).map(shape).into_iter().collect();
        super::encoded(s.tables().sessions, &out)
    })
    .await
}

pub async fn list(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Sessions), |s| {
        let out: Vec<Value> = s.sessions().map(shape).collect();
        super::encoded(s.tables().sessions, &out)
    })
    .await
}

pub async fn node(State(api): Shared, Path(node): Path<String>, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Sessions), |s| {
        let out: Vec<Value> = s.sessions().filter(|x| x.node == node).map(shape).collect();
        super::encoded(s.tables().sessions, &out)
    })
    .await
}
