//! Prometheus metrics, served at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per running signpost (prometheus-client's registries are
//! values, not process globals, so servers in one test process keep their
//! numbers apart). Counters are atomics: cheap enough to touch on the
//! query path.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    /// From a Consul blocking response arriving to its change answering
    /// in DNS.
    pub consul_change_to_dns: Histogram,
    pub consul_requests: Counter,
    pub consul_errors: Counter,
    /// Seconds since the Consul agent last answered; set at scrape time.
    pub consul_staleness: Gauge<f64, AtomicU64>,
    /// 1 once the first full sync from Consul is done.
    pub consul_synced: Gauge,
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
        Metrics {
            registry,
            consul_change_to_dns,
            consul_requests,
            consul_errors,
            consul_staleness,
            consul_synced,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
