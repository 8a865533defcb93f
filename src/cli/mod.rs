//! The commands Consul users type, against a running signpost (or any
//! Consul agent) over the HTTP API: `kv`, `services`, `catalog`, `members`,
//! `info`, `watch` and `lock`. Output and exit codes follow Consul's CLI;
//! the address comes from `--http-addr` or `CONSUL_HTTP_ADDR`, the token
//! from `--token`, `CONSUL_HTTP_TOKEN` or `CONSUL_HTTP_TOKEN_FILE`.
//! Consul's single-dash spelling (`-http-addr`, `-recurse`) is accepted too
//! (see [`consul_style_args`]).
//!
//! One file per command; `agent` holds the client they share, `args` the
//! rewriting of Consul-style arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Flags;

mod agent;
mod args;
mod catalog;
mod kv;
mod lock;
mod services;
mod watch;

pub use args::consul_style_args;
pub use catalog::CatalogCommand;
pub use kv::KvCommand;
pub use lock::LockArgs;
pub use services::ServicesCommand;
pub use watch::WatchArgs;

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

pub(crate) type Result<T> = std::result::Result<T, CliError>;

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
        C::Kv(k) => kv::kv(k).await,
        C::Services(s) => services::services(s).await,
        C::Catalog(c) => catalog::catalog(c).await,
        C::Members(client) => catalog::members(&client).await,
        C::Info(client) => catalog::info(&client).await,
        C::Watch(w) => watch::watch(w).await,
        C::Lock(l) => lock::lock(l).await,
    }
}
