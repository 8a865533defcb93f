//! The Docker source against a real engine: containerd and dockerd started
//! by the test on a private socket, data root and bridge (never the
//! system's daemon), with a busybox image made offline by `docker import`.
//! Registrator's conventions, Docker's HEALTHCHECK, pause, `rm -f`, the
//! engine going away and coming back, and exactness under churn.
//!
//! Needs root and Debian's `docker.io` and `busybox-static` (`.ci/run`
//! installs them); skips and says so otherwise.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use signpost::config::DockerConfig;

use crate::support::*;

/// One engine at a time: two would double the load of the suite and
/// race for the same names.
static ONE_ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A private Docker engine; everything it made is removed on drop.
struct Engine {
    dir: PathBuf,
    bridge: String,
    containerd: Child,
    dockerd: Option<Child>,
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Engine {
    /// `None` (with the reason printed) where an engine cannot run here.
    fn start() -> Option<Engine> {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            missing_tool(
                "root",
                "nothing: run the suite as root",
                "a private Docker engine",
            );
            return None;
        }
        for (cmd, package) in [
            ("dockerd", "docker.io"),
            ("containerd", "docker.io"),
            ("docker", "docker.io"),
            ("busybox", "busybox-static"),
            ("ip", "iproute2"),
        ] {
            if !have(cmd) {
                missing_tool(cmd, package, "a private Docker engine");
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("sp-docker-")
            .tempdir_in("/tmp")
            .unwrap()
            .keep();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = (std::process::id() % 10_000) * 10 + n % 10;
        let bridge = format!("spbr{tag}");
        let subnet = 16 + (tag % 200);
        let ok = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip link add {bridge} type bridge && ip addr add 10.{subnet}.77.1/22 dev {bridge} && ip link set {bridge} up"
                ),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create bridge {bridge}");
        std::fs::write(
            dir.join("containerd.toml"),
            format!(
                "version = 2\nroot = \"{d}/ctd/root\"\nstate = \"{d}/ctd/state\"\n[grpc]\n  address = \"{d}/ctd/containerd.sock\"\n[ttrpc]\n  address = \"{d}/ctd/containerd.sock.ttrpc\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("containerd.toml"))
            .stdout(log("containerd.log"))
            .stderr(log("containerd.err"))
            .spawn()
            .unwrap();
        let mut engine = Engine {
            dir,
            bridge,
            containerd,
            dockerd: None,
        };
        let sock = engine.dir.join("ctd/containerd.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        engine.start_dockerd();
        // The image, offline: a busybox root filesystem through import.
        let rootfs = engine.dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        let busybox = sh("command -v busybox");
        std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "sleep", "httpd", "touch", "test", "true", "nc", "wget", "nslookup", "echo",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let out = engine.docker(&[
            "sh",
            "-c",
            &format!(
                "tar -C {} -c . | docker import - sp-busybox:1.0",
                rootfs.display()
            ),
        ]);
        assert!(out.contains("sha256:"), "docker import failed: {out}");
        Some(engine)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn start_dockerd(&mut self) {
        let d = &self.dir;
        let _ = std::fs::remove_file(d.join("docker.pid"));
        let child = Command::new("dockerd")
            .arg("-H")
            .arg(self.url())
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--containerd")
            .arg(d.join("ctd/containerd.sock"))
            .args(["--bridge", &self.bridge])
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            // Containers' resolvers point at loopback with no search domain:
            // nothing a container looks up ever leaves this machine.
            .args(["--dns", "127.0.0.1", "--dns-search", "."])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log")).unwrap())
            .spawn()
            .unwrap();
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.docker(&["docker", "version"]).contains("Server") {
            assert!(Instant::now() < deadline, "dockerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop_dockerd(&mut self) {
        if let Some(mut d) = self.dockerd.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while d.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    d.kill().ok();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            d.wait().ok();
        }
    }

    /// Runs a command with DOCKER_HOST pointing at this engine; its output.
    fn docker(&self, argv: &[&str]) -> String {
        let out = Command::new(argv[0])
            .args(&argv[1..])
            .env("DOCKER_HOST", self.url())
            .output()
            .expect("run");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn run(&self, args: &str) -> String {
        let out = self.docker(&["sh", "-c", &format!("docker run -d {args}")]);
        out.lines().last().unwrap_or("").trim().to_string()
    }

    fn running_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .docker(&["docker", "ps", "-q", "--no-trunc"])
            .lines()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            self.docker(&["sh", "-c", "docker rm -f $(docker ps -aq) >/dev/null 2>&1; docker image rm -f sp-busybox:1.0 >/dev/null 2>&1"]);
        }
        self.stop_dockerd();
        self.containerd.kill().ok();
        self.containerd.wait().ok();
        let dir = self.dir.display().to_string();
        // Mounts the engine left under its roots, deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            Command::new("umount").args(["-l", &m]).status().ok();
        }
        Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status()
            .ok();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn start_signpost(engine: &Engine, internal: bool) -> TestServer {
    let url = engine.url();
    TestServer::start_with(None, move |c| {
        c.docker = Some(DockerConfig {
            url,
            host_ip: Some("127.0.0.1".parse().unwrap()),
            internal,
            network: None,
        })
    })
    .await
}

async fn srv(server: std::net::SocketAddr, name: &str) -> Vec<u16> {
    srv_ports(server, Via::Udp, name).await
}

async fn wait_srv(server: std::net::SocketAddr, name: &str, want: &[u16], what: &str) {
    let name = name.to_string();
    let want = want.to_vec();
    eventually(Duration::from_secs(15), what, || {
        let (name, want) = (name.clone(), want.clone());
        async move { srv(server, &name).await == want }
    })
    .await;
}

fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_source_does_registrators_job() {
    let _one = ONE_ENGINE.lock().await;
    let Some(mut engine) = Engine::start() else {
        return;
    };
    let [p1, p2, p3, p4] = free_ports::<4>();
    // Running before signpost starts: found by the initial list.
    engine.run(&format!(
        "--name web1 -p 127.0.0.1:{p1}:80 -e SERVICE_NAME=web -e SERVICE_TAGS=v1,blue -e SERVICE_VERSION=3 --label SERVICE_TAGS=v1,green sp-busybox:1.0 httpd -f -p 80"
    ));
    engine.run(&format!(
        "--name multi -p {p2}:80 -p {p3}:81 --label SERVICE_81_NAME=admin --label SERVICE_80_IGNORE=1 sp-busybox:1.0 sleep 600"
    ));
    engine.run("--name noports sp-busybox:1.0 sleep 600");
    let sp = start_signpost(&engine, false).await;
    wait_srv(
        sp.dns,
        "web.service.consul",
        &[p1],
        "web1 from the initial list",
    )
    .await;
    wait_srv(sp.dns, "admin.service.consul", &[p3], "SERVICE_81_NAME").await;
    assert!(
        srv(sp.dns, "sp-busybox-80.service.consul").await.is_empty(),
        "SERVICE_80_IGNORE"
    );
    let services = http("GET", &sp.url("/v1/agent/services"), None)
        .await
        .json();
    let web = &services["testnode:web1:80"];
    assert_eq!(web["Service"], "web", "{services}");
    assert_eq!(
        web["Tags"],
        serde_json::json!(["v1", "green"]),
        "labels win over env"
    );
    assert_eq!(web["Meta"]["version"], "3");
    assert_eq!(web["Address"], "127.0.0.1");
    assert_eq!(services.as_object().unwrap().len(), 2, "{services}");
    // Read-only through the API, like zones/ entries.
    let r = http(
        "PUT",
        &sp.url("/v1/agent/service/deregister/testnode:web1:80"),
        None,
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("Docker engine"), "{}", r.body);

    // HEALTHCHECK: starting is not answered, healthy is, unhealthy is not.
    engine.run(&format!(
        "--name web2 -p {p4}:80 -e SERVICE_NAME=web --health-cmd 'test -f /tmp/ready' --health-interval 1s --health-retries 1 sp-busybox:1.0 httpd -f -p 80"
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        srv(sp.dns, "web.service.consul").await,
        [p1],
        "starting is answered"
    );
    engine.docker(&["docker", "exec", "web2", "touch", "/tmp/ready"]);
    let both = [p1.min(p4), p1.max(p4)];
    wait_srv(sp.dns, "web.service.consul", &both, "web2 healthy").await;
    engine.docker(&["docker", "exec", "web2", "sh", "-c", "rm /tmp/ready"]);
    wait_srv(sp.dns, "web.service.consul", &[p1], "web2 unhealthy").await;
    let checks = http("GET", &sp.url("/v1/agent/checks"), None).await.json();
    let c = &checks["docker:testnode:web2:80"];
    assert_eq!(c["Status"], "critical", "{checks}");
    assert!(c["Output"].as_str().unwrap().contains("unhealthy"), "{c}");

    // Pause leaves DNS, unpause comes back; stop and rm -f remove.
    engine.docker(&["docker", "pause", "web1"]);
    wait_srv(sp.dns, "web.service.consul", &[], "web1 paused").await;
    engine.docker(&["docker", "unpause", "web1"]);
    wait_srv(sp.dns, "web.service.consul", &[p1], "web1 unpaused").await;
    engine.docker(&["docker", "rm", "-f", "multi"]);
    wait_srv(
        sp.dns,
        "admin.service.consul",
        &[],
        "multi removed with rm -f",
    )
    .await;

    // The engine going away never empties DNS; back, it resyncs.
    engine.stop_dockerd();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        srv(sp.dns, "web.service.consul").await,
        [p1],
        "engine gone, DNS kept"
    );
    let status = http("GET", &sp.url("/v1/signpost/docker"), None)
        .await
        .json();
    assert_eq!(status["Connected"], false, "{status}");
    let metrics = http("GET", &sp.url("/metrics"), None).await.body;
    assert!(metrics.contains("signpost_docker_connected 0"), "{metrics}");
    engine.start_dockerd();
    // dockerd stopped every container on its way down: none is left.
    assert!(engine.running_ids().is_empty());
    wait_srv(
        sp.dns,
        "web.service.consul",
        &[],
        "resync after the engine came back",
    )
    .await;
    let status = http("GET", &sp.url("/v1/signpost/docker"), None)
        .await
        .json();
    assert_eq!(status["Connected"], true, "{status}");
    sp.stop().await;
    drop(engine);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_source_is_exact_under_churn() {
    let _one = ONE_ENGINE.lock().await;
    let Some(engine) = Engine::start() else {
        return;
    };
    // Internal mode: exposed ports at the container's address (no proxies
    // to start for 200 containers).
    let sp = start_signpost(&engine, true).await;
    let start = Instant::now();
    let mut names = Vec::new();
    // Bursts of 50; SIGNPOST_CHURN_BURSTS=10 gives issue 29's 500.
    let bursts: usize = std::env::var("SIGNPOST_CHURN_BURSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for burst in 0..bursts {
        let batch: Vec<String> = (0..50).map(|i| format!("c{burst}x{i}")).collect();
        let cmds: Vec<String> = batch
            .iter()
            .map(|n| format!("docker run -d --name {n} --expose 8080 -e SERVICE_NAME=churn sp-busybox:1.0 sleep 600 >/dev/null"))
            .collect();
        // Eight docker clients at a time.
        let out = engine.docker(&[
            "sh",
            "-c",
            &format!(
                "printf '%s\\n' {} | xargs -P 8 -I{{}} sh -c {{}}",
                cmds.iter()
                    .map(|c| format!("'{c}'"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ]);
        // What the engine refused, if anything (its warnings apart).
        if let Some(line) = out.lines().find(|l| !l.starts_with("WARNING")) {
            eprintln!("churn burst {burst}: {line}");
        }
        names.extend(batch);
        // Stop a fifth of this burst gracefully, remove a tenth with rm -f.
        let stop: Vec<&str> = names.iter().rev().take(10).map(String::as_str).collect();
        engine.docker(&[&["docker", "stop", "-t", "0"][..], &stop[..]].concat());
        let kill: Vec<&str> = names
            .iter()
            .rev()
            .skip(10)
            .take(5)
            .map(String::as_str)
            .collect();
        engine.docker(&[&["docker", "rm", "-f"][..], &kill[..]].concat());
    }
    let running = engine.running_ids().len();
    assert_eq!(running, bursts * (50 - 15), "docker ps");
    let url = sp.url("/v1/catalog/service/churn");
    eventually(
        Duration::from_secs(30),
        "the registry to match docker ps",
        || {
            let url = url.clone();
            async move {
                http("GET", &url, None)
                    .await
                    .json()
                    .as_array()
                    .unwrap()
                    .len()
                    == running
            }
        },
    )
    .await;
    let entries = http("GET", &url, None).await.json();
    let mut ids: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ServiceID"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), running, "duplicates");
    for e in entries.as_array().unwrap() {
        let addr: IpAddr = e["ServiceAddress"].as_str().unwrap().parse().unwrap();
        assert!(
            !addr.is_loopback(),
            "internal mode registers the container's address: {e}"
        );
        assert_eq!(e["ServicePort"], 8080);
    }
    let metrics = http("GET", &sp.url("/metrics"), None).await.body;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let (sum, count) = (
        value("signpost_docker_event_to_dns_seconds_sum"),
        value("signpost_docker_event_to_dns_seconds_count"),
    );
    // The 99th percentile's bucket: the smallest bound holding 99 %.
    let p99 = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("signpost_docker_event_to_dns_seconds_bucket{le=\"")?;
            let (le, n) = rest.split_once("\"} ")?;
            Some((le.parse::<f64>().ok()?, n.parse::<f64>().ok()?))
        })
        .find(|(_, n)| *n >= 0.99 * count)
        .map_or(f64::NAN, |(le, _)| le * 1000.0);
    eprintln!(
        "churn: {} containers in {bursts} bursts, {} stopped, {} removed with rm -f, {running} running; registry matched docker ps {:.1}s after the start; {count} events, event-to-DNS mean {:.1} ms, p99 at most {p99:.1} ms",
        bursts * 50,
        bursts * 10,
        bursts * 5,
        start.elapsed().as_secs_f64(),
        sum / count * 1000.0
    );
    sp.stop().await;
    drop(engine);
}

/// The signpost image built without a registry from the binary under
/// test: a root filesystem with the binary (debug info stripped), the
/// libraries it links and the example zones, imported with the
/// Dockerfile's entry point, command and `EXPOSE`.
fn import_signpost_image(engine: &Engine) {
    let root = engine.dir.join("signpost-rootfs");
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let exe = env!("CARGO_BIN_EXE_signpost");
    let stripped = Command::new("objcopy")
        .args(["--strip-debug", exe])
        .arg(bin.join("signpost"))
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(exe, bin.join("signpost")).unwrap();
    }
    for lib in sh(&format!("ldd {exe}"))
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let zones = root.join("etc/signpost/zones");
    std::fs::create_dir_all(&zones).unwrap();
    // The users the Dockerfile's image has.
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nsignpost:x:999:999::/nonexistent:/usr/sbin/nologin\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nsignpost:x:999:\n").unwrap();
    for f in std::fs::read_dir(shipped_zones()).unwrap().flatten() {
        std::fs::copy(f.path(), zones.join(f.file_name())).unwrap();
    }
    let out = engine.docker(&[
        "sh",
        "-c",
        &format!(
            "tar -C {} -c . | docker import \
             --change 'ENTRYPOINT [\"/usr/local/bin/signpost\"]' \
             --change 'CMD [\"--zones\", \"/etc/signpost/zones\", \"--dns\", \"0.0.0.0:8600\"]' \
             --change 'EXPOSE 8600/udp 8600/tcp' - signpost:latest",
            root.display()
        ),
    ]);
    assert!(out.contains("sha256:"), "docker import failed: {out}");
    let out = engine.docker(&["docker", "tag", "sp-busybox:1.0", "busybox:latest"]);
    assert!(out.trim().is_empty(), "docker tag: {out}");
}

/// `contrib/docker-compose.yml` as shipped, brought up with Debian's
/// `docker-compose` against the private engine: the gateway resolves and
/// fetches `web.service.consul` (3 replicas once healthy), scaling down
/// and up changes the answers (without compose's 10 s stop grace: the
/// replicas run under an init), signpost recreated answers again, its own
/// container is never advertised at a port it does not serve, and `down`
/// leaves no container or network behind.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_example_comes_up_scales_and_goes_down() {
    let _one = ONE_ENGINE.lock().await;
    if !have("docker-compose") {
        return missing_tool(
            "docker-compose",
            "docker-compose",
            "the compose example's test",
        );
    }
    let Some(engine) = Engine::start() else {
        return;
    };
    import_signpost_image(&engine);
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/docker-compose.yml");
    let compose = |args: &str| -> (bool, String, Duration) {
        let started = Instant::now();
        let out = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "timeout 120 docker-compose -p spcompose -f {} {args} 2>&1",
                    file.display()
                ),
            ])
            .env("DOCKER_HOST", engine.url())
            .env("DOCKER_SOCKET", engine.socket())
            .output()
            .expect("docker-compose");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            started.elapsed(),
        )
    };
    // What the gateway's resolver (signpost, by `dns:`) answers.
    let addresses = |name: &str| -> Vec<String> {
        let (_, out, _) = compose(&format!("exec -T gateway nslookup {name}"));
        let mut v: Vec<String> = out
            .split("Name:")
            .skip(1)
            .filter_map(|rec| {
                rec.lines()
                    .find_map(|l| l.trim().strip_prefix("Address:"))
                    .map(|a| a.trim().to_string())
            })
            .collect();
        v.sort();
        v
    };
    let wait_for = |what: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = addresses("web.service.consul");
            if got.len() == n {
                return got;
            }
            if Instant::now() > deadline {
                let (_, lookup, _) = compose("exec -T gateway nslookup web.service.consul");
                let (_, ps, _) = compose("ps");
                let (_, logs, _) = compose("logs --tail 40 signpost");
                panic!("{what}: {got:?}\n{lookup}\n{ps}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let (ok, out, took) = compose("up -d");
    assert!(ok, "up: {out}");
    eprintln!("compose up in {took:?}");
    let up = Instant::now();
    let replicas = wait_for("3 healthy replicas", 3);
    eprintln!(
        "3 replicas resolved from the gateway {:?} after up: {replicas:?}",
        up.elapsed()
    );
    let (ok, page, _) = compose("exec -T gateway wget -qO- http://web.service.consul:8080/");
    assert!(ok && page.trim() == "hello", "fetch: {page}");
    // The image exposes 8600 (udp and tcp); this signpost serves 53.
    for name in ["signpost-8600.service.consul", "signpost.service.consul"] {
        assert!(
            addresses(name).is_empty(),
            "signpost advertised its own container as {name}"
        );
    }

    let (ok, out, took) = compose("up -d --scale web=1");
    assert!(ok, "scale down: {out}");
    eprintln!("scaled down to 1 in {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "replicas waited for the stop grace: {took:?}"
    );
    wait_for("1 replica after scaling down", 1);
    let (ok, out, _) = compose("up -d --scale web=3");
    assert!(ok, "scale up: {out}");
    wait_for("3 replicas after scaling up", 3);

    let (ok, out, _) = compose("up -d --force-recreate --no-deps signpost");
    assert!(ok, "recreate signpost: {out}");
    wait_for("3 replicas from the recreated signpost", 3);
    let (ok, page, _) = compose("exec -T gateway wget -qO- http://web.service.consul:8080/");
    assert!(ok && page.trim() == "hello", "fetch after recreate: {page}");

    let (ok, out, took) = compose("down");
    assert!(ok, "down: {out}");
    eprintln!("compose down in {took:?}");
    assert!(
        engine.docker(&["docker", "ps", "-aq"]).trim().is_empty(),
        "containers left"
    );
    assert!(
        !engine
            .docker(&["docker", "network", "ls"])
            .contains("spcompose"),
        "network left"
    );
}

/// Registrator plus a Consul cluster, as one binary per host: host A's
/// signpost registers A's containers under its node in the cluster's etcd,
/// host B's answers them, and A's loss takes them out of B's DNS.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_on_one_cluster_member_is_found_from_another_and_leaves_with_its_host() {
    let _one = ONE_ENGINE.lock().await;
    let Some(etcd) = crate::cluster::Etcd::start() else {
        return;
    };
    let Some(engine) = Engine::start() else {
        return;
    };
    let [p1] = free_ports::<1>();
    engine.run(&format!(
        "--name web1 -p 127.0.0.1:{p1}:80 -e SERVICE_NAME=web sp-busybox:1.0 httpd -f -p 80"
    ));
    let urls = etcd.urls();
    let mut a = crate::cli::run_binary(&[
        "--etcd",
        &urls,
        "--node",
        "host-a",
        "--docker",
        &engine.url(),
        "--docker-host-ip",
        "127.0.0.1",
    ]);
    let b = crate::cli::run_binary(&["--etcd", &urls, "--node", "host-b"]);
    crate::cluster::ready(&a).await;
    crate::cluster::ready(&b).await;
    wait_srv(
        b.dns,
        "web.service.consul",
        &[p1],
        "host A's container from host B",
    )
    .await;
    let services = http(
        "GET",
        &format!("http://{}/v1/catalog/service/web", b.http),
        None,
    )
    .await
    .json();
    assert_eq!(services[0]["Node"], "host-a", "{services}");
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    eventually(
        Duration::from_secs(15),
        "host A's loss takes its container out of B's DNS",
        || async { srv(b.dns, "web.service.consul").await.is_empty() },
    )
    .await;
}

/// An image of Debian's etcd (binary and the libraries it links), made
/// offline under the name `contrib/cluster-compose.yml` pulls, with etcd
/// where the official image keeps it.
fn import_etcd_image(engine: &Engine) {
    let root = engine.dir.join("etcd-rootfs");
    let bin = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("var/lib/etcd")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    let exe = sh("command -v etcd");
    let exe = exe.trim();
    std::fs::copy(exe, bin.join("etcd")).unwrap();
    for lib in sh(&format!("ldd {exe}"))
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
    let out = engine.docker(&[
        "sh",
        "-c",
        &format!(
            "tar -C {} -c . | docker import - gcr.io/etcd-development/etcd:v3.4.23",
            root.display()
        ),
    ]);
    assert!(out.contains("sha256:"), "docker import failed: {out}");
}

/// `contrib/cluster-compose.yml` as shipped: three etcd members and three
/// signposts come up; a service registered through signpost1 resolves from
/// signpost3; with one etcd member stopped writes still land; signpost1
/// killed takes its node's service out of signpost3's DNS, and started
/// again brings it back without registering it again; `down -v` leaves
/// nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn the_cluster_compose_example_survives_a_lost_etcd_member_and_a_lost_host() {
    let _one = ONE_ENGINE.lock().await;
    if !have("docker-compose") {
        return missing_tool(
            "docker-compose",
            "docker-compose",
            "the cluster compose example's test",
        );
    }
    if !have("etcd") {
        return missing_tool("etcd", "etcd-server", "the cluster compose example's test");
    }
    let Some(engine) = Engine::start() else {
        return;
    };
    import_signpost_image(&engine);
    import_etcd_image(&engine);
    // The compose file reads its token from beside it (its project
    // directory): here a directory of the test's own.
    let project = engine.dir.join("cluster-project");
    std::fs::create_dir_all(&project).unwrap();
    let token = "cluster-test-token";
    std::fs::write(project.join("signpost-token"), format!("{token}\n")).unwrap();
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/cluster-compose.yml");
    let compose = |args: &str| -> (bool, String) {
        let out = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "timeout 120 docker-compose -p spcluster -f {} --project-directory {} {args} 2>&1",
                    file.display(),
                    project.display()
                ),
            ])
            .env("DOCKER_HOST", engine.url())
            .output()
            .expect("docker-compose");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Where Docker published a member's port on the machine's loopback.
    let port = |member: &str, proto: &str, number: u16| -> std::net::SocketAddr {
        let (ok, out) = compose(&format!("port --protocol {proto} {member} {number}"));
        let addr = out.lines().last().unwrap_or("").trim();
        assert!(ok, "port {proto} {member} {number}: {out}");
        addr.parse()
            .unwrap_or_else(|e| panic!("port {proto} {member} {number}: {addr:?}: {e}"))
    };
    let http_of = |member: &str| port(member, "tcp", 8500).to_string();
    let (ok, out) = compose("up -d");
    assert!(ok, "up: {out}");
    let started = Instant::now();
    let members = ["signpost1", "signpost2", "signpost3"];
    for m in members {
        let addr = http_of(m);
        eventually(Duration::from_secs(90), &format!("{m} ready"), || {
            let url = format!("http://{addr}/ready");
            async move {
                reqwest::get(&url)
                    .await
                    .is_ok_and(|r| r.status().as_u16() == 200)
            }
        })
        .await;
    }
    eprintln!("three members ready {:?} after up", started.elapsed());
    let dns3 = port("signpost3", "udp", 8600);
    let auth = [("X-Consul-Token", token)];
    let r = http_with(
        "PUT",
        &format!("http://{}/v1/agent/service/register", http_of("signpost1")),
        Some(r#"{"Name": "web", "Address": "10.0.0.5", "Port": 80}"#),
        &auth,
    )
    .await;
    assert_eq!(r.status, 200, "register through signpost1: {}", r.body);
    eventually(
        Duration::from_secs(5),
        "web from signpost3's DNS",
        || async { a_records(dns3, "web.service.consul.").await == ["10.0.0.5"] },
    )
    .await;

    let (ok, out) = compose("stop etcd1");
    assert!(ok, "stop etcd1: {out}");
    let r = http_with(
        "PUT",
        &format!("http://{}/v1/agent/service/register", http_of("signpost2")),
        Some(r#"{"Name": "api", "Address": "10.0.0.6", "Port": 81}"#),
        &auth,
    )
    .await;
    assert_eq!(r.status, 200, "register with etcd1 stopped: {}", r.body);
    eventually(
        Duration::from_secs(5),
        "api from signpost3's DNS with etcd1 stopped",
        || async { a_records(dns3, "api.service.consul.").await == ["10.0.0.6"] },
    )
    .await;

    let (ok, out) = compose("kill signpost1");
    assert!(ok, "kill signpost1: {out}");
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "host1's service out of signpost3's DNS",
        || async { a_records(dns3, "web.service.consul.").await.is_empty() },
    )
    .await;
    eprintln!(
        "host1 lost: out of signpost3's DNS after {:?}",
        killed.elapsed()
    );
    let (ok, out) = compose("start signpost1");
    assert!(ok, "start signpost1: {out}");
    eventually(
        Duration::from_secs(60),
        "host1's service back in signpost3's DNS without registering again",
        || async { a_records(dns3, "web.service.consul.").await == ["10.0.0.5"] },
    )
    .await;

    let (ok, out) = compose("down -v");
    assert!(ok, "down: {out}");
    assert!(
        engine.docker(&["docker", "ps", "-aq"]).trim().is_empty(),
        "containers left"
    );
    assert!(
        !engine
            .docker(&["docker", "volume", "ls", "-q"])
            .contains("spcluster"),
        "volumes left"
    );
}
