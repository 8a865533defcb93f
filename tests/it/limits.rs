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
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP {delay_ms} ms into startup killed signpost (zones: {})",
            zones.is_some()
        );
        // SAFETY: signalling our own child.
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

/// Reads from `s` until EOF or `limit`; true when the server closed it.
async fn closed_within(s: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A keep-alive connection waiting for its next request is idle, not a
/// slow client: it lasts until the idle timeout, not the header timeout
/// (hyper's own header timeout cut every idle connection at 10 s). Once a
/// next request starts, its headers must still arrive in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_last_until_the_idle_timeout() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start_with(None, |c| {
        c.http_limits.header_timeout = Duration::from_secs(1);
        c.http_limits.idle_timeout = Duration::from_secs(4);
    })
    .await;
    let addr = srv.signpost().http_addr();
    let request = b"GET /v1/catalog/services HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
    kept.write_all(request).await.unwrap();
    assert!(
        !closed_within(&mut kept, Duration::from_millis(2500)).await,
        "an idle keep-alive connection was cut at the header timeout"
    );
    assert!(
        closed_within(&mut kept, Duration::from_secs(5)).await,
        "an idle keep-alive connection outlived the idle timeout"
    );

    // A second request that never finishes its headers is cut as before.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(request).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(b"GET /v1/catalog/services HTTP/1.1\r\nX-Slow: ")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)).await,
        "a second request's slow headers were not cut"
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    let metrics = http("GET", &srv.url("/metrics"), None).await.body;
    let cut = metrics
        .lines()
        .find(|l| l.starts_with("signpost_http_timed_out"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(cut, Some(2), "both cuts counted: {metrics}");
}

/// `GET /health` from another loopback address (another client).
async fn health_from_elsewhere(srv: &TestServer) -> u16 {
    let client = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    client
        .get(srv.url("/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Slow clients are cut: headers not sent within the header timeout, a
/// body not sent within the body timeout (408), a keep-alive connection
/// idle past the idle timeout; a blocking query is not idle. One client
/// cannot hold more than its share of connections, and the others (and
/// DNS) are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_cuts_slow_clients_and_caps_connections_per_client() {
    use tokio::io::AsyncWriteExt;
    let srv = TestServer::start_with(None, |c| {
        c.http_limits.header_timeout = Duration::from_secs(1);
        c.http_limits.body_timeout = Duration::from_secs(1);
        c.http_limits.idle_timeout = Duration::from_secs(2);
        c.http_limits.max_connections_per_client = 50;
    })
    .await;
    let addr = srv.signpost().http_addr();

    // 40 clients that never finish their headers.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/catalog/services HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    assert_eq!(health_from_elsewhere(&srv).await, 200);
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(4)).await,
            "slow headers not cut"
        );
    }

    // A body that never arrives: 408 after the body timeout.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let mut reply = Vec::new();
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let started = tokio::time::Instant::now();
    while !String::from_utf8_lossy(&reply).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(4), s.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed without an answer");
        reply.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(http("GET", &srv.url("/v1/kv/slow"), None).await.status, 404);

    // Idle keep-alive connections are closed; a blocking query is not idle.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "idle connection not closed"
    );
    let index = http("GET", &srv.url("/v1/catalog/services"), None)
        .await
        .index
        .unwrap();
    let t = std::time::Instant::now();
    let r = http(
        "GET",
        &srv.url(&format!("/v1/catalog/services?index={index}&wait=4s")),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        t.elapsed() >= Duration::from_secs(3),
        "the blocking query was cut after {:?}",
        t.elapsed()
    );

    // One client, 80 connections: 50 are held, the rest closed at once;
    // another client and DNS are served.
    let mut many = Vec::new();
    for _ in 0..80 {
        many.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // All at once: the held ones must not reach the idle timeout meanwhile.
    let mut checks = tokio::task::JoinSet::new();
    for mut s in many.drain(..) {
        checks.spawn(async move { (closed_within(&mut s, Duration::from_millis(300)).await, s) });
    }
    let mut refused = 0;
    while let Some(r) = checks.join_next().await {
        let (closed, s) = r.unwrap();
        refused += usize::from(closed);
        many.push(s);
    }
    assert_eq!(
        refused, 30,
        "connections past the per-client limit are closed"
    );
    assert_eq!(health_from_elsewhere(&srv).await, 200);
    assert_dns_answers(srv.signpost().dns_addrs()[0]).await;
    let metrics = health_metrics(&srv).await;
    assert!(
        metrics.contains("signpost_http_refused_per_client_total 30"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("signpost_http_timed_out_total 0\n"),
        "{metrics}"
    );
    drop(many);
    srv.stop().await;
}

async fn health_metrics(srv: &TestServer) -> String {
    let client = reqwest::Client::builder()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    client
        .get(srv.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// With `http_token_for_reads`, KV and catalog reads need the token; the
/// probes and metrics stay open; DNS is unaffected.
#[tokio::test]
async fn reads_can_require_the_token() {
    let srv = TestServer::start_with(None, |c| {
        c.http_token = Some("s3cret".into());
        c.http_token_for_reads = true;
    })
    .await;
    let auth = [("X-Consul-Token", "s3cret")];
    let r = http_with(
        "PUT",
        &srv.url("/v1/kv/db/password"),
        Some("hunter2"),
        &auth,
    )
    .await;
    assert_eq!(r.status, 200);
    for path in [
        "/v1/kv/db/password",
        "/v1/catalog/services",
        "/v1/agent/services",
        "/v1/health/service/x",
    ] {
        let r = http("GET", &srv.url(path), None).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(r.body.contains("required for reads"), "{}", r.body);
    }
    let r = http_with("GET", &srv.url("/v1/kv/db/password?raw"), None, &auth).await;
    assert_eq!((r.status, r.body.as_str()), (200, "hunter2"));
    for open in ["/health", "/ready", "/metrics"] {
        assert_eq!(
            http("GET", &srv.url(open), None).await.status,
            200,
            "{open}"
        );
    }
    assert_dns_answers(srv.signpost().dns_addrs()[0]).await;
    srv.stop().await;
}

/// Raises this test process's open-file limit to its hard limit (the
/// attacks below need more than 1,024 descriptors on the client side).
fn raise_own_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls take a valid pointer to a local rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

/// One DNS query over a new TCP connection from `from`; whether it was
/// answered within 2 s.
async fn tcp_query_from(from: std::net::IpAddr, server: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let sock = tokio::net::TcpSocket::new_v4().ok()?;
        sock.bind(std::net::SocketAddr::new(from, 0)).ok()?;
        let mut s = sock.connect(server).await.ok()?;
        let q = query_bytes("consul.", RecordType::SOA, None);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        s.write_all(&framed).await.ok()?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.ok()?;
        Some(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(()))
    )
}

/// Clients holding 1,200 idle TCP connections from 20 addresses (more
/// than the limit) cannot starve others: the longest-idle connections are
/// closed to admit new ones, and 40 other clients' queries are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_hogs_cannot_starve_other_clients() {
    raise_own_fd_limit();
    let srv = TestServer::start(None).await;
    let dns = srv.signpost().dns_addrs()[0];
    let mut hogs = Vec::new();
    for a in 0..20u8 {
        for _ in 0..60 {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(std::net::SocketAddr::from(([127, 0, 1, a + 1], 0)))
                .unwrap();
            if let Ok(s) = sock.connect(dns).await {
                hogs.push(s);
            }
        }
    }
    assert_eq!(hogs.len(), 1200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut answered = 0;
    for c in 0..40u8 {
        if tcp_query_from(std::net::IpAddr::from([127, 0, 2, c + 1]), dns).await {
            answered += 1;
        }
    }
    assert_eq!(answered, 40, "other clients' TCP queries answered");
    let metrics = health_metrics(&srv).await;
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("signpost_dns_tcp_evicted_idle_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        evicted >= 176,
        "longest-idle connections closed: {evicted}\n{metrics}"
    );
    drop(hogs);
    srv.stop().await;
}

/// Under a low descriptor limit, 400 TCP connections neither stop the HTTP
/// API nor make the accept loop spin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_fd_limit_keeps_http_and_udp_working() {
    raise_own_fd_limit();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {} --dns 127.0.0.1:0 --http 127.0.0.1:0 --log-level info",
            env!("CARGO_BIN_EXE_signpost")
        ))
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut dns, mut http_addr, mut fd_line) = (None, None, String::new());
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("open file limit") {
            fd_line.push_str(&line);
        }
        if let Some(a) = line.split("serving DNS on ").nth(1) {
            dns = a
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
        }
        if let Some(a) = line.split("serving HTTP on ").nth(1) {
            http_addr = a.trim().parse::<std::net::SocketAddr>().ok();
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let (dns, http_addr) = (dns.unwrap(), http_addr.unwrap());
    assert!(
        fd_line.contains("DNS over TCP takes at most 22 connections"),
        "{fd_line}"
    );
    let mut held = Vec::new();
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(dns).await {
            held.push(s);
        }
    }
    let pid = child.id();
    let ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let before = ticks();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = ticks() - before;
    assert!(used < 30, "the process used {used} ticks in 1 s: spinning");
    let r = http(
        "GET",
        &format!("http://{http_addr}/v1/catalog/services"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    let m = query(dns, Via::Udp, "consul.", RecordType::SOA).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(
        tcp_query_from("127.0.0.9".parse().unwrap(), dns).await,
        "a new TCP client is answered"
    );
    drop(held);
    let _ = child.kill();
    let _ = child.wait();
}

/// One client past its own connection limit is not locked out of its own
/// traffic: 100 concurrent TCP connections from one address with one query
/// each are all answered (the per-client cap is 64), and with 300 busy
/// connections of that address querying in a loop, 40 new queries from the
/// same address are answered too. Closing a connection to make room never
/// drops a query it had already been sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_own_connections_never_lock_out_its_new_queries() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raise_own_fd_limit();
    let srv = TestServer::start(None).await;
    let dns = srv.signpost().dns_addrs()[0];
    let me = std::net::IpAddr::from([127, 0, 3, 1]);
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..100 {
        burst.spawn(tcp_query_from(me, dns));
    }
    let answered = burst.join_all().await.into_iter().filter(|a| *a).count();
    assert_eq!(
        answered, 100,
        "concurrent connections from one address answered"
    );

    // 300 connections of one address, each asking again as soon as it is
    // answered, for 3 s at most.
    let busy = std::net::IpAddr::from([127, 0, 3, 2]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut hogs = tokio::task::JoinSet::new();
    for _ in 0..300 {
        let stop = stop.clone();
        hogs.spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().ok()?;
            sock.bind(std::net::SocketAddr::new(busy, 0)).ok()?;
            let mut s = sock.connect(dns).await.ok()?;
            let q = query_bytes("consul.", RecordType::SOA, None);
            let mut framed = (q.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&q);
            let until = tokio::time::Instant::now() + Duration::from_secs(3);
            let mut answers = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && tokio::time::Instant::now() < until
            {
                s.write_all(&framed).await.ok()?;
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).await.is_err() {
                    break;
                }
                let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
                s.read_exact(&mut body).await.ok()?;
                answers += 1;
            }
            Some(answers)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut answered = 0;
    for _ in 0..40 {
        if tcp_query_from(busy, dns).await {
            answered += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hogs.join_all().await;
    assert_eq!(answered, 40, "new queries from the busy address answered");
    let metrics = health_metrics(&srv).await;
    let evicted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("signpost_dns_tcp_evicted_per_client_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(evicted >= 36, "connections closed for newcomers: {metrics}");
    srv.stop().await;
}

/// A slowloris flood from one address (more connections than its limit
/// and than the total) does not lock out that address's health probe, nor
/// anyone else's: the connection waiting longest for its headers makes
/// room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_probe_is_answered_through_a_slowloris_flood_from_its_own_address() {
    use tokio::io::AsyncWriteExt;
    raise_own_fd_limit();
    let srv = TestServer::start_with(None, |c| {
        c.http_limits.max_connections = 300;
        c.http_limits.max_connections_per_client = 200;
    })
    .await;
    let addr = srv.signpost().http_addr();
    let mut slow = Vec::new();
    for _ in 0..400 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /v1/catalog/services HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
        slow.push(s);
    }
    for _ in 0..5 {
        assert_eq!(http("GET", &srv.url("/health"), None).await.status, 200);
        assert_eq!(health_from_elsewhere(&srv).await, 200);
    }
    // A blocking query held meanwhile is never the one closed.
    let index = http("GET", &srv.url("/v1/catalog/services"), None)
        .await
        .index
        .unwrap();
    let url = srv.url(&format!("/v1/catalog/services?index={index}&wait=2s"));
    let held = tokio::spawn(async move { http("GET", &url, None).await.status });
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..250 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await;
        slow.push(s);
    }
    assert_eq!(held.await.unwrap(), 200, "the blocking query was answered");
    let metrics = health_metrics(&srv).await;
    assert!(
        !metrics.contains("signpost_http_refused_per_client_total 0\n"),
        "{metrics}"
    );
    drop(slow);
    srv.stop().await;
}

/// Watchers never lock out a write. With the table full of blocking
/// queries (a cap of 41 here; 16,384 by default), a write from a client at
/// its own cap and one from a new client are both admitted: a watcher
/// makes room by answering at once, as Consul's contract allows (200, the
/// index it had), and its connection closes after that answer. No watcher
/// is cut, and the rest wake with the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_filling_the_table_never_lock_out_a_write() {
    let srv = TestServer::start_with(None, |c| {
        // One place beyond the watchers, for the test's metrics reads.
        c.http_limits.max_connections = 41;
        c.http_limits.max_connections_per_client = 30;
    })
    .await;
    let client_at = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    assert_eq!(
        http("PUT", &srv.url("/v1/kv/w"), Some("a")).await.status,
        200
    );
    let index = http("GET", &srv.url("/v1/kv/w"), None).await.index.unwrap();
    let mut watchers = tokio::task::JoinSet::new();
    for i in 0..40u8 {
        // 30 from 127.0.0.1 (its cap), 10 from 127.0.0.5.
        let client = client_at(if i < 30 { 1 } else { 5 });
        let url = srv.url(&format!("/v1/kv/w?index={index}&wait=20s"));
        watchers.spawn(async move {
            let r = client.get(url).send().await;
            r.map(|r| {
                let got = r
                    .headers()
                    .get("X-Consul-Index")
                    .and_then(|v| v.to_str().ok()?.parse().ok());
                (r.status().as_u16(), got.unwrap_or(0u64))
            })
            .unwrap_or_else(|e| panic!("a watcher was cut: {e:?}"))
        });
    }
    // Metrics read over one kept-alive connection: its place stays its own.
    let scraper = client_at(3);
    let metrics = || async {
        let r = scraper.get(srv.url("/metrics")).send().await.unwrap();
        r.text().await.unwrap()
    };
    eventually(Duration::from_secs(10), "40 watchers held", || async {
        metrics()
            .await
            .contains("signpost_http_blocking_queries 40\n")
    })
    .await;
    let started = std::time::Instant::now();
    let own = client_at(1).put(srv.url("/v1/kv/w")).body("b").send().await;
    assert_eq!(
        own.map(|r| r.status().as_u16()).unwrap_or(0),
        200,
        "a write at its client's cap"
    );
    let other = client_at(4).put(srv.url("/v1/kv/x")).body("c").send().await;
    assert_eq!(
        other.map(|r| r.status().as_u16()).unwrap_or(0),
        200,
        "a write at the total cap"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let mut early = 0;
    while let Some(r) = watchers.join_next().await {
        let (status, got) = r.unwrap();
        assert_eq!(status, 200, "a watcher was cut");
        assert!(got >= index);
        early += usize::from(got == index);
    }
    assert!(early >= 1, "no watcher made room");
    let text = metrics().await;
    assert!(
        text.contains("signpost_http_refused_busy_total 0\n"),
        "{text}"
    );
    assert!(
        !text.contains("signpost_http_answered_early_total 0\n"),
        "{text}"
    );
    srv.stop().await;
}
