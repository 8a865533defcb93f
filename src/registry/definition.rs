//! Consul's JSON shapes for registrations: the agent service definition
//! (`PUT /v1/agent/service/register`, `{"service": …}` files), the catalog
//! registration (`PUT /v1/catalog/register`) and check definitions.
//!
//! Keys are accepted CamelCase (`DeregisterCriticalServiceAfter`) or
//! snake_case (`deregister_critical_service_after`) as Consul does; unknown
//! keys are ignored as Consul does. Each shape is validated while it is
//! deserialized (`try_from`), so serde_json reports a bad value with the
//! line it is on, and a value of these types is always a valid one.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::model::{
    Check, CheckKind, Connect, Health, Instance, Meta, Node, Source, TaggedAddress, Thresholds,
    Weights,
};

/// Consul's default check timeout.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest interval Consul lets a check run at.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A Go duration string: `"10s"`, `"1m30s"`, `"250ms"`, `"1.5h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {text:?}: {why}");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| bad("missing unit (ns, us, ms, s, m, h)"))?;
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("malformed number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(bad(&format!("unknown unit {other:?}"))),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way Go prints one (`10s`, `1m30s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = d.subsec_millis();
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac > 0 {
        out.push_str(&format!("{s}.{frac:03}s"));
    } else {
        out.push_str(&format!("{s}s"));
    }
    out
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        // Go's JSON encoding of a time.Duration: nanoseconds.
        Nanos(u64),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::Nanos(n)) => Ok(Some(Duration::from_nanos(n))),
        Some(Raw::Text(t)) if t.is_empty() => Ok(None),
        Some(Raw::Text(t)) => parse_duration(&t)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Deserializes the raw shape `R` and validates it into `T` inside the
/// deserializer's map visit, so serde_json stamps a validation error with
/// the line it is on (the end of the offending object).
fn validated<'de, D, R, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    R: Deserialize<'de>,
    T: TryFrom<R, Error = String>,
{
    struct V<R, T>(PhantomData<(R, T)>);
    impl<'de, R, T> serde::de::Visitor<'de> for V<R, T>
    where
        R: Deserialize<'de>,
        T: TryFrom<R, Error = String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
            let raw = R::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
            T::try_from(raw).map_err(serde::de::Error::custom)
        }
    }
    d.deserialize_map(V(PhantomData))
}

fn de_null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `Weights` as Consul sends them.
#[derive(Debug, Clone, Deserialize)]
struct RawWeights {
    #[serde(rename = "Passing", alias = "passing", default)]
    passing: i64,
    #[serde(rename = "Warning", alias = "warning", default)]
    warning: i64,
}

fn weights(raw: Option<RawWeights>) -> Result<Weights, String> {
    let Some(w) = raw else {
        return Ok(Weights::default());
    };
    let passing = u16::try_from(w.passing)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("weights: passing must be 1 to 65535, got {}", w.passing))?;
    let warning = u16::try_from(w.warning)
        .map_err(|_| format!("weights: warning must be 0 to 65535, got {}", w.warning))?;
    Ok(Weights { passing, warning })
}

/// A check as it arrives: in a service definition, in a catalog
/// registration, or on `PUT /v1/agent/check/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawCheck {
    #[serde(
        rename = "ID",
        alias = "id",
        alias = "Id",
        alias = "CheckID",
        alias = "check_id"
    )]
    id: Option<String>,
    #[serde(rename = "Name", alias = "name")]
    name: Option<String>,
    #[serde(rename = "Notes", alias = "notes")]
    notes: Option<String>,
    #[serde(rename = "Node", alias = "node")]
    node: Option<String>,
    #[serde(rename = "ServiceID", alias = "service_id", alias = "ServiceId")]
    service_id: Option<String>,
    #[serde(rename = "Status", alias = "status")]
    status: Option<String>,
    #[serde(rename = "Output", alias = "output")]
    output: Option<String>,
    #[serde(rename = "HTTP", alias = "http", alias = "Http")]
    http: Option<String>,
    #[serde(rename = "Method", alias = "method")]
    method: Option<String>,
    #[serde(
        rename = "Header",
        alias = "header",
        deserialize_with = "de_null_default"
    )]
    header: BTreeMap<String, Vec<String>>,
    #[serde(rename = "Body", alias = "body")]
    body: Option<String>,
    #[serde(rename = "TLSSkipVerify", alias = "tls_skip_verify")]
    tls_skip_verify: Option<bool>,
    #[serde(rename = "TCP", alias = "tcp", alias = "Tcp")]
    tcp: Option<String>,
    #[serde(
        rename = "TTL",
        alias = "ttl",
        alias = "Ttl",
        deserialize_with = "de_duration"
    )]
    ttl: Option<Duration>,
    #[serde(
        rename = "Interval",
        alias = "interval",
        deserialize_with = "de_duration"
    )]
    interval: Option<Duration>,
    #[serde(
        rename = "Timeout",
        alias = "timeout",
        deserialize_with = "de_duration"
    )]
    timeout: Option<Duration>,
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        alias = "deregister_critical_service_after",
        deserialize_with = "de_duration"
    )]
    deregister_critical_service_after: Option<Duration>,
    #[serde(rename = "SuccessBeforePassing", alias = "success_before_passing")]
    success_before_passing: Option<u32>,
    #[serde(rename = "FailuresBeforeWarning", alias = "failures_before_warning")]
    failures_before_warning: Option<u32>,
    #[serde(rename = "FailuresBeforeCritical", alias = "failures_before_critical")]
    failures_before_critical: Option<u32>,
    /// Catalog checks carry their runnable parts here.
    #[serde(rename = "Definition", alias = "definition")]
    definition: Option<Box<RawCheck>>,
    #[serde(
        rename = "Args",
        alias = "args",
        alias = "ScriptArgs",
        alias = "script_args"
    )]
    args: Option<Vec<String>>,
    #[serde(rename = "GRPC", alias = "grpc")]
    grpc: Option<String>,
    #[serde(rename = "DockerContainerID", alias = "docker_container_id")]
    docker: Option<String>,
    #[serde(rename = "AliasService", alias = "alias_service")]
    alias_service: Option<String>,
    #[serde(rename = "H2PING", alias = "h2ping")]
    h2ping: Option<String>,
    #[serde(rename = "UDP", alias = "udp")]
    udp: Option<String>,
    #[serde(rename = "OSService", alias = "os_service")]
    os_service: Option<String>,
}

/// A validated check definition, not yet placed on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDef {
    /// Empty when the definition gave none: the owner picks one.
    pub id: String,
    pub name: String,
    pub notes: String,
    pub node: Option<String>,
    pub service_id: Option<String>,
    pub status: Option<Health>,
    pub output: String,
    pub kind: CheckKind,
    pub thresholds: Thresholds,
}

impl TryFrom<RawCheck> for CheckDef {
    type Error = String;

    fn try_from(mut raw: RawCheck) -> Result<CheckDef, String> {
        if let Some(def) = raw.definition.take() {
            // Catalog checks: the runnable fields live under Definition.
            let def = *def;
            raw.http = raw.http.or(def.http);
            raw.method = raw.method.or(def.method);
            if raw.header.is_empty() {
                raw.header = def.header;
            }
            raw.body = raw.body.or(def.body);
            raw.tls_skip_verify = raw.tls_skip_verify.or(def.tls_skip_verify);
            raw.tcp = raw.tcp.or(def.tcp);
            raw.ttl = raw.ttl.or(def.ttl);
            raw.interval = raw.interval.or(def.interval);
            raw.timeout = raw.timeout.or(def.timeout);
            raw.deregister_critical_service_after = raw
                .deregister_critical_service_after
                .or(def.deregister_critical_service_after);
        }
        for (field, set) in [
            ("Args", raw.args.is_some()),
            ("GRPC", raw.grpc.is_some()),
            ("DockerContainerID", raw.docker.is_some()),
            ("AliasService", raw.alias_service.is_some()),
            ("H2PING", raw.h2ping.is_some()),
            ("UDP", raw.udp.is_some()),
            ("OSService", raw.os_service.is_some()),
        ] {
            if set {
                return Err(format!(
                    "check: {field} checks are not supported; use HTTP, TCP or TTL"
                ));
            }
        }
        let status = match raw.status.as_deref() {
            None | Some("") => None,
            Some(s) => Some(Health::parse(s).ok_or_else(|| {
                format!("check: status {s:?} is not one of passing, warning, critical")
            })?),
        };
        let timeout = raw.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT);
        if timeout.is_zero() {
            return Err("check: timeout must be above zero".into());
        }
        let runnable = [raw.http.is_some(), raw.tcp.is_some(), raw.ttl.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if runnable > 1 {
            return Err("check: give only one of HTTP, TCP and TTL".into());
        }
        // Consul 1.x refuses this pair; Consul of the widely copied
        // walkthroughs' era took it as a TTL check, and so does signpost: a
        // TTL check is never run, so the interval has nothing to pace.
        if let (Some(ttl), Some(interval)) = (raw.ttl, raw.interval) {
            if !ttl.is_zero() && !interval.is_zero() {
                tracing::warn!(
                    check = raw.id.as_deref().or(raw.name.as_deref()).unwrap_or(""),
                    "check gives both TTL ({}) and Interval ({}): taken as a TTL check, the Interval is ignored",
                    format_duration(ttl),
                    format_duration(interval)
                );
                raw.interval = None;
            }
        }
        let interval = |kind: &str| -> Result<Duration, String> {
            let i = raw
                .interval
                .ok_or_else(|| format!("check: {kind} checks need an Interval"))?;
            if i < MIN_CHECK_INTERVAL {
                return Err(format!(
                    "check: interval {} is below the minimum of 1s",
                    format_duration(i)
                ));
            }
            Ok(i)
        };
        let kind = if let Some(url) = raw.http.clone() {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "check: HTTP {url:?} is not an http:// or https:// URL"
                ));
            }
            let method = raw.method.clone().unwrap_or_else(|| "GET".into());
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("check: method {method:?} is not an HTTP method"));
            }
            CheckKind::Http {
                url,
                method: method.to_ascii_uppercase(),
                headers: raw.header.clone(),
                body: raw.body.clone().unwrap_or_default(),
                tls_skip_verify: raw.tls_skip_verify.unwrap_or(false),
                interval: interval("HTTP")?,
                timeout,
            }
        } else if let Some(address) = raw.tcp.clone() {
            if !address.contains(':') {
                return Err(format!("check: TCP {address:?} is not host:port"));
            }
            CheckKind::Tcp {
                address,
                interval: interval("TCP")?,
                timeout,
            }
        } else if let Some(ttl) = raw.ttl {
            if ttl.is_zero() {
                return Err("check: TTL must be above zero".into());
            }
            CheckKind::Ttl { ttl }
        } else {
            CheckKind::Static
        };
        Ok(CheckDef {
            id: raw.id.unwrap_or_default(),
            name: raw.name.unwrap_or_default(),
            notes: raw.notes.unwrap_or_default(),
            node: raw.node.filter(|n| !n.is_empty()),
            service_id: raw.service_id.filter(|s| !s.is_empty()),
            status,
            output: raw.output.unwrap_or_default(),
            kind,
            thresholds: Thresholds {
                success_before_passing: raw.success_before_passing.unwrap_or(0),
                failures_before_warning: raw.failures_before_warning.unwrap_or(0),
                failures_before_critical: raw.failures_before_critical.unwrap_or(0),
                deregister_critical_after: raw.deregister_critical_service_after,
            },
        })
    }
}

impl<'de> Deserialize<'de> for CheckDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validated::<D, RawCheck, CheckDef>(d)
    }
}

impl CheckDef {
    /// Places the check on a node. A check with no initial status starts
    /// critical, as in Consul, except a check nothing runs, which starts
    /// passing.
    pub fn into_check(
        self,
        node: &str,
        service: Option<(&str, &str)>,
        fallback_id: String,
        source: Source,
    ) -> Check {
        let default_status = match self.kind {
            CheckKind::Static => Health::Passing,
            _ => Health::Critical,
        };
        let (service_id, service_name) = match service {
            Some((id, name)) => (Some(id.to_string()), name.to_string()),
            None => (self.service_id.clone(), String::new()),
        };
        let id = if self.id.is_empty() {
            fallback_id
        } else {
            self.id
        };
        let name = if self.name.is_empty() {
            match &service {
                Some((_, svc)) => format!("Service '{svc}' check"),
                None => id.clone(),
            }
        } else {
            self.name
        };
        Check {
            node: node.to_string(),
            id,
            name,
            status: self.status.unwrap_or(default_status),
            output: self.output,
            notes: self.notes,
            service_id,
            service_name,
            kind: self.kind,
            thresholds: self.thresholds,
            source,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// The agent's service definition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawService {
    #[serde(rename = "ID", alias = "id", alias = "Id")]
    id: Option<String>,
    #[serde(rename = "Name", alias = "name", alias = "Service", alias = "service")]
    name: Option<String>,
    #[serde(rename = "Tags", alias = "tags", deserialize_with = "de_null_default")]
    tags: Vec<String>,
    #[serde(rename = "Address", alias = "address")]
    address: Option<String>,
    #[serde(
        rename = "TaggedAddresses",
        alias = "tagged_addresses",
        deserialize_with = "de_null_default"
    )]
    tagged_addresses: BTreeMap<String, TaggedAddress>,
    #[serde(rename = "Meta", alias = "meta", deserialize_with = "de_null_default")]
    meta: Meta,
    #[serde(rename = "Port", alias = "port")]
    port: Option<i64>,
    #[serde(rename = "Weights", alias = "weights")]
    weights: Option<RawWeights>,
    #[serde(rename = "EnableTagOverride", alias = "enable_tag_override")]
    enable_tag_override: Option<bool>,
    #[serde(rename = "Check", alias = "check")]
    check: Option<CheckDef>,
    #[serde(
        rename = "Checks",
        alias = "checks",
        deserialize_with = "de_null_default"
    )]
    checks: Vec<CheckDef>,
    #[serde(rename = "Kind", alias = "kind")]
    kind: Option<String>,
    #[serde(rename = "Proxy", alias = "proxy")]
    proxy: Option<RawProxy>,
    #[serde(rename = "Connect", alias = "connect")]
    connect: Option<RawConnect>,
}

/// `Proxy` of a `connect-proxy` service: what it fronts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawProxy {
    #[serde(rename = "DestinationServiceName", alias = "destination_service_name")]
    destination_service_name: Option<String>,
}

/// `Connect` of a service: whether it speaks Connect natively. (An inline
/// `SidecarService` is not registered for it: register the proxy as its
/// own service with `Kind: connect-proxy`.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawConnect {
    #[serde(rename = "Native", alias = "native")]
    native: Option<bool>,
}

/// A validated service definition, not yet placed on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDef {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: Meta,
    pub weights: Weights,
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    pub enable_tag_override: bool,
    pub checks: Vec<CheckDef>,
    pub connect: Option<Connect>,
}

/// The longest service name or tag DNS can carry in one label.
const MAX_LABEL: usize = 63;

fn check_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("service: missing Name".into());
    }
    if name.len() > MAX_LABEL || name.contains('.') {
        return Err(format!(
            "service: name {name:?} must be one DNS label (at most 63 characters, no dots)"
        ));
    }
    Ok(())
}

fn check_address(what: &str, addr: &str) -> Result<(), String> {
    if addr.is_empty() || addr.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = addr.len() <= 253
        && addr.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what}: {addr:?} is neither an IP address nor a host name"
        ))
    }
}

impl TryFrom<RawService> for ServiceDef {
    type Error = String;

    fn try_from(raw: RawService) -> Result<ServiceDef, String> {
        let name = raw.name.unwrap_or_default();
        check_service_name(&name)?;
        let native = raw.connect.as_ref().and_then(|c| c.native) == Some(true);
        let connect = match raw.kind.as_deref().unwrap_or("") {
            "" | "typical" => native.then_some(Connect::Native),
            "connect-proxy" => {
                let destination = raw
                    .proxy
                    .as_ref()
                    .and_then(|p| p.destination_service_name.clone())
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| {
                        format!(
                            "service {name:?}: a connect-proxy needs Proxy.DestinationServiceName"
                        )
                    })?;
                if native {
                    return Err(format!(
                        "service {name:?}: a connect-proxy cannot also be Connect.Native"
                    ));
                }
                check_service_name(&destination)
                    .map_err(|e| format!("service {name:?}: Proxy.DestinationServiceName: {e}"))?;
                Some(Connect::Proxy { destination })
            }
            kind => {
                return Err(format!(
                "service {name:?}: kind {kind:?} is not supported (typical and connect-proxy are)"
            ))
            }
        };
        let port = match raw.port {
            None => 0,
            Some(p) => u16::try_from(p)
                .map_err(|_| format!("service {name:?}: port {p} is out of range 0-65535"))?,
        };
        let address = raw.address.unwrap_or_default();
        check_address(&format!("service {name:?}: address"), &address)?;
        for tag in &raw.tags {
            if tag.is_empty() || tag.len() > MAX_LABEL {
                return Err(format!(
                    "service {name:?}: tag {tag:?} must be 1 to 63 characters"
                ));
            }
        }
        let weights = weights(raw.weights).map_err(|e| format!("service {name:?}: {e}"))?;
        let mut checks: Vec<CheckDef> = raw.check.into_iter().collect();
        checks.extend(raw.checks);
        let id = raw
            .id
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| name.clone());
        // Consul takes any ID, '/' included (Patroni registers
        // "<scope>/<member>"): the API's paths take the rest of the path
        // as the ID.
        Ok(ServiceDef {
            id,
            name,
            tags: raw.tags,
            address,
            port,
            meta: raw.meta,
            weights,
            tagged_addresses: raw.tagged_addresses,
            enable_tag_override: raw.enable_tag_override.unwrap_or(false),
            checks,
            connect,
        })
    }
}

impl<'de> Deserialize<'de> for ServiceDef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validated::<D, RawService, ServiceDef>(d)
    }
}

impl ServiceDef {
    /// Places the instance on `node`, with its checks. Checks without an ID
    /// get Consul's `service:<id>` (and `service:<id>:<n>` for several).
    pub fn into_parts(self, node: &str, source: Source) -> (Instance, Vec<Check>) {
        let many = self.checks.len() > 1;
        let checks = self
            .checks
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let fallback = if many {
                    format!("service:{}:{}", self.id, i + 1)
                } else {
                    format!("service:{}", self.id)
                };
                c.into_check(node, Some((&self.id, &self.name)), fallback, source)
            })
            .collect();
        let instance = Instance {
            node: node.to_string(),
            id: self.id,
            name: self.name,
            tags: self.tags,
            address: self.address,
            port: self.port,
            meta: self.meta,
            weights: self.weights,
            tagged_addresses: self.tagged_addresses,
            enable_tag_override: self.enable_tag_override,
            connect: self.connect.map(Box::new),
            source,
            create_index: 0,
            modify_index: 0,
        };
        (instance, checks)
    }
}

/// The body of `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RawCatalog {
    #[serde(rename = "Node", alias = "node")]
    node: Option<String>,
    #[serde(rename = "Address", alias = "address")]
    address: Option<String>,
    #[serde(rename = "Datacenter", alias = "datacenter")]
    datacenter: Option<String>,
    #[serde(
        rename = "TaggedAddresses",
        alias = "tagged_addresses",
        deserialize_with = "de_null_default"
    )]
    tagged_addresses: BTreeMap<String, String>,
    #[serde(
        rename = "NodeMeta",
        alias = "node_meta",
        deserialize_with = "de_null_default"
    )]
    node_meta: Meta,
    #[serde(rename = "Service", alias = "service")]
    service: Option<ServiceDef>,
    #[serde(rename = "Check", alias = "check")]
    check: Option<CheckDef>,
    #[serde(
        rename = "Checks",
        alias = "checks",
        deserialize_with = "de_null_default"
    )]
    checks: Vec<CheckDef>,
    #[serde(rename = "SkipNodeUpdate", alias = "skip_node_update")]
    skip_node_update: Option<bool>,
}

/// A validated catalog registration: a node, optionally an instance on it,
/// and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogRegistration {
    pub node: String,
    pub address: String,
    pub datacenter: Option<String>,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: Meta,
    pub service: Option<ServiceDef>,
    pub checks: Vec<CheckDef>,
    pub skip_node_update: bool,
}

/// Consul accepts almost any node name (`t2.320` in its own docs). DNS
/// answers name the node (`<node>.node.<dc>.<domain>` as an SRV target), so
/// each dot-separated part must fit a DNS label (1 to 63 octets) and the
/// whole a DNS name with that suffix (200 octets): a name that cannot be
/// answered is refused, never accepted and then missing from DNS.
pub fn check_node_name(node: &str) -> Result<(), String> {
    if node.is_empty() {
        return Err("missing Node".into());
    }
    if node
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(format!(
            "node {node:?} must not contain spaces, control characters or '/'"
        ));
    }
    if node.len() > 200 {
        return Err(format!(
            "node name is {} octets; at most 200 fit in a DNS name such as <node>.node.<dc>.consul",
            node.len()
        ));
    }
    if let Some(label) = node.split('.').find(|l| l.is_empty() || l.len() > 63) {
        return Err(format!(
            "node {node:?}: each dot-separated part must be 1 to 63 octets to be a DNS label (found one of {})",
            label.len()
        ));
    }
    Ok(())
}

impl TryFrom<RawCatalog> for CatalogRegistration {
    type Error = String;

    fn try_from(raw: RawCatalog) -> Result<Self, String> {
        let node = raw.node.unwrap_or_default();
        check_node_name(&node)?;
        let address = raw.address.unwrap_or_default();
        if address.is_empty() {
            return Err(format!("node {node:?}: missing Address"));
        }
        check_address(&format!("node {node:?}: address"), &address)?;
        let mut checks: Vec<CheckDef> = raw.check.into_iter().collect();
        checks.extend(raw.checks);
        Ok(CatalogRegistration {
            node,
            address,
            datacenter: raw.datacenter.filter(|d| !d.is_empty()),
            tagged_addresses: raw.tagged_addresses,
            node_meta: raw.node_meta,
            service: raw.service,
            checks,
            skip_node_update: raw.skip_node_update.unwrap_or(false),
        })
    }
}

impl<'de> Deserialize<'de> for CatalogRegistration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        validated::<D, RawCatalog, CatalogRegistration>(d)
    }
}

/// A catalog registration taken apart for the registry.
pub struct CatalogParts {
    pub node: Node,
    /// The instance and its own checks.
    pub service: Option<(Instance, Vec<Check>)>,
    /// Checks given beside the service: node-level, or naming a ServiceID.
    pub checks: Vec<Check>,
}

impl CatalogRegistration {
    /// The node, the instance (if any) and the checks, ready for the
    /// registry. Checks name their service by ServiceID; without one they
    /// are node-level.
    pub fn into_parts(self, default_dc: &str, source: Source) -> CatalogParts {
        let datacenter = self
            .datacenter
            .unwrap_or_else(|| default_dc.to_string())
            .to_ascii_lowercase();
        let node = Node {
            meta: self.node_meta,
            tagged_addresses: self.tagged_addresses,
            ..Node::new(self.node.clone(), self.address, datacenter, source)
        };
        let service = self.service.map(|s| s.into_parts(&self.node, source));
        let service_name = |id: &str| -> Option<String> {
            service
                .as_ref()
                .filter(|(i, _)| i.id == id)
                .map(|(i, _)| i.name.clone())
        };
        let checks = self
            .checks
            .into_iter()
            .map(|c| {
                let fallback = c.name.clone();
                let sid = c.service_id.clone();
                let mut check = c.into_check(&self.node, None, fallback, source);
                if let Some(sid) = sid {
                    check.service_name = service_name(&sid).unwrap_or_default();
                }
                check
            })
            .collect();
        CatalogParts {
            node,
            service,
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "10", "10x", "-1s", "s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn camel_and_snake_keys() {
        let a: ServiceDef = serde_json::from_str(
            r#"{"Name":"web","Port":80,"Check":{"HTTP":"http://127.0.0.1/","Interval":"10s","DeregisterCriticalServiceAfter":"1m"}}"#,
        )
        .unwrap();
        let b: ServiceDef = serde_json::from_str(
            r#"{"name":"web","port":80,"check":{"http":"http://127.0.0.1/","interval":"10s","deregister_critical_service_after":"1m"}}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.id, "web");
        assert_eq!(
            a.checks[0].thresholds.deregister_critical_after,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn errors_carry_the_line() {
        let text = "{\n  \"Name\": \"web\",\n  \"Port\": 70000\n}";
        let err = serde_json::from_str::<ServiceDef>(text).unwrap_err();
        assert!(
            err.to_string().contains("port 70000 is out of range"),
            "{err}"
        );
        assert!(err.line() >= 3, "{err}");
        let err = serde_json::from_str::<ServiceDef>("{\"Port\": 1}").unwrap_err();
        assert!(err.to_string().contains("missing Name"), "{err}");
        let err =
            serde_json::from_str::<ServiceDef>("{\"Name\":\"a\",\n\"Check\":{\"TTL\":\"10q\"}}")
                .unwrap_err();
        assert!(err.to_string().contains("unknown unit"), "{err}");
        assert_eq!(err.line(), 2);
    }
}
