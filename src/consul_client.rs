//! One client for a Consul agent's HTTP API (or a signpost's), shared by
//! the CLI's commands and sidecar mode's sync: the base URL, the ACL token,
//! and replies with their `X-Consul-Index`. Also why a request failed
//! ([`cause`]), which the HTTP health checks report too.

use std::time::Duration;

/// A failed request: the agent could not be reached or its reply could
/// not be read.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct CallError {
    pub reason: String,
}

/// A reply, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// `X-Consul-Index`, 0 when absent.
    pub index: u64,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, trimmed and cut to `max` characters, for errors.
    pub fn text(&self, max: usize) -> String {
        String::from_utf8_lossy(&self.body)
            .trim()
            .chars()
            .take(max)
            .collect()
    }
}

#[derive(Debug, Clone)]
pub struct ConsulClient {
    /// `http://host:port` or `https://...`, no trailing slash.
    base: String,
    token: Option<String>,
    /// reqwest's pool: connections are reused across calls.
    http: reqwest::Client,
}

impl ConsulClient {
    /// `addr` as `host:port` or a URL; the token sent as `X-Consul-Token`.
    pub fn new(addr: &str, token: Option<String>, http: reqwest::Client) -> ConsulClient {
        let addr = addr.trim_end_matches('/');
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        ConsulClient { base, token, http }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` (path and query) with an optional body, within
    /// `timeout` when given, and reads the whole reply.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<Reply, CallError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let failed = |e: reqwest::Error| CallError { reason: cause(&e) };
        let resp = req.send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        let index = consul_index(resp.headers());
        let body = resp.bytes().await.map_err(failed)?.to_vec();
        Ok(Reply {
            status,
            index,
            body,
        })
    }
}

/// A reply's `X-Consul-Index`; 0 when absent or not a number.
pub fn consul_index(headers: &reqwest::header::HeaderMap) -> u64 {
    headers
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Why a request failed, from the innermost errors out: reqwest's own
/// message ("error sending request for url") names no reason, its sources
/// do (connection refused, a DNS failure, the TLS alert).
pub fn cause(e: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else if e.is_body() || e.is_decode() {
        "cannot read the response body"
    } else {
        "request failed"
    };
    if parts.is_empty() {
        return format!("{kind}: {e}");
    }
    format!("{kind}: {}", parts.join(": "))
}
