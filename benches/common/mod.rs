//! Helpers shared by the benchmarks that measure a whole process.
//! Each bench compiles this module on its own and uses only some of it.

#![allow(dead_code)]

/// Resident set size of this process, in MiB (Linux).
pub(crate) fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line");
    kb / 1024.0
}

/// Runs this bench binary again with `env` set (so it plays a peer in its
/// own process, whose memory and CPU are not counted), and reads the
/// address it prints first.
pub(crate) fn spawn_peer(env: &str) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"))
        .env(env, "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the peer");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("the peer prints its address");
    let addr = line.trim().parse().expect("an address");
    (child, addr)
}
