//! `signpost lock`: hold a lock (or a semaphore slot) while a command runs,
//! as `consul lock`.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::agent::*;
use super::{CliError, ClientArgs, Result};

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

/// Holds a lock (or a semaphore slot) while a command runs.
pub(super) async fn lock(l: LockArgs) -> Result<i32> {
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
pub(super) async fn acquire(
    agent: &Agent,
    prefix: &str,
    session: &str,
    limit: usize,
) -> Result<()> {
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
pub(super) async fn semaphore_take(
    agent: &Agent,
    prefix: &str,
    session: &str,
    limit: usize,
) -> Result<bool> {
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

pub(super) async fn release(agent: &Agent, prefix: &str, session: &str, limit: usize) {
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
pub(super) async fn run_holding(
    agent: &Agent,
    command: &[String],
    key: &str,
    session: &str,
) -> Result<i32> {
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
