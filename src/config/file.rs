//! The TOML file's shape, as parsed before validation, and where in it a
//! parse error is.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::*;

/// The TOML file: the same options as the flags, plus DNS tuning that has
/// no flag of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) dns: Option<OneOrMany<SocketAddr>>,
    pub(super) http: Option<SocketAddr>,
    pub(super) zones: Option<PathBuf>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) domain: Option<String>,
    pub(super) alt_domain: Option<String>,
    pub(super) datacenter: Option<String>,
    pub(super) node: Option<String>,
    pub(super) log_level: Option<String>,
    pub(super) query_log: Option<bool>,
    pub(super) log_format: Option<String>,
    pub(super) http_token: Option<String>,
    pub(super) http_token_file: Option<PathBuf>,
    pub(super) http_token_for_reads: Option<bool>,
    pub(super) check_output_max_size: Option<usize>,
    pub(super) session_ttl_min: Option<Seconds>,
    pub(super) http_max_connections: Option<usize>,
    pub(super) http_max_connections_per_client: Option<usize>,
    pub(super) http_header_timeout: Option<Seconds>,
    pub(super) http_body_timeout: Option<Seconds>,
    pub(super) http_idle_timeout: Option<Seconds>,
    pub(super) http_allow_unauthenticated: Option<bool>,
    pub(super) ui: Option<bool>,
    /// Names a browser may reach the HTTP API by, besides IP addresses and
    /// localhost (DNS rebinding protection).
    pub(super) http_allowed_hosts: Option<Vec<String>>,
    /// `true` for the default engine, or its URL.
    pub(super) docker: Option<DockerSetting>,
    pub(super) docker_host_ip: Option<IpAddr>,
    pub(super) docker_internal: Option<bool>,
    pub(super) docker_network: Option<String>,
    pub(super) etcd: Option<OneOrMany<String>>,
    pub(super) etcd_prefix: Option<String>,
    pub(super) consul: Option<String>,
    pub(super) consul_token: Option<String>,
    pub(super) consul_ca_file: Option<PathBuf>,
    pub(super) consul_client_cert: Option<PathBuf>,
    pub(super) consul_client_key: Option<PathBuf>,
    /// Connections to the agent at most. [default: 8]
    pub(super) consul_max_connections: Option<usize>,
    pub(super) recursor: Option<OneOrMany<String>>,
    pub(super) recursor_timeout: Option<Seconds>,
    pub(super) recursor_strategy: Option<String>,
    pub(super) allow_recursion: Option<Vec<String>>,
    /// Forwarded answers kept at most. [default: 10000]
    pub(super) recursor_cache_size: Option<usize>,
    pub(super) recursor_max_in_flight: Option<usize>,
    pub(super) recursor_max_in_flight_per_client: Option<usize>,
    #[serde(default)]
    pub(super) dns_config: DnsFileConfig,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// `[dns_config]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DnsFileConfig {
    /// TTL of service records: seconds or a duration for every service, or
    /// a map of name, `prefix*` or `*` to one. [default: 0, as Consul]
    pub(super) service_ttl: Option<TtlSpec>,
    /// TTL of node records. [default: 0, as Consul]
    pub(super) node_ttl: Option<Seconds>,
    /// Largest UDP reply to an EDNS client. [default: 1232]
    pub(super) udp_payload_max: Option<u16>,
    /// Largest UDP reply to an EDNS client in the trusted ranges
    /// (`allow_recursion`), up to what it offers. [default: 8192]
    pub(super) udp_payload_max_trusted: Option<u16>,
    /// The server ID answered to NSID and CHAOS `id.server`/`hostname.bind`.
    /// [default: the node name]
    pub(super) server_id: Option<String>,
    /// DNS cookie secret, 32 hex digits, shared by a fleet. [default:
    /// random at each start]
    pub(super) cookie_secret: Option<String>,
    /// The secret before a rotation, still accepted.
    pub(super) cookie_secret_previous: Option<String>,
    /// Answers a second per /24 (/56) to untrusted UDP clients without a
    /// valid server cookie; 0 turns limiting off. [default: 20]
    pub(super) rrl_responses_per_second: Option<u32>,
    /// Every Nth rate-limited answer is sent truncated (0: none). [default: 2]
    pub(super) rrl_slip: Option<u32>,
    /// Drop instances in warning state too, not only critical ones.
    pub(super) only_passing: Option<bool>,
    /// Most A/AAAA records in one answer; 0 for no limit. [default: 0]
    pub(super) a_record_limit: Option<u32>,
    /// Most answer records in a UDP reply to a client without EDNS; 0 for
    /// no limit. [default: 3, as Consul]
    pub(super) udp_answer_limit: Option<u32>,
    /// random, round-robin or weighted. [default: random]
    pub(super) load_balancing: Option<String>,
    /// Node meta as TXT records in the additional section of node and SRV
    /// answers. [default: true, as Consul]
    pub(super) enable_additional_node_meta_txt: Option<bool>,
    /// A UDP query that waited longer than this (ms) in the receive queue
    /// is dropped unanswered. [default: 1000]
    pub(super) shed_after_ms: Option<u32>,
    pub(super) soa: Option<SoaFileConfig>,
}

/// A TTL given as whole seconds or as a duration string (`"30s"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum Seconds {
    Number(u32),
    Text(String),
}

impl Seconds {
    /// As a duration above zero, for `what`.
    pub(super) fn duration(&self, what: &str) -> Result<std::time::Duration, String> {
        let d = match self {
            Seconds::Number(n) => std::time::Duration::from_secs((*n).into()),
            Seconds::Text(t) => crate::registry::definition::parse_duration(t)
                .map_err(|e| format!("{what}: {e}"))?,
        };
        if d.is_zero() {
            return Err(format!("{what}: must be above zero"));
        }
        Ok(d)
    }

    pub(super) fn get(&self, what: &str) -> Result<u32, String> {
        match self {
            Seconds::Number(n) => Ok(*n),
            Seconds::Text(t) => crate::registry::definition::parse_duration(t)
                .map(|d| d.as_secs().min(u32::MAX as u64) as u32)
                .map_err(|e| format!("{what}: {e}")),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum TtlSpec {
    All(Seconds),
    Map(std::collections::BTreeMap<String, Seconds>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SoaFileConfig {
    pub(super) refresh: Option<u32>,
    pub(super) retry: Option<u32>,
    pub(super) expire: Option<u32>,
    pub(super) min_ttl: Option<u32>,
}

/// `docker = true` or `docker = "unix:///run/docker.sock"` in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum DockerSetting {
    On(bool),
    Url(String),
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Located::file(path, format!("cannot read config file: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((1, 1));
        Located::at(path, line, column, e.message()).into()
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}
