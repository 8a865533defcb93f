//! Sessions and locks, Consul's leader-election recipe over real HTTP: one
//! contender wins, the other waits; the winner's session ends (destroyed,
//! or its TTL runs out) and the lock passes after the lock delay; a
//! `delete` session takes its keys with it; sessions survive a restart.

use std::time::Duration;

use crate::support::*;

async fn create(srv: &TestServer, body: &str) -> String {
    let r = http("PUT", &srv.url("/v1/session/create"), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.index.is_some());
    r.json()["ID"].as_str().unwrap().to_string()
}

async fn acquire(srv: &TestServer, key: &str, session: &str, value: &str) -> bool {
    let r = http(
        "PUT",
        &srv.url(&format!("/v1/kv/{key}?acquire={session}")),
        Some(value),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body.trim() == "true"
}

#[tokio::test]
async fn leader_election_with_sessions_and_locks() {
    let srv = TestServer::start_with(None, |c| c.session_ttl_min = Duration::from_secs(1)).await;
    // Patroni's own body: lowercase keys, a lock delay in seconds, no checks.
    let a = create(
        &srv,
        r#"{"name":"pg1","checks":[],"lockdelay":"1s","behavior":"release","ttl":"1s"}"#,
    )
    .await;
    let b = create(&srv, r#"{"Name":"pg2","LockDelay":"1s","TTL":"30s"}"#).await;
    assert!(acquire(&srv, "service/pg/leader", &a, "pg1").await);
    assert!(
        !acquire(&srv, "service/pg/leader", &b, "pg2").await,
        "held by a"
    );
    let kv = http("GET", &srv.url("/v1/kv/service/pg/leader"), None)
        .await
        .json();
    assert_eq!(kv[0]["Session"], a.as_str());
    assert_eq!(kv[0]["LockIndex"], 1);
    let index = http("GET", &srv.url("/v1/kv/service/pg/leader"), None)
        .await
        .index
        .unwrap();

    // a stops renewing: after twice its TTL it is invalidated, the lock is
    // released, and a blocking reader of the key wakes.
    let url = srv.url(&format!("/v1/kv/service/pg/leader?index={index}&wait=10s"));
    let woke = tokio::time::timeout(Duration::from_secs(6), http("GET", &url, None))
        .await
        .expect("the blocking read wakes when the session expires");
    assert!(woke.json()[0].get("Session").is_none(), "{}", woke.body);
    let info = http("GET", &srv.url(&format!("/v1/session/info/{a}")), None).await;
    assert_eq!(info.body.trim(), "[]");
    // b renews and takes over once the lock delay has passed.
    let renewed = http("PUT", &srv.url(&format!("/v1/session/renew/{b}")), None).await;
    assert_eq!(renewed.status, 200);
    assert_eq!(renewed.json()[0]["ID"], b.as_str());
    eventually(
        Duration::from_secs(3),
        "b takes the lock after the lock delay",
        || {
            let (srv, b) = (&srv, &b);
            async move { acquire(srv, "service/pg/leader", b, "pg2").await }
        },
    )
    .await;
    let kv = http("GET", &srv.url("/v1/kv/service/pg/leader?raw"), None).await;
    assert_eq!(kv.body, "pg2");
    let kv = http("GET", &srv.url("/v1/kv/service/pg/leader"), None)
        .await
        .json();
    assert_eq!(kv[0]["LockIndex"], 2);

    // release, then a delete-behavior session takes its keys with it.
    let r = http(
        "PUT",
        &srv.url(&format!("/v1/kv/service/pg/leader?release={b}")),
        Some("pg2"),
    )
    .await;
    assert_eq!(r.body.trim(), "true");
    let c = create(&srv, r#"{"Behavior":"delete","LockDelay":"0s"}"#).await;
    assert!(acquire(&srv, "service/pg/members/pg3", &c, "{}").await);
    let r = http("PUT", &srv.url(&format!("/v1/session/destroy/{c}")), None).await;
    assert_eq!(r.body.trim(), "true");
    assert_eq!(
        http("GET", &srv.url("/v1/kv/service/pg/members/pg3"), None)
            .await
            .status,
        404
    );

    // Errors as Consul's clients expect them, with X-Consul-Index.
    let r = http(
        "PUT",
        &srv.url("/v1/kv/x?acquire=00000000-0000-0000-0000-000000000000"),
        Some("v"),
    )
    .await;
    assert_eq!(r.status, 500);
    assert!(r.body.starts_with("invalid session"), "{}", r.body);
    assert!(r.index.is_some());
    let r = http("PUT", &srv.url("/v1/session/renew/nope"), None).await;
    assert_eq!(r.status, 404);
    assert!(r.index.is_some(), "404 carries X-Consul-Index");
    let r = http(
        "PUT",
        &srv.url("/v1/session/create"),
        Some(r#"{"TTL":"0.5s"}"#),
    )
    .await;
    assert_eq!(r.status, 500, "as Consul: Patroni matches this reply");
    assert!(r.body.starts_with("Invalid Session TTL"), "{}", r.body);
    let agent = http("GET", &srv.url("/v1/agent/self"), None).await.json();
    assert_eq!(
        agent["Config"]["SessionTTLMin"], 1_000_000_000u64,
        "nanoseconds"
    );
    let list = http("GET", &srv.url("/v1/session/list"), None).await.json();
    assert_eq!(list.as_array().unwrap().len(), 1, "only b is left");
    let on_node = http("GET", &srv.url("/v1/session/node/testnode"), None)
        .await
        .json();
    assert_eq!(on_node.as_array().unwrap().len(), 1);
    srv.stop().await;
}

/// Sessions and the locks they hold are API writes like any other: on disk
/// before they are acknowledged, and back after a restart.
#[tokio::test]
async fn sessions_and_locks_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_path_buf();
    let srv = TestServer::start_with(None, |c| c.data_dir = Some(dir.clone())).await;
    let s = create(&srv, r#"{"Name":"job","TTL":"60s"}"#).await;
    assert!(acquire(&srv, "locks/job", &s, "me").await);
    srv.stop().await;
    let srv = TestServer::start_with(None, |c| c.data_dir = Some(dir.clone())).await;
    let info = http("GET", &srv.url(&format!("/v1/session/info/{s}")), None)
        .await
        .json();
    assert_eq!(info[0]["Name"], "job");
    assert_eq!(info[0]["TTL"], "60s");
    let kv = http("GET", &srv.url("/v1/kv/locks/job"), None).await.json();
    assert_eq!(kv[0]["Session"], s.as_str());
    assert_eq!(kv[0]["LockIndex"], 1);
    srv.stop().await;
}

/// The requests Patroni and python-consul send, as they send them:
/// lowercase keys, an ID with a '/', a check attached through `serviceid`,
/// and deregistration by a raw or encoded '/' in the path.
#[tokio::test]
async fn patroni_and_python_consul_bodies_work_unchanged() {
    let srv = TestServer::start(None).await;
    let body = r#"{"name":"sptest","id":"sptest/pg1","address":"127.0.0.1","port":5432,
        "enabletagoverride":true,"tags":["master","primary"],
        "meta":{"Role":"master","lower_key":"v"},
        "check":{"http":"http://127.0.0.1:1/master","interval":"5s","DeregisterCriticalServiceAfter":"50.0s"}}"#;
    let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let svc = http("GET", &srv.url("/v1/agent/service/sptest/pg1"), None).await;
    assert_eq!(svc.status, 200, "{}", svc.body);
    let svc = svc.json();
    assert_eq!(svc["ID"], "sptest/pg1");
    assert_eq!(svc["EnableTagOverride"], true, "{svc}");
    assert_eq!(
        svc["Meta"]["lower_key"], "v",
        "user keys are kept as sent: {svc}"
    );
    assert_eq!(svc["Meta"]["Role"], "master");

    // python-consul's agent.check.register(..., service_id=...): `serviceid`.
    let check = r#"{"name":"replication","serviceid":"sptest/pg1","ttl":"30s","status":"passing"}"#;
    let r = http("PUT", &srv.url("/v1/agent/check/register"), Some(check)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let checks = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    assert_eq!(checks["replication"]["ServiceID"], "sptest/pg1", "{checks}");

    let r = http("PUT", &srv.url("/v1/agent/check/pass/replication"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The ID in the path, encoded and raw; registered again in between.
    for path in ["sptest%2Fpg1", "sptest/pg1"] {
        let url = srv.url(&format!("/v1/agent/service/deregister/{path}"));
        let r = http("PUT", &url, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let left = http("GET", &srv.url("/v1/catalog/service/sptest"), None).await;
        assert_eq!(left.body.trim(), "[]", "{path}");
        let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(body)).await;
        assert_eq!(r.status, 200);
    }
    srv.stop().await;
}
