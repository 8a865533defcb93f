//! Cluster mode: three real signpost binaries sharing one registry through
//! a real three-member etcd cluster, all on loopback ports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::run_binary;
use crate::cli::Running;
use crate::support::*;

/// Three etcd members on loopback ports, in a temporary directory.
pub(crate) struct Etcd {
    dir: tempfile::TempDir,
    clients: Vec<u16>,
    peers: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Etcd {
    /// `None` when etcd is not installed (outside CI; in CI the test fails).
    pub(crate) fn start() -> Option<Etcd> {
        if !have("etcd") {
            missing_tool("etcd", "etcd-server", "the cluster tests run a real etcd");
            return None;
        }
        let mut e = Etcd {
            dir: tempfile::tempdir().unwrap(),
            clients: (0..3).map(|_| free_port()).collect(),
            peers: (0..3).map(|_| free_port()).collect(),
            children: vec![None, None, None],
        };
        for i in 0..3 {
            e.spawn(i);
        }
        Some(e)
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = (0..3)
            .map(|j| format!("e{j}=http://127.0.0.1:{}", self.peers[j]))
            .collect();
        let data: PathBuf = self.dir.path().join(format!("e{i}"));
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &self.client(i),
                "--advertise-client-urls",
                &self.client(i),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", self.peers[i]),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", self.peers[i]),
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-token",
                "signpost-test",
                "--log-level",
                "error",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children[i] = Some(child);
    }

    fn client(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.clients[i])
    }

    pub(crate) fn urls(&self) -> String {
        (0..3).map(|i| self.client(i)).collect::<Vec<_>>().join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) a member: a hung endpoint,
    /// which takes connections and answers nothing.
    fn freeze(&self, i: usize, frozen: bool) {
        if let Some(c) = &self.children[i] {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on a child this test started; no memory is shared.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// Which member leads now.
    async fn leader(&self) -> Option<usize> {
        for i in 0..3 {
            if self.children[i].is_none() {
                continue;
            }
            let url = format!("{}/v3/maintenance/status", self.client(i));
            let r = http("POST", &url, Some("{}")).await;
            if r.status != 200 {
                continue;
            }
            let v = r.json();
            if v["leader"].is_string() && v["leader"] == v["header"]["member_id"] {
                return Some(i);
            }
        }
        None
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

fn member(etcd: &Etcd, node: &str, prefix: &str) -> Running {
    run_binary(&[
        "--etcd",
        &etcd.urls(),
        "--etcd-prefix",
        prefix,
        "--node",
        node,
    ])
}

pub(crate) async fn ready(m: &Running) {
    let url = format!("http://{}/ready", m.http);
    eventually(Duration::from_secs(20), "the member is ready", || async {
        http("GET", &url, None).await.status == 200
    })
    .await;
}

fn url(m: &Running, path: &str) -> String {
    format!("http://{}{path}", m.http)
}

async fn index(m: &Running, path: &str) -> u64 {
    let r = reqwest::get(url(m, path)).await.unwrap();
    r.headers()["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn kv_get(m: &Running, key: &str) -> Option<(String, u64)> {
    let r = http("GET", &url(m, &format!("/v1/kv/{key}")), None).await;
    if r.status == 404 {
        return None;
    }
    let v = r.json();
    let raw = v[0]["Value"].as_str().unwrap_or_default();
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD
        .decode(raw)
        .unwrap();
    Some((
        String::from_utf8(value).unwrap(),
        v[0]["ModifyIndex"].as_u64().unwrap(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_share_one_registry_and_never_lose_a_concurrent_write() {
    let Some(etcd) = Etcd::start() else { return };
    let members: Vec<Running> = (1..=3)
        .map(|i| member(&etcd, &format!("host{i}"), "/one"))
        .collect();
    for m in &members {
        ready(m).await;
    }

    // A registration through one member is in every member's DNS.
    let started = Instant::now();
    let r = http(
        "PUT",
        &url(&members[0], "/v1/agent/service/register"),
        Some(r#"{"ID": "web1", "Name": "web", "Address": "10.1.0.1", "Port": 80}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        a_records(members[0].dns, "web.service.consul.").await,
        ["10.1.0.1"],
        "visible in the writer's DNS when acknowledged"
    );
    for m in &members[1..] {
        let seen = tokio::time::timeout(Duration::from_secs(2), async {
            while a_records(m.dns, "web.service.consul.").await != ["10.1.0.1"] {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if seen.is_err() {
            let health = http("GET", &url(m, "/v1/health/service/web"), None)
                .await
                .body;
            let log = m.log.lock().unwrap().join("\n");
            panic!(
                "not answered by {} within 2 s: health {health}\nlog:\n{log}",
                m.http
            );
        }
    }
    eprintln!(
        "registration → DNS on all three members: {:?}",
        started.elapsed()
    );

    // One index: etcd's revision, the same on every member.
    let mut seen = Vec::new();
    for m in &members {
        seen.push(index(m, "/v1/catalog/service/web").await);
    }
    assert!(seen.iter().all(|i| *i == seen[0] && *i > 1), "{seen:?}");

    // A blocking query on one member wakes on a write through another.
    let wait = url(
        &members[2],
        &format!("/v1/health/service/web?index={}&wait=10s", seen[0]),
    );
    let blocked = tokio::spawn(async move {
        let t = Instant::now();
        let r = http("GET", &wait, None).await;
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = http(
        "PUT",
        &url(&members[1], "/v1/agent/service/register"),
        Some(r#"{"ID": "web2", "Name": "web", "Address": "10.1.0.2", "Port": 80}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (r, took) = blocked.await.unwrap();
    assert_eq!(r.json().as_array().unwrap().len(), 2, "{}", r.body);
    assert!(took < Duration::from_secs(5), "woke on the write: {took:?}");

    // Compare-and-set increments through all three members at once: not
    // one is lost.
    let put = http("PUT", &url(&members[0], "/v1/kv/counter"), Some("0")).await;
    assert_eq!(put.status, 200);
    let mut tasks = Vec::new();
    for m in &members {
        let base = format!("http://{}", m.http);
        let key_url = format!("{base}/v1/kv/counter");
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 15 {
                let r = http("GET", &key_url, None).await;
                let v = r.json();
                use base64::Engine;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(v[0]["Value"].as_str().unwrap())
                    .unwrap();
                let n: u64 = String::from_utf8(raw).unwrap().parse().unwrap();
                let cas = v[0]["ModifyIndex"].as_u64().unwrap();
                let r = http(
                    "PUT",
                    &format!("{key_url}?cas={cas}"),
                    Some(&(n + 1).to_string()),
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.body);
                if r.body.trim() == "true" {
                    done += 1;
                } else {
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    for m in &members {
        eventually(Duration::from_secs(2), "every member has 45", || async {
            kv_get(m, "counter").await.map(|(v, _)| v) == Some("45".into())
        })
        .await;
    }
    eprintln!("45 CAS increments through 3 members: {conflicts} refused CAS, none lost");
    let metrics = http("GET", &url(&members[0], "/metrics"), None).await.body;
    assert!(
        metrics.contains("cluster_commits_total") && metrics.contains("cluster_etcd_reachable 1"),
        "{metrics}"
    );

    // A lock held through one member cannot be taken through another
    // until it is released.
    let session = |m: &Running| {
        let u = url(m, "/v1/session/create");
        async move {
            let r = http("PUT", &u, Some(r#"{"Name": "leader", "TTL": "30s"}"#)).await;
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["ID"].as_str().unwrap().to_string()
        }
    };
    let s1 = session(&members[0]).await;
    let s2 = session(&members[1]).await;
    let acquire = |m: &Running, s: &str| {
        let u = url(m, &format!("/v1/kv/service/leader?acquire={s}"));
        async move { http("PUT", &u, Some("me")).await.body.trim() == "true" }
    };
    assert!(acquire(&members[0], &s1).await);
    assert!(
        !acquire(&members[1], &s2).await,
        "held through another member"
    );
    let release = url(&members[0], &format!("/v1/kv/service/leader?release={s1}"));
    assert_eq!(http("PUT", &release, Some("me")).await.body.trim(), "true");
    assert!(acquire(&members[1], &s2).await, "free once released");

    // A member that takes a registration before it has even joined: the
    // others get its node with it, never an instance on an unknown node.
    let late = member(&etcd, "host4", "/one");
    let r = http(
        "PUT",
        &url(&late, "/v1/agent/service/register"),
        Some(r#"{"ID": "late1", "Name": "late", "Address": "10.1.0.4", "Port": 80}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eventually(
        Duration::from_secs(2),
        "member 1 answers the late one",
        || async { a_records(members[0].dns, "late.service.consul.").await == ["10.1.0.4"] },
    )
    .await;
    assert!(
        !late
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("left out"))
            && !members[0]
                .log
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("left out")),
        "no change was left out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_member_leaves_dns_everywhere_within_15_s_and_comes_back_with_its_registrations() {
    let Some(etcd) = Etcd::start() else { return };
    let mut one = member(&etcd, "host1", "/two");
    let two = member(&etcd, "host2", "/two");
    ready(&one).await;
    ready(&two).await;
    let r = http(
        "PUT",
        &url(&one, "/v1/agent/service/register"),
        Some(r#"{"ID": "db1", "Name": "db", "Address": "10.2.0.1", "Port": 5432}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = http(
        "PUT",
        &url(&one, "/v1/session/create"),
        Some(r#"{"Name": "primary", "LockDelay": "3s"}"#),
    )
    .await
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let lock = url(&one, &format!("/v1/kv/db/leader?acquire={s}"));
    assert_eq!(http("PUT", &lock, Some("host1")).await.body.trim(), "true");
    eventually(Duration::from_secs(2), "host2 answers db", || async {
        a_records(two.dns, "db.service.consul.").await == ["10.2.0.1"]
    })
    .await;
    let members = http("GET", &url(&two, "/v1/agent/members"), None)
        .await
        .json();
    let statuses: Vec<(String, u64)> = members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["Name"].as_str().unwrap().into(),
                m["Status"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(statuses, [("host1".into(), 1), ("host2".into(), 1)]);

    // kill -9: no goodbye; its lease runs out.
    one.child.kill().unwrap();
    one.child.wait().unwrap();
    let killed = Instant::now();
    eventually(Duration::from_secs(15), "db leaves host2's DNS", || async {
        a_records(two.dns, "db.service.consul.").await.is_empty()
    })
    .await;
    let gone = killed.elapsed();
    eprintln!("kill -9 → instances out of the other member's DNS: {gone:?}");
    let checks = http("GET", &url(&two, "/v1/health/node/host1"), None)
        .await
        .json();
    let serf = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "serfHealth")
        .expect("host1 has a serfHealth check");
    assert_eq!(serf["Status"], "critical", "{serf}");
    let members = http("GET", &url(&two, "/v1/agent/members"), None)
        .await
        .json();
    assert_eq!(members[0]["Status"], 4, "host1 failed: {members}");
    let out = crate::cli::signpost()
        .arg("members")
        .env("CONSUL_HTTP_ADDR", two.http.to_string())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |node: &str| {
        table
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("host1").contains("failed"), "{table}");
    assert!(row("host2").contains("alive"), "{table}");
    // Its session went with it, and the lock is free.
    eventually(
        Duration::from_secs(5),
        "the session is invalidated",
        || async {
            let r = http("GET", &url(&two, "/v1/kv/db/leader"), None).await;
            r.status == 200 && r.json()[0].get("Session").is_none()
        },
    )
    .await;
    // Its lock delay holds on the other member too, then the lock is free.
    let s2 = http("PUT", &url(&two, "/v1/session/create"), Some("{}"))
        .await
        .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let take = url(&two, &format!("/v1/kv/db/leader?acquire={s2}"));
    assert_eq!(
        http("PUT", &take, Some("host2")).await.body.trim(),
        "false",
        "inside the lock delay of the invalidated session"
    );
    eventually(
        Duration::from_secs(6),
        "the lock is taken after its delay",
        || async { http("PUT", &take, Some("host2")).await.body.trim() == "true" },
    )
    .await;

    // Back with the same node name: answered again, registered by no one.
    let one = member(&etcd, "host1", "/two");
    ready(&one).await;
    eventually(
        Duration::from_secs(5),
        "db is back in host2's DNS",
        || async { a_records(two.dns, "db.service.consul.").await == ["10.2.0.1"] },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_etcd_leader_loses_no_acknowledged_write_and_losing_etcd_refuses_writes_but_serves_dns(
) {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let m = member(&etcd, "host1", "/three");
    ready(&m).await;
    let put = |i: u32| {
        let u = url(&m, &format!("/v1/kv/acked/{i}"));
        async move { http("PUT", &u, Some("x")).await }
    };
    let mut acked = Vec::new();
    for i in 0..20 {
        if put(i).await.status == 200 {
            acked.push(i);
        }
    }
    assert_eq!(acked.len(), 20);

    // Kill the leader and keep writing: count the gap.
    let leader = etcd.leader().await.expect("etcd has a leader");
    etcd.kill(leader);
    let killed = Instant::now();
    let mut first_after = None;
    for i in 20..60 {
        if put(i).await.status == 200 {
            acked.push(i);
            first_after.get_or_insert(killed.elapsed());
        }
    }
    let gap = first_after.expect("writes resume after the election");
    eprintln!("etcd leader killed → first acknowledged write: {gap:?}");
    let keys = http("GET", &url(&m, "/v1/kv/acked/?keys"), None)
        .await
        .json();
    let have = keys.as_array().unwrap().len();
    assert!(
        have >= acked.len(),
        "every acknowledged key is there: {have} < {}",
        acked.len()
    );
    let r = http(
        "PUT",
        &url(&m, "/v1/agent/service/register"),
        Some(r#"{"ID": "api1", "Name": "api", "Address": "10.3.0.1", "Port": 80}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Every etcd member gone: DNS and reads go on, writes are refused in
    // bounded time with a reason naming etcd.
    for i in 0..3 {
        etcd.kill(i);
    }
    let t = Instant::now();
    let r = put(1000).await;
    let took = t.elapsed();
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(r.body.contains("etcd"), "{}", r.body);
    assert!(took < Duration::from_secs(15), "refused in {took:?}");
    assert_eq!(
        a_records(m.dns, "api.service.consul.").await,
        ["10.3.0.1"],
        "DNS answers from memory"
    );
    let r = reqwest::get(url(&m, "/v1/kv/acked/0")).await.unwrap();
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(10),
        "reads say there is no known leader",
        || async {
            let r = reqwest::get(url(&m, "/v1/kv/acked/0")).await.unwrap();
            r.headers()["X-Consul-KnownLeader"] == "false"
        },
    )
    .await;

    // etcd back: the member catches up and takes writes again.
    for i in 0..3 {
        etcd.spawn(i);
    }
    eventually(
        Duration::from_secs(20),
        "writes are taken again",
        || async { put(2000).await.status == 200 },
    )
    .await;
    assert!(kv_get(&m, "acked/2000").await.is_some());
    assert!(
        kv_get(&m, "acked/1000").await.is_none(),
        "a refused write changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_etcd_endpoint_is_left_for_another_and_a_compacted_resume_point_reloads_everything()
{
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let a = member(&etcd, "host1", "/four");
    let b = member(&etcd, "host2", "/four");
    ready(&a).await;
    ready(&b).await;
    // Both talk to the first endpoint; it stops answering without closing.
    etcd.freeze(0, true);
    let started = Instant::now();
    let r = http(
        "PUT",
        &url(&a, "/v1/agent/service/register"),
        Some(r#"{"ID": "h1", "Name": "hung", "Address": "10.4.0.1", "Port": 80}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!(
        "write with the first etcd endpoint hung: acknowledged after {:?}",
        started.elapsed()
    );
    eventually(
        Duration::from_secs(15),
        "the other member's stream moves on",
        || async { a_records(b.dns, "hung.service.consul.").await == ["10.4.0.1"] },
    )
    .await;
    eprintln!(
        "… and visible on the other member after {:?}",
        started.elapsed()
    );

    etcd.freeze(0, false);

    // The other member stopped (SIGSTOP) while etcd restarts under it (its
    // connections die), two writes land and etcd compacts past them: when
    // it runs again, the revision it resumes from is gone, and it reads
    // everything again.
    let signal = |sig| {
        // SAFETY: kill(2) on a child this test started; no memory is shared.
        unsafe { libc::kill(b.child.id() as i32, sig) };
    };
    signal(libc::SIGSTOP);
    for i in 0..3 {
        etcd.kill(i);
    }
    for i in 0..3 {
        etcd.spawn(i);
    }
    let put = |key: &'static str| {
        let u = url(&a, &format!("/v1/kv/{key}"));
        async move { http("PUT", &u, Some("v")).await }
    };
    eventually(
        Duration::from_secs(20),
        "writes after etcd restarted",
        || async { put("compacted/1").await.status == 200 },
    )
    .await;
    let r = put("compacted/2").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let rev = r.index.expect("an index");
    let compact = http(
        "POST",
        &format!("{}/v3/kv/compaction", etcd.client(2)),
        Some(&format!(r#"{{"revision": "{rev}"}}"#)),
    )
    .await;
    assert_eq!(compact.status, 200, "{}", compact.body);
    signal(libc::SIGCONT);
    eventually(
        Duration::from_secs(20),
        "the other member has both keys",
        || async {
            kv_get(&b, "compacted/2").await.is_some() && kv_get(&b, "compacted/1").await.is_some()
        },
    )
    .await;
    assert!(
        b.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("reloading everything")),
        "the log says it read everything again"
    );
}
