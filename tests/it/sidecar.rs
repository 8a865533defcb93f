//! Sidecar mode: signpost following an upstream that speaks Consul's HTTP
//! API: a second signpost in standalone mode, and a small server replaying
//! responses shaped like Consul's documented examples, with X-Consul-Index
//! and real blocking.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::support::*;

async fn ask(server: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let q = query_bytes(name, rtype, Some(1232));
    Message::from_vec(
        &udp_async(server, &q, Duration::from_secs(5))
            .await
            .expect("a reply"),
    )
    .unwrap()
}

async fn sidecar(consul: &str) -> TestServer {
    let url = consul.to_string();
    TestServer::start_with(None, move |c| {
        c.consul = Some(signpost::config::ConsulConfig {
            url,
            token: None,
            ca_file: None,
            client_identity: None,
            max_connections: 8,
        });
    })
    .await
}

/// How long a change may take to reach signpost through the upstream: a
/// bound for a functional test, not a speed target (that is the sidecar
/// bench, in release). Unoptimized test builds sync 1,000 services in about
/// 5 s alone, and twice that beside the rest of the suite on two cores.
const SYNCED: Duration = Duration::from_secs(30);

#[tokio::test]
async fn follows_a_standalone_signpost() {
    let upstream = TestServer::start(Some(&shipped_zones())).await;
    let up = |p: &str| upstream.url(p);
    let srv = sidecar(&format!("http://{}", upstream.http)).await;
    eventually(SYNCED, "first sync", || async {
        http("GET", &srv.url("/ready"), None).await.status == 200
    })
    .await;
    assert_eq!(
        a_records(srv.dns, "web.service.consul.").await,
        ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
    );
    // The mirrored view equals what the upstream reports.
    for service in ["web", "db", "cache"] {
        let a = http("GET", &up(&format!("/v1/health/service/{service}")), None)
            .await
            .json();
        let b = http(
            "GET",
            &srv.url(&format!("/v1/health/service/{service}")),
            None,
        )
        .await
        .json();
        let pick = |v: &Value| -> Vec<Value> {
            v.as_array().unwrap().iter().map(|e| json!({
                "node": e["Node"]["Node"], "node_address": e["Node"]["Address"], "node_meta": e["Node"]["Meta"],
                "id": e["Service"]["ID"], "tags": e["Service"]["Tags"], "address": e["Service"]["Address"],
                "port": e["Service"]["Port"], "meta": e["Service"]["Meta"], "weights": e["Service"]["Weights"],
                "tagged": e["Service"]["TaggedAddresses"],
                "checks": e["Checks"].as_array().unwrap().iter().map(|c| json!([c["CheckID"], c["Status"]])).collect::<Vec<_>>(),
            })).collect()
        };
        assert_eq!(pick(&a), pick(&b), "{service}");
    }
    // A service added, a health flip, a service removed.
    let reg = r#"{"Name": "api", "ID": "api1", "Address": "10.7.0.1", "Port": 9000, "Check": {"CheckID": "t", "TTL": "1m", "Status": "passing"}}"#;
    http("PUT", &up("/v1/agent/service/register"), Some(reg)).await;
    eventually(SYNCED, "added", || async {
        a_records(srv.dns, "api.service.consul.").await == ["10.7.0.1"]
    })
    .await;
    http("PUT", &up("/v1/agent/check/fail/t"), None).await;
    eventually(SYNCED, "critical", || async {
        a_records(srv.dns, "api.service.consul.").await.is_empty()
    })
    .await;
    http("PUT", &up("/v1/agent/check/pass/t"), None).await;
    eventually(SYNCED, "passing", || async {
        a_records(srv.dns, "api.service.consul.").await == ["10.7.0.1"]
    })
    .await;
    http("PUT", &up("/v1/agent/service/deregister/api1"), None).await;
    eventually(SYNCED, "removed", || async {
        ask(srv.dns, "api.service.consul.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    // Consul's entries are read-only through signpost's API.
    let r = http(
        "PUT",
        &srv.url("/v1/catalog/deregister"),
        Some(r#"{"Node": "db-node-1"}"#),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    let metrics = http("GET", &srv.url("/metrics"), None).await.body;
    assert!(
        metrics.contains("signpost_consul_change_to_dns_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("signpost_consul_synced 1"), "{metrics}");
    srv.stop().await;
    upstream.stop().await;
}

/// A Consul stand-in: serves what the test puts in, blocking like Consul.
#[derive(Default)]
struct Catalog {
    index: u64,
    /// (datacenter, service) → entries.
    services: BTreeMap<(String, String), Vec<Value>>,
    /// Answer every request with this status.
    fail: Option<u16>,
    /// Query strings seen, by datacenter.
    requests: Vec<String>,
    /// Requests that sent `?index=0` (a first read should send none).
    zero_index: usize,
    /// The client ports requests came from: one per connection.
    connections: BTreeSet<u16>,
    /// The index of the last `/v1/catalog/services` read (0 for none).
    catalog_asked: u64,
}

#[derive(Clone)]
struct Fake {
    catalog: Arc<Mutex<Catalog>>,
    changed: Arc<watch::Sender<u64>>,
}

/// A health entry shaped like the sample response in Consul's API docs.
fn entry(node: &str, address: &str, id: &str, service: &str, status: &str) -> Value {
    json!({
        "Node": {
            "ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": node, "Address": address,
            "Datacenter": "dc1", "TaggedAddresses": {"lan": address, "wan": address},
            "Meta": {"instance_type": "t2.medium"}
        },
        "Service": {
            "ID": id, "Service": service, "Tags": ["primary"], "Address": address,
            "TaggedAddresses": {"lan": {"address": address, "port": 8000}, "wan": {"address": "198.18.1.2", "port": 80}},
            "Meta": null, "Port": 8000, "Weights": {"Passing": 10, "Warning": 1}, "Namespace": "default"
        },
        "Checks": [
            {"Node": node, "CheckID": format!("service:{id}"), "Name": format!("Service '{service}' check"),
             "Status": status, "Notes": "", "Output": "", "ServiceID": id, "ServiceName": service,
             "ServiceTags": ["primary"], "Namespace": "default"},
            {"Node": node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing",
             "Notes": "", "Output": "", "ServiceID": "", "ServiceName": "", "ServiceTags": [], "Namespace": "default"}
        ]
    })
}

fn params(q: &Option<String>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

impl Fake {
    async fn start(addr: SocketAddr) -> (Fake, SocketAddr, tokio::task::JoinHandle<()>) {
        let fake = Fake {
            catalog: Arc::default(),
            changed: Arc::new(watch::channel(0).0),
        };
        let app = axum::Router::new()
            .route("/v1/catalog/services", get(Self::services))
            .route("/v1/health/service/{name}", get(Self::health))
            .route("/v1/health/state/any", get(Self::checks))
            .route("/v1/internal/ui/services", get(Self::summaries))
            .route(
                "/v1/catalog/datacenters",
                get(|| async { axum::Json(json!(["dc1", "dc2"])) }),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        (fake, addr, task)
    }

    fn set(&self, f: impl FnOnce(&mut Catalog)) {
        let mut c = self.catalog.lock().unwrap();
        f(&mut c);
        let i = c.index;
        drop(c);
        self.changed.send_replace(i);
    }

    /// Holds the request while the index is not past the client's.
    async fn block(&self, peer: SocketAddr, q: &Option<String>) -> Result<(), StatusCode> {
        let p = params(q);
        let index: u64 = p.get("index").and_then(|v| v.parse().ok()).unwrap_or(0);
        let wait_ms: u64 = p
            .get("wait")
            .and_then(|w| w.trim_end_matches("ms").parse().ok())
            .unwrap_or(300_000);
        let mut rx = self.changed.subscribe();
        {
            let mut c = self.catalog.lock().unwrap();
            c.connections.insert(peer.port());
            c.requests
                .push(p.get("dc").cloned().unwrap_or_else(|| "dc1".into()));
            if p.get("index").is_some_and(|i| i == "0") {
                c.zero_index += 1;
            }
            if let Some(code) = c.fail {
                return Err(StatusCode::from_u16(code).unwrap());
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(wait_ms), rx.wait_for(|i| *i != index))
            .await;
        Ok(())
    }

    async fn services(
        State(fake): State<Fake>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        RawQuery(q): RawQuery,
    ) -> axum::response::Response {
        fake.catalog.lock().unwrap().catalog_asked = params(&q)
            .get("index")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if let Err(code) = fake.block(peer, &q).await {
            return (code, "rpc error: No cluster leader").into_response();
        }
        let c = fake.catalog.lock().unwrap();
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (dc, name) in c.services.keys() {
            if dc == "dc1" {
                out.insert(name.clone(), vec!["primary".into()]);
            }
        }
        let mut h = HeaderMap::new();
        h.insert("X-Consul-Index", c.index.into());
        (h, axum::Json(out)).into_response()
    }

    /// The local checks, each once; only those not passing under a filter
    /// (the sidecar asks for `Status != "passing"`).
    async fn checks(
        State(fake): State<Fake>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        RawQuery(q): RawQuery,
    ) -> axum::response::Response {
        if let Err(code) = fake.block(peer, &q).await {
            return (code, "rpc error").into_response();
        }
        let filtered = params(&q).contains_key("filter");
        let c = fake.catalog.lock().unwrap();
        let mut out: BTreeMap<(String, String), Value> = BTreeMap::new();
        for ((dc, _), entries) in &c.services {
            for check in entries.iter().flat_map(|e| e["Checks"].as_array().unwrap()) {
                if dc == "dc1" && !(filtered && check["Status"] == "passing") {
                    let key = (check["Node"].to_string(), check["CheckID"].to_string());
                    out.insert(key, check.clone());
                }
            }
        }
        let mut h = HeaderMap::new();
        h.insert("X-Consul-Index", c.index.into());
        (h, axum::Json(out.into_values().collect::<Vec<_>>())).into_response()
    }

    /// Consul's UI summary of the local services.
    async fn summaries(
        State(fake): State<Fake>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        RawQuery(q): RawQuery,
    ) -> axum::response::Response {
        if let Err(code) = fake.block(peer, &q).await {
            return (code, "rpc error").into_response();
        }
        let c = fake.catalog.lock().unwrap();
        let mut out = Vec::new();
        for ((dc, name), entries) in &c.services {
            if dc != "dc1" {
                continue;
            }
            let nodes: BTreeSet<&str> = entries
                .iter()
                .map(|e| e["Node"]["Node"].as_str().unwrap())
                .collect();
            let mut checks = BTreeMap::new();
            for check in entries.iter().flat_map(|e| e["Checks"].as_array().unwrap()) {
                checks.insert(
                    (check["Node"].to_string(), check["CheckID"].to_string()),
                    check["Status"].as_str().unwrap().to_string(),
                );
            }
            let count = |s: &str| checks.values().filter(|v| *v == s).count();
            out.push(json!({
                "Kind": "", "Name": name, "Datacenter": "dc1", "Tags": ["primary"],
                "Nodes": nodes, "InstanceCount": entries.len(),
                "ChecksPassing": count("passing"), "ChecksWarning": count("warning"),
                "ChecksCritical": count("critical"), "ExternalSources": [],
            }));
        }
        let mut h = HeaderMap::new();
        h.insert("X-Consul-Index", c.index.into());
        (h, axum::Json(out)).into_response()
    }

    async fn health(
        State(fake): State<Fake>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        Path(name): Path<String>,
        RawQuery(q): RawQuery,
    ) -> axum::response::Response {
        if let Err(code) = fake.block(peer, &q).await {
            return (code, "rpc error").into_response();
        }
        let dc = params(&q)
            .get("dc")
            .cloned()
            .unwrap_or_else(|| "dc1".into());
        let c = fake.catalog.lock().unwrap();
        let mut entries = c
            .services
            .get(&(dc.clone(), name))
            .cloned()
            .unwrap_or_default();
        for e in &mut entries {
            e["Node"]["Datacenter"] = json!(dc);
        }
        let mut h = HeaderMap::new();
        h.insert("X-Consul-Index", c.index.into());
        (h, axum::Json(entries)).into_response()
    }
}

#[tokio::test]
async fn follows_consul_shaped_responses_through_index_resets_and_outages() {
    // Nothing listens yet: before the first sync, SERVFAIL and not ready.
    let spare = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = spare.local_addr().unwrap();
    drop(spare);
    let srv = sidecar(&format!("http://{addr}")).await;
    let m = ask(srv.dns, "redis.service.consul.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "no false NXDOMAIN before the first sync"
    );
    assert_eq!(http("GET", &srv.url("/ready"), None).await.status, 503);

    let (fake, _, task) = Fake::start(addr).await;
    fake.set(|c| {
        c.index = 10;
        c.services.insert(
            ("dc1".into(), "redis".into()),
            vec![entry("foobar", "10.1.10.12", "redis", "redis", "passing")],
        );
        c.services.insert(
            ("dc2".into(), "redis".into()),
            vec![entry("far", "10.2.10.12", "redis", "redis", "passing")],
        );
    });
    eventually(SYNCED, "first sync", || async {
        http("GET", &srv.url("/ready"), None).await.status == 200
    })
    .await;
    assert_eq!(
        a_records(srv.dns, "redis.service.consul.").await,
        ["10.1.10.12"]
    );
    let m = ask(srv.dns, "redis.service.consul.", RecordType::SRV).await;
    assert!(
        m.answers[0].to_string().contains("SRV 1 10 8000"),
        "weights mirrored: {}",
        m.answers[0]
    );
    // First reads carried no index: `?index=0` is never sent.
    assert_eq!(fake.catalog.lock().unwrap().zero_index, 0);

    // A health flip, seen through the blocking watch.
    fake.set(|c| {
        c.index = 11;
        c.services.get_mut(&("dc1".into(), "redis".into())).unwrap()[0] =
            entry("foobar", "10.1.10.12", "redis", "redis", "critical");
    });
    eventually(SYNCED, "critical", || async {
        a_records(srv.dns, "redis.service.consul.").await.is_empty()
    })
    .await;

    // The index goes backwards (a Consul restart): signpost starts over and
    // still sees the new data.
    fake.set(|c| {
        c.index = 3;
        c.services.get_mut(&("dc1".into(), "redis".into())).unwrap()[0] =
            entry("foobar", "10.1.10.13", "redis", "redis", "passing");
        c.services.insert(
            ("dc1".into(), "web".into()),
            vec![entry("n2", "10.1.10.20", "web1", "web", "passing")],
        );
    });
    eventually(SYNCED, "after the reset", || async {
        a_records(srv.dns, "redis.service.consul.").await == ["10.1.10.13"]
    })
    .await;
    eventually(SYNCED, "web added", || async {
        a_records(srv.dns, "web.service.consul.").await == ["10.1.10.20"]
    })
    .await;

    // An instance changed in place (same node and ID, a new address): no
    // body shows which service, so the sidecar reads every one again. (Once
    // the catalog feed waits on the reset's index, so that its start-over
    // read cannot take this change in too.)
    eventually(SYNCED, "the feed waits at index 3", || async {
        fake.catalog.lock().unwrap().catalog_asked == 3
    })
    .await;
    fake.set(|c| {
        c.index = 5;
        c.services.get_mut(&("dc1".into(), "redis".into())).unwrap()[0] =
            entry("foobar", "10.1.10.15", "redis", "redis", "passing");
    });
    eventually(SYNCED, "changed in place", || async {
        a_records(srv.dns, "redis.service.consul.").await == ["10.1.10.15"]
    })
    .await;
    let metrics = http("GET", &srv.url("/metrics"), None).await.body;
    assert!(
        metrics.contains("signpost_consul_sweeps_total 1"),
        "one sweep: {}",
        metrics
            .lines()
            .filter(|l| l.contains("sweeps"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Another datacenter: watched from the first query on.
    assert_eq!(
        a_records(srv.dns, "redis.service.dc2.consul.").await,
        ["10.2.10.12"]
    );
    let m = ask(srv.dns, "redis.service.dc3.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    for _ in 0..20 {
        ask(srv.dns, "redis.service.dc3.consul.", RecordType::A).await;
    }
    let dc3 = fake
        .catalog
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|d| *d == "dc3")
        .count();
    assert_eq!(dc3, 0, "an unknown datacenter is never asked about");
    let status = http("GET", &srv.url("/v1/signpost/sync"), None)
        .await
        .json();
    assert!(
        status["remote_watches"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w == "redis.service.dc2"),
        "{status}"
    );

    // Upstream 5xx, then gone: the last view keeps serving, staleness shows.
    fake.set(|c| c.fail = Some(500));
    fake.set(|c| c.index = 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a_records(srv.dns, "redis.service.consul.").await,
        ["10.1.10.15"],
        "last known view"
    );
    let status = http("GET", &srv.url("/v1/signpost/sync"), None)
        .await
        .json();
    assert!(status["failing_for_seconds"].as_f64().is_some(), "{status}");
    assert!(status["last_error"].as_str().is_some(), "{status}");
    // Back again, with a change.
    let (fake, _, task) = Fake::start(addr).await;
    fake.set(|c| {
        c.index = 20;
        c.services.insert(
            ("dc1".into(), "redis".into()),
            vec![entry("foobar", "10.1.10.14", "redis", "redis", "passing")],
        );
    });
    eventually(SYNCED, "recovered", || async {
        a_records(srv.dns, "redis.service.consul.").await == ["10.1.10.14"]
    })
    .await;
    eventually(SYNCED, "web gone", || async {
        ask(srv.dns, "web.service.consul.", RecordType::A)
            .await
            .metadata
            .response_code
            == ResponseCode::NXDomain
    })
    .await;
    let status = http("GET", &srv.url("/v1/signpost/sync"), None)
        .await
        .json();
    assert!(status["failing_for_seconds"].is_null(), "{status}");
    srv.stop().await;
    task.abort();
}

#[tokio::test]
async fn syncs_1000_services_of_10_instances() {
    let (fake, addr, task) = Fake::start("127.0.0.1:0".parse().unwrap()).await;
    fake.set(|c| {
        c.index = 100;
        for s in 0..1000 {
            let entries = (0..10)
                .map(|i| {
                    let n = s * 10 + i;
                    entry(
                        &format!("node{n}"),
                        &format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, (n & 255).max(1)),
                        &format!("s{s}-{i}"),
                        &format!("s{s}"),
                        "passing",
                    )
                })
                .collect();
            c.services.insert(("dc1".into(), format!("s{s}")), entries);
        }
    });
    let started = Instant::now();
    let srv = sidecar(&format!("http://{addr}")).await;
    eventually(SYNCED, "synced", || async {
        http("GET", &srv.url("/ready"), None).await.status == 200
    })
    .await;
    let took = started.elapsed();
    eprintln!("sidecar: synced 1,000 services x 10 instances in {took:?}");
    let m = ask(srv.dns, "s999.service.consul.", RecordType::A).await;
    assert_eq!(m.answers.len(), 10);
    let instances = srv.signpost().registry.read(|s| s.instances().count());
    assert_eq!(instances, 10_000);
    // A health flip and a new instance, each seen through the feeds.
    fake.set(|c| {
        c.index = 101;
        let s7 = c.services.get_mut(&("dc1".into(), "s7".into())).unwrap();
        s7[0] = entry("node70", "10.0.0.70", "s7-0", "s7", "critical");
        let s8 = c.services.get_mut(&("dc1".into(), "s8".into())).unwrap();
        s8.push(entry("node-new", "10.9.9.9", "s8-new", "s8", "passing"));
    });
    eventually(SYNCED, "flip and new instance", || async {
        a_records(srv.dns, "s7.service.consul.").await.len() == 9
            && a_records(srv.dns, "s8.service.consul.").await.len() == 11
    })
    .await;
    let (connections, requests) = {
        let c = fake.catalog.lock().unwrap();
        (c.connections.len(), c.requests.len())
    };
    assert!(connections <= 8, "{connections} connections to the agent");
    assert!(
        requests < 1000 + 20,
        "each service read once, then only what changed: {requests} requests"
    );
    srv.stop().await;
    task.abort();
}

#[tokio::test]
async fn prepared_queries_fail_over_to_the_agents_other_datacenters() {
    let (fake, addr, _task) = Fake::start("127.0.0.1:0".parse().unwrap()).await;
    fake.set(|c| {
        c.index = 5;
        // Here the only instance is critical; dc2 has a passing one.
        c.services.insert(
            ("dc1".into(), "redis".into()),
            vec![entry("near", "10.1.10.12", "redis-1", "redis", "critical")],
        );
        c.services.insert(
            ("dc2".into(), "redis".into()),
            vec![entry("far", "10.2.10.12", "redis-2", "redis", "passing")],
        );
    });
    let srv = sidecar(&format!("http://{addr}")).await;
    eventually(SYNCED, "first sync", || async {
        http("GET", &srv.url("/ready"), None).await.status == 200
    })
    .await;
    let r = http(
        "POST",
        &srv.url("/v1/query"),
        Some(r#"{"Name":"redis-ha","Service":{"Service":"redis","Failover":{"Datacenters":["dc2"]}}}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http("GET", &srv.url("/v1/query/redis-ha/execute"), None).await;
    let v = r.json();
    assert_eq!(
        (v["Datacenter"].as_str(), v["Failovers"].as_u64()),
        (Some("dc2"), Some(1)),
        "{v}"
    );
    assert_eq!(v["Nodes"][0]["Service"]["ID"], "redis-2");
    eventually(SYNCED, "DNS fails over to dc2", || async {
        a_records(srv.dns, "redis-ha.query.consul.").await == ["10.2.10.12"]
    })
    .await;
    // Back here once the local instance passes.
    fake.set(|c| {
        c.index = 6;
        c.services.get_mut(&("dc1".into(), "redis".into())).unwrap()[0] =
            entry("near", "10.1.10.12", "redis-1", "redis", "passing");
    });
    eventually(SYNCED, "local again", || async {
        a_records(srv.dns, "redis-ha.query.consul.").await == ["10.1.10.12"]
    })
    .await;
    srv.stop().await;
}
