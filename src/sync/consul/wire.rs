//! The shapes Consul's HTTP API answers with, as far as the sync reads them.

use super::*;

/// An entry of `/v1/health/service/:name`, as Consul sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Entry {
    pub(super) node: CNode,
    pub(super) service: CService,
    #[serde(default)]
    pub(super) checks: Vec<CCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CNode {
    pub(super) node: String,
    #[serde(default)]
    pub(super) address: String,
    #[serde(default)]
    pub(super) datacenter: String,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) tagged_addresses: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) meta: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CService {
    #[serde(rename = "ID")]
    pub(super) id: String,
    pub(super) service: String,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) tags: Vec<String>,
    #[serde(default)]
    pub(super) address: String,
    #[serde(default)]
    pub(super) port: u16,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) meta: BTreeMap<String, String>,
    #[serde(default)]
    pub(super) weights: Option<CWeights>,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) tagged_addresses: BTreeMap<String, TaggedAddress>,
    #[serde(default)]
    pub(super) enable_tag_override: bool,
    /// "connect-proxy" for a Connect sidecar proxy.
    #[serde(default)]
    pub(super) kind: String,
    #[serde(default)]
    pub(super) proxy: Option<CProxy>,
    #[serde(default)]
    pub(super) connect: Option<CConnect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct CProxy {
    pub(super) destination_service_name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(super) struct CConnect {
    pub(super) native: bool,
}

impl CService {
    pub(super) fn connect(&self) -> Option<Box<Connect>> {
        let destination = self
            .proxy
            .as_ref()
            .map(|p| p.destination_service_name.as_str());
        match (self.kind.as_str(), destination) {
            ("connect-proxy", Some(d)) if !d.is_empty() => Some(Box::new(Connect::Proxy {
                destination: d.to_string(),
            })),
            _ if self.connect.as_ref().is_some_and(|c| c.native) => Some(Box::new(Connect::Native)),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CWeights {
    pub(super) passing: i64,
    pub(super) warning: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CCheck {
    pub(super) node: String,
    #[serde(rename = "CheckID")]
    pub(super) check_id: String,
    #[serde(default)]
    pub(super) name: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) notes: String,
    #[serde(default)]
    pub(super) output: String,
    #[serde(rename = "ServiceID", default)]
    pub(super) service_id: String,
    #[serde(default)]
    pub(super) service_name: String,
}

/// A check of `/v1/health/state/any`, as far as telling changes apart.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckState {
    pub(super) node: String,
    #[serde(rename = "CheckID")]
    pub(super) check_id: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) output: String,
    #[serde(default)]
    pub(super) service_name: String,
    #[serde(default)]
    pub(super) modify_index: u64,
}

/// A service of `/v1/internal/ui/services` (Consul's UI summary): what
/// tells instances added and removed, and health counts moving.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Summary {
    pub(super) name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub(super) nodes: Vec<String>,
    #[serde(default)]
    pub(super) instance_count: u64,
    #[serde(default)]
    pub(super) checks_passing: u64,
    #[serde(default)]
    pub(super) checks_warning: u64,
    #[serde(default)]
    pub(super) checks_critical: u64,
    /// Services of peered clusters, which the mirror does not follow.
    #[serde(default)]
    pub(super) peer_name: String,
}

pub(super) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}
