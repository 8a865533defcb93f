//! Definition files: the shipped examples, the benchmark catalog, and bad
//! files that must stop startup with file, line and reason.

use hickory_proto::rr::RecordType;
use signpost::server::StartError;
use signpost::{Config, Signpost};

use crate::support::*;

#[tokio::test]
async fn every_shipped_zone_file_loads_and_answers() {
    let srv = TestServer::start(Some(&shipped_zones())).await;
    let names = |m: &hickory_proto::op::Message| lines(&m.answers);
    // web: four instances, one critical, one in warning.
    let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert_eq!(
        names(&m),
        zone(
            "web.service.consul. 0 IN A 127.0.0.11
              web.service.consul. 0 IN A 127.0.0.12
              web.service.consul. 0 IN A 127.0.0.13"
        )
    );
    let m = query(srv.dns, Via::Tcp, "web.service.consul.", RecordType::SRV).await;
    let weights: Vec<String> = lines(&m.answers);
    assert!(
        weights.iter().any(|l| l.contains("SRV 1 1 8081")),
        "warning weight: {weights:?}"
    );
    assert!(
        weights.iter().any(|l| l.contains("SRV 1 10 8080")),
        "passing weight: {weights:?}"
    );
    let m = query(
        srv.dns,
        Via::Udp,
        "primary.db.service.consul.",
        RecordType::SRV,
    )
    .await;
    assert_records(
        &m.answers,
        "primary.db.service.consul. 0 IN SRV 1 1 5432 db-node-1.node.dc1.consul.",
    );
    let m = query(
        srv.dns,
        Via::Udp,
        "replica.db.service.consul.",
        RecordType::A,
    )
    .await;
    assert_records(
        &m.answers,
        "replica.db.service.consul. 0 IN A 127.0.1.2\nreplica.db.service.consul. 0 IN A 127.0.1.33",
    );
    let m = query(srv.dns, Via::Udp, "cache.service.consul.", RecordType::AAAA).await;
    assert_records(&m.answers, "cache.service.consul. 0 IN AAAA ::1");
    srv.stop().await;
}

/// The same catalog shape `../shared/bench/gen_zone.py` writes: services ×
/// instances, each instance on its own node.
pub fn bench_catalog(services: usize, instances: usize) -> String {
    let mut regs = Vec::with_capacity(services * instances);
    for i in 0..services {
        for k in 0..instances {
            let n = i * instances + k + 1;
            let addr = format!(
                "10.{}.{}.{}",
                (n >> 16) & 255,
                (n >> 8) & 255,
                (n & 255).max(1)
            );
            regs.push(format!(
                r#"{{"Datacenter": "dc1", "Node": "n{i}-{k}", "Address": "{addr}",
                   "Service": {{"ID": "s{i}-n{i}-{k}", "Service": "s{i}", "Address": "{addr}", "Port": {}}}}}"#,
                8080 + k
            ));
        }
    }
    format!("[{}]", regs.join(",\n"))
}

#[tokio::test]
async fn the_benchmark_catalog_of_5000_instances_loads() {
    let zones = ZoneDir::new(&[("catalog.json", &bench_catalog(1000, 5))]);
    let srv = TestServer::start(Some(zones.path())).await;
    let m = query(srv.dns, Via::Udp, "s999.service.consul.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 5);
    assert_eq!(m.additionals.len(), 5);
    let m = query(
        srv.dns,
        Via::Udp,
        "_s5._tcp.service.consul.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(m.answers.len(), 5);
    let m = query(srv.dns, Via::Udp, "missing1.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    srv.stop().await;
}

#[tokio::test]
async fn gen_zone_output_loads_when_the_shared_harness_is_present() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/gen_zone.py");
    if !script.exists() {
        eprintln!("skipped: {} not found", script.display());
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(&script)
        .args(["--queries", "10", "--outdir"])
        .arg(out.path())
        .stdout(std::process::Stdio::null())
        .status();
    let Ok(status) = status else {
        eprintln!("skipped: python3 not available");
        return;
    };
    assert!(status.success());
    let srv = TestServer::start(Some(&out.path().join("defs"))).await;
    let m = query(srv.dns, Via::Tcp, "s0.service.consul.", RecordType::A).await;
    assert_eq!(m.answers.len(), 5);
    srv.stop().await;
}

async fn start_error(files: &[(&str, &str)]) -> String {
    let zones = ZoneDir::new(files);
    let mut config = Config::ephemeral();
    config.zones = Some(zones.path().to_path_buf());
    match Signpost::start(config).await {
        Ok(_) => panic!("started with bad zones {files:?}"),
        Err(e @ StartError::Zones(_)) => e.to_string(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn bad_definition_files_stop_startup_with_file_line_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "syntax.json",
            "{\n  \"service\": {\"name\": \"web\",,}\n}",
            "syntax.json:2:",
        ),
        (
            "port.json",
            "{\"service\": {\n\"name\": \"web\",\n\"port\": 70000\n}}",
            "port 70000 is out of range",
        ),
        (
            "noname.json",
            "{\"service\": {\"port\": 80}}",
            "missing Name",
        ),
        (
            "status.json",
            "{\"service\": {\"name\": \"a\", \"check\": {\"status\": \"sad\"}}}",
            "status \"sad\"",
        ),
        (
            "ttl.json",
            "{\"service\": {\"name\": \"a\",\n \"check\": {\"ttl\": \"10 parsecs\"}}}",
            "ttl.json:2:",
        ),
        (
            "addr.json",
            "{\"service\": {\"name\": \"a\", \"address\": \"not an address!\"}}",
            "neither an IP",
        ),
        ("empty.json", "{}", "no \"service\""),
        ("catalog.json", "[{\"Node\": \"n1\"}]", "missing Address"),
        ("scalar.json", "42", "expected a JSON object"),
    ];
    for (file, text, want) in cases {
        let err = start_error(&[(file, text)]).await;
        assert!(err.contains(file), "{err} names the file");
        assert!(err.contains(want), "{err} should contain {want:?}");
        assert!(
            err.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<usize>().is_ok()),
            "{err} has a line number"
        );
    }
    let err = start_error(&[
        ("a.json", r#"{"service": {"name": "web", "id": "w1"}}"#),
        ("b.json", r#"{"service": {"name": "web", "id": "w1"}}"#),
    ])
    .await;
    assert!(
        err.contains("b.json") && err.contains("defined twice"),
        "{err}"
    );
}
