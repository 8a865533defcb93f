//! `/v1/catalog/*` and `/v1/status/*`: nodes and service instances of the
//! whole catalog, as external-service tools register them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::json;

use super::agent::keep_status_of;
use super::shapes::{NodeOut, ServiceNodeOut, ServiceOut};
use super::{encoded, json_body, keep, reply, Api, ApiError, ApiResult, Params};
use crate::registry::definition::{CatalogParts, CatalogRegistration};
use crate::registry::{Health, InstanceKey, Source, State as Registry};
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

fn read_only(what: String) -> ApiError {
    ApiError::forbidden(format!(
        "{what} does not come from the API and is read-only through it"
    ))
}

pub(super) async fn register(State(api): Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let reg: CatalogRegistration = json_body(body)?;
    if let Some(dc) = &reg.datacenter {
        if !dc.eq_ignore_ascii_case(&api.datacenter) {
            return Err(ApiError::bad_request(format!(
                "datacenter {dc:?} is not this one ({:?})",
                api.datacenter
            )));
        }
    }
    let skip_node_update = reg.skip_node_update;
    let explicit: Vec<bool> = reg.checks.iter().map(|c| c.status.is_some()).collect();
    let service_explicit: Vec<bool> = reg
        .service
        .iter()
        .flat_map(|s| s.checks.iter().map(|c| c.status.is_some()))
        .collect();
    let CatalogParts {
        node,
        service,
        checks,
    } = reg.into_parts(&api.datacenter, Source::Api);
    api.registry
        .write_api(|txn| {
            let state = txn.state();
            let existing = state.node(&node.name);
            if existing.is_some_and(|n| n.source != Source::Api) {
                return Err(read_only(format!("node {:?}", node.name)));
            }
            if let Some((inst, _)) = &service {
                if state
                    .instance(&inst.key())
                    .is_some_and(|i| i.source != Source::Api)
                {
                    return Err(read_only(format!("service {:?}", inst.id)));
                }
            }
            let service_checks = service.iter().flat_map(|(_, c)| c);
            if let Some(c) = checks.iter().chain(service_checks).find(|c| {
                state
                    .check(&c.node, &c.id)
                    .is_some_and(|o| o.source != Source::Api)
            }) {
                return Err(read_only(format!("check {:?}", c.id)));
            }
            if existing.is_none() || !skip_node_update {
                txn.upsert_node(node.clone());
            }
            if let Some((inst, inst_checks)) = service.clone() {
                txn.upsert_instance(inst);
                for (mut c, explicit) in inst_checks
                    .into_iter()
                    .zip(service_explicit.iter().copied())
                {
                    keep_status_of(txn, &mut c, explicit);
                    txn.upsert_check(c);
                }
            }
            for (mut c, explicit) in checks.iter().cloned().zip(explicit.iter().copied()) {
                keep_status_of(txn, &mut c, explicit);
                txn.upsert_check(c);
            }
            Ok(())
        })
        .await??;
    Ok(reply(api.registry.index(), &true))
}

#[derive(Deserialize)]
struct Deregistration {
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "ServiceID")]
    service_id: Option<String>,
    #[serde(rename = "CheckID")]
    check_id: Option<String>,
}

pub(super) async fn deregister(
    State(api): Shared,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let d: Deregistration = json_body(body)?;
    if d.node.is_empty() {
        return Err(ApiError::bad_request("Missing node name"));
    }
    api.registry
        .write_api(|txn| {
            let state = txn.state();
            if let Some(id) = d.service_id.as_deref().filter(|s| !s.is_empty()) {
                let key = InstanceKey::new(&d.node, id);
                if state
                    .instance(&key)
                    .is_some_and(|i| i.source != Source::Api)
                {
                    return Err(read_only(format!("service {id:?}")));
                }
                txn.remove_instance(&key);
            } else if let Some(id) = d.check_id.as_deref().filter(|s| !s.is_empty()) {
                if state
                    .check(&d.node, id)
                    .is_some_and(|c| c.source != Source::Api)
                {
                    return Err(read_only(format!("check {id:?}")));
                }
                txn.remove_check(&d.node, id);
            } else {
                if state.node(&d.node).is_some_and(|n| n.source != Source::Api) {
                    return Err(read_only(format!("node {:?}", d.node)));
                }
                txn.remove_node(&d.node);
            }
            Ok(())
        })
        .await??;
    Ok(reply(api.registry.index(), &true))
}

fn local<'a>(api: &'a Api) -> impl Fn(&crate::registry::InstanceView<'_>) -> bool + 'a {
    move |v| v.node.is_some_and(|n| n.datacenter == api.datacenter)
}

pub(super) async fn services(State(api): Shared, params: Params) -> ApiResult {
    // Judged on each instance as a catalog "service node", as Consul does.
    let filter = params.filter(Some(&["NodeMeta"]))?;
    let wanted = |v: &crate::registry::InstanceView<'_>| {
        filter.as_ref().is_none_or(|f| {
            v.node.is_some_and(|n| {
                let item = serde_json::to_value(ServiceNodeOut::new(n, v.instance));
                f.matches(&item.expect("shapes serialize"))
            })
        })
    };
    api.blocking(&params, Topic::Table(Table::Services), |s| {
        // Borrowed names and tags, and no health worked out: this is read
        // on every change by every mirror following the catalog.
        let mut out: HashMap<&str, BTreeSet<&str>, foldhash::fast::RandomState> =
            HashMap::default();
        for (instance, node) in s.members() {
            let Some(node) = node.filter(|n| n.datacenter == api.datacenter) else {
                continue;
            };
            if filter.is_some() {
                let v = crate::registry::InstanceView {
                    instance,
                    node: Some(node),
                    health: Health::Passing,
                };
                if !wanted(&v) {
                    continue;
                }
            }
            out.entry(&*instance.name)
                .or_default()
                .extend(instance.tags.iter().map(|t| &**t));
        }
        let out: BTreeMap<_, _> = out.into_iter().collect();
        encoded(s.tables().services, &out)
    })
    .await
}

/// The index of one service's entries (or of all services when it is gone
/// or never existed).
pub(super) fn service_index(s: &Registry, name: &str) -> u64 {
    s.service_index(&name.to_ascii_lowercase())
}

/// Whether an instance carries every tag asked for (case-insensitively).
pub(super) fn has_tags(tags: &[Arc<str>], wanted: &[&str]) -> bool {
    wanted
        .iter()
        .all(|w| tags.iter().any(|t| t.eq_ignore_ascii_case(w)))
}

/// `views` as the catalog's flat service nodes: local ones carrying every
/// tag asked, filtered, in node and ID order.
fn service_nodes<'a>(
    api: &Api,
    views: impl Iterator<Item = crate::registry::InstanceView<'a>>,
    tags: &[&str],
    filter: Option<&super::filter::Filter>,
) -> Vec<ServiceNodeOut<'a>> {
    let mut out: Vec<ServiceNodeOut<'a>> = views
        .filter(local(api))
        .filter(|v| has_tags(&v.instance.tags, tags))
        .filter_map(|v| Some(ServiceNodeOut::new(v.node?, v.instance)))
        .collect();
    out.sort_by(|a, b| (a.node, a.service_id).cmp(&(b.node, b.service_id)));
    keep(filter, &mut out);
    out
}

pub(super) async fn service(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let tags: Vec<&str> = params.all("tag").collect();
    let filter = params.filter(Some(&["NodeMeta"]))?;
    let lower = name.to_ascii_lowercase();
    api.blocking(&params, Topic::Service(&name.to_ascii_lowercase()), |s| {
        let out = service_nodes(&api, s.service_instances(&lower), &tags, filter.as_ref());
        encoded(service_index(s, &name), &out)
    })
    .await
}

/// `/v1/catalog/connect/:service`: the Connect-capable instances of a
/// service, its native ones and the proxies in front of it (an empty list
/// for a service with neither). Its index is the registry's: a proxy for
/// the service may be registered under any name.
pub(super) async fn connect(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let tags: Vec<&str> = params.all("tag").collect();
    let filter = params.filter(Some(&["NodeMeta"]))?;
    let lower = name.to_ascii_lowercase();
    api.blocking(&params, Topic::Any, |s| {
        let out = service_nodes(&api, s.connect_instances(&lower), &tags, filter.as_ref());
        encoded(s.index(), &out)
    })
    .await
}

pub(super) async fn nodes(State(api): Shared, params: Params) -> ApiResult {
    let filter = params.filter(Some(&["Meta"]))?;
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        let mut out: Vec<NodeOut<'_>> = s
            .nodes()
            .filter(|n| n.datacenter == api.datacenter)
            .map(NodeOut::new)
            .collect();
        keep(filter.as_ref(), &mut out);
        encoded(s.tables().nodes, &out)
    })
    .await
}

/// The index of node reads: the nodes table's (a node of its own would
/// cost a map entry per node; a watcher may wake for another node's change,
/// which Consul's blocking contract allows).
pub(super) fn node_index(s: &Registry, _node: &str) -> u64 {
    s.tables().nodes
}

pub(super) async fn node(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        let body = s.node(&name).map(|n| {
            let services: BTreeMap<&str, ServiceOut<'_>> = s
                .node_instances(&name)
                .map(|v| (&*v.instance.id, ServiceOut::new(v.instance, &n.datacenter)))
                .collect();
            json!({"Node": NodeOut::new(n), "Services": services})
        });
        encoded(node_index(s, &name), &body)
    })
    .await
}

pub(super) async fn datacenters(State(api): Shared) -> ApiResult {
    let mut dcs: BTreeSet<String> = api
        .registry
        .read(|s| s.nodes().map(|n| n.datacenter.clone()).collect());
    dcs.insert(api.datacenter.clone());
    Ok(reply(api.registry.index(), &dcs))
}

fn server_address(api: &Api) -> String {
    std::net::SocketAddr::new(api.node_address, 8300).to_string()
}

/// `/v1/status/leader`: in a cluster, etcd's leader (its peer address, as
/// Consul gives its leader's server address), or "" when there is none.
pub(super) async fn leader(State(api): Shared) -> ApiResult {
    let leader = match &api.cluster {
        Some(c) => c
            .peers()
            .await
            .ok()
            .and_then(|(_, lead)| lead)
            .unwrap_or_default(),
        None => server_address(&api),
    };
    Ok(reply(api.registry.index(), &leader))
}

/// `/v1/status/peers`: in a cluster, etcd's members.
pub(super) async fn peers(State(api): Shared) -> ApiResult {
    let peers = match &api.cluster {
        Some(c) => c.peers().await.map(|(p, _)| p).unwrap_or_default(),
        None => vec![server_address(&api)],
    };
    Ok(reply(api.registry.index(), &peers))
}

/// `/v1/catalog/node-services/:node`: a node and its services as a list.
pub(super) async fn node_services(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        let Some(n) = s.node(&name) else {
            return Err(ApiError::not_found("Node not found"));
        };
        let mut services: Vec<ServiceOut<'_>> = s
            .node_instances(&name)
            .map(|v| ServiceOut::new(v.instance, &n.datacenter))
            .collect();
        keep(filter.as_ref(), &mut services);
        encoded(
            node_index(s, &name),
            &json!({"Node": NodeOut::new(n), "Services": services}),
        )
    })
    .await
}

/// signpost keeps no network coordinates (there is no gossip to measure
/// them): it answers as a datacenter whose agents have none yet.
pub(super) async fn coordinate_datacenters(State(api): Shared) -> ApiResult {
    Ok(reply(
        api.registry.index(),
        &json!([{"Datacenter": api.datacenter, "AreaID": "wan", "Coordinates": []}]),
    ))
}

pub(super) async fn coordinate_nodes(State(api): Shared, params: Params) -> ApiResult {
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        encoded(s.tables().nodes, &json!([]))
    })
    .await
}

pub(super) async fn coordinate_node(Path(node): Path<String>) -> ApiResult {
    Err(ApiError::not_found(format!(
        "no coordinates for node {node:?}: signpost measures none"
    )))
}
