//! Sidecar mode at scale: the time to mirror 5,000 services × 10 instances,
//! the memory that costs, the connections it holds to the agent, and the
//! "change → visible in DNS" latency of 500 changes spread over services,
//! end to end and as signpost's own metric (change in a feed → DNS).
//!
//! `cargo bench --bench sidecar` (BENCH_SERVICES for another catalog size,
//! BENCH_MAX_CONNECTIONS for another budget than the default 8). The
//! upstream is a standalone signpost (it speaks Consul's HTTP API) in a
//! child process, so the memory measured is the sidecar's own. Loopback
//! only; the bench's own writes come from 127.0.0.2, so that the
//! connections counted from 127.0.0.1 are the sidecar's.

#![allow(clippy::unwrap_used)]

mod common;

use common::rss_mib;

use std::io::Write;
use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use signpost::config::ConsulConfig;
use signpost::registry::definition::CatalogRegistration;
use signpost::registry::Source;
use signpost::{Config, Signpost};

const UPSTREAM_ENV: &str = "SIGNPOST_BENCH_UPSTREAM";
const INSTANCES: usize = 10;

fn services() -> usize {
    std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

fn registration(s: usize, i: usize, port: u16) -> String {
    let n = s * INSTANCES + i + 1;
    format!(
        r#"{{"Node": "n{s}-{i}", "Address": "10.{}.{}.{}", "Service": {{"ID": "s{s}-{i}", "Service": "s{s}", "Port": {port}}}}}"#,
        n >> 16 & 255,
        n >> 8 & 255,
        (n & 255).max(1)
    )
}

/// Established connections from 127.0.0.1 to `port` (this process's
/// network namespace: the sidecar's, since the bench writes from
/// 127.0.0.2).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && f[1].starts_with("0100007F:")
                && f[2] == format!("0100007F:{port:04X}")
                && f[3] == "01"
        })
        .count()
}

/// The child: a standalone signpost with the catalog, printing its HTTP
/// address.
async fn upstream() {
    let s = Signpost::start(Config::ephemeral()).await.unwrap();
    // As API registrations, so the parent can change them over HTTP.
    s.registry.write(|t| {
        for svc in 0..services() {
            for i in 0..INSTANCES {
                let reg: CatalogRegistration =
                    serde_json::from_str(&registration(svc, i, 8080)).unwrap();
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

/// The ports of the SRV answer for `name`.
fn srv_ports(dns: SocketAddr, name: &str) -> Vec<u16> {
    let mut m = Message::query();
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::SRV));
    let mut e = Edns::new();
    e.set_max_payload(4096);
    m.set_edns(e);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    sock.send_to(&m.to_vec().unwrap(), dns).unwrap();
    let mut buf = [0u8; 8192];
    let n = sock.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n])
        .unwrap()
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::SRV(srv) => Some(srv.port),
            _ => None,
        })
        .collect()
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
    let services = services();

    rt.block_on(async {
        let rss_before = rss_mib();
        let mut config = Config::ephemeral();
        config.consul = Some(ConsulConfig {
            url: format!("http://{upstream}"),
            token: None,
            ca_file: None,
            client_identity: None,
            max_connections: std::env::var("BENCH_MAX_CONNECTIONS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(8),
        });
        let started = Instant::now();
        let sidecar = Signpost::start(config).await.unwrap();
        let sync = sidecar.consul.clone().unwrap();
        while !sync.is_synced() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let synced_in = started.elapsed();
        let synced_requests = sync.requests();
        let rss_after = rss_mib();
        let dns = sidecar.dns_addrs()[0];
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        // Connections to the agent, sampled every 2 ms while changes run.
        let most = Arc::new(AtomicUsize::new(connections_to(upstream.port())));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (most, sampling, port) = (most.clone(), sampling.clone(), upstream.port());
            std::thread::spawn(move || {
                while sampling.load(Ordering::Relaxed) {
                    most.fetch_max(connections_to(port), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let mut latencies = Vec::new();
        let seen_within = |dns: SocketAddr, name: String, want: usize| async move {
            let seen = tokio::task::spawn_blocking(move || {
                while a_count(dns, &name) != want {
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            tokio::time::timeout(Duration::from_secs(10), seen).await.unwrap().unwrap();
        };
        // 500 changes: 250 instances removed, each registered again.
        for k in 0..250 {
            let s = (k * 37) % services;
            let name = format!("s{s}.service.consul.");
            let deregister = format!(r#"{{"Node": "n{s}-0", "ServiceID": "s{s}-0"}}"#);
            http.put(format!("http://{upstream}/v1/catalog/deregister"))
                .body(deregister)
                .send()
                .await
                .unwrap();
            let changed = Instant::now();
            seen_within(dns, name.clone(), INSTANCES - 1).await;
            latencies.push(changed.elapsed());
            http.put(format!("http://{upstream}/v1/catalog/register"))
                .body(registration(s, 0, 8080))
                .send()
                .await
                .unwrap();
            let changed = Instant::now();
            seen_within(dns, name, INSTANCES).await;
            latencies.push(changed.elapsed());
        }
        latencies.sort();
        // Changes in place (a new port under the same ID) that no feed body
        // shows: each costs a read of every service.
        let mut in_place = Vec::new();
        for k in 0..10 {
            let s = (k * 101) % services;
            http.put(format!("http://{upstream}/v1/catalog/register"))
                .body(registration(s, 1, 9000 + k as u16))
                .send()
                .await
                .unwrap();
            let changed = Instant::now();
            let name = format!("s{s}.service.consul.");
            let port = 9000 + k as u16;
            let seen = tokio::task::spawn_blocking(move || {
                while !srv_ports(dns, &name).contains(&port) {
                    std::thread::sleep(Duration::from_micros(500));
                }
            });
            tokio::time::timeout(Duration::from_secs(30), seen).await.unwrap().unwrap();
            in_place.push(changed.elapsed());
        }
        in_place.sort();
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
            "sidecar: {services} services x {INSTANCES} instances from a Consul-API upstream, at most {} connections",
            sidecar.config.consul.as_ref().map(|c| c.max_connections).unwrap_or(0)
        );
        println!("  first full sync          {:.2} s ({synced_requests} requests)", synced_in.as_secs_f64());
        println!("  RSS                      {rss_before:.1} MiB before, {rss_after:.1} MiB synced");
        sampling.store(false, Ordering::Relaxed);
        sampler.join().unwrap();
        let most_connections = most.load(Ordering::Relaxed);
        println!("  connections to the agent {most_connections} at most (sampled every 2 ms)");
        println!(
            "  change -> DNS, end to end p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} changes: removals and registrations)",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().unwrap().as_secs_f64() * 1e3,
            latencies.len()
        );
        println!(
            "  in place (same ID, new port) p50 {:.0} ms, max {:.0} ms ({} changes, {} full re-reads)",
            percentile(&in_place, 0.5).as_secs_f64() * 1e3,
            in_place.last().unwrap().as_secs_f64() * 1e3,
            in_place.len(),
            field("signpost_consul_sweeps_total")
        );
        println!(
            "  change in a feed -> DNS (metric) mean {:.3} ms over {count} reads; {} requests in all",
            sum / count.max(1.0) * 1e3,
            sync.requests()
        );
        sidecar.shutdown().await;
    });
    let _ = child.kill();
    let _ = child.wait();
}
