//! `signpost services register|deregister`, as `consul services`.

use clap::Subcommand;
use serde_json::Value;

use super::agent::*;
use super::{CliError, ClientArgs, Result};

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// Register the services of a definition file (or - for stdin), in the
    /// zones/ and Consul `-config-file` format.
    Register {
        file: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Deregister a service by --id, or those a definition file names.
    Deregister {
        #[arg(long)]
        id: Option<String>,
        file: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// The service definitions of a file: `{"service": {...}}`,
/// `{"services": [...]}`, or one bare definition.
pub(super) fn definitions(text: &[u8]) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_slice(text)
        .map_err(|e| CliError::Usage(format!("cannot parse the service definition: {e}")))?;
    let field = |name: &str| {
        v.as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
            .map(|(_, v)| v.clone())
    };
    Ok(match (field("service"), field("services")) {
        (Some(s), _) => vec![s],
        (None, Some(Value::Array(list))) => list,
        _ => vec![v],
    })
}

pub(super) fn def_field<'a>(def: &'a Value, name: &str) -> Option<&'a str> {
    def.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

pub(super) async fn services(cmd: ServicesCommand) -> Result<i32> {
    match cmd {
        ServicesCommand::Register { file, client } => {
            let agent = Agent::new(&client)?;
            let source = if file == "-" {
                file.clone()
            } else {
                format!("@{file}")
            };
            for def in definitions(&read_input(&source)?)? {
                let name = def_field(&def, "name").unwrap_or("").to_string();
                agent
                    .put("/v1/agent/service/register", def.to_string().into_bytes())
                    .await?
                    .ok()?;
                println!("Registered service: {name}");
            }
            Ok(0)
        }
        ServicesCommand::Deregister { id, file, client } => {
            let agent = Agent::new(&client)?;
            let ids: Vec<String> = match (id, file) {
                (Some(id), None) => vec![id],
                (None, Some(file)) => {
                    let source = if file == "-" {
                        file
                    } else {
                        format!("@{file}")
                    };
                    definitions(&read_input(&source)?)?
                        .iter()
                        .map(|d| {
                            def_field(d, "id")
                                .or_else(|| def_field(d, "name"))
                                .unwrap_or("")
                                .to_string()
                        })
                        .collect()
                }
                _ => {
                    return Err(CliError::Usage(
                        "give either --id or a definition file".into(),
                    ))
                }
            };
            for id in ids {
                let path = format!(
                    "/v1/agent/service/deregister/{}",
                    form_urlencoded::byte_serialize(id.as_bytes()).collect::<String>()
                );
                agent.put(&path, Vec::new()).await?.ok()?;
                println!("Deregistered service: {id}");
            }
            Ok(0)
        }
    }
}
