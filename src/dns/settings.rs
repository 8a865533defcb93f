//! The DNS side's settings, validated by `config`: the answer policy
//! ([`DnsConfig`]) and forwarding ([`Recursors`]). Owned here, next to the
//! code that reads them; `config` builds them from flags and the file.

use std::net::SocketAddr;

/// The largest UDP payload signpost sends to an EDNS client: the DNS flag
/// day 2020 value, which avoids IP fragmentation on common paths.
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;
/// The cap for trusted clients: HAProxy's documented
/// `accepted_payload_size 8192` gets what it asks for.
pub const DEFAULT_UDP_PAYLOAD_TRUSTED: u16 = 8192;

/// Forwarding of names outside signpost's zones.
#[derive(Debug, Clone)]
pub struct Recursors {
    /// Empty: no forwarding (REFUSED, and no RA bit).
    pub upstreams: Vec<SocketAddr>,
    pub timeout: std::time::Duration,
    pub random: bool,
    pub allow: Vec<ipnet::IpNet>,
    pub cache_size: usize,
    /// Forwarded queries in flight at most, and from one client address;
    /// past either the oldest is shed.
    pub max_in_flight: usize,
    pub max_in_flight_per_client: usize,
}

impl Default for Recursors {
    fn default() -> Self {
        Recursors {
            upstreams: Vec::new(),
            timeout: std::time::Duration::from_secs(2),
            random: false,
            allow: DEFAULT_ALLOW_RECURSION
                .iter()
                .map(|c| c.parse().expect("default CIDRs parse"))
                .collect(),
            cache_size: 10_000,
            max_in_flight: 1024,
            max_in_flight_per_client: 256,
        }
    }
}

/// Loopback and the private ranges.
pub const DEFAULT_ALLOW_RECURSION: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
];

/// DNS answer policy, validated.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    pub service_ttl: TtlMap,
    pub node_ttl: u32,
    pub udp_payload_max: u16,
    /// For clients in the trusted ranges (loopback, LAN): fragmentation is
    /// not the risk there that it is on the internet.
    pub udp_payload_max_trusted: u16,
    /// NSID and CHAOS id; empty: the node name.
    pub server_id: String,
    pub cookie_secret: Option<[u8; 16]>,
    pub cookie_secret_previous: Option<[u8; 16]>,
    pub rrl_responses_per_second: u32,
    pub rrl_slip: u32,
    pub only_passing: bool,
    /// 0: no limit.
    pub a_record_limit: u32,
    /// 0: no limit.
    pub udp_answer_limit: u32,
    pub load_balancing: Balance,
    pub node_meta_txt: bool,
    /// Queue age past which UDP queries are shed.
    pub shed_after_ms: u32,
    pub soa: Soa,
}

/// How the records of one answer are ordered, query by query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// A fresh random order every time.
    Random,
    /// Each query starts one record further along.
    RoundRobin,
    /// A random order drawn by weight: an instance comes first as often as
    /// its share of the weights.
    Weighted,
}

impl Balance {
    pub fn parse(s: &str) -> Result<Balance, String> {
        match s {
            "random" => Ok(Balance::Random),
            "round-robin" | "round_robin" => Ok(Balance::RoundRobin),
            "weighted" => Ok(Balance::Weighted),
            other => Err(format!(
                "dns_config.load_balancing: {other:?} is not one of random, round-robin, weighted"
            )),
        }
    }
}

/// Service TTLs: an exact name first, then the longest `prefix*`, then `*`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TtlMap {
    exact: std::collections::HashMap<String, u32>,
    /// Longest prefix first.
    prefixes: Vec<(String, u32)>,
    wildcard: u32,
}

impl TtlMap {
    pub fn all(ttl: u32) -> TtlMap {
        TtlMap {
            wildcard: ttl,
            ..TtlMap::default()
        }
    }

    /// The TTL of every name no other entry covers.
    pub fn set_wildcard(&mut self, ttl: u32) {
        self.wildcard = ttl;
    }

    /// The TTL of one (lower-cased) name.
    pub fn insert_exact(&mut self, name: String, ttl: u32) {
        self.exact.insert(name, ttl);
    }

    /// The TTL of the names starting with `prefix` (the longest wins).
    pub fn insert_prefix(&mut self, prefix: &str, ttl: u32) {
        self.prefixes.push((prefix.to_string(), ttl));
        self.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    }

    /// The TTL for a lower-cased service name.
    pub fn get(&self, service: &str) -> u32 {
        if let Some(t) = self.exact.get(service) {
            return *t;
        }
        self.prefixes
            .iter()
            .find(|(p, _)| service.starts_with(p.as_str()))
            .map(|(_, t)| *t)
            .unwrap_or(self.wildcard)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soa {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    /// Also the TTL of the SOA in negative answers (RFC 2308).
    pub min_ttl: u32,
}

impl Default for Soa {
    /// Consul's defaults.
    fn default() -> Self {
        Soa {
            refresh: 3600,
            retry: 600,
            expire: 86400,
            min_ttl: 0,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            service_ttl: TtlMap::all(0),
            node_ttl: 0,
            udp_payload_max: DEFAULT_UDP_PAYLOAD,
            udp_payload_max_trusted: DEFAULT_UDP_PAYLOAD_TRUSTED,
            server_id: String::new(),
            cookie_secret: None,
            cookie_secret_previous: None,
            rrl_responses_per_second: 20,
            rrl_slip: 2,
            only_passing: false,
            a_record_limit: 0,
            udp_answer_limit: 3,
            load_balancing: Balance::Random,
            node_meta_txt: true,
            shed_after_ms: 1000,
            soa: Soa::default(),
        }
    }
}
