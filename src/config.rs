//! Configuration: command-line flags and an optional TOML file, parsed and
//! then validated into [`Config`], a type that cannot hold bad values.
//!
//! Every option can be given as a flag or as a key of the same name
//! (snake_case) in the file named by `--config`; a flag wins over the file,
//! the file wins over the default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Deserialize;

pub use crate::api::serve::HttpLimits;
use crate::dns::name::DomainName;
pub use crate::dns::settings::{
    Balance, DnsConfig, Recursors, Soa, TtlMap, DEFAULT_ALLOW_RECURSION, DEFAULT_UDP_PAYLOAD,
    DEFAULT_UDP_PAYLOAD_TRUSTED,
};
use crate::located::Located;
pub use crate::sync::consul::ConsulConfig;
pub use crate::sync::docker::{DockerConfig, DEFAULT_DOCKER};

pub const DEFAULT_DNS: &str = "127.0.0.1:8600";
pub const DEFAULT_HTTP: &str = "127.0.0.1:8500";
/// Sidecar mode's defaults: clear of every port a Consul agent on the same
/// host uses (8300-8302, 8500-8503, 8600).
pub const SIDECAR_DNS: &str = "127.0.0.1:8653";
pub const SIDECAR_HTTP: &str = "127.0.0.1:8580";
pub const DEFAULT_DOMAIN: &str = "consul";
pub const DEFAULT_DATACENTER: &str = "dc1";

/// The options, each also settable in the TOML file under the same name.
#[derive(Debug, Args, Default, Clone)]
pub struct Flags {
    /// TOML file with any of the options below (snake_case keys); flags win
    /// over the file.
    #[arg(long, short = 'c', value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,

    /// Address to serve DNS on, over UDP and TCP. Repeat the flag to listen
    /// on several addresses. Port 0 picks a free port (the same one for UDP
    /// and TCP). [default: 127.0.0.1:8600]
    #[arg(long = "dns", value_name = "ADDR", global = true)]
    pub dns: Vec<SocketAddr>,

    /// Address of the HTTP listener (Consul-compatible API, metrics).
    /// [default: 127.0.0.1:8500]
    #[arg(long, value_name = "ADDR", global = true)]
    pub http: Option<SocketAddr>,

    /// Directory of service definitions (`*.json`) loaded at start.
    #[arg(long, value_name = "DIR", global = true)]
    pub zones: Option<PathBuf>,

    /// Directory where registrations made through the HTTP API are kept
    /// across restarts. Without it they live in memory only.
    #[arg(long = "data-dir", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,

    /// When the store in --data-dir cannot be read (damaged, empty, not a
    /// signpost store), move it aside to `signpost.redb.damaged-<time>` and
    /// start with an empty one instead of refusing to start. The damaged
    /// file is kept, never deleted.
    #[arg(long = "move-damaged-store", global = true)]
    pub move_damaged_store: bool,

    /// The DNS domain signpost is authoritative for. [default: consul]
    #[arg(long, value_name = "DOMAIN", global = true)]
    pub domain: Option<String>,

    /// A second domain answered like --domain, each answer in the domain
    /// the question used (for a migration from one domain to another).
    #[arg(long = "alt-domain", value_name = "DOMAIN", global = true)]
    pub alt_domain: Option<String>,

    /// The datacenter this signpost serves; `name.service.<dc>.<domain>`
    /// names it explicitly. [default: dc1]
    #[arg(long, value_name = "DC", global = true)]
    pub datacenter: Option<String>,

    /// The name of signpost's own node, on which instances from service
    /// definitions live. [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,

    /// Sidecar mode: mirror the catalog and health of the Consul agent at
    /// this URL (e.g. http://127.0.0.1:8500). Listeners then default to
    /// 127.0.0.1:8653 (DNS) and 127.0.0.1:8580 (HTTP), clear of Consul's.
    #[arg(long = "consul", value_name = "URL", global = true)]
    pub consul: Option<String>,

    /// ACL token for the Consul agent.
    #[arg(
        long = "consul-token",
        value_name = "TOKEN",
        env = "CONSUL_HTTP_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub consul_token: Option<String>,

    /// CA certificate (PEM) to verify an https:// Consul agent.
    #[arg(long = "consul-ca-file", value_name = "FILE", global = true)]
    pub consul_ca_file: Option<PathBuf>,

    /// Client certificate (PEM) for an agent that verifies clients.
    #[arg(long = "consul-client-cert", value_name = "FILE", global = true)]
    pub consul_client_cert: Option<PathBuf>,

    /// Key (PEM) of --consul-client-cert.
    #[arg(long = "consul-client-key", value_name = "FILE", global = true)]
    pub consul_client_key: Option<PathBuf>,

    /// Serve the web UI at /ui/ on the HTTP listener. [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", global = true)]
    pub ui: Option<bool>,

    /// Register running containers from the Docker engine, as Registrator
    /// does: at URL, or $DOCKER_HOST, or unix:///var/run/docker.sock.
    #[arg(long = "docker", value_name = "URL", num_args = 0..=1, default_missing_value = "", global = true)]
    pub docker: Option<String>,

    /// The address published ports are registered with (Registrator's
    /// -ip). [default: the node address]
    #[arg(long = "docker-host-ip", value_name = "ADDR", global = true)]
    pub docker_host_ip: Option<IpAddr>,

    /// Register exposed ports at the container's own address instead of
    /// published ports at the host's (Registrator's -internal).
    #[arg(long = "docker-internal", global = true)]
    pub docker_internal: bool,

    /// With --docker-internal, the network whose address to register when
    /// a container is on several. [default: the first, by name]
    #[arg(long = "docker-network", value_name = "NAME", global = true)]
    pub docker_network: Option<String>,

    /// Upstream resolver for names outside signpost's zones, ADDR or
    /// ADDR:PORT (port 53 when left out). Repeat for several.
    #[arg(long = "recursor", value_name = "ADDR[:PORT]", global = true)]
    pub recursor: Vec<String>,

    /// How long to wait for one upstream before trying the next (a Go
    /// duration such as 2s or 500ms). [default: 2s]
    #[arg(long = "recursor-timeout", value_name = "DURATION", global = true)]
    pub recursor_timeout: Option<String>,

    /// Which upstream to ask first: sequential (in the order given) or
    /// random. [default: sequential]
    #[arg(long = "recursor-strategy", value_name = "STRATEGY", global = true)]
    pub recursor_strategy: Option<String>,

    /// Clients (CIDR) that may have names outside signpost's zones
    /// resolved; others get REFUSED for them. Repeat for several.
    /// [default: loopback, 10/8, 172.16/12, 192.168/16, fc00::/7]
    #[arg(long = "allow-recursion", value_name = "CIDR", global = true)]
    pub allow_recursion: Vec<String>,

    /// Token that HTTP writes must carry (`X-Consul-Token`, `?token=` or
    /// `Authorization: Bearer`); reads stay open. Prefer --http-token-file:
    /// a flag is visible in the process list.
    #[arg(long = "http-token", value_name = "TOKEN", global = true)]
    pub http_token: Option<String>,

    /// File holding the HTTP write token (surrounding whitespace ignored).
    #[arg(long = "http-token-file", value_name = "FILE", global = true)]
    pub http_token_file: Option<PathBuf>,

    /// Allow the HTTP listener on a non-loopback address without a token,
    /// letting anyone who reaches it register and deregister services.
    #[arg(long = "http-allow-unauthenticated", global = true)]
    pub http_allow_unauthenticated: bool,

    /// Log every DNS query at info level (target signpost::query). Off by
    /// default: nothing is logged per query otherwise.
    #[arg(long = "query-log", global = true)]
    pub query_log: bool,

    /// Log format: text or json. [default: text]
    #[arg(long = "log-format", value_name = "FORMAT", global = true)]
    pub log_format: Option<String>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive
    /// such as `signpost=debug`. RUST_LOG wins when set. [default: info]
    #[arg(long = "log-level", value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,
}

/// The TOML file: the same options as the flags, plus DNS tuning that has
/// no flag of its own.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    dns: Option<OneOrMany<SocketAddr>>,
    http: Option<SocketAddr>,
    zones: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    domain: Option<String>,
    alt_domain: Option<String>,
    datacenter: Option<String>,
    node: Option<String>,
    log_level: Option<String>,
    query_log: Option<bool>,
    log_format: Option<String>,
    http_token: Option<String>,
    http_token_file: Option<PathBuf>,
    http_token_for_reads: Option<bool>,
    check_output_max_size: Option<usize>,
    session_ttl_min: Option<Seconds>,
    http_max_connections: Option<usize>,
    http_max_connections_per_client: Option<usize>,
    http_header_timeout: Option<Seconds>,
    http_body_timeout: Option<Seconds>,
    http_idle_timeout: Option<Seconds>,
    http_allow_unauthenticated: Option<bool>,
    ui: Option<bool>,
    /// Names a browser may reach the HTTP API by, besides IP addresses and
    /// localhost (DNS rebinding protection).
    http_allowed_hosts: Option<Vec<String>>,
    /// `true` for the default engine, or its URL.
    docker: Option<DockerSetting>,
    docker_host_ip: Option<IpAddr>,
    docker_internal: Option<bool>,
    docker_network: Option<String>,
    consul: Option<String>,
    consul_token: Option<String>,
    consul_ca_file: Option<PathBuf>,
    consul_client_cert: Option<PathBuf>,
    consul_client_key: Option<PathBuf>,
    /// Blocking queries held open against the agent at most. [default: 128]
    consul_max_watches: Option<usize>,
    recursor: Option<OneOrMany<String>>,
    recursor_timeout: Option<Seconds>,
    recursor_strategy: Option<String>,
    allow_recursion: Option<Vec<String>>,
    /// Forwarded answers kept at most. [default: 10000]
    recursor_cache_size: Option<usize>,
    recursor_max_in_flight: Option<usize>,
    recursor_max_in_flight_per_client: Option<usize>,
    #[serde(default)]
    dns_config: DnsFileConfig,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// `[dns_config]` in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsFileConfig {
    /// TTL of service records: seconds or a duration for every service, or
    /// a map of name, `prefix*` or `*` to one. [default: 0, as Consul]
    service_ttl: Option<TtlSpec>,
    /// TTL of node records. [default: 0, as Consul]
    node_ttl: Option<Seconds>,
    /// Largest UDP reply to an EDNS client. [default: 1232]
    udp_payload_max: Option<u16>,
    /// Largest UDP reply to an EDNS client in the trusted ranges
    /// (`allow_recursion`), up to what it offers. [default: 8192]
    udp_payload_max_trusted: Option<u16>,
    /// The server ID answered to NSID and CHAOS `id.server`/`hostname.bind`.
    /// [default: the node name]
    server_id: Option<String>,
    /// DNS cookie secret, 32 hex digits, shared by a fleet. [default:
    /// random at each start]
    cookie_secret: Option<String>,
    /// The secret before a rotation, still accepted.
    cookie_secret_previous: Option<String>,
    /// Answers a second per /24 (/56) to untrusted UDP clients without a
    /// valid server cookie; 0 turns limiting off. [default: 20]
    rrl_responses_per_second: Option<u32>,
    /// Every Nth rate-limited answer is sent truncated (0: none). [default: 2]
    rrl_slip: Option<u32>,
    /// Drop instances in warning state too, not only critical ones.
    only_passing: Option<bool>,
    /// Most A/AAAA records in one answer; 0 for no limit. [default: 0]
    a_record_limit: Option<u32>,
    /// Most answer records in a UDP reply to a client without EDNS; 0 for
    /// no limit. [default: 3, as Consul]
    udp_answer_limit: Option<u32>,
    /// random, round-robin or weighted. [default: random]
    load_balancing: Option<String>,
    /// Node meta as TXT records in the additional section of node and SRV
    /// answers. [default: true, as Consul]
    enable_additional_node_meta_txt: Option<bool>,
    /// A UDP query that waited longer than this (ms) in the receive queue
    /// is dropped unanswered. [default: 1000]
    shed_after_ms: Option<u32>,
    soa: Option<SoaFileConfig>,
}

/// A TTL given as whole seconds or as a duration string (`"30s"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u32),
    Text(String),
}

impl Seconds {
    /// As a duration above zero, for `what`.
    fn duration(&self, what: &str) -> Result<std::time::Duration, String> {
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

    fn get(&self, what: &str) -> Result<u32, String> {
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
enum TtlSpec {
    All(Seconds),
    Map(std::collections::BTreeMap<String, Seconds>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SoaFileConfig {
    refresh: Option<u32>,
    retry: Option<u32>,
    expire: Option<u32>,
    min_ttl: Option<u32>,
}

/// A configuration problem: which file (or flag), which line, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file (or a file it names) cannot be read or parsed.
    #[error(transparent)]
    File(#[from] crate::located::Located),
    #[error("{origin}: {reason}")]
    Invalid { origin: String, reason: String },
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub dns: Vec<SocketAddr>,
    pub http: SocketAddr,
    pub zones: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// What to do with a store that cannot be read.
    pub damaged_store: crate::registry::store::Damaged,
    pub domain: DomainName,
    pub alt_domain: Option<DomainName>,
    pub datacenter: String,
    pub node: String,
    pub log_level: String,
    pub query_log: bool,
    pub log_json: bool,
    /// Required on HTTP writes when set.
    pub http_token: Option<String>,
    /// Reads (KV, catalog, health, agent) need the token too, as Consul's
    /// ACL default policy `deny`; `/health`, `/ready`, `/metrics` stay open.
    pub http_token_for_reads: bool,
    pub http_limits: HttpLimits,
    /// Check output kept at most, in bytes (Consul's name).
    pub check_output_max_size: usize,
    /// The shortest session TTL accepted (Consul's `session_ttl_min`).
    pub session_ttl_min: std::time::Duration,
    pub recursors: Recursors,
    /// Sidecar mode when set.
    pub consul: Option<ConsulConfig>,
    /// The Docker engine as a source, when set.
    pub docker: Option<DockerConfig>,
    /// The web UI at /ui/.
    pub ui: bool,
    /// Host names browsers may use for the API (see `browser_host_check`).
    pub http_allowed_hosts: Vec<String>,
    pub dns_config: DnsConfig,
}

/// `docker = true` or `docker = "unix:///run/docker.sock"` in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum DockerSetting {
    On(bool),
    Url(String),
}

/// `ADDR` or `ADDR:PORT`, IPv6 as `::1` or `[::1]:53`.
pub fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    let t = text.trim();
    if let Ok(a) = t.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = t
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!("recursor {text:?} is not ADDR or ADDR:PORT"))
}

impl Config {
    /// What the DNS answer sets are built with.
    pub fn answer_config(&self) -> crate::dns::answers::AnswerConfig {
        crate::dns::answers::AnswerConfig {
            domains: std::iter::once(self.domain.clone())
                .chain(self.alt_domain.clone())
                .collect(),
            datacenter: self.datacenter.clone(),
            dns: self.dns_config.clone(),
            node_name: self.node.clone(),
            node_address: self.node_address(),
        }
    }

    /// A configuration for tests and embedding: listeners on loopback port 0,
    /// no zones, no data dir.
    pub fn ephemeral() -> Config {
        Config {
            dns: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            http: SocketAddr::from(([127, 0, 0, 1], 0)),
            zones: None,
            data_dir: None,
            damaged_store: crate::registry::store::Damaged::Refuse,
            domain: DomainName::new(DEFAULT_DOMAIN).expect("default domain is valid"),
            alt_domain: None,
            datacenter: DEFAULT_DATACENTER.to_string(),
            node: "signpost".to_string(),
            log_level: "info".to_string(),
            query_log: false,
            log_json: false,
            http_token: None,
            http_token_for_reads: false,
            http_limits: HttpLimits::default(),
            check_output_max_size: crate::registry::model::DEFAULT_CHECK_OUTPUT_MAX,
            session_ttl_min: std::time::Duration::from_secs(10),
            recursors: Recursors::default(),
            consul: None,
            docker: None,
            ui: true,
            http_allowed_hosts: Vec::new(),
            dns_config: DnsConfig::default(),
        }
    }

    /// Reads the file named by `--config` (if any), merges the flags over
    /// it and validates the result.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let origin = flags
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "command line".to_string());
        Self::merge(flags, file, &origin)
    }

    fn merge(flags: &Flags, file: FileConfig, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            origin: origin.to_string(),
            reason,
        };
        let consul_url = flags.consul.clone().or(file.consul.clone());
        let (default_dns, default_http) = if consul_url.is_some() {
            (SIDECAR_DNS, SIDECAR_HTTP)
        } else {
            (DEFAULT_DNS, DEFAULT_HTTP)
        };
        let dns = if !flags.dns.is_empty() {
            flags.dns.clone()
        } else {
            match file.dns {
                Some(OneOrMany::One(a)) => vec![a],
                Some(OneOrMany::Many(v)) => v,
                None => vec![default_dns.parse().expect("default dns address")],
            }
        };
        if dns.is_empty() {
            return Err(invalid("dns: at least one listen address is needed".into()));
        }
        let domain_text = flags
            .domain
            .clone()
            .or(file.domain)
            .unwrap_or_else(|| DEFAULT_DOMAIN.to_string());
        let domain = DomainName::new(&domain_text).map_err(|e| invalid(format!("domain: {e}")))?;
        let alt_domain = match flags.alt_domain.clone().or(file.alt_domain) {
            Some(text) => {
                let alt =
                    DomainName::new(&text).map_err(|e| invalid(format!("alt_domain: {e}")))?;
                if alt == domain {
                    return Err(invalid(format!("alt_domain: {alt} is the domain itself")));
                }
                Some(alt)
            }
            None => None,
        };
        let datacenter = flags
            .datacenter
            .clone()
            .or(file.datacenter)
            .unwrap_or_else(|| DEFAULT_DATACENTER.to_string());
        check_label("datacenter", &datacenter).map_err(invalid)?;
        let node = match flags.node.clone().or(file.node) {
            Some(n) => n,
            None => host_name(),
        };
        check_label("node", &node).map_err(invalid)?;
        let d = file.dns_config;
        let udp_payload_max = d.udp_payload_max.unwrap_or(DEFAULT_UDP_PAYLOAD);
        if udp_payload_max < 512 {
            return Err(invalid(format!(
                "dns_config.udp_payload_max: {udp_payload_max} is below the 512 bytes every DNS client accepts"
            )));
        }
        let secret = |v: &Option<String>, key: &str| {
            v.as_deref()
                .map(|h| {
                    crate::dns::cookie::parse_secret(h)
                        .map_err(|e| invalid(format!("dns_config.{key}: {e}")))
                })
                .transpose()
        };
        let cookie_secret = secret(&d.cookie_secret, "cookie_secret")?;
        let cookie_secret_previous = secret(&d.cookie_secret_previous, "cookie_secret_previous")?;
        let udp_payload_max_trusted = d
            .udp_payload_max_trusted
            .unwrap_or(DEFAULT_UDP_PAYLOAD_TRUSTED)
            .max(udp_payload_max);
        let http = flags
            .http
            .or(file.http)
            .unwrap_or_else(|| default_http.parse().expect("default http address"));
        let token_file = flags.http_token_file.clone().or(file.http_token_file);
        let http_token = match (flags.http_token.clone().or(file.http_token), token_file) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| Located::file(&path, format!("cannot read http token file: {e}")))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if http_token.as_deref() == Some("") {
            return Err(invalid("http_token: the token is empty".into()));
        }
        let allow_open =
            flags.http_allow_unauthenticated || file.http_allow_unauthenticated.unwrap_or(false);
        if !http.ip().is_loopback() && http_token.is_none() && !allow_open {
            return Err(invalid(format!(
                "http: {http} is reachable from other hosts and no http_token is set; \
                 set one, or pass --http-allow-unauthenticated if anyone who reaches it may register services"
            )));
        }
        let upstream_texts: Vec<String> = if !flags.recursor.is_empty() {
            flags.recursor.clone()
        } else {
            match file.recursor {
                Some(OneOrMany::One(a)) => vec![a],
                Some(OneOrMany::Many(v)) => v,
                None => Vec::new(),
            }
        };
        let upstreams = upstream_texts
            .iter()
            .map(|t| parse_upstream(t))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let hd = HttpLimits::default();
        let http_limits = HttpLimits {
            max_connections: file
                .http_max_connections
                .unwrap_or(hd.max_connections)
                .max(1),
            max_connections_per_client: file
                .http_max_connections_per_client
                .unwrap_or(hd.max_connections_per_client)
                .max(1),
            header_timeout: match &file.http_header_timeout {
                Some(t) => t.duration("http_header_timeout").map_err(invalid)?,
                None => hd.header_timeout,
            },
            body_timeout: match &file.http_body_timeout {
                Some(t) => t.duration("http_body_timeout").map_err(invalid)?,
                None => hd.body_timeout,
            },
            idle_timeout: match &file.http_idle_timeout {
                Some(t) => t.duration("http_idle_timeout").map_err(invalid)?,
                None => hd.idle_timeout,
            },
        };
        let timeout = match (&flags.recursor_timeout, &file.recursor_timeout) {
            (Some(t), _) => Seconds::Text(t.clone()),
            (None, Some(t)) => t.clone(),
            (None, None) => Seconds::Text("2s".into()),
        };
        let timeout = match timeout {
            Seconds::Number(n) => std::time::Duration::from_secs(n.into()),
            Seconds::Text(t) => crate::registry::definition::parse_duration(&t)
                .map_err(|e| invalid(format!("recursor_timeout: {e}")))?,
        };
        if timeout.is_zero() {
            return Err(invalid("recursor_timeout: must be above zero".into()));
        }
        let random = match flags
            .recursor_strategy
            .clone()
            .or(file.recursor_strategy)
            .as_deref()
        {
            None | Some("sequential") => false,
            Some("random") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "recursor_strategy: {other:?} is not sequential or random"
                )))
            }
        };
        let allow_texts: Vec<String> = if !flags.allow_recursion.is_empty() {
            flags.allow_recursion.clone()
        } else {
            file.allow_recursion.unwrap_or_else(|| {
                DEFAULT_ALLOW_RECURSION
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            })
        };
        let allow = allow_texts
            .iter()
            .map(|c| {
                c.parse::<ipnet::IpNet>()
                    .or_else(|_| c.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        invalid(format!(
                            "allow_recursion: {c:?} is not a CIDR such as 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let recursors = Recursors {
            upstreams,
            timeout,
            random,
            allow,
            cache_size: file.recursor_cache_size.unwrap_or(10_000),
            max_in_flight: file.recursor_max_in_flight.unwrap_or(1024).max(1),
            max_in_flight_per_client: file.recursor_max_in_flight_per_client.unwrap_or(256).max(1),
        };
        let consul = match consul_url {
            None => None,
            Some(url) => {
                let url = url.trim().trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(format!(
                        "consul: {url:?} is not an http:// or https:// URL"
                    )));
                }
                let cert = flags.consul_client_cert.clone().or(file.consul_client_cert);
                let key = flags.consul_client_key.clone().or(file.consul_client_key);
                let client_identity = match (cert, key) {
                    (Some(c), Some(k)) => Some((c, k)),
                    (None, None) => None,
                    _ => {
                        return Err(invalid(
                            "consul_client_cert and consul_client_key go together".into(),
                        ))
                    }
                };
                Some(ConsulConfig {
                    url,
                    token: flags
                        .consul_token
                        .clone()
                        .or(file.consul_token)
                        .filter(|t| !t.is_empty()),
                    ca_file: flags.consul_ca_file.clone().or(file.consul_ca_file),
                    client_identity,
                    max_watches: file.consul_max_watches.unwrap_or(128).max(1),
                })
            }
        };
        let docker_url = match (flags.docker.clone(), file.docker.clone()) {
            (Some(url), _) if !url.is_empty() => Some(url),
            (Some(_), _) | (None, Some(DockerSetting::On(true))) => Some(
                std::env::var("DOCKER_HOST")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| DEFAULT_DOCKER.to_string()),
            ),
            (None, Some(DockerSetting::Url(url))) => Some(url),
            (None, Some(DockerSetting::On(false)) | None) => None,
        };
        let docker = match docker_url {
            None => None,
            Some(url) => {
                let url = url.trim().trim_end_matches('/').to_string();
                if !["unix://", "tcp://", "http://"]
                    .iter()
                    .any(|p| url.starts_with(p))
                {
                    return Err(invalid(format!(
                        "docker: {url:?} is not a unix://, tcp:// or http:// address"
                    )));
                }
                Some(DockerConfig {
                    url,
                    host_ip: flags.docker_host_ip.or(file.docker_host_ip),
                    internal: flags.docker_internal || file.docker_internal.unwrap_or(false),
                    network: flags.docker_network.clone().or(file.docker_network),
                })
            }
        };
        let log_json = match flags.log_format.clone().or(file.log_format).as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(format!(
                    "log_format: {other:?} is not text or json"
                )))
            }
        };
        let query_log = flags.query_log || file.query_log.unwrap_or(false);
        let soa_file = d.soa.unwrap_or_default();
        let soa_default = Soa::default();
        Ok(Config {
            dns,
            http,
            zones: flags.zones.clone().or(file.zones),
            data_dir: flags.data_dir.clone().or(file.data_dir),
            damaged_store: if flags.move_damaged_store {
                crate::registry::store::Damaged::MoveAside
            } else {
                crate::registry::store::Damaged::Refuse
            },
            domain,
            alt_domain,
            datacenter: datacenter.to_ascii_lowercase(),
            node,
            log_level: flags
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".to_string()),
            query_log,
            log_json,
            http_token,
            http_token_for_reads: file.http_token_for_reads.unwrap_or(false),
            http_limits,
            check_output_max_size: match file.check_output_max_size {
                Some(0) => return Err(invalid("check_output_max_size: must be above zero".into())),
                Some(n) => n,
                None => crate::registry::model::DEFAULT_CHECK_OUTPUT_MAX,
            },
            session_ttl_min: match &file.session_ttl_min {
                Some(t) => t.duration("session_ttl_min").map_err(invalid)?,
                None => std::time::Duration::from_secs(10),
            },
            recursors,
            consul,
            docker,
            ui: flags.ui.or(file.ui).unwrap_or(true),
            http_allowed_hosts: file.http_allowed_hosts.unwrap_or_default(),
            dns_config: DnsConfig {
                service_ttl: match d.service_ttl {
                    Some(spec) => ttl_map(spec).map_err(invalid)?,
                    None => TtlMap::all(0),
                },
                node_ttl: match &d.node_ttl {
                    Some(t) => t.get("dns_config.node_ttl").map_err(invalid)?,
                    None => 0,
                },
                udp_payload_max,
                only_passing: d.only_passing.unwrap_or(false),
                a_record_limit: d.a_record_limit.unwrap_or(0),
                udp_answer_limit: d.udp_answer_limit.unwrap_or(3),
                load_balancing: match &d.load_balancing {
                    Some(b) => Balance::parse(b).map_err(invalid)?,
                    None => Balance::Random,
                },
                udp_payload_max_trusted,
                server_id: d.server_id.unwrap_or_default(),
                cookie_secret,
                cookie_secret_previous,
                rrl_responses_per_second: d.rrl_responses_per_second.unwrap_or(20),
                rrl_slip: d.rrl_slip.unwrap_or(2),
                node_meta_txt: d.enable_additional_node_meta_txt.unwrap_or(true),
                shed_after_ms: d.shed_after_ms.unwrap_or(1000).max(1),
                soa: Soa {
                    refresh: soa_file.refresh.unwrap_or(soa_default.refresh),
                    retry: soa_file.retry.unwrap_or(soa_default.retry),
                    expire: soa_file.expire.unwrap_or(soa_default.expire),
                    min_ttl: soa_file.min_ttl.unwrap_or(soa_default.min_ttl),
                },
            },
        })
    }

    /// The address signpost's own node advertises: the first DNS listen
    /// address, or loopback when that is a wildcard.
    pub fn node_address(&self) -> IpAddr {
        let ip = self.dns[0].ip();
        if ip.is_unspecified() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            ip
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
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

/// A value that must be usable as one DNS label.
fn check_label(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 63 {
        return Err(format!("{what}: {value:?} must be 1 to 63 characters long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{what}: {value:?} may hold only letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    // A host name may be fully qualified; the node name is its first label.
    let first = raw.trim().split('.').next().unwrap_or_default();
    if check_label("node", first).is_ok() {
        first.to_string()
    } else {
        "signpost".to_string()
    }
}

/// `dns_config.service_ttl` as a [`TtlMap`].
fn ttl_map(spec: TtlSpec) -> Result<TtlMap, String> {
    let map = match spec {
        TtlSpec::All(s) => return Ok(TtlMap::all(s.get("dns_config.service_ttl")?)),
        TtlSpec::Map(m) => m,
    };
    let mut out = TtlMap::default();
    for (key, value) in map {
        let ttl = value.get(&format!("dns_config.service_ttl.{key}"))?;
        let key = key.to_ascii_lowercase();
        if key == "*" {
            out.set_wildcard(ttl);
        } else if let Some(prefix) = key.strip_suffix('*') {
            if prefix.contains('*') {
                return Err(format!(
                    "dns_config.service_ttl: {key:?} may hold '*' only at its end"
                ));
            }
            out.insert_prefix(prefix, ttl);
        } else if key.contains('*') {
            return Err(format!(
                "dns_config.service_ttl: {key:?} may hold '*' only at its end"
            ));
        } else {
            out.insert_exact(key, ttl);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn flag_wins_over_file() {
        let file = parse("domain = \"example\"\ndatacenter = \"east\"\n").unwrap();
        let flags = Flags {
            domain: Some("flagged".into()),
            ..Flags::default()
        };
        let c = Config::merge(&flags, file, "t.toml").unwrap();
        assert_eq!(c.domain.as_str(), "flagged");
        assert_eq!(c.datacenter, "east");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("domian = \"x\"").unwrap_err();
        assert!(err.message().contains("unknown field"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        let file = parse("datacenter = \"d c\"").unwrap();
        let err = Config::merge(&Flags::default(), file, "t.toml").unwrap_err();
        assert!(err.to_string().starts_with("t.toml: datacenter"), "{err}");
        let file = parse("[dns_config]\nudp_payload_max = 100").unwrap();
        assert!(Config::merge(&Flags::default(), file, "t.toml").is_err());
    }

    #[test]
    fn open_http_needs_a_token_or_consent() {
        let file = parse("http = \"0.0.0.0:8500\"").unwrap();
        let err = Config::merge(&Flags::default(), file, "t.toml").unwrap_err();
        assert!(err.to_string().contains("no http_token"), "{err}");
        let file = parse("http = \"0.0.0.0:8500\"\nhttp_token = \"s3cret\"").unwrap();
        assert!(Config::merge(&Flags::default(), file, "t.toml").is_ok());
        let file = parse("http = \"0.0.0.0:8500\"").unwrap();
        let flags = Flags {
            http_allow_unauthenticated: true,
            ..Flags::default()
        };
        assert!(Config::merge(&flags, file, "t.toml").is_ok());
    }

    #[test]
    fn service_ttl_map_picks_exact_then_longest_prefix_then_star() {
        let file = parse(
            "[dns_config]\nservice_ttl = { \"*\" = 5, \"web\" = \"30s\", \"we*\" = 7, \"w*\" = 9 }\nnode_ttl = \"1m\"",
        )
        .unwrap();
        let c = Config::merge(&Flags::default(), file, "t.toml").unwrap();
        let t = &c.dns_config.service_ttl;
        assert_eq!(
            (t.get("web"), t.get("webby"), t.get("wax"), t.get("db")),
            (30, 7, 9, 5)
        );
        assert_eq!(c.dns_config.node_ttl, 60);
        let file = parse("[dns_config]\nservice_ttl = 12").unwrap();
        let c = Config::merge(&Flags::default(), file, "t.toml").unwrap();
        assert_eq!(c.dns_config.service_ttl.get("anything"), 12);
        let file = parse("[dns_config]\nservice_ttl = { \"a*b\" = 1 }").unwrap();
        assert!(Config::merge(&Flags::default(), file, "t.toml").is_err());
        let file = parse("[dns_config]\nload_balancing = \"fastest\"").unwrap();
        assert!(Config::merge(&Flags::default(), file, "t.toml").is_err());
    }

    #[test]
    fn recursors_and_allowed_clients() {
        let file = parse("recursor = [\"127.0.0.1\", \"[::1]:5353\", \"10.0.0.1:54\"]\nrecursor_timeout = \"500ms\"\nrecursor_strategy = \"random\"\nallow_recursion = [\"10.0.0.0/8\", \"192.0.2.7\"]").unwrap();
        let c = Config::merge(&Flags::default(), file, "t.toml").unwrap();
        let r = &c.recursors;
        assert_eq!(
            r.upstreams,
            [
                "127.0.0.1:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap(),
                "10.0.0.1:54".parse().unwrap()
            ]
        );
        assert_eq!(r.timeout, std::time::Duration::from_millis(500));
        assert!(r.random);
        assert_eq!(r.allow.len(), 2);
        let d = Config::merge(&Flags::default(), FileConfig::default(), "x").unwrap();
        assert!(d.recursors.upstreams.is_empty());
        assert!(d
            .recursors
            .allow
            .iter()
            .any(|n| n.contains(&"192.168.1.1".parse::<IpAddr>().unwrap())));
        for bad in [
            "recursor = \"nope\"",
            "allow_recursion = [\"10/8x\"]",
            "recursor_strategy = \"fastest\"",
        ] {
            assert!(
                Config::merge(&Flags::default(), parse(bad).unwrap(), "t").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn docker_takes_true_a_url_or_the_flag() {
        let c = Config::merge(&Flags::default(), parse("").unwrap(), "t").unwrap();
        assert!(c.docker.is_none());
        let file = parse("docker = \"unix:///run/d.sock\"\ndocker_internal = true").unwrap();
        let c = Config::merge(&Flags::default(), file, "t").unwrap();
        let d = c.docker.unwrap();
        assert_eq!((d.url.as_str(), d.internal), ("unix:///run/d.sock", true));
        let flags = Flags {
            docker: Some("tcp://10.0.0.1:2375".into()),
            ..Flags::default()
        };
        let c = Config::merge(&flags, parse("docker = false").unwrap(), "t").unwrap();
        assert_eq!(c.docker.unwrap().url, "tcp://10.0.0.1:2375");
        let err = Config::merge(
            &Flags::default(),
            parse("docker = \"/var/run/docker.sock\"").unwrap(),
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("unix://"), "{err}");
        let c = Config::merge(&Flags::default(), parse("docker = true").unwrap(), "t").unwrap();
        assert!(
            c.docker.unwrap().url.starts_with("unix://") || std::env::var("DOCKER_HOST").is_ok()
        );
    }

    #[test]
    fn sidecar_mode_moves_off_consuls_ports() {
        let file = parse("consul = \"http://127.0.0.1:8500/\"").unwrap();
        let c = Config::merge(&Flags::default(), file, "t").unwrap();
        assert_eq!(c.consul.as_ref().unwrap().url, "http://127.0.0.1:8500");
        assert_eq!(c.dns, vec![SIDECAR_DNS.parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.http, SIDECAR_HTTP.parse::<SocketAddr>().unwrap());
        for port in [c.dns[0].port(), c.http.port()] {
            assert!(
                !(8300..=8302).contains(&port) && !(8500..=8503).contains(&port) && port != 8600
            );
        }
        assert!(Config::merge(
            &Flags::default(),
            parse("consul = \"127.0.0.1:8500\"").unwrap(),
            "t"
        )
        .is_err());
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_col("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
