//! `/v1/health/*`: instances with their checks, and checks by state.

use std::sync::Arc;

use axum::extract::{Path, State};

use super::catalog::{has_tags, node_index, service_index};
use super::shapes::{CheckOut, HealthEntry};
use super::{encoded, keep, Api, ApiError, ApiResult, Params};
use crate::registry::{Check, Health, InstanceKey, State as Registry};
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

fn check_out<'a>(s: &'a Registry, c: &'a Check) -> CheckOut<'a> {
    let inst = c
        .service_id
        .as_ref()
        .and_then(|sid| s.instance(&InstanceKey::new(&c.node, sid)));
    CheckOut::new(c, inst)
}

/// `views` as health entries: local ones carrying every tag asked (and
/// passing, with `?passing`), filtered, in node and ID order.
fn entries<'a>(
    api: &Api,
    s: &'a Registry,
    views: impl Iterator<Item = crate::registry::InstanceView<'a>>,
    tags: &[&str],
    passing: bool,
    filter: Option<&super::filter::Filter>,
) -> Vec<HealthEntry<'a>> {
    let mut out: Vec<HealthEntry<'a>> = Vec::new();
    for v in views {
        let Some(node) = v.node.filter(|n| n.datacenter == api.datacenter) else {
            continue;
        };
        if !has_tags(&v.instance.tags, tags) || (passing && v.health != Health::Passing) {
            continue;
        }
        out.push(HealthEntry::new(s, node, v.instance));
    }
    out.sort_by(|a, b| (a.node.node, a.service.id).cmp(&(b.node.node, b.service.id)));
    keep(filter, &mut out);
    out
}

pub(super) async fn service(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let passing = params.flag("passing");
    let tags: Vec<&str> = params.all("tag").collect();
    let filter = params.filter(Some(&["Node", "Meta"]))?;
    let lower = name.to_ascii_lowercase();
    api.blocking(&params, Topic::Service(&lower), |s| {
        let out = entries(
            &api,
            s,
            s.service_instances(&lower),
            &tags,
            passing,
            filter.as_ref(),
        );
        encoded(service_index(s, &name), &out)
    })
    .await
}

/// `/v1/health/connect/:service`: `/v1/health/service` for the instances
/// that carry Connect traffic for the service (see `catalog::connect`).
pub(super) async fn connect(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let passing = params.flag("passing");
    let tags: Vec<&str> = params.all("tag").collect();
    let filter = params.filter(Some(&["Node", "Meta"]))?;
    let lower = name.to_ascii_lowercase();
    api.blocking(&params, Topic::Any, |s| {
        let out = entries(
            &api,
            s,
            s.connect_instances(&lower),
            &tags,
            passing,
            filter.as_ref(),
        );
        encoded(s.index(), &out)
    })
    .await
}

pub(super) async fn checks(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let lower = name.to_ascii_lowercase();
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Service(&name.to_ascii_lowercase()), |s| {
        let mut out: Vec<CheckOut<'_>> = s
            .service_instances(&lower)
            .flat_map(|v| {
                let key = v.instance.key();
                s.checks_of(&key)
                    .filter(|c| c.service_id.is_some())
                    .map(|c| CheckOut::new(c, Some(v.instance)))
                    .collect::<Vec<_>>()
            })
            .collect();
        keep(filter.as_ref(), &mut out);
        encoded(service_index(s, &name), &out)
    })
    .await
}

pub(super) async fn node(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
) -> ApiResult {
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Table(Table::Nodes), |s| {
        let mut out: Vec<CheckOut<'_>> = s
            .checks()
            .filter(|c| c.node == name)
            .map(|c| check_out(s, c))
            .collect();
        out.sort_by(|a, b| a.check_id.cmp(b.check_id));
        keep(filter.as_ref(), &mut out);
        encoded(node_index(s, &name), &out)
    })
    .await
}

pub(super) async fn state(
    State(api): Shared,
    Path(state): Path<String>,
    params: Params,
) -> ApiResult {
    let wanted = match state.as_str() {
        "any" => None,
        other => Some(
            Health::parse(other)
                .filter(|_| other == other.to_ascii_lowercase())
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid state {state:?}: use any, passing, warning or critical"
                    ))
                })?,
        ),
    };
    let filter = params.filter(None)?;
    api.blocking(&params, Topic::Table(Table::Checks), |s| {
        let mut out: Vec<CheckOut<'_>> = s
            .checks()
            .filter(|c| wanted.is_none_or(|w| c.status == w))
            .map(|c| check_out(s, c))
            .collect();
        out.sort_by(|a, b| (a.node, a.check_id).cmp(&(b.node, b.check_id)));
        keep(filter.as_ref(), &mut out);
        encoded(s.tables().checks, &out)
    })
    .await
}
