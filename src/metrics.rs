//! Prometheus metrics, served at `/metrics` on the HTTP listener.
//!
//! One [`Metrics`] per running signpost (prometheus-client's registries are
//! values, not process globals, so servers in one test process keep their
//! numbers apart). Counters are atomics: cheap enough to touch on the
//! query path.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
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

/// The registry every component's metrics are added to, by the code that
/// wires the server together: each component owns its counters (or a
/// collector that reads its stats at scrape time), and this only names
/// them under the `signpost_` prefix and renders them.
pub struct Metrics {
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            registry: Registry::with_prefix("signpost"),
        }
    }

    /// Adds one metric a component updates as it goes.
    pub fn add(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
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
