//! Service definitions in the zones directory.
//!
//! Every `*.json` file holds either agent service definitions, which live
//! on signpost's own node:
//!
//! ```json
//! {"service": {"name": "web", "port": 80}}
//! {"services": [{"name": "web"}, {"name": "db"}], "checks": [...]}
//! ```
//!
//! or catalog registrations (the body of `PUT /v1/catalog/register`), for
//! instances on other nodes: one object, or an array of them.
//!
//! Loading is all or nothing: the first bad file stops it with its path,
//! line and reason, and nothing reaches the registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::registry::definition::{CatalogParts, CatalogRegistration, CheckDef, ServiceDef};
use crate::registry::{Node, Registry, Source};

/// A definition file that cannot be loaded: its path, line and column.
pub type FileError = crate::located::Located;

/// The agent-definition file shape.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentFile {
    service: Option<ServiceDef>,
    services: Vec<ServiceDef>,
    check: Option<CheckDef>,
    checks: Vec<CheckDef>,
}

/// What a definition file holds, found by reading its keys and skipping
/// every value: a file of 100,000 registrations is checked for syntax
/// without building a tree of it (a `serde_json::Value` or an untagged
/// enum's buffer would cost ~1 KB per registration, freed only after).
enum Shape {
    /// A JSON array: catalog registrations.
    Array,
    /// A JSON object, and whether it has a `Node` key (a catalog
    /// registration) or not (agent definitions).
    Object { node: bool },
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Shape, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Shape;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object or array of definitions")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Shape::Array)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Shape, A::Error> {
                let mut node = false;
                while let Some(k) = a.next_key::<std::borrow::Cow<'de, str>>()? {
                    node |= k.eq_ignore_ascii_case("node");
                    a.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(Shape::Object { node })
            }
        }
        d.deserialize_any(V)
    }
}

/// signpost's own node, where agent definitions live.
#[derive(Debug, Clone)]
pub struct OwnNode {
    pub name: String,
    pub address: String,
    pub datacenter: String,
}

/// Everything the zones directory defines, validated.
#[derive(Debug, Default)]
pub struct Definitions {
    // The file each definition came from, shared: a path per definition
    // was 100,000 small allocations freed among the ones kept.
    services: Vec<(Arc<Path>, ServiceDef)>,
    node_checks: Vec<(Arc<Path>, CheckDef)>,
    catalog: Vec<(Arc<Path>, CatalogRegistration)>,
    /// Files read, for the operator's log.
    pub files: usize,
}

impl Definitions {
    pub fn instance_count(&self) -> usize {
        self.services.len()
            + self
                .catalog
                .iter()
                .filter(|(_, c)| c.service.is_some())
                .count()
    }
}

fn parse_error(path: &Path, e: &serde_json::Error) -> FileError {
    // serde_json appends " at line L column C"; the location goes in front.
    let text = e.to_string();
    let reason = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    FileError::at(path, e.line(), e.column(), reason)
}

/// Parses one definition file into `defs`.
pub fn load_file(path: &Path, defs: &mut Definitions) -> Result<(), FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::file(path, format!("cannot read: {e}")))?;
    // Syntax and shape first, for a precise location; then the text is
    // read again into typed, validated definitions of that shape.
    let shape: Shape = serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
    let p: Arc<Path> = Arc::from(path);
    if let Shape::Array | Shape::Object { node: true } = shape {
        let regs = match shape {
            Shape::Array => crate::fold::from_str::<Vec<CatalogRegistration>>(&text),
            _ => crate::fold::from_str::<CatalogRegistration>(&text).map(|r| vec![r]),
        }
        .map_err(|e| parse_error(path, &e))?;
        defs.catalog
            .extend(regs.into_iter().map(|r| (p.clone(), r)));
    } else {
        let f: AgentFile = crate::fold::from_str(&text).map_err(|e| parse_error(path, &e))?;
        if f.service.is_none() && f.services.is_empty() && f.check.is_none() && f.checks.is_empty()
        {
            return Err(FileError::at(
                path,
                1,
                1,
                "no \"service\", \"services\", \"checks\" or catalog \"Node\" found",
            ));
        }
        defs.services.extend(
            f.service
                .into_iter()
                .chain(f.services)
                .map(|s| (p.clone(), s)),
        );
        defs.node_checks
            .extend(f.check.into_iter().chain(f.checks).map(|c| (p.clone(), c)));
    }
    defs.files += 1;
    Ok(())
}

/// Reads every `*.json` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Definitions, FileError> {
    let io = |e: std::io::Error| FileError::file(dir, format!("cannot read zones directory: {e}"));
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    let mut defs = Definitions::default();
    for path in paths {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => load_file(&path, &mut defs)?,
            _ => tracing::debug!(
                "{}: not a service definition (*.json), skipped",
                path.display()
            ),
        }
    }
    defs.check_conflicts()?;
    Ok(defs)
}

impl Definitions {
    /// Two files may not define the same instance, nor one node with two
    /// addresses.
    fn check_conflicts(&self) -> Result<(), FileError> {
        let mut ids: BTreeMap<(Option<&str>, &str), &Path> = BTreeMap::new();
        for (path, s) in &self.services {
            if let Some(other) = ids.insert((None, &s.id), &**path) {
                return Err(FileError::file(
                    path,
                    format!(
                        "service ID {:?} is defined twice (also in {})",
                        s.id,
                        other.display()
                    ),
                ));
            }
        }
        let mut nodes: BTreeMap<&str, (&str, &Path)> = BTreeMap::new();
        for (path, c) in &self.catalog {
            if let Some((addr, other)) = nodes.insert(&c.node, (&c.address, &**path)) {
                if addr != c.address {
                    return Err(FileError::file(
                        path,
                        format!(
                            "node {:?} has address {:?} here and {:?} in {}",
                            c.node,
                            c.address,
                            addr,
                            other.display()
                        ),
                    ));
                }
            }
            if let Some(s) = &c.service {
                if let Some(other) = ids.insert((Some(&c.node), &s.id), &**path) {
                    return Err(FileError::file(
                        path,
                        format!(
                            "service ID {:?} on node {:?} is defined twice (also in {})",
                            s.id,
                            c.node,
                            other.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the definitions into the registry, then removes file entries
    /// that are no longer defined. Writes go in transactions of [`BATCH`]
    /// definitions: one transaction for 100,000 registrations kept ~30 MiB
    /// of its bookkeeping in fragmented pages for good. Nothing defined is
    /// ever missing in between: removals come last.
    pub fn apply(self, registry: &Registry, own: &OwnNode) {
        let mut stale = registry.read_latest(|s| s.keys_of(Source::File));
        registry.write(|txn| {
            txn.upsert_node(Node::new(
                own.name.clone(),
                own.address.clone(),
                own.datacenter.clone(),
                Source::File,
            ));
            stale.nodes.remove(&own.name);
        });
        in_batches(registry, self.services, |txn, (_, def)| {
            let (inst, checks) = def.into_parts(&own.name, Source::File);
            stale.instances.remove(&inst.key());
            txn.upsert_instance(inst);
            for c in checks {
                stale.checks.remove(&(c.node.clone(), c.id.clone()));
                txn.upsert_check(c);
            }
        });
        in_batches(registry, self.node_checks, |txn, (_, def)| {
            let fallback = if def.name.is_empty() {
                "node-check".to_string()
            } else {
                def.name.clone()
            };
            let c = def.into_check(&own.name, None, fallback, Source::File);
            stale.checks.remove(&(c.node.clone(), c.id.clone()));
            txn.upsert_check(c);
        });
        in_batches(registry, self.catalog, |txn, (_, reg)| {
            let CatalogParts {
                node,
                service,
                checks,
            } = reg.into_parts(&own.datacenter, Source::File);
            stale.nodes.remove(&node.name);
            txn.upsert_node(node);
            if let Some((inst, inst_checks)) = service {
                stale.instances.remove(&inst.key());
                txn.upsert_instance(inst);
                for c in inst_checks {
                    stale.checks.remove(&(c.node.clone(), c.id.clone()));
                    txn.upsert_check(c);
                }
            }
            for c in checks {
                stale.checks.remove(&(c.node.clone(), c.id.clone()));
                txn.upsert_check(c);
            }
        });
        registry.write(|txn| {
            txn.remove_stale(Source::File, &stale);
        });
    }
}

/// Definitions written per transaction by [`Definitions::apply`].
const BATCH: usize = 1000;

fn in_batches<T>(
    registry: &Registry,
    items: Vec<T>,
    mut f: impl FnMut(&mut crate::registry::Txn<'_>, T),
) {
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        registry.write(|txn| items.by_ref().take(BATCH).for_each(|item| f(txn, item)));
    }
}
