//! signpost's own operational endpoints: liveness, readiness, metrics and
//! the state of the Consul sync.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{reply, Api, ApiError, ApiResult};
use crate::metrics::StatusLabel;

type Shared = State<Arc<Api>>;

/// Alive: the process answers HTTP.
pub async fn live() -> &'static str {
    "ok\n"
}

/// Ready to answer DNS truthfully and take writes: zones are loaded (they
/// are, once the listener runs), in sidecar mode the first full sync is
/// done, and the store (with --data-dir) accepts writes.
pub async fn ready(State(api): Shared) -> Response {
    let store = api.registry.store_status();
    if store.is_degraded() {
        let reason = store.reason().unwrap_or_default().replace('\n', " ");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store refuses writes (DNS and reads go on): {reason}\n"),
        )
            .into_response();
    }
    match &api.consul {
        Some(c) if !c.is_synced() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the first full sync from consul\n",
        )
            .into_response(),
        _ => "ready\n".into_response(),
    }
}

pub async fn metrics(State(api): Shared) -> Response {
    let m = &api.metrics;
    if let Some(c) = &api.consul {
        m.consul_staleness.set(c.staleness());
    }
    let (services, instances, checks, index) = api.registry.read(|s| {
        let mut by_status = [0i64; 3];
        for c in s.checks() {
            by_status[c.status as usize] += 1;
        }
        (
            s.service_names().count() as i64,
            s.instances().count() as i64,
            by_status,
            s.index() as i64,
        )
    });
    m.services.set(services);
    m.instances.set(instances);
    m.change_index.set(index);
    for (status, n) in ["passing", "warning", "critical"].into_iter().zip(checks) {
        m.checks.get_or_create(&StatusLabel { status }).set(n);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.metrics.render(),
    )
        .into_response()
}

/// Sidecar mode's sync: whether it is complete, how stale the view is,
/// the last error.
pub async fn docker_status(State(api): Shared) -> ApiResult {
    match &api.docker {
        Some(d) => Ok(reply(api.registry.index(), &d.status())),
        None => Err(ApiError::not_found(
            "no Docker source: signpost was started without --docker",
        )),
    }
}

pub async fn sync_status(State(api): Shared) -> ApiResult {
    match &api.consul {
        Some(c) => Ok(reply(api.registry.index(), &c.status())),
        None => Err(ApiError::not_found(
            "not in sidecar mode: signpost was started without --consul",
        )),
    }
}
