//! Every query form of the foundation, over UDP and TCP, against a server
//! on loopback.

use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

use crate::support::*;

const SERVICES: &str = r#"{"services": [
  {"id": "web-1", "name": "web", "tags": ["v1"], "address": "10.0.0.1", "port": 80},
  {"id": "web-2", "name": "web", "tags": ["v2"], "address": "10.0.0.2", "port": 80},
  {"id": "web-3", "name": "web", "tags": ["v2"], "address": "10.0.0.3", "port": 81,
   "check": {"id": "web-3-alive", "status": "critical"}},
  {"id": "six", "name": "v6only", "address": "2001:db8::1", "port": 90},
  {"id": "gone", "name": "down", "address": "10.0.0.9", "port": 1,
   "checks": [{"id": "a", "status": "passing"}, {"id": "b", "status": "critical"}]}
]}"#;

const CATALOG: &str = r#"[
  {"Node": "n1", "Address": "10.1.0.1",
   "Service": {"ID": "api-1", "Service": "api", "Tags": ["primary"], "Port": 8080}},
  {"Node": "n2", "Address": "10.1.0.2",
   "Service": {"ID": "api-2", "Service": "api", "Tags": ["replica"], "Port": 8080},
   "Checks": [{"CheckID": "n2-warn", "Name": "load", "Status": "warning"}]}
]"#;

async fn server() -> (TestServer, ZoneDir) {
    let zones = ZoneDir::new(&[("services.json", SERVICES), ("catalog.json", CATALOG)]);
    (TestServer::start(Some(zones.path())).await, zones)
}

const fn ok(
    name: &'static str,
    rtype: RecordType,
    answers: &'static str,
    additionals: &'static str,
) -> DnsCase {
    case(name, rtype, answers).additionals(additionals)
}

const fn nodata(name: &'static str, rtype: RecordType) -> DnsCase {
    case(name, rtype, "").soa_authority()
}

const fn nx(name: &'static str, rtype: RecordType) -> DnsCase {
    case(name, rtype, "")
        .soa_authority()
        .rcode(ResponseCode::NXDomain)
}

fn cases() -> Vec<DnsCase> {
    use RecordType::*;
    vec![
        ok(
            "web.service.consul.",
            A,
            "web.service.consul. 0 IN A 10.0.0.1\nweb.service.consul. 0 IN A 10.0.0.2",
            "",
        ),
        ok(
            "web.service.consul.",
            SRV,
            "web.service.consul. 0 IN SRV 1 1 80 0a000001.addr.dc1.consul.
             web.service.consul. 0 IN SRV 1 1 80 0a000002.addr.dc1.consul.",
            "0a000001.addr.dc1.consul. 0 IN A 10.0.0.1
             0a000002.addr.dc1.consul. 0 IN A 10.0.0.2",
        ),
        ok(
            "web.service.consul.",
            ANY,
            "web.service.consul. 0 IN A 10.0.0.1\nweb.service.consul. 0 IN A 10.0.0.2",
            "",
        ),
        ok(
            "v2.web.service.consul.",
            A,
            "v2.web.service.consul. 0 IN A 10.0.0.2",
            "",
        ),
        ok(
            "v1.web.service.consul.",
            A,
            "v1.web.service.consul. 0 IN A 10.0.0.1",
            "",
        ),
        ok(
            "web.service.dc1.consul.",
            A,
            "web.service.dc1.consul. 0 IN A 10.0.0.1\nweb.service.dc1.consul. 0 IN A 10.0.0.2",
            "",
        ),
        ok(
            "api.service.consul.",
            SRV,
            "api.service.consul. 0 IN SRV 1 1 8080 n1.node.dc1.consul.
             api.service.consul. 0 IN SRV 1 1 8080 n2.node.dc1.consul.",
            "n1.node.dc1.consul. 0 IN A 10.1.0.1\nn2.node.dc1.consul. 0 IN A 10.1.0.2",
        ),
        ok(
            "primary.api.service.consul.",
            SRV,
            "primary.api.service.consul. 0 IN SRV 1 1 8080 n1.node.dc1.consul.",
            "n1.node.dc1.consul. 0 IN A 10.1.0.1",
        ),
        ok(
            "v6only.service.consul.",
            AAAA,
            "v6only.service.consul. 0 IN AAAA 2001:db8::1",
            "",
        ),
        ok("n1.node.consul.", A, "n1.node.consul. 0 IN A 10.1.0.1", ""),
        ok(
            "n2.node.dc1.consul.",
            A,
            "n2.node.dc1.consul. 0 IN A 10.1.0.2",
            "",
        ),
        ok(
            "testnode.node.consul.",
            A,
            "testnode.node.consul. 0 IN A 127.0.0.1",
            "",
        ),
        ok(
            "consul.",
            NS,
            "consul. 0 IN NS testnode.node.dc1.consul.",
            "testnode.node.dc1.consul. 0 IN A 127.0.0.1",
        ),
        // Names exist, type does not: NODATA.
        nodata("web.service.consul.", AAAA),
        nodata("web.service.consul.", TXT),
        nodata("v6only.service.consul.", A),
        nodata("n1.node.consul.", AAAA),
        nodata("consul.", A),
        // Names that do not exist: NXDOMAIN.
        nx("nope.service.consul.", A),
        nx("down.service.consul.", A),
        nx("v3.web.service.consul.", A),
        nx("web.service.dc2.consul.", A),
        nx("nobody.node.consul.", A),
        nx("what.consul.", A),
        nx("a.b.web.service.consul.", A),
    ]
}

#[tokio::test]
async fn query_forms_over_udp_and_tcp() {
    let (srv, _zones) = server().await;
    for via in BOTH {
        for c in cases() {
            c.check(srv.dns, via).await;
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn soa_at_the_apex() {
    let (srv, _zones) = server().await;
    for via in BOTH {
        let m = query(srv.dns, via, "consul.", RecordType::SOA).await;
        assert_eq!(m.answers.len(), 1);
        let text = m.answers[0].to_string();
        assert!(
            text.starts_with("consul. 0 IN SOA testnode.node.dc1.consul. hostmaster.consul. "),
            "{text}"
        );
        assert!(text.ends_with(" 3600 600 86400 0"), "{text}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn critical_instances_are_never_answered() {
    let (srv, _zones) = server().await;
    for _ in 0..30 {
        let m = query(srv.dns, Via::Udp, "web.service.consul.", RecordType::SRV).await;
        assert_eq!(m.answers.len(), 2);
        for r in m.answers.iter().chain(&m.additionals) {
            let t = r.to_string();
            assert!(!t.contains("10.0.0.3") && !t.contains("0a000003"), "{t}");
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn warning_instances_are_answered_unless_only_passing() {
    let zones = ZoneDir::new(&[("catalog.json", CATALOG)]);
    let srv = TestServer::start(Some(zones.path())).await;
    let m = query(srv.dns, Via::Udp, "api.service.consul.", RecordType::A).await;
    assert_eq!(m.answers.len(), 2);
    srv.stop().await;
    let srv =
        TestServer::start_with(Some(zones.path()), |c| c.dns_config.only_passing = true).await;
    let m = query(srv.dns, Via::Udp, "api.service.consul.", RecordType::A).await;
    assert_records(&m.answers, "api.service.consul. 0 IN A 10.1.0.1");
    srv.stop().await;
}

#[tokio::test]
async fn record_order_rotates() {
    let (srv, _zones) = server().await;
    for via in BOTH {
        let mut firsts = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let m = query(srv.dns, via, "web.service.consul.", RecordType::A).await;
            firsts.insert(m.answers[0].to_string());
        }
        assert_eq!(
            firsts.len(),
            2,
            "each instance comes first sometimes over {via:?}"
        );
    }
    srv.stop().await;
}

/// Past 64 entries a set is ordered by a random affine walk rather than a
/// shuffle: every answer must still hold each instance once, and both the
/// first record and the step between records must vary.
#[tokio::test]
async fn large_sets_are_answered_whole_in_varying_orders() {
    let zones = ZoneDir::new(&[("big.json", &crate::zones::bench_catalog(1, 200))]);
    let srv = TestServer::start(Some(zones.path())).await;
    let mut firsts = std::collections::BTreeSet::new();
    let mut next: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for _ in 0..30 {
        let m = query(srv.dns, Via::Tcp, "s0.service.consul.", RecordType::A).await;
        let got: Vec<String> = m.answers.iter().map(|r| r.to_string()).collect();
        let distinct: std::collections::BTreeSet<_> = got.iter().collect();
        assert_eq!(
            (got.len(), distinct.len()),
            (200, 200),
            "each instance once"
        );
        firsts.insert(got[0].clone());
        for w in got.windows(2) {
            next.entry(w[0].clone()).or_default().insert(w[1].clone());
        }
    }
    assert!(firsts.len() > 15, "starts vary: {} of 30", firsts.len());
    // One stride would give every record one successor; 64 strides give
    // most of them a different one in most of the 30 answers.
    let successors: usize = next.values().map(|s| s.len()).sum();
    assert!(
        successors > 10 * 200,
        "strides vary: {successors} successor pairs"
    );
    srv.stop().await;
}

#[tokio::test]
async fn question_case_is_echoed_and_matching_ignores_case() {
    let (srv, _zones) = server().await;
    // Raw bytes: hickory's client may change the case of what it sends.
    let q = query_bytes("WeB.SeRvIcE.CoNsUl.", RecordType::A, None);
    let replies = [
        udp_raw(srv.dns, &q, Duration::from_secs(2)).expect("udp reply"),
        tcp_raw(srv.dns, &q).await,
    ];
    for reply in replies {
        assert_eq!(
            &reply[12..12 + 20],
            &q[12..12 + 20],
            "question echoed as asked"
        );
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.answers.len(), 2);
    }
    srv.stop().await;
}

#[tokio::test]
async fn names_outside_the_domain_are_refused() {
    let (srv, _zones) = server().await;
    for via in BOTH {
        let m = query(srv.dns, via, "example.com.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        assert!(m.answers.is_empty());
        assert!(!m.metadata.recursion_available);
    }
    srv.stop().await;
}

#[tokio::test]
async fn no_edns_means_no_opt() {
    let (srv, _zones) = server().await;
    let reply = udp_raw(
        srv.dns,
        &query_bytes("web.service.consul.", RecordType::A, None),
        Duration::from_secs(2),
    )
    .expect("reply");
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.edns.is_none());
    assert_eq!(m.answers.len(), 2);
    let reply = udp_raw(
        srv.dns,
        &query_bytes("web.service.consul.", RecordType::A, Some(4096)),
        Duration::from_secs(2),
    )
    .expect("reply");
    let m = Message::from_vec(&reply).unwrap();
    // Loopback is trusted: signpost advertises udp_payload_max_trusted.
    assert_eq!(m.edns.expect("OPT").max_payload(), 8192);
    srv.stop().await;
}

#[tokio::test]
async fn malformed_and_truncated_packets_leave_the_server_answering() {
    let (srv, _zones) = server().await;
    let good = query_bytes("web.service.consul.", RecordType::A, None);
    let wait = Duration::from_millis(300);
    // Too short for a header: dropped.
    assert!(udp_raw(srv.dns, &[0x12, 0x34, 0x01], wait).is_none());
    // A query cut inside its question: FORMERR with the same ID.
    let cut = &good[..good.len() - 3];
    let reply = udp_raw(srv.dns, cut, Duration::from_secs(2)).expect("FORMERR reply");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, u16::from_be_bytes([good[0], good[1]]));
    // A label length running past the end.
    let mut bad = good[..12].to_vec();
    bad.extend_from_slice(&[60, b'x', b'y']);
    let m = Message::from_vec(&udp_raw(srv.dns, &bad, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Random garbage, many times.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..200 {
        let len = rng.usize(0..300);
        let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        let _ = udp_raw(srv.dns, &junk, Duration::from_millis(5));
    }
    // Over TCP as well.
    let m = Message::from_vec(&tcp_raw(srv.dns, cut).await).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Still serving both transports.
    for via in BOTH {
        let m = query(srv.dns, via, "web.service.consul.", RecordType::A).await;
        assert_eq!(m.answers.len(), 2);
    }
    srv.stop().await;
}

#[tokio::test]
async fn no_question_and_two_questions_get_formerr() {
    let (srv, _zones) = server().await;
    let good = query_bytes("web.service.consul.", RecordType::A, None);
    let mut none = good[..12].to_vec();
    none[5] = 0;
    let mut two = good.clone();
    two[5] = 2;
    two.extend_from_slice(&good[12..]);
    for q in [none, two] {
        let reply = udp_raw(srv.dns, &q, Duration::from_secs(2)).expect("reply");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
    srv.stop().await;
}

/// IPv4 replies go out with Don't Fragment set; one bigger than the link
/// (a trusted client's, past 1232 bytes) is refused by the kernel and must
/// then go out fragmented, whole. Loopback in a namespace of the test's
/// own, its MTU lowered to Ethernet's 1500.
#[test]
fn a_reply_bigger_than_the_link_still_goes_out_over_udp() {
    if !have("dig") {
        return missing_tool("dig", "dnsutils", "a UDP client that offers 8192 bytes");
    }
    let Some(mut ns) = Netns::new("mtu") else {
        return;
    };
    assert!(ns
        .exec(&["ip", "link", "set", "lo", "mtu", "1500"])
        .status()
        .unwrap()
        .success());
    let zones = ZoneDir::new(&[("big.json", &crate::zones::bench_catalog(1, 200))]);
    let child = ns
        .exec(&[
            env!("CARGO_BIN_EXE_signpost"),
            "--dns",
            "127.0.0.1:53",
            "--http",
            "127.0.0.1:8500",
            "--zones",
            zones.path().to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ns.children.push(child);
    let dig = |bufsize: &str| {
        let out = ns
            .exec(&[
                "dig",
                "@127.0.0.1",
                bufsize,
                "+notcp",
                "+ignore",
                "+tries=1",
                "+time=2",
                "s0.service.consul",
                "A",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut out = dig("+bufsize=8192");
    while !out.contains("ANSWER: 200") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = dig("+bufsize=8192");
    }
    let size: usize = out
        .lines()
        .find_map(|l| l.split("MSG SIZE  rcvd: ").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        out.contains("ANSWER: 200") && size > 1500,
        "a {size}-byte reply over UDP:\n{out}"
    );
    assert!(!out.contains(" tc"), "not truncated:\n{out}");
    // A client offering the fragmentation-safe size gets a truncated
    // reply that fits, as before.
    let small = dig("+bufsize=1232");
    assert!(small.contains("flags: qr aa tc"), "{small}");
}
