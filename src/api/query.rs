//! `/v1/query`: Consul's prepared queries, stored like every API write,
//! executed over HTTP and answered in DNS as `name.query.consul`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::shapes::HealthEntry;
use super::{index_headers, reply, Api, ApiError, ApiResult, Params};
use crate::registry::query::{find, PreparedQuery, QueryDef, QuerySpec};
use crate::registry::State as Registry;
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

/// A create or update body's identity; the rest is its [`QueryDef`].
#[derive(Deserialize, Default)]
#[serde(default)]
struct Ident {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Session")]
    session: String,
}

/// Reads a create or update body: the definition and its name and session.
fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<(String, String, Value), ApiError> {
    let bytes = super::body_bytes(body)?;
    let decode =
        |e: serde_json::Error| ApiError::bad_request(format!("request decode failed: {e}"));
    let ident: Ident = crate::fold::from_slice(&bytes).map_err(decode)?;
    let def: QueryDef = crate::fold::from_slice(&bytes).map_err(decode)?;
    let definition = serde_json::to_value(&def).map_err(|e| ApiError::internal(e.to_string()))?;
    QuerySpec::validate(&ident.name, def)
        .map_err(|e| ApiError::bad_request(format!("Invalid prepared query: {e}")))?;
    Ok((ident.name, ident.session, definition))
}

/// A query as Consul shows it.
fn shape(q: &PreparedQuery) -> Value {
    let mut v = json!({
        "ID": q.id,
        "Name": q.name,
        "Session": q.session,
        "Token": "",
        "Service": {},
        "DNS": {"TTL": ""},
        "Template": {"Type": "", "Regexp": "", "RemoveEmptyTags": false},
        "CreateIndex": q.create_index,
        "ModifyIndex": q.modify_index,
    });
    for (k, val) in q.definition.as_object().into_iter().flatten() {
        if k != "Token" {
            v[k] = val.clone();
        }
    }
    v
}

/// Refuses a second query of the same name (templates share a namespace
/// with plain names, as Consul's).
fn name_free(s: &Registry, name: &str, except: Option<&str>) -> Result<(), ApiError> {
    if name.is_empty() {
        return Ok(());
    }
    let taken = s
        .queries()
        .any(|q| q.name.eq_ignore_ascii_case(name) && Some(q.id.as_str()) != except);
    if taken {
        return Err(ApiError::bad_request(format!(
            "Prepared query name \"{name}\" is already in use"
        )));
    }
    Ok(())
}

fn session_exists(s: &Registry, session: &str) -> Result<(), ApiError> {
    if !session.is_empty() && s.session(session).is_none() {
        return Err(ApiError::bad_request(format!(
            "Invalid session {session:?}"
        )));
    }
    Ok(())
}

pub(super) async fn create(State(api): Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let (name, session, definition) = parse_body(body)?;
    let id = super::session::uuid();
    let q = PreparedQuery {
        id: id.clone(),
        name,
        session,
        definition,
        create_index: 0,
        modify_index: 0,
    };
    api.registry
        .write_api(|t| {
            name_free(t.state(), &q.name, None)?;
            session_exists(t.state(), &q.session)?;
            t.upsert_query(q.clone());
            Ok::<_, ApiError>(())
        })
        .await??;
    Ok(reply(api.registry.index(), &json!({ "ID": id })))
}

pub(super) async fn list(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Queries), |s| {
        let out: Vec<Value> = s.queries().map(shape).collect();
        super::encoded(s.tables().queries, &out)
    })
    .await
}

pub(super) async fn get(State(api): Shared, Path(id): Path<String>, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Queries), |s| {
        let q = s
            .query(&id)
            .ok_or_else(|| ApiError::not_found("Query not found"))?;
        super::encoded(q.modify_index, &[shape(q)])
    })
    .await
}

pub(super) async fn update(
    State(api): Shared,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let (name, session, definition) = parse_body(body)?;
    api.registry
        .write_api(|t| {
            let Some(old) = t.state().query(&id).cloned() else {
                return Err(ApiError::not_found("Query not found"));
            };
            name_free(t.state(), &name, Some(&id))?;
            session_exists(t.state(), &session)?;
            t.upsert_query(PreparedQuery {
                name: name.clone(),
                session: session.clone(),
                definition: definition.clone(),
                ..old
            });
            Ok(())
        })
        .await??;
    Ok(super::agent::ok(&api))
}

pub(super) async fn delete(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    api.registry.write_api(|t| t.remove_query(&id)).await?;
    Ok(super::agent::ok(&api))
}

fn not_found(index: u64) -> Response {
    let mut r = (StatusCode::NOT_FOUND, "Query not found\n").into_response();
    index_headers(r.headers_mut(), index);
    r
}

/// The query asked for by ID or name, any case (templates included), and
/// the search it gives.
fn lookup<'a>(s: &'a Registry, asked: &str) -> Option<(&'a PreparedQuery, QuerySpec)> {
    find(s.queries(), &asked.to_ascii_lowercase()).or_else(|| find(s.queries(), asked))
}

/// Runs a query by ID or name (templates included) against the registry.
pub(super) async fn execute(
    State(api): Shared,
    Path(id): Path<String>,
    params: Params,
) -> ApiResult {
    api.check_dc(&params)?;
    let limit = params.u64("limit")?.map(|l| l as usize);
    // Where to look, in order: here, then the failover datacenters the
    // agent knows (sidecar mode), each watched before it is read.
    let spec = api.registry.read(|s| lookup(s, &id).map(|(_, spec)| spec));
    let service = spec.as_ref().map(|s| s.service.to_ascii_lowercase());
    let mut order = vec![api.datacenter.clone()];
    if let (Some(spec), Some(sync)) = (&spec, &api.consul) {
        let remote = crate::sync::consul::Sidecar(sync.clone());
        use crate::dns::handler::Remote;
        let here = api.registry.read(|s| {
            s.service_instances(service.as_deref().unwrap_or(""))
                .any(|v| v.node.is_some_and(|n| n.datacenter == api.datacenter) && spec.matches(&v))
        });
        if !here {
            for dc in spec.failover_datacenters() {
                if remote.knows(&dc) {
                    let watch = remote.watch(dc.clone(), service.clone().unwrap_or_default());
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), watch).await;
                    order.push(dc);
                }
            }
        }
    }
    let (index, body) = api.registry.read(|s| {
        let Some((q, spec)) = lookup(s, &id) else {
            return (s.tables().queries, None);
        };
        let service = spec.service.to_ascii_lowercase();
        let (failovers, dc) = order
            .iter()
            .enumerate()
            .find(|(_, dc)| {
                s.service_instances(&service)
                    .any(|v| v.node.is_some_and(|n| &n.datacenter == *dc) && spec.matches(&v))
            })
            .map(|(i, dc)| (i, dc.clone()))
            .unwrap_or((0, api.datacenter.clone()));
        let mut nodes: Vec<HealthEntry<'_>> = s
            .service_instances(&service)
            .filter(|v| v.node.is_some_and(|n| n.datacenter == dc))
            .filter(|v| spec.matches(v))
            .filter_map(|v| Some(HealthEntry::new(s, v.node?, v.instance)))
            .collect();
        // Consul shuffles the result: each execution spreads the load.
        fastrand::shuffle(&mut nodes);
        if let Some(l) = limit {
            nodes.truncate(l);
        }
        let ttl = spec.ttl.map(|t| format!("{t}s")).unwrap_or_default();
        let body = json!({
            "Service": spec.service,
            "Nodes": nodes,
            "DNS": {"TTL": ttl},
            "Datacenter": dc,
            "Failovers": failovers,
            "Index": q.modify_index,
        });
        (s.index(), Some(body))
    });
    match body {
        Some(b) => Ok(reply(index, &b)),
        None => Ok(not_found(index)),
    }
}

/// The query a name resolves to, templates filled in.
pub(super) async fn explain(State(api): Shared, Path(id): Path<String>) -> ApiResult {
    let (index, body) = api.registry.read(|s| {
        let Some((q, spec)) = lookup(s, &id) else {
            return (s.tables().queries, None);
        };
        let mut v = shape(q);
        v["Service"]["Service"] = json!(spec.service);
        v["Service"]["Tags"] = json!(spec.tags);
        (s.tables().queries, Some(json!({ "Query": v })))
    });
    match body {
        Some(b) => Ok(reply(index, &b)),
        None => Ok(not_found(index)),
    }
}
