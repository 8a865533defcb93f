//! Consul API parity, end to end: the filter grammar, `/v1/txn`, events,
//! the agent's health and maintenance endpoints, `ContentHash`,
//! consistency modes and check output, over real HTTP; then the real client
//! libraries (py-consul from PyPI, `consul` from npm) driving a signpost,
//! from `tests/clients/` (scripts/test installs them under target/clients).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn filters_select_and_bad_ones_say_where() {
    let srv = TestServer::start(None).await;
    register(
        &srv,
        r#"{"Name":"web","ID":"web-0","Port":80,"Tags":["v1"],"Meta":{"env":"prod"}}"#,
    )
    .await;
    register(
        &srv,
        r#"{"Name":"web","ID":"web-1","Port":81,"Tags":["v2"]}"#,
    )
    .await;
    register(&srv, r#"{"Name":"db","ID":"db-0","Port":5432}"#).await;
    let ids = |v: serde_json::Value, path: &[&str]| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let mut x = e;
                for p in path {
                    x = &x[p];
                }
                x.as_str().unwrap().to_string()
            })
            .collect()
    };
    let q = |path: &str, filter: &str| {
        let url = srv.url(path);
        let filter = filter.to_string();
        async move {
            let u = reqwest::Url::parse_with_params(&url, &[("filter", filter.as_str())]).unwrap();
            http("GET", u.as_str(), None).await
        }
    };
    let r = q("/v1/health/service/web", "v1 in Service.Tags").await;
    assert_eq!(ids(r.json(), &["Service", "ID"]), ["web-0"]);
    let r = q("/v1/catalog/service/web", "ServiceMeta.env != prod").await;
    assert_eq!(ids(r.json(), &["ServiceID"]), ["web-1"]);
    let r = q("/v1/agent/services", "Service == db or Tags contains v2").await;
    let got: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(got, ["db-0", "web-1"]);
    let r = q("/v1/catalog/services", "ServiceName matches \"^w\"").await;
    let got: Vec<String> = r.json().as_object().unwrap().keys().cloned().collect();
    assert_eq!(got, ["web"]);
    let r = q("/v1/catalog/nodes", "Meta is empty and Node == testnode").await;
    assert_eq!(ids(r.json(), &["Node"]), ["testnode"]);
    for (bad, pos) in [
        ("Service ==", 10),
        ("(Service == web", 15),
        ("Tags contains", 13),
    ] {
        let r = q("/v1/agent/services", bad).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        assert!(
            r.body.contains(&format!("position {pos}")),
            "{bad}: {}",
            r.body
        );
        assert!(r.index.is_some());
    }
    let r = http("GET", &srv.url("/v1/catalog/nodes?node-meta=rack:r1"), None).await;
    assert_eq!(r.json(), serde_json::json!([]));
    let r = http("GET", &srv.url("/v1/catalog/nodes?node-meta=rack"), None).await;
    assert_eq!(r.status, 400, "{}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn txn_is_atomic_and_bounded() {
    let srv = TestServer::start(None).await;
    let txn = |body: String| {
        let url = srv.url("/v1/txn");
        async move { http("PUT", &url, Some(&body)).await }
    };
    let r = txn(
        r#"[{"KV":{"Verb":"set","Key":"a","Value":"MQ=="}},{"KV":{"Verb":"get","Key":"a"}}]"#
            .into(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["Errors"], serde_json::Value::Null);
    assert_eq!(v["Results"][1]["KV"]["Value"], "MQ==");
    let index = v["Results"][0]["KV"]["ModifyIndex"].as_u64().unwrap();
    let before = http("GET", &srv.url("/v1/kv/?recurse"), None).await;
    // The second op fails: the first must not stay behind.
    let r = txn(format!(
        r#"[{{"KV":{{"Verb":"set","Key":"b","Value":"Mg=="}}}},{{"KV":{{"Verb":"delete-cas","Key":"a","Index":{}}}}}]"#,
        index + 7
    ))
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(r.json()["Errors"][0]["OpIndex"], 1);
    assert!(r.json()["Errors"][0]["What"]
        .as_str()
        .unwrap()
        .contains("stale"));
    let after = http("GET", &srv.url("/v1/kv/?recurse"), None).await;
    assert_eq!(before.body, after.body);
    assert_eq!(before.index, after.index, "a refused txn moved the index");
    // check-index, then cas at the right index, in one go.
    let r = txn(format!(
        r#"[{{"KV":{{"Verb":"check-index","Key":"a","Index":{index}}}}},{{"KV":{{"Verb":"cas","Key":"a","Value":"Mw==","Index":{index}}}}},{{"KV":{{"Verb":"check-not-exists","Key":"b"}}}}]"#
    ))
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ops: Vec<String> = (0..65)
        .map(|i| format!(r#"{{"KV":{{"Verb":"set","Key":"k{i}"}}}}"#))
        .collect();
    let r = txn(format!("[{}]", ops.join(","))).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("65 > 64"), "{}", r.body);
    let r = txn(r#"[{"Node":{"Verb":"set"}}]"#.into()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = txn(r#"[{"KV":{"Verb":"set","Key":"x","Value":"%%%"}}]"#.into()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn events_fire_list_and_block() {
    let srv = TestServer::start(None).await;
    let r = http("GET", &srv.url("/v1/event/list"), None).await;
    assert_eq!(r.json(), serde_json::json!([]));
    let start = r.index.unwrap();
    let url = srv.url(&format!(
        "/v1/event/list?name=deploy&index={start}&wait=10s"
    ));
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        (http("GET", &url, None).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = http("PUT", &srv.url("/v1/event/fire/deploy"), Some("v2")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Payload"], "djI=");
    let (listed, took) = waiter.await.unwrap();
    assert!(took < Duration::from_secs(5), "blocking list did not wake");
    assert_eq!(listed.json()[0]["Name"], "deploy");
    assert!(listed.index.unwrap() > start);
    // A node filter that does not match this agent: not delivered here.
    http(
        "PUT",
        &srv.url("/v1/event/fire/other?node=^elsewhere$"),
        None,
    )
    .await;
    let all = http("GET", &srv.url("/v1/event/list"), None).await;
    assert_eq!(all.json().as_array().unwrap().len(), 1);
    let big = "x".repeat(600);
    let r = http("PUT", &srv.url("/v1/event/fire/big"), Some(&big)).await;
    assert_eq!(r.status, 413);
    srv.stop().await;
}

#[tokio::test]
async fn agent_health_maintenance_hash_and_consistency() {
    let srv = TestServer::start(None).await;
    register(
        &srv,
        r#"{"Name":"web","ID":"web-0","Port":80,"Check":{"TTL":"30s","Status":"passing"}}"#,
    )
    .await;
    register(&srv, r#"{"Name":"web","ID":"web-1","Port":81}"#).await;
    let r = http("GET", &srv.url("/v1/agent/health/service/name/web"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()[0]["AggregatedStatus"], "passing");
    http("PUT", &srv.url("/v1/agent/check/warn/service:web-0"), None).await;
    let r = http(
        "GET",
        &srv.url("/v1/agent/health/service/name/web?format=text"),
        None,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (429, "warning"));
    let r = http(
        "GET",
        &srv.url("/v1/agent/health/service/id/web-1?format=text"),
        None,
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "passing"));
    http("PUT", &srv.url("/v1/agent/check/fail/service:web-0"), None).await;
    let r = http("GET", &srv.url("/v1/agent/health/service/id/web-0"), None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["Service"]["ID"], "web-0");
    let r = http("GET", &srv.url("/v1/agent/health/service/name/nope"), None).await;
    assert_eq!(r.status, 404);
    let r = http("GET", &srv.url("/v1/agent/health/service/id/nope"), None).await;
    assert_eq!(r.status, 404);
    assert!(r.index.is_some());

    // Node maintenance takes every instance out of DNS, and back.
    assert_eq!(a_records(srv.dns, "web.service.consul").await.len(), 1);
    let r = http(
        "PUT",
        &srv.url("/v1/agent/maintenance?enable=true&reason=kernel"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(a_records(srv.dns, "web.service.consul").await.is_empty());
    let checks = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    assert_eq!(checks["_node_maintenance"]["Notes"], "kernel");
    http("PUT", &srv.url("/v1/agent/maintenance?enable=false"), None).await;
    assert_eq!(a_records(srv.dns, "web.service.consul").await.len(), 1);
    let r = http("PUT", &srv.url("/v1/agent/maintenance"), None).await;
    assert_eq!(r.status, 400);

    // ContentHash, and ?hash= blocks until it changes.
    let r = http("GET", &srv.url("/v1/agent/service/web-1"), None).await;
    let hash = r.json()["ContentHash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16);
    let url = srv.url(&format!("/v1/agent/service/web-1?hash={hash}&wait=10s"));
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        (http("GET", &url, None).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "?hash= did not block");
    register(&srv, r#"{"Name":"web","ID":"web-1","Port":82}"#).await;
    let (r, took) = waiter.await.unwrap();
    assert!(took < Duration::from_secs(5));
    assert_ne!(r.json()["ContentHash"], hash.as_str());
    assert_eq!(r.json()["Port"], 82);

    // Consistency modes.
    let r = http(
        "GET",
        &srv.url("/v1/catalog/services?stale&consistent"),
        None,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let resp = reqwest::get(srv.url("/v1/catalog/services?stale"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["X-Consul-Effective-Consistency"], "stale");

    // The catalog's other views.
    let r = http("GET", &srv.url("/v1/catalog/node-services/testnode"), None).await;
    assert_eq!(r.json()["Services"].as_array().unwrap().len(), 2);
    let r = http("GET", &srv.url("/v1/catalog/node-services/nope"), None).await;
    assert_eq!(r.status, 404);
    let r = http("GET", &srv.url("/v1/coordinate/datacenters"), None).await;
    assert_eq!(r.json()[0]["Datacenter"], "dc1");
    let r = http("GET", &srv.url("/v1/coordinate/nodes"), None).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!([])));
    srv.stop().await;
}

/// The widely copied walkthrough, verbatim: `service.json` with a check
/// that gives both `Interval` and `TTL`, registered with `curl -X PUT -d
/// @service.json`, made passing through its TTL, then resolved. Consul of
/// that era took it as a TTL check; so does signpost. A check that is
/// ambiguous (HTTP or TCP beside a TTL) is still refused.
#[tokio::test]
async fn the_walkthroughs_ttl_check_with_an_interval_registers_and_checks_say_why_they_fail() {
    let srv = TestServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let service = dir.path().join("service.json");
    std::fs::write(
        &service,
        r#"{
  "ID": "CarsDatabase",
  "Name": "CarsDatabase",
  "Tags": ["primary"],
  "Address": "127.0.0.1",
  "Port": 3306,
  "Check": {
    "Name": "Cars Database Heartbeat",
    "Interval": "10s",
    "TTL": "15s"
  }
}
"#,
    )
    .unwrap();
    let curl = |args: Vec<String>| async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(&args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("curl (apt-get install curl): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().to_string(), body.to_string())
    };
    let (code, body) = curl(vec![
        "-X".into(),
        "PUT".into(),
        "-d".into(),
        format!("@{}", service.display()),
        srv.url("/v1/agent/service/register"),
    ])
    .await;
    assert_eq!(code, "200", "{body}");
    let checks = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    let check = &checks["service:CarsDatabase"];
    assert_eq!(check["Type"], "ttl", "{checks}");
    assert_eq!(check["Status"], "critical", "{checks}");
    assert!(a_records(srv.dns, "CarsDatabase.service.consul.")
        .await
        .is_empty());
    let (code, body) = curl(vec![
        "-X".into(),
        "PUT".into(),
        srv.url("/v1/agent/check/pass/service:CarsDatabase"),
    ])
    .await;
    assert_eq!(code, "200", "{body}");
    assert_eq!(
        a_records(srv.dns, "CarsDatabase.service.consul.").await,
        ["127.0.0.1"]
    );
    assert_eq!(
        a_records(srv.dns, "primary.CarsDatabase.service.consul.").await,
        ["127.0.0.1"]
    );
    for ambiguous in [
        r#"{"Name":"x","Check":{"HTTP":"http://127.0.0.1/","TTL":"10s","Interval":"5s"}}"#,
        r#"{"Name":"x","Check":{"TCP":"127.0.0.1:1","TTL":"10s","Interval":"5s"}}"#,
    ] {
        let r = http(
            "PUT",
            &srv.url("/v1/agent/service/register"),
            Some(ambiguous),
        )
        .await;
        assert_eq!(r.status, 400, "{ambiguous}: {}", r.body);
        assert!(
            r.body.contains("only one of HTTP, TCP and TTL"),
            "{}",
            r.body
        );
    }
    let closed = free_port();
    register(
        &srv,
        &format!(r#"{{"Name":"web","Port":80,"Check":{{"HTTP":"http://127.0.0.1:{closed}/","Interval":"1s"}}}}"#),
    )
    .await;
    let url = srv.url("/v1/agent/checks");
    let mut output = String::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while output.is_empty() {
        assert!(Instant::now() < deadline, "the HTTP check never ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let v = http("GET", &url, None).await.json();
        output = v["service:web"]["Output"].as_str().unwrap_or("").into();
    }
    assert!(
        output.to_lowercase().contains("connection refused"),
        "{output}"
    );
    srv.stop().await;
}

/// The client libraries' installs, made by scripts/test.
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/clients")
}

pub(crate) fn run_script(program: &std::path::Path, args: &[String], limit: Duration) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            child.kill().ok();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "{} failed: {text}", program.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn py_consul_from_pypi() {
    let python = clients_dir().join("py/bin/python");
    if !python.exists() {
        return missing_tool(
            "py-consul",
            "python3-venv, then run scripts/test (it installs py-consul under target/clients)",
            "the py-consul client",
        );
    }
    let srv = TestServer::start(None).await;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/py_consul_check.py");
    let args = vec![
        script.display().to_string(),
        srv.http.ip().to_string(),
        srv.http.port().to_string(),
    ];
    tokio::task::spawn_blocking(move || run_script(&python, &args, Duration::from_secs(90)))
        .await
        .unwrap();
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_from_npm() {
    let dir = clients_dir().join("node");
    if !dir.join("node_modules/consul").exists() {
        return missing_tool(
            "the npm consul package",
            "nodejs npm, then run scripts/test (it installs consul under target/clients)",
            "the npm consul client",
        );
    }
    let srv = TestServer::start(None).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/npm_consul_check.js");
    let args = vec![
        script.display().to_string(),
        dir.display().to_string(),
        srv.http.ip().to_string(),
        srv.http.port().to_string(),
    ];
    tokio::task::spawn_blocking(move || {
        run_script(std::path::Path::new("node"), &args, Duration::from_secs(60))
    })
    .await
    .unwrap();
    srv.stop().await;
}

/// The reads Connect-aware and caching Consul clients make: `?cached`
/// says it is a hit from memory; `/v1/{health,catalog}/connect/:service`
/// list the proxies in front of a service and its native instances, with
/// the blocking contract; `/v1/agent/metrics` in Consul's JSON shape and as
/// Prometheus text.
#[tokio::test]
async fn connect_cached_and_agent_metrics_reads() {
    let srv = TestServer::start(None).await;
    register(&srv, r#"{"Name":"web","ID":"web-1","Port":80}"#).await;
    register(
        &srv,
        r#"{"Name":"web-sidecar-proxy","ID":"web-1-proxy","Kind":"connect-proxy","Port":21000,"Proxy":{"DestinationServiceName":"web","LocalServicePort":80}}"#,
    )
    .await;
    register(
        &srv,
        r#"{"Name":"pay","ID":"pay-1","Port":90,"Connect":{"Native":true}}"#,
    )
    .await;
    for (body, reason) in [
        (r#"{"Name":"gw","Kind":"mesh-gateway"}"#, "not supported"),
        (
            r#"{"Name":"p","Kind":"connect-proxy"}"#,
            "Proxy.DestinationServiceName",
        ),
    ] {
        let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(body)).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(r.body.contains(reason), "{}", r.body);
    }

    let r = http("GET", &srv.url("/v1/catalog/connect/web"), None).await;
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["ServiceID"], "web-1-proxy");
    assert_eq!(v[0]["ServiceKind"], "connect-proxy");
    assert_eq!(v[0]["ServiceProxy"]["DestinationServiceName"], "web");
    let v = http("GET", &srv.url("/v1/health/connect/pay"), None)
        .await
        .json();
    assert_eq!(v[0]["Service"]["ID"], "pay-1", "{v}");
    assert_eq!(v[0]["Service"]["Connect"]["Native"], true);
    let r = http("GET", &srv.url("/v1/health/connect/db"), None).await;
    assert_eq!((r.status, r.json()), (200, serde_json::json!([])));
    assert!(r.index.is_some());

    // A blocking read wakes when a second proxy for web registers.
    let r = http("GET", &srv.url("/v1/health/connect/web"), None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let url = srv.url(&format!(
        "/v1/health/connect/web?index={}&wait=5s",
        r.index.unwrap()
    ));
    let waiter = tokio::spawn(async move {
        let t = std::time::Instant::now();
        (http("GET", &url, None).await, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the blocking read returned early");
    register(
        &srv,
        r#"{"Name":"web-sidecar-proxy","ID":"web-2-proxy","Kind":"connect-proxy","Port":21001,"Proxy":{"DestinationServiceName":"web"}}"#,
    )
    .await;
    let (r, took) = waiter.await.unwrap();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(r.json().as_array().unwrap().len(), 2);

    // ?cached: Consul's agent-cache headers.
    let resp = reqwest::get(srv.url("/v1/health/service/web?cached"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["X-Cache"], "HIT");
    assert_eq!(resp.headers()["Age"], "0");
    let resp = reqwest::get(srv.url("/v1/health/service/web"))
        .await
        .unwrap();
    assert!(resp.headers().get("X-Cache").is_none());

    // Agent metrics.
    let v = http("GET", &srv.url("/v1/agent/metrics"), None)
        .await
        .json();
    for part in ["Gauges", "Counters", "Samples"] {
        assert!(v[part].is_array(), "{part}: {v}");
    }
    assert!(
        v["Gauges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["Name"] == "signpost.registry_instances" && g["Value"] == 4.0),
        "{v}"
    );
    let text = http("GET", &srv.url("/v1/agent/metrics?format=prometheus"), None)
        .await
        .body;
    assert!(text.contains("signpost_registry_instances 4"), "{text}");
    let stamp = v["Timestamp"].as_str().unwrap();
    assert!(
        stamp.ends_with(" +0000 UTC") && stamp.len() == 29,
        "{stamp}"
    );
    srv.stop().await;
}
