//! The JSON shapes of Consul's read endpoints, built from registry entries.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::registry::definition::format_duration;
use crate::registry::{Check, CheckKind, Connect, Instance, KvEntry, Meta, Node, TaggedAddress};

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Weights {
    pub passing: u16,
    pub warning: u16,
}

impl From<crate::registry::Weights> for Weights {
    fn from(w: crate::registry::Weights) -> Weights {
        Weights {
            passing: w.passing,
            warning: w.warning,
        }
    }
}

/// A stable node ID in Consul's UUID form, derived from the node name
/// (signpost has no agents to mint one).
pub(super) fn node_id(name: &str) -> String {
    // FNV-1a, twice with different seeds: 128 stable bits.
    let hash = |seed: u64| {
        name.bytes()
            .fold(seed, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
    };
    let (a, b) = (hash(0xcbf29ce484222325), hash(0x84222325cbf29ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `Node` of `/v1/catalog/nodes` and `/v1/health/service`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct NodeOut<'a> {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: BTreeMap<&'a str, &'a str>,
    pub meta: &'a Meta,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> NodeOut<'a> {
    pub(super) fn new(n: &'a Node) -> NodeOut<'a> {
        let mut tagged: BTreeMap<&str, &str> = n
            .tagged_addresses
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tagged.entry("lan").or_insert(&n.address);
        tagged.entry("wan").or_insert(&n.address);
        NodeOut {
            id: node_id(&n.name),
            node: &n.name,
            address: &n.address,
            datacenter: &n.datacenter,
            tagged_addresses: tagged,
            meta: &n.meta,
            create_index: n.create_index,
            modify_index: n.modify_index,
        }
    }
}

/// The agent's view of a service (`/v1/agent/services`), also `Service`
/// in `/v1/health/service` and `/v1/catalog/node`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceOut<'a> {
    #[serde(rename = "ID")]
    pub id: &'a str,
    pub service: &'a str,
    pub tags: &'a [Arc<str>],
    pub address: &'a str,
    pub tagged_addresses: &'a BTreeMap<String, TaggedAddress>,
    pub meta: &'a Meta,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ConnectOut>,
    pub datacenter: &'a str,
    pub create_index: u64,
    pub modify_index: u64,
}

/// `Proxy` of a Connect proxy.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ProxyOut<'a> {
    pub destination_service_name: &'a str,
}

/// `Connect` of a native Connect service.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ConnectOut {
    pub native: bool,
}

fn connect_parts(i: &Instance) -> (Option<ProxyOut<'_>>, Option<ConnectOut>) {
    match i.extra.connect.as_ref() {
        Some(Connect::Proxy { destination }) => (
            Some(ProxyOut {
                destination_service_name: destination,
            }),
            None,
        ),
        Some(Connect::Native) => (None, Some(ConnectOut { native: true })),
        None => (None, None),
    }
}

impl<'a> ServiceOut<'a> {
    pub(super) fn new(i: &'a Instance, datacenter: &'a str) -> ServiceOut<'a> {
        ServiceOut {
            id: &i.id,
            service: &i.name,
            tags: &i.tags,
            address: &i.address,
            tagged_addresses: &i.extra.tagged_addresses,
            meta: &i.extra.meta,
            port: i.port,
            weights: i.weights.into(),
            enable_tag_override: i.enable_tag_override,
            kind: i.kind(),
            proxy: connect_parts(i).0,
            connect: connect_parts(i).1,
            datacenter,
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }
}

/// A flat "service node" of `/v1/catalog/service/:name`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ServiceNodeOut<'a> {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: &'a str,
    pub address: &'a str,
    pub datacenter: &'a str,
    pub tagged_addresses: BTreeMap<&'a str, &'a str>,
    pub node_meta: &'a Meta,
    pub service_kind: &'static str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [Arc<str>],
    pub service_address: &'a str,
    pub service_tagged_addresses: &'a BTreeMap<String, TaggedAddress>,
    pub service_weights: Weights,
    pub service_meta: &'a Meta,
    pub service_port: u16,
    pub service_enable_tag_override: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_proxy: Option<ProxyOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_connect: Option<ConnectOut>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> ServiceNodeOut<'a> {
    pub(super) fn new(n: &'a Node, i: &'a Instance) -> ServiceNodeOut<'a> {
        let node = NodeOut::new(n);
        ServiceNodeOut {
            id: node.id,
            node: &n.name,
            address: &n.address,
            datacenter: &n.datacenter,
            tagged_addresses: node.tagged_addresses,
            node_meta: &n.meta,
            service_kind: i.kind(),
            service_id: &i.id,
            service_name: &i.name,
            service_tags: &i.tags,
            service_address: &i.address,
            service_tagged_addresses: &i.extra.tagged_addresses,
            service_weights: i.weights.into(),
            service_meta: &i.extra.meta,
            service_port: i.port,
            service_enable_tag_override: i.enable_tag_override,
            service_proxy: connect_parts(i).0,
            service_connect: connect_parts(i).1,
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }
}

/// A check (`/v1/agent/checks`, `/v1/health/*`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CheckOut<'a> {
    pub node: &'a str,
    #[serde(rename = "CheckID")]
    pub check_id: &'a str,
    pub name: &'a str,
    pub status: &'static str,
    pub notes: &'a str,
    pub output: &'a str,
    #[serde(rename = "ServiceID")]
    pub service_id: &'a str,
    pub service_name: &'a str,
    pub service_tags: &'a [Arc<str>],
    #[serde(rename = "Type")]
    pub kind: &'static str,
    pub interval: String,
    pub timeout: String,
    pub exposed_port: u16,
    pub definition: BTreeMap<String, String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> CheckOut<'a> {
    /// `instance` is the check's service, when it has one, for its tags.
    pub(super) fn new(c: &'a Check, instance: Option<&'a Instance>) -> CheckOut<'a> {
        let (interval, timeout) = match &c.kind {
            CheckKind::Http(p) => (format_duration(p.interval), format_duration(p.timeout)),
            CheckKind::Tcp(p) => (format_duration(p.interval), format_duration(p.timeout)),
            _ => (String::new(), String::new()),
        };
        let mut definition = BTreeMap::new();
        match &c.kind {
            CheckKind::Http(p) => {
                definition.insert("HTTP".to_string(), p.url.clone());
                definition.insert("Method".to_string(), p.method.clone());
            }
            CheckKind::Tcp(p) => {
                definition.insert("TCP".to_string(), p.address.clone());
            }
            CheckKind::Ttl { ttl } => {
                definition.insert("TTL".to_string(), format_duration(*ttl));
            }
            CheckKind::Static => {}
        }
        CheckOut {
            node: &c.node,
            check_id: &c.id,
            name: &c.name,
            status: c.status.as_str(),
            notes: &c.notes,
            output: &c.output,
            service_id: c.service_id.as_deref().unwrap_or(""),
            service_name: instance.map(|i| &*i.name).unwrap_or(&c.service_name),
            service_tags: instance.map(|i| &*i.tags).unwrap_or(&[]),
            kind: c.kind.type_name(),
            interval,
            timeout,
            exposed_port: 0,
            definition,
            create_index: c.create_index,
            modify_index: c.modify_index,
        }
    }
}

/// One entry of `/v1/health/service/:name`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct HealthEntry<'a> {
    pub node: NodeOut<'a>,
    pub service: ServiceOut<'a>,
    pub checks: Vec<CheckOut<'a>>,
}

impl<'a> HealthEntry<'a> {
    /// An instance on `node` with its own and its node's checks.
    pub(super) fn new(
        s: &'a crate::registry::State,
        node: &'a crate::registry::Node,
        inst: &'a crate::registry::Instance,
    ) -> HealthEntry<'a> {
        HealthEntry {
            node: NodeOut::new(node),
            service: ServiceOut::new(inst, &node.datacenter),
            checks: s
                .checks_of(&inst.key())
                .map(|c| CheckOut::new(c, Some(inst)))
                .collect(),
        }
    }
}

/// A KV entry, value in base64 as Consul sends it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KvOut<'a> {
    pub lock_index: u64,
    /// The holding session, only when the key is locked (as Consul).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<&'a str>,
    pub key: &'a str,
    pub flags: u64,
    pub value: Option<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl<'a> KvOut<'a> {
    pub(super) fn new(e: &'a KvEntry) -> KvOut<'a> {
        use base64::Engine;
        KvOut {
            lock_index: e.lock_index,
            session: e.session.as_deref(),
            key: &e.key,
            flags: e.flags,
            // Consul sends null for an empty value.
            value: (!e.value.is_empty())
                .then(|| base64::engine::general_purpose::STANDARD.encode(&e.value)),
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}
