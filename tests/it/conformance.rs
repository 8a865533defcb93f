//! The DNS conformance suite: every query form and protocol rule, as a
//! table of (name, type, transport, EDNS size) → expected sections written
//! as zone-file text, run against a running server over UDP and TCP.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::*;

const SERVICES: &str = r#"{"services": [
  {"id": "web-1", "name": "web", "tags": ["v1"], "address": "10.0.0.1", "port": 80},
  {"id": "web-2", "name": "web", "tags": ["v2"], "address": "10.0.0.2", "port": 80},
  {"id": "ext-1", "name": "ext", "address": "db.example.com", "port": 5432},
  {"id": "alias-1", "name": "alias", "address": "web.service.consul", "port": 80},
  {"id": "six", "name": "six", "address": "2001:db8::1", "port": 90}
]}"#;

fn catalog() -> String {
    let mut regs = vec![
        r#"{"Node": "n1", "Address": "10.1.0.1", "NodeMeta": {"rack": "r1", "a=b": "x"},
            "Service": {"ID": "api-1", "Service": "api", "Port": 8080}}"#
            .to_string(),
        r#"{"Node": "n2", "Address": "10.1.0.2",
            "Service": {"ID": "api-2", "Service": "api", "Address": "10.1.0.22", "Port": 8081}}"#
            .to_string(),
    ];
    for i in 0..40 {
        let tags = if i < 10 { r#"["ten"]"# } else { "[]" };
        regs.push(format!(
            r#"{{"Node": "m{i}", "Address": "10.2.0.{}", "Service": {{"ID": "many-{i}", "Service": "many", "Tags": {tags}, "Port": 7000}}}}"#,
            i + 1
        ));
    }
    format!("[{}]", regs.join(","))
}

const CONFIG: &str = r#"
alt_domain = "alt.example"
[dns_config]
service_ttl = { "*" = 5, "web" = 30, "ap*" = 15 }
node_ttl = 7
[dns_config.soa]
min_ttl = 3
"#;

async fn server() -> (TestServer, ZoneDir) {
    server_with(|_| {}).await
}

async fn server_with(tweak: impl FnOnce(&mut signpost::Config)) -> (TestServer, ZoneDir) {
    let zones = ZoneDir::new(&[
        ("services.json", SERVICES),
        ("catalog.json", &catalog()),
        ("signpost.toml", CONFIG),
    ]);
    let flags = signpost::config::Flags {
        config: Some(zones.path().join("signpost.toml")),
        ..Default::default()
    };
    let file_config = signpost::Config::load(&flags).expect("test config loads");
    let srv = TestServer::start_with(Some(zones.path()), |c| {
        c.alt_domain = file_config.alt_domain.clone();
        c.dns_config = file_config.dns_config.clone();
        tweak(c);
    })
    .await;
    (srv, zones)
}

fn table() -> Vec<DnsCase> {
    use RecordType::*;
    vec![
        // Service lookups, with the per-service TTL map (web 30, ap* 15).
        case("web.service.consul.", A, "web.service.consul. 30 IN A 10.0.0.1\nweb.service.consul. 30 IN A 10.0.0.2"),
        case("v1.web.service.consul.", A, "v1.web.service.consul. 30 IN A 10.0.0.1"),
        case("web.service.dc1.consul.", A, "web.service.dc1.consul. 30 IN A 10.0.0.1\nweb.service.dc1.consul. 30 IN A 10.0.0.2"),
        case("web.service.dc1.dc.consul.", A, "web.service.dc1.dc.consul. 30 IN A 10.0.0.1\nweb.service.dc1.dc.consul. 30 IN A 10.0.0.2"),
        case("_web._v2.service.consul.", A, "_web._v2.service.consul. 30 IN A 10.0.0.2"),
        case("six.service.consul.", AAAA, "six.service.consul. 5 IN AAAA 2001:db8::1"),
        // SRV: node-name target with glue and node meta TXT (RFC 1464), or
        // an .addr target when the service address differs from the node's.
        case(
            "_api._tcp.service.consul.",
            SRV,
            "_api._tcp.service.consul. 15 IN SRV 1 1 8080 n1.node.dc1.consul.
             _api._tcp.service.consul. 15 IN SRV 1 1 8081 0a010016.addr.dc1.consul.",
        )
        .additionals(
            "n1.node.dc1.consul. 15 IN A 10.1.0.1
             n1.node.dc1.consul. 7 IN TXT \"a`=b=x\"
             n1.node.dc1.consul. 7 IN TXT \"rack=r1\"
             0a010016.addr.dc1.consul. 15 IN A 10.1.0.22",
        ),
        // The alternative domain: answers stay in the domain asked.
        case("web.service.alt.example.", A, "web.service.alt.example. 30 IN A 10.0.0.1\nweb.service.alt.example. 30 IN A 10.0.0.2"),
        case(
            "v1.web.service.alt.example.",
            SRV,
            "v1.web.service.alt.example. 30 IN SRV 1 1 80 0a000001.addr.dc1.alt.example.",
        )
        .additionals("0a000001.addr.dc1.alt.example. 30 IN A 10.0.0.1"),
        case("alt.example.", NS, "alt.example. 7 IN NS testnode.node.dc1.alt.example.")
            .additionals("testnode.node.dc1.alt.example. 7 IN A 127.0.0.1"),
        // Host-name addresses: a CNAME, plus its addresses when the target
        // is in the domain.
        case("ext.service.consul.", A, "ext.service.consul. 5 IN CNAME db.example.com."),
        case(
            "alias.service.consul.",
            A,
            "alias.service.consul. 5 IN CNAME web.service.consul.
             web.service.consul. 30 IN A 10.0.0.1
             web.service.consul. 30 IN A 10.0.0.2",
        ),
        case("ext.service.consul.", SRV, "ext.service.consul. 5 IN SRV 1 1 5432 db.example.com."),
        // Nodes: address, meta as TXT (answers for TXT, additional for A).
        case("n1.node.consul.", A, "n1.node.consul. 7 IN A 10.1.0.1")
            .additionals("n1.node.consul. 7 IN TXT \"a`=b=x\"\nn1.node.consul. 7 IN TXT \"rack=r1\""),
        case("n1.node.consul.", TXT, "n1.node.consul. 7 IN TXT \"a`=b=x\"\nn1.node.consul. 7 IN TXT \"rack=r1\""),
        case("n2.node.dc1.consul.", A, "n2.node.dc1.consul. 7 IN A 10.1.0.2"),
        // .addr names.
        case("0a000001.addr.consul.", A, "0a000001.addr.consul. 5 IN A 10.0.0.1"),
        case("0A000001.addr.dc1.consul.", A, "0A000001.addr.dc1.consul. 5 IN A 10.0.0.1"),
        case("20010db8000000000000000000000001.addr.consul.", AAAA, "20010db8000000000000000000000001.addr.consul. 5 IN AAAA 2001:db8::1"),
        case("0a000001.addr.consul.", AAAA, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("0a0001.addr.consul.", A, "").rcode(ResponseCode::NXDomain).authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("xyzxyzxy.addr.consul.", A, "").rcode(ResponseCode::NXDomain).authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        // PTR for registered node and service addresses.
        case("1.0.1.10.in-addr.arpa.", PTR, "1.0.1.10.in-addr.arpa. 7 IN PTR n1.node.dc1.consul."),
        case("1.0.0.10.in-addr.arpa.", PTR, "1.0.0.10.in-addr.arpa. 7 IN PTR web.service.dc1.consul."),
        case(
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
            PTR,
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 7 IN PTR six.service.dc1.consul.",
        ),
        case("9.9.9.9.in-addr.arpa.", PTR, "").rcode(ResponseCode::Refused),
        // Apex.
        case("consul.", SOA, "consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("consul.", NS, "consul. 7 IN NS testnode.node.dc1.consul.")
            .additionals("testnode.node.dc1.consul. 7 IN A 127.0.0.1"),
        // Negative answers: SOA of the domain asked, TTL = SOA minimum.
        case("nope.service.consul.", A, "").rcode(ResponseCode::NXDomain)
            .authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("nope.service.alt.example.", A, "").rcode(ResponseCode::NXDomain)
            .authority("alt.example. 3 IN SOA testnode.node.dc1.alt.example. hostmaster.alt.example. 1 3600 600 86400 3"),
        case("web.service.consul.", MX, "")
            .authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("web.service.dc2.consul.", A, "").rcode(ResponseCode::NXDomain)
            .authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("example.org.", A, "").rcode(ResponseCode::Refused),
        // Empty non-terminals (RFC 8020): names with names below them are
        // NODATA, never NXDOMAIN, in both domains and every dc form.
        case("service.consul.", A, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("service.dc1.consul.", A, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("_tcp.service.consul.", SRV, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("_udp.service.dc1.consul.", SRV, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("node.consul.", A, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("addr.dc1.consul.", A, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("dc1.consul.", A, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("service.alt.example.", A, "").authority("alt.example. 3 IN SOA testnode.node.dc1.alt.example. hostmaster.alt.example. 1 3600 600 86400 3"),
        case("_v1.service.consul.", SRV, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("_ten.service.dc1.consul.", SRV, "").authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("_nosuchtag.service.consul.", SRV, "").rcode(ResponseCode::NXDomain)
            .authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        case("dc2.consul.", A, "").rcode(ResponseCode::NXDomain)
            .authority("consul. 3 IN SOA testnode.node.dc1.consul. hostmaster.consul. 1 3600 600 86400 3"),
        // Zone transfers are refused.
        case("consul.", AXFR, "").rcode(ResponseCode::Refused),
        case("consul.", IXFR, "").rcode(ResponseCode::Refused),
    ]
}

#[tokio::test]
async fn conformance_table_over_udp_and_tcp() {
    let (srv, _zones) = server().await;
    let mut ran = 0;
    for c in table() {
        for via in c.transports() {
            c.check(srv.dns, via).await;
            ran += 1;
        }
    }
    eprintln!("conformance: {ran} exchanges");
    srv.stop().await;
}

#[tokio::test]
async fn udp_size_budget_tc_and_opt() {
    // Trusted clients (loopback here) get what they offer, up to 8192.
    let (srv, _zones) = server().await;
    let (m, size) = ask(
        srv.dns,
        Via::Udp,
        "many.service.consul.",
        RecordType::SRV,
        Some(8192),
    )
    .await;
    assert_eq!((m.answers.len(), m.metadata.truncation), (40, false));
    assert!(size > 1232 && size <= 8192, "{size}");
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(8192));
    let (_, size) = ask(
        srv.dns,
        Via::Udp,
        "many.service.consul.",
        RecordType::SRV,
        Some(65000),
    )
    .await;
    assert!(size <= 8192);
    srv.stop().await;
    // Others keep the fragmentation-safe cap.
    let (srv, _zones) =
        server_with(|c| c.recursors.allow = vec!["192.0.2.0/24".parse().unwrap()]).await;
    // 40 SRV records do not fit in 1232 bytes: TC, OPT kept, within budget,
    // even when the client offers more (the cap is 1232).
    for offered in [1232u16, 4096, 65000] {
        let (m, size) = ask(
            srv.dns,
            Via::Udp,
            "many.service.consul.",
            RecordType::SRV,
            Some(offered),
        )
        .await;
        assert!(m.metadata.truncation, "TC set when answers are dropped");
        assert!(size <= 1232, "{size} bytes for an offer of {offered}");
        assert_eq!(
            m.edns.as_ref().map(|e| e.max_payload()),
            Some(1232),
            "OPT in a truncated reply"
        );
        assert!(!m.answers.is_empty() && m.answers.len() < 40);
    }
    // A small offer is raised to 512, never below.
    let (m, size) = ask(
        srv.dns,
        Via::Udp,
        "many.service.consul.",
        RecordType::SRV,
        Some(100),
    )
    .await;
    assert!(size <= 512 && m.metadata.truncation);
    // All ten answers fit in 512 bytes but not all their glue: no TC.
    let (m, size) = ask(
        srv.dns,
        Via::Udp,
        "ten.many.service.consul.",
        RecordType::SRV,
        Some(512),
    )
    .await;
    assert_eq!(m.answers.len(), 10);
    assert!(
        m.additionals.len() < 10,
        "some glue dropped: {}",
        m.additionals.len()
    );
    assert!(!m.metadata.truncation, "dropping glue alone sets no TC");
    assert!(size <= 512);
    // TCP carries the full set.
    let (m, _) = ask(
        srv.dns,
        Via::Tcp,
        "many.service.consul.",
        RecordType::SRV,
        Some(1232),
    )
    .await;
    assert_eq!((m.answers.len(), m.additionals.len()), (40, 40));
    assert!(!m.metadata.truncation);
    srv.stop().await;
}

#[tokio::test]
async fn answer_limits() {
    let (srv, _zones) = server().await;
    // Without EDNS over UDP, Consul's udp_answer_limit of 3 applies, with no TC.
    let (m, _) = ask(
        srv.dns,
        Via::Udp,
        "many.service.consul.",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(m.answers.len(), 3);
    assert!(!m.metadata.truncation && m.edns.is_none());
    let (m, _) = ask(
        srv.dns,
        Via::Udp,
        "many.service.consul.",
        RecordType::A,
        Some(4096),
    )
    .await;
    assert!(m.answers.len() > 3);
    let (m, _) = ask(
        srv.dns,
        Via::Tcp,
        "many.service.consul.",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(m.answers.len(), 40);
    srv.stop().await;

    let zones = ZoneDir::new(&[("catalog.json", &catalog())]);
    let srv = TestServer::start_with(Some(zones.path()), |c| c.dns_config.a_record_limit = 2).await;
    for via in BOTH {
        let (m, _) = ask(
            srv.dns,
            via,
            "many.service.consul.",
            RecordType::A,
            Some(1232),
        )
        .await;
        assert_eq!(m.answers.len(), 2, "{via:?}");
        assert!(!m.metadata.truncation);
        let (m, _) = ask(
            srv.dns,
            via,
            "many.service.consul.",
            RecordType::SRV,
            Some(65000),
        )
        .await;
        assert!(m.answers.len() > 2, "a_record_limit leaves SRV alone");
    }
    srv.stop().await;
}

#[tokio::test]
async fn five_thousand_instances_answer_over_tcp() {
    let zones = ZoneDir::new(&[("big.json", &crate::zones::bench_catalog(1, 5000))]);
    let srv = TestServer::start(Some(zones.path())).await;
    for rtype in [RecordType::A, RecordType::SRV] {
        let (m, size) = ask(srv.dns, Via::Tcp, "s0.service.consul.", rtype, None).await;
        assert!(size <= 65535);
        assert!(
            m.answers.len() > 1000,
            "{rtype}: {} answers",
            m.answers.len()
        );
        let (udp, usize) = ask(srv.dns, Via::Udp, "s0.service.consul.", rtype, Some(1232)).await;
        assert!(udp.metadata.truncation && usize <= 1232);
    }
    srv.stop().await;
}

#[tokio::test]
async fn response_codes() {
    let (srv, _zones) = server().await;
    // EDNS version 1: BADVERS, with an OPT.
    let mut q = query_bytes("web.service.consul.", RecordType::A, Some(1232));
    let opt_ttl = q.len() - 6;
    q[opt_ttl + 1] = 1;
    let m = Message::from_vec(&udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap()).unwrap();
    // 16 is BADVERS for EDNS (hickory names the shared code BADSIG).
    assert_eq!(u16::from(m.metadata.response_code), 16);
    assert!(m.edns.is_some());
    // Opcodes other than QUERY: NOTIMP, over both transports.
    let mut q = query_bytes("web.service.consul.", RecordType::A, None);
    q[2] = (q[2] & 0x87) | (4 << 3); // NOTIFY
    let m = Message::from_vec(&udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    let m = Message::from_vec(&tcp_raw(srv.dns, &q).await).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    // CHAOS: id.server and hostname.bind say which server answered;
    // version.bind stays refused.
    for (name, rcode) in [
        ("version.bind.", ResponseCode::Refused),
        ("id.server.", ResponseCode::NoError),
        ("hostname.bind.", ResponseCode::NoError),
    ] {
        let mut q = query_bytes(name, RecordType::TXT, None);
        let class_at = q.len() - 2;
        q[class_at + 1] = 3;
        for via in BOTH {
            let reply = match via {
                Via::Udp => udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap(),
                Via::Tcp => tcp_raw(srv.dns, &q).await,
            };
            let m = Message::from_vec(&reply).unwrap();
            assert_eq!(m.metadata.response_code, rcode, "{name} {via:?}");
            if rcode == ResponseCode::NoError {
                assert_eq!(lines(&m.answers), [format!("{name} 0 CH TXT testnode")]);
            }
        }
    }
    // EDNS: the DO bit is copied; NSID is answered with the server ID.
    let mut q = query_bytes("web.service.consul.", RecordType::A, Some(1232));
    let n = q.len();
    q[n - 4] = 0x80; // DO, in the OPT TTL
    q[n - 1] = 4; // RDLENGTH: one empty NSID option
    q.extend_from_slice(&[0, 3, 0, 0]);
    for via in BOTH {
        let reply = match via {
            Via::Udp => udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap(),
            Via::Tcp => tcp_raw(srv.dns, &q).await,
        };
        let m = Message::from_vec(&reply).unwrap();
        let edns = m.edns.as_ref().expect("OPT");
        assert!(edns.flags().dnssec_ok, "DO copied over {via:?}");
        let nsid = edns
            .options()
            .get(hickory_proto::rr::rdata::opt::EdnsCode::NSID);
        let text = format!("{nsid:?}");
        assert!(
            text.contains("116, 101, 115, 116, 110, 111, 100, 101") || text.contains("testnode"),
            "{text}"
        );
        assert_eq!(m.answers.len(), 2);
    }
    // COOKIE options of a length RFC 7873 forbids: FORMERR.
    for len in [0u8, 7, 9, 41] {
        let mut q = query_bytes("web.service.consul.", RecordType::A, Some(1232));
        let n = q.len();
        q[n - 1] = 4 + len;
        q.extend_from_slice(&[0, 10, 0, len]);
        q.extend(std::iter::repeat_n(7u8, len as usize));
        let m = Message::from_vec(&udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap()).unwrap();
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::FormErr,
            "cookie of {len}"
        );
    }
    let mut q = query_bytes("web.service.consul.", RecordType::A, Some(1232));
    let n = q.len();
    q[n - 1] = 12;
    q.extend_from_slice(&[0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]);
    let m = Message::from_vec(&udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "a client cookie"
    );
    srv.stop().await;
}

/// Sends `count` queries over UDP and counts which address comes first.
fn first_answers(
    srv: &TestServer,
    name: &str,
    rtype: RecordType,
    count: usize,
) -> std::collections::BTreeMap<String, usize> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let q = query_bytes(name, rtype, Some(1232));
    let mut buf = vec![0u8; 4096];
    let mut counts = std::collections::BTreeMap::new();
    for _ in 0..count {
        sock.send_to(&q, srv.dns).unwrap();
        let (n, _) = sock.recv_from(&mut buf).unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        let first = match &m.answers[0].data {
            hickory_proto::rr::RData::A(a) => a.to_string(),
            hickory_proto::rr::RData::SRV(s) => s.port.to_string(),
            other => panic!("unexpected {other:?}"),
        };
        *counts.entry(first).or_default() += 1;
    }
    counts
}

const WEIGHTED: &str = r#"{"services": [
  {"id": "w1", "name": "w", "address": "10.5.0.1", "port": 1, "weights": {"passing": 1}},
  {"id": "w2", "name": "w", "address": "10.5.0.2", "port": 2, "weights": {"passing": 2}},
  {"id": "w3", "name": "w", "address": "10.5.0.3", "port": 3, "weights": {"passing": 7}}
]}"#;

#[tokio::test]
async fn weighted_order_follows_weight_shares() {
    let zones = ZoneDir::new(&[("w.json", WEIGHTED)]);
    let srv = TestServer::start_with(Some(zones.path()), |c| {
        c.dns_config.load_balancing = signpost::config::Balance::Weighted
    })
    .await;
    let n = 10_000;
    let shares = [
        ("10.5.0.1", "1", 0.1),
        ("10.5.0.2", "2", 0.2),
        ("10.5.0.3", "3", 0.7),
    ];
    let a = first_answers(&srv, "w.service.consul.", RecordType::A, n);
    let srv_first = first_answers(&srv, "w.service.consul.", RecordType::SRV, n);
    for (addr, port, share) in shares {
        let fa = a[addr] as f64 / n as f64;
        let fs = srv_first[port] as f64 / n as f64;
        eprintln!("weight share {share:.2}: first in A {fa:.4}, first in SRV {fs:.4}");
        assert!(
            (fa - share).abs() < 0.02,
            "A: {addr} first {fa} vs share {share}"
        );
        assert!(
            (fs - share).abs() < 0.02,
            "SRV: port {port} first {fs} vs share {share}"
        );
    }
    srv.stop().await;
}

#[tokio::test]
async fn round_robin_cycles_and_srv_stays_weighted() {
    let zones = ZoneDir::new(&[("w.json", WEIGHTED)]);
    let srv = TestServer::start_with(Some(zones.path()), |c| {
        c.dns_config.load_balancing = signpost::config::Balance::RoundRobin
    })
    .await;
    let firsts: Vec<String> = (0..6)
        .map(|_| {
            first_answers(&srv, "w.service.consul.", RecordType::A, 1)
                .into_keys()
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(firsts[0..3], firsts[3..6], "a cycle of three: {firsts:?}");
    let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
    assert_eq!(distinct.len(), 3, "{firsts:?}");
    // SRV order is an RFC 2782 weighted draw in every mode.
    let s = first_answers(&srv, "w.service.consul.", RecordType::SRV, 2000);
    assert!(
        s["3"] > 1200,
        "weight 7 of 10 comes first most often: {s:?}"
    );
    srv.stop().await;
}

// dig blocks its thread; TCP needs the runtime to keep serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_agrees() {
    if std::process::Command::new("dig")
        .arg("-v")
        .output()
        .is_err()
    {
        return missing_tool("dig", "dnsutils", "dig's view of the answers");
    }
    let (srv, _zones) = server().await;
    let port = srv.dns.port().to_string();
    let dig = |args: &[&str]| {
        let out = std::process::Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=1"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let sorted = |s: String| {
        let mut v: Vec<String> = s.lines().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(
        sorted(dig(&["+short", "web.service.alt.example", "A"])),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        dig(&["+short", "-x", "10.1.0.1"]).trim(),
        "n1.node.dc1.consul."
    );
    assert_eq!(
        sorted(dig(&["+short", "n1.node.consul", "TXT"])),
        ["\"a`=b=x\"", "\"rack=r1\""]
    );
    // dig retries over TCP on TC and then has all 40.
    let out = dig(&["many.service.consul", "SRV"]);
    assert!(out.contains("ANSWER: 40"), "{out}");
    let out = dig(&["+notcp", "+ignore", "many.service.consul", "SRV"]);
    assert!(out.contains(" tc "), "{out}");
    srv.stop().await;
}

/// A query with an EDNS COOKIE option: the client cookie, then a server
/// cookie when given.
fn with_cookie(name: &str, rtype: RecordType, client: &[u8; 8], server: &[u8]) -> Vec<u8> {
    let mut q = query_bytes(name, rtype, Some(4096));
    let n = q.len();
    let len = 8 + server.len();
    q[n - 1] = (4 + len) as u8;
    q.extend_from_slice(&[0, 10, 0, len as u8]);
    q.extend_from_slice(client);
    q.extend_from_slice(server);
    q
}

/// The COOKIE option's bytes in a reply.
fn reply_cookie(m: &Message) -> Vec<u8> {
    let edns = m.edns.as_ref().expect("OPT");
    let opt = edns
        .options()
        .get(hickory_proto::rr::rdata::opt::EdnsCode::Cookie)
        .expect("a COOKIE option in the reply");
    let mut buf = Vec::new();
    let mut enc = hickory_proto::serialize::binary::BinEncoder::new(&mut buf);
    hickory_proto::serialize::binary::BinEncodable::emit(opt, &mut enc).unwrap();
    buf
}

#[tokio::test]
async fn cookies_and_rate_limiting_for_untrusted_clients() {
    // Loopback is not trusted here: this client is "on the internet".
    let (srv, _zones) =
        server_with(|c| c.recursors.allow = vec!["192.0.2.0/24".parse().unwrap()]).await;
    let client = [1, 2, 3, 4, 5, 6, 7, 8];
    // No valid server cookie: at most 512 bytes, and a server cookie to
    // come back with.
    let q = with_cookie("many.service.consul.", RecordType::SRV, &client, &[]);
    let reply = udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap();
    assert!(reply.len() <= 512, "{} bytes without a cookie", reply.len());
    let m = Message::from_vec(&reply).unwrap();
    assert!(m.metadata.truncation);
    let cookie = reply_cookie(&m);
    assert_eq!(
        cookie.len(),
        24,
        "client cookie and a 16-byte server cookie"
    );
    assert_eq!(&cookie[..8], &client);
    // With it: proven, the untrusted cap (1232) applies, not 512.
    let q = with_cookie(
        "many.service.consul.",
        RecordType::SRV,
        &client,
        &cookie[8..],
    );
    let reply = udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap();
    assert!(
        reply.len() > 512 && reply.len() <= 1232,
        "{} bytes",
        reply.len()
    );
    // A server cookie that is not ours: BADCOOKIE (23) and a fresh one.
    let q = with_cookie("web.service.consul.", RecordType::A, &client, &[9; 16]);
    let m = Message::from_vec(&udp_raw(srv.dns, &q, Duration::from_secs(2)).unwrap()).unwrap();
    assert_eq!(u16::from(m.metadata.response_code), 23);
    assert_eq!(reply_cookie(&m).len(), 24);

    // A flood without cookies: rate limited, with slip; a proven client
    // and TCP are not.
    let flood = |q: Vec<u8>| {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut sent = 0usize;
        let (mut full, mut slipped, mut bytes) = (0, 0, 0usize);
        let mut buf = [0u8; 4096];
        // Bursts of 20, each read before the next: the client's own
        // receive buffer must not be what drops replies.
        for burst in 0..10u16 {
            for i in 0..20u16 {
                let mut q = q.clone();
                q[..2].copy_from_slice(&(burst * 20 + i).to_be_bytes());
                sent += sock.send_to(&q, srv.dns).unwrap();
            }
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                bytes += n;
                let m = Message::from_vec(&buf[..n]).unwrap();
                if m.answers.is_empty() && m.metadata.truncation {
                    slipped += 1;
                } else {
                    full += 1;
                }
            }
        }
        (full, slipped, bytes as f64 / sent as f64)
    };
    let (full, slipped, amplification) = flood(query_bytes(
        "many.service.consul.",
        RecordType::SRV,
        Some(4096),
    ));
    // 20 a second, and the burst took about a second: at most ~40.
    assert!(full <= 45, "{full} full answers in a flood of 200");
    assert!(slipped >= 50, "{slipped} slipped");
    let (proven, _, proven_amplification) = flood(with_cookie(
        "many.service.consul.",
        RecordType::SRV,
        &client,
        &cookie[8..],
    ));
    assert_eq!(proven, 200, "a proven client is not limited");
    let metrics = http("GET", &srv.url("/metrics"), None).await.body;
    assert!(
        metrics.contains("signpost_dns_rrl_dropped_total"),
        "{metrics}"
    );
    eprintln!(
        "amplification (bytes out / bytes in) of a 200-query SRV flood: {amplification:.2} unproven, {proven_amplification:.2} with a valid cookie"
    );
    let m = Message::from_vec(
        &tcp_raw(
            srv.dns,
            &query_bytes("many.service.consul.", RecordType::SRV, None),
        )
        .await,
    )
    .unwrap();
    assert_eq!(m.answers.len(), 40, "TCP is not limited");
    srv.stop().await;
}

/// SIGHUP's reload applies the cookie secret and the rate limit, as it
/// applies the rest of the DNS settings: a rotated secret (the old one as
/// `cookie_secret_previous`) still accepts the clients' cookies, a new one
/// without it does not, and a rate limit turned off lets a flood through.
/// Unchanged settings keep their state.
#[tokio::test]
async fn a_reload_applies_cookie_secrets_and_the_rate_limit() {
    let (a, b, c) = ([0xAA; 16], [0xBB; 16], [0xCC; 16]);
    let untrusted =
        |c: &mut signpost::Config| c.recursors.allow = vec!["192.0.2.0/24".parse().unwrap()];
    let (mut srv, zones) = server_with(|cfg| {
        untrusted(cfg);
        cfg.dns_config.cookie_secret = Some(a);
    })
    .await;
    let base = srv.signpost().config.clone();
    let reload = |srv: &mut TestServer, f: &dyn Fn(&mut signpost::Config)| {
        let mut cfg = base.clone();
        f(&mut cfg);
        srv.signpost.as_mut().unwrap().reload(cfg).expect("reload");
    };
    let client = [1, 2, 3, 4, 5, 6, 7, 8];
    let ask = |dns: std::net::SocketAddr, server: &[u8]| {
        let q = with_cookie("web.service.consul.", RecordType::A, &client, server);
        Message::from_vec(&udp_raw(dns, &q, Duration::from_secs(2)).unwrap()).unwrap()
    };
    let cookie = reply_cookie(&ask(srv.dns, &[]));
    let rcode = |m: &Message| u16::from(m.metadata.response_code);
    assert_eq!(
        rcode(&ask(srv.dns, &cookie[8..])),
        0,
        "valid under the first secret"
    );
    reload(&mut srv, &|cfg| {
        cfg.dns_config.cookie_secret = Some(b);
        cfg.dns_config.cookie_secret_previous = Some(a);
    });
    assert_eq!(
        rcode(&ask(srv.dns, &cookie[8..])),
        0,
        "the previous secret still accepted"
    );
    reload(&mut srv, &|cfg| cfg.dns_config.cookie_secret = Some(c));
    assert_eq!(
        rcode(&ask(srv.dns, &cookie[8..])),
        23,
        "BADCOOKIE once the secret is gone"
    );

    // The rate limit: a flood of 100 is cut at the default 20/s, and not
    // once the reload turns it off.
    let flood = |dns: std::net::SocketAddr| {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut full = 0;
        let mut buf = [0u8; 4096];
        for burst in 0..5u16 {
            for i in 0..20u16 {
                let mut q = query_bytes("web.service.consul.", RecordType::A, Some(1232));
                q[..2].copy_from_slice(&(burst * 20 + i).to_be_bytes());
                sock.send_to(&q, dns).unwrap();
            }
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while let Ok(n) = sock.recv(&mut buf) {
                let m = Message::from_vec(&buf[..n]).unwrap();
                if !m.answers.is_empty() {
                    full += 1;
                }
            }
        }
        full
    };
    assert!(flood(srv.dns) <= 45, "limited at first");
    reload(&mut srv, &|cfg| {
        cfg.dns_config.cookie_secret = Some(c);
        cfg.dns_config.rrl_responses_per_second = 0;
    });
    assert_eq!(flood(srv.dns), 100, "not limited after the reload");
    srv.stop().await;
    drop(zones);
}
