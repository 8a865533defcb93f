//! A catalog registration (`PUT /v1/catalog/register`, catalog files),
//! validated into a [`CatalogRegistration`].

use super::*;

/// The body of `PUT /v1/catalog/register`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCatalog {
    #[serde(rename = "Node")]
    pub(super) node: Option<String>,
    #[serde(rename = "Address")]
    pub(super) address: Option<String>,
    #[serde(rename = "Datacenter")]
    pub(super) datacenter: Option<String>,
    #[serde(rename = "TaggedAddresses", deserialize_with = "de_null_default")]
    pub(super) tagged_addresses: BTreeMap<String, String>,
    #[serde(rename = "NodeMeta", deserialize_with = "de_null_default")]
    pub(super) node_meta: Meta,
    #[serde(rename = "Service")]
    pub(super) service: Option<ServiceDef>,
    #[serde(rename = "Check")]
    pub(super) check: Option<CheckDef>,
    #[serde(rename = "Checks", deserialize_with = "de_null_default")]
    pub(super) checks: Vec<CheckDef>,
    #[serde(rename = "SkipNodeUpdate")]
    pub(super) skip_node_update: Option<bool>,
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
                .filter(|(i, _)| *i.id == *id)
                .map(|(i, _)| i.name.to_string())
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
