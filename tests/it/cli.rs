//! The real binary: `--help`, `check`, and serving the example zones to dig.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

pub(crate) fn signpost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_signpost"))
}

#[test]
fn help_explains_every_option() {
    let out = signpost().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--config",
        "--dns",
        "--http",
        "--zones",
        "--data-dir",
        "--domain",
        "--datacenter",
        "--node",
        "--log-level",
        "check",
    ] {
        assert!(text.contains(opt), "--help mentions {opt}:\n{text}");
    }
}

#[test]
fn check_accepts_the_shipped_zones_and_config() {
    let out = signpost()
        .args(["check", "--config"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("signpost.example.toml"))
        .arg("--zones")
        .arg(shipped_zones())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ok:"), "{text}");
}

#[test]
fn check_reports_file_line_and_reason() {
    let zones = ZoneDir::new(&[(
        "bad.json",
        "{\"service\": {\n  \"name\": \"web\",\n  \"port\": -1\n}}",
    )]);
    let out = signpost()
        .arg("check")
        .arg("--zones")
        .arg(zones.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json:4:") && err.contains("port -1 is out of range"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "domain = \"consul\"\n\nbogus_key = 1\n").unwrap();
    let out = signpost()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3:") && err.contains("unknown field `bogus_key`"),
        "{err}"
    );

    std::fs::write(&cfg, "datacenter = \"two words\"\n").unwrap();
    let out = signpost()
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("datacenter"));
}

/// The binary running on port 0, with the addresses read from its log.
pub(crate) struct Running {
    pub child: std::process::Child,
    pub dns: std::net::SocketAddr,
    pub http: std::net::SocketAddr,
    /// Every line the process logged so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run_binary(args: &[&str]) -> Running {
    let mut child = signpost()
        .args([
            "--dns",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--log-level",
            "info",
        ])
        .args(args)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            keep.lock().unwrap().push(line.clone());
            for what in ["serving DNS on ", "serving HTTP on "] {
                if let Some(rest) = line.split(what).nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                        .collect();
                    let _ = tx.send((what, addr));
                }
            }
        }
    });
    let (mut dns, mut http) = (None, None);
    while dns.is_none() || http.is_none() {
        let (what, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("signpost logs its addresses");
        let addr = addr.parse().unwrap();
        if what.contains("DNS") {
            dns = Some(addr);
        } else {
            http = Some(addr);
        }
    }
    Running {
        child,
        dns: dns.unwrap(),
        http: http.unwrap(),
        log,
    }
}

#[tokio::test]
async fn acknowledged_registrations_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let mut srv = run_binary(&["--data-dir", &dir]);
    let url = format!("http://{}/v1/agent/service/register", srv.http);
    for i in 0..20 {
        let body = format!(
            r#"{{"ID": "w{i}", "Name": "web", "Address": "10.0.0.{}", "Port": 80}}"#,
            i + 1
        );
        assert_eq!(http("PUT", &url, Some(&body)).await.status, 200);
    }
    // SIGKILL right after the last acknowledgement: no shutdown code runs.
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let srv = run_binary(&["--data-dir", &dir]);
    let mut clients = client(srv.dns, Via::Tcp).await;
    use hickory_net::client::ClientHandle;
    let m = clients
        .query(
            "web.service.consul.".parse().unwrap(),
            hickory_proto::rr::DNSClass::IN,
            hickory_proto::rr::RecordType::A,
        )
        .await
        .unwrap();
    assert_eq!(
        m.answers.len(),
        20,
        "every acknowledged registration is back"
    );
}

#[test]
fn dig_resolves_the_example_services() {
    if Command::new("dig").arg("-v").output().is_err() {
        return missing_tool("dig", "dnsutils", "the example services through dig");
    }
    let zones = shipped_zones();
    let srv = run_binary(&["--zones", zones.to_str().unwrap()]);
    let port = srv.dns.port().to_string();
    let dig = |args: &[&str]| {
        let out = Command::new("dig")
            .args(["@127.0.0.1", "-p", &port, "+time=2", "+tries=1"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let start = Instant::now();
    let out = dig(&["+short", "web.service.consul", "SRV"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "1 1 8081 7f00000d.addr.dc1.consul.",
            "1 10 8080 7f00000b.addr.dc1.consul.",
            "1 10 8080 7f00000c.addr.dc1.consul.",
        ],
        "{out}"
    );
    let out = dig(&["+tcp", "+short", "primary.db.service.consul", "A"]);
    assert_eq!(out.trim(), "127.0.1.1");
    let out = dig(&["nope.service.consul"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

/// The shipped systemd unit starts signpost with arguments it accepts,
/// keeps the one capability port 53 needs, and its config file is valid.
#[test]
fn the_shipped_systemd_unit_and_its_config_check_out() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit = std::fs::read_to_string(root.join("contrib/signpost.service")).unwrap();
    assert!(unit.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    assert!(unit.contains("Restart=on-failure"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(str::to_string)
        .collect();
    // The unit's config path points at /etc; check the shipped copy of it.
    let config = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[config] = root
        .join("contrib/signpost.toml")
        .to_str()
        .unwrap()
        .to_string();
    let out = signpost()
        .arg("check")
        .args(&args)
        .arg("--zones")
        .arg(shipped_zones())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
