//! The cost of running 10,000 HTTP checks at a 10 s interval: CPU time and
//! resident memory of signpost, probe runs per second, and how many TCP
//! connections the target saw (connection reuse).
//!
//! `cargo bench --bench health_checks` (BENCH_CHECKS, BENCH_SECONDS to
//! change the defaults). The target runs in a child process (this binary
//! again), so only signpost's own work is counted. Loopback only.

#![allow(clippy::unwrap_used)]

mod common;

use common::rss_mib;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::routing::get;
use signpost::registry::definition::ServiceDef;
use signpost::registry::Source;
use signpost::{Config, Signpost};

const TARGET_ENV: &str = "SIGNPOST_BENCH_TARGET";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The child: an HTTP target that answers 200 and counts distinct peers.
async fn target() {
    let peers: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let seen = peers.clone();
    let app = axum::Router::new()
        .route(
            "/health",
            get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
                seen.lock().unwrap().insert(peer);
                async { "ok" }
            }),
        )
        .route(
            "/connections",
            get(move || {
                let n = peers.lock().unwrap().len();
                async move { n.to_string() }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap());
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .unwrap();
}

/// utime + stime of this process, in seconds (Linux, 100 ticks a second).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if std::env::var_os(TARGET_ENV).is_some() {
        rt.block_on(target());
        return;
    }
    // Under `cargo test --benches` (or `--all-targets`) just prove it runs.
    if !std::env::args().any(|a| a == "--bench") {
        println!("health_checks: run with `cargo bench --bench health_checks`");
        return;
    }
    let checks = env_or("BENCH_CHECKS", 10_000);
    let seconds = env_or("BENCH_SECONDS", 30);
    let (mut child, target) = common::spawn_peer(TARGET_ENV);

    rt.block_on(async {
        let signpost = Signpost::start(Config::ephemeral()).await.unwrap();
        let rss_before = rss_mib();
        let node = signpost.config.node.clone();
        let started = Instant::now();
        for i in 0..checks {
            let def: ServiceDef = serde_json::from_str(&format!(
                r#"{{"Name": "s{}", "ID": "c{i}", "Port": 80,
                    "Check": {{"HTTP": "http://{target}/health", "Interval": "10s", "Timeout": "2s"}}}}"#,
                i % 1000
            ))
            .unwrap();
            let (inst, defs) = def.into_parts(&node, Source::Api);
            signpost.registry.write(|t| {
                t.upsert_instance(inst);
                for c in defs {
                    t.upsert_check(c);
                }
            });
        }
        let registered = started.elapsed();
        // First runs are spread over one interval; measure after it.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let (cpu0, runs0, t0) = (cpu_seconds(), signpost.health.runs(), Instant::now());
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (cpu1, runs1, wall) = (cpu_seconds(), signpost.health.runs(), t0.elapsed().as_secs_f64());
        let rss_after = rss_mib();
        let runs: u64 = runs1.iter().sum::<u64>() - runs0.iter().sum::<u64>();
        let critical = runs1[2] - runs0[2];
        let connections: String = reqwest::get(format!("http://{target}/connections"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        println!("health checks: {checks} HTTP checks, 10 s interval, measured over {wall:.0} s");
        println!("  registered in           {:.2} s", registered.as_secs_f64());
        println!("  check tasks running     {}", signpost.health.running());
        println!("  probe runs per second   {:.0} (expected {:.0}); critical {critical}", runs as f64 / wall, checks as f64 / 10.0);
        println!("  CPU                     {:.1} % of one core", (cpu1 - cpu0) / wall * 100.0);
        println!("  RSS                     {rss_before:.1} MiB before, {rss_after:.1} MiB with the checks ({:.1} KiB per check)",
            (rss_after - rss_before) * 1024.0 / checks as f64);
        println!("  connections to target   {connections} (reused across {runs} runs)");
        signpost.shutdown().await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
