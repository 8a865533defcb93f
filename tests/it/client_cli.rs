//! The client commands (`signpost kv`, `services`, `catalog`, `members`,
//! `info`, `watch`, `lock`, `completion`, `man`): the real binary against a
//! real signpost on port 0, with Consul's single-dash flags.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

fn signpost(srv: &TestServer, args: &[&str]) -> Output {
    signpost_in(srv, args, None)
}

fn signpost_in(srv: &TestServer, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_signpost"))
        .args(args)
        .env("CONSUL_HTTP_ADDR", srv.http.to_string())
        .env_remove("CONSUL_HTTP_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn kv_commands_and_export_import_round_trip() {
    let a = TestServer::start(None).await;
    let b = TestServer::start(None).await;
    let o = signpost(&a, &["kv", "put", "config/web/threads", "8"]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(text(&o), "Success! Data written to: config/web/threads\n");
    signpost(&a, &["kv", "put", "-flags=42", "config/web/name", "web"]);
    signpost_in(
        &a,
        &["kv", "put", "config/db/url", "-"],
        Some("postgres://x"),
    );
    let o = signpost(&a, &["kv", "get", "config/web/threads"]);
    assert_eq!(text(&o), "8\n");
    let o = signpost(&a, &["kv", "get", "-recurse", "config/web"]);
    assert_eq!(text(&o), "config/web/name:web\nconfig/web/threads:8\n");
    let o = signpost(&a, &["kv", "get", "-detailed", "config/web/name"]);
    assert!(text(&o).contains("Flags            42"), "{}", text(&o));
    let o = signpost(&a, &["kv", "get", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(err(&o), "Error! No key exists at: nope\n");
    let o = signpost(
        &a,
        &[
            "kv",
            "put",
            "-cas",
            "-modify-index=1",
            "config/web/threads",
            "9",
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("CAS failed"), "{}", err(&o));

    let export = signpost(&a, &["kv", "export", "config/"]);
    assert!(export.status.success(), "{}", err(&export));
    let o = signpost_in(&b, &["kv", "import", "-"], Some(&text(&export)));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(text(&o).lines().count(), 3);
    for key in ["config/web/threads", "config/web/name", "config/db/url"] {
        let ra = http("GET", &a.url(&format!("/v1/kv/{key}")), None)
            .await
            .json();
        let rb = http("GET", &b.url(&format!("/v1/kv/{key}")), None)
            .await
            .json();
        assert_eq!(ra[0]["Value"], rb[0]["Value"], "{key}");
        assert_eq!(ra[0]["Flags"], rb[0]["Flags"], "{key}");
    }

    let o = signpost(&a, &["kv", "delete", "-recurse", "config/web"]);
    assert_eq!(text(&o), "Success! Deleted keys with prefix: config/web\n");
    let o = signpost(&a, &["kv", "get", "-recurse", "config/"]);
    assert_eq!(text(&o), "config/db/url:postgres://x\n");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_catalog_members_info_and_errors() {
    let srv = TestServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(
        &file,
        r#"{"service": {"name": "web", "id": "web-1", "port": 80, "tags": ["v1", "blue"]}}"#,
    )
    .unwrap();
    let o = signpost(&srv, &["services", "register", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(text(&o), "Registered service: web\n");
    assert_eq!(a_records(srv.dns, "web.service.consul").await.len(), 1);
    let o = signpost(&srv, &["catalog", "services", "-tags"]);
    assert!(text(&o).contains("web  blue,v1"), "{}", text(&o));
    let o = signpost(&srv, &["catalog", "services", "-node", "testnode"]);
    assert_eq!(text(&o), "web\n");
    let o = signpost(&srv, &["catalog", "nodes", "-service", "web"]);
    assert!(text(&o).starts_with("Node"), "{}", text(&o));
    assert!(text(&o).contains("testnode"), "{}", text(&o));
    let o = signpost(&srv, &["members"]);
    assert!(
        text(&o).contains("testnode") && text(&o).contains("alive"),
        "{}",
        text(&o)
    );
    let o = signpost(&srv, &["info"]);
    assert!(text(&o).starts_with("agent:"), "{}", text(&o));
    let o = signpost(&srv, &["services", "deregister", "-id", "web-1"]);
    assert_eq!(text(&o), "Deregistered service: web-1\n");
    assert!(a_records(srv.dns, "web.service.consul").await.is_empty());

    // The shipped zones/ files register as they are.
    let shipped = shipped_zones().join("web.json");
    let o = signpost(&srv, &["services", "register", shipped.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));
    let services = http("GET", &srv.url("/v1/agent/services"), None)
        .await
        .json();
    assert!(
        services.get("web-1").is_some() && services.get("web-2").is_some(),
        "{services}"
    );
    let o = signpost(&srv, &["services", "deregister", shipped.to_str().unwrap()]);
    assert!(o.status.success(), "{}", err(&o));

    // Unreachable: one line, the address tried.
    let port = free_port();
    let o = signpost(
        &srv,
        &["kv", "get", &format!("-http-addr=127.0.0.1:{port}"), "x"],
    );
    assert_eq!(o.status.code(), Some(1));
    let e = err(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains(&format!("127.0.0.1:{port}")) && e.contains("refused"),
        "{e}"
    );

    // Self-documentation.
    for shell in ["bash", "zsh", "fish"] {
        let o = signpost(&srv, &["completion", shell]);
        assert!(o.status.success() && text(&o).contains("kv"), "{shell}");
    }
    let o = signpost(&srv, &["man"]);
    assert!(text(&o).contains(".TH signpost"), "{}", text(&o));
    srv.stop().await;
}

/// Waits until `path` holds at least `n` JSON documents; returns them.
async fn documents(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let docs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        if docs.len() >= n {
            return docs;
        }
        assert!(Instant::now() < deadline, "{n} documents not seen: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_runs_its_handler_on_health_and_kv_changes() {
    let srv = TestServer::start(None).await;
    let r = http(
        "PUT",
        &srv.url("/v1/agent/service/register"),
        Some(
            r#"{"Name":"nginx","ID":"nginx-1","Port":80,"Check":{"TTL":"30s","Status":"passing"}}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let dir = tempfile::tempdir().unwrap();
    let checks_out = dir.path().join("checks.json");
    let kv_out = dir.path().join("kv.json");
    let spawn = |args: Vec<String>| {
        Command::new(env!("CARGO_BIN_EXE_signpost"))
            .args(args)
            .env("CONSUL_HTTP_ADDR", srv.http.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut checks = spawn(vec![
        "watch".into(),
        "-type=checks".into(),
        "-service".into(),
        "nginx".into(),
        format!("cat >> {}", checks_out.display()),
    ]);
    let mut keys = spawn(vec![
        "watch".into(),
        "-type=keyprefix".into(),
        "-prefix=config/".into(),
        format!("cat >> {}", kv_out.display()),
    ]);
    let first = documents(&checks_out, 1).await;
    assert_eq!(first[0][0]["Status"], "passing");
    http(
        "PUT",
        &srv.url("/v1/agent/check/fail/service:nginx-1"),
        None,
    )
    .await;
    let docs = documents(&checks_out, 2).await;
    assert_eq!(docs[1][0]["Status"], "critical", "{docs:?}");
    documents(&kv_out, 1).await;
    http("PUT", &srv.url("/v1/kv/config/threads"), Some("8")).await;
    let docs = documents(&kv_out, 2).await;
    assert_eq!(docs[1][0]["Key"], "config/threads", "{docs:?}");
    checks.kill().ok();
    keys.kill().ok();
    checks.wait().ok();
    keys.wait().ok();
    srv.stop().await;
}

/// `signpost lock ARGS...` against `srv`, its stderr kept for the asserts.
fn lock(srv: &TestServer, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
        .arg("lock")
        .args(args)
        .env("CONSUL_HTTP_ADDR", srv.http.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("signpost lock")
}

#[tokio::test(flavor = "multi_thread")]
async fn lock_serialises_commands_and_stops_one_that_lost_it() {
    let srv = TestServer::start(None).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let job = |name: &str| {
        let script = format!(
            "echo start {name} >> {l}; sleep 1; echo end {name} >> {l}",
            l = log.display()
        );
        lock(&srv, &["locks/job", &script])
    };
    let a = job("a");
    std::thread::sleep(Duration::from_millis(300));
    let b = job("b");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let lines = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        lines, "start a\nend a\nstart b\nend b\n",
        "the two ran at once"
    );
    // The lock released: the key is gone with its session (delete).
    let r = http("GET", &srv.url("/v1/kv/locks/job/.lock"), None).await;
    assert!(
        r.status == 404 || r.json()[0]["Session"].is_null(),
        "{}",
        r.body
    );

    // A semaphore of two: three jobs, never more than two at once.
    let sem_log = dir.path().join("sem");
    let slot = || {
        let script = format!(
            "echo + >> {l}; sleep 1; echo - >> {l}",
            l = sem_log.display()
        );
        lock(&srv, &["-n", "2", "locks/pool", &script])
    };
    let jobs = [slot(), slot(), slot()];
    for j in jobs {
        let out = j.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (mut now, mut most) = (0i32, 0i32);
    for l in std::fs::read_to_string(&sem_log).unwrap().lines() {
        now += if l == "+" { 1 } else { -1 };
        most = most.max(now);
    }
    assert_eq!(most, 2, "semaphore of 2");

    // A holder whose session is destroyed loses the lock: its command is
    // stopped and it exits 1.
    let held = lock(&srv, &["locks/long", "sleep 30"]);
    let url = srv.url("/v1/kv/locks/long/.lock");
    let mut session = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while session.is_empty() {
        assert!(Instant::now() < deadline, "lock never taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = http("GET", &url, None).await;
        if r.status == 200 {
            session = r.json()[0]["Session"].as_str().unwrap_or("").to_string();
        }
    }
    let t = Instant::now();
    http(
        "PUT",
        &srv.url(&format!("/v1/session/destroy/{session}")),
        None,
    )
    .await;
    let out = tokio::task::spawn_blocking(move || held.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Lock lost"));
    srv.stop().await;
}
