//! `/v1/kv/*`: the key/value store (the configuration-centre use).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use super::shapes::KvOut;
use super::{body_bytes, index_headers, reply, Api, ApiError, ApiResult, Params};
use crate::registry::{Table, Topic};

type Shared = State<Arc<Api>>;

/// Consul's cap on one value.
pub(super) const MAX_VALUE: usize = 512 * 1024;

fn key_of(path: Option<Path<String>>) -> String {
    path.map(|Path(k)| k).unwrap_or_default()
}

enum Found {
    Entries(Vec<serde_json::Value>),
    Keys(Vec<String>),
    Raw(Vec<u8>),
    Missing,
}

pub(super) async fn get(
    State(api): Shared,
    path: Option<Path<String>>,
    params: Params,
) -> ApiResult {
    let key = key_of(path);
    let recurse = params.flag("recurse");
    let keys = params.flag("keys");
    let raw = params.flag("raw");
    let separator = params.get("separator").unwrap_or("").to_string();
    let (index, found) = api
        .wait_for(&params, Topic::Table(Table::Kv), |s| {
            let kv_index = s.tables().kv;
            if keys {
                let listed: BTreeSet<String> = s
                    .kv_prefix(&key)
                    .map(|e| {
                        let rest = &e.key[key.len()..];
                        match rest
                            .find(separator.as_str())
                            .filter(|_| !separator.is_empty())
                        {
                            Some(at) => e.key[..key.len() + at + separator.len()].to_string(),
                            None => e.key.clone(),
                        }
                    })
                    .collect();
                let found = if listed.is_empty() {
                    Found::Missing
                } else {
                    Found::Keys(listed.into_iter().collect())
                };
                return Ok((kv_index, found));
            }
            if recurse {
                let entries: Vec<serde_json::Value> = s
                    .kv_prefix(&key)
                    .map(|e| serde_json::to_value(KvOut::new(e)).expect("kv entry serializes"))
                    .collect();
                let found = if entries.is_empty() {
                    Found::Missing
                } else {
                    Found::Entries(entries)
                };
                return Ok((kv_index, found));
            }
            Ok(match s.kv_get(&key) {
                Some(e) if raw => (e.modify_index, Found::Raw(e.value.clone())),
                Some(e) => (
                    e.modify_index,
                    Found::Entries(vec![
                        serde_json::to_value(KvOut::new(e)).expect("serializes")
                    ]),
                ),
                None => (kv_index, Found::Missing),
            })
        })
        .await?;
    Ok(match found {
        Found::Entries(e) => reply(index, &e),
        Found::Keys(k) => reply(index, &k),
        Found::Raw(bytes) => {
            let mut r =
                ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response();
            index_headers(r.headers_mut(), index);
            r
        }
        Found::Missing => {
            let mut r = StatusCode::NOT_FOUND.into_response();
            index_headers(r.headers_mut(), index);
            r
        }
    })
}

pub(super) async fn put(
    State(api): Shared,
    path: Option<Path<String>>,
    params: Params,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let key = key_of(path);
    if key.is_empty() {
        return Err(ApiError::bad_request("Missing key name"));
    }
    let value = body_bytes(body)?;
    if value.len() > MAX_VALUE {
        return Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("Value exceeds {MAX_VALUE} byte limit"),
        });
    }
    let flags = params.u64("flags")?.unwrap_or(0);
    let cas = params.u64("cas")?;
    let lock = match (params.get("acquire"), params.get("release")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "acquire and release cannot be used together",
            ))
        }
        (Some(s), None) => Some((true, s.to_string())),
        (None, Some(s)) => Some((false, s.to_string())),
        (None, None) => None,
    };
    if let Some((acquire, session)) = lock {
        // A key in its lock delay (its holder's session was invalidated)
        // cannot be acquired yet, as Consul.
        if acquire && api.sessions.delayed(&key) {
            return Ok(reply(api.registry.index(), &false));
        }
        let done = api
            .registry
            .write_api(|txn| {
                if txn.state().session(&session).is_none() {
                    return Err(ApiError {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        message: format!("invalid session {session:?}"),
                    });
                }
                Ok(if acquire {
                    txn.kv_acquire(&key, value.to_vec(), flags, &session)
                } else {
                    txn.kv_release(&key, value.to_vec(), flags, &session)
                })
            })
            .await??;
        return Ok(reply(api.registry.index(), &done));
    }
    let done = api
        .registry
        .write_api(|txn| txn.kv_put(&key, value.to_vec(), flags, cas))
        .await?;
    Ok(reply(api.registry.index(), &done))
}

pub(super) async fn delete(
    State(api): Shared,
    path: Option<Path<String>>,
    params: Params,
) -> ApiResult {
    let key = key_of(path);
    let cas = params.u64("cas")?;
    let done = if params.flag("recurse") {
        api.registry
            .write_api(|txn| {
                txn.kv_delete_tree(&key);
                true
            })
            .await?
    } else {
        if key.is_empty() {
            return Err(ApiError::bad_request("Missing key name"));
        }
        api.registry
            .write_api(|txn| txn.kv_delete(&key, cas))
            .await?
    };
    Ok(reply(api.registry.index(), &done))
}
