//! PostgreSQL high availability on signpost: two real Patroni nodes use it
//! as their Consul DCS. One becomes leader, the other a streaming replica;
//! the leader key and DNS (`master`/`primary`/`replica.<scope>`) follow
//! them; after SIGKILL of the leader's Patroni and postgres the replica
//! takes over and a row written before is readable. Skips, saying so,
//! where Patroni or PostgreSQL is not installed (scripts/test installs
//! them as root) or the test cannot run PostgreSQL as its own user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use hickory_proto::rr::{RData, RecordType};

use crate::cli::run_binary;
use crate::support::*;

fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop()
}

struct Node {
    name: &'static str,
    config: PathBuf,
    data: PathBuf,
    pg_port: u16,
}

fn write_config(dir: &Path, name: &'static str, http: std::net::SocketAddr, bin: &Path) -> Node {
    let (api_port, pg_port) = (free_port(), free_port());
    let data = dir.join(format!("data-{name}"));
    let config = dir.join(format!("{name}.yml"));
    std::fs::write(
        &config,
        format!(
            "scope: sptest
name: {name}
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
consul:
  host: {http}
  register_service: true
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 5
  initdb: [{{encoding: UTF8}}]
  pg_hba:
  - host replication replicator 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {data}
  bin_dir: {bin}
  authentication:
    replication: {{username: replicator, password: rep}}
    superuser: {{username: postgres, password: pw}}
  parameters: {{unix_socket_directories: '{dir}'}}
",
            data = data.display(),
            bin = bin.display(),
            dir = dir.display(),
        ),
    )
    .unwrap();
    Node {
        name,
        config,
        data,
        pg_port,
    }
}

/// Runs Patroni for `node` as the postgres user (PostgreSQL refuses root).
fn start(node: &Node, dir: &Path) -> Child {
    let log = std::fs::File::create(dir.join(format!("{}.log", node.name))).unwrap();
    Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c"])
        .arg(format!("exec patroni {}", node.config.display()))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// SIGKILL to a node's Patroni and every postgres process of its data dir.
fn kill_node(node: &Node) {
    for pattern in [
        node.config.display().to_string(),
        node.data.display().to_string(),
    ] {
        let _ = Command::new("pkill").args(["-9", "-f", &pattern]).status();
    }
}

fn psql(node: &Node, dir: &Path, sql: &str) -> String {
    let out = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c"])
        .arg(format!(
            "psql -h 127.0.0.1 -p {} -U postgres -tAc \"{sql}\"",
            node.pg_port
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The SRV ports that `<tag>.sptest.service.consul` answers.
async fn srv_ports(dns: std::net::SocketAddr, tag: &str) -> Vec<u16> {
    let m = query(
        dns,
        Via::Udp,
        &format!("{tag}.sptest.service.consul."),
        RecordType::SRV,
    )
    .await;
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SRV(s) => Some(s.port),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_fails_over_on_signpost() {
    let Some(bin) = postgres_bin().filter(|_| have("patroni") && have("psql")) else {
        return missing_tool(
            "Patroni or PostgreSQL",
            "patroni postgresql python3-consul",
            "Patroni's failover",
        );
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing_tool(
            "root",
            "nothing: run the suite as root",
            "PostgreSQL as its own user",
        );
    }
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let data = dir.join("signpost");
    let sp = run_binary(&["--data-dir", data.to_str().unwrap(), "--node", "host1"]);
    fails_over(&dir, &bin, &sp, &sp).await;
}

/// The same with the two PostgreSQL nodes' Patronis pointed at two
/// members of a signpost cluster on etcd: the leader lock is contended
/// across members, and the lost primary's session expires on its member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_fails_over_across_two_cluster_members() {
    let Some(bin) = postgres_bin().filter(|_| have("patroni") && have("psql")) else {
        return missing_tool(
            "Patroni or PostgreSQL",
            "patroni postgresql python3-consul",
            "Patroni's failover",
        );
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing_tool(
            "root",
            "nothing: run the suite as root",
            "PostgreSQL as its own user",
        );
    }
    let Some(etcd) = crate::cluster::Etcd::start() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().to_path_buf();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let a = run_binary(&["--etcd", &etcd.urls(), "--node", "host1"]);
    let b = run_binary(&["--etcd", &etcd.urls(), "--node", "host2"]);
    crate::cluster::ready(&a).await;
    crate::cluster::ready(&b).await;
    fails_over(&dir, &bin, &a, &b).await;
}

/// pg1's Patroni talks to `a`, pg2's to `b`; DNS is asked of `b`.
async fn fails_over(dir: &Path, bin: &Path, a: &crate::cli::Running, b: &crate::cli::Running) {
    let dir = dir.to_path_buf();
    let (http_addr, dns) = (b.http, b.dns);
    let pg1 = write_config(&dir, "pg1", a.http, bin);
    let pg2 = write_config(&dir, "pg2", b.http, bin);
    let leader_url = format!("http://{http_addr}/v1/kv/service/sptest/leader?raw");
    let leader = || async { http("GET", &leader_url, None).await.body };

    let mut children = vec![start(&pg1, &dir)];
    eventually(Duration::from_secs(90), "pg1 leads", || async {
        leader().await == "pg1" && srv_ports(dns, "master").await == [pg1.pg_port]
    })
    .await;
    assert_eq!(srv_ports(dns, "primary").await, [pg1.pg_port]);
    children.push(start(&pg2, &dir));
    eventually(Duration::from_secs(90), "pg2 replicates", || async {
        srv_ports(dns, "replica").await == [pg2.pg_port]
    })
    .await;
    psql(
        &pg1,
        &dir,
        "create table t(x int); insert into t values (42)",
    );
    eventually(Duration::from_secs(30), "one streaming replica", || async {
        psql(
            &pg1,
            &dir,
            "select count(*) from pg_stat_replication where state = 'streaming'",
        ) == "1"
    })
    .await;

    let killed = Instant::now();
    kill_node(&pg1);
    eventually(Duration::from_secs(60), "pg2 takes over", || async {
        leader().await == "pg2"
    })
    .await;
    let key_moved = killed.elapsed();
    eventually(Duration::from_secs(20), "DNS master follows", || async {
        srv_ports(dns, "master").await == [pg2.pg_port]
    })
    .await;
    let dns_moved = killed.elapsed();
    eprintln!("patroni failover: leader key after {key_moved:?}, DNS master after {dns_moved:?} (session TTL 10 s, invalidated at 2x)");
    assert!(
        key_moved < Duration::from_secs(35),
        "failover took {key_moved:?}"
    );
    eventually(
        Duration::from_secs(20),
        "the row is readable on pg2",
        || async { psql(&pg2, &dir, "select x from t") == "42" },
    )
    .await;

    kill_node(&pg2);
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}
