//! Test harness: starts signpost on port 0 and talks to it over real
//! sockets with hickory's DNS client; expected answers are written as
//! zone-file text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use hickory_net::client::{Client, ClientHandle};
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
pub(crate) use hickory_proto::op::ResponseCode;
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use signpost::{Config, Signpost};

/// The repository's own zones/ directory.
pub(crate) fn shipped_zones() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("zones")
}

/// A directory of definition files written for one test.
pub(crate) struct ZoneDir {
    pub dir: tempfile::TempDir,
}

impl ZoneDir {
    pub(crate) fn new(files: &[(&str, &str)]) -> ZoneDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).expect("write zone file");
        }
        ZoneDir { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A signpost running in this process on loopback port 0.
pub(crate) struct TestServer {
    pub signpost: Option<Signpost>,
    pub dns: SocketAddr,
    pub http: SocketAddr,
}

impl TestServer {
    pub(crate) async fn start(zones: Option<&Path>) -> TestServer {
        Self::start_with(zones, |_| {}).await
    }

    pub(crate) async fn start_with(
        zones: Option<&Path>,
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config::ephemeral();
        config.zones = zones.map(Path::to_path_buf);
        config.node = "testnode".into();
        tweak(&mut config);
        let signpost = Signpost::start(config).await.expect("signpost starts");
        let dns = signpost.dns_addrs()[0];
        let http = signpost.http_addr();
        TestServer {
            signpost: Some(signpost),
            dns,
            http,
        }
    }

    /// `http://<addr><path>`
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub(crate) fn signpost(&self) -> &Signpost {
        self.signpost.as_ref().expect("running")
    }

    pub(crate) async fn stop(mut self) {
        if let Some(s) = self.signpost.take() {
            s.shutdown().await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    Udp,
    Tcp,
}

pub(crate) const BOTH: [Via; 2] = [Via::Udp, Via::Tcp];

/// A hickory DNS client connected to `server` over `via`.
pub(crate) async fn client(server: SocketAddr, via: Via) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match via {
        Via::Udp => {
            let conn = UdpClientStream::builder(server, provider)
                .with_timeout(Some(Duration::from_secs(2)))
                .build();
            let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
            tokio::spawn(bg);
            client
        }
        Via::Tcp => {
            let (stream, sender) = TcpClientStream::new(server, None, None, provider);
            let stream = stream.await.expect("tcp connect");
            let (client, bg) = Client::<TokioRuntimeProvider>::new(stream, sender);
            tokio::spawn(bg);
            client
        }
    }
}

/// One query, answered as a parsed message.
pub(crate) async fn query(server: SocketAddr, via: Via, name: &str, rtype: RecordType) -> Message {
    let mut c = client(server, via).await;
    let resp = c
        .query(Name::from_str(name).expect("name"), DNSClass::IN, rtype)
        .await
        .unwrap_or_else(|e| panic!("query {name} {rtype} over {via:?}: {e}"));
    resp.into_message()
}

/// Sends raw bytes over UDP and returns the raw reply, if any arrives
/// within `wait`.
pub(crate) fn udp_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(wait)).expect("timeout");
    sock.send_to(bytes, server).expect("send");
    let mut buf = vec![0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// Sends raw bytes over UDP without blocking the runtime (which may be
/// serving the other side) and returns the reply, if one comes in `wait`.
pub(crate) async fn udp_async(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sock.send_to(bytes, server).await.expect("send");
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Sends one framed query over a fresh TCP connection and reads one reply.
pub(crate) async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(server)
            .await
            .expect("connect");
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.expect("write");
        let mut len = [0u8; 2];
        s.read_exact(&mut len).await.expect("read length");
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut buf).await.expect("read body");
        buf
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .expect("tcp reply within 5 s")
}

/// A query message, with EDNS at `edns` bytes when given.
pub(crate) fn query_bytes(name: &str, rtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = fastrand::u16(..);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Records as sorted zone-file lines, for comparing without order.
pub(crate) fn lines(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    v.sort();
    v
}

/// Parses zone-file text (absolute names, explicit TTL and class) into
/// sorted lines in the same form as [`lines`].
pub(crate) fn zone(text: &str) -> Vec<String> {
    // Leading blanks mean "same owner" in zone files; the expected texts
    // are indented for reading, so every line is taken as it stands.
    let text: String = text.lines().map(|l| format!("{}\n", l.trim())).collect();
    let (_, sets) = Parser::new(text.as_str(), None, Some(Name::root()))
        .parse()
        .unwrap_or_else(|e| panic!("bad expected zone text: {e}\n{text}"));
    let records: Vec<Record> = sets
        .values()
        .flat_map(|s| s.records_without_rrsigs().cloned())
        .collect();
    lines(&records)
}

/// Asserts that a section holds exactly the records of `expected`.
#[track_caller]
pub(crate) fn assert_records(section: &[Record], expected: &str) {
    assert_eq!(lines(section), zone(expected), "records differ");
}

/// An HTTP exchange's outcome: status, `X-Consul-Index`, body text.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub index: Option<u64>,
    pub body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method url` with an optional body and returns what came back.
pub(crate) async fn http(method: &str, url: &str, body: Option<&str>) -> Reply {
    http_with(method, url, body, &[]).await
}

pub(crate) async fn http_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Reply {
    let client = reqwest::Client::new();
    let mut req = client.request(method.parse().unwrap(), url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.body(b.to_string());
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.text().await.unwrap();
    Reply {
        status,
        index,
        body,
    }
}

/// The A records (as text) that `name` resolves to over UDP.
pub(crate) async fn a_records(server: SocketAddr, name: &str) -> Vec<String> {
    let m = query(server, Via::Udp, name, RecordType::A).await;
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::A(a) => Some(a.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The ports of the SRV answers of `name` over `via`, sorted.
pub(crate) async fn srv_ports(server: SocketAddr, via: Via, name: &str) -> Vec<u16> {
    let mut v: Vec<u16> = query(server, via, name, RecordType::SRV)
        .await
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// Polls `probe` every 50 ms until it returns true; fails the test, saying
/// `what`, once `limit` has passed.
pub(crate) async fn eventually<F, Fut>(limit: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port free on loopback for both UDP and TCP now.
pub(crate) fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Fails the test unless signpost at `server` answers its own SOA over UDP
/// (DNS still works while something else is under attack).
pub(crate) async fn assert_dns_answers(server: SocketAddr) {
    let m = query(server, Via::Udp, "consul.", RecordType::SOA).await;
    assert_eq!(
        m.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError,
        "signpost's own SOA"
    );
}

/// A test whose outside tool is missing: under CI (`CI` set; `scripts/test`
/// installs every tool there) that is a failure naming what to install;
/// elsewhere the test skips and says so.
pub(crate) fn missing_tool(tool: &str, install: &str, detail: &str) {
    let message = format!("{tool} is missing ({detail}): apt-get install {install}");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false") {
        panic!("{message}");
    }
    // One line per skip in a file the run's summary counts (scripts/test).
    if let Ok(path) = std::env::var("SIGNPOST_SKIPS") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{message}");
        }
    }
    eprintln!("skipped: {message}");
}

/// Registers a service through the agent API; fails the test unless 200.
pub(crate) async fn register(srv: &TestServer, body: &str) {
    let r = http("PUT", &srv.url("/v1/agent/service/register"), Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Whether `cmd` is on the PATH.
pub(crate) fn have(cmd: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Asks `name`/`rtype` with a raw query (with an OPT of `edns`, if any);
/// returns the reply and its size on the wire.
pub(crate) async fn ask(
    server: SocketAddr,
    via: Via,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
) -> (Message, usize) {
    let q = query_bytes(name, rtype, edns);
    let reply = match via {
        Via::Udp => udp_raw(server, &q, Duration::from_secs(2)).expect("a UDP reply"),
        Via::Tcp => tcp_raw(server, &q).await,
    };
    (
        Message::from_vec(&reply).expect("a well-formed reply"),
        reply.len(),
    )
}

/// One row of a DNS table (CoreDNS's `test.Case`): a question and the
/// reply's sections as zone-file text. Empty texts mean "no records".
pub(crate) struct DnsCase {
    pub name: &'static str,
    pub rtype: RecordType,
    /// `None`: over UDP and TCP alike.
    pub via: Option<Via>,
    pub edns: Option<u16>,
    pub rcode: ResponseCode,
    pub answers: &'static str,
    pub authority: &'static str,
    /// The authority is the domain's SOA, with the negative TTL (a
    /// negative answer's); `authority` is not compared then.
    pub soa_authority: bool,
    pub additionals: &'static str,
}

/// A case answered NOERROR with `answers`, asked with EDNS (1232).
pub(crate) const fn case(name: &'static str, rtype: RecordType, answers: &'static str) -> DnsCase {
    DnsCase {
        name,
        rtype,
        via: None,
        edns: Some(1232),
        rcode: ResponseCode::NoError,
        answers,
        authority: "",
        soa_authority: false,
        additionals: "",
    }
}

impl DnsCase {
    pub(crate) const fn additionals(mut self, text: &'static str) -> DnsCase {
        self.additionals = text;
        self
    }
    pub(crate) const fn authority(mut self, text: &'static str) -> DnsCase {
        self.authority = text;
        self
    }
    pub(crate) const fn soa_authority(mut self) -> DnsCase {
        self.soa_authority = true;
        self
    }
    pub(crate) const fn rcode(mut self, rcode: ResponseCode) -> DnsCase {
        self.rcode = rcode;
        self
    }

    pub(crate) fn transports(&self) -> Vec<Via> {
        self.via.map(|v| vec![v]).unwrap_or(BOTH.to_vec())
    }

    /// Asks the case's question of `server` over `via` and checks the
    /// reply: code, flags, OPT, and every section.
    pub(crate) async fn check(&self, server: SocketAddr, via: Via) -> Message {
        let (m, _) = ask(server, via, self.name, self.rtype, self.edns).await;
        let what = format!("{} {} over {via:?}", self.name, self.rtype);
        assert_eq!(m.metadata.response_code, self.rcode, "{what}");
        // A refusal speaks for no zone.
        let authoritative = self.rcode != ResponseCode::Refused;
        assert_eq!(m.metadata.authoritative, authoritative, "{what}: AA");
        assert!(!m.metadata.truncation, "{what}: TC");
        assert_eq!(m.edns.is_some(), self.edns.is_some(), "{what}: OPT");
        assert_eq!(
            without_serial(lines(&m.answers)),
            without_serial(zone(self.answers)),
            "{what}: answers"
        );
        if self.soa_authority {
            assert_eq!(m.authorities.len(), 1, "{what}: one SOA in authority");
            let soa = &m.authorities[0];
            assert_eq!(soa.record_type(), RecordType::SOA, "{what}");
            assert_eq!(soa.ttl, 0, "{what}: negative TTL is the SOA minimum");
        } else {
            assert_eq!(
                without_serial(lines(&m.authorities)),
                without_serial(zone(self.authority)),
                "{what}: authority"
            );
        }
        assert_eq!(
            without_serial(lines(&m.additionals)),
            without_serial(zone(self.additionals)),
            "{what}: additionals"
        );
        m
    }
}

/// SOA records carry the start time as serial; compare everything else.
pub(crate) fn without_serial(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(3) == Some(&"SOA") {
                let mut f = f.clone();
                f[6] = "SERIAL";
                f.join(" ")
            } else {
                l
            }
        })
        .collect()
}

/// A network namespace of the test's own with its loopback up, removed
/// (with the processes started in it) on drop.
pub(crate) struct Netns {
    pub name: String,
    pub children: Vec<std::process::Child>,
}

impl Netns {
    /// A new namespace, or `None` (after [`missing_tool`]) where this is
    /// not root or has no `ip`.
    pub(crate) fn new(tag: &str) -> Option<Netns> {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout == b"0\n")
            .unwrap_or(false);
        if !root || !have("ip") {
            missing_tool(
                "root or ip",
                "iproute2 (and run as root)",
                "a network namespace",
            );
            return None;
        }
        let ns = Netns {
            name: format!("signpost-{tag}-{}", std::process::id()),
            children: Vec::new(),
        };
        assert!(std::process::Command::new("ip")
            .args(["netns", "add", &ns.name])
            .status()
            .unwrap()
            .success());
        assert!(ns
            .exec(&["ip", "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        Some(ns)
    }

    /// `args` run inside the namespace.
    pub(crate) fn exec(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}
