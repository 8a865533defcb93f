//! The write path under faults: a full disk, a damaged store, a changed
//! node name, kill -9. Each test attacks the real binary over real sockets.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::cli::{run_binary, signpost, Running};
use crate::support::*;

/// A tmpfs of `size` mounted for one test; unmounted when dropped. `None`
/// (and the test skips, saying so) where mounting is not allowed.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            missing_tool(
                "mount (as root)",
                "nothing: run the suite as root",
                "a tmpfs to fill",
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Fills the file system `dir` is on; returns the filler's path.
fn fill(dir: &Path) -> PathBuf {
    {
        use std::io::Write;
        let path = dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn dns_rcode(srv: &Running, name: &str) -> (ResponseCode, usize) {
    let m = query(srv.dns, Via::Udp, name, RecordType::A).await;
    (m.metadata.response_code, m.answers.len())
}

/// Whether service `name` is in the catalog over HTTP.
async fn in_catalog(srv: &Running, name: &str) -> bool {
    let r = http(
        "GET",
        &format!("http://{}/v1/catalog/service/{name}", srv.http),
        None,
    )
    .await;
    assert_eq!(r.status, 200);
    r.json().as_array().is_some_and(|a| !a.is_empty())
}

#[derive(Default, Debug)]
struct Outcomes {
    acked: Vec<String>,
    refused: Vec<String>,
    kv_acked: Vec<String>,
    kv_refused: Vec<String>,
}

/// Eight writers register services and put KV keys while the disk fills
/// up under them. Every acknowledged write is visible (HTTP and DNS) and
/// survives kill -9; every refused one is visible nowhere, then or after;
/// once space is back, writes succeed again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_change_nothing_and_writes_recover_when_space_is_back() {
    // Big enough that the store cannot fill it before the filler does (a
    // release build writes tens of MiB/s): the filler must hold the space
    // that removing it gives back.
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let data = fs.path().join("data");
    let data_arg = data.to_str().unwrap().to_string();
    let mut srv = run_binary(&["--data-dir", &data_arg, "--node", "n1"]);
    let base = format!("http://{}", srv.http);
    let out = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..8 {
        let (base, out, stop) = (base.clone(), out.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let pad = "x".repeat(1500);
            for i in 0..400 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let name = format!("s{t}x{i}");
                let body = format!(
                    r#"{{"Name":"{name}","Address":"10.1.{t}.{}","Port":80,"Meta":{{"pad":"{pad}"}}}}"#,
                    i % 250 + 1
                );
                let r = http("PUT", &format!("{base}/v1/agent/service/register"), Some(&body)).await;
                match r.status {
                    200 => out.lock().unwrap().acked.push(name.clone()),
                    500..=599 => {
                        assert!(r.body.starts_with("cannot store the change:"), "{}", r.body);
                        assert_eq!(r.body.trim_end().lines().count(), 1, "one line: {}", r.body);
                        out.lock().unwrap().refused.push(name.clone())
                    }
                    s => panic!("register {name}: {s} {}", r.body),
                }
                if i % 4 == 0 {
                    let key = format!("cfg/{name}");
                    let r = http("PUT", &format!("{base}/v1/kv/{key}"), Some(&"v".repeat(8000))).await;
                    match r.status {
                        200 => out.lock().unwrap().kv_acked.push(key),
                        500..=599 => out.lock().unwrap().kv_refused.push(key),
                        s => panic!("kv put {key}: {s} {}", r.body),
                    }
                }
            }
        }));
    }
    eventually(Duration::from_secs(20), "writes acknowledged", || {
        let out = out.clone();
        async move { out.lock().unwrap().acked.len() >= 20 }
    })
    .await;
    let fs_for_fill = fs.path().to_path_buf();
    let filler = tokio::task::spawn_blocking(move || fill(&fs_for_fill))
        .await
        .unwrap();
    // Let the writers run into the full disk for a while.
    eventually(Duration::from_secs(20), "a write is refused", || {
        let out = out.clone();
        async move { !out.lock().unwrap().refused.is_empty() }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Smaller writes may still fit in pages the store had free; a large
    // value cannot, and while the store refuses, /ready says so.
    let big = "b".repeat(400 << 10);
    let r = http("PUT", &format!("{base}/v1/kv/big"), Some(&big)).await;
    assert_eq!(r.status, 500, "{}", r.body);
    assert_eq!(
        http("GET", &format!("{base}/v1/kv/big"), None).await.status,
        404
    );
    let ready = http("GET", &format!("{base}/ready"), None).await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("store refuses writes"),
        "{}",
        ready.body
    );
    let metrics = http("GET", &format!("{base}/metrics"), None).await.body;
    assert!(metrics.contains("signpost_store_degraded 1"), "{metrics}");

    let index_before = http("GET", &format!("{base}/v1/catalog/services"), None)
        .await
        .index;
    // A deregistration on the full disk: refused and nothing changes, or
    // done and gone everywhere; never half.
    let victim = out.lock().unwrap().acked[0].clone();
    let r = http(
        "PUT",
        &format!("{base}/v1/agent/service/deregister/{victim}"),
        None,
    )
    .await;
    let victim_gone = match r.status {
        200 => true,
        500..=599 => false,
        s => panic!("deregister: {s} {}", r.body),
    };
    assert_eq!(in_catalog(&srv, &victim).await, !victim_gone);
    let (rcode, _) = dns_rcode(&srv, &format!("{victim}.service.consul.")).await;
    assert_eq!(rcode == ResponseCode::NXDomain, victim_gone);
    if !victim_gone {
        let index_after = http("GET", &format!("{base}/v1/catalog/services"), None)
            .await
            .index;
        assert_eq!(index_before, index_after, "a refused write moves no index");
    }

    let check_all = |srv: &Running| {
        let o = out.lock().unwrap();
        (
            o.acked.clone(),
            o.refused.clone(),
            o.kv_acked.clone(),
            o.kv_refused.clone(),
            srv.http,
        )
    };
    let (acked, refused, kv_acked, kv_refused, _) = check_all(&srv);
    assert!(
        !acked.is_empty() && !refused.is_empty(),
        "{acked:?} {refused:?}"
    );
    for name in &refused {
        assert!(!in_catalog(&srv, name).await, "refused {name} is readable");
        let (rcode, _) = dns_rcode(&srv, &format!("{name}.service.consul.")).await;
        assert_eq!(rcode, ResponseCode::NXDomain, "refused {name} is in DNS");
    }
    for name in acked.iter().filter(|n| **n != victim) {
        let (rcode, n) = dns_rcode(&srv, &format!("{name}.service.consul.")).await;
        assert_eq!((rcode, n), (ResponseCode::NoError, 1), "acked {name}");
    }
    for key in &kv_refused {
        let r = http("GET", &format!("{base}/v1/kv/{key}"), None).await;
        assert_eq!(r.status, 404, "refused KV {key} is readable");
    }

    // Space back: writes succeed again without a restart.
    std::fs::remove_file(&filler).unwrap();
    let body = r#"{"Name":"after-space","Port":80}"#;
    eventually(
        Duration::from_secs(10),
        "a write succeeds once space is back",
        || async {
            http(
                "PUT",
                &format!("{base}/v1/agent/service/register"),
                Some(body),
            )
            .await
            .status
                == 200
        },
    )
    .await;
    eventually(Duration::from_secs(10), "/ready recovers", || async {
        http("GET", &format!("{base}/ready"), None).await.status == 200
    })
    .await;

    // kill -9, restart: acknowledged writes are back, refused ones are not.
    srv.child.kill().unwrap();
    srv.child.wait().unwrap();
    let srv = run_binary(&["--data-dir", &data_arg, "--node", "n1"]);
    let base = format!("http://{}", srv.http);
    assert!(in_catalog(&srv, "after-space").await);
    for name in acked.iter().filter(|n| **n != victim) {
        assert!(in_catalog(&srv, name).await, "acked {name} lost in restart");
    }
    assert_eq!(in_catalog(&srv, &victim).await, !victim_gone);
    for name in &refused {
        assert!(!in_catalog(&srv, name).await, "refused {name} came back");
    }
    for key in &kv_acked {
        assert_eq!(
            http("GET", &format!("{base}/v1/kv/{key}"), None)
                .await
                .status,
            200
        );
    }
    for key in &kv_refused {
        assert_eq!(
            http("GET", &format!("{base}/v1/kv/{key}"), None)
                .await
                .status,
            404
        );
    }
}

/// A restart under another --node keeps serving the agent registrations:
/// they move to the new name, and the log says so at warn with counts.
#[tokio::test]
async fn agent_registrations_follow_a_renamed_node() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let srv = run_binary(&["--data-dir", &dir, "--node", "old-host"]);
    for i in 0..3 {
        let body = format!(
            r#"{{"ID":"api{i}","Name":"api","Port":{},"Check":{{"TTL":"30s","Status":"passing"}}}}"#,
            8000 + i
        );
        let url = format!("http://{}/v1/agent/service/register", srv.http);
        assert_eq!(http("PUT", &url, Some(&body)).await.status, 200);
    }
    drop(srv);
    let srv = run_binary(&["--data-dir", &dir, "--node", "new-host"]);
    let r = http(
        "GET",
        &format!("http://{}/v1/catalog/service/api", srv.http),
        None,
    )
    .await;
    let nodes: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Node"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(nodes, ["new-host", "new-host", "new-host"], "{}", r.body);
    let m = query(srv.dns, Via::Udp, "api.service.consul.", RecordType::SRV).await;
    assert_eq!(m.answers.len(), 3);
    let log = srv.log.lock().unwrap().join("\n");
    assert!(
        log.contains("WARN")
            && log.contains("instances=3")
            && log.contains("checks=3")
            && log.contains("\"old-host\" to \"new-host\""),
        "{log}"
    );
    drop(srv);
    // The same name again: nothing moves, nothing logged.
    let srv = run_binary(&["--data-dir", &dir, "--node", "new-host"]);
    assert!(in_catalog(&srv, "api").await);
    assert!(!srv
        .log
        .lock()
        .unwrap()
        .join("\n")
        .contains("node name changed"));
}

/// Starts the binary on `dir` and returns its exit status and stderr, or
/// None when it came up (and was stopped).
fn start_outcome(dir: &Path, extra: &[&str]) -> Option<(i32, String)> {
    use std::io::{BufRead, Read};
    let mut child = signpost()
        .args(["--dns", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--log-level", "info"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let came_up = stdout
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("serving HTTP on"));
    if came_up {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    Some((status.code().unwrap_or(-1), err))
}

/// An empty file, a bad header, a damaged page: each stops startup with
/// the file and the reason (never a panic, never an empty start), unless
/// --move-damaged-store moves the file aside.
#[tokio::test]
async fn a_damaged_store_never_starts_silently_empty_and_never_panics() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("signpost.redb");

    std::fs::write(&file, b"").unwrap();
    let (code, err) = start_outcome(data.path(), &[]).expect("refuses to start");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("signpost.redb") && err.contains("empty (0 bytes)"),
        "{err}"
    );
    assert!(err.contains("--move-damaged-store"), "{err}");
    assert_eq!(
        err.matches("empty (0 bytes)").count(),
        1,
        "said once: {err}"
    );

    std::fs::write(&file, vec![0x42u8; 8192]).unwrap();
    let (code, err) = start_outcome(data.path(), &[]).expect("refuses to start");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("signpost.redb") && err.contains("cannot open"),
        "{err}"
    );

    // Moved aside, kept, and the server starts empty.
    assert!(start_outcome(data.path(), &["--move-damaged-store"]).is_none());
    let aside: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("signpost.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), vec![0x42u8; 8192]);

    // A real store with data, cleanly closed, then one page at a time
    // overwritten with garbage: every start either serves the data or
    // refuses with a reason; none panics (exit 101) or starts empty.
    let good = tempfile::tempdir().unwrap();
    let dir = good.path().to_str().unwrap().to_string();
    let srv = run_binary(&["--data-dir", &dir]);
    for i in 0..30 {
        let body = format!(r#"{{"ID":"w{i}","Name":"web","Port":80,"Meta":{{"i":"{i}"}}}}"#);
        let url = format!("http://{}/v1/agent/service/register", srv.http);
        assert_eq!(http("PUT", &url, Some(&body)).await.status, 200);
    }
    let mut child = srv;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.child.id() as i32, libc::SIGTERM) };
    child.child.wait().unwrap();
    let pristine = std::fs::read(good.path().join("signpost.redb")).unwrap();
    let pages = pristine.len() / 4096;
    let work = tempfile::tempdir().unwrap();
    let (mut refused, mut served) = (0, 0);
    for page in (0..pages).step_by((pages / 24).max(1)) {
        let mut bytes = pristine.clone();
        for b in &mut bytes[page * 4096..((page + 1) * 4096).min(pristine.len())] {
            *b = 0xA5;
        }
        std::fs::write(work.path().join("signpost.redb"), &bytes).unwrap();
        match start_outcome(work.path(), &[]) {
            Some((code, err)) => {
                assert_eq!(code, 1, "page {page}: exit {code}: {err}");
                assert!(err.contains("signpost.redb"), "page {page}: {err}");
                assert!(!err.contains("panicked"), "page {page}: {err}");
                refused += 1;
            }
            None => {
                // It came up: with every registration, not fewer.
                let srv = run_binary(&["--data-dir", work.path().to_str().unwrap()]);
                let r = http(
                    "GET",
                    &format!("http://{}/v1/catalog/service/web", srv.http),
                    None,
                )
                .await;
                assert_eq!(
                    r.json().as_array().map(|a| a.len()),
                    Some(30),
                    "page {page}"
                );
                served += 1;
            }
        }
    }
    eprintln!("damaged pages: {refused} refused, {served} served intact");
    assert!(refused > 0, "some page damage must be noticed");
}

/// A store of 150 agent registrations and 150 KV keys written by the real
/// binary, then closed cleanly (SIGTERM) or killed (SIGKILL).
async fn small_store(kill: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let srv = run_binary(&["--data-dir", dir.path().to_str().unwrap()]);
    for i in 0..150 {
        let body = format!(r#"{{"ID":"w{i}","Name":"web","Port":80,"Tags":["t{i}"]}}"#);
        let url = format!("http://{}/v1/agent/service/register", srv.http);
        assert_eq!(http("PUT", &url, Some(&body)).await.status, 200);
        let url = format!("http://{}/v1/kv/k{i}", srv.http);
        assert_eq!(http("PUT", &url, Some(&"v".repeat(100))).await.status, 200);
    }
    let mut srv = srv;
    let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
    // SAFETY: signalling our own child.
    unsafe { libc::kill(srv.child.id() as i32, signal) };
    srv.child.wait().unwrap();
    std::fs::read(dir.path().join("signpost.redb")).unwrap()
}

/// Every page of a small store damaged in turn, three ways (zeros, random
/// bytes, one flipped bit), for a cleanly closed and a killed store, opened
/// by the store's own loader: each either loads every registration and
/// key, or is refused naming the file. Never a panic out of redb, never a
/// start with less (redb's roll-back to an older commit included).
#[test]
fn every_damaged_page_is_refused_or_loads_whole() {
    use signpost::registry::store::Damaged;
    use signpost::registry::Store;
    let rt = tokio::runtime::Runtime::new().unwrap();
    for kill in [false, true] {
        let pristine = rt.block_on(small_store(kill));
        let pages = pristine.len() / 4096;
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut refused, mut whole) = (0, 0);
        for how in ["zeros", "random", "bit flip"] {
            for page in 0..pages {
                let mut bytes = pristine.clone();
                let span = page * 4096..(page + 1) * 4096;
                match how {
                    "zeros" => bytes[span].fill(0),
                    "random" => bytes[span].iter_mut().for_each(|b| *b = rng.u8(..)),
                    _ => bytes[page * 4096 + rng.usize(..4096)] ^= 1 << rng.u8(..8),
                }
                let work = tempfile::tempdir().unwrap();
                std::fs::write(work.path().join("signpost.redb"), &bytes).unwrap();
                let what = format!("{how} on page {page} of {pages} (killed: {kill})");
                let loaded =
                    std::panic::catch_unwind(|| Store::open_and_load(work.path(), Damaged::Refuse))
                        .unwrap_or_else(|_| panic!("{what}: a panic escaped the store"));
                match loaded {
                    Ok((_, saved)) => {
                        assert_eq!(saved.instances.len(), 150, "{what}: instances");
                        assert_eq!(saved.kv.len(), 150, "{what}: keys");
                        whole += 1;
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("signpost.redb"), "{what}: {e}");
                        refused += 1;
                    }
                }
            }
        }
        eprintln!("killed: {kill}: {pages} pages x 3: {refused} refused, {whole} loaded whole");
        assert!(refused > 0, "some damage must be noticed");
    }
}

/// A blocking query on a service that is deregistered wakes with an index
/// past the one it held, though the registry keeps nothing per name gone.
#[tokio::test]
async fn blocking_queries_see_a_deregistration() {
    let srv = TestServer::start(None).await;
    let reg = srv.url("/v1/agent/service/register");
    assert_eq!(
        http("PUT", &reg, Some(r#"{"Name":"gone","Port":1}"#))
            .await
            .status,
        200
    );
    let r = http("GET", &srv.url("/v1/health/service/gone"), None).await;
    let held = r.index.unwrap();
    let url = srv.url(&format!("/v1/health/service/gone?index={held}&wait=10s"));
    let waiter = tokio::spawn(async move { http("GET", &url, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        http("PUT", &srv.url("/v1/agent/service/deregister/gone"), None)
            .await
            .status,
        200
    );
    let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("woke")
        .unwrap();
    assert!(woke.index.unwrap() > held);
    assert_eq!(woke.body.trim(), "[]");
    srv.stop().await;
}

/// kill -9 in the middle of concurrent writes, eight times over one data
/// dir: every restart comes up (a crash is never taken for damage) with
/// every write that was acknowledged before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_write_always_restarts_with_every_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap().to_string();
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    for round in 0..8 {
        let mut srv = run_binary(&["--data-dir", &dir]);
        let base = format!("http://{}", srv.http);
        let keys = http("GET", &format!("{base}/v1/kv/?keys"), None).await;
        let have: std::collections::HashSet<String> = if keys.status == 404 {
            Default::default()
        } else {
            serde_json::from_str(&keys.body).unwrap()
        };
        for k in acked.lock().unwrap().iter() {
            assert!(have.contains(k), "round {round}: acknowledged {k} lost");
        }
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..8 {
            let (base, acked) = (base.clone(), acked.clone());
            writers.spawn(async move {
                let client = reqwest::Client::new();
                for i in 0..10_000 {
                    let key = format!("r{round}/w{w}/{i}");
                    let sent = client
                        .put(format!("{base}/v1/kv/{key}"))
                        .body("x".repeat(200))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => acked.lock().unwrap().push(key),
                        _ => return,
                    }
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(..300))).await;
        srv.child.kill().unwrap();
        srv.child.wait().unwrap();
        while writers.join_next().await.is_some() {}
    }
    let srv = run_binary(&["--data-dir", &dir]);
    let keys = http("GET", &format!("http://{}/v1/kv/?keys", srv.http), None).await;
    let have: std::collections::HashSet<String> = serde_json::from_str(&keys.body).unwrap();
    let acked = acked.lock().unwrap();
    assert!(acked.len() > 100, "writes were made: {}", acked.len());
    assert!(
        acked.iter().all(|k| have.contains(k)),
        "every acknowledged write kept"
    );
}
