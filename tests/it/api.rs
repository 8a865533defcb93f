//! The Consul-compatible HTTP API over real HTTP, each change checked
//! through DNS as well.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::*;

const WEB1: &str =
    r#"{"ID": "web1", "Name": "web", "Tags": ["v1"], "Address": "10.0.0.1", "Port": 80}"#;

#[tokio::test]
async fn register_update_and_deregister_show_in_dns_at_once() {
    let srv = TestServer::start(None).await;
    let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.is_empty(),
        "Consul answers agent writes with an empty body"
    );
    // No waiting: the write is in DNS before its response.
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    let v1 = a_records(srv.dns, "v1.web.service.consul.").await;
    assert_eq!(v1, ["10.0.0.1"]);

    // Re-register under the same ID: an update.
    let updated =
        r#"{"ID": "web1", "Name": "web", "Tags": ["v2"], "Address": "10.0.0.9", "Port": 81}"#;
    let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(updated)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.9"]
    );
    let m = query(srv.dns, Via::Tcp, "v1.web.service.consul.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "old tag gone"
    );
    let svc = http("GET", &srv.url("/v1/agent/service/web1"), None)
        .await
        .json();
    assert_eq!(svc["Port"], 81);
    assert_eq!(svc["Tags"], serde_json::json!(["v2"]));

    let r = http("PUT", &srv.url("/v1/agent/service/deregister/web1"), None).await;
    assert_eq!(r.status, 200);
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let all = http("GET", &srv.url("/v1/agent/services"), None)
        .await
        .json();
    assert_eq!(all, serde_json::json!({}));
    srv.stop().await;
}

#[tokio::test]
async fn maintenance_hides_an_instance_and_brings_it_back() {
    let srv = TestServer::start(None).await;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    let r = http(
        "PUT",
        &srv.url("/v1/agent/service/maintenance/web1?enable=true&reason=upgrade"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let checks = http("GET", &srv.url("/v1/health/checks/web"), None)
        .await
        .json();
    assert_eq!(checks[0]["CheckID"], "_service_maintenance:web1");
    assert_eq!(checks[0]["Status"], "critical");
    assert_eq!(checks[0]["Notes"], "upgrade");
    let r = http(
        "PUT",
        &srv.url("/v1/agent/service/maintenance/web1?enable=false"),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    srv.stop().await;
}

#[tokio::test]
async fn ttl_check_transitions() {
    let srv = TestServer::start(None).await;
    let body = r#"{"Name": "api", "ID": "api1", "Address": "10.0.1.1", "Port": 9000,
                   "Check": {"CheckID": "api1-ttl", "TTL": "30s"}}"#;
    assert_eq!(
        http("PUT", &srv.url("/v1/agent/service/register"), Some(body))
            .await
            .status,
        200
    );
    // A new TTL check starts critical, as in Consul.
    let m = query(srv.dns, Via::Udp, "api.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);

    let passing = || async {
        http("GET", &srv.url("/v1/health/service/api?passing"), None)
            .await
            .json()
            .as_array()
            .unwrap()
            .len()
    };
    for (path, dns, only_passing) in [
        (
            "/v1/agent/check/pass/api1-ttl?note=all+good",
            vec!["10.0.1.1"],
            1,
        ),
        (
            "/v1/agent/check/warn/api1-ttl?note=slow",
            vec!["10.0.1.1"],
            0,
        ),
        ("/v1/agent/check/fail/api1-ttl?note=down", vec![], 0),
        ("/v1/agent/check/pass/api1-ttl", vec!["10.0.1.1"], 1),
    ] {
        let r = http("PUT", &srv.url(path), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert_eq!(
            a_records(srv.dns, "api.service.consul.").await,
            dns,
            "{path}"
        );
        assert_eq!(passing().await, only_passing, "{path}");
    }
    let r = http(
        "PUT",
        &srv.url("/v1/agent/check/update/api1-ttl"),
        Some(r#"{"Status": "critical", "Output": "disk full"}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(a_records(srv.dns, "api.service.consul.").await.is_empty());
    let checks = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    assert_eq!(checks["api1-ttl"]["Output"], "disk full");
    assert_eq!(checks["api1-ttl"]["Status"], "critical");
    assert_eq!(checks["api1-ttl"]["Type"], "ttl");
    srv.stop().await;
}

#[tokio::test]
async fn check_register_and_deregister() {
    let srv = TestServer::start(None).await;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    let check = r#"{"Name": "web disk", "ID": "disk", "ServiceID": "web1", "TTL": "1m", "Status": "critical"}"#;
    let r = http("PUT", &srv.url("/v1/agent/check/register"), Some(check)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(a_records(srv.dns, "web.service.consul.").await.is_empty());
    let r = http("PUT", &srv.url("/v1/agent/check/deregister/disk"), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    // A node-level check (no ServiceID) takes down every instance on the node.
    let node_check = r#"{"Name": "node alive", "TTL": "1m"}"#;
    assert_eq!(
        http(
            "PUT",
            &srv.url("/v1/agent/check/register"),
            Some(node_check)
        )
        .await
        .status,
        200
    );
    assert!(a_records(srv.dns, "web.service.consul.").await.is_empty());
    let node = http("GET", &srv.url("/v1/health/node/testnode"), None)
        .await
        .json();
    assert_eq!(node[0]["CheckID"], "node alive");
    assert_eq!(node[0]["ServiceID"], "");
    srv.stop().await;
}

#[tokio::test]
async fn catalog_register_read_and_deregister() {
    let srv = TestServer::start(None).await;
    let reg = r#"{"Node": "ext1", "Address": "10.9.0.1", "NodeMeta": {"rack": "a"},
                  "Service": {"ID": "pg1", "Service": "pg", "Tags": ["primary"], "Port": 5432}}"#;
    let r = http("PUT", &srv.url("/v1/catalog/register"), Some(reg)).await;
    assert_eq!((r.status, r.body.trim()), (200, "true"));
    assert_eq!(a_records(srv.dns, "pg.service.consul.").await, ["10.9.0.1"]);
    assert_eq!(a_records(srv.dns, "ext1.node.consul.").await, ["10.9.0.1"]);
    let nodes = http("GET", &srv.url("/v1/catalog/service/pg?tag=primary"), None)
        .await
        .json();
    assert_eq!(nodes[0]["Node"], "ext1");
    assert_eq!(nodes[0]["ServiceID"], "pg1");
    assert_eq!(nodes[0]["ServicePort"], 5432);
    assert_eq!(nodes[0]["NodeMeta"]["rack"], "a");
    assert_eq!(nodes[0]["ServiceWeights"]["Passing"], 1);
    let none = http(
        "GET",
        &srv.url("/v1/catalog/service/pg?tag=primary&tag=nope"),
        None,
    )
    .await
    .json();
    assert_eq!(none, serde_json::json!([]));
    let services = http("GET", &srv.url("/v1/catalog/services"), None)
        .await
        .json();
    assert_eq!(services["pg"], serde_json::json!(["primary"]));
    let node = http("GET", &srv.url("/v1/catalog/node/ext1"), None)
        .await
        .json();
    assert_eq!(node["Services"]["pg1"]["Service"], "pg");
    let missing = http("GET", &srv.url("/v1/catalog/node/nobody"), None).await;
    assert_eq!((missing.status, missing.body.as_str()), (200, "null"));
    let dcs = http("GET", &srv.url("/v1/catalog/datacenters"), None)
        .await
        .json();
    assert_eq!(dcs, serde_json::json!(["dc1"]));
    let health = http("GET", &srv.url("/v1/health/state/any"), None).await;
    assert_eq!(health.status, 200);
    let leader = http("GET", &srv.url("/v1/status/leader"), None)
        .await
        .json();
    assert!(leader.as_str().unwrap().ends_with(":8300"));
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/deregister"),
        Some(r#"{"Node": "ext1"}"#),
    )
    .await;
    assert_eq!((r.status, r.body.trim()), (200, "true"));
    let m = query(srv.dns, Via::Udp, "pg.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    srv.stop().await;
}

#[tokio::test]
async fn consul_documentation_examples() {
    let srv = TestServer::start(None).await;
    let doc = |name: &str| {
        std::fs::read_to_string(format!(
            "{}/tests/it/consul_docs/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/register"),
        Some(&doc("catalog_register.json")),
    )
    .await;
    assert_eq!((r.status, r.body.trim()), (200, "true"), "{}", r.body);
    assert_eq!(
        a_records(srv.dns, "redis.service.consul.").await,
        ["127.0.0.1"]
    );
    let h = http("GET", &srv.url("/v1/health/service/redis"), None)
        .await
        .json();
    assert_eq!(h[0]["Node"]["Node"], "t2.320");
    assert_eq!(h[0]["Node"]["TaggedAddresses"]["wan"], "10.0.10.10");
    assert_eq!(h[0]["Service"]["TaggedAddresses"]["wan"]["Port"], 80);
    assert_eq!(h[0]["Service"]["Meta"]["redis_version"], "4.0");
    assert_eq!(h[0]["Checks"][0]["CheckID"], "service:redis1");
    assert_eq!(h[0]["Checks"][0]["Status"], "passing");
    for body in [
        "catalog_deregister_check.json",
        "catalog_deregister_service.json",
        "catalog_deregister_node.json",
    ] {
        let r = http("PUT", &srv.url("/v1/catalog/deregister"), Some(&doc(body))).await;
        assert_eq!(
            (r.status, r.body.trim()),
            (200, "true"),
            "{body}: {}",
            r.body
        );
    }
    let nodes = http("GET", &srv.url("/v1/catalog/nodes"), None)
        .await
        .json();
    assert!(nodes
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["Node"] != "t2.320"));
    // The agent example carries a script check; like a stock Consul agent
    // (scripts disabled), signpost refuses it, with the reason.
    let r = http(
        "PUT",
        &srv.url("/v1/agent/service/register"),
        Some(&doc("agent_service_register.json")),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("Args checks are not supported"),
        "{}",
        r.body
    );
    assert_eq!(r.body.trim_end().lines().count(), 1);
    srv.stop().await;
}

#[tokio::test]
async fn kv_put_get_recurse_cas_delete() {
    let srv = TestServer::start(None).await;
    let url = |p: &str| srv.url(&format!("/v1/kv/{p}"));
    assert_eq!(
        http("PUT", &url("app/db/host"), Some("db.local"))
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(
        http("PUT", &url("app/db/port?flags=42"), Some("5432"))
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(
        http("PUT", &url("app/name"), Some("shop"))
            .await
            .body
            .trim(),
        "true"
    );

    let one = http("GET", &url("app/db/port"), None).await;
    let j = one.json();
    assert_eq!(j[0]["Key"], "app/db/port");
    assert_eq!(j[0]["Value"], "NTQzMg==");
    assert_eq!(j[0]["Flags"], 42);
    let modify = j[0]["ModifyIndex"].as_u64().unwrap();
    assert_eq!(one.index, Some(modify));
    assert_eq!(
        http("GET", &url("app/db/host?raw"), None).await.body,
        "db.local"
    );
    let all = http("GET", &url("app?recurse"), None).await.json();
    assert_eq!(all.as_array().unwrap().len(), 3);
    let keys = http("GET", &url("app/?keys&separator=/"), None)
        .await
        .json();
    assert_eq!(keys, serde_json::json!(["app/db/", "app/name"]));
    assert_eq!(http("GET", &url("nope"), None).await.status, 404);

    // Check-and-set: a stale index fails, the current one succeeds.
    let r = http(
        "PUT",
        &url(&format!("app/db/port?cas={}", modify - 1)),
        Some("1"),
    )
    .await;
    assert_eq!(r.body.trim(), "false");
    let r = http(
        "PUT",
        &url(&format!("app/db/port?cas={modify}")),
        Some("6543"),
    )
    .await;
    assert_eq!(r.body.trim(), "true");
    assert_eq!(
        http("GET", &url("app/db/port?raw"), None).await.body,
        "6543"
    );
    assert_eq!(
        http("PUT", &url("app/new?cas=0"), Some("x"))
            .await
            .body
            .trim(),
        "true"
    );
    assert_eq!(
        http("PUT", &url("app/new?cas=0"), Some("y"))
            .await
            .body
            .trim(),
        "false"
    );

    assert_eq!(
        http("DELETE", &url("app/name"), None).await.body.trim(),
        "true"
    );
    assert_eq!(http("GET", &url("app/name"), None).await.status, 404);
    assert_eq!(
        http("DELETE", &url("app?recurse"), None).await.body.trim(),
        "true"
    );
    assert_eq!(http("GET", &url("app?recurse"), None).await.status, 404);

    let big = "x".repeat(512 * 1024 + 1);
    let r = http("PUT", &url("big"), Some(&big)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(r.body.contains("524288"), "{}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn blocking_query_wakes_on_a_matching_change_and_times_out() {
    let srv = TestServer::start(None).await;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    let first = http("GET", &srv.url("/v1/health/service/web"), None).await;
    let index = first.index.expect("X-Consul-Index");

    // Times out with the same index when nothing changes.
    let started = Instant::now();
    let r = http(
        "GET",
        &srv.url(&format!("/v1/health/service/web?index={index}&wait=300ms")),
        None,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(r.index, Some(index));
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // Wakes on a change of its own service, not on one elsewhere. Best of
    // three, so that one slow scheduling on a busy machine does not fail it.
    let mut best = Duration::MAX;
    let mut index = index;
    for round in 0..3 {
        let url = srv.url(&format!("/v1/health/service/web?index={index}&wait=10s"));
        let watcher = tokio::spawn(async move {
            let r = http("GET", &url, None).await;
            (Instant::now(), r)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Unrelated writes: a KV key and another service.
        http("PUT", &srv.url("/v1/kv/unrelated"), Some("x")).await;
        let other = r#"{"Name": "other", "Port": 1}"#;
        http("PUT", &srv.url("/v1/agent/service/register"), Some(other)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !watcher.is_finished(),
            "round {round}: woken by an unrelated change"
        );
        let body = format!(
            r#"{{"ID": "web1", "Name": "web", "Address": "10.0.0.1", "Port": {}}}"#,
            100 + round
        );
        let changed_at = Instant::now();
        http("PUT", &srv.url("/v1/agent/service/register"), Some(&body)).await;
        let (woke_at, r) = watcher.await.unwrap();
        assert!(r.index.unwrap() > index);
        assert_eq!(r.json()[0]["Service"]["Port"], 100 + round);
        index = r.index.unwrap();
        best = best.min(woke_at.saturating_duration_since(changed_at));
    }
    eprintln!("blocking query: write sent to watcher answered in {best:?} (best of 3)");
    assert!(best < Duration::from_millis(50), "{best:?}");
    srv.stop().await;
}

#[tokio::test]
async fn registrations_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let srv = TestServer::start_with(None, |c| c.data_dir = Some(dir.clone())).await;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    let ttl = r#"{"Name": "api", "Address": "10.0.1.1", "Check": {"CheckID": "t", "TTL": "1m"}}"#;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(ttl)).await;
    http("PUT", &srv.url("/v1/agent/check/pass/t"), None).await;
    http(
        "PUT",
        &srv.url("/v1/catalog/register"),
        Some(r#"{"Node": "ext", "Address": "10.2.0.1", "Service": {"Service": "ext"}}"#),
    )
    .await;
    http("PUT", &srv.url("/v1/kv/conf"), Some("v1")).await;
    let index = http("GET", &srv.url("/v1/agent/services"), None)
        .await
        .index
        .unwrap();
    srv.stop().await;

    let srv = TestServer::start_with(None, |c| c.data_dir = Some(dir.clone())).await;
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    assert_eq!(
        a_records(srv.dns, "api.service.consul.").await,
        ["10.0.1.1"],
        "TTL status kept"
    );
    assert_eq!(
        a_records(srv.dns, "ext.service.consul.").await,
        ["10.2.0.1"]
    );
    assert_eq!(
        http("GET", &srv.url("/v1/kv/conf?raw"), None).await.body,
        "v1"
    );
    let after = http("GET", &srv.url("/v1/agent/services"), None)
        .await
        .index
        .unwrap();
    assert!(
        after >= index,
        "the index never goes backwards: {after} < {index}"
    );
    // Deregistration is durable too.
    http("PUT", &srv.url("/v1/agent/service/deregister/web1"), None).await;
    srv.stop().await;
    let srv = TestServer::start_with(None, |c| c.data_dir = Some(dir.clone())).await;
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    srv.stop().await;
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_set() {
    let srv = TestServer::start_with(None, |c| c.http_token = Some("s3cret".into())).await;
    let url = srv.url("/v1/agent/service/register");
    let r = http("PUT", &url, Some(WEB1)).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        a_records(srv.dns, "web.service.consul.").await.is_empty(),
        "nothing applied"
    );
    let r = http_with("PUT", &url, Some(WEB1), &[("X-Consul-Token", "wrong")]).await;
    assert_eq!(r.status, 403);
    for (header, value) in [
        ("X-Consul-Token", "s3cret"),
        ("Authorization", "Bearer s3cret"),
    ] {
        let r = http_with("PUT", &url, Some(WEB1), &[(header, value)]).await;
        assert_eq!(r.status, 200, "{header}");
    }
    let r = http("PUT", &srv.url("/v1/kv/k?token=s3cret"), Some("v")).await;
    assert_eq!(r.status, 200);
    // Reads stay open.
    assert_eq!(
        http("GET", &srv.url("/v1/agent/services"), None)
            .await
            .status,
        200
    );
    srv.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_one_line_reason_and_changes_nothing() {
    let srv = TestServer::start(None).await;
    http("PUT", &srv.url("/v1/agent/service/register"), Some(WEB1)).await;
    let index = http("GET", &srv.url("/v1/agent/services"), None)
        .await
        .index;
    let big = format!(
        r#"{{"Name": "x", "Meta": {{"k": "{}"}}}}"#,
        "y".repeat(2 << 20)
    );
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "PUT",
            "/v1/agent/service/register",
            Some("{not json"),
            400,
            "request decode failed",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(""),
            400,
            "empty body",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Port": 80}"#),
            400,
            "missing Name",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name": "a", "Port": 70000}"#),
            400,
            "out of range",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name": "a", "Port": "80"}"#),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(
                r#"{"Name": "a", "Check": {"HTTP": "http://127.0.0.1/", "Interval": "10 seconds"}}"#,
            ),
            400,
            "invalid duration",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name": "a", "Check": {"TTL": "1m", "Status": "fine"}}"#),
            400,
            "status",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(r#"{"Name": "a", "Weights": {"Passing": 0}}"#),
            400,
            "weights",
        ),
        (
            "PUT",
            "/v1/agent/service/register",
            Some(&big),
            413,
            "too large",
        ),
        (
            "PUT",
            "/v1/agent/service/deregister/nope",
            None,
            404,
            "Unknown service ID",
        ),
        (
            "PUT",
            "/v1/agent/service/maintenance/nope?enable=true",
            None,
            404,
            "Unknown service ID",
        ),
        (
            "PUT",
            "/v1/agent/service/maintenance/web1",
            None,
            400,
            "Missing value for enable",
        ),
        (
            "PUT",
            "/v1/agent/service/maintenance/web1?enable=maybe",
            None,
            400,
            "Invalid value for enable",
        ),
        (
            "PUT",
            "/v1/agent/check/pass/nope",
            None,
            404,
            "Unknown check ID",
        ),
        (
            "PUT",
            "/v1/agent/check/deregister/nope",
            None,
            404,
            "Unknown check ID",
        ),
        (
            "PUT",
            "/v1/agent/check/register",
            Some(r#"{"TTL": "1m"}"#),
            400,
            "Missing check name",
        ),
        (
            "PUT",
            "/v1/agent/check/register",
            Some(r#"{"Name": "c", "ServiceID": "ghost", "TTL": "1m"}"#),
            400,
            "does not exist",
        ),
        (
            "PUT",
            "/v1/agent/check/update/nope",
            Some(r#"{"Status": "passing"}"#),
            404,
            "Unknown check ID",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            Some(r#"{"Node": "n"}"#),
            400,
            "missing Address",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            Some(r#"{"Node": "n", "Address": "1.2.3.4", "Datacenter": "dc9"}"#),
            400,
            "datacenter",
        ),
        (
            "PUT",
            "/v1/catalog/deregister",
            Some(r#"{}"#),
            400,
            "Missing node name",
        ),
        ("GET", "/v1/health/state/sad", None, 400, "Invalid state"),
        (
            "GET",
            "/v1/agent/services?index=abc",
            None,
            400,
            "invalid index",
        ),
        (
            "GET",
            "/v1/agent/services?index=1&wait=forever",
            None,
            400,
            "invalid wait",
        ),
        (
            "GET",
            "/v1/agent/service/nope",
            None,
            404,
            "unknown service ID",
        ),
        ("PUT", "/v1/kv/", Some("v"), 400, "Missing key name"),
        ("PUT", "/v1/kv/k?flags=x", Some("v"), 400, "invalid flags"),
        ("GET", "/v1/nonsense", None, 404, "no such endpoint"),
        // The router's own refusals say why too.
        (
            "PUT",
            "/v1/agent/service/deregister/",
            None,
            405,
            "an ID or name missing",
        ),
        (
            "DELETE",
            "/v1/catalog/services",
            None,
            405,
            "method DELETE is not allowed",
        ),
        (
            "POST",
            "/v1/kv/k",
            Some("v"),
            405,
            "method POST is not allowed",
        ),
    ];
    for (method, path, body, status, reason) in cases {
        let r = http(method, &srv.url(path), body).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(
            r.body.contains(reason),
            "{method} {path}: {:?} should mention {reason:?}",
            r.body
        );
        assert_eq!(
            r.body.trim_end().lines().count(),
            1,
            "{method} {path}: one line: {:?}",
            r.body
        );
    }
    assert_eq!(
        http("GET", &srv.url("/v1/agent/services"), None)
            .await
            .index,
        index,
        "nothing applied"
    );
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    // Entries from zones/ are read-only through the API.
    srv.stop().await;
    let zones = ZoneDir::new(&[(
        "w.json",
        r#"{"service": {"id": "filed", "name": "filed", "address": "10.3.0.1"}}"#,
    )]);
    let srv = TestServer::start(Some(zones.path())).await;
    let r = http("PUT", &srv.url("/v1/agent/service/deregister/filed"), None).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("read-only"));
    assert_eq!(
        a_records(srv.dns, "filed.service.consul.").await,
        ["10.3.0.1"]
    );
    srv.stop().await;
}
