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
    /// The HTTP listener's refusals and timeouts.
    pub http: Arc<crate::api::serve::HttpStats>,
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
        let http = Arc::new(crate::api::serve::HttpStats::default());
        registry.register_collector(Box::new(HttpCollector(Arc::clone(&http))));
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
            http,
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

/// The store's health and group commit, read from the registry's
/// [`StoreStatus`](crate::registry::StoreStatus) at scrape time.
#[derive(Debug)]
struct StoreCollector(Arc<crate::registry::StoreStatus>);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let degraded = i64::from(s.is_degraded());
        gauge(&mut encoder, "store_degraded", "1 while the store in --data-dir refuses writes (API writes get 5xx; reads and DNS go on)", degraded)?;
        let commit_seconds = s.commit_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_descriptor(
                "store_commit_seconds",
                "Time spent writing batches to the store, fsync included (divide by store_batches_total for the mean)",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&commit_seconds, None)?;
        for (name, help, value) in [
            (
                "store_failed_batches",
                "Batches of writes the store refused",
                &s.failed_batches,
            ),
            (
                "store_refused_writes",
                "API writes refused because the store refused them",
                &s.refused_writes,
            ),
            (
                "store_batches",
                "Batches written to the store (one fsync each)",
                &s.batches,
            ),
            (
                "store_batched_writes",
                "API writes carried by those batches (writes per batch: the group-commit factor)",
                &s.batched_writes,
            ),
        ] {
            counter(&mut encoder, name, help, value.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds the store's metrics (with `--data-dir`).
    pub fn watch_store(&mut self, status: Arc<crate::registry::StoreStatus>) {
        self.registry
            .register_collector(Box::new(StoreCollector(status)));
    }
}

/// Forwarding's bounds, read from the [`Forwarder`](crate::dns::forward::Forwarder)
/// at scrape time.
struct ForwardCollector(Arc<crate::dns::forward::Forwarder>);

impl std::fmt::Debug for ForwardCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardCollector")
    }
}

impl Collector for ForwardCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let f = &self.0;
        let in_flight = f.in_flight() as i64;
        gauge(
            &mut encoder,
            "forward_in_flight",
            "Forwarded queries waiting for an upstream now",
            in_flight,
        )?;
        for (name, help, v) in [
            (
                "forward_shed",
                "Forwarded queries dropped unanswered to admit newer ones (in-flight limit, total or per client)",
                f.shed(),
            ),
            (
                "forward_coalesced",
                "Forwarded questions that shared an identical question's upstream query",
                f.stats.coalesced.load(Ordering::Relaxed),
            ),
            (
                "forward_upstreams_down",
                "Forwarded questions answered SERVFAIL at once because every upstream was marked down",
                f.stats.upstreams_down.load(Ordering::Relaxed),
            ),
            (
                "forward_marked_down",
                "Times an upstream was marked down (failures in a row, or a refused connection)",
                f.stats.marked_down.load(Ordering::Relaxed),
            ),
            (
                "forward_timeouts",
                "Forwarded questions an upstream did not answer within recursor_timeout",
                f.stats.timeouts.load(Ordering::Relaxed),
            ),
        ] {
            counter(&mut encoder, name, help, v)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds forwarding's metrics (with upstream recursors).
    pub fn watch_forwarder(&mut self, forwarder: Arc<crate::dns::forward::Forwarder>) {
        self.registry
            .register_collector(Box::new(ForwardCollector(forwarder)));
    }
}

/// The DNS answer sets' template cache, read at scrape time.
struct AnswersCollector(Arc<crate::dns::answers::Answers>);

impl std::fmt::Debug for AnswersCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswersCollector")
    }
}

impl Collector for AnswersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "dns_template_cache_names",
            "Prepared-query template names whose answers are cached now",
            self.0.template_cache_len() as i64,
        )?;
        counter(
            &mut encoder,
            "dns_template_cache_cleared",
            "Times the template answer cache was full and cleared",
            self.0.template_sets_cleared.load(Ordering::Relaxed),
        )
    }
}

impl Metrics {
    /// Adds the answer sets' cache metrics.
    pub fn watch_answers(&mut self, answers: Arc<crate::dns::answers::Answers>) {
        self.registry
            .register_collector(Box::new(AnswersCollector(answers)));
    }
}

/// The HTTP listener's bounds, read at scrape time.
#[derive(Debug)]
struct HttpCollector(Arc<crate::api::serve::HttpStats>);

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let open = h.conns.open.load(Ordering::Relaxed) as i64;
        gauge(
            &mut encoder,
            "http_connections",
            "HTTP connections open now",
            open,
        )?;
        for (name, help, v) in [
            (
                "http_refused_connection_limit",
                "HTTP connections closed at the total connection limit to admit a new one (the biggest holder's idlest)",
                &h.conns.evicted_total,
            ),
            (
                "http_refused_per_client",
                "HTTP connections closed at a client's connection limit to admit its new one (its idlest, or the one waiting longest for headers)",
                &h.conns.evicted_per_client,
            ),
            (
                "http_refused_busy",
                "New HTTP connections closed at once: at a limit, every candidate had a request in progress",
                &h.conns.refused,
            ),
            (
                "http_timed_out",
                "HTTP connections cut: headers not sent in time, or idle past the idle timeout",
                &h.timed_out,
            ),
            (
                "http_accept_errors",
                "Failed accepts (out of file descriptors, memory); each backs off 100 ms",
                &h.accept_errors,
            ),
        ] {
            counter(&mut encoder, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

/// DNS over TCP's connection table, read at scrape time.
struct TcpCollector(Arc<crate::dns::tcp::TcpConns>);

impl std::fmt::Debug for TcpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpCollector")
    }
}

impl Collector for TcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.0.admission.stats;
        let open = t.open.load(Ordering::Relaxed) as i64;
        gauge(
            &mut encoder,
            "dns_tcp_connections",
            "DNS over TCP connections open now",
            open,
        )?;
        for (name, help, v) in [
            (
                "dns_tcp_evicted_idle",
                "DNS TCP connections closed (after any query they had sent) to admit a new one at the connection limit",
                &t.evicted_total,
            ),
            (
                "dns_tcp_evicted_per_client",
                "DNS TCP connections closed (after any query they had sent) to admit a new one from the same client at its limit",
                &t.evicted_per_client,
            ),
            (
                "dns_tcp_refused",
                "New DNS TCP connections closed at once: every candidate connection was busy",
                &t.refused,
            ),
            (
                "dns_tcp_accept_errors",
                "Failed DNS TCP accepts (out of file descriptors); each backs off 100 ms",
                &self.0.accept_errors,
            ),
        ] {
            counter(&mut encoder, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Adds DNS over TCP's connection metrics.
    pub fn watch_tcp(&mut self, conns: Arc<crate::dns::tcp::TcpConns>) {
        self.registry
            .register_collector(Box::new(TcpCollector(conns)));
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

/// One unlabelled counter, for the collectors above.
fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

/// One unlabelled gauge, for the collectors above.
fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    encoder
        .encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&v)
}
