//! The Docker source's metrics: owned here, added to `/metrics` by the
//! server.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

use crate::metrics::Metrics;

/// Handles to shared atomics: clones count into the same metric.
#[derive(Debug, Clone)]
pub struct DockerStats {
    /// 1 while the engine is followed.
    pub connected: Gauge,
    pub errors: Counter,
    pub events: Counter,
    pub resyncs: Counter,
    pub event_to_dns: Histogram,
}

impl Default for DockerStats {
    fn default() -> Self {
        DockerStats {
            connected: Gauge::default(),
            errors: Counter::default(),
            events: Counter::default(),
            resyncs: Counter::default(),
            event_to_dns: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
        }
    }
}

impl DockerStats {
    pub fn register(&self, m: &mut Metrics) {
        m.add(
            "docker_connected",
            "1 while the Docker engine is followed, 0 while it is unreachable",
            self.connected.clone(),
        );
        m.add(
            "docker_errors",
            "Times the Docker engine was lost or unreachable",
            self.errors.clone(),
        );
        m.add(
            "docker_events",
            "Container events applied from the Docker engine",
            self.events.clone(),
        );
        m.add(
            "docker_resyncs",
            "Full resyncs from the Docker engine's container list",
            self.resyncs.clone(),
        );
        m.add(
            "docker_event_to_dns_seconds",
            "Time from a container event at the engine to its change answering in DNS",
            self.event_to_dns.clone(),
        );
    }
}
