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

/// A catalog of services × instances, each instance on its own node (the
/// load benchmark's shape).
pub(crate) fn bench_catalog(services: usize, instances: usize) -> String {
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

/// The load benchmark's own generator (`benches/load/bench.py`) writes one
/// catalog in every peer server's shape: signpost, loading its catalog
/// registrations, answers each service's A records exactly as the zone file
/// that NSD and Knot serve has them, so the side-by-side run compares like
/// with like.
#[tokio::test]
async fn the_load_benchmarks_catalog_answers_as_its_zone_file() {
    let out = tempfile::tempdir().unwrap();
    let bench = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/load");
    let script = format!(
        "import sys; from pathlib import Path; sys.path.insert(0, {:?}); import bench; \
         bench.generate(Path({:?}), 20, 5, 10)",
        bench.display().to_string(),
        out.path().display().to_string()
    );
    let status = match std::process::Command::new("python3")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) => status,
        Err(e) => return crate::support::missing_tool("python3", "python3", &e.to_string()),
    };
    assert!(status.success(), "bench.generate failed");
    let zone = std::fs::read_to_string(out.path().join("consul.zone")).unwrap();
    let srv = TestServer::start(Some(&out.path().join("defs"))).await;
    for s in 0..20 {
        let name = format!("s{s}.service.consul.");
        let mut want: Vec<String> = zone
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("s{s}.service IN A ")))
            .map(str::to_string)
            .collect();
        want.sort();
        assert_eq!(want.len(), 5, "{name} in the zone file");
        assert_eq!(a_records(srv.dns, &name).await, want, "{name}");
    }
    let m = query(
        srv.dns,
        Via::Tcp,
        "_s3._tcp.service.consul.",
        RecordType::SRV,
    )
    .await;
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
