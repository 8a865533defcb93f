//! A check definition (agent or catalog), validated into a [`CheckDef`].

use super::*;
use crate::registry::{HttpProbe, TcpProbe};

/// A check as it arrives: in a service definition, in a catalog
/// registration, or on `PUT /v1/agent/check/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RawCheck {
    #[serde(rename = "ID", alias = "CheckID")]
    pub(super) id: Option<String>,
    #[serde(rename = "Name")]
    pub(super) name: Option<String>,
    #[serde(rename = "Notes")]
    pub(super) notes: Option<String>,
    #[serde(rename = "Node")]
    pub(super) node: Option<String>,
    #[serde(rename = "ServiceID")]
    pub(super) service_id: Option<String>,
    #[serde(rename = "Status")]
    pub(super) status: Option<String>,
    #[serde(rename = "Output")]
    pub(super) output: Option<String>,
    #[serde(rename = "HTTP")]
    pub(super) http: Option<String>,
    #[serde(rename = "Method")]
    pub(super) method: Option<String>,
    #[serde(rename = "Header", deserialize_with = "de_null_default")]
    pub(super) header: BTreeMap<String, Vec<String>>,
    #[serde(rename = "Body")]
    pub(super) body: Option<String>,
    #[serde(rename = "TLSSkipVerify")]
    pub(super) tls_skip_verify: Option<bool>,
    #[serde(rename = "TCP")]
    pub(super) tcp: Option<String>,
    #[serde(rename = "TTL", deserialize_with = "de_duration")]
    pub(super) ttl: Option<Duration>,
    #[serde(rename = "Interval", deserialize_with = "de_duration")]
    pub(super) interval: Option<Duration>,
    #[serde(rename = "Timeout", deserialize_with = "de_duration")]
    pub(super) timeout: Option<Duration>,
    #[serde(
        rename = "DeregisterCriticalServiceAfter",
        deserialize_with = "de_duration"
    )]
    pub(super) deregister_critical_service_after: Option<Duration>,
    #[serde(rename = "SuccessBeforePassing")]
    pub(super) success_before_passing: Option<u32>,
    #[serde(rename = "FailuresBeforeWarning")]
    pub(super) failures_before_warning: Option<u32>,
    #[serde(rename = "FailuresBeforeCritical")]
    pub(super) failures_before_critical: Option<u32>,
    /// Catalog checks carry their runnable parts here.
    #[serde(rename = "Definition")]
    pub(super) definition: Option<Box<RawCheck>>,
    #[serde(rename = "Args", alias = "ScriptArgs")]
    pub(super) args: Option<Vec<String>>,
    #[serde(rename = "GRPC")]
    pub(super) grpc: Option<String>,
    #[serde(rename = "DockerContainerID")]
    pub(super) docker: Option<String>,
    #[serde(rename = "AliasService")]
    pub(super) alias_service: Option<String>,
    #[serde(rename = "H2PING")]
    pub(super) h2ping: Option<String>,
    #[serde(rename = "UDP")]
    pub(super) udp: Option<String>,
    #[serde(rename = "OSService")]
    pub(super) os_service: Option<String>,
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
            CheckKind::Http(Box::new(HttpProbe {
                url,
                method: method.to_ascii_uppercase(),
                headers: raw.header.clone(),
                body: raw.body.clone().unwrap_or_default(),
                tls_skip_verify: raw.tls_skip_verify.unwrap_or(false),
                interval: interval("HTTP")?,
                timeout,
            }))
        } else if let Some(address) = raw.tcp.clone() {
            if !address.contains(':') {
                return Err(format!("check: TCP {address:?} is not host:port"));
            }
            CheckKind::Tcp(Box::new(TcpProbe {
                address,
                interval: interval("TCP")?,
                timeout,
            }))
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
