//! Configuration: command-line flags and an optional TOML file, parsed and
//! then validated into [`Config`], a type that cannot hold bad values.
//!
//! Every option can be given as a flag or as a key of the same name
//! (snake_case) in the file named by `--config`; a flag wins over the file,
//! the file wins over the default.
//!
//! `flags` holds the command line's options, `file` the TOML file's shape,
//! `validate` turns both into a [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

pub use crate::api::serve::HttpLimits;
pub use crate::cluster::ClusterConfig;
use crate::dns::name::DomainName;
pub use crate::dns::settings::{
    Balance, DnsConfig, Recursors, Soa, TtlMap, DEFAULT_ALLOW_RECURSION, DEFAULT_UDP_PAYLOAD,
    DEFAULT_UDP_PAYLOAD_TRUSTED,
};
use crate::located::Located;
pub use crate::sync::consul::ConsulConfig;
pub use crate::sync::docker::{DockerConfig, DEFAULT_DOCKER};

mod file;
mod flags;
mod validate;

use file::{read_file, FileConfig};

pub use file::line_col;
pub use flags::Flags;
pub use validate::parse_upstream;

pub const DEFAULT_DNS: &str = "127.0.0.1:8600";

pub const DEFAULT_HTTP: &str = "127.0.0.1:8500";

/// Sidecar mode's defaults: clear of every port a Consul agent on the same
/// host uses (8300-8302, 8500-8503, 8600).
pub const SIDECAR_DNS: &str = "127.0.0.1:8653";

pub const SIDECAR_HTTP: &str = "127.0.0.1:8580";

pub const DEFAULT_DOMAIN: &str = "consul";

pub const DEFAULT_DATACENTER: &str = "dc1";

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
    /// Cluster mode when set: the registry lives in etcd.
    pub cluster: Option<ClusterConfig>,
    /// The Docker engine as a source, when set.
    pub docker: Option<DockerConfig>,
    /// The web UI at /ui/.
    pub ui: bool,
    /// Host names browsers may use for the API (see `browser_host_check`).
    pub http_allowed_hosts: Vec<String>,
    pub dns_config: DnsConfig,
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
            cluster: None,
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
