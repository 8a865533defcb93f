//! Sidecar mode's metrics: owned here, added to `/metrics` by the server.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::metrics::Metrics;

/// Handles to shared atomics: clones count into the same metric.
#[derive(Debug, Clone)]
pub struct ConsulStats {
    /// From a change showing in a feed to it answering in DNS.
    pub change_to_dns: Histogram,
    pub requests: Counter,
    pub errors: Counter,
    /// Seconds since the agent last answered; set at scrape time.
    pub staleness: Gauge<f64, AtomicU64>,
    /// 1 once the first full sync is done.
    pub synced: Gauge,
    /// Local services marked changed and not yet read.
    pub queued: Gauge,
    /// Changes no feed could place, so every service was read again.
    pub sweeps: Counter,
}

impl Default for ConsulStats {
    fn default() -> Self {
        ConsulStats {
            // 10 µs to ~1.3 s.
            change_to_dns: Histogram::new(exponential_buckets(0.00001, 2.0, 18)),
            requests: Counter::default(),
            errors: Counter::default(),
            staleness: Gauge::default(),
            synced: Gauge::default(),
            queued: Gauge::default(),
            sweeps: Counter::default(),
        }
    }
}

impl ConsulStats {
    pub fn register(&self, m: &mut Metrics) {
        m.add(
            "consul_change_to_dns_seconds",
            "Time from a change showing in the Consul agent's feeds to it being answered in DNS",
            self.change_to_dns.clone(),
        );
        m.add(
            "consul_requests",
            "HTTP requests made to the Consul agent",
            self.requests.clone(),
        );
        m.add(
            "consul_errors",
            "Consul agent requests that failed (unreachable, 5xx, bad body)",
            self.errors.clone(),
        );
        m.add(
            "consul_queued_services",
            "Services the sync knows changed and has not read yet",
            self.queued.clone(),
        );
        m.add(
            "consul_sweeps",
            "Changes no feed could place, after which every service was read again",
            self.sweeps.clone(),
        );
        m.add(
            "consul_staleness_seconds",
            "Seconds since the Consul agent last answered (0 before the first contact)",
            self.staleness.clone(),
        );
        m.add(
            "consul_synced",
            "1 once the first full sync from Consul has completed",
            self.synced.clone(),
        );
    }
}
