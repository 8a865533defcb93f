//! Every endpoint, and the layers around them.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{self};
use axum::routing::{get, put};
use axum::Router;

use super::layers::*;
use super::*;

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
        .route("/internal/ui/services", get(ui::consul_services))
        .route("/signpost/ui/nodes", get(ui::nodes))
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
