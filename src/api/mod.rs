//! The HTTP API: Consul's agent, catalog, health, KV and status endpoints,
//! with Consul's shapes, status codes and blocking queries, so Consul's
//! clients (curl recipes, python-consul, Registrator) work unchanged.
//!
//! `agent`, `catalog`, `health` and `kv` hold the handlers, `shapes` the
//! JSON they return. Writes go through [`Registry::write_api`]: stored and
//! visible in DNS before the response is sent.
//!
//! Around them: `router` (every endpoint), `layers` (token, host check,
//! headers, body timeout, refusal reasons), `params`, `body`, `reply`
//! (blocking reads) and `error`.

mod agent;
mod body;
mod catalog;
mod error;
pub mod event;
pub mod filter;
mod health;
mod kv;
mod layers;
mod ops;
mod params;
mod query;
mod reply;
mod router;
pub mod serve;
pub mod session;
mod shapes;
mod txn;
mod ui;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State as AxState;

use crate::registry::Registry;

pub use body::{body_bytes, json_body};
pub use error::{ApiError, ApiResult};
pub use params::{wait_deadline, Params};
pub use reply::{encoded, index_headers, keep, keep_values, reply};
pub use router::router;

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
    /// This member of the cluster (`--etcd`): readiness, leader and peers.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
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
