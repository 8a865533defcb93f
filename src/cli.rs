//! The commands Consul users type, against a running signpost (or any
//! Consul agent) over the HTTP API: `kv`, `services`, `catalog`, `members`,
//! `info`, `watch` and `lock`. Output and exit codes follow Consul's CLI;
//! the address comes from `--http-addr` or `CONSUL_HTTP_ADDR`, the token
//! from `--token`, `CONSUL_HTTP_TOKEN` or `CONSUL_HTTP_TOKEN_FILE`.
//! Consul's single-dash spelling (`-http-addr`, `-recurse`) is accepted too
//! (see [`consul_style_args`]).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::Flags;
use crate::consul_client::{ConsulClient, Reply};

/// Where the agent is and who we are to it.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// The agent's HTTP address (host:port or http://host:port).
    #[arg(
        long = "http-addr",
        env = "CONSUL_HTTP_ADDR",
        default_value = "127.0.0.1:8500",
        value_name = "ADDR"
    )]
    pub http_addr: String,
    /// ACL token sent as X-Consul-Token.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the ACL token.
    #[arg(
        long = "token-file",
        env = "CONSUL_HTTP_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<PathBuf>,
}

/// signpost: a DNS server for service discovery.
///
/// Answers `web.service.consul` A/AAAA/SRV queries from an in-memory
/// registry fed by service definitions in `--zones`, its Consul-compatible
/// HTTP API, the Docker engine (`--docker`) or a Consul agent (`--consul`).
/// Instances whose health checks are critical are never answered; record
/// order rotates between queries.
#[derive(Debug, Parser)]
#[command(name = "signpost", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub opts: Flags,
}

/// What to do instead of serving. (Made once per process: the size of its
/// variants does not matter.)
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Check the configuration file and the zones directory, then exit:
    /// prints `file:line: reason` and exits 1 on the first problem, exits 0
    /// when everything loads.
    Check,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that talk to a running agent over HTTP (and need no
/// configuration of their own).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Read and write the KV store (get, put, delete, export, import).
    #[command(subcommand)]
    Kv(KvCommand),
    /// Register and deregister services with the agent.
    #[command(subcommand)]
    Services(ServicesCommand),
    /// List the catalog's services and nodes.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// List the agent's members.
    Members(ClientArgs),
    /// Show the agent's configuration and membership.
    Info(ClientArgs),
    /// Follow a view (key, keyprefix, services, nodes, service, checks,
    /// event) with blocking queries; run a handler on every change.
    Watch(WatchArgs),
    /// Hold a lock (or one of -n semaphore slots) while a command runs.
    Lock(LockArgs),
}

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

/// What `watch` follows.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// key, keyprefix, services, nodes, service, checks or event.
    #[arg(long = "type")]
    pub kind: String,
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long)]
    pub prefix: Option<String>,
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long)]
    pub tag: Vec<String>,
    /// With -type=service: passing instances only.
    #[arg(long)]
    pub passingonly: bool,
    /// With -type=checks and no -service: checks in this state.
    #[arg(long)]
    pub state: Option<String>,
    /// With -type=event: the event name.
    #[arg(long)]
    pub name: Option<String>,
    /// Run this on every change, the watch's JSON on its stdin; without
    /// it, print the JSON.
    #[arg(trailing_var_arg = true)]
    pub handler: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// What `lock` holds.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// Holders allowed at once (a semaphore when above 1).
    #[arg(short = 'n', default_value_t = 1)]
    pub limit: usize,
    /// Session name.
    #[arg(long, default_value = "signpost lock")]
    pub name: String,
    /// The KV prefix the lock lives under.
    pub prefix: String,
    /// The command to run while holding the lock.
    #[arg(required = true, trailing_var_arg = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// A failure, printed as one line; `Error! ...` lines are Consul's own.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the agent at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{0}")]
    Consul(String),
    #[error("{0}")]
    Usage(String),
}

type Result<T> = std::result::Result<T, CliError>;

/// Rewrites Consul's single-dash long options (`-http-addr=x`,
/// `-recurse`) to the double-dash form clap takes. Only options of the
/// client commands are rewritten, and only before the command's own
/// arguments end (`--`, or a handler or lock command).
pub fn consul_style_args(args: Vec<String>) -> Vec<String> {
    const LONG: &[&str] = &[
        "http-addr",
        "token",
        "token-file",
        "recurse",
        "detailed",
        "cas",
        "modify-index",
        "flags",
        "tags",
        "node",
        "service",
        "type",
        "key",
        "prefix",
        "tag",
        "passingonly",
        "state",
        "name",
        "id",
    ];
    let is_client = args.get(1).is_some_and(|c| {
        [
            "kv", "services", "catalog", "watch", "lock", "members", "info",
        ]
        .contains(&c.as_str())
    });
    if !is_client {
        return args;
    }
    let mut out = Vec::with_capacity(args.len());
    let mut done = false;
    for a in args {
        if !done && a == "--" {
            done = true;
        }
        let name = a.strip_prefix('-').filter(|r| !r.starts_with('-'));
        let word = name.map(|r| r.split('=').next().unwrap_or(r));
        if !done && word.is_some_and(|w| LONG.contains(&w)) {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

/// The agent a command talks to: the shared Consul client, whose failures
/// the CLI words its own way.
struct Agent {
    client: ConsulClient,
}

trait ReplyExt: Sized {
    fn json(&self) -> Result<Value>;
    fn ok(self) -> Result<Self>;
}

impl ReplyExt for Reply {
    fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CliError::Consul(format!("unexpected answer from the agent: {e}")))
    }

    fn ok(self) -> Result<Reply> {
        if self.is_success() {
            Ok(self)
        } else {
            Err(CliError::Consul(format!(
                "Unexpected response code: {} ({})",
                self.status,
                self.text(usize::MAX)
            )))
        }
    }
}

impl Agent {
    fn new(args: &ClientArgs) -> Result<Agent> {
        let token = match (&args.token, &args.token_file) {
            (Some(t), _) if !t.is_empty() => Some(t.clone()),
            (_, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        CliError::Usage(format!("cannot read token file {}: {e}", f.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            _ => None,
        };
        // Blocking queries wait up to 10 minutes and a bit.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(700))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(Agent {
            client: ConsulClient::new(&args.http_addr, token, http),
        })
    }

    fn base(&self) -> &str {
        self.client.base()
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply> {
        self.client
            .call(method, path, body, None)
            .await
            .map_err(|e| CliError::Unreachable {
                addr: self.base().to_string(),
                reason: e.reason,
            })
    }

    async fn get(&self, path: &str) -> Result<Reply> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> Result<Reply> {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Result<Reply> {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// A key or prefix as a URL path (slashes kept).
fn kv_path(key: &str) -> String {
    format!(
        "/v1/kv/{}",
        key.split('/')
            .map(|p| form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>())
            .collect::<Vec<_>>()
            .join("/")
    )
}

fn query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn decode(v: &Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
        .unwrap_or_default()
}

/// Reads `@file`, `-` (stdin) or the text itself.
fn read_input(arg: &str) -> Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read standard input: {e}")))?;
        Ok(buf)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(path).map_err(|e| CliError::Usage(format!("cannot read {path}: {e}")))
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

/// Runs a client command; the process exit code.
pub fn run(command: ClientCommand) -> i32 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime starts");
    match rt.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(e) => {
            let text = e.to_string();
            if text.starts_with("Error!") {
                eprintln!("{text}");
            } else {
                eprintln!("error: {text}");
            }
            1
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<i32> {
    use ClientCommand as C;
    match command {
        C::Kv(k) => kv(k).await,
        C::Services(s) => services(s).await,
        C::Catalog(c) => catalog(c).await,
        C::Members(client) => members(&client).await,
        C::Info(client) => info(&client).await,
        C::Watch(w) => watch(w).await,
        C::Lock(l) => lock(l).await,
    }
}

async fn kv(cmd: KvCommand) -> Result<i32> {
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

/// The service definitions of a file: `{"service": {...}}`,
/// `{"services": [...]}`, or one bare definition.
fn definitions(text: &[u8]) -> Result<Vec<Value>> {
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

fn def_field<'a>(def: &'a Value, name: &str) -> Option<&'a str> {
    def.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

async fn services(cmd: ServicesCommand) -> Result<i32> {
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

/// Prints rows as columns two spaces apart, as Consul's tables.
fn table(rows: Vec<Vec<String>>) {
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

async fn catalog(cmd: CatalogCommand) -> Result<i32> {
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

async fn members(client: &ClientArgs) -> Result<i32> {
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

async fn info(client: &ClientArgs) -> Result<i32> {
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

/// The endpoint a watch type reads, and whether the answer is one object
/// (`key`) rather than the list the endpoint gives.
fn watch_path(w: &WatchArgs) -> Result<(String, bool)> {
    let need = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| CliError::Usage(format!("-type={} needs -{what}", w.kind)))
    };
    let tags: Vec<(&str, &str)> = w.tag.iter().map(|t| ("tag", t.as_str())).collect();
    Ok(match w.kind.as_str() {
        "key" => (kv_path(&need(&w.key, "key")?), true),
        "keyprefix" => (format!("{}?recurse", kv_path(&need(&w.prefix, "prefix")?)), false),
        "services" => ("/v1/catalog/services?".into(), false),
        "nodes" => ("/v1/catalog/nodes?".into(), false),
        "service" => {
            let mut q = tags.clone();
            if w.passingonly {
                q.push(("passing", "1"));
            }
            (
                format!("/v1/health/service/{}?{}", need(&w.service, "service")?, query(&q)),
                false,
            )
        }
        "checks" => match (&w.service, &w.state) {
            (Some(s), _) => (format!("/v1/health/checks/{s}?"), false),
            (None, state) => (
                format!("/v1/health/state/{}?", state.as_deref().unwrap_or("any")),
                false,
            ),
        },
        "event" => {
            let q = w.name.as_deref().map(|n| query(&[("name", n)])).unwrap_or_default();
            (format!("/v1/event/list?{q}"), false)
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown watch type {other:?}: use key, keyprefix, services, nodes, service, checks or event"
            )))
        }
    })
}

/// Starts `argv` (through `sh -c` when it is one string) with a pipe on
/// its standard input and `CONSUL_INDEX` set, as `consul watch` does.
fn spawn(argv: &[String], index: u64) -> std::io::Result<std::process::Child> {
    let mut cmd = if argv.len() == 1 {
        let mut c = std::process::Command::new("sh");
        c.arg("-c").arg(&argv[0]);
        c
    } else {
        let mut c = std::process::Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    cmd.env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .spawn()
}

async fn watch(w: WatchArgs) -> Result<i32> {
    let agent = Agent::new(&w.client)?;
    let (path, single) = watch_path(&w)?;
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut index = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        // No index on the first read: it returns at once.
        let url = if index == 0 {
            path.clone()
        } else {
            format!("{path}{sep}index={index}&wait=5m")
        };
        let r = match agent.get(&url).await {
            Ok(r) if r.status == 200 || r.status == 404 => r,
            Ok(r) => {
                eprintln!("watch: {url}: status {}; retrying", r.status);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
            Err(e) => {
                eprintln!("watch: {e}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        // Consul's rule: an index that went backwards starts over.
        if r.index == index && index != 0 {
            continue;
        }
        index = if r.index < index { 0 } else { r.index };
        let mut data = if r.status == 404 {
            Value::Null
        } else {
            r.json()?
        };
        if single {
            data = data
                .as_array()
                .and_then(|a| a.first().cloned())
                .unwrap_or(Value::Null);
        }
        let text = serde_json::to_string_pretty(&data).expect("json");
        if w.handler.is_empty() {
            println!("{text}");
            continue;
        }
        let handler = w.handler.clone();
        let idx = index;
        let status =
            tokio::task::spawn_blocking(move || -> std::io::Result<std::process::ExitStatus> {
                let mut child = spawn(&handler, idx)?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(text.as_bytes());
                }
                child.wait()
            })
            .await
            .expect("handler task");
        match status {
            Ok(s) if !s.success() => eprintln!("watch: handler exited with {s}"),
            Err(e) => eprintln!("watch: cannot run the handler: {e}"),
            _ => {}
        }
    }
}

/// Holds a lock (or a semaphore slot) while a command runs.
async fn lock(l: LockArgs) -> Result<i32> {
    if l.limit == 0 {
        return Err(CliError::Usage("-n must be at least 1".into()));
    }
    let agent = Agent::new(&l.client)?;
    let prefix = l.prefix.trim_end_matches('/').to_string();
    let session_body =
        json!({"Name": l.name, "TTL": "15s", "Behavior": "delete", "LockDelay": "1s"});
    let created = agent
        .put("/v1/session/create", session_body.to_string().into_bytes())
        .await?
        .ok()?
        .json()?;
    let session = created["ID"].as_str().unwrap_or("").to_string();
    let renew = {
        let (client, session) = (agent.client.clone(), session.clone());
        tokio::spawn(async move {
            let agent = Agent { client };
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = agent
                    .put(&format!("/v1/session/renew/{session}"), Vec::new())
                    .await;
            }
        })
    };
    let held_key = if l.limit == 1 {
        format!("{prefix}/.lock")
    } else {
        format!("{prefix}/{session}")
    };
    let result = async {
        acquire(&agent, &prefix, &session, l.limit).await?;
        run_holding(&agent, &l.command, &held_key, &session).await
    }
    .await;
    renew.abort();
    release(&agent, &prefix, &session, l.limit).await;
    result
}

/// Waits until the lock (or a semaphore slot) is ours.
async fn acquire(agent: &Agent, prefix: &str, session: &str, limit: usize) -> Result<()> {
    let mut index = 0;
    loop {
        if limit == 1 {
            let path = format!("{}?acquire={session}", kv_path(&format!("{prefix}/.lock")));
            if agent.put(&path, Vec::new()).await?.ok()?.json()? == json!(true) {
                return Ok(());
            }
        } else if semaphore_take(agent, prefix, session, limit).await? {
            return Ok(());
        }
        // Wait for the prefix to change, then try again.
        let r = agent
            .get(&format!(
                "{}?recurse&index={index}&wait=15s",
                kv_path(prefix)
            ))
            .await?;
        index = r.index;
    }
}

/// Consul's semaphore: a contender key per session, and `.lock` holding
/// `{"Limit": N, "Holders": {session: true}}` updated with CAS.
async fn semaphore_take(agent: &Agent, prefix: &str, session: &str, limit: usize) -> Result<bool> {
    let mine = format!(
        "{}?acquire={session}",
        kv_path(&format!("{prefix}/{session}"))
    );
    agent.put(&mine, Vec::new()).await?.ok()?;
    let r = agent.get(&format!("{}?recurse", kv_path(prefix))).await?;
    let entries = if r.status == 404 {
        json!([])
    } else {
        r.ok()?.json()?
    };
    let lock_key = format!("{prefix}/.lock");
    let mut live = std::collections::BTreeSet::new();
    let mut lock_index = 0;
    let mut holders: BTreeMap<String, bool> = BTreeMap::new();
    for e in entries.as_array().into_iter().flatten() {
        let key = e["Key"].as_str().unwrap_or("");
        if key == lock_key {
            lock_index = e["ModifyIndex"].as_u64().unwrap_or(0);
            let body: Value = serde_json::from_slice(&decode(&e["Value"])).unwrap_or(Value::Null);
            holders = serde_json::from_value(body["Holders"].clone()).unwrap_or_default();
        } else if let Some(s) = e["Session"].as_str() {
            live.insert(s.to_string());
        }
    }
    // Holders whose session ended no longer count.
    holders.retain(|s, _| live.contains(s));
    if holders.contains_key(session) {
        return Ok(true);
    }
    if holders.len() >= limit {
        return Ok(false);
    }
    holders.insert(session.to_string(), true);
    let body = json!({"Limit": limit, "Holders": holders}).to_string();
    let path = format!("{}?cas={lock_index}", kv_path(&lock_key));
    Ok(agent.put(&path, body.into_bytes()).await?.ok()?.json()? == json!(true))
}

async fn release(agent: &Agent, prefix: &str, session: &str, limit: usize) {
    if limit == 1 {
        let path = format!("{}?release={session}", kv_path(&format!("{prefix}/.lock")));
        let _ = agent.put(&path, Vec::new()).await;
    } else {
        // Out of the holders (CAS, a few tries), then the session's key.
        for _ in 0..5 {
            let Ok(r) = agent.get(&kv_path(&format!("{prefix}/.lock"))).await else {
                break;
            };
            let Ok(v) = r.json() else { break };
            let Some(e) = v.as_array().and_then(|a| a.first()) else {
                break;
            };
            let mut body: Value = serde_json::from_slice(&decode(&e["Value"])).unwrap_or(json!({}));
            if let Some(h) = body["Holders"].as_object_mut() {
                h.remove(session);
            }
            let path = format!(
                "{}?cas={}",
                kv_path(&format!("{prefix}/.lock")),
                e["ModifyIndex"].as_u64().unwrap_or(0)
            );
            if let Ok(r) = agent.put(&path, body.to_string().into_bytes()).await {
                if r.json().ok() == Some(json!(true)) {
                    break;
                }
            }
        }
    }
    let _ = agent
        .put(&format!("/v1/session/destroy/{session}"), Vec::new())
        .await;
}

/// Runs the command while the lock holds; stops it (SIGTERM) when the lock
/// is lost. The command's exit code.
async fn run_holding(agent: &Agent, command: &[String], key: &str, session: &str) -> Result<i32> {
    let mut child = tokio::process::Command::new(if command.len() == 1 {
        "sh"
    } else {
        &command[0]
    })
    .args(if command.len() == 1 {
        vec!["-c".to_string(), command[0].clone()]
    } else {
        command[1..].to_vec()
    })
    // Its own process group, so that stopping it stops what it started
    // (`sh -c` does not always exec its command).
    .process_group(0)
    .spawn()
    .map_err(|e| CliError::Usage(format!("cannot run {:?}: {e}", command.join(" "))))?;
    let mut index = 0;
    let lost = async {
        loop {
            let r = agent
                .get(&format!("{}?index={index}&wait=15s", kv_path(key)))
                .await?;
            index = r.index;
            let held = r.status == 200
                && r.json()?
                    .as_array()
                    .and_then(|a| a.first())
                    .is_some_and(|e| e["Session"].as_str() == Some(session));
            if !held {
                return Ok::<_, CliError>(());
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| CliError::Usage(format!("cannot listen for SIGTERM: {e}")))?;
    let group = child.id().map(|pid| -(pid as i32));
    let forward = |sig: i32| {
        if let Some(g) = group {
            // SAFETY: signalling our own child's process group.
            unsafe { libc::kill(g, sig) };
        }
    };
    tokio::select! {
        // Interrupted: the command gets the signal, and the lock is
        // released once it ends.
        _ = tokio::signal::ctrl_c() => {
            forward(libc::SIGINT);
            let status = child.wait().await.ok().and_then(|s| s.code());
            Ok(status.unwrap_or(130))
        }
        _ = term.recv() => {
            forward(libc::SIGTERM);
            let status = child.wait().await.ok().and_then(|s| s.code());
            Ok(status.unwrap_or(143))
        }
        status = child.wait() => {
            let status = status.map_err(|e| CliError::Usage(format!("waiting for the command: {e}")))?;
            Ok(status.code().unwrap_or(1))
        }
        r = lost => {
            r?;
            eprintln!("Lock lost, killing child");
            forward(libc::SIGTERM);
            if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                forward(libc::SIGKILL);
                let _ = child.wait().await;
            }
            Ok(1)
        }
    }
}
