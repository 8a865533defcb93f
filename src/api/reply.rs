//! Replies: JSON with `X-Consul-Index`, `?filter=` applied, and blocking
//! reads that wait for the index to pass the one asked.

use std::collections::BTreeMap;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::filter::Filter;
use super::*;
use crate::registry::{State, Topic};

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
        topic: Topic<'_>,
        view: impl Fn(&State) -> Result<(u64, Vec<u8>), ApiError>,
    ) -> ApiResult {
        let (index, body) = self.wait_for(params, topic, view).await?;
        let mut r = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
        index_headers(r.headers_mut(), index);
        Ok(r)
    }

    /// The blocking-query loop: `view` computes a result and its index from
    /// the registry; while that index is not above the client's `?index=`,
    /// wait for a change to `topic` (no polling), up to `?wait` plus
    /// jitter, then answer with what there is. `topic` must move whenever
    /// the view's index can: a change elsewhere never wakes the query.
    pub async fn wait_for<T>(
        &self,
        params: &Params,
        topic: Topic<'_>,
        view: impl Fn(&State) -> Result<(u64, T), ApiError>,
    ) -> Result<(u64, T), ApiError> {
        self.check_dc(params)?;
        let min_index = params.u64("index")?.unwrap_or(0);
        let deadline = wait_deadline(params)?;
        let mut changes = self.registry.subscribe_to(topic);
        loop {
            changes.borrow_and_update();
            let (index, body) = self.registry.read(&view)?;
            let index = index.max(1);
            let expired = tokio::time::Instant::now() >= deadline;
            if min_index == 0 || index > min_index || expired {
                return Ok((index, body));
            }
            // Woken by the next change to the topic; the view decides
            // whether it moved this query's index. A connection told to
            // make room for a newcomer answers now with what there is.
            let change = changes.changed();
            let held = match crate::net::CONNECTION.try_with(Arc::clone) {
                Ok(conn) => tokio::time::timeout_at(deadline, conn.hold(change)).await,
                Err(_) => tokio::time::timeout_at(deadline, async { Some(change.await) }).await,
            };
            if let Ok(None) = held {
                let (index, body) = self.registry.read(&view)?;
                return Ok((index.max(1), body));
            }
        }
    }
}
