//! A client for etcd's v3 API through its JSON gateway (`/v3/...`), over
//! the same reqwest signpost already uses.
//!
//! Why not a gRPC client crate: the ones for etcd generate their code from
//! `.proto` files at build time and need a system `protoc`, and the README's
//! one `cargo build` must stand alone. etcd 3.4 serves every call signpost
//! needs (range, txn, watch, leases, member list, status) as JSON on its
//! client port; keys and values travel base64-encoded and 64-bit numbers as
//! strings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

/// How long one call to one endpoint may take before the next endpoint is
/// tried.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, thiserror::Error)]
#[error("etcd {endpoint}: {reason}")]
pub struct EtcdError {
    pub endpoint: String,
    pub reason: String,
}

/// The endpoints of one etcd cluster. A call goes to the endpoint that
/// answered last and moves on to the next when it cannot be reached or
/// answers that it has no leader.
pub struct Etcd {
    endpoints: Vec<String>,
    /// The endpoint to try first. An atomic: read and set by every call.
    first: AtomicUsize,
    calls: reqwest::Client,
    /// For the watch stream, which stays open: no overall timeout.
    streams: reqwest::Client,
}

fn de_num<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Num {
        S(String),
        N(u64),
    }
    match Num::deserialize(d)? {
        Num::N(n) => Ok(n),
        Num::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

fn de_b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    B64.decode(s).map_err(serde::de::Error::custom)
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// The end of the range of keys that start with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Debug, Deserialize, Default)]
pub struct Header {
    #[serde(default, deserialize_with = "de_num")]
    pub revision: u64,
}

#[derive(Debug, Deserialize)]
pub struct Kv {
    #[serde(deserialize_with = "de_b64")]
    pub key: Vec<u8>,
    #[serde(default, deserialize_with = "de_b64")]
    pub value: Vec<u8>,
    #[serde(default, deserialize_with = "de_num")]
    pub create_revision: u64,
    #[serde(default, deserialize_with = "de_num")]
    pub mod_revision: u64,
}

#[derive(Debug, Deserialize)]
pub struct WatchEvent {
    /// Absent for PUT (the gateway leaves out default values).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    pub kv: Kv,
}

impl WatchEvent {
    pub fn is_delete(&self) -> bool {
        self.kind.as_deref() == Some("DELETE")
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct WatchResult {
    #[serde(default)]
    pub header: Header,
    #[serde(default)]
    pub canceled: bool,
    #[serde(default, deserialize_with = "de_num")]
    pub compact_revision: u64,
    #[serde(default)]
    pub cancel_reason: String,
    #[serde(default)]
    pub events: Vec<WatchEvent>,
}

/// A write of a transaction: a put or a delete of one key, compared
/// against the modification revision it expects (0: absent), if any.
pub struct TxnOp {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    pub expect: Option<u64>,
}

/// A member of the etcd cluster.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

impl Etcd {
    pub fn new(endpoints: Vec<String>) -> Result<Etcd, EtcdError> {
        let build = |timeout: Option<Duration>| {
            let b = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .pool_max_idle_per_host(4);
            match timeout {
                Some(t) => b.timeout(t),
                None => b,
            }
            .build()
            .map_err(|e| EtcdError {
                endpoint: endpoints.join(","),
                reason: format!("cannot build an HTTP client: {e}"),
            })
        };
        Ok(Etcd {
            calls: build(Some(CALL_TIMEOUT))?,
            streams: build(None)?,
            endpoints,
            first: AtomicUsize::new(0),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let start = self.first.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let endpoint = &self.endpoints[at];
            let fail = |reason: String| EtcdError {
                endpoint: endpoint.clone(),
                reason,
            };
            let sent = self
                .calls
                .post(format!("{endpoint}{path}"))
                .json(body)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = Some(fail(crate::consul_client::cause(&e)));
                    continue;
                }
            };
            let status = resp.status();
            let value: Value = match resp.json().await {
                Ok(v) => v,
                Err(e) => {
                    last = Some(fail(format!("unreadable answer ({status}): {e}")));
                    continue;
                }
            };
            if status.is_success() {
                self.first.store(at, Ordering::Relaxed);
                return Ok(value);
            }
            let message = value
                .get("message")
                .or_else(|| value.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string();
            let err = fail(format!("{status}: {message}"));
            // gRPC's Unavailable (no leader, stopping): another member may
            // do; anything else is an answer.
            if value.get("code").and_then(Value::as_u64) == Some(14) {
                last = Some(err);
                continue;
            }
            return Err(err);
        }
        Err(last.unwrap_or_else(|| EtcdError {
            endpoint: String::new(),
            reason: "no endpoints".into(),
        }))
    }

    /// Every key under `prefix`, and the revision they were read at.
    pub async fn range(&self, prefix: &[u8]) -> Result<(u64, Vec<Kv>), EtcdError> {
        #[derive(Deserialize)]
        struct Range {
            #[serde(default)]
            header: Header,
            #[serde(default)]
            kvs: Vec<Kv>,
        }
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))}),
            )
            .await?;
        let r: Range = serde_json::from_value(v).map_err(|e| self.bad(e))?;
        Ok((r.header.revision, r.kvs))
    }

    /// The highest modification revision among the keys under `prefix`
    /// (0: none): a cheap way to tell that the store has a change a
    /// watch has not delivered.
    pub async fn latest_mod(&self, prefix: &[u8]) -> Result<u64, EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)),
                        "limit": "1", "sort_order": "DESCEND", "sort_target": "MOD",
                        "keys_only": true}),
            )
            .await?;
        Ok(v["kvs"][0]["mod_revision"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    fn bad(&self, e: serde_json::Error) -> EtcdError {
        EtcdError {
            endpoint: self.endpoints[self.first.load(Ordering::Relaxed)].clone(),
            reason: format!("unexpected answer: {e}"),
        }
    }

    /// Commits `ops` if every key is at the revision it expects. Returns
    /// whether it did, and the revision of the store after the call.
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<(bool, u64), EtcdError> {
        let compare: Vec<Value> = ops
            .iter()
            .filter_map(|o| {
                let expect = o.expect?;
                Some(
                    json!({"key": b64(&o.key), "target": "MOD", "result": "EQUAL",
                            "mod_revision": expect.to_string()}),
                )
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|o| match &o.value {
                Some(v) => json!({"request_put": {"key": b64(&o.key), "value": b64(v)}}),
                None => json!({"request_delete_range": {"key": b64(&o.key)}}),
            })
            .collect();
        #[derive(Deserialize)]
        struct Txn {
            #[serde(default)]
            header: Header,
            #[serde(default)]
            succeeded: bool,
        }
        let v = self
            .call(
                "/v3/kv/txn",
                &json!({"compare": compare, "success": success}),
            )
            .await?;
        let t: Txn = serde_json::from_value(v).map_err(|e| self.bad(e))?;
        Ok((t.succeeded, t.header.revision))
    }

    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        lease: Option<u64>,
    ) -> Result<u64, EtcdError> {
        let mut body = json!({"key": b64(key), "value": b64(value)});
        if let Some(l) = lease {
            body["lease"] = json!(l.to_string());
        }
        let v = self.call("/v3/kv/put", &body).await?;
        let h: Header = serde_json::from_value(v["header"].clone()).map_err(|e| self.bad(e))?;
        Ok(h.revision)
    }

    /// A lease of `ttl`; returns its ID.
    pub async fn grant(&self, ttl: Duration) -> Result<u64, EtcdError> {
        #[derive(Deserialize)]
        struct Grant {
            #[serde(rename = "ID", deserialize_with = "de_num")]
            id: u64,
        }
        let v = self
            .call(
                "/v3/lease/grant",
                &json!({"TTL": ttl.as_secs().to_string()}),
            )
            .await?;
        let g: Grant = serde_json::from_value(v).map_err(|e| self.bad(e))?;
        Ok(g.id)
    }

    /// Renews a lease; returns the TTL it has now (0: it is gone).
    pub async fn keepalive(&self, lease: u64) -> Result<u64, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))
            .await?;
        let ttl = v["result"]["TTL"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["result"]["TTL"].as_u64())
            .unwrap_or(0);
        Ok(ttl)
    }

    pub async fn revoke(&self, lease: u64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .await
            .map(drop)
    }

    pub async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let v = self.call("/v3/cluster/member/list", &json!({})).await?;
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        Ok(v["members"]
            .as_array()
            .map(|a| a.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|m| Member {
                id: m["ID"].as_str().unwrap_or_default().to_string(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: strings(&m["peerURLs"]),
                client_urls: strings(&m["clientURLs"]),
            })
            .collect())
    }

    /// The ID of the member that leads, as the endpoint asked sees it.
    pub async fn leader(&self) -> Result<String, EtcdError> {
        let v = self.call("/v3/maintenance/status", &json!({})).await?;
        Ok(v["leader"].as_str().unwrap_or_default().to_string())
    }

    /// Opens a watch of every key under `prefix` from revision `from`, on
    /// the first endpoint that takes it.
    pub async fn watch(&self, prefix: &[u8], from: u64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }});
        let n = self.endpoints.len();
        let start = self.first.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            let endpoint = &self.endpoints[at];
            match self
                .streams
                .post(format!("{endpoint}/v3/watch"))
                .json(&body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    return Ok(Watch {
                        endpoint: endpoint.clone(),
                        resp: r,
                        buf: Vec::new(),
                    })
                }
                Ok(r) => {
                    last = Some(EtcdError {
                        endpoint: endpoint.clone(),
                        reason: format!("watch refused: {}", r.status()),
                    })
                }
                Err(e) => {
                    last = Some(EtcdError {
                        endpoint: endpoint.clone(),
                        reason: crate::consul_client::cause(&e),
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| EtcdError {
            endpoint: String::new(),
            reason: "no endpoints".into(),
        }))
    }
}

/// An open watch: a stream of JSON objects, one per response.
pub struct Watch {
    pub endpoint: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
}

/// The most a watch keeps of a response not yet complete: an etcd
/// response is at most its request limit (1.5 MiB by default) times a few
/// events.
const WATCH_BUFFER_MAX: usize = 256 << 20;

impl Watch {
    /// The next response; `None` when the stream ended.
    pub async fn next(&mut self) -> Result<Option<WatchResult>, EtcdError> {
        loop {
            if let Some(v) = self.take()? {
                if let Some(e) = v.get("error") {
                    return Err(self.fail(format!("watch failed: {e}")));
                }
                let r: WatchResult = serde_json::from_value(v["result"].clone())
                    .map_err(|e| self.fail(format!("unexpected watch response: {e}")))?;
                return Ok(Some(r));
            }
            if self.buf.len() > WATCH_BUFFER_MAX {
                return Err(self.fail("a watch response over 256 MiB".into()));
            }
            match self.resp.chunk().await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c),
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(crate::consul_client::cause(&e))),
            }
        }
    }

    fn fail(&self, reason: String) -> EtcdError {
        EtcdError {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// One whole JSON object from the front of the buffer, if there is one.
    fn take(&mut self) -> Result<Option<Value>, EtcdError> {
        let start = self
            .buf
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(self.buf.len());
        if start == self.buf.len() {
            self.buf.clear();
            return Ok(None);
        }
        let mut it = serde_json::Deserializer::from_slice(&self.buf[start..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                let used = start + it.byte_offset();
                self.buf.drain(..used);
                Ok(Some(v))
            }
            Some(Err(e)) if e.is_eof() => Ok(None),
            Some(Err(e)) => Err(self.fail(format!("unreadable watch stream: {e}"))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_past_every_key_under_it() {
        assert_eq!(prefix_end(b"/signpost/"), b"/signpost0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn gateway_numbers_come_as_strings_and_puts_leave_out_their_type() {
        let r: WatchResult = serde_json::from_str(
            r#"{"header":{"revision":"3"},"events":[{"kv":{"key":"L3QvYQ==","create_revision":"2","mod_revision":"2","version":"1","value":"djE="}},{"type":"DELETE","kv":{"key":"L3QvYQ==","mod_revision":"3"}}]}"#,
        )
        .unwrap();
        assert_eq!(r.header.revision, 3);
        assert_eq!(r.events[0].kv.key, b"/t/a");
        assert_eq!(r.events[0].kv.value, b"v1");
        assert!(!r.events[0].is_delete() && r.events[1].is_delete());
        assert_eq!(r.events[1].kv.mod_revision, 3);
    }
}
