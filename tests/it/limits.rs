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
