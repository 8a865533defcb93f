//! Running one check: an HTTP request or a TCP connect, bounded by its
//! timeout, turned into a status and an output line.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::consul_client::cause;
use crate::registry::Health;

/// Clients shared by every HTTP check, so connections to a target are
/// reused from one run to the next.
pub struct HttpClients {
    verified: reqwest::Client,
    /// For checks with TLSSkipVerify.
    unverified: reqwest::Client,
}

impl HttpClients {
    pub fn new() -> HttpClients {
        let build = |skip: bool| {
            reqwest::Client::builder()
                .danger_accept_invalid_certs(skip)
                .user_agent("signpost health check")
                .pool_idle_timeout(Duration::from_secs(90))
                .build()
                .expect("a TLS backend is compiled in")
        };
        HttpClients {
            verified: build(false),
            unverified: build(true),
        }
    }
}

impl Default for HttpClients {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::registry::model::cap_output as cap;

pub struct HttpCheck<'a> {
    pub url: &'a str,
    pub method: &'a str,
    pub headers: &'a BTreeMap<String, Vec<String>>,
    pub body: &'a str,
    pub tls_skip_verify: bool,
    pub timeout: Duration,
}

/// 2xx is passing, 429 warning, anything else (or no answer) critical.
pub async fn http(clients: &HttpClients, c: &HttpCheck<'_>) -> (Health, String) {
    let client = if c.tls_skip_verify {
        &clients.unverified
    } else {
        &clients.verified
    };
    let method = match reqwest::Method::from_bytes(c.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => return (Health::Critical, format!("invalid method {:?}", c.method)),
    };
    let mut req = client
        .request(method, c.url)
        .header("Accept", "text/plain, text/*, */*");
    for (name, values) in c.headers {
        for v in values {
            req = req.header(name.as_str(), v.as_str());
        }
    }
    if !c.body.is_empty() {
        req = req.body(c.body.to_string());
    }
    let run = async {
        let mut resp = req.send().await?;
        let status = resp.status();
        let mut body = Vec::new();
        while body.len() < crate::registry::model::check_output_max() {
            match resp.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    };
    match tokio::time::timeout(c.timeout, run).await {
        Err(_) => (
            Health::Critical,
            format!("{} {}: timed out after {:?}", c.method, c.url, c.timeout),
        ),
        Ok(Err(e)) => (
            Health::Critical,
            cap(format!("{} {}: {}", c.method, c.url, cause(&e))),
        ),
        Ok(Ok((status, body))) => {
            let health = if status.is_success() {
                Health::Passing
            } else if status.as_u16() == 429 {
                Health::Warning
            } else {
                Health::Critical
            };
            let text = String::from_utf8_lossy(&body);
            (
                health,
                cap(format!(
                    "HTTP {} {}: {} Output: {}",
                    c.method, c.url, status, text
                )),
            )
        }
    }
}

/// A TCP connect that succeeds is passing.
pub async fn tcp(address: &str, timeout: Duration) -> (Health, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => (Health::Passing, format!("TCP connect {address}: Success")),
        Ok(Err(e)) => (Health::Critical, cap(format!("dial tcp {address}: {e}"))),
        Err(_) => (
            Health::Critical,
            format!("dial tcp {address}: timed out after {timeout:?}"),
        ),
    }
}
