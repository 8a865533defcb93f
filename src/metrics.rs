//! Prometheus metrics, served at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per running signpost (prometheus-client's registries are
//! values, not process globals, so servers in one test process keep their
//! numbers apart). Counters are atomics: cheap enough to touch on the
//! query path.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `result="passing"` and the like.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// `status="critical"` and the like.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub dns: Arc<DnsStats>,
    /// Health check runs by result.
    pub check_runs: Family<ResultLabel, Counter>,
    /// Set at scrape time from the registry.
    pub services: Gauge,
    pub instances: Gauge,
    pub checks: Family<StatusLabel, Gauge>,
    pub change_index: Gauge,
    /// From a Consul blocking response arriving to its change answering
    /// in DNS.
    pub consul_change_to_dns: Histogram,
    pub consul_requests: Counter,
    pub consul_errors: Counter,
    /// Seconds since the Consul agent last answered; set at scrape time.
    pub consul_staleness: Gauge<f64, AtomicU64>,
    /// 1 once the first full sync from Consul is done.
    pub consul_synced: Gauge,
    /// User events fired, and those pushed out of the bounded event list.
    pub events_fired: Counter,
    pub events_dropped: Counter,
    /// The Docker source: connected (1/0), engine errors, container
    /// events applied, resyncs, and event-to-DNS lag.
    pub docker_connected: Gauge,
    pub docker_errors: Counter,
    pub docker_events: Counter,
    pub docker_resyncs: Counter,
    pub docker_event_to_dns: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("signpost");
        // 10 µs to ~1.3 s.
        let consul_change_to_dns = Histogram::new(exponential_buckets(0.00001, 2.0, 18));
        let consul_requests = Counter::default();
        let consul_errors = Counter::default();
        let consul_staleness = Gauge::<f64, AtomicU64>::default();
        let consul_synced = Gauge::default();
        registry.register(
            "consul_change_to_dns_seconds",
            "Time from a Consul blocking response arriving to its change being answered in DNS",
            consul_change_to_dns.clone(),
        );
        registry.register(
            "consul_requests",
            "HTTP requests made to the Consul agent",
            consul_requests.clone(),
        );
        registry.register(
            "consul_errors",
            "Consul agent requests that failed (unreachable, 5xx, bad body)",
            consul_errors.clone(),
        );
        registry.register(
            "consul_staleness_seconds",
            "Seconds since the Consul agent last answered (0 before the first contact)",
            consul_staleness.clone(),
        );
        registry.register(
            "consul_synced",
            "1 once the first full sync from Consul has completed",
            consul_synced.clone(),
        );
        let events_fired = Counter::default();
        let events_dropped = Counter::default();
        registry.register(
            "events_fired",
            "User events fired through /v1/event/fire",
            events_fired.clone(),
        );
        registry.register(
            "events_dropped",
            "User events pushed out of the bounded event list by newer ones",
            events_dropped.clone(),
        );
        let docker_connected = Gauge::default();
        let docker_errors = Counter::default();
        let docker_events = Counter::default();
        let docker_resyncs = Counter::default();
        let docker_event_to_dns = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        registry.register(
            "docker_connected",
            "1 while the Docker engine is followed, 0 while it is unreachable",
            docker_connected.clone(),
        );
        registry.register(
            "docker_errors",
            "Times the Docker engine was lost or unreachable",
            docker_errors.clone(),
        );
        registry.register(
            "docker_events",
            "Container events applied from the Docker engine",
            docker_events.clone(),
        );
        registry.register(
            "docker_resyncs",
            "Full resyncs from the Docker engine's container list",
            docker_resyncs.clone(),
        );
        registry.register(
            "docker_event_to_dns_seconds",
            "Time from a container event at the engine to its change answering in DNS",
            docker_event_to_dns.clone(),
        );
        let dns = Arc::new(DnsStats::default());
        registry.register_collector(Box::new(Arc::clone(&dns)));
        let check_runs = Family::<ResultLabel, Counter>::default();
        registry.register(
            "check_runs",
            "Health check runs by result",
            check_runs.clone(),
        );
        let services = Gauge::default();
        let instances = Gauge::default();
        let checks = Family::<StatusLabel, Gauge>::default();
        let change_index = Gauge::default();
        registry.register(
            "registry_services",
            "Services in the registry",
            services.clone(),
        );
        registry.register(
            "registry_instances",
            "Service instances in the registry",
            instances.clone(),
        );
        registry.register(
            "registry_checks",
            "Checks in the registry, by status",
            checks.clone(),
        );
        registry.register(
            "registry_change_index",
            "The registry's change index",
            change_index.clone(),
        );
        Metrics {
            registry,
            dns,
            check_runs,
            services,
            instances,
            checks,
            change_index,
            consul_change_to_dns,
            consul_requests,
            consul_errors,
            consul_staleness,
            consul_synced,
            events_fired,
            events_dropped,
            docker_connected,
            docker_errors,
            docker_events,
            docker_resyncs,
            docker_event_to_dns,
        }
    }

    /// Adds a component's collector (its stats, read at scrape time); the
    /// code that wires the server together calls this.
    pub fn register(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Per-query DNS statistics: plain atomics, written by the listeners on
/// every reply and read by a [`Collector`] at scrape time, so the query path
/// takes no lock.
#[derive(Debug, Default)]
pub struct DnsStats {
    queries: [[[AtomicU64; RCODES.len()]; QTYPES.len()]; 2],
    latency: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_ns: AtomicU64,
    truncated: AtomicU64,
    /// Queries sent upstream, and those every upstream failed.
    pub forwarded: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// Queries dropped unanswered because signpost was overloaded.
    pub shed: AtomicU64,
    /// Answers to untrusted clients without a valid cookie that response
    /// rate limiting dropped, or sent truncated (slip).
    pub rrl_dropped: AtomicU64,
    pub rrl_slipped: AtomicU64,
    /// Queries whose server cookie was not valid (BADCOOKIE).
    pub bad_cookies: AtomicU64,
}

const QTYPES: [(u16, &str); 9] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (255, "ANY"),
    (12, "PTR"),
    (16, "TXT"),
    (6, "SOA"),
    (2, "NS"),
    (0, "other"),
];
const RCODES: [&str; 9] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
    "dropped",
];
const TRANSPORTS: [&str; 2] = ["udp", "tcp"];
/// Powers of two from 1 µs: 1, 2, 4 … 2^21 µs (~2 s), then +Inf.
const LATENCY_BUCKETS: usize = 23;

use std::sync::atomic::Ordering;

use crate::locks::MutexExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;

impl DnsStats {
    /// Counts one reply (empty: dropped) that took `elapsed` to make.
    pub fn record(&self, tcp: bool, reply: &[u8], elapsed: std::time::Duration) {
        let (qtype, rcode) = classify_reply(reply);
        self.queries[usize::from(tcp)][qtype][rcode].fetch_add(1, Ordering::Relaxed);
        if reply.len() > 2 && reply[2] & 0x02 != 0 {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        let us = ns / 1000;
        let bucket = if us == 0 {
            0
        } else {
            (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
        };
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Replies counted so far, by (transport, qtype, rcode) names.
    pub fn count(&self, transport: &str, qtype: &str, rcode: &str) -> u64 {
        let t = TRANSPORTS.iter().position(|x| *x == transport);
        let q = QTYPES.iter().position(|(_, x)| *x == qtype);
        let r = RCODES.iter().position(|x| *x == rcode);
        match (t, q, r) {
            (Some(t), Some(q), Some(r)) => self.queries[t][q][r].load(Ordering::Relaxed),
            _ => 0,
        }
    }
}

/// (qtype index, rcode index) of a reply, read from its bytes.
fn classify_reply(reply: &[u8]) -> (usize, usize) {
    let other_type = QTYPES.len() - 1;
    if reply.len() < 12 {
        return (other_type, RCODES.len() - 1);
    }
    let mut rcode = (reply[3] & 0x0F) as usize;
    // Our OPT record is the last one: its extended rcode carries BADVERS.
    let n = reply.len();
    if n >= 23
        && reply[n - 11] == 0
        && reply[n - 10..n - 8] == [0, 41]
        && reply[n - 6] == 1
        && rcode == 0
    {
        rcode = 6;
    }
    let rcode = match rcode {
        0..=5 => rcode,
        6 => 6,
        _ => 7,
    };
    let mut pos = 12;
    let qtype = if reply[5] == 0 {
        None
    } else {
        loop {
            match reply.get(pos) {
                Some(0) => {
                    break reply
                        .get(pos + 1..pos + 3)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]))
                }
                Some(&l) if l < 64 => pos += 1 + l as usize,
                _ => break None,
            }
        }
    };
    let qtype = qtype
        .and_then(|t| QTYPES.iter().position(|(code, _)| *code == t))
        .unwrap_or(other_type);
    (qtype, rcode)
}

impl Collector for DnsStats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "dns_queries",
            "DNS queries answered, by query type, response code and transport",
            None,
            MetricType::Counter,
        )?;
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            for (q, (_, qtype)) in QTYPES.iter().enumerate() {
                for (r, rcode) in RCODES.iter().enumerate() {
                    let v = self.queries[t][q][r].load(Ordering::Relaxed);
                    if v > 0 {
                        let labels = [
                            ("qtype", *qtype),
                            ("rcode", *rcode),
                            ("transport", *transport),
                        ];
                        family
                            .encode_family(&labels)?
                            .encode_counter::<NoLabelSet, _, u64>(&v, None)?;
                    }
                }
            }
        }
        let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
            .map(|i| {
                let bound = if i == LATENCY_BUCKETS - 1 {
                    f64::MAX
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                (bound, self.latency[i].load(Ordering::Relaxed))
            })
            .collect();
        let count = buckets.iter().map(|b| b.1).sum();
        let sum = self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_descriptor(
                "dns_query_duration_seconds",
                "Time from reading a query to its reply (forwarded ones: with the upstream's answer; UDP replies are sent and timed in batches)",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        for (name, help, v) in [
            ("dns_truncated", "Replies sent with TC set", &self.truncated),
            (
                "dns_forwarded",
                "Queries sent to upstream resolvers",
                &self.forwarded,
            ),
            (
                "dns_upstream_failures",
                "Forwarded queries every upstream failed (SERVFAIL)",
                &self.upstream_failures,
            ),
            (
                "dns_shed",
                "Queries dropped unanswered under overload",
                &self.shed,
            ),
            (
                "dns_rrl_dropped",
                "Answers to rate-limited clients (untrusted, no valid cookie) dropped",
                &self.rrl_dropped,
            ),
            (
                "dns_rrl_slipped",
                "Answers to rate-limited clients sent empty with TC (slip)",
                &self.rrl_slipped,
            ),
            (
                "dns_bad_cookies",
                "Queries with an invalid server cookie, answered BADCOOKIE",
                &self.bad_cookies,
            ),
        ] {
            let v = v.load(Ordering::Relaxed);
            let c = prometheus_client::metrics::counter::ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)?;
        }
        Ok(())
    }
}

/// Lets a "limit reached" warning through at most once every 10 s: a flood
/// hits a limit thousands of times a second, and the counters say how often.
#[derive(Debug, Default)]
pub struct LogLimiter(std::sync::Mutex<Option<std::time::Instant>>);

impl LogLimiter {
    /// True at most once every 10 s.
    pub fn due(&self) -> bool {
        let mut last = self.0.locked();
        let due = last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10));
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }
}

/// One unlabelled counter, for a component's collector.
pub fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One unlabelled gauge, for a component's collector.
pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}
