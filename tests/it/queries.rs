//! Prepared queries: the `/v1/query` API, execution (tags with `!tag`,
//! OnlyPassing, templates), DNS answers for `name.query.consul`, and
//! durability across a restart.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::*;

async fn register(srv: &TestServer, id: &str, addr: &str, tags: &str, check: &str) {
    let body = format!(
        r#"{{"Name":"web","ID":"{id}","Address":"{addr}","Port":80,"Tags":{tags}{check}}}"#
    );
    let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(&body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

async fn create(srv: &TestServer, body: &str) -> String {
    let r = http("POST", &srv.url("/v1/query"), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["ID"].as_str().unwrap().to_string()
}

async fn executed(srv: &TestServer, name: &str) -> Vec<String> {
    let r = http("GET", &srv.url(&format!("/v1/query/{name}/execute")), None).await;
    assert_eq!(r.status, 200, "{name}: {}", r.body);
    let mut ids: Vec<String> = r.json()["Nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Service"]["ID"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

async fn setup(srv: &TestServer) {
    register(srv, "web-1", "10.0.0.1", r#"["v1"]"#, "").await;
    register(srv, "web-2", "10.0.0.2", r#"["v2"]"#, "").await;
    register(
        srv,
        "web-3",
        "10.0.0.3",
        r#"["v2","canary"]"#,
        r#","Check":{"TTL":"30s","Status":"warning"}"#,
    )
    .await;
}

#[tokio::test]
async fn prepared_queries_api_and_execution() {
    let srv = TestServer::start(None).await;
    setup(&srv).await;
    let v2 = create(
        &srv,
        r#"{"Name":"web-v2","Service":{"Service":"web","Tags":["v2","!canary"]},"DNS":{"TTL":"10s"}}"#,
    )
    .await;
    let passing = create(
        &srv,
        r#"{"Name":"web-ok","Service":{"Service":"web","OnlyPassing":true}}"#,
    )
    .await;
    assert_eq!(executed(&srv, "web-v2").await, ["web-2"]);
    assert_eq!(executed(&srv, &v2).await, ["web-2"], "by ID");
    assert_eq!(executed(&srv, "web-ok").await, ["web-1", "web-2"]);
    let r = http("GET", &srv.url("/v1/query/web-v2/execute"), None).await;
    assert_eq!(r.json()["DNS"]["TTL"], "10s");
    let r = http("GET", &srv.url("/v1/query/web-ok/execute?limit=1"), None).await;
    assert_eq!(r.json()["Nodes"].as_array().unwrap().len(), 1);

    // Templates: a prefix, and a regexp with its groups.
    create(
        &srv,
        r#"{"Name":"geo-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}","Tags":["!canary"]}}"#,
    )
    .await;
    create(
        &srv,
        r#"{"Name":"tagged-","Template":{"Type":"regexp","Regexp":"^tagged-(.+?)-(v[0-9])$"},"Service":{"Service":"${match(1)}","Tags":["${match(2)}"]}}"#,
    )
    .await;
    assert_eq!(executed(&srv, "geo-web").await, ["web-1", "web-2"]);
    assert_eq!(executed(&srv, "tagged-web-v1").await, ["web-1"]);
    let r = http("GET", &srv.url("/v1/query/tagged-web-v2/explain"), None).await;
    assert_eq!(r.json()["Query"]["Service"]["Service"], "web");
    assert_eq!(
        r.json()["Query"]["Service"]["Tags"],
        serde_json::json!(["v2"])
    );

    // Read, list, update, delete; errors say why.
    let r = http("GET", &srv.url(&format!("/v1/query/{passing}")), None).await;
    assert_eq!(r.json()[0]["Name"], "web-ok");
    let r = http("GET", &srv.url("/v1/query"), None).await;
    assert_eq!(r.json().as_array().unwrap().len(), 4);
    let r = http(
        "PUT",
        &srv.url(&format!("/v1/query/{passing}")),
        Some(r#"{"Name":"web-ok","Service":{"Service":"web","Tags":["v1"]}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(executed(&srv, "web-ok").await, ["web-1"]);
    let r = http(
        "POST",
        &srv.url("/v1/query"),
        Some(r#"{"Name":"web-ok","Service":{"Service":"web"}}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("already in use"), "{}", r.body);
    let r = http("POST", &srv.url("/v1/query"), Some(r#"{"Name":"x"}"#)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http("DELETE", &srv.url(&format!("/v1/query/{passing}")), None).await;
    assert_eq!(r.status, 200);
    let r = http("GET", &srv.url("/v1/query/web-ok/execute"), None).await;
    assert_eq!(r.status, 404);
    assert!(r.index.is_some());

    // A query tied to a session goes with it.
    let s = http("PUT", &srv.url("/v1/session/create"), Some("{}"))
        .await
        .json();
    let sid = s["ID"].as_str().unwrap();
    create(
        &srv,
        &format!(r#"{{"Name":"temp","Session":"{sid}","Service":{{"Service":"web"}}}}"#),
    )
    .await;
    http("PUT", &srv.url(&format!("/v1/session/destroy/{sid}")), None).await;
    let r = http("GET", &srv.url("/v1/query/temp/execute"), None).await;
    assert_eq!(r.status, 404);
    srv.stop().await;
}

#[tokio::test]
async fn prepared_queries_answer_in_dns_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let srv = TestServer::start_with(None, |c| c.data_dir = Some(data.clone())).await;
    setup(&srv).await;
    create(
        &srv,
        r#"{"Name":"web-v2","Service":{"Service":"web","Tags":["v2"]},"DNS":{"TTL":"10s"}}"#,
    )
    .await;
    create(
        &srv,
        r#"{"Name":"geo-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}","Tags":["!canary"]}}"#,
    )
    .await;
    for via in BOTH {
        let m = query(srv.dns, via, "web-v2.query.consul.", RecordType::A).await;
        let mut got: Vec<String> = m
            .answers
            .iter()
            .map(|r| format!("{} {}", r.ttl, r.data))
            .collect();
        got.sort();
        assert_eq!(got, ["10 10.0.0.2", "10 10.0.0.3"], "{via:?}");
        assert_eq!(
            srv_ports(srv.dns, via, "_web-v2._tcp.query.consul.")
                .await
                .len(),
            2
        );
    }
    assert_eq!(
        a_records(srv.dns, "geo-web.query.consul.").await,
        ["10.0.0.1", "10.0.0.2"]
    );
    let m = query(srv.dns, Via::Udp, "nope.query.consul.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    // A health change reaches the query's answers.
    http("PUT", &srv.url("/v1/agent/check/fail/service:web-3"), None).await;
    assert_eq!(
        a_records(srv.dns, "web-v2.query.consul.").await,
        ["10.0.0.2"]
    );
    srv.stop().await;

    let srv = TestServer::start_with(None, |c| c.data_dir = Some(data.clone())).await;
    let url = srv.url("/v1/query");
    eventually(Duration::from_secs(5), "queries restored", || {
        let url = url.clone();
        async move {
            http("GET", &url, None)
                .await
                .json()
                .as_array()
                .map(Vec::len)
                == Some(2)
        }
    })
    .await;
    assert_eq!(
        a_records(srv.dns, "web-v2.query.consul.").await,
        ["10.0.0.2"]
    );
    assert_eq!(
        a_records(srv.dns, "geo-web.query.consul.").await,
        ["10.0.0.1", "10.0.0.2"]
    );
    srv.stop().await;
}

/// A template's DNS answers are what `execute` answers for the same name:
/// `OnlyPassing`, service and node meta and the query's TTL apply in DNS
/// too, and a health change or an edit of the query reaches them.
#[tokio::test]
async fn template_answers_in_dns_match_execute() {
    let srv = TestServer::start(None).await;
    for (id, addr, meta, status) in [
        ("web-1", "10.0.0.1", "prod", "passing"),
        ("web-2", "10.0.0.2", "prod", "warning"),
        ("web-3", "10.0.0.3", "dev", "passing"),
    ] {
        let body = format!(
            r#"{{"Name":"web","ID":"{id}","Address":"{addr}","Port":80,"Meta":{{"env":"{meta}"}},"Check":{{"TTL":"60s","Status":"{status}"}}}}"#
        );
        let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(&body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let id = create(
        &srv,
        r#"{"Name":"prod-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}","OnlyPassing":true,"ServiceMeta":{"env":"prod"}},"DNS":{"TTL":"7s"}}"#,
    )
    .await;
    let dns = |srv: &TestServer| {
        let dns = srv.dns;
        async move {
            let m = query(dns, Via::Udp, "prod-web.query.consul.", RecordType::A).await;
            let mut got: Vec<String> = m
                .answers
                .iter()
                .map(|r| format!("{} {}", r.ttl, r.data))
                .collect();
            got.sort();
            got
        }
    };
    assert_eq!(executed(&srv, "prod-web").await, ["web-1"]);
    assert_eq!(dns(&srv).await, ["7 10.0.0.1"]);
    // Asked again (from the template cache), then a health change.
    assert_eq!(dns(&srv).await, ["7 10.0.0.1"]);
    http("PUT", &srv.url("/v1/agent/check/pass/service:web-2"), None).await;
    assert_eq!(executed(&srv, "prod-web").await, ["web-1", "web-2"]);
    assert_eq!(dns(&srv).await, ["7 10.0.0.1", "7 10.0.0.2"]);
    // The query edited: warning instances allowed, any env.
    let r = http(
        "PUT",
        &srv.url(&format!("/v1/query/{id}")),
        Some(r#"{"Name":"prod-","Template":{"Type":"name_prefix_match"},"Service":{"Service":"${name.suffix}"},"DNS":{"TTL":"3s"}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(dns(&srv).await, ["3 10.0.0.1", "3 10.0.0.2", "3 10.0.0.3"]);
    srv.stop().await;
}

/// Field names in any case or with underscores, as python-consul and
/// agent files send them, are the same fields; the query reads back in
/// Consul's spelling and keeps a meta map's keys as sent.
#[tokio::test]
async fn query_bodies_in_any_spelling_read_back_in_consuls() {
    let srv = TestServer::start(None).await;
    setup(&srv).await;
    let id = create(
        &srv,
        r#"{"name":"web-lower","service":{"service":"web","only_passing":true,
            "tags":["v2"],"service_meta":{"Owner_Team":"x"},
            "failover":{"nearest_n":2,"datacenters":["dc2"]}},"dns":{"ttl":"7s"}}"#,
    )
    .await;
    let r = http("GET", &srv.url(&format!("/v1/query/{id}")), None).await;
    let q = &r.json()[0];
    assert_eq!(q["Name"], "web-lower", "{}", r.body);
    assert_eq!(q["Service"]["Service"], "web");
    assert_eq!(q["Service"]["OnlyPassing"], true);
    assert_eq!(q["Service"]["ServiceMeta"]["Owner_Team"], "x");
    assert_eq!(q["Service"]["Failover"]["NearestN"], 2);
    assert_eq!(q["Service"]["Failover"]["Datacenters"][0], "dc2");
    assert_eq!(q["DNS"]["TTL"], "7s");
    // The meta filter matched no instance: none carries that meta.
    assert!(executed(&srv, "web-lower").await.is_empty());
    let r = http(
        "POST",
        &srv.url("/v1/query"),
        Some(r#"{"Name":"bad","Service":{"Service":"web","Tags":"v2"}}"#),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.starts_with("request decode failed"), "{}", r.body);
    srv.stop().await;
}
