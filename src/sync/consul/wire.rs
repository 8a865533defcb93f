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
    pub(super) fn connect(&self) -> Option<Connect> {
        let destination = self
            .proxy
            .as_ref()
            .map(|p| p.destination_service_name.as_str());
        match (self.kind.as_str(), destination) {
            ("connect-proxy", Some(d)) if !d.is_empty() => Some(Connect::Proxy {
                destination: d.to_string(),
            }),
            _ if self.connect.as_ref().is_some_and(|c| c.native) => Some(Connect::Native),
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
    /// Only compared, never read: a fingerprint of the node names rather
    /// than a string each (the summary of every service is read on every
    /// catalog change).
    #[serde(default, deserialize_with = "null_default")]
    pub(super) nodes: NamesPrint,
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

/// A list of names as a count and an order-independent sum of their
/// hashes: equal lists give equal prints; a changed one almost surely not.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct NamesPrint {
    count: u32,
    sum: u64,
}

impl<'de> Deserialize<'de> for NamesPrint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Names;
        impl<'de> serde::de::Visitor<'de> for Names {
            type Value = NamesPrint;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of names")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<NamesPrint, A::Error> {
                let mut print = NamesPrint::default();
                while let Some(Hashed(h)) = seq.next_element()? {
                    print.count += 1;
                    print.sum = print.sum.wrapping_add(h);
                }
                Ok(print)
            }
        }
        d.deserialize_seq(Names)
    }
}

/// One string, hashed as it is read (no copy).
struct Hashed(u64);

impl<'de> Deserialize<'de> for Hashed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Str;
        impl serde::de::Visitor<'_> for Str {
            type Value = Hashed;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Hashed, E> {
                use std::hash::{BuildHasher, Hasher};
                // Fixed keys: prints of two reads must compare equal.
                let mut h = foldhash::quality::FixedState::with_seed(0x5165_7a3e).build_hasher();
                h.write(v.as_bytes());
                Ok(Hashed(h.finish()))
            }
        }
        d.deserialize_str(Str)
    }
}

pub(super) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_compare_by_print() {
        let print = |json: &str| {
            let s: Summary = serde_json::from_str(json).unwrap();
            s.nodes
        };
        let a = print(r#"{"Name": "web", "Nodes": ["n1", "n2"]}"#);
        assert_eq!(a, print(r#"{"Name": "web", "Nodes": ["n2", "n1"]}"#));
        assert_ne!(a, print(r#"{"Name": "web", "Nodes": ["n1", "n3"]}"#));
        assert_ne!(a, print(r#"{"Name": "web", "Nodes": ["n1"]}"#));
        assert_eq!(
            print(r#"{"Name": "web", "Nodes": null}"#),
            print(r#"{"Name": "web"}"#)
        );
        assert_eq!(
            print(r#"{"Name": "web", "Nodes": ["a\"b"]}"#),
            print(r#"{"Name": "web", "Nodes": ["a\u0022b"]}"#),
            "escaped names hash as what they say"
        );
    }
}
