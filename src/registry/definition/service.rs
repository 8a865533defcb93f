//! A service definition (the agent's), validated into a [`ServiceDef`].

use super::*;

/// `Weights` as Consul sends them.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawWeights {
    #[serde(rename = "Passing", default)]
    pub(super) passing: i64,
    #[serde(rename = "Warning", default)]
    pub(super) warning: i64,
}

pub(super) fn weights(raw: Option<RawWeights>) -> Result<Weights, String> {
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

/// The agent's service definition.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawService {
    #[serde(rename = "ID")]
    pub(super) id: Option<String>,
    #[serde(rename = "Name", alias = "Service")]
    pub(super) name: Option<String>,
    #[serde(rename = "Tags", deserialize_with = "de_null_default")]
    pub(super) tags: Vec<String>,
    #[serde(rename = "Address")]
    pub(super) address: Option<String>,
    #[serde(rename = "TaggedAddresses", deserialize_with = "de_null_default")]
    pub(super) tagged_addresses: BTreeMap<String, TaggedAddress>,
    #[serde(rename = "Meta", deserialize_with = "de_null_default")]
    pub(super) meta: Meta,
    #[serde(rename = "Port")]
    pub(super) port: Option<i64>,
    #[serde(rename = "Weights")]
    pub(super) weights: Option<RawWeights>,
    #[serde(rename = "EnableTagOverride")]
    pub(super) enable_tag_override: Option<bool>,
    #[serde(rename = "Check")]
    pub(super) check: Option<CheckDef>,
    #[serde(rename = "Checks", deserialize_with = "de_null_default")]
    pub(super) checks: Vec<CheckDef>,
    #[serde(rename = "Kind")]
    pub(super) kind: Option<String>,
    #[serde(rename = "Proxy")]
    pub(super) proxy: Option<RawProxy>,
    #[serde(rename = "Connect")]
    pub(super) connect: Option<RawConnect>,
}

/// `Proxy` of a `connect-proxy` service: what it fronts.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawProxy {
    #[serde(rename = "DestinationServiceName")]
    pub(super) destination_service_name: Option<String>,
}

/// `Connect` of a service: whether it speaks Connect natively. (An inline
/// `SidecarService` is not registered for it: register the proxy as its
/// own service with `Kind: connect-proxy`.)
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawConnect {
    #[serde(rename = "Native")]
    pub(super) native: Option<bool>,
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

pub(super) fn check_service_name(name: &str) -> Result<(), String> {
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

pub(super) fn check_address(what: &str, addr: &str) -> Result<(), String> {
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
            node: node.into(),
            id: self.id.into(),
            name: self.name.into(),
            tags: self.tags.into_iter().map(std::sync::Arc::from).collect(),
            address: self.address.into(),
            port: self.port,
            weights: self.weights,
            enable_tag_override: self.enable_tag_override,
            source,
            extra: crate::registry::Extra::new(self.meta, self.tagged_addresses, self.connect),
            create_index: 0,
            modify_index: 0,
        };
        (instance, checks)
    }
}
