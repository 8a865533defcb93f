//! The durable write path under concurrency: 32 HTTP writers registering
//! services against a signpost with `--data-dir`, while readers time HTTP
//! reads. Reports durable writes/s, write latency (a 200 means the change is
//! on disk and in DNS, so this is the write-to-DNS latency, checked by a DNS
//! query after a sample of the acknowledgements), and HTTP read latency alone
//! and under the write load, as ratios from one run. A last phase reads
//! under a paced write load (`WRITE_BENCH_PACED` writes/s, default 2,000,
//! from 8 writers): below saturation, reads should not notice the writes
//! at all, since no read waits for the disk or a writer.
//!
//! `cargo bench --bench write_path` runs an in-process signpost on a temp
//! dir. `WRITE_BENCH_URL=http://127.0.0.1:8500 WRITE_BENCH_DNS=127.0.0.1:8600`
//! runs the same load against a signpost you started (another build, for a
//! before/after ratio). `WRITE_BENCH_SECONDS` sets each phase's length
//! (default 5), `WRITE_BENCH_WRITERS` the writer count (default 32).

#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Whether `name` answers A records now (one UDP query).
fn in_dns(dns: SocketAddr, name: &str) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let mut m = Message::query();
    m.metadata.id = fastrand::u16(..);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    sock.send_to(&m.to_vec().expect("encode"), dns)
        .expect("send");
    let mut buf = [0u8; 4096];
    let Ok(n) = sock.recv(&mut buf) else {
        return false;
    };
    Message::from_vec(&buf[..n])
        .map(|r| r.metadata.response_code == ResponseCode::NoError && !r.answers.is_empty())
        .unwrap_or(false)
}

/// Reads for `seconds` with two clients; their latencies.
async fn read_phase(base: &str, seconds: f64, stop_writers: Option<&AtomicBool>) -> Vec<Duration> {
    let lat = Arc::new(Mutex::new(Vec::new()));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (lat, url) = (lat.clone(), format!("{base}/v1/catalog/service/web"));
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while Instant::now() < until {
                let t = Instant::now();
                let r = client.get(&url).send().await.expect("read");
                assert!(r.status().is_success());
                r.bytes().await.expect("body");
                lat.lock().unwrap().push(t.elapsed());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    if let Some(stop) = stop_writers {
        stop.store(true, Ordering::Relaxed);
    }
    let mut v = lat.lock().unwrap().clone();
    v.sort();
    v
}

/// Registers service `name` at `address`; panics unless it is acknowledged.
async fn register(client: &reqwest::Client, base: &str, name: &str, address: &str) {
    let body = format!(r#"{{"Name":"{name}","Address":"{address}","Port":80}}"#);
    let r = client
        .put(format!("{base}/v1/agent/service/register"))
        .body(body)
        .send()
        .await
        .expect("write");
    assert!(r.status().is_success(), "write refused: {}", r.status());
}

/// Writes at `rate` a second from 8 writers (open loop: each sends on
/// its own clock, whatever the answers' latency) until `stop`; returns how
/// many were acknowledged.
async fn paced_writes(base: &str, rate: f64, stop: Arc<AtomicBool>) -> u64 {
    const WRITERS: usize = 8;
    let every = Duration::from_secs_f64(WRITERS as f64 / rate.max(1.0));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (stop, done, base) = (stop.clone(), done.clone(), base.to_string());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let address = format!("10.200.{}.{}", i / 250 % 250, i % 250 + 1);
                register(&client, &base, &format!("p{w}x{i}"), &address).await;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("write_path: run with `cargo bench --bench write_path`");
        return;
    }
    let seconds: f64 = env_or("WRITE_BENCH_SECONDS", 5.0);
    let writers: usize = env_or("WRITE_BENCH_WRITERS", 32);
    let paced: f64 = env_or("WRITE_BENCH_PACED", 2000.0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let mut local = None;
        let (base, dns) = match std::env::var("WRITE_BENCH_URL") {
            Ok(url) => {
                let dns = std::env::var("WRITE_BENCH_DNS")
                    .expect("WRITE_BENCH_DNS with WRITE_BENCH_URL")
                    .parse()
                    .expect("an address");
                (url, dns)
            }
            Err(_) => {
                let mut config = signpost::Config::ephemeral();
                config.data_dir = Some(dir.path().to_path_buf());
                let s = signpost::Signpost::start(config).await.unwrap();
                let out = (format!("http://{}", s.http_addr()), s.dns_addrs()[0]);
                local = Some(s);
                out
            }
        };
        let client = reqwest::Client::new();
        // Something to read: 20 instances of `web`.
        for i in 0..20 {
            let body = format!(r#"{{"ID":"web{i}","Name":"web","Address":"10.9.0.{}","Port":80}}"#, i + 1);
            client
                .put(format!("{base}/v1/agent/service/register"))
                .body(body)
                .send()
                .await
                .unwrap();
        }
        let alone = read_phase(&base, seconds, None).await;

        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let write_lat = Arc::new(Mutex::new(Vec::new()));
        let dns_misses = Arc::new(AtomicU64::new(0));
        let dns_checked = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (stop, done, lat) = (stop.clone(), done.clone(), write_lat.clone());
            let (misses, checked, base) = (dns_misses.clone(), dns_checked.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("b{w}x{i}");
                    let address = format!("10.{}.{}.{}", w + 1, i / 250 % 250, i % 250 + 1);
                    let t = Instant::now();
                    register(&client, &base, &name, &address).await;
                    lat.lock().unwrap().push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                    if i.is_multiple_of(50) {
                        let fqdn = format!("{name}.service.consul.");
                        let ok = tokio::task::spawn_blocking(move || in_dns(dns, &fqdn))
                            .await
                            .unwrap();
                        checked.fetch_add(1, Ordering::Relaxed);
                        if !ok {
                            misses.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    i += 1;
                }
            }));
        }
        let loaded = read_phase(&base, seconds, Some(&stop)).await;
        for t in tasks {
            t.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let writes = done.load(Ordering::Relaxed);
        let mut wl = write_lat.lock().unwrap().clone();
        wl.sort();
        let rate = writes as f64 / elapsed;
        println!("write_path: {writers} writers, {seconds} s a phase");
        println!("  durable writes/s          {rate:>10.0}  ({writes} writes)");
        println!(
            "  write -> in DNS, ms       p50 {:.2}  p99 {:.2}  (DNS checked after {} acks, {} missing)",
            ms(percentile(&wl, 0.5)),
            ms(percentile(&wl, 0.99)),
            dns_checked.load(Ordering::Relaxed),
            dns_misses.load(Ordering::Relaxed)
        );
        let (a50, a99) = (percentile(&alone, 0.5), percentile(&alone, 0.99));
        let (l50, l99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
        println!("  HTTP read alone, ms       p50 {:.2}  p99 {:.2}", ms(a50), ms(a99));
        println!("  HTTP read under writes    p50 {:.2}  p99 {:.2}", ms(l50), ms(l99));
        println!("  read p99 ratio, loaded/alone: {:.2}", ms(l99) / ms(a99).max(1e-9));

        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let pacer = tokio::spawn({
            let (base, stop) = (base.clone(), stop.clone());
            async move { paced_writes(&base, paced, stop).await }
        });
        let under_paced = read_phase(&base, seconds, Some(&stop)).await;
        let paced_done = pacer.await.unwrap();
        let (p50, p99) = (percentile(&under_paced, 0.5), percentile(&under_paced, 0.99));
        println!(
            "  HTTP read under {:.0} writes/s (paced)  p50 {:.2}  p99 {:.2}  ratio to alone {:.2}",
            paced_done as f64 / started.elapsed().as_secs_f64(),
            ms(p50),
            ms(p99),
            ms(p99) / ms(a99).max(1e-9)
        );
        if let Some(s) = &local {
            let st = s.registry.store_status();
            let b = st.batches.load(Ordering::Relaxed).max(1);
            let w = st.batched_writes.load(Ordering::Relaxed);
            println!("  writes per fsync (group commit): {:.1}", w as f64 / b as f64);
        }
        if let Some(s) = local {
            s.shutdown().await;
        }
    });
}
