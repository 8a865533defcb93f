//! signpost's own operational endpoints: liveness, readiness, metrics and
//! the state of the Consul sync.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{reply, Api, ApiError, ApiResult};

type Shared = State<Arc<Api>>;

/// Alive: the process answers HTTP.
pub(super) async fn live() -> &'static str {
    "ok\n"
}

/// Ready to answer DNS truthfully and take writes: zones are loaded (they
/// are, once the listener runs), in sidecar mode the first full sync is
/// done, and the store (with --data-dir) accepts writes.
pub(super) async fn ready(State(api): Shared) -> Response {
    let store = api.registry.store_status();
    if store.is_degraded() {
        let reason = store.reason().unwrap_or_default().replace('\n', " ");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the store refuses writes (DNS and reads go on): {reason}\n"),
        )
            .into_response();
    }
    if let Some(c) = &api.cluster {
        let why = if !c.is_loaded() {
            "not ready: reading the registry from etcd and joining the cluster\n".to_string()
        } else if !c.is_reachable() {
            format!(
                "not ready: etcd ({}) is out of reach: DNS and reads go on from what this member has, writes are refused\n",
                c.endpoints().join(",")
            )
        } else {
            String::new()
        };
        if !why.is_empty() {
            return (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
        }
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

pub(super) async fn metrics(State(api): Shared) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        current_metrics(&api),
    )
        .into_response()
}

/// `/v1/agent/metrics`: Consul's JSON shape (`Gauges`, `Counters`,
/// `Samples`), or with `?format=prometheus` the text `/metrics` serves.
/// Counters are signpost's totals since start (Consul's are per 10 s
/// interval; tools read `Count` and `Sum` either way).
pub(super) async fn agent_metrics(State(api): Shared, params: super::Params) -> ApiResult {
    let text = current_metrics(&api);
    match params.get("format") {
        Some("prometheus") => Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response()),
        None | Some("") => Ok(reply(api.registry.index(), &consul_shape(&text))),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown format {other:?}: use prometheus, or none for JSON"
        ))),
    }
}

/// One sample line of the text format: name, labels, value.
fn sample(line: &str) -> Option<(&str, serde_json::Map<String, serde_json::Value>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut map = serde_json::Map::new();
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(
            k.trim_start_matches(',').to_string(),
            v.trim_end_matches('"').into(),
        );
    }
    Some((name, map, value))
}

/// Prometheus text → Consul's agent metrics JSON.
fn consul_shape(text: &str) -> serde_json::Value {
    use serde_json::json;
    let mut kinds = std::collections::HashMap::new();
    let (mut gauges, mut counters) = (Vec::new(), Vec::new());
    // Histograms: (name, labels) → (count, sum).
    let mut histograms: Vec<(String, serde_json::Value, f64, f64)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                kinds.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let dotted = |n: &str| n.replacen('_', ".", 1);
        if let Some(base) = name.strip_suffix("_total") {
            if kinds.get(base).map(String::as_str) == Some("counter") {
                counters.push(json!({
                    "Name": dotted(base), "Count": value, "Rate": 0.0, "Sum": value,
                    "Min": value, "Max": value, "Mean": value, "Stddev": 0.0, "Labels": labels,
                }));
                continue;
            }
        }
        for (suffix, is_sum) in [("_count", false), ("_sum", true)] {
            let Some(base) = name.strip_suffix(suffix) else {
                continue;
            };
            if kinds.get(base).map(String::as_str) != Some("histogram") {
                continue;
            }
            let labels = serde_json::Value::Object(labels.clone());
            let i = match histograms.iter().position(|h| h.0 == base && h.1 == labels) {
                Some(i) => i,
                None => {
                    histograms.push((base.to_string(), labels, 0.0, 0.0));
                    histograms.len() - 1
                }
            };
            if is_sum {
                histograms[i].3 = value;
            } else {
                histograms[i].2 = value;
            }
        }
        if kinds.get(name).map(String::as_str) == Some("gauge") {
            gauges.push(json!({"Name": dotted(name), "Value": value, "Labels": labels}));
        }
    }
    let samples: Vec<_> = histograms
        .into_iter()
        .map(|(name, labels, count, sum)| {
            let mean = if count > 0.0 { sum / count } else { 0.0 };
            json!({
                "Name": name.replacen('_', ".", 1), "Count": count, "Rate": 0.0, "Sum": sum,
                "Min": mean, "Max": mean, "Mean": mean, "Stddev": 0.0, "Labels": labels,
            })
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "Timestamp": utc_timestamp(now),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": samples,
    })
}

/// Unix seconds as Go prints a UTC time, as Consul's `Timestamp`:
/// `2017-08-08 02:55:10 +0000 UTC`.
fn utc_timestamp(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Sidecar mode's staleness brought up to date, then every metric as
/// text (the other components' collectors read their stats themselves).
fn current_metrics(api: &Api) -> String {
    if let Some(c) = &api.consul {
        c.stats.staleness.set(c.staleness());
    }
    api.metrics.render()
}

/// Sidecar mode's sync: whether it is complete, how stale the view is,
/// the last error.
pub(super) async fn docker_status(State(api): Shared) -> ApiResult {
    match &api.docker {
        Some(d) => Ok(reply(api.registry.index(), &d.status())),
        None => Err(ApiError::not_found(
            "no Docker source: signpost was started without --docker",
        )),
    }
}

pub(super) async fn sync_status(State(api): Shared) -> ApiResult {
    match &api.consul {
        Some(c) => Ok(reply(api.registry.index(), &c.status())),
        None => Err(ApiError::not_found(
            "not in sidecar mode: signpost was started without --consul",
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_as_go_prints_them() {
        assert_eq!(super::utc_timestamp(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            super::utc_timestamp(1_502_160_910),
            "2017-08-08 02:55:10 +0000 UTC"
        );
        assert_eq!(
            super::utc_timestamp(951_825_600),
            "2000-02-29 12:00:00 +0000 UTC"
        );
    }
}
