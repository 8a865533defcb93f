//! Operations: metrics after real traffic, readiness, SIGHUP reload with a
//! good and a bad file, SIGTERM with a query in flight, and logging.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::cli::run_binary;
use crate::support::*;

/// `name{labels} value` lines of a Prometheus text scrape.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_move_with_real_traffic() {
    let srv = TestServer::start(Some(&shipped_zones())).await;
    for _ in 0..5 {
        query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    }
    for _ in 0..3 {
        query(srv.dns, Via::Tcp, "db.service.consul.", RecordType::SRV).await;
    }
    for _ in 0..2 {
        query(srv.dns, Via::Udp, "nope.service.consul.", RecordType::A).await;
    }
    // Truncated: many SRV records in 512 bytes.
    let zones = ZoneDir::new(&[("big.json", &crate::zones::bench_catalog(1, 60))]);
    let big = TestServer::start(Some(zones.path())).await;
    let q = query_bytes("s0.service.consul.", RecordType::SRV, Some(512));
    udp_async(big.dns, &q, Duration::from_secs(2))
        .await
        .unwrap();
    let m = parse_metrics(&http("GET", &big.url("/metrics"), None).await.body);
    assert_eq!(m["signpost_dns_truncated_total"], 1.0);
    big.stop().await;

    let text = http("GET", &srv.url("/metrics"), None).await.body;
    let m = parse_metrics(&text);
    let q = |t: &str, r: &str, tr: &str| {
        m.get(&format!(
            "signpost_dns_queries_total{{qtype=\"{t}\",rcode=\"{r}\",transport=\"{tr}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(q("A", "NOERROR", "udp"), 5.0, "{text}");
    assert_eq!(q("SRV", "NOERROR", "tcp"), 3.0, "{text}");
    assert_eq!(q("A", "NXDOMAIN", "udp"), 2.0, "{text}");
    assert_eq!(m["signpost_dns_query_duration_seconds_count"], 10.0);
    assert!(m["signpost_dns_query_duration_seconds_sum"] > 0.0);
    assert_eq!(m["signpost_registry_instances"], 8.0);
    assert_eq!(m["signpost_registry_services"], 3.0);
    assert_eq!(m["signpost_registry_checks{status=\"critical\"}"], 1.0);
    assert_eq!(m["signpost_registry_checks{status=\"warning\"}"], 1.0);
    assert!(m["signpost_registry_change_index"] >= 1.0);
    for name in [
        "signpost_dns_forwarded_total",
        "signpost_dns_upstream_failures_total",
        "signpost_dns_shed_total",
    ] {
        assert_eq!(m[name], 0.0, "{name}");
    }
    // A check run shows up by result.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    let reg = format!(r#"{{"Name": "tcpsvc", "Check": {{"TCP": "{addr}", "Interval": "1s"}}}}"#);
    http("PUT", &srv.url("/v1/agent/service/register"), Some(&reg)).await;
    eventually(Duration::from_secs(5), "a check run counted", || async {
        let m = parse_metrics(&http("GET", &srv.url("/metrics"), None).await.body);
        m.get("signpost_check_runs_total{result=\"passing\"}")
            .copied()
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    accept.abort();
    assert_eq!(http("GET", &srv.url("/health"), None).await.status, 200);
    assert_eq!(
        http("GET", &srv.url("/ready"), None).await.status,
        200,
        "zones are loaded before the listener opens"
    );
    srv.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn hup(pid: u32) {
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

async fn a_ttl(dns: std::net::SocketAddr, name: &str) -> Option<(usize, u32)> {
    let m = query(dns, Via::Udp, name, RecordType::A).await;
    (m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
        .then(|| (m.answers.len(), m.answers[0].ttl))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_good_files_and_keeps_serving_on_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).unwrap();
    copy_dir(&shipped_zones(), &zones);
    let config = dir.path().join("signpost.toml");
    std::fs::write(&config, "[dns_config]\nservice_ttl = 5\n").unwrap();
    let srv = run_binary(&[
        "--config",
        config.to_str().unwrap(),
        "--zones",
        zones.to_str().unwrap(),
    ]);
    let pid = srv.child.id();
    assert_eq!(a_ttl(srv.dns, "web.service.consul.").await, Some((3, 5)));
    // An API registration, which a reload must leave alone.
    let r = http(
        "PUT",
        &format!("http://{}/v1/agent/service/register", srv.http),
        Some(r#"{"Name": "api", "Address": "10.3.3.3"}"#),
    )
    .await;
    assert_eq!(r.status, 200);

    // Good: a new service file, a new TTL.
    std::fs::write(
        zones.join("new.json"),
        r#"{"service": {"name": "fresh", "address": "10.4.4.4"}}"#,
    )
    .unwrap();
    std::fs::write(&config, "[dns_config]\nservice_ttl = 42\n").unwrap();
    hup(pid);
    eventually(Duration::from_secs(5), "reload applied", || async {
        a_ttl(srv.dns, "fresh.service.consul.").await.is_some()
    })
    .await;
    assert_eq!(a_ttl(srv.dns, "fresh.service.consul.").await, Some((1, 42)));
    assert_eq!(a_ttl(srv.dns, "web.service.consul.").await, Some((3, 42)));
    assert_eq!(
        a_ttl(srv.dns, "api.service.consul.").await,
        Some((1, 42)),
        "API registration kept"
    );

    // Bad: a broken definition file. The old data keeps serving and the log
    // names the file and line.
    std::fs::write(
        zones.join("broken.json"),
        "{\n  \"service\": {\"name\": \"x\",,}\n}",
    )
    .unwrap();
    std::fs::remove_file(zones.join("new.json")).unwrap();
    hup(pid);
    eventually(Duration::from_secs(5), "reload error logged", || async {
        srv.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reload failed") && l.contains("broken.json:2:"))
    })
    .await;
    assert_eq!(
        a_ttl(srv.dns, "fresh.service.consul.").await,
        Some((1, 42)),
        "old data still served"
    );
    assert_eq!(a_ttl(srv.dns, "api.service.consul.").await, Some((1, 42)));

    // Good again, with fewer files: what the files no longer define goes
    // (an agent service, a catalog file's instances and nodes); the API's
    // registration and the remaining files stay.
    assert!(a_ttl(srv.dns, "db.service.consul.").await.is_some());
    assert!(a_ttl(srv.dns, "db-node-1.node.consul.").await.is_some());
    std::fs::remove_file(zones.join("broken.json")).unwrap();
    std::fs::remove_file(zones.join("db.json")).unwrap();
    hup(pid);
    eventually(
        Duration::from_secs(5),
        "removed definitions gone",
        || async { a_ttl(srv.dns, "fresh.service.consul.").await.is_none() },
    )
    .await;
    assert_eq!(a_ttl(srv.dns, "db.service.consul.").await, None);
    assert_eq!(a_ttl(srv.dns, "db-node-1.node.consul.").await, None);
    assert_eq!(a_ttl(srv.dns, "web.service.consul.").await, Some((3, 42)));
    assert_eq!(a_ttl(srv.dns, "api.service.consul.").await, Some((1, 42)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_queries_in_flight_and_exits_0() {
    // An upstream that never answers: the forwarded query is in flight for
    // the whole recursor timeout, then gets SERVFAIL.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = silent.local_addr().unwrap().to_string();
    let mut srv = run_binary(&[
        "--zones",
        shipped_zones().to_str().unwrap(),
        "--recursor",
        &upstream,
        "--recursor-timeout",
        "1s",
    ]);
    let q = query_bytes("in.flight.example.", RecordType::A, None);
    let dns = srv.dns;
    let udp = tokio::spawn({
        let q = q.clone();
        async move { udp_async(dns, &q, Duration::from_secs(5)).await }
    });
    let tcp = tokio::spawn(async move { tcp_raw(dns, &q).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = srv.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let udp = udp
        .await
        .unwrap()
        .expect("the UDP query in flight is answered");
    let tcp = tcp.await.unwrap();
    for reply in [udp, tcp] {
        assert_eq!(
            Message::from_vec(&reply).unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }
    let status = tokio::task::spawn_blocking(move || srv.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_log_is_opt_in_and_json_logs_are_json() {
    let srv = run_binary(&["--zones", shipped_zones().to_str().unwrap()]);
    query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !srv.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("web.service.consul")),
        "nothing per query at info by default"
    );
    drop(srv);

    let srv = run_binary(&[
        "--zones",
        shipped_zones().to_str().unwrap(),
        "--query-log",
        "--log-format",
        "json",
    ]);
    query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    let logged = || {
        srv.log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("web.service.consul"))
            .cloned()
    };
    eventually(Duration::from_secs(5), "a query log line", || async {
        logged().is_some()
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&logged().unwrap()).expect("a JSON log line");
    assert_eq!(v["target"], "signpost::query");
    assert_eq!(v["fields"]["question"], "web.service.consul. A");
}

/// Queries that waited in the queue past `shed_after_ms` are dropped, the
/// oldest first, and fresh ones are answered: the server is frozen
/// (SIGSTOP) while a burst queues up, then resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_queries_whose_clients_gave_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("signpost.toml");
    std::fs::write(&config, "[dns_config]\nshed_after_ms = 50\n").unwrap();
    let srv = run_binary(&[
        "--config",
        config.to_str().unwrap(),
        "--zones",
        shipped_zones().to_str().unwrap(),
    ]);
    let pid = srv.child.id().to_string();
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success());
    };
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let q = query_bytes("web.service.consul.", RecordType::A, None);
    signal("-STOP");
    // kill returns before the process has stopped; the queries must only
    // go out once it has, or a still running thread answers them fresh.
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.filter_map(Result::ok).all(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("T")
        })
    };
    let start = Instant::now();
    while !all_stopped() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..200 {
        flood.send_to(&q, srv.dns).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal("-CONT");
    // A fresh query is answered at once...
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert_eq!(m.answers.len(), 3);
    // ...while the stale ones were dropped, not answered late.
    flood
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut late = 0;
    let mut buf = [0u8; 512];
    while flood.recv(&mut buf).is_ok() {
        late += 1;
    }
    assert_eq!(late, 0, "answers to queries 300 ms stale");
    let m = parse_metrics(
        &http("GET", &format!("http://{}/metrics", srv.http), None)
            .await
            .body,
    );
    assert!(
        m["signpost_dns_shed_total"] >= 200.0,
        "shed {}",
        m["signpost_dns_shed_total"]
    );
}
