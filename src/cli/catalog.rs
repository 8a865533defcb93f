//! `signpost catalog`, `members` and `info`: tables of what the agent knows.

use std::collections::BTreeMap;
use std::io::Write;

use clap::Subcommand;
use serde_json::Value;

use super::agent::*;
use super::{ClientArgs, Result};

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// List the services of the catalog (or of one node).
    Services {
        /// Show each service's tags.
        #[arg(long)]
        tags: bool,
        /// Only the services on this node.
        #[arg(long = "node", id = "catalog_node")]
        node: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the nodes of the catalog (or those of one service).
    Nodes {
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Prints rows as columns two spaces apart, as Consul's tables.
pub(super) fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows.first().map(Vec::len).unwrap_or(0))
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = std::io::stdout().lock();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
}

pub(super) async fn catalog(cmd: CatalogCommand) -> Result<i32> {
    match cmd {
        CatalogCommand::Services { tags, node, client } => {
            let agent = Agent::new(&client)?;
            let services: BTreeMap<String, Vec<String>> = match node {
                None => {
                    let v = agent.get("/v1/catalog/services").await?.ok()?.json()?;
                    serde_json::from_value(v).unwrap_or_default()
                }
                Some(n) => {
                    let v = agent
                        .get(&format!("/v1/catalog/node/{n}"))
                        .await?
                        .ok()?
                        .json()?;
                    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
                    for s in v["Services"]
                        .as_object()
                        .into_iter()
                        .flat_map(|o| o.values())
                    {
                        let tags = s["Tags"].as_array().into_iter().flatten();
                        m.entry(s["Service"].as_str().unwrap_or("").to_string())
                            .or_default()
                            .extend(tags.filter_map(|t| t.as_str().map(String::from)));
                    }
                    m
                }
            };
            if tags {
                table(
                    services
                        .into_iter()
                        .map(|(name, mut t)| {
                            t.sort();
                            t.dedup();
                            vec![name, t.join(",")]
                        })
                        .collect(),
                );
            } else {
                for name in services.keys() {
                    println!("{name}");
                }
            }
            Ok(0)
        }
        CatalogCommand::Nodes { service, client } => {
            let agent = Agent::new(&client)?;
            let mut rows = vec![vec![
                "Node".into(),
                "ID".into(),
                "Address".into(),
                "DC".into(),
            ]];
            let list = match &service {
                None => agent.get("/v1/catalog/nodes").await?.ok()?.json()?,
                Some(s) => agent
                    .get(&format!("/v1/catalog/service/{s}"))
                    .await?
                    .ok()?
                    .json()?,
            };
            let mut seen = std::collections::BTreeSet::new();
            for n in list.as_array().into_iter().flatten() {
                let name = n["Node"].as_str().unwrap_or("").to_string();
                if !seen.insert(name.clone()) {
                    continue;
                }
                let id = n["ID"].as_str().unwrap_or("");
                rows.push(vec![
                    name,
                    id.chars().take(8).collect(),
                    n["Address"].as_str().unwrap_or("").into(),
                    n["Datacenter"].as_str().unwrap_or("").into(),
                ]);
            }
            table(rows);
            Ok(0)
        }
    }
}

pub(super) async fn members(client: &ClientArgs) -> Result<i32> {
    let agent = Agent::new(client)?;
    let list = agent.get("/v1/agent/members").await?.ok()?.json()?;
    let mut rows = vec![[
        "Node", "Address", "Status", "Type", "Build", "Protocol", "DC",
    ]
    .map(String::from)
    .to_vec()];
    for m in list.as_array().into_iter().flatten() {
        let status = match m["Status"].as_u64() {
            Some(1) => "alive",
            Some(3) => "left",
            Some(4) => "failed",
            _ => "unknown",
        };
        let tags = &m["Tags"];
        rows.push(vec![
            m["Name"].as_str().unwrap_or("").into(),
            format!("{}:{}", m["Addr"].as_str().unwrap_or(""), m["Port"]),
            status.into(),
            if tags["role"] == "consul" {
                "server"
            } else {
                "client"
            }
            .into(),
            tags["build"].as_str().unwrap_or("").into(),
            m["ProtocolCur"].to_string(),
            tags["dc"].as_str().unwrap_or("").into(),
        ]);
    }
    table(rows);
    Ok(0)
}

pub(super) async fn info(client: &ClientArgs) -> Result<i32> {
    let agent = Agent::new(client)?;
    let me = agent.get("/v1/agent/self").await?.ok()?.json()?;
    let mut out = std::io::stdout().lock();
    for (section, v) in [("agent", &me["Config"]), ("member", &me["Member"])] {
        let _ = writeln!(out, "{section}:");
        for (k, v) in v.as_object().into_iter().flatten() {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = writeln!(out, "\t{k} = {text}");
        }
    }
    Ok(0)
}
