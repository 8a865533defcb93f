//! Health checks against real targets on loopback that the tests control,
//! each outcome seen through DNS and `/v1/health/service`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use hickory_proto::rr::RecordType;
use tokio::net::TcpListener;

use crate::support::*;

/// An HTTP target answering `/health` with whatever status the test sets,
/// and `/hang` never.
struct Target {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Target {
    async fn start() -> Target {
        let status = Arc::new(AtomicU16::new(200));
        let s = status.clone();
        let app = axum::Router::new()
            .route(
                "/health",
                get(move || {
                    let s = s.clone();
                    async move {
                        let code =
                            axum::http::StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap();
                        (code, format!("status {}", code.as_u16()))
                    }
                }),
            )
            .route("/hang", get(std::future::pending::<&'static str>));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Target { addr, status, task }
    }

    fn set(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn health_status(srv: &TestServer, service: &str) -> Vec<String> {
    let j = http(
        "GET",
        &srv.url(&format!("/v1/health/service/{service}")),
        None,
    )
    .await
    .json();
    j.as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["Checks"].as_array().unwrap().iter())
        // The service's own checks, not its node's serfHealth.
        .filter(|c| c["CheckID"] != "serfHealth")
        .map(|c| c["Status"].as_str().unwrap().to_string())
        .collect()
}

/// One interval plus one timeout plus scheduling slack.
const WITHIN: Duration = Duration::from_secs(4);

#[tokio::test]
async fn http_check_follows_its_target_200_500_429_200() {
    let target = Target::start().await;
    let srv = TestServer::start(None).await;
    let body = format!(
        r#"{{"Name": "web", "ID": "web1", "Address": "10.0.0.1", "Port": 80,
            "Weights": {{"Passing": 10, "Warning": 1}},
            "Check": {{"HTTP": "http://{}/health", "Interval": "1s", "Timeout": "1s",
                       "SuccessBeforePassing": 2}}}}"#,
        target.addr
    );
    register(&srv, &body).await;
    // Starts critical; two passing runs in a row bring it in.
    assert!(a_records(srv.dns, "web.service.consul.").await.is_empty());
    eventually(WITHIN * 2, "passing after two 200s", || async {
        a_records(srv.dns, "web.service.consul.").await == ["10.0.0.1"]
    })
    .await;
    assert_eq!(health_status(&srv, "web").await, ["passing"]);

    target.set(500);
    eventually(WITHIN, "out of DNS after a 500", || async {
        a_records(srv.dns, "web.service.consul.").await.is_empty()
    })
    .await;
    assert_eq!(health_status(&srv, "web").await, ["critical"]);
    let checks = http("GET", &srv.url("/v1/health/checks/web"), None)
        .await
        .json();
    assert!(
        checks[0]["Output"].as_str().unwrap().contains("500"),
        "{checks}"
    );

    // 429 is warning: answered (with the warning weight), but not passing.
    target.set(429);
    eventually(WITHIN * 2, "warning after 429s", || async {
        health_status(&srv, "web").await == ["warning"]
    })
    .await;
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["10.0.0.1"]
    );
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::SRV).await;
    assert!(
        m.answers[0].to_string().contains("SRV 1 1 80"),
        "{}",
        m.answers[0]
    );
    let passing = http("GET", &srv.url("/v1/health/service/web?passing"), None)
        .await
        .json();
    assert_eq!(passing, serde_json::json!([]));

    target.set(200);
    eventually(WITHIN * 2, "passing again", || async {
        health_status(&srv, "web").await == ["passing"]
    })
    .await;
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::SRV).await;
    assert!(
        m.answers[0].to_string().contains("SRV 1 10 80"),
        "{}",
        m.answers[0]
    );
    srv.stop().await;
}

#[tokio::test]
async fn tcp_check_follows_a_listener_closed_and_reopened() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = |l: TcpListener| {
        tokio::spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        })
    };
    let task = accept(listener);
    let srv = TestServer::start(None).await;
    let body = format!(
        r#"{{"Name": "db", "Address": "10.0.0.2", "Port": 5432,
            "Check": {{"TCP": "{addr}", "Interval": "1s", "Timeout": "1s"}}}}"#
    );
    register(&srv, &body).await;
    eventually(WITHIN, "passing while listening", || async {
        a_records(srv.dns, "db.service.consul.").await == ["10.0.0.2"]
    })
    .await;
    task.abort();
    let _ = task.await;
    eventually(WITHIN, "critical once closed", || async {
        a_records(srv.dns, "db.service.consul.").await.is_empty()
    })
    .await;
    let task = accept(TcpListener::bind(addr).await.unwrap());
    eventually(WITHIN, "passing once reopened", || async {
        a_records(srv.dns, "db.service.consul.").await == ["10.0.0.2"]
    })
    .await;
    assert_eq!(health_status(&srv, "db").await, ["passing"]);
    task.abort();
    srv.stop().await;
}

#[tokio::test]
async fn ttl_check_expires_and_comes_back_when_passed() {
    let srv = TestServer::start(None).await;
    register(
        &srv,
        r#"{"Name": "job", "Address": "10.0.0.3", "Check": {"CheckID": "job-ttl", "TTL": "1s"}}"#,
    )
    .await;
    http("PUT", &srv.url("/v1/agent/check/pass/job-ttl"), None).await;
    assert_eq!(
        a_records(srv.dns, "job.service.consul.").await,
        ["10.0.0.3"]
    );
    // Refreshing keeps it alive past its TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        http("PUT", &srv.url("/v1/agent/check/pass/job-ttl"), None).await;
        assert_eq!(
            a_records(srv.dns, "job.service.consul.").await,
            ["10.0.0.3"]
        );
    }
    eventually(WITHIN, "expired", || async {
        a_records(srv.dns, "job.service.consul.").await.is_empty()
    })
    .await;
    let checks = http("GET", &srv.url("/v1/health/checks/job"), None)
        .await
        .json();
    assert_eq!(checks[0]["Status"], "critical");
    assert!(
        checks[0]["Output"]
            .as_str()
            .unwrap()
            .contains("TTL expired"),
        "{checks}"
    );
    http("PUT", &srv.url("/v1/agent/check/pass/job-ttl"), None).await;
    assert_eq!(
        a_records(srv.dns, "job.service.consul.").await,
        ["10.0.0.3"]
    );
    srv.stop().await;
}

#[tokio::test]
async fn a_hanging_target_times_out_without_delaying_other_checks() {
    let target = Target::start().await;
    let srv = TestServer::start(None).await;
    let hang = format!(
        r#"{{"Name": "stuck", "Address": "10.0.0.4",
            "Check": {{"HTTP": "http://{}/hang", "Interval": "1s", "Timeout": "1s", "Status": "passing"}}}}"#,
        target.addr
    );
    let fine = format!(
        r#"{{"Name": "fine", "Address": "10.0.0.5",
            "Check": {{"HTTP": "http://{}/health", "Interval": "1s", "Timeout": "5s"}}}}"#,
        target.addr
    );
    register(&srv, &hang).await;
    register(&srv, &fine).await;
    eventually(WITHIN, "the hanging one goes critical", || async {
        a_records(srv.dns, "stuck.service.consul.").await.is_empty()
    })
    .await;
    let out = http("GET", &srv.url("/v1/health/checks/stuck"), None)
        .await
        .json();
    assert!(
        out[0]["Output"].as_str().unwrap().contains("timed out"),
        "{out}"
    );
    // Meanwhile the other check keeps its one-second rhythm.
    let runs = || srv.signpost().health.runs()[0];
    let before = runs();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert!(
        runs() >= before + 2,
        "passing runs went {before} -> {}",
        runs()
    );
    assert_eq!(
        a_records(srv.dns, "fine.service.consul.").await,
        ["10.0.0.5"]
    );
    srv.stop().await;
}

#[tokio::test]
async fn deregister_critical_service_after() {
    let srv = TestServer::start(None).await;
    register(
        &srv,
        r#"{"Name": "flaky", "ID": "flaky1", "Address": "10.0.0.6",
            "Check": {"TTL": "1s", "DeregisterCriticalServiceAfter": "1s"}}"#,
    )
    .await;
    eventually(Duration::from_secs(6), "deregistered", || async {
        let all = http("GET", &srv.url("/v1/agent/services"), None)
            .await
            .json();
        all.get("flaky1").is_none()
    })
    .await;
    assert!(http("GET", &srv.url("/v1/agent/checks"), None)
        .await
        .json()
        .as_object()
        .unwrap()
        .is_empty());
    let m = query(srv.dns, Via::Udp, "flaky.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    srv.stop().await;
}

#[tokio::test]
async fn checks_stop_with_their_service_and_at_shutdown() {
    let target = Target::start().await;
    let srv = TestServer::start(None).await;
    let health = || srv.signpost().health.running();
    for i in 0..20 {
        let body = format!(
            r#"{{"Name": "svc", "ID": "svc{i}", "Port": {i},
                "Checks": [{{"HTTP": "http://{}/health", "Interval": "1s"}}, {{"TTL": "1m"}}]}}"#,
            target.addr
        );
        register(&srv, &body).await;
    }
    eventually(WITHIN, "40 check tasks", || async { health() == 40 }).await;
    for i in 0..10 {
        http(
            "PUT",
            &srv.url(&format!("/v1/agent/service/deregister/svc{i}")),
            None,
        )
        .await;
    }
    eventually(WITHIN, "20 left", || async { health() == 20 }).await;
    // Re-registering with other checks replaces the tasks, never adds.
    let body = r#"{"Name": "svc", "ID": "svc10", "Check": {"TTL": "2m"}}"#;
    http(
        "PUT",
        &srv.url("/v1/agent/service/register?replace-existing-checks"),
        Some(body),
    )
    .await;
    eventually(WITHIN, "19 left", || async { health() == 19 }).await;
    let h = srv.signpost().health.clone();
    srv.stop().await;
    assert_eq!(h.running(), 0, "none left after shutdown");
}

/// As on a Consul agent: the agent's node carries a passing serfHealth
/// (clients look for it), sessions tie to it by default, and
/// `/v1/agent/checks` does not list it (it is not a registered check).
#[tokio::test]
async fn the_agents_node_has_a_passing_serf_health_check() {
    let srv = TestServer::start(None).await;
    let node = srv.signpost().config.node.clone();
    let checks = http("GET", &srv.url(&format!("/v1/health/node/{node}")), None)
        .await
        .json();
    assert_eq!(checks[0]["CheckID"], "serfHealth", "{checks}");
    assert_eq!(checks[0]["Status"], "passing", "{checks}");
    let id = http("PUT", &srv.url("/v1/session/create"), Some("{}"))
        .await
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let info = http("GET", &srv.url(&format!("/v1/session/info/{id}")), None)
        .await
        .json();
    assert_eq!(
        info[0]["NodeChecks"],
        serde_json::json!(["serfHealth"]),
        "{info}"
    );
    let agent = http("GET", &srv.url("/v1/agent/checks"), None).await.json();
    assert!(agent.get("serfHealth").is_none(), "{agent}");
    srv.stop().await;
}
