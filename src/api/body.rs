//! Request bodies: JSON decoded as Consul decodes it, field names matched
//! whatever their case or underscores (user maps kept as sent).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::*;

/// The field names request bodies use, as the definitions spell them.
pub(super) const FIELDS: &[&str] = &[
    "Address",
    "AliasService",
    "Args",
    "Body",
    "Check",
    "CheckID",
    "Checks",
    "Datacenter",
    "Definition",
    "DeregisterCriticalServiceAfter",
    "DockerContainerID",
    "EnableTagOverride",
    "FailuresBeforeCritical",
    "FailuresBeforeWarning",
    "GRPC",
    "H2PING",
    "HTTP",
    "Header",
    "ID",
    "Interval",
    "Kind",
    "Meta",
    "Method",
    "Name",
    "Node",
    "NodeMeta",
    "Notes",
    "OSService",
    "Output",
    "Passing",
    "Port",
    "Service",
    "ServiceID",
    "SkipNodeUpdate",
    "Status",
    "SuccessBeforePassing",
    "TCP",
    "TLSSkipVerify",
    "TTL",
    "TaggedAddresses",
    "Tags",
    "Timeout",
    "Type",
    "UDP",
    "Warning",
    "Weights",
    "ScriptArgs",
    "ServiceMeta",
    "KV",
    "Verb",
    "Template",
    "Regexp",
    "RemoveEmptyTags",
    "OnlyPassing",
    "Failover",
    "Datacenters",
    "NearestN",
    "DNS",
    "Token",
    "IgnoreCheckIDs",
    "Near",
    "Key",
    "Value",
    "Flags",
    "Index",
    "Session",
];

/// Maps whose keys are the user's (kept as sent), not field names.
pub(super) const USER_MAPS: &[&str] = &[
    "Meta",
    "NodeMeta",
    "ServiceMeta",
    "TaggedAddresses",
    "Header",
];

/// FIELDS by their folded spelling, built once: a body's every key is
/// looked up here (folding every field for every key cost a few hundred
/// allocations a registration).
pub(super) static FOLDED_FIELDS: std::sync::LazyLock<
    std::collections::HashMap<String, &'static str>,
> = std::sync::LazyLock::new(|| FIELDS.iter().map(|f| (folded(f), *f)).collect());

pub(crate) fn folded(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Renames keys to the spelling the definitions take, matching as Consul
/// decodes: case and underscores ignored, so `serviceid`, `service_id` and
/// `ServiceID` are one field (python-consul sends the first).
pub(crate) fn canonical_keys(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            // Only keys spelled otherwise move; a body in Consul's own
            // spelling (the common case) is left as parsed.
            let renames: Vec<(String, &'static str)> = map
                .keys()
                .filter(|k| !FIELDS.contains(&k.as_str()))
                .filter_map(|k| {
                    let canonical = FOLDED_FIELDS.get(folded(k).as_str())?;
                    Some((k.clone(), *canonical))
                })
                .collect();
            for (old, new) in renames {
                if let Some(v) = map.remove(&old) {
                    map.insert(new.to_string(), v);
                }
            }
            for (k, val) in map.iter_mut() {
                if !USER_MAPS.contains(&k.as_str()) {
                    canonical_keys(val);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonical_keys),
        _ => {}
    }
}

/// Parses a JSON request body, keys matched as Consul matches them; a bad
/// one is a 400 with serde's reason.
pub fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body_bytes(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("request decode failed: empty body"));
    }
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))?;
    canonical_keys(&mut value);
    serde_json::from_value(value)
        .map_err(|e| ApiError::bad_request(format!("request decode failed: {e}")))
}

pub fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError {
        status: e.status(),
        message: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body too large: the limit is {MAX_BODY} bytes")
        } else {
            format!("cannot read request body: {e}")
        },
    })
}
