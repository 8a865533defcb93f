//! Per-query DNS statistics, written by the listeners on every reply and
//! read by their collector at scrape time.

use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering;

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

impl DnsStats {
    /// Counts one reply (empty: dropped) that took `elapsed` to make.
    pub fn record(&self, tcp: bool, reply: &[u8], elapsed: std::time::Duration) {
        let (qtype, rcode) = classify_reply(reply);
        self.queries[usize::from(tcp)][qtype][rcode].fetch_add(1, Ordering::Relaxed);
        if reply.len() > 2 && reply[2] & 0x02 != 0 {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
        self.latency(1, elapsed);
    }

    /// Counts the replies of one UDP batch, all sent together `elapsed`
    /// after the batch was read: one atomic add per kind of reply in the
    /// batch and two for the latency, where [`record`](Self::record) makes
    /// four a reply.
    pub fn record_udp_batch(&self, replies: &[Vec<u8>], elapsed: std::time::Duration) {
        if replies.is_empty() {
            return;
        }
        // (qtype, rcode, count); a batch holds few kinds, and one past
        // the eighth is counted at once.
        let mut kinds = [(0usize, 0usize, 0u64); 8];
        let mut distinct = 0;
        let mut truncated = 0;
        for reply in replies {
            let (qtype, rcode) = classify_reply(reply);
            if reply.len() > 2 && reply[2] & 0x02 != 0 {
                truncated += 1;
            }
            if let Some(k) = kinds[..distinct]
                .iter_mut()
                .find(|k| k.0 == qtype && k.1 == rcode)
            {
                k.2 += 1;
            } else if distinct < kinds.len() {
                kinds[distinct] = (qtype, rcode, 1);
                distinct += 1;
            } else {
                self.queries[0][qtype][rcode].fetch_add(1, Ordering::Relaxed);
            }
        }
        for &(qtype, rcode, n) in &kinds[..distinct] {
            self.queries[0][qtype][rcode].fetch_add(n, Ordering::Relaxed);
        }
        if truncated > 0 {
            self.truncated.fetch_add(truncated, Ordering::Relaxed);
        }
        self.latency(replies.len() as u64, elapsed);
    }

    /// `n` replies that each took `elapsed`.
    fn latency(&self, n: u64, elapsed: std::time::Duration) {
        let ns = elapsed.as_nanos().min(u64::MAX as u128) as u64;
        let us = ns / 1000;
        let bucket = if us == 0 {
            0
        } else {
            (64 - us.leading_zeros() as usize).min(LATENCY_BUCKETS - 1)
        };
        self.latency[bucket].fetch_add(n, Ordering::Relaxed);
        self.latency_sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A reply header and question for `qtype`, with `rcode` and TC as given.
    fn reply(qtype: u16, rcode: u8, tc: bool) -> Vec<u8> {
        let mut r = vec![
            0,
            1,
            0x80 | if tc { 0x02 } else { 0 },
            rcode,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            0,
        ];
        r.extend_from_slice(&[1, b'a', 0]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r
    }

    fn snapshot(s: &DnsStats) -> (Vec<u64>, Vec<u64>, u64, u64) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            s.queries.iter().flatten().flatten().map(load).collect(),
            s.latency.iter().map(load).collect(),
            load(&s.latency_sum_ns),
            load(&s.truncated),
        )
    }

    #[test]
    fn a_batch_counts_as_its_replies_one_by_one() {
        // More kinds than the batch keeps apart, some repeated, one cut.
        let mut replies = Vec::new();
        for (i, qtype) in [1u16, 28, 33, 16, 12, 5, 6, 2, 255, 99].iter().enumerate() {
            for rcode in [0u8, 3] {
                replies.push(reply(*qtype, rcode, i == 2));
                replies.push(reply(*qtype, rcode, false));
            }
        }
        replies.push(vec![1, 2, 3]);
        let elapsed = Duration::from_micros(37);
        let (one, batch) = (DnsStats::default(), DnsStats::default());
        for r in &replies {
            one.record(false, r, elapsed);
        }
        batch.record_udp_batch(&replies, elapsed);
        assert_eq!(snapshot(&one), snapshot(&batch));
        assert_eq!(one.count("udp", "SRV", "NXDOMAIN"), 2);
    }
}
