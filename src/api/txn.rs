//! `/v1/txn`: up to 64 KV operations applied atomically, with Consul's
//! verbs, result shape (`{"Results": [...], "Errors": null}`) and error
//! shape (409 with `{"Results": null, "Errors": [{"OpIndex", "What"}]}`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use super::kv::MAX_VALUE;
use super::shapes::KvOut;
use super::{json_body, reply, Api, ApiError, ApiResult};
use crate::registry::{KvEntry, Txn};

type Shared = State<Arc<Api>>;

/// Consul's `txn_max_ops` default.
pub(super) const MAX_OPS: usize = 64;

/// One operation: Consul's kinds, of which only `KV` runs here.
#[derive(Deserialize)]
struct Op {
    #[serde(rename = "KV")]
    kv: Option<KvOp>,
    #[serde(rename = "Node")]
    node: Option<IgnoredAny>,
    #[serde(rename = "Service")]
    service: Option<IgnoredAny>,
    #[serde(rename = "Check")]
    check: Option<IgnoredAny>,
    #[serde(rename = "Session")]
    session: Option<IgnoredAny>,
}

impl Op {
    fn kind(&self) -> &'static str {
        [
            (self.node.is_some(), "Node"),
            (self.service.is_some(), "Service"),
            (self.check.is_some(), "Check"),
            (self.session.is_some(), "Session"),
        ]
        .into_iter()
        .find_map(|(present, kind)| present.then_some(kind))
        .unwrap_or("")
    }
}

#[derive(Deserialize)]
struct KvOp {
    #[serde(rename = "Verb")]
    verb: String,
    #[serde(rename = "Key", default)]
    key: String,
    #[serde(rename = "Value", default)]
    value: Option<String>,
    #[serde(rename = "Flags", default)]
    flags: u64,
    #[serde(rename = "Index", default)]
    index: u64,
    #[serde(rename = "Session", default)]
    session: String,
}

/// What one operation gives back: entries (with or without their value).
enum Out {
    Entries(Vec<Value>),
}

fn entry(e: &KvEntry, with_value: bool) -> Value {
    let mut v = serde_json::to_value(KvOut::new(e)).expect("kv entry serializes");
    if !with_value {
        v["Value"] = Value::Null;
    }
    json!({ "KV": v })
}

/// Runs one operation inside the transaction; `Err` is Consul's `What`.
fn run(api: &Api, txn: &mut Txn<'_>, op: &KvOp, value: Vec<u8>) -> Result<Out, String> {
    let key = op.key.as_str();
    let current = |txn: &Txn<'_>| txn.state().kv_get(key).cloned();
    let written = |txn: &Txn<'_>| {
        let e = txn.state().kv_get(key).expect("just written").clone();
        Out::Entries(vec![entry(&e, false)])
    };
    let missing = || format!("key {key:?} doesn't exist");
    match op.verb.as_str() {
        "set" => {
            txn.kv_put(key, value, op.flags, None);
            Ok(written(txn))
        }
        "cas" => {
            if !txn.kv_put(key, value, op.flags, Some(op.index)) {
                return Err(format!("failed to set key {key:?}, index is stale"));
            }
            Ok(written(txn))
        }
        "lock" | "unlock" => {
            let lock = op.verb == "lock";
            if txn.state().session(&op.session).is_none() {
                return Err(format!("invalid session {:?}", op.session));
            }
            if lock && api.sessions.delayed(key) {
                return Err(format!(
                    "failed to lock key {key:?}, lock delay of its last holder is in effect"
                ));
            }
            let done = if lock {
                txn.kv_acquire(key, value, op.flags, &op.session)
            } else {
                txn.kv_release(key, value, op.flags, &op.session)
            };
            match (done, lock) {
                (true, _) => Ok(written(txn)),
                (false, true) => Err(format!("failed to lock key {key:?}, lock is already held")),
                (false, false) => Err(format!(
                    "failed to unlock key {key:?}, lock isn't held, or is held by another session"
                )),
            }
        }
        "get" => {
            let e = current(txn).ok_or_else(missing)?;
            Ok(Out::Entries(vec![entry(&e, true)]))
        }
        "get-tree" => Ok(Out::Entries(
            txn.state().kv_prefix(key).map(|e| entry(e, true)).collect(),
        )),
        "check-index" => {
            let e = current(txn).ok_or_else(missing)?;
            if e.modify_index != op.index {
                return Err(format!(
                    "current modify index {} != {}",
                    e.modify_index, op.index
                ));
            }
            Ok(Out::Entries(vec![entry(&e, false)]))
        }
        "check-session" => {
            let e = current(txn).ok_or_else(missing)?;
            let holder = e.session.as_deref().unwrap_or("");
            if holder != op.session {
                return Err(format!("current session {holder:?} != {:?}", op.session));
            }
            Ok(Out::Entries(vec![entry(&e, false)]))
        }
        "check-not-exists" => match current(txn) {
            Some(_) => Err(format!("key {key:?} exists")),
            None => Ok(Out::Entries(Vec::new())),
        },
        "delete" => {
            txn.kv_delete(key, None);
            Ok(Out::Entries(Vec::new()))
        }
        "delete-tree" => {
            txn.kv_delete_tree(key);
            Ok(Out::Entries(Vec::new()))
        }
        "delete-cas" => {
            if !txn.kv_delete(key, Some(op.index)) {
                return Err(format!("failed to delete key {key:?}, index is stale"));
            }
            Ok(Out::Entries(Vec::new()))
        }
        other => Err(format!("unknown KV verb {other:?}")),
    }
}

pub(super) async fn txn(State(api): Shared, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let ops: Vec<Op> = json_body(body)?;
    if ops.len() > MAX_OPS {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "Transaction contains too many operations ({} > {MAX_OPS})",
                ops.len()
            ),
        });
    }
    // Decode everything before touching the registry: a bad request is a
    // 400 and never a half-applied write.
    let mut decoded = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let Some(kv) = &op.kv else {
            let kind = op.kind();
            return Err(ApiError::bad_request(format!(
                "operation {i}: only KV operations are supported here, not {kind:?}"
            )));
        };
        if kv.key.is_empty() && !matches!(kv.verb.as_str(), "get-tree" | "delete-tree") {
            return Err(ApiError::bad_request(format!(
                "operation {i}: missing key name"
            )));
        }
        let value = match &kv.value {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| {
                    ApiError::bad_request(format!("operation {i}: value is not base64: {e}"))
                })?,
        };
        if value.len() > MAX_VALUE {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("operation {i}: value exceeds {MAX_VALUE} byte limit"),
            });
        }
        decoded.push((kv, value));
    }
    let outcome = api
        .registry
        .write_api(|txn| {
            txn.all_or_nothing(|txn| {
                let mut results = Vec::new();
                for (i, (op, value)) in decoded.iter().cloned().enumerate() {
                    match run(&api, txn, op, value) {
                        Ok(Out::Entries(e)) => results.extend(e),
                        Err(what) => return Err(json!({"OpIndex": i, "What": what})),
                    }
                }
                Ok(results)
            })
        })
        .await?;
    let index = api.registry.index();
    Ok(match outcome {
        Ok(results) => reply(index, &json!({"Results": results, "Errors": null})),
        Err(error) => {
            let mut r = reply(index, &json!({"Results": null, "Errors": [error]}));
            *r.status_mut() = StatusCode::CONFLICT;
            r.into_response()
        }
    })
}
