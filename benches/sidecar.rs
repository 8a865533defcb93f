//! Sidecar mode at scale: the time to mirror 1,000 services × 10 instances,
//! the memory that costs, and the "change → visible in DNS" latency, end to
//! end and as signpost's own metric (blocking response in → DNS).
//!
//! `cargo bench --bench sidecar` (BENCH_MAX_WATCHES to change the watch
//! slots from the default 128; 1100 lets every service block). The upstream is a standalone signpost
//! (it speaks Consul's HTTP API) in a child process, so the memory measured
//! is the sidecar's own. Loopback only.

#![allow(clippy::unwrap_used)]

mod common;

use common::rss_mib;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use signpost::config::ConsulConfig;
use signpost::registry::definition::CatalogRegistration;
use signpost::registry::Source;
use signpost::{Config, Signpost};

const UPSTREAM_ENV: &str = "SIGNPOST_BENCH_UPSTREAM";
const SERVICES: usize = 1000;
const INSTANCES: usize = 10;

fn registration(s: usize, i: usize) -> String {
    let n = s * INSTANCES + i + 1;
    format!(
        r#"{{"Node": "n{s}-{i}", "Address": "10.{}.{}.{}", "Service": {{"ID": "s{s}-{i}", "Service": "s{s}", "Port": 8080}}}}"#,
        n >> 16 & 255,
        n >> 8 & 255,
        (n & 255).max(1)
    )
}

/// The child: a standalone signpost with the catalog, printing its HTTP
/// address.
async fn upstream() {
    let s = Signpost::start(Config::ephemeral()).await.unwrap();
    // As API registrations, so the parent can change them over HTTP.
    s.registry.write(|t| {
        for svc in 0..SERVICES {
            for i in 0..INSTANCES {
                let reg: CatalogRegistration = serde_json::from_str(&registration(svc, i)).unwrap();
                let parts = reg.into_parts("dc1", Source::Api);
                t.upsert_node(parts.node);
                if let Some((inst, _)) = parts.service {
                    t.upsert_instance(inst);
                }
            }
        }
    });
    println!("{}", s.http_addr());
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

fn a_count(dns: SocketAddr, name: &str) -> usize {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    m.set_edns(e);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&m.to_vec().unwrap(), dns).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap().answers.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if std::env::var_os(UPSTREAM_ENV).is_some() {
        rt.block_on(upstream());
        return;
    }
    if !std::env::args().any(|a| a == "--bench") {
        println!("sidecar: run with `cargo bench --bench sidecar`");
        return;
    }
    let (mut child, upstream) = common::spawn_peer(UPSTREAM_ENV);

    rt.block_on(async {
        let rss_before = rss_mib();
        let mut config = Config::ephemeral();
        config.consul = Some(ConsulConfig {
            url: format!("http://{upstream}"),
            token: None,
            ca_file: None,
            client_identity: None,
            max_watches: std::env::var("BENCH_MAX_WATCHES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        });
        let started = Instant::now();
        let sidecar = Signpost::start(config).await.unwrap();
        let sync = sidecar.consul.clone().unwrap();
        while !sync.is_synced() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let synced_in = started.elapsed();
        let rss_after = rss_mib();
        let dns = sidecar.dns_addrs()[0];
        let http = reqwest::Client::new();
        let mut latencies = Vec::new();
        for k in 0..200 {
            let s = (k * 37) % SERVICES;
            let deregister = format!(r#"{{"Node": "n{s}-0", "ServiceID": "s{s}-0"}}"#);
            http.put(format!("http://{upstream}/v1/catalog/deregister"))
                .body(deregister)
                .send()
                .await
                .unwrap();
            let changed = Instant::now();
            let name = format!("s{s}.service.consul.");
            let seen = tokio::task::spawn_blocking(move || {
                while a_count(dns, &name) != INSTANCES - 1 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
            tokio::time::timeout(Duration::from_secs(10), seen).await.unwrap().unwrap();
            latencies.push(changed.elapsed());
            http.put(format!("http://{upstream}/v1/catalog/register"))
                .body(registration(s, 0))
                .send()
                .await
                .unwrap();
        }
        latencies.sort();
        let metric = sidecar.metrics.render();
        let field = |name: &str| -> f64 {
            metric
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let (sum, count) = (
            field("signpost_consul_change_to_dns_seconds_sum"),
            field("signpost_consul_change_to_dns_seconds_count"),
        );
        println!(
            "sidecar: {SERVICES} services x {INSTANCES} instances from a Consul-API upstream, {} watch slots",
            sidecar.config.consul.as_ref().map(|c| c.max_watches).unwrap_or(0)
        );
        println!("  first full sync          {:.2} s ({} requests)", synced_in.as_secs_f64(), sync.requests());
        println!("  RSS                      {rss_before:.1} MiB before, {rss_after:.1} MiB synced");
        println!(
            "  change -> DNS, end to end p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (200 deregistrations)",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3
        );
        println!(
            "  response in -> DNS (metric) mean {:.3} ms over {count} updates",
            sum / count.max(1.0) * 1e3
        );
        sidecar.shutdown().await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
