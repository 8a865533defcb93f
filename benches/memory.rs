//! Memory for 100,000 instances: resident set size of a signpost whose
//! registry holds 20,000 services × 5 instances, each on its own node,
//! with every answer set built. `cargo bench --bench memory`.

#![allow(clippy::unwrap_used)]

mod common;

use common::rss_mib;

use signpost::registry::{Check, CheckKind, Health, Instance, Node, Source, Weights};
use signpost::{Config, Signpost};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory: run with `cargo bench --bench memory`");
        return;
    }
    let services: usize = std::env::var("BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // Instances per service: 5 unless BENCH_PER_SERVICE says otherwise
    // (issue 29's million is 100,000 services × 10).
    let per: usize = std::env::var("BENCH_PER_SERVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Instances per node: 1 (the worst case, as the load benchmark's data)
    // unless BENCH_PER_NODE says more.
    let per_node: usize = std::env::var("BENCH_PER_NODE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // BENCH_CHECKS=1: a TTL check on every instance, as most deployments
    // have; the health supervisor runs them (a clock each, on one timer).
    let checks = std::env::var_os("BENCH_CHECKS").is_some();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let signpost = Signpost::start(Config::ephemeral()).await.unwrap();
        // BENCH_REGISTRY_ONLY: the registry without answer sets, to see
        // which side the memory is on.
        let registry = if std::env::var_os("BENCH_REGISTRY_ONLY").is_some() {
            signpost::registry::Registry::new(std::sync::Arc::new(()))
        } else {
            signpost.registry.clone()
        };
        let before = rss_mib();
        let started = std::time::Instant::now();
        for s in 0..services {
            registry.write(|t| {
                for i in 0..per {
                    let n = (s * per + i) / per_node + 1;
                    let node = format!("n{n}");
                    let address =
                        format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, (n & 255).max(1));
                    t.upsert_node(Node::new(node.clone(), address, "dc1".into(), Source::Api));
                    if checks {
                        t.upsert_check(Check {
                            node: node.clone(),
                            id: format!("service:s{s}-{i}"),
                            name: format!("Service 's{s}' check"),
                            status: Health::Passing,
                            output: String::new(),
                            notes: String::new(),
                            service_id: Some(format!("s{s}-{i}")),
                            service_name: format!("s{s}"),
                            kind: CheckKind::Ttl {
                                ttl: std::time::Duration::from_secs(30),
                            },
                            thresholds: Default::default(),
                            source: Source::Api,
                            create_index: 0,
                            modify_index: 0,
                        });
                    }
                    t.upsert_instance(Instance {
                        node: node.into(),
                        id: format!("s{s}-{i}").into(),
                        name: format!("s{s}").into(),
                        tags: ["v1".into(), "primary".into()].into(),
                        address: "".into(),
                        port: 8080,
                        weights: Weights::default(),
                        enable_tag_override: false,
                        extra: Default::default(),
                        source: Source::Api,
                        create_index: 0,
                        modify_index: 0,
                    });
                }
            });
        }
        let took = started.elapsed();
        // The health supervisor picks the checks up from the registry's
        // change stream: measure once it holds them all (bounded wait).
        let total = services * per;
        for _ in 0..600 {
            if !checks || signpost.health.running() >= total {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let after = rss_mib();
        let live = LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0;
        let with = if checks { ", a TTL check each" } else { "" };
        println!("memory: {total} instances ({services} services x {per}, 2 tags each, {per_node} per node{with})");
        println!("  loaded in      {:.2} s ({} registry writes)", took.as_secs_f64(), services);
        println!("  RSS            {before:.1} MiB empty, {after:.1} MiB loaded");
        println!("  heap asked for {live:.1} MiB");
        println!("  per instance   {:.2} KiB", (after - before) * 1024.0 / total as f64);
        if checks {
            // What running the checks holds beyond the registry's records
            // of them: the heap freed when the health checks stop.
            signpost.health.shutdown().await;
            let stopped = LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1048576.0;
            println!(
                "  checks' runner {:.1} MiB of heap ({:.0} B per check)",
                live - stopped,
                (live - stopped) * 1048576.0 / total as f64
            );
        }
        signpost.shutdown().await;
    });
}

/// mimalloc, as the binary uses, counting the bytes asked for: the gap
/// between that and RSS is allocator rounding and free pages.
struct Counting;
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
// SAFETY: every call is passed on unchanged to mimalloc, a GlobalAlloc.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;
signpost::configure_allocator!();
