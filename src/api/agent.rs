//! `/v1/agent/*`: services and checks on signpost's own node.

use crate::registry::shared::SERF_CHECK;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::shapes::{node_id, CheckOut, ServiceOut};
use super::{
    encoded, index_headers, json_body, keep_values, reply, Api, ApiError, ApiResult, Params,
};
use crate::registry::definition::{CheckDef, ServiceDef};
use crate::registry::Topic;
use crate::registry::{Check, CheckKind, Health, InstanceKey, Source, Txn};

type Shared = State<Arc<Api>>;

/// The prefix of the check Consul (and signpost) adds to put a service in
/// maintenance; the service ID follows.
const SERVICE_MAINTENANCE: &str = "_service_maintenance:";

/// Consul's ID of the node maintenance check.
const NODE_MAINTENANCE: &str = "_node_maintenance";

/// The check that puts service `service_id` in maintenance.
pub(super) fn maintenance_check_id(service_id: &str) -> String {
    format!("{SERVICE_MAINTENANCE}{service_id}")
}

/// Whether a check is a maintenance one (a service's or the node's).
pub(super) fn is_maintenance_check(id: &str) -> bool {
    id.starts_with(SERVICE_MAINTENANCE) || id == NODE_MAINTENANCE
}

/// Consul answers agent writes with 200 and an empty body.
pub(super) fn ok(api: &Api) -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    index_headers(r.headers_mut(), api.registry.index());
    r
}

fn read_only(what: &str, source: Source) -> ApiError {
    let from = match source {
        Source::File => "a zones/ definition file",
        Source::Consul => "the Consul agent",
        Source::Api => "the API",
        Source::Docker => "the Docker engine",
        Source::Cluster => "the cluster's member list",
    };
    ApiError::forbidden(format!(
        "{what} comes from {from} and is read-only through the API"
    ))
}

/// Keeps the live status of a check that is registered again without an
/// explicit Status, as a running agent does.
pub(super) fn keep_status_of(txn: &Txn<'_>, check: &mut Check, explicit: bool) {
    if explicit {
        return;
    }
    if let Some(old) = txn.state().check(&check.node, &check.id) {
        check.status = old.status;
        check.output = old.output.clone();
    }
}

pub(super) async fn register_service(
    State(api): Shared,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let def: ServiceDef = json_body(body)?;
    let replace = params.flag("replace-existing-checks");
    let explicit: Vec<bool> = def.checks.iter().map(|c| c.status.is_some()).collect();
    let node = api.node.clone();
    api.registry
        .write_api(|txn| {
            let key = InstanceKey::new(&node, &def.id);
            if let Some(old) = txn.state().instance(&key) {
                if old.source != Source::Api {
                    return Err(read_only(&format!("service {:?}", def.id), old.source));
                }
            }
            let (inst, checks) = def.clone().into_parts(&node, Source::Api);
            for c in &checks {
                if let Some(old) = txn.state().check(&node, &c.id) {
                    if old.source != Source::Api {
                        return Err(read_only(&format!("check {:?}", c.id), old.source));
                    }
                }
            }
            if replace {
                let keep: BTreeSet<&str> = checks.iter().map(|c| c.id.as_str()).collect();
                let stale: Vec<String> = txn
                    .state()
                    .checks_of(&key)
                    .filter(|c| c.service_id.as_deref() == Some(&*key.id))
                    .filter(|c| {
                        !keep.contains(c.id.as_str()) && !c.id.starts_with(SERVICE_MAINTENANCE)
                    })
                    .map(|c| c.id.clone())
                    .collect();
                for id in stale {
                    txn.remove_check(&node, &id);
                }
            }
            txn.upsert_instance(inst);
            for (mut c, explicit) in checks.into_iter().zip(explicit.iter().copied()) {
                keep_status_of(txn, &mut c, explicit);
                txn.upsert_check(c);
            }
            Ok(())
        })
        .await??;
    Ok(ok(&api))
}

fn own_instance(api: &Api, id: &str) -> Result<(InstanceKey, Source, String), ApiError> {
    let key = InstanceKey::new(&api.node, id);
    api.registry
        .read(|s| s.instance(&key).map(|i| (i.source, i.name.to_string())))
        .map(|(source, name)| (key, source, name))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
            ))
        })
}

pub(super) async fn deregister_service(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    let (key, source, _) = own_instance(&api, &id)?;
    if source != Source::Api {
        return Err(read_only(&format!("service {id:?}"), source));
    }
    api.registry
        .write_api(|txn| txn.remove_instance(&key))
        .await?;
    Ok(ok(&api))
}

fn enable_param(params: &Params) -> Result<bool, ApiError> {
    match params.get("enable") {
        None | Some("") => Err(ApiError::bad_request("Missing value for enable")),
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| ApiError::bad_request(format!("Invalid value for enable: {v:?}"))),
    }
}

/// The critical check that holds a service (`Some`) or the whole node in
/// maintenance, with Consul's ID, name and default note.
fn maintenance_check(api: &Api, service: Option<(&str, String)>, reason: &str) -> Check {
    let (id, name, what) = match &service {
        Some((id, _)) => (
            maintenance_check_id(id),
            "Service Maintenance Mode",
            "service",
        ),
        None => (
            NODE_MAINTENANCE.to_string(),
            "Node Maintenance Mode",
            "node",
        ),
    };
    Check {
        node: api.node.clone(),
        id,
        name: name.into(),
        status: Health::Critical,
        output: String::new(),
        notes: if reason.is_empty() {
            format!("Maintenance mode is enabled for this {what}, but no reason was provided. This is a default message.")
        } else {
            reason.to_string()
        },
        service_id: service.as_ref().map(|(id, _)| id.to_string()),
        service_name: service.map(|(_, name)| name).unwrap_or_default(),
        kind: CheckKind::Static,
        thresholds: Default::default(),
        source: Source::Api,
        create_index: 0,
        modify_index: 0,
    }
}

pub(super) async fn maintenance(
    State(api): Shared,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let enable = enable_param(&params)?;
    let (_, source, name) = own_instance(&api, &id)?;
    // Maintenance takes an instance out of DNS: a change to it, refused for
    // entries that zones/, Consul or Docker own.
    if source != Source::Api {
        return Err(read_only(&format!("service {id:?}"), source));
    }
    let reason = params.get("reason").unwrap_or("");
    let check = maintenance_check(&api, Some((&id, name)), reason);
    set_maintenance(&api, check, enable).await
}

/// Adds (enable) or removes the maintenance check.
async fn set_maintenance(api: &Api, check: Check, enable: bool) -> ApiResult {
    api.registry
        .write_api(|txn| {
            if enable {
                txn.upsert_check(check.clone());
            } else {
                txn.remove_check(&check.node, &check.id);
            }
        })
        .await?;
    Ok(ok(api))
}

/// `/v1/agent/maintenance`: the whole node out of DNS (a critical node
/// check), or back.
pub(super) async fn node_maintenance(State(api): Shared, params: Params) -> ApiResult {
    let enable = enable_param(&params)?;
    let check = maintenance_check(&api, None, params.get("reason").unwrap_or(""));
    set_maintenance(&api, check, enable).await
}

/// Consul's answer to a local-health probe: the status as text and as the
/// HTTP code load balancers read (200 passing, 429 warning, 503 critical).
fn health_code(h: Health) -> (StatusCode, &'static str) {
    match h {
        Health::Passing => (StatusCode::OK, "passing"),
        Health::Warning => (StatusCode::TOO_MANY_REQUESTS, "warning"),
        Health::Critical => (StatusCode::SERVICE_UNAVAILABLE, "critical"),
    }
}

fn health_entry(
    s: &crate::registry::State,
    api: &Api,
    key: &InstanceKey,
) -> Option<(Health, serde_json::Value)> {
    let v = s.view(key)?;
    let checks: Vec<CheckOut<'_>> = s
        .checks_of(key)
        .map(|c| CheckOut::new(c, Some(v.instance)))
        .collect();
    let (_, status) = health_code(v.health);
    Some((
        v.health,
        json!({
            "AggregatedStatus": status,
            "Service": ServiceOut::new(v.instance, &api.datacenter),
            "Checks": checks,
        }),
    ))
}

fn health_reply(params: &Params, health: Health, body: &serde_json::Value) -> Response {
    let (code, status) = health_code(health);
    let mut r = if params.get("format") == Some("text") {
        status.into_response()
    } else {
        axum::Json(body).into_response()
    };
    *r.status_mut() = code;
    r
}

/// `/v1/agent/health/service/name/:name`: every local instance of a service
/// and the worst status among them.
pub(super) async fn health_by_name(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let found = api.registry.read(|s| {
        let entries: Vec<(Health, serde_json::Value)> = s
            .node_instances(&api.node)
            .filter(|v| v.instance.name.eq_ignore_ascii_case(&name))
            .filter_map(|v| health_entry(s, &api, &v.instance.key()))
            .collect();
        entries
    });
    if found.is_empty() {
        let text = format!("ServiceName {name} Not Found");
        let mut r = if params.get("format") == Some("text") {
            text.into_response()
        } else {
            axum::Json(json!([])).into_response()
        };
        *r.status_mut() = StatusCode::NOT_FOUND;
        return Ok(r);
    }
    let worst = found
        .iter()
        .map(|(h, _)| *h)
        .max()
        .unwrap_or(Health::Passing);
    let body = serde_json::Value::Array(found.into_iter().map(|(_, v)| v).collect());
    Ok(health_reply(&params, worst, &body))
}

/// `/v1/agent/health/service/id/:id`: one local instance's status.
pub(super) async fn health_by_id(
    State(api): Shared,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let key = InstanceKey::new(&api.node, &id);
    match api.registry.read(|s| health_entry(s, &api, &key)) {
        Some((health, body)) => Ok(health_reply(&params, health, &body)),
        None => Err(ApiError::not_found(format!("ServiceId {id} not found"))),
    }
}

pub(super) async fn register_check(
    State(api): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let def: CheckDef = json_body(body)?;
    if def.name.is_empty() {
        return Err(ApiError::bad_request("Missing check name"));
    }
    let explicit = def.status.is_some();
    let id = if def.id.is_empty() {
        def.name.clone()
    } else {
        def.id.clone()
    };
    let node = api.node.clone();
    let service = match def.service_id.clone() {
        Some(sid) => {
            let key = InstanceKey::new(&node, &sid);
            let (name, source) = api
                .registry
                .read(|s| s.instance(&key).map(|i| (i.name.clone(), i.source)))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("ServiceID {sid:?} does not exist"))
                })?;
            // A check on an instance decides whether DNS answers it: a
            // change to the instance, refused for read-only sources.
            if source != Source::Api {
                return Err(read_only(
                    &format!("service {sid:?}, which the check would attach to,"),
                    source,
                ));
            }
            Some((sid, name))
        }
        None => None,
    };
    api.registry
        .write_api(|txn| {
            if let Some(old) = txn.state().check(&node, &id) {
                if old.source != Source::Api {
                    return Err(read_only(&format!("check {id:?}"), old.source));
                }
            }
            let mut check = def.clone().into_check(
                &node,
                service.as_ref().map(|(i, n)| (&**i, &**n)),
                id.clone(),
                Source::Api,
            );
            keep_status_of(txn, &mut check, explicit);
            txn.upsert_check(check);
            Ok(())
        })
        .await??;
    Ok(ok(&api))
}

fn own_check(api: &Api, id: &str) -> Result<Check, ApiError> {
    api.registry
        .read(|s| s.check(&api.node, id).cloned())
        .ok_or_else(|| ApiError::not_found(format!("Unknown check ID {id:?}")))
}

pub(super) async fn deregister_check(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    let check = own_check(&api, &id)?;
    if check.source != Source::Api {
        return Err(read_only(&format!("check {id:?}"), check.source));
    }
    api.registry
        .write_api(|txn| txn.remove_check(&check.node, &id))
        .await?;
    Ok(ok(&api))
}

/// Sets a TTL check's status, as `/v1/agent/check/{pass,warn,fail,update}`.
pub(super) async fn set_ttl_status(
    api: &Api,
    id: &str,
    status: Health,
    output: &str,
) -> Result<(), ApiError> {
    let check = own_check(api, id)?;
    if !matches!(check.kind, CheckKind::Ttl { .. }) {
        return Err(ApiError::bad_request(format!(
            "CheckID {id:?} does not have associated TTL"
        )));
    }
    api.health.touch_ttl(&check.node, id, status);
    api.registry
        .write_api(|txn| txn.set_check_status(&check.node, id, status, output))
        .await?;
    Ok(())
}

async fn ttl(api: Arc<Api>, id: String, params: Params, status: Health) -> ApiResult {
    set_ttl_status(&api, &id, status, params.get("note").unwrap_or("")).await?;
    Ok(ok(&api))
}

pub(super) async fn pass(State(api): Shared, Path(id): Path<String>, params: Params) -> ApiResult {
    ttl(api, id, params, Health::Passing).await
}

pub(super) async fn warn(State(api): Shared, Path(id): Path<String>, params: Params) -> ApiResult {
    ttl(api, id, params, Health::Warning).await
}

pub(super) async fn fail(State(api): Shared, Path(id): Path<String>, params: Params) -> ApiResult {
    ttl(api, id, params, Health::Critical).await
}

#[derive(Deserialize)]
struct Update {
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "Output", default)]
    output: String,
}

pub(super) async fn update_check(
    State(api): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let u: Update = json_body(body)?;
    let status = match u.status.as_deref() {
        None | Some("") => return Err(ApiError::bad_request("Missing Status")),
        Some(s) => Health::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid Status {s:?}: must be passing, warning or critical"
            ))
        })?,
    };
    set_ttl_status(&api, &id, status, &u.output).await?;
    Ok(ok(&api))
}

pub(super) async fn services(State(api): Shared, params: Params) -> ApiResult {
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Any, |s| {
        let mut out: BTreeMap<&str, ServiceOut<'_>> = s
            .node_instances(&api.node)
            .map(|v| {
                (
                    &*v.instance.id,
                    ServiceOut::new(v.instance, &api.datacenter),
                )
            })
            .collect();
        keep_values(filter.as_ref(), &mut out);
        encoded(s.index(), &out)
    })
    .await
}

/// Consul's `ContentHash` of a service: 16 hex digits that change when
/// anything in it does (FNV-1a of its JSON; stable across restarts).
fn content_hash(body: &[u8]) -> String {
    let h = body.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    });
    format!("{h:016x}")
}

/// `/v1/agent/service/:id`, with `ContentHash`, and blocking on `?hash=`
/// (until the hash differs) as well as on `?index=`.
pub(super) async fn service(
    State(api): Shared,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    let key = InstanceKey::new(&api.node, &id);
    let view = |s: &crate::registry::State| {
        let i = s
            .instance(&key)
            .ok_or_else(|| ApiError::not_found(format!("unknown service ID: {id}")))?;
        let mut v =
            serde_json::to_value(ServiceOut::new(i, &api.datacenter)).expect("shapes serialize");
        let hash = content_hash(v.to_string().as_bytes());
        v["ContentHash"] = json!(hash);
        Ok::<_, ApiError>((i.modify_index, hash, v))
    };
    let Some(wanted) = params.get("hash").filter(|h| !h.is_empty()) else {
        let (index, (hash, body)) = api
            .wait_for(&params, Topic::Any, |s| {
                view(s).map(|(i, h, v)| (i, (h, v)))
            })
            .await?;
        return Ok(hashed_reply(index, &hash, &body));
    };
    api.check_dc(&params)?;
    let deadline = super::wait_deadline(&params)?;
    let mut changes = api.registry.subscribe();
    loop {
        changes.borrow_and_update();
        let (index, hash, body) = api.registry.read(view)?;
        if hash != wanted || tokio::time::Instant::now() >= deadline {
            return Ok(hashed_reply(index, &hash, &body));
        }
        let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
    }
}

fn hashed_reply(index: u64, hash: &str, body: &serde_json::Value) -> Response {
    let mut r = reply(index, body);
    if let Ok(v) = axum::http::HeaderValue::from_str(hash) {
        r.headers_mut().insert("X-Consul-ContentHash", v);
    }
    r
}

pub(super) async fn checks(State(api): Shared, params: Params) -> ApiResult {
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Any, |s| {
        let mut out: BTreeMap<&str, CheckOut<'_>> = s
            .checks()
            // serfHealth is the cluster's, not a check registered with the
            // agent: Consul's agent does not list it either.
            .filter(|c| c.node == api.node && c.source != Source::Cluster)
            .map(|c| {
                let inst = c
                    .service_id
                    .as_ref()
                    .and_then(|sid| s.instance(&InstanceKey::new(&c.node, sid)));
                (c.id.as_str(), CheckOut::new(c, inst))
            })
            .collect();
        keep_values(filter.as_ref(), &mut out);
        encoded(s.index(), &out)
    })
    .await
}

fn member(api: &Api) -> serde_json::Value {
    member_shape(&api.node, &api.node_address.to_string(), &api.datacenter, 1)
}

/// A member as Consul's `/v1/agent/members` lists it; `status` is serf's:
/// 1 alive, 4 failed.
fn member_shape(name: &str, address: &str, datacenter: &str, status: u8) -> serde_json::Value {
    json!({
        "Name": name,
        "Addr": address,
        "Port": 8301,
        "Tags": {"dc": datacenter, "role": "node", "build": env!("CARGO_PKG_VERSION")},
        "Status": status,
        "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
        "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
    })
}

pub(super) async fn this_agent(State(api): Shared) -> ApiResult {
    let body = json!({
        "Config": {
            "Datacenter": api.datacenter,
            "NodeName": api.node,
            "NodeID": node_id(&api.node),
            "Server": false,
            "Revision": "signpost",
            "Version": env!("CARGO_PKG_VERSION"),
            // Read by clients (Patroni) to size their session TTLs: a Go
            // duration, so nanoseconds in JSON, as Consul sends it.
            "SessionTTLMin": api.session_ttl_min.as_nanos() as u64,
        },
        "Member": member(&api),
        "Meta": {},
    });
    Ok(reply(api.registry.index(), &body))
}

/// `/v1/agent/members`: this agent, or in a cluster every member, alive
/// or failed as its `serfHealth` says.
pub(super) async fn members(State(api): Shared) -> ApiResult {
    if api.cluster.is_none() {
        return Ok(reply(api.registry.index(), &[member(&api)]));
    }
    let members: Vec<serde_json::Value> = api.registry.read(|s| {
        s.nodes()
            .filter_map(|n| {
                let c = s.check(&n.name, SERF_CHECK)?;
                (c.source == Source::Cluster).then(|| {
                    let status = if c.status == Health::Passing { 1 } else { 4 };
                    member_shape(&n.name, &n.address, &n.datacenter, status)
                })
            })
            .collect()
    });
    Ok(reply(api.registry.index(), &members))
}
