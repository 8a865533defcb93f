//! `signpost kv`: get, put, delete, export and import, as `consul kv`.

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::agent::*;
use super::{CliError, ClientArgs, Result};

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (or, with --recurse, every key under a prefix).
    Get {
        key: String,
        #[arg(long)]
        recurse: bool,
        /// Print the entry's fields, not only its value.
        #[arg(long)]
        detailed: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write a key: VALUE, @FILE, or - for standard input.
    Put {
        key: String,
        value: Option<String>,
        /// Write only if the key's ModifyIndex is --modify-index.
        #[arg(long)]
        cas: bool,
        #[arg(long = "modify-index", default_value_t = 0)]
        modify_index: u64,
        #[arg(long, default_value_t = 0)]
        flags: u64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a key, or every key under a prefix with --recurse.
    Delete {
        key: String,
        #[arg(long)]
        recurse: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the keys under PREFIX in Consul's export format (JSON, base64
    /// values).
    Export {
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write the keys of an export: @FILE, - for standard input, or the
    /// JSON itself.
    Import {
        data: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub(super) async fn kv(cmd: KvCommand) -> Result<i32> {
    match cmd {
        KvCommand::Get {
            key,
            recurse,
            detailed,
            client,
        } => {
            let agent = Agent::new(&client)?;
            let q = if recurse { "?recurse" } else { "" };
            let r = agent.get(&format!("{}{q}", kv_path(&key))).await?;
            if r.status == 404 {
                if recurse {
                    return Ok(0);
                }
                return Err(CliError::Consul(format!("Error! No key exists at: {key}")));
            }
            let entries = r.ok()?.json()?;
            let mut out = std::io::stdout().lock();
            for e in entries.as_array().into_iter().flatten() {
                let value = String::from_utf8_lossy(&decode(&e["Value"])).into_owned();
                if detailed {
                    for field in [
                        "CreateIndex",
                        "Flags",
                        "Key",
                        "LockIndex",
                        "ModifyIndex",
                        "Session",
                    ] {
                        let v = match &e[field] {
                            Value::String(s) => s.clone(),
                            Value::Null => "-".into(),
                            other => other.to_string(),
                        };
                        let _ = writeln!(out, "{field:<16} {v}");
                    }
                    let _ = writeln!(out, "{:<16} {value}", "Value");
                    if recurse {
                        let _ = writeln!(out);
                    }
                } else if recurse {
                    let _ = writeln!(out, "{}:{value}", e["Key"].as_str().unwrap_or(""));
                } else {
                    let _ = writeln!(out, "{value}");
                }
            }
            Ok(0)
        }
        KvCommand::Put {
            key,
            value,
            cas,
            modify_index,
            flags,
            client,
        } => {
            let agent = Agent::new(&client)?;
            let body = match value.as_deref() {
                None => Vec::new(),
                Some(v) => read_input(v)?,
            };
            let mut pairs = vec![];
            let flags_s = flags.to_string();
            let cas_s = modify_index.to_string();
            if flags != 0 {
                pairs.push(("flags", flags_s.as_str()));
            }
            if cas {
                pairs.push(("cas", cas_s.as_str()));
            }
            let path = format!("{}?{}", kv_path(&key), query(&pairs));
            let r = agent.put(&path, body).await?.ok()?;
            if r.json()? == json!(false) {
                return Err(CliError::Consul(format!(
                    "Error! Did not write to {key}: CAS failed"
                )));
            }
            println!("Success! Data written to: {key}");
            Ok(0)
        }
        KvCommand::Delete {
            key,
            recurse,
            client,
        } => {
            let agent = Agent::new(&client)?;
            let q = if recurse { "?recurse" } else { "" };
            agent.delete(&format!("{}{q}", kv_path(&key))).await?.ok()?;
            if recurse {
                println!("Success! Deleted keys with prefix: {key}");
            } else {
                println!("Success! Deleted key: {key}");
            }
            Ok(0)
        }
        KvCommand::Export { prefix, client } => {
            let agent = Agent::new(&client)?;
            let r = agent.get(&format!("{}?recurse", kv_path(&prefix))).await?;
            let entries = if r.status == 404 {
                json!([])
            } else {
                r.ok()?.json()?
            };
            let out: Vec<Value> = entries
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    json!({
                        "key": e["Key"],
                        "flags": e["Flags"],
                        "value": e["Value"].as_str().unwrap_or(""),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&out).expect("json"));
            Ok(0)
        }
        KvCommand::Import { data, client } => {
            let agent = Agent::new(&client)?;
            let raw = read_input(data.as_deref().unwrap_or("-"))?;
            let entries: Vec<Value> = serde_json::from_slice(&raw)
                .map_err(|e| CliError::Usage(format!("cannot parse the import data: {e}")))?;
            for e in &entries {
                let key = e["key"]
                    .as_str()
                    .ok_or_else(|| CliError::Usage("an entry has no \"key\"".into()))?;
                let value = decode(&e["value"]);
                let flags = e["flags"].as_u64().unwrap_or(0).to_string();
                let path = format!("{}?{}", kv_path(key), query(&[("flags", &flags)]));
                agent.put(&path, value).await?.ok()?;
                println!("Imported: {key}");
            }
            Ok(0)
        }
    }
}
