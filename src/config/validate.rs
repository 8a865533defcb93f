//! Flags and file merged and validated into a [`Config`]: every value
//! checked, so that a `Config` cannot hold a bad one.

use std::net::{IpAddr, SocketAddr};

use super::file::*;
use super::*;

impl Config {
    /// Flags over the file over the defaults, each value checked; `origin`
    /// names where a bad value came from (the file, or the flags).
    pub(super) fn merge(
        flags: &Flags,
        file: FileConfig,
        origin: &str,
    ) -> Result<Config, ConfigError> {
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
                    max_connections: file
                        .consul_max_connections
                        .unwrap_or(8)
                        .max(crate::sync::consul::Budget::MIN),
                })
            }
        };
        let etcd: Vec<String> = if !flags.etcd.is_empty() {
            flags.etcd.clone()
        } else {
            match &file.etcd {
                None => Vec::new(),
                Some(OneOrMany::One(u)) => vec![u.clone()],
                Some(OneOrMany::Many(v)) => v.clone(),
            }
        };
        let cluster = if etcd.is_empty() {
            None
        } else {
            let mut endpoints = Vec::new();
            for url in &etcd {
                let url = url.trim().trim_end_matches('/').to_string();
                if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 9 {
                    return Err(invalid(format!(
                        "etcd: {url:?} is not an http:// or https:// URL"
                    )));
                }
                endpoints.push(url);
            }
            let prefix = flags
                .etcd_prefix
                .clone()
                .or(file.etcd_prefix.clone())
                .unwrap_or_else(|| "/signpost".into());
            let prefix = prefix.trim_end_matches('/').to_string();
            if !prefix.starts_with('/') || prefix.len() < 2 {
                return Err(invalid(format!(
                    "etcd_prefix: {prefix:?} must start with / and name something (e.g. /signpost)"
                )));
            }
            if flags.data_dir.is_some() || file.data_dir.is_some() {
                return Err(invalid(
                    "etcd and data_dir: in cluster mode etcd is the store; leave out data_dir"
                        .into(),
                ));
            }
            if consul.is_some() {
                return Err(invalid(
                    "etcd and consul: a member of a signpost cluster cannot also mirror a Consul agent".into(),
                ));
            }
            Some(ClusterConfig {
                endpoints,
                prefix,
                lease_ttl: crate::cluster::DEFAULT_LEASE_TTL,
            })
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
            cluster,
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
}

/// A value that must be usable as one DNS label.
pub(super) fn check_label(what: &str, value: &str) -> Result<(), String> {
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

pub(super) fn host_name() -> String {
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
pub(super) fn ttl_map(spec: TtlSpec) -> Result<TtlMap, String> {
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
