//! Query bytes in → response bytes out, in process: the cost of the DNS
//! handler alone, against a registry of 1,000 services × 5 instances (the
//! load benchmark's data), plus one service of 5,000 instances answered
//! over TCP to show that answer cost does not grow with what is registered;
//! and the same three-record answer as the catalog grows from 10,000 to
//! 1,000,000 instances in total and from 5 to 5,000 per service
//! (`cargo bench --bench answer -- scale`).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::str::FromStr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use signpost::dns::answers::Answers;
use signpost::dns::handler::{Handler, Outcome, Scratch};
use signpost::dns::wire::Transport;
use signpost::registry::query::PreparedQuery;
use signpost::registry::{Instance, Node, Registry, Source, Txn, Weights};
use signpost::Config;

const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn addr(n: usize) -> String {
    format!(
        "10.{}.{}.{}",
        (n >> 16) & 255,
        (n >> 8) & 255,
        (n & 255).max(1)
    )
}

fn node(name: String, address: String) -> Node {
    Node::new(name, address, "dc1".into(), Source::File)
}

fn instance(node: &str, id: String, name: &str, port: u16) -> Instance {
    Instance {
        node: node.into(),
        id: id.into(),
        name: name.into(),
        tags: ["v1".into()].into(),
        address: "".into(),
        port,
        weights: Weights::default(),
        enable_tag_override: false,
        extra: Default::default(),
        source: Source::File,
        create_index: 0,
        modify_index: 0,
    }
}

/// A handler over a registry that `fill` writes.
fn handler_with(fill: impl FnOnce(&mut Txn<'_>)) -> Handler {
    let mut config = Config::ephemeral();
    config.node = "bench".into();
    let answers = Arc::new(Answers::new(config.answer_config()));
    let registry = Registry::new(answers.clone());
    registry.write(fill);
    Handler::new(answers, Vec::new(), None)
}

fn handler() -> Handler {
    handler_with(|txn| {
        for i in 0..1000 {
            for k in 0..5 {
                let n = format!("n{i}-{k}");
                txn.upsert_node(node(n.clone(), addr(i * 5 + k + 1)));
                txn.upsert_instance(instance(
                    &n,
                    format!("s{i}-{n}"),
                    &format!("s{i}"),
                    8080 + k as u16,
                ));
            }
        }
        for k in 0..5000 {
            let n = format!("big-{k}");
            txn.upsert_node(node(n.clone(), addr(100_000 + k)));
            txn.upsert_instance(instance(&n, format!("big-{k}"), "big", 9000));
        }
    })
}

/// A handler over `services` services of `per` instances each, ten
/// instances to a node, plus one service `probe` of `probe_size`.
fn catalog(services: usize, per: usize, probe_size: usize) -> Handler {
    handler_with(|txn| {
        let mut place = |k: usize, id: String, name: &str| {
            let n = format!("n{}", k / 10);
            if k.is_multiple_of(10) {
                txn.upsert_node(node(n.clone(), addr(k / 10 + 1)));
            }
            txn.upsert_instance(instance(&n, id, name, 8080));
        };
        for s in 0..services {
            for i in 0..per {
                place(s * per + i, format!("s{s}-{i}"), &format!("s{s}"));
            }
        }
        for i in 0..probe_size {
            place(services * per + i, format!("probe-{i}"), "probe");
        }
    })
}

/// The same answer (three A records: Consul's `udp_answer_limit` without
/// EDNS) from catalogs of growing size, and from services of growing size:
/// a query's cost must follow what it writes, not what is registered.
fn scale(c: &mut Criterion) {
    let mut group = c.benchmark_group("scale");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(std::time::Duration::from_secs(3));
    let q = query("probe.service.consul.", RecordType::A, false);
    let cases = [
        ("total 10,000, 10 per service", 999, 10, 10),
        ("total 100,000, 10 per service", 9_999, 10, 10),
        ("total 1,000,000, 10 per service", 99_999, 10, 10),
        ("total 100,000, 5 per service", 9_999, 10, 5),
        ("total 100,000, 50 per service", 9_995, 10, 50),
        ("total 100,000, 500 per service", 9_950, 10, 500),
        ("total 100,000, 5,000 per service", 9_500, 10, 5_000),
    ];
    let mut out = Vec::with_capacity(65535);
    let mut scratch = Scratch::default();
    for (name, services, per, probe) in cases {
        let h = catalog(services, per, probe);
        assert_eq!(
            h.handle(&q, Transport::Udp, CLIENT, &mut out, &mut scratch),
            Outcome::Reply
        );
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 3, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                h.handle(
                    black_box(&q),
                    Transport::Udp,
                    CLIENT,
                    &mut out,
                    &mut scratch,
                );
                black_box(out.len())
            })
        });
    }
    group.finish();
}

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 4242;
    m.add_query(Query::query(Name::from_str(name).unwrap(), rtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let h = handler();
    let mut out = Vec::with_capacity(65535);
    let mut scratch = Scratch::default();
    let mut group = c.benchmark_group("handle");
    group.throughput(Throughput::Elements(1));
    let cases = [
        (
            "A",
            query("s500.service.consul.", RecordType::A, true),
            Transport::Udp,
        ),
        (
            "SRV",
            query("s500.service.consul.", RecordType::SRV, true),
            Transport::Udp,
        ),
        (
            "rfc2782_SRV",
            query("_s500._tcp.service.consul.", RecordType::SRV, true),
            Transport::Udp,
        ),
        (
            "tag_A",
            query("v1.s500.service.consul.", RecordType::A, true),
            Transport::Udp,
        ),
        (
            "NXDOMAIN",
            query("missing7.service.consul.", RecordType::A, true),
            Transport::Udp,
        ),
        (
            "A_no_edns",
            query("s500.service.consul.", RecordType::A, false),
            Transport::Udp,
        ),
        // The same three answers (udp_answer_limit) out of 5,000 instances.
        (
            "A_no_edns_5000_instances",
            query("big.service.consul.", RecordType::A, false),
            Transport::Udp,
        ),
        (
            "5_instances_SRV_tcp",
            query("s7.service.consul.", RecordType::SRV, false),
            Transport::Tcp,
        ),
        (
            "5000_instances_SRV_tcp",
            query("big.service.consul.", RecordType::SRV, false),
            Transport::Tcp,
        ),
        (
            "5000_instances_A_udp",
            query("big.service.consul.", RecordType::A, true),
            Transport::Udp,
        ),
    ];
    for (name, q, transport) in &cases {
        assert_eq!(
            h.handle(q, *transport, CLIENT, &mut out, &mut scratch),
            Outcome::Reply,
            "{name}"
        );
        group.bench_function(*name, |b| {
            b.iter(|| {
                h.handle(black_box(q), *transport, CLIENT, &mut out, &mut scratch);
                black_box(out.len())
            })
        });
    }
    group.finish();
}

/// A write to one instance of a service of N instances, with the answer
/// sets rebuilt for it: what a registration, a health flip or a Docker
/// event costs as services grow.
fn write(c: &mut Criterion) {
    let mut group = c.benchmark_group("write one instance");
    group.sample_size(20);
    for n in [5usize, 500, 5000] {
        let config = Config::ephemeral();
        let answers = Arc::new(Answers::new(config.answer_config()));
        let registry = Registry::new(answers);
        registry.write(|txn| {
            for k in 0..n {
                let name = format!("w-{k}");
                txn.upsert_node(node(name.clone(), addr(k + 1)));
                txn.upsert_instance(instance(&name, format!("w-{k}"), "w", 9000));
            }
        });
        let mut port = 9000u16;
        group.bench_function(format!("of {n}"), |b| {
            b.iter(|| {
                port = if port == 9000 { 9001 } else { 9000 };
                registry.write(|txn| txn.upsert_instance(instance("w-0", "w-0".into(), "w", port)));
            })
        });
    }
    group.finish();
}

/// A write to one instance among 5,000 services (one instance each) that
/// 1,000 plain prepared queries search: what the queries add to a change.
fn write_with_queries(c: &mut Criterion) {
    let mut group = c.benchmark_group("write one instance");
    group.sample_size(20);
    let config = Config::ephemeral();
    let answers = Arc::new(Answers::new(config.answer_config()));
    let registry = Registry::new(answers);
    registry.write(|txn| {
        for k in 0..5000 {
            let name = format!("q-{k}");
            txn.upsert_node(node(name.clone(), addr(k + 1)));
            txn.upsert_instance(instance(&name, name.clone(), &format!("qs{k}"), 9000));
        }
        for q in 0..1000 {
            txn.upsert_query(PreparedQuery {
                id: format!("00000000-0000-0000-0000-{q:012}"),
                name: format!("query{q}"),
                session: String::new(),
                definition: serde_json::json!({"Service": {"Service": format!("qs{}", q * 5)}}),
                create_index: 0,
                modify_index: 0,
            });
        }
    });
    let mut port = 9000u16;
    group.bench_function(
        "of 1 among 5,000 services and 1,000 prepared queries",
        |b| {
            b.iter(|| {
                port = if port == 9000 { 9001 } else { 9000 };
                registry
                    .write(|txn| txn.upsert_instance(instance("q-0", "q-0".into(), "qs0", port)));
            })
        },
    );
    group.finish();
}

criterion_group!(benches, bench, write, write_with_queries, scale);
criterion_main!(benches);
