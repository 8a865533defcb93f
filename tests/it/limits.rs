//! The API's own rules and signal safety: read-only sources refuse
//! changes, names DNS cannot carry are refused, check output is capped,
//! and a signal at startup is never fatal.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::cli::signpost;
use crate::support::*;

/// A zones/ service refuses maintenance and checks attached to it (both
/// would take it out of DNS), with 403 and the reason; it stays in DNS.
#[tokio::test]
async fn zones_entries_refuse_maintenance_and_attached_checks() {
    let zones = ZoneDir::new(&[(
        "web.json",
        r#"{"service": {"id": "web1", "name": "web", "address": "10.0.0.1", "port": 80}}"#,
    )]);
    let srv = TestServer::start(Some(zones.path())).await;
    let r = http(
        "PUT",
        &srv.url("/v1/agent/service/maintenance/web1?enable=true"),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("zones/") && r.body.contains("read-only"),
        "{}",
        r.body
    );
    let check = r#"{"Name":"kill","ServiceID":"web1","TTL":"10s","Status":"critical"}"#;
    let r = http("PUT", &srv.url("/v1/agent/check/register"), Some(check)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("zones/"), "{}", r.body);
    let r = http("PUT", &srv.url("/v1/agent/service/deregister/web1"), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        a_records(srv.signpost().dns_addrs()[0], "web.service.consul.").await,
        ["10.0.0.1"]
    );
    srv.stop().await;
}

/// Node names: each part must be a DNS label and the whole fit a name;
/// what is accepted answers in DNS, what is not gets 400 with the reason.
#[tokio::test]
async fn node_names_are_answerable_or_refused() {
    let srv = TestServer::start(None).await;
    let dns = srv.signpost().dns_addrs()[0];
    let register = |node: String, svc: &str| {
        format!(
            r#"{{"Node":"{node}","Address":"10.2.0.1","Service":{{"Service":"{svc}","Port":80}}}}"#
        )
    };
    let long_label = "a".repeat(64);
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/register"),
        Some(&register(long_label, "x")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("63 octets"), "{}", r.body);
    let too_long = [
        "b".repeat(60),
        "c".repeat(60),
        "d".repeat(60),
        "e".repeat(30),
    ]
    .join(".");
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/register"),
        Some(&register(too_long, "x")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("at most 200"), "{}", r.body);

    let longest = ["f".repeat(63), "g".repeat(63), "h".repeat(63)].join(".");
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/register"),
        Some(&register(longest.clone(), "far")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(a_records(dns, "far.service.consul.").await, ["10.2.0.1"]);
    let m = query(dns, Via::Udp, "far.service.consul.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 1);
    srv.stop().await;
}

/// Check output is capped at 4 KiB from every path, TTL updates included.
#[tokio::test]
async fn check_output_is_capped_on_every_path() {
    let srv = TestServer::start(None).await;
    let reg = r#"{"Name":"api","Port":80,"Check":{"CheckID":"api-ttl","TTL":"30s"}}"#;
    assert_eq!(
        http("PUT", &srv.url("/v1/agent/service/register"), Some(reg))
            .await
            .status,
        200
    );
    let big = "o".repeat(100_000);
    let body = format!(r#"{{"Status":"passing","Output":"{big}"}}"#);
    let r = http(
        "PUT",
        &srv.url("/v1/agent/check/update/api-ttl"),
        Some(&body),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let checks = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    let output = checks["api-ttl"]["Output"].as_str().unwrap();
    assert_eq!(output.len(), 4096);
    srv.stop().await;
}

/// Whether process `pid` ignores or catches SIGHUP (its first own code has
/// run): /proc/PID/status lists both as hex masks, bit 0 for SIGHUP.
fn hangup_handled(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| l.starts_with("SigIgn:") || l.starts_with("SigCgt:"))
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .any(|mask| mask & 1 != 0)
}

/// SIGHUP at any moment of startup (systemctl reload right after a start),
/// loading 5,000 instances or none, is never fatal; SIGTERM during startup
/// stops cleanly. Before the process's first instruction nothing can catch
/// a signal: the test starts the clock once the process has taken SIGHUP.
#[test]
fn signals_at_startup_are_safe() {
    let mut defs = String::from("{\"services\": [");
    for i in 0..5_000 {
        if i > 0 {
            defs.push(',');
        }
        defs.push_str(&format!(
            "{{\"id\": \"s{i}\", \"name\": \"s{}\", \"address\": \"10.3.{}.{}\", \"port\": 80}}",
            i / 4,
            i / 250 % 250,
            i % 250 + 1
        ));
    }
    defs.push_str("]}");
    let big = ZoneDir::new(&[("many.json", &defs)]);
    for (zones, delay_ms) in [
        (None, 0u64),
        (None, 5),
        (Some(big.path()), 0),
        (Some(big.path()), 20),
        (Some(big.path()), 100),
    ] {
        let mut cmd = signpost();
        cmd.args([
            "--dns",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ]);
        if let Some(z) = zones {
            cmd.arg("--zones").arg(z);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while !hangup_handled(child.id()) {
            assert!(t.elapsed() < Duration::from_secs(5), "never took SIGHUP");
            std::thread::sleep(Duration::from_micros(200));
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP {delay_ms} ms into startup killed signpost (zones: {})",
            zones.is_some()
        );
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM exits cleanly");
    }
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// A port free on loopback for both UDP and TCP now.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One client floods random names to forward for `secs` (at most 400,000
/// datagrams) while `during` runs; returns what `during` returned and the
/// peak RSS of `pid` sampled meanwhile.
async fn flood<T, F: std::future::Future<Output = T>>(
    dns: std::net::SocketAddr,
    pid: u32,
    secs: f64,
    during: F,
) -> (T, f64) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let sender = std::thread::spawn(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let until = std::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut sent = 0u32;
        while sent < 400_000
            && std::time::Instant::now() < until
            && !flag.load(std::sync::atomic::Ordering::Relaxed)
        {
            let name = format!("r{}.flood.example.", fastrand::u64(..));
            let _ = sock.send_to(&query_bytes(&name, RecordType::A, None), dns);
            sent += 1;
        }
        sent
    });
    let peak = std::sync::Arc::new(std::sync::Mutex::new(0f64));
    let p = peak.clone();
    let sampler = tokio::spawn(async move {
        loop {
            let r = rss_mib(pid);
            {
                let mut m = p.lock().unwrap();
                *m = m.max(r);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let out = during.await;
    let sent = tokio::task::spawn_blocking(move || sender.join().unwrap())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;
    sampler.abort();
    let peak = *peak.lock().unwrap();
    eprintln!("flood: {sent} datagrams, peak RSS {peak:.1} MiB");
    (out, peak)
}

/// Forwarding under a flood of random names, with the upstream's port
/// closed and then with an upstream that never answers: memory stays within
/// 64 MiB of idle, signpost's own names are answered throughout, and once
/// an upstream answers on that port again, forwarding resumes within a
/// second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_stays_bounded_with_a_dead_or_silent_upstream() {
    let zones = ZoneDir::new(&[(
        "web.json",
        r#"{"service": {"name": "web", "address": "10.0.0.1", "port": 80}}"#,
    )]);
    for silent in [false, true] {
        let port = free_port();
        let upstream = format!("127.0.0.1:{port}");
        // The silent upstream: a socket that reads and never answers.
        let _silent = silent.then(|| std::net::UdpSocket::bind(&upstream).unwrap());
        let srv = crate::cli::run_binary(&[
            "--zones",
            zones.path().to_str().unwrap(),
            "--recursor",
            &upstream,
            "--recursor-timeout",
            "1s",
        ]);
        let pid = srv.child.id();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = rss_mib(pid);
        let dns = srv.dns;
        let (own_answers, peak) = flood(dns, pid, 4.0, async move {
            let mut answered = 0;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let m = query(dns, Via::Tcp, "web.service.consul.", RecordType::A).await;
                if m.answers.len() == 1 {
                    answered += 1;
                }
            }
            answered
        })
        .await;
        assert_eq!(
            own_answers, 20,
            "own names answered during the flood (silent: {silent})"
        );
        assert!(
            peak - idle < 64.0,
            "RSS grew from {idle:.1} to {peak:.1} MiB (silent: {silent})"
        );
        let metrics = http("GET", &format!("http://{}/metrics", srv.http), None)
            .await
            .body;
        assert!(
            metrics.contains("signpost_forward_marked_down_total"),
            "{metrics}"
        );
        drop(_silent);

        // The upstream comes back on that port: a signpost serving a zone.
        let upstream_zones = ZoneDir::new(&[(
            "flood.example.zone",
            "$ORIGIN flood.example.\n$TTL 60\n@ IN SOA ns hm ( 1 3600 600 86400 30 )\n@ IN NS ns\nns IN A 192.0.2.53\nback IN A 192.0.2.7\n",
        )]);
        let up = TestServer::start_with(Some(upstream_zones.path()), |c| {
            c.dns = vec![upstream.parse().unwrap()];
        })
        .await;
        let back = std::time::Instant::now();
        eventually(Duration::from_secs(3), "forwarding resumes", || async {
            let m = query(dns, Via::Udp, "back.flood.example.", RecordType::A).await;
            m.answers.len() == 1
        })
        .await;
        let resumed = back.elapsed();
        eprintln!("forwarding resumed {resumed:?} after the upstream came back (silent: {silent})");
        assert!(
            resumed < Duration::from_millis(1500),
            "resumed after {resumed:?}"
        );
        up.stop().await;
    }
}
