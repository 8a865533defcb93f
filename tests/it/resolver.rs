//! The resolver a container needs: static zones, forwarding to upstreams
//! (a second signpost serving a static zone plays the upstream), the cache,
//! failover, who may recurse, and glibc resolving through signpost inside a
//! network namespace.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::*;

const UPSTREAM_ZONE: &str = "$ORIGIN upstream.example.
$TTL 60
@    IN SOA ns hostmaster ( 1 3600 600 86400 30 )
@    IN NS  ns
ns   IN A   192.0.2.53
www  IN A   192.0.2.80
www  IN AAAA 2001:db8::80
";

/// A second signpost serving `upstream.example` only.
async fn upstream() -> (TestServer, ZoneDir) {
    let zones = ZoneDir::new(&[("upstream.example.zone", UPSTREAM_ZONE)]);
    (TestServer::start(Some(zones.path())).await, zones)
}

async fn front(
    recursors: Vec<SocketAddr>,
    tweak: impl FnOnce(&mut signpost::Config),
) -> TestServer {
    TestServer::start_with(Some(&shipped_zones()), |c| {
        c.recursors.upstreams = recursors;
        c.recursors.timeout = Duration::from_millis(300);
        tweak(c);
    })
    .await
}

async fn ask(server: SocketAddr, via: Via, name: &str, rtype: RecordType) -> Message {
    let q = query_bytes(name, rtype, Some(1232));
    let reply = match via {
        Via::Udp => udp_async(server, &q, Duration::from_secs(3))
            .await
            .expect("a reply"),
        Via::Tcp => tcp_raw(server, &q).await,
    };
    Message::from_vec(&reply).unwrap()
}

#[tokio::test]
async fn static_zone_answers_over_udp_and_tcp() {
    let srv = TestServer::start(Some(&shipped_zones())).await;
    for via in BOTH {
        let m = ask(srv.dns, via, "gateway.internal.example.", RecordType::A).await;
        assert!(m.metadata.authoritative);
        assert_records(&m.answers, "gateway.internal.example. 300 IN A 192.0.2.10");
        let m = ask(srv.dns, via, "www.internal.example.", RecordType::A).await;
        assert_records(
            &m.answers,
            "www.internal.example. 300 IN CNAME gateway.internal.example.
             gateway.internal.example. 300 IN A 192.0.2.10",
        );
        let m = ask(srv.dns, via, "internal.example.", RecordType::MX).await;
        assert_records(
            &m.answers,
            "internal.example. 300 IN MX 10 mail.internal.example.",
        );
        let m = ask(srv.dns, via, "printer.internal.example.", RecordType::AAAA).await;
        assert_records(
            &m.answers,
            "printer.internal.example. 300 IN AAAA 2001:db8::40",
        );
        let m = ask(srv.dns, via, "gateway.internal.example.", RecordType::TXT).await;
        assert_eq!(
            (m.metadata.response_code, m.answers.len()),
            (ResponseCode::NoError, 0)
        );
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        let m = ask(srv.dns, via, "nope.internal.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            m.authorities[0].ttl, 60,
            "negative TTL from the SOA minimum"
        );
        // The service domain is still there beside it.
        let m = ask(srv.dns, via, "web.service.consul.", RecordType::A).await;
        assert_eq!(m.answers.len(), 3);
    }
    srv.stop().await;
}

#[tokio::test]
async fn a_bad_zone_file_stops_startup_with_file_line_and_reason() {
    let bad = UPSTREAM_ZONE.replace("www  IN A   192.0.2.80", "www  IN A   192.0.2.800");
    let zones = ZoneDir::new(&[("upstream.example.zone", &bad)]);
    let mut config = signpost::Config::ephemeral();
    config.zones = Some(zones.path().to_path_buf());
    let err = match signpost::Signpost::start(config).await {
        Ok(_) => panic!("started with a bad zone"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("upstream.example.zone:6:"), "{err}");
}

#[tokio::test]
async fn forwards_caches_and_never_forwards_its_own_domain() {
    let (up, _z) = upstream().await;
    let srv = front(vec![up.dns], |_| {}).await;
    for via in BOTH {
        let m = ask(srv.dns, via, "www.upstream.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{via:?}");
        assert!(m.metadata.recursion_available, "RA with recursors");
        assert!(!m.metadata.authoritative);
        assert_records(&m.answers, "www.upstream.example. 60 IN A 192.0.2.80");
    }
    let m = ask(
        srv.dns,
        Via::Udp,
        "missing.upstream.example.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    // RD=0 asks for what signpost holds itself: refused, not forwarded.
    let mut q = query_bytes("www.upstream.example.", RecordType::A, None);
    q[2] &= !0x01;
    let m = hickory_proto::op::Message::from_vec(
        &udp_raw(srv.dns, &q, Duration::from_secs(2)).expect("a reply"),
    )
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // signpost's own names are answered here, never sent upstream.
    let m = ask(srv.dns, Via::Udp, "nope.service.consul.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.metadata.authoritative);
    // With the upstream gone, cached answers still come, TTLs aged.
    up.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = ask(srv.dns, Via::Udp, "www.upstream.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(
        m.answers[0].ttl < 60 && m.answers[0].ttl >= 55,
        "aged TTL {}",
        m.answers[0].ttl
    );
    let m = ask(
        srv.dns,
        Via::Udp,
        "missing.upstream.example.",
        RecordType::A,
    )
    .await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NXDomain,
        "negative answer cached"
    );
    // Not cached: the upstream is needed, and gone.
    let m = ask(srv.dns, Via::Udp, "www.upstream.example.", RecordType::MX).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    srv.stop().await;
}

#[tokio::test]
async fn a_dead_upstream_fails_over_and_all_dead_is_servfail() {
    let (up, _z) = upstream().await;
    // Takes datagrams and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead = silent.local_addr().unwrap();
    let srv = front(vec![dead, up.dns], |_| {}).await;
    for via in BOTH {
        let started = Instant::now();
        let m = ask(srv.dns, via, "www.upstream.example.", RecordType::AAAA).await;
        assert_records(&m.answers, "www.upstream.example. 60 IN AAAA 2001:db8::80");
        let took = started.elapsed();
        eprintln!("{via:?}: answered through the second upstream in {took:?}");
    }
    srv.stop().await;

    // An upstream that says SERVFAIL is skipped too: a signpost whose own
    // only upstream is dead.
    let failing = front(vec![dead], |_| {}).await;
    let srv = front(vec![failing.dns, up.dns], |c| {
        c.recursors.timeout = Duration::from_secs(2)
    })
    .await;
    let m = ask(srv.dns, Via::Udp, "www.upstream.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    srv.stop().await;
    failing.stop().await;

    let other_silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let srv = front(vec![dead, other_silent.local_addr().unwrap()], |_| {}).await;
    for via in BOTH {
        let m = ask(srv.dns, via, "www.upstream.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{via:?}");
        assert!(m.metadata.recursion_available);
    }
    srv.stop().await;
    up.stop().await;
}

#[tokio::test]
async fn clients_outside_the_allowed_ranges_are_refused() {
    let (up, _z) = upstream().await;
    let srv = front(vec![up.dns], |c| {
        c.recursors.allow = vec!["10.0.0.0/8".parse().unwrap()];
    })
    .await;
    for via in BOTH {
        let m = ask(srv.dns, via, "www.upstream.example.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::Refused, "{via:?}");
        assert!(m.answers.is_empty());
        // signpost's own zones still answer everyone.
        let m = ask(srv.dns, via, "web.service.consul.", RecordType::A).await;
        assert_eq!(m.answers.len(), 3);
    }
    srv.stop().await;
    up.stop().await;
}

#[tokio::test]
async fn no_recursors_no_ra() {
    let srv = TestServer::start(Some(&shipped_zones())).await;
    let m = ask(srv.dns, Via::Udp, "www.upstream.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    assert!(!m.metadata.recursion_available);
    let m = ask(srv.dns, Via::Udp, "web.service.consul.", RecordType::A).await;
    assert!(!m.metadata.recursion_available);
    srv.stop().await;
}

/// signpost on port 53 of a namespace's loopback as its only nameserver;
/// glibc (`getent hosts`) resolves a service and a forwarded name.
#[test]
fn glibc_resolves_through_signpost_on_port_53_in_a_network_namespace() {
    let Some(mut ns) = Netns::new("resolver") else {
        return;
    };
    std::fs::create_dir_all(format!("/etc/netns/{}", ns.name)).unwrap();
    std::fs::write(
        format!("/etc/netns/{}/resolv.conf", ns.name),
        "nameserver 127.0.0.1\noptions timeout:2 attempts:2\n",
    )
    .unwrap();

    let bin = env!("CARGO_BIN_EXE_signpost");
    let up_zones = ZoneDir::new(&[("upstream.example.zone", UPSTREAM_ZONE)]);
    let quiet = || std::process::Stdio::null();
    ns.children.push(
        ns.exec(&[
            bin,
            "--dns",
            "127.0.0.2:53",
            "--http",
            "127.0.0.2:8500",
            "--zones",
            up_zones.path().to_str().unwrap(),
        ])
        .stdout(quiet())
        .stderr(quiet())
        .spawn()
        .unwrap(),
    );
    ns.children.push(
        ns.exec(&[
            bin,
            "--dns",
            "127.0.0.1:53",
            "--http",
            "127.0.0.1:8500",
            "--zones",
            shipped_zones().to_str().unwrap(),
            "--recursor",
            "127.0.0.2",
        ])
        .stdout(quiet())
        .stderr(quiet())
        .spawn()
        .unwrap(),
    );
    let getent = |name: &str| {
        let out = ns.exec(&["getent", "hosts", name]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut web = String::new();
    while Instant::now() < deadline {
        web = getent("web.service.consul");
        if !web.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        web.contains("127.0.0.1") && web.contains("web.service.consul"),
        "getent: {web:?}"
    );
    let forwarded = getent("www.upstream.example");
    assert!(
        forwarded.contains("2001:db8::80") || forwarded.contains("192.0.2.80"),
        "getent: {forwarded:?}"
    );
    let static_zone = getent("gateway.internal.example");
    assert!(
        static_zone.contains("192.0.2.10"),
        "getent: {static_zone:?}"
    );
}

/// An upstream played by a thread on a loopback UDP socket: it answers
/// every A question with 192.0.2.1, except names starting with `slow` (never
/// answered, as a cold recursive lookup past the time-out), and nothing at
/// all while `silent` is set.
struct FakeUpstream {
    addr: SocketAddr,
    silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeUpstream {
    fn start() -> FakeUpstream {
        use std::sync::atomic::Ordering;
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (silent.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(question) = q.queries.first().cloned() else {
                    continue;
                };
                if s.load(Ordering::Relaxed) || question.name().to_string().starts_with("slow") {
                    continue;
                }
                let mut r = Message::response(q.metadata.id, q.metadata.op_code);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.metadata.recursion_available = true;
                r.add_query(question.clone());
                if question.query_type() == RecordType::A {
                    r.add_answer(hickory_proto::rr::Record::from_rdata(
                        question.name().clone(),
                        60,
                        hickory_proto::rr::RData::A("192.0.2.1".parse().unwrap()),
                    ));
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from);
            }
        });
        FakeUpstream {
            addr,
            silent,
            stop,
            thread: Some(thread),
        }
    }

    fn set_silent(&self, on: bool) {
        self.silent.store(on, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
}

/// One name the single upstream is slow to resolve gets SERVFAIL; every
/// other name keeps being forwarded (the upstream is not marked down for
/// it). Only failures in a row mark it down; then most questions get
/// SERVFAIL at once while trial questions still go through, and the first
/// answer brings forwarding back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_name_never_takes_forwarding_down() {
    let upstream = FakeUpstream::start();
    let srv = front(vec![upstream.addr], |_| {}).await;
    let m = ask(srv.dns, Via::Udp, "slow.example.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    for name in ["a.example.", "b.example.", "c.example."] {
        let m = ask(srv.dns, Via::Udp, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(m.answers.len(), 1, "{name}");
    }
    // Two slow names in a row and an answer between them: still up.
    for name in [
        "slow1.example.",
        "slow2.example.",
        "d.example.",
        "slow3.example.",
    ] {
        ask(srv.dns, Via::Udp, name, RecordType::A).await;
    }
    let m = ask(srv.dns, Via::Udp, "e.example.", RecordType::A).await;
    assert_eq!(m.answers.len(), 1);
    let text = http("GET", &srv.url("/metrics"), None).await.body;
    assert_eq!(
        metric(&text, "signpost_forward_marked_down_total"),
        0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "signpost_forward_timeouts_total"),
        4,
        "{text}"
    );

    // The upstream goes silent: three failures in a row mark it down.
    upstream.set_silent(true);
    for name in ["f.example.", "g.example.", "h.example."] {
        let m = ask(srv.dns, Via::Udp, name, RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{name}");
    }
    let text = http("GET", &srv.url("/metrics"), None).await.body;
    assert_eq!(
        metric(&text, "signpost_forward_marked_down_total"),
        1,
        "{text}"
    );
    // While it is down most questions are answered SERVFAIL at once.
    let names: Vec<String> = (0..40).map(|i| format!("down{i}.example.")).collect();
    let replies = futures_util::future::join_all(
        names
            .iter()
            .map(|n| ask(srv.dns, Via::Udp, n, RecordType::A)),
    )
    .await;
    assert!(replies
        .iter()
        .all(|m| m.metadata.response_code == ResponseCode::ServFail));
    let text = http("GET", &srv.url("/metrics"), None).await.body;
    assert!(
        metric(&text, "signpost_forward_upstreams_down_total") >= 30,
        "{text}"
    );
    // It answers again: forwarding resumes.
    upstream.set_silent(false);
    eventually(Duration::from_secs(3), "forwarding resumes", || async {
        ask(srv.dns, Via::Udp, "back.example.", RecordType::A)
            .await
            .answers
            .len()
            == 1
    })
    .await;
    srv.stop().await;
}
