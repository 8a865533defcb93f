//! `/v1/event/fire/:name` and `/v1/event/list`: Consul's user events, which
//! `consul watch -type=event` handlers follow. Consul spreads them by gossip
//! and keeps the last 256 an agent received, in memory only; signpost, one
//! agent, keeps them the same way (not in the store: they were never
//! durable in Consul either).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use base64::Engine;
use regex::Regex;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{body_bytes, reply, wait_deadline, Api, ApiError, ApiResult, Params};
use crate::locks::MutexExt;

type Shared = State<Arc<Api>>;

/// Events kept for `/v1/event/list`, as Consul's agent keeps.
pub const KEPT: usize = 256;
/// Consul's limit on a user event's payload.
pub const MAX_PAYLOAD: usize = 512;

/// The last [`KEPT`] events this agent received.
pub struct Events {
    /// Oldest first. A std mutex: held only to push or copy, never across
    /// an await.
    list: Mutex<VecDeque<Value>>,
    /// Counts events fired (Consul's LTime); watchers block on it.
    ltime: watch::Sender<u64>,
    /// Events fired, and those pushed out of the bounded list.
    fired: prometheus_client::metrics::counter::Counter,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            list: Mutex::new(VecDeque::with_capacity(KEPT)),
            ltime: watch::channel(0).0,
            fired: Default::default(),
            dropped: Default::default(),
        }
    }
}

impl Events {
    pub fn register(&self, m: &mut crate::metrics::Metrics) {
        m.add(
            "events_fired",
            "User events fired through /v1/event/fire",
            self.fired.clone(),
        );
        m.add(
            "events_dropped",
            "User events pushed out of the bounded event list by newer ones",
            self.dropped.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Value>> {
        self.list.locked()
    }
}

/// A filter regex of `?node=`, `?service=` or `?tag=`; empty matches all.
fn regex(params: &Params, key: &str) -> Result<(String, Option<Regex>), ApiError> {
    let text = params.get(key).unwrap_or("").to_string();
    if text.is_empty() {
        return Ok((text, None));
    }
    let re = Regex::new(&text)
        .map_err(|e| ApiError::bad_request(format!("invalid {key} filter {text:?}: {e}")))?;
    Ok((text, Some(re)))
}

pub async fn fire(
    State(api): Shared,
    Path(name): Path<String>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    api.check_dc(&params)?;
    let payload = body_bytes(body)?;
    if payload.len() > MAX_PAYLOAD {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("user event exceeds limit of {MAX_PAYLOAD} bytes"),
        });
    }
    let (node_filter, node_re) = regex(&params, "node")?;
    let (service_filter, service_re) = regex(&params, "service")?;
    let (tag_filter, tag_re) = regex(&params, "tag")?;
    if tag_re.is_some() && service_re.is_none() {
        return Err(ApiError::bad_request(
            "cannot provide tag filter without service filter",
        ));
    }
    let id = super::session::uuid();
    let ltime = *api.events.ltime.borrow() + 1;
    let event = json!({
        "ID": id,
        "Name": name,
        "Payload": (!payload.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&payload)),
        "NodeFilter": node_filter,
        "ServiceFilter": service_filter,
        "TagFilter": tag_filter,
        "Version": 1,
        "LTime": ltime,
    });
    // Delivered to this agent only when its filters match it, as Consul's
    // agents decide for themselves.
    let for_us = node_re.as_ref().is_none_or(|re| re.is_match(&api.node))
        && api.registry.read(|s| {
            service_re.as_ref().is_none_or(|re| {
                s.node_instances(&api.node).any(|v| {
                    re.is_match(&v.instance.name)
                        && tag_re
                            .as_ref()
                            .is_none_or(|t| v.instance.tags.iter().any(|tag| t.is_match(tag)))
                })
            })
        });
    api.events.fired.inc();
    if for_us {
        let mut list = api.events.lock();
        if list.len() == KEPT {
            list.pop_front();
            api.events.dropped.inc();
            tracing::debug!("event list full ({KEPT}): dropped the oldest event");
        }
        list.push_back(event.clone());
        drop(list);
        api.events.ltime.send_replace(ltime);
    }
    Ok(reply(api.registry.index(), &event))
}

/// The list's index: one above the LTime of the newest event, so that it
/// starts at 1 (Consul's clients treat 0 as "no index") and the first
/// event moves it.
pub async fn list(State(api): Shared, params: Params) -> ApiResult {
    api.check_dc(&params)?;
    let name = params.get("name").unwrap_or("").to_string();
    let min_index = params.u64("index")?.unwrap_or(0);
    let deadline = wait_deadline(&params)?;
    let mut ltime = api.events.ltime.subscribe();
    loop {
        let index = *ltime.borrow_and_update() + 1;
        if min_index == 0 || index > min_index || tokio::time::Instant::now() >= deadline {
            let out: Vec<Value> = api
                .events
                .lock()
                .iter()
                .filter(|e| name.is_empty() || e["Name"] == name.as_str())
                .cloned()
                .collect();
            return Ok(reply(index, &out));
        }
        let _ = tokio::time::timeout_at(deadline, ltime.changed()).await;
    }
}
