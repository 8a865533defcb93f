//! Consul's blocking-query protocol: a GET that waits for the index to
//! move, the index rules clients must follow, and the backoff on errors.

use super::*;

/// The next index to ask with: 0 (a full read) when Consul's went
/// backwards, and never below 1 otherwise.
pub fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

/// Exponential backoff with full jitter.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    pub(super) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    pub(super) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}

/// A path segment, percent-encoded.
pub(super) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl ConsulSync {
    pub(super) fn succeeded(&self) {
        *self.last_ok.locked() = Some(Instant::now());
        let was_failing = self.failing_since.locked().take();
        if let Some(since) = was_failing {
            tracing::info!(
                "consul agent {} answers again after {:.1}s",
                self.cfg.url,
                since.elapsed().as_secs_f64()
            );
        }
    }

    pub(super) fn failed(&self, e: &SyncError) {
        self.stats.errors.inc();
        *self.last_error.locked() = Some(e.to_string());
        let mut since = self.failing_since.locked();
        if since.is_none() {
            *since = Some(Instant::now());
            tracing::warn!(
                "{e}; serving the last known view ({:.1}s old) and retrying",
                self.staleness()
            );
        }
    }

    /// A GET against the agent: (index, body, when the response arrived).
    pub(super) async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        dc: Option<&str>,
        index: u64,
        wait: Duration,
    ) -> Result<(u64, T, Instant), SyncError> {
        // A first read carries no index (0 means "not blocking", and some
        // Consul-API servers hold any request that has one), as Consul's
        // own client does.
        let mut params = Vec::new();
        if index > 0 {
            params.push(format!("index={index}&wait={}ms", wait.as_millis()));
        }
        if let Some(dc) = dc {
            params.push(format!("dc={}", segment(dc)));
        }
        let mut url = path.to_string();
        if !params.is_empty() {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&params.join("&"));
        }
        self.stats.requests.inc();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let reply = self
            .client
            .call(
                reqwest::Method::GET,
                &url,
                None,
                Some(wait + wait / 16 + Duration::from_secs(10)),
            )
            .await
            .map_err(|e| SyncError::Unreachable(e.reason))?;
        let arrived = Instant::now();
        // hyper hands the connection back to its pool from another task once
        // the body is read; a request started before that opens a new one
        // (and the budget counts connections). Letting that task run first
        // keeps the count at one per slot.
        for _ in 0..2 {
            tokio::task::yield_now().await;
        }
        if !reply.is_success() {
            return Err(SyncError::Status {
                status: reply.status,
                body: reply.text(200),
            });
        }
        self.succeeded();
        let value = serde_json::from_slice(&reply.body)
            .map_err(|e| SyncError::Body(format!("{path}: {e}")))?;
        Ok((reply.index, value, arrived))
    }

    /// How long a remote datacenter's watch blocks: the agent's default
    /// while there are slots for all, shorter turns when there are not.
    pub(super) fn wait(&self) -> Duration {
        let (watchers, slots) = (self.watchers.load(Ordering::Relaxed), self.budget.remote);
        if watchers <= slots {
            LONG_WAIT
        } else {
            (ROTATION * slots as u32 / watchers as u32).max(MIN_SHARED_WAIT)
        }
    }
}
