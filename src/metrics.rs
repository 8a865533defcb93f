//! Prometheus metrics, served at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per running signpost (prometheus-client's registries are
//! values, not process globals, so servers in one test process keep their
//! numbers apart). Counters are atomics: cheap enough to touch on the
//! query path.

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::locks::MutexExt;

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
