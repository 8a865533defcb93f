//! The web UI: embedded files with caching headers, the reads made for it,
//! the browser Host check, `--ui=false`, and the UI itself in headless
//! Chromium (tests/clients/ui_check.js; skipped, saying so, where Chromium
//! or playwright-core is not installed).

use std::path::PathBuf;

use crate::support::*;

#[tokio::test]
async fn ui_files_reads_and_host_check() {
    let srv = TestServer::start(Some(&shipped_zones())).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(srv.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], "/ui/");
    let r = client.get(srv.url("/ui/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(
        r.headers().get("access-control-allow-origin").is_none(),
        "no CORS"
    );
    let html = r.text().await.unwrap();
    assert!(html.contains("/ui/app.js") && !html.contains("http://") && !html.contains("https://"));
    let r = client.get(srv.url("/ui/app.js")).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    let plain = r.bytes().await.unwrap().len();
    let r = client
        .get(srv.url("/ui/app.js"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let gz = r.bytes().await.unwrap().len();
    assert!(gz * 2 < plain, "gzip {gz} of {plain} bytes");
    let r = client
        .get(srv.url("/ui/app.js"))
        .header("If-None-Match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // The reads made for the UI.
    let v = http("GET", &srv.url("/v1/signpost/ui/services"), None)
        .await
        .json();
    let web = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Name"] == "web")
        .unwrap();
    assert_eq!(web["Sources"], serde_json::json!(["zones/"]));
    let r = http(
        "GET",
        &srv.url("/v1/signpost/dns?name=web.service.consul&type=A"),
        None,
    )
    .await;
    let v = r.json();
    assert_eq!(v["Status"], "NOERROR");
    assert!(!v["Answer"].as_array().unwrap().is_empty(), "{v}");
    let r = http("GET", &srv.url("/v1/signpost/dns?name=&type=A"), None).await;
    assert_eq!(r.status, 400);

    // A browser naming another host (DNS rebinding) is refused; programs,
    // IP literals and localhost are not.
    let port = srv.http.port();
    for (host, browser, want) in [
        (format!("evil.example:{port}"), true, 403),
        (format!("evil.example:{port}"), false, 200),
        (format!("127.0.0.1:{port}"), true, 200),
        (format!("localhost:{port}"), true, 200),
    ] {
        let mut req = client
            .get(srv.url("/v1/catalog/services"))
            .header("Host", host.as_str());
        if browser {
            req = req.header("Sec-Fetch-Site", "cross-site");
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            want,
            "{host} browser={browser}"
        );
    }
    srv.stop().await;

    let srv = TestServer::start_with(None, |c| {
        c.ui = false;
        c.http_allowed_hosts = vec!["signpost.lan".into()];
    })
    .await;
    assert_eq!(http("GET", &srv.url("/ui/"), None).await.status, 404);
    let r = client
        .get(srv.url("/v1/catalog/services"))
        .header("Host", "signpost.lan:8500")
        .header("Origin", "http://signpost.lan:8500")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a configured name");
    srv.stop().await;
}

/// `/v1/internal/ui/services`, which mirrors read on every catalog change:
/// Consul's summary shape, one entry per name in any case, each check
/// counted once, and a blocking read that wakes on a change.
#[tokio::test]
async fn consul_ui_services_summary() {
    let srv = TestServer::start(None).await;
    for reg in [
        r#"{"Node": "n1", "Address": "10.9.0.1",
            "Service": {"ID": "w1", "Service": "Web", "Tags": ["a"], "Port": 80},
            "Check": {"CheckID": "alive", "Name": "alive", "Status": "passing"}}"#,
        r#"{"Node": "n2", "Address": "10.9.0.2",
            "Service": {"ID": "w2", "Service": "web", "Tags": ["b", "a"], "Port": 80},
            "Check": {"CheckID": "w2-up", "Name": "up", "Status": "critical", "ServiceID": "w2"}}"#,
        r#"{"Node": "n2", "Address": "10.9.0.2",
            "Service": {"ID": "w3", "Service": "web", "Port": 81}}"#,
    ] {
        let r = http("PUT", &srv.url("/v1/catalog/register"), Some(reg)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = http("GET", &srv.url("/v1/internal/ui/services"), None).await;
    let v = r.json();
    let web: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["Name"].as_str().unwrap().eq_ignore_ascii_case("web"))
        .collect();
    assert_eq!(web.len(), 1, "one entry whatever the case: {v}");
    let web = web[0];
    assert_eq!(web["Tags"], serde_json::json!(["a", "b"]));
    assert_eq!(web["Nodes"], serde_json::json!(["n1", "n2"]));
    assert_eq!(web["InstanceCount"], 3);
    assert_eq!(web["Datacenter"], "dc1");
    assert_eq!(
        (web["ChecksPassing"].clone(), web["ChecksCritical"].clone()),
        (serde_json::json!(1), serde_json::json!(1)),
        "n1's node check counted once, w2's own check once: {web}"
    );
    assert_eq!(web["ExternalSources"], serde_json::json!([]));

    // Blocking on its index: a registration elsewhere wakes it.
    let index = r.index.unwrap();
    let url = srv.url(&format!("/v1/internal/ui/services?index={index}&wait=20s"));
    let held = tokio::spawn(async move { http("GET", &url, None).await });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "held until something changes");
    let reg = r#"{"Node": "n3", "Address": "10.9.0.3", "Service": {"ID": "d1", "Service": "db", "Port": 5432}}"#;
    http("PUT", &srv.url("/v1/catalog/register"), Some(reg)).await;
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), held)
        .await
        .expect("woken by the registration")
        .unwrap();
    assert!(r.index.unwrap() > index);
    assert!(r.body.contains(r#""Name":"db""#), "{}", r.body);
    srv.stop().await;
}

/// Runs the browser script with Node (clients.rs's runner, bounded).
async fn node(args: Vec<String>) {
    tokio::task::spawn_blocking(move || {
        crate::clients::run_script(
            std::path::Path::new("node"),
            &args,
            std::time::Duration::from_secs(120),
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn ui_in_a_real_browser() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let modules = root.join("target/clients/node");
    if !std::path::Path::new("/usr/bin/chromium").exists()
        || !modules.join("node_modules/playwright-core").exists()
    {
        return missing_tool(
            "Chromium or playwright-core",
            "chromium nodejs npm, then run scripts/test (it installs playwright-core)",
            "the UI in a browser",
        );
    }
    let srv = TestServer::start(Some(&shipped_zones())).await;
    let mut args = vec![
        root.join("tests/clients/ui_check.js").display().to_string(),
        modules.display().to_string(),
        format!("http://{}", srv.http),
    ];
    if let Ok(dir) = std::env::var("SIGNPOST_SCREENSHOTS") {
        args.push(dir);
    }
    node(args).await;
    srv.stop().await;

    // At scale: 5,000 services on 1,000 nodes, from one definition file.
    let zones = tempfile::tempdir().unwrap();
    let all: Vec<serde_json::Value> = (0..5000)
        .map(|i| {
            let n = i % 1000;
            serde_json::json!({
                "Node": format!("n{n}"), "Address": format!("10.1.{}.{}", n / 250, n % 250 + 1),
                "Service": {"Service": format!("s{i}"), "ID": format!("s{i}-1"), "Port": 8080, "Tags": ["v1"]},
            })
        })
        .collect();
    std::fs::write(
        zones.path().join("all.json"),
        serde_json::to_vec(&all).unwrap(),
    )
    .unwrap();
    let srv = TestServer::start(Some(zones.path())).await;
    let args = vec![
        root.join("tests/clients/ui_check.js").display().to_string(),
        modules.display().to_string(),
        format!("http://{}", srv.http),
        std::env::var("SIGNPOST_SCREENSHOTS").unwrap_or_else(|_| "-".into()),
        "scale".into(),
    ];
    node(args).await;
    srv.stop().await;

    // With a token: the UI's writes are refused until the user enters it.
    let srv = TestServer::start_with(None, |c| c.http_token = Some("s3cret".into())).await;
    let args = vec![
        root.join("tests/clients/ui_check.js").display().to_string(),
        modules.display().to_string(),
        format!("http://{}", srv.http),
        "-".into(),
        "token:s3cret".into(),
    ];
    node(args).await;
    srv.stop().await;
}
