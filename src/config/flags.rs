//! The command line's options; each is also a key of the TOML file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;

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

    /// Cluster mode: share one registry with every signpost pointed at this
    /// etcd (its client URLs, comma-separated, e.g.
    /// http://10.0.0.1:2379,http://10.0.0.2:2379). etcd is then the store:
    /// no --data-dir.
    #[arg(long = "etcd", value_name = "URLS", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// The etcd key prefix the cluster's keys live under. [default: /signpost]
    #[arg(long = "etcd-prefix", value_name = "PREFIX")]
    pub etcd_prefix: Option<String>,

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
