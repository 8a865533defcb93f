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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::registry::definition::{CatalogParts, CatalogRegistration, CheckDef, ServiceDef};
use crate::registry::{InstanceKey, Node, Registry, Source};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path}:{line}:{column}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{path}: {reason}")]
    Conflict { path: PathBuf, reason: String },
}

/// The agent-definition file shape.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AgentFile {
    #[serde(alias = "Service")]
    service: Option<ServiceDef>,
    #[serde(alias = "Services")]
    services: Vec<ServiceDef>,
    #[serde(alias = "Check")]
    check: Option<CheckDef>,
    #[serde(alias = "Checks")]
    checks: Vec<CheckDef>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CatalogFile {
    One(Box<CatalogRegistration>),
    Many(Vec<CatalogRegistration>),
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
    services: Vec<(PathBuf, ServiceDef)>,
    node_checks: Vec<(PathBuf, CheckDef)>,
    catalog: Vec<(PathBuf, CatalogRegistration)>,
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
    FileError::Parse {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        reason,
    }
}

/// Parses one definition file into `defs`.
pub fn load_file(path: &Path, defs: &mut Definitions) -> Result<(), FileError> {
    let text = std::fs::read_to_string(path).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        reason: format!("cannot read: {e}"),
    })?;
    // Syntax first, for a precise location; then the shape decides how the
    // text is read again into typed, validated definitions.
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
    let is_catalog = match &value {
        serde_json::Value::Array(_) => true,
        serde_json::Value::Object(m) => m.keys().any(|k| k.eq_ignore_ascii_case("node")),
        _ => {
            return Err(FileError::Parse {
                path: path.to_path_buf(),
                line: 1,
                column: 1,
                reason: "expected a JSON object or array of definitions".into(),
            })
        }
    };
    let p = path.to_path_buf();
    if is_catalog {
        let regs = match serde_json::from_str::<CatalogFile>(&text) {
            Ok(CatalogFile::One(r)) => vec![*r],
            Ok(CatalogFile::Many(v)) => v,
            // Untagged enums lose the inner error: read again as the shape
            // it is to report the real one.
            Err(_) if value.is_array() => serde_json::from_str::<Vec<CatalogRegistration>>(&text)
                .map_err(|e| parse_error(path, &e))?,
            Err(_) => vec![serde_json::from_str::<CatalogRegistration>(&text)
                .map_err(|e| parse_error(path, &e))?],
        };
        defs.catalog
            .extend(regs.into_iter().map(|r| (p.clone(), r)));
    } else {
        let f: AgentFile = serde_json::from_str(&text).map_err(|e| parse_error(path, &e))?;
        if f.service.is_none() && f.services.is_empty() && f.check.is_none() && f.checks.is_empty()
        {
            return Err(FileError::Parse {
                path: p,
                line: 1,
                column: 1,
                reason: "no \"service\", \"services\", \"checks\" or catalog \"Node\" found".into(),
            });
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
    let io = |e: std::io::Error| FileError::Io {
        path: dir.to_path_buf(),
        reason: format!("cannot read zones directory: {e}"),
    };
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
            if let Some(other) = ids.insert((None, &s.id), path) {
                return Err(FileError::Conflict {
                    path: path.clone(),
                    reason: format!(
                        "service ID {:?} is defined twice (also in {})",
                        s.id,
                        other.display()
                    ),
                });
            }
        }
        let mut nodes: BTreeMap<&str, (&str, &Path)> = BTreeMap::new();
        for (path, c) in &self.catalog {
            if let Some((addr, other)) = nodes.insert(&c.node, (&c.address, path)) {
                if addr != c.address {
                    return Err(FileError::Conflict {
                        path: path.clone(),
                        reason: format!(
                            "node {:?} has address {:?} here and {:?} in {}",
                            c.node,
                            c.address,
                            addr,
                            other.display()
                        ),
                    });
                }
            }
            if let Some(s) = &c.service {
                if let Some(other) = ids.insert((Some(&c.node), &s.id), path) {
                    return Err(FileError::Conflict {
                        path: path.clone(),
                        reason: format!(
                            "service ID {:?} on node {:?} is defined twice (also in {})",
                            s.id,
                            c.node,
                            other.display()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the definitions into the registry as one transaction, and
    /// removes file entries that are no longer defined.
    pub fn apply(self, registry: &Registry, own: &OwnNode) {
        let mut keep_nodes = BTreeSet::new();
        let mut keep_instances = BTreeSet::new();
        let mut keep_checks = BTreeSet::new();
        registry.write(|txn| {
            txn.upsert_node(Node {
                name: own.name.clone(),
                address: own.address.clone(),
                datacenter: own.datacenter.clone(),
                meta: Default::default(),
                tagged_addresses: Default::default(),
                source: Source::File,
                create_index: 0,
                modify_index: 0,
            });
            keep_nodes.insert(own.name.clone());
            for (_, def) in self.services {
                let (inst, checks) = def.into_parts(&own.name, Source::File);
                keep_instances.insert(inst.key());
                txn.upsert_instance(inst);
                for c in checks {
                    keep_checks.insert((c.node.clone(), c.id.clone()));
                    txn.upsert_check(c);
                }
            }
            for (_, def) in self.node_checks {
                let fallback = if def.name.is_empty() {
                    "node-check".to_string()
                } else {
                    def.name.clone()
                };
                let c = def.into_check(&own.name, None, fallback, Source::File);
                keep_checks.insert((c.node.clone(), c.id.clone()));
                txn.upsert_check(c);
            }
            for (_, reg) in self.catalog {
                let CatalogParts {
                    node,
                    service,
                    checks,
                } = reg.into_parts(&own.datacenter, Source::File);
                keep_nodes.insert(node.name.clone());
                txn.upsert_node(node);
                if let Some((inst, inst_checks)) = service {
                    keep_instances.insert(InstanceKey {
                        node: inst.node.clone(),
                        id: inst.id.clone(),
                    });
                    txn.upsert_instance(inst);
                    for c in inst_checks {
                        keep_checks.insert((c.node.clone(), c.id.clone()));
                        txn.upsert_check(c);
                    }
                }
                for c in checks {
                    keep_checks.insert((c.node.clone(), c.id.clone()));
                    txn.upsert_check(c);
                }
            }
            txn.retain_source(Source::File, &keep_nodes, &keep_instances, &keep_checks);
        });
    }
}
