//! The agent a command talks to (the shared Consul client, its failures
//! worded the CLI's way) and the helpers every command uses.

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use super::{CliError, ClientArgs, Result};
use crate::consul_client::{ConsulClient, Reply};

/// The agent a command talks to: the shared Consul client, whose failures
/// the CLI words its own way.
pub(super) struct Agent {
    pub(super) client: ConsulClient,
}

pub(super) trait ReplyExt: Sized {
    fn json(&self) -> Result<Value>;
    fn ok(self) -> Result<Self>;
}

impl ReplyExt for Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CliError::Consul(format!("unexpected answer from the agent: {e}")))
    }

    fn ok(self) -> Result<Reply> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(CliError::Consul(format!(
                "Unexpected response code: {} ({})",
                self.status,
                self.text(usize::MAX)
            )))
        }
    }
}

impl Agent {
    pub(super) fn new(args: &ClientArgs) -> Result<Agent> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        CliError::Usage(format!("cannot read token file {}: {e}", f.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        // Blocking queries wait up to 10 minutes and a bit.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(700))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Agent {
            client: ConsulClient::new(&args.http_addr, token, http),
        })
    }

    pub(super) fn base(&self) -> &str {
        self.client.base()
    }

    pub(super) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        self.client
            .call(method, path, body, None)
            .await
            .map_err(|e| CliError::Unreachable {
                addr: self.base().to_string(),
                reason: e.reason,
            })
    }

    pub(super) async fn get(&self, path: &str) -> Result<Reply> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub(super) async fn put(&self, path: &str, body: Vec<u8>) -> Result<Reply> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub(super) async fn delete(&self, path: &str) -> Result<Reply> {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// A key or prefix as a URL path (slashes kept).
pub(super) fn kv_path(key: &str) -> String {
    format!(
        "/v1/kv/{}",
        key.split('/')
            .map(|p| form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/")
    )
}

pub(super) fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

pub(super) fn decode(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// Reads `@file`, `-` (stdin) or the text itself.
pub(super) fn read_input(arg: &str) -> Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
        Ok(buf)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {path}: {e}")))
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}
