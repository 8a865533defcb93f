//! `signpost watch`: follow a view with blocking queries and run a handler
//! on every change, as `consul watch`.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use super::agent::*;
use super::{CliError, ClientArgs, Result};

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

/// The endpoint a watch type reads, and whether the answer is one object
/// (`key`) rather than the list the endpoint gives.
pub(super) fn watch_path(w: &WatchArgs) -> Result<(String, bool)> {
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
pub(super) fn spawn(argv: &[String], index: u64) -> std::io::Result<std::process::Child> {
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

pub(super) async fn watch(w: WatchArgs) -> Result<i32> {
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
