//! The registry's entries: nodes, service instances and checks, each tagged
//! with the source it came from. These are validated values: the shapes that
//! arrive over the wire are in [`super::definition`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where an entry came from. A resync of one source (re-reading zones/,
/// a Consul sync) replaces that source's entries and never touches another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A service definition file in `--zones`.
    File,
    /// signpost's own HTTP API.
    Api,
    /// Mirrored from a Consul agent.
    Consul,
    /// A running container, from the Docker engine (never stored: the
    /// engine is read afresh at every start).
    Docker,
    /// Serf's view of agents: an agent node's `serfHealth` check (and, in
    /// a cluster, every member's node, from the member list). Derived
    /// alike by every member, never stored.
    Cluster,
}

/// Health of a check, and of an instance (the worst of its checks).
/// Ordered from best to worst so that `max` is the worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Passing,
    Warning,
    Critical,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        match s.to_ascii_lowercase().as_str() {
            "passing" => Some(Health::Passing),
            "warning" => Some(Health::Warning),
            "critical" => Some(Health::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SRV weights by health state, as Consul's `Weights`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u16,
    pub warning: u16,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

impl Weights {
    pub fn for_health(self, h: Health) -> u16 {
        match h {
            Health::Passing => self.passing,
            _ => self.warning,
        }
    }
}

pub type Meta = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// An IP address or a host name.
    pub address: String,
    pub datacenter: String,
    pub meta: Meta,
    pub tagged_addresses: BTreeMap<String, String>,
    pub source: Source,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Node {
    /// A node with no meta or tagged addresses; the registry sets the
    /// indexes when it is written.
    pub fn new(name: String, address: String, datacenter: String, source: Source) -> Node {
        Node {
            name,
            address,
            datacenter,
            meta: Meta::new(),
            tagged_addresses: BTreeMap::new(),
            source,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// Identifies an instance: its node and its ID, unique on that node.
/// `Arc<str>`: the registry's persistent maps copy keys whenever a write
/// copies a path (sixteen a node), so a key must clone without allocating.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    pub node: Arc<str>,
    pub id: Arc<str>,
}

/// One service instance (Consul: a "service node").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// `Arc<str>`, as the key's halves and the name: the registry shares
    /// them with the node's other instances, the key, and the service, so a
    /// million instances do not hold a million copies of each (see
    /// `State::insert_instance`). `key()` clones without allocating.
    pub node: Arc<str>,
    pub id: Arc<str>,
    pub name: Arc<str>,
    /// Shared whole with the service's first instance when it carries the
    /// same tags (nearly always): no allocation per instance.
    pub tags: Arc<[Arc<str>]>,
    /// Empty means "the node's address", as in Consul.
    pub address: Box<str>,
    pub port: u16,
    pub weights: Weights,
    pub enable_tag_override: bool,
    pub source: Source,
    /// Meta, tagged addresses and Connect, stored and sent as fields of
    /// the instance.
    #[serde(flatten)]
    pub extra: Extra,
    pub create_index: u64,
    pub modify_index: u64,
}

/// What few instances have: meta, tagged addresses, Connect. Behind one
/// pointer, absent when all are empty, so that a million instances without
/// them carry 8 bytes each for the three (the instance fits a 128-byte
/// block with its reference count). Reads see the fields through `Deref`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extra(Option<Box<ExtraFields>>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtraFields {
    #[serde(default)]
    pub meta: Meta,
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    /// Consul Connect: a sidecar proxy for another service, or a service
    /// that speaks Connect natively. `default`: stores written before it
    /// load unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Connect>,
}

static NO_EXTRA: ExtraFields = ExtraFields {
    meta: BTreeMap::new(),
    tagged_addresses: BTreeMap::new(),
    connect: None,
};

impl Extra {
    pub fn new(
        meta: Meta,
        tagged_addresses: BTreeMap<String, TaggedAddress>,
        connect: Option<Connect>,
    ) -> Extra {
        ExtraFields {
            meta,
            tagged_addresses,
            connect,
        }
        .into()
    }
}

impl From<ExtraFields> for Extra {
    fn from(f: ExtraFields) -> Extra {
        match f == NO_EXTRA {
            true => Extra(None),
            false => Extra(Some(Box::new(f))),
        }
    }
}

impl std::ops::Deref for Extra {
    type Target = ExtraFields;
    fn deref(&self) -> &ExtraFields {
        self.0.as_deref().unwrap_or(&NO_EXTRA)
    }
}

impl Serialize for Extra {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Extra {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Extra, D::Error> {
        ExtraFields::deserialize(d).map(Extra::from)
    }
}

/// How an instance takes part in Consul Connect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Connect {
    /// `Connect.Native`: the service itself speaks Connect.
    Native,
    /// `Kind: connect-proxy`: a proxy in front of `destination`.
    Proxy { destination: String },
}

impl Instance {
    /// The service this instance carries Connect traffic for, if any: its
    /// own name when native, the destination when a proxy.
    pub fn connect_for(&self) -> Option<&str> {
        match self.extra.connect.as_ref()? {
            Connect::Native => Some(&self.name),
            Connect::Proxy { destination } => Some(destination),
        }
    }

    /// Consul's `Kind`: "connect-proxy" for a proxy, "" otherwise.
    pub fn kind(&self) -> &'static str {
        match self.extra.connect.as_ref() {
            Some(Connect::Proxy { .. }) => "connect-proxy",
            _ => "",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaggedAddress {
    // Spelled as Consul's API spells them; a definition file's `address`
    // and `port` are matched by `fold`.
    #[serde(rename = "Address", default)]
    pub address: String,
    #[serde(rename = "Port", default)]
    pub port: u16,
}

impl InstanceKey {
    pub fn new(node: &str, id: &str) -> InstanceKey {
        InstanceKey {
            node: node.into(),
            id: id.into(),
        }
    }
}

impl Instance {
    pub fn key(&self) -> InstanceKey {
        InstanceKey {
            node: Arc::clone(&self.node),
            id: Arc::clone(&self.id),
        }
    }
}

/// What a check runs. Checks from Consul or with no runnable definition are
/// `Static`: their status changes only when someone sets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckKind {
    Static,
    Ttl {
        ttl: Duration,
    },
    /// Boxed, as `Tcp`: most checks are TTL or static, and every check
    /// would otherwise be as large as the largest probe. (A struct variant
    /// and a boxed struct serialize alike, so stores read unchanged.)
    Http(Box<HttpProbe>),
    Tcp(Box<TcpProbe>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub url: String,
    pub method: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: String,
    pub tls_skip_verify: bool,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpProbe {
    pub address: String,
    pub interval: Duration,
    pub timeout: Duration,
}

impl CheckKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Static => "",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http(_) => "http",
            CheckKind::Tcp(_) => "tcp",
        }
    }
}

/// Thresholds of the check state machine (Consul's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    pub success_before_passing: u32,
    pub failures_before_warning: u32,
    pub failures_before_critical: u32,
    pub deregister_critical_after: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub node: String,
    pub id: String,
    pub name: String,
    pub status: Health,
    pub output: String,
    pub notes: String,
    /// `None` for a node-level check, which applies to every instance on
    /// the node.
    pub service_id: Option<String>,
    pub service_name: String,
    pub kind: CheckKind,
    pub thresholds: Thresholds,
    pub source: Source,
    pub create_index: u64,
    pub modify_index: u64,
}

/// One key of the KV store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: String,
    pub value: Vec<u8>,
    pub flags: u64,
    pub create_index: u64,
    pub modify_index: u64,
    /// How many times the key has been acquired (Consul's LockIndex).
    #[serde(default)]
    pub lock_index: u64,
    /// The session holding the key's lock, if any.
    #[serde(default)]
    pub session: Option<String>,
    /// Until when (Unix milliseconds) no session may acquire the key: its
    /// holder's session was invalidated (its lock delay). Part of the
    /// entry so that in a cluster every member keeps it; 0 for none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_delay_until: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Now, in Unix milliseconds (lock delays are wall-clock deadlines, the
/// same on every member of a cluster whose clocks agree).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What happens to the keys a session holds when it is invalidated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Behavior {
    /// The locks are released; the keys stay.
    Release,
    /// The keys are deleted.
    Delete,
}

/// A session (Consul's): the owner of KV locks, invalidated when it is
/// destroyed or its TTL runs out without a renewal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: String,
    pub name: String,
    pub node: String,
    /// After an invalidation, its keys cannot be acquired for this long.
    pub lock_delay: Duration,
    pub behavior: Behavior,
    /// Invalidated when not renewed within this; `None`: no TTL.
    pub ttl: Option<Duration>,
    /// Node checks it is tied to (invalidated when one goes critical).
    pub node_checks: Vec<String>,
    /// Service checks (by check ID) it is tied to, the same way.
    #[serde(default)]
    pub service_checks: Vec<String>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Session {
    /// Every check whose going critical invalidates the session.
    pub fn checks(&self) -> impl Iterator<Item = &String> {
        self.node_checks.iter().chain(&self.service_checks)
    }
}

/// Consul's default `check_output_max_size`.
pub const DEFAULT_CHECK_OUTPUT_MAX: usize = 4096;

/// The most a check's output keeps, from any path (probes, TTL updates,
/// registrations, Consul): `check_output_max_size`, set once at start. A
/// process-wide atomic: every path that writes output reads it, and a
/// setting threaded through all of them would say the same.
static CHECK_OUTPUT_MAX: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(DEFAULT_CHECK_OUTPUT_MAX);

pub fn check_output_max() -> usize {
    CHECK_OUTPUT_MAX.load(std::sync::atomic::Ordering::Relaxed)
}

pub fn set_check_output_max(bytes: usize) {
    CHECK_OUTPUT_MAX.store(bytes.max(1), std::sync::atomic::Ordering::Relaxed);
}

/// Cuts `s` to at most [`check_output_max`] bytes on a character boundary.
pub fn cap_output(mut s: String) -> String {
    let max = check_output_max();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores written while the probes were struct variants read the same.
    #[test]
    fn boxed_probes_keep_the_stored_shape() {
        let stored = r#"{"Http":{"url":"http://127.0.0.1:1/","method":"GET","headers":{},"body":"","tls_skip_verify":false,"interval":{"secs":10,"nanos":0},"timeout":{"secs":1,"nanos":0}}}"#;
        let kind: CheckKind = serde_json::from_str(stored).unwrap();
        assert!(matches!(&kind, CheckKind::Http(p) if p.url == "http://127.0.0.1:1/"));
        assert_eq!(serde_json::to_string(&kind).unwrap(), stored);
        let stored = r#"{"Tcp":{"address":"127.0.0.1:1","interval":{"secs":10,"nanos":0},"timeout":{"secs":1,"nanos":0}}}"#;
        let kind: CheckKind = serde_json::from_str(stored).unwrap();
        assert_eq!(serde_json::to_string(&kind).unwrap(), stored);
        assert!(std::mem::size_of::<CheckKind>() <= 24);
    }

    /// Rows written while meta, tagged addresses and Connect were fields of
    /// the instance read the same, and write the same fields back; without
    /// any of them the instance holds no allocation for them.
    #[test]
    fn extra_fields_keep_the_stored_shape() {
        let row = |extra: &str| {
            format!(
                r#"{{"node":"n1","id":"web-1","name":"web","tags":["v1"],"address":"","port":80,{extra}"weights":{{"passing":1,"warning":1}},"enable_tag_override":false,"source":"api","create_index":3,"modify_index":4}}"#
            )
        };
        let full = row(
            r#""meta":{"version":"2"},"tagged_addresses":{"lan":{"Address":"10.0.0.1","Port":80}},"connect":{"Proxy":{"destination":"db"}},"#,
        );
        let bare = row(r#""meta":{},"tagged_addresses":{},"#);
        for stored in [&full, &bare] {
            let inst: Instance = serde_json::from_str(stored).unwrap();
            let again: serde_json::Value = serde_json::to_value(&inst).unwrap();
            let stored: serde_json::Value = serde_json::from_str(stored).unwrap();
            assert_eq!(again, stored);
        }
        let inst: Instance = serde_json::from_str(&full).unwrap();
        assert_eq!(
            inst.extra.meta.get("version").map(String::as_str),
            Some("2")
        );
        assert_eq!(inst.extra.tagged_addresses["lan"].port, 80);
        assert_eq!(inst.connect_for(), Some("db"));
        let inst: Instance = serde_json::from_str(&bare).unwrap();
        assert_eq!(inst.extra, Extra::default());
        // With its reference count, an instance fits a 128-byte block.
        assert!(std::mem::size_of::<Instance>() <= 112);
    }
}
