//! DNS software people put in front of or behind a discovery DNS, run for
//! real against signpost on loopback: HAProxy's `server-template` filling
//! its slots from SRV (large UDP answers for trusted clients), and unbound
//! with query-name minimisation and `harden-below-nxdomain` resolving
//! through signpost (empty non-terminals answered NODATA). Skips, saying
//! so, where Debian's `haproxy` or `unbound` is not installed.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

use crate::support::*;

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

fn installed(path: &str) -> bool {
    if std::path::Path::new(path).exists() {
        return true;
    }
    let package = path.rsplit('/').next().unwrap_or(path);
    missing_tool(path, package, "a DNS peer run against signpost");
    false
}

async fn register_many(srv: &TestServer, name: &str, count: usize) {
    for i in 0..count {
        let body = format!(
            r#"{{"Name":"{name}","ID":"{name}-{i}","Address":"127.0.1.{}","Port":{}}}"#,
            i + 1,
            9000 + i
        );
        let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(&body)).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

/// `addr:port` of every HAProxy slot of backend `web` that has a server.
fn haproxy_slots(socket: &std::path::Path) -> BTreeSet<String> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(socket) else {
        return BTreeSet::new();
    };
    s.write_all(b"show servers state web\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let _version = lines.next();
    let Some(header) = lines.next() else {
        return BTreeSet::new();
    };
    let cols: Vec<&str> = header.trim_start_matches("# ").split_whitespace().collect();
    let at = |name: &str| cols.iter().position(|c| *c == name);
    let (Some(addr), Some(port)) = (at("srv_addr"), at("srv_port")) else {
        return BTreeSet::new();
    };
    lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (a, p) = (f.get(addr)?, f.get(port)?);
            (*a != "0.0.0.0" && *a != "-" && *p != "0").then(|| format!("{a}:{p}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn haproxy_server_template_fills_every_slot_and_keeps_it() {
    if !installed("/usr/sbin/haproxy") {
        return;
    }
    let srv = TestServer::start(None).await;
    register_many(&srv, "web", 35).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    // The standard wiring, HAProxy's documented payload size.
    let config = format!(
        "global\n  stats socket {sock} level admin\n\
         resolvers sp\n  nameserver sp {dns}\n  accepted_payload_size 8192\n  resolve_retries 3\n  timeout resolve 500ms\n  timeout retry 500ms\n  hold valid 10s\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5s\n  timeout server 5s\n\
         backend web\n  server-template web 40 _web._tcp.service.consul resolvers sp init-addr none\n",
        sock = socket.display(),
        dns = srv.dns
    );
    std::fs::write(dir.path().join("haproxy.cfg"), config).unwrap();
    let _haproxy = Peer(
        Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f"])
            .arg(dir.path().join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let want: BTreeSet<String> = (0..35)
        .map(|i| format!("127.0.1.{}:{}", i + 1, 9000 + i))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if haproxy_slots(&socket) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy slots never held all 35 instances: {:?}",
            haproxy_slots(&socket).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And they stay: no churn over several resolutions.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(haproxy_slots(&socket), want, "a slot changed");
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unbound_with_qname_minimisation_resolves_through_signpost() {
    if !installed("/usr/sbin/unbound") {
        return;
    }
    let srv = TestServer::start(None).await;
    register_many(&srv, "api", 3).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Everything stays on loopback: "." is stubbed to a closed port, so
    // unbound never primes the real root.
    let config = format!(
        "server:\n  interface: 127.0.0.1\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{dir}\"\n  pidfile: \"\"\n  use-syslog: no\n  verbosity: 0\n  module-config: \"iterator\"\n  qname-minimisation: yes\n  harden-below-nxdomain: yes\n  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n  domain-insecure: \"consul\"\n\
         stub-zone:\n  name: \"consul\"\n  stub-addr: 127.0.0.1@{sp}\n\
         stub-zone:\n  name: \".\"\n  stub-addr: 127.0.0.1@9\n",
        dir = dir.path().display(),
        sp = srv.dns.port()
    );
    std::fs::write(dir.path().join("unbound.conf"), config).unwrap();
    let _unbound = Peer(
        Command::new("/usr/sbin/unbound")
            .arg("-c")
            .arg(dir.path().join("unbound.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let unbound: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if udp_raw(
            unbound,
            &query_bytes("api.service.consul.", RecordType::A, Some(1232)),
            Duration::from_millis(500),
        )
        .is_some()
        {
            break;
        }
        assert!(Instant::now() < deadline, "unbound did not start");
    }
    for via in BOTH {
        let mut got = a_records_via(unbound, via, "api.service.consul.").await;
        got.sort();
        assert_eq!(got, ["127.0.1.1", "127.0.1.2", "127.0.1.3"], "{via:?}");
    }
    let ports = srv_ports(unbound, Via::Udp, "_api._tcp.service.consul.").await;
    assert_eq!(ports, [9000, 9001, 9002]);
    // A name that does not exist is still NXDOMAIN through unbound.
    let m = query(unbound, Via::Udp, "nope.service.consul.", RecordType::A).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NXDomain
    );
    srv.stop().await;
}

async fn a_records_via(server: std::net::SocketAddr, via: Via, name: &str) -> Vec<String> {
    query(server, via, name, RecordType::A)
        .await
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect()
}
