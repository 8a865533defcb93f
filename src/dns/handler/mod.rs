//! The request handler: query bytes in, response bytes out.
//!
//! Pure and synchronous: it reads the answer sets and nothing else, so the
//! same function serves UDP, TCP, tests and benchmarks.
//!
//! `admission` decides what a query may get (trust, size budget, cookies,
//! rate limits), `routing` finds what answers it, `remote` waits for other
//! datacenters, `ordering` orders a record set, `writing` writes it.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::answers::{Answers, Entry, RecordSet, RDATA_AT, SRV_TARGET_AT};
use super::forward::admission::Ticket;
use super::forward::Forwarder;
use super::name::{classify, Labels, Lookup};
use super::settings::Balance;
use super::wire::Transport;
use super::wire::{
    parse_query, pointer, rtype, Flags, Parsed, Query, Rcode, ResponseWriter, CLASS_ANY, CLASS_IN,
    HEADER_LEN, PLAIN_UDP_MAX,
};
use super::zones::StaticZone;

mod admission;
mod ordering;
mod remote;
mod routing;
mod writing;

pub use remote::Remote;

use admission::slip;

/// The largest DNS message, and so the budget of a TCP reply.
pub const TCP_MAX: usize = 65535;

/// Per-loop working memory, reused across queries so that answering
/// allocates nothing once warmed up.
pub struct Scratch {
    rng: fastrand::Rng,
    order: Vec<u32>,
    keys: Vec<(bool, f64, u32)>,
    /// (entry index, offset of its SRV target in the message)
    written: Vec<(u32, usize)>,
    seen_target: Vec<bool>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            rng: fastrand::Rng::new(),
            order: Vec::new(),
            keys: Vec::new(),
            written: Vec::new(),
            seen_target: Vec::new(),
        }
    }
}

pub struct Handler {
    answers: Arc<Answers>,
    /// Static zones; swapped whole on reload.
    zones: arc_swap::ArcSwap<Vec<StaticZone>>,
    forwarder: Option<Arc<Forwarder>>,
    remote: Option<Arc<dyn Remote>>,
    stats: Arc<crate::dns::stats::DnsStats>,
    /// Clients answered up to `udp_payload_max_trusted` (the
    /// `allow_recursion` ranges: loopback and private networks by default).
    trusted: Vec<ipnet::IpNet>,
    /// Server cookies, and the rate limit for UDP clients that are neither
    /// trusted nor proven by a cookie (see `cookie`).
    /// ArcSwap: replaced by a reload (SIGHUP) when their settings change,
    /// read with one load per query that needs them.
    cookies: arc_swap::ArcSwap<super::cookie::Cookies>,
    rrl: arc_swap::ArcSwap<super::cookie::RateLimit>,
    /// Says at most every 10 s that rate limiting is dropping answers.
    rrl_log: crate::metrics::LogLimiter,
}

/// CHAOS class, for `id.server` and `hostname.bind` (RFC 4892).
const CLASS_CH: u16 = 3;

/// Zone transfers: refused, signpost's data is not a zone to copy.
const AXFR: u16 = 252;

const IXFR: u16 = 251;

/// What the listener should do after `handle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send `out`.
    Reply,
    /// Send nothing.
    Drop,
    /// Not ours and not cached: resolve it with [`Handler::forward`].
    Forward,
    /// A service in another datacenter not watched yet: answer it with
    /// [`Handler::remote`].
    Remote,
}

/// Outcome of a lookup inside the domain.
enum Found {
    Answered,
    NoData,
    NxDomain,
    /// Needs the agent first (another datacenter).
    Remote,
}

/// What one query may put in its answer section.
#[derive(Clone, Copy)]
struct Ask {
    qtype: u16,
    /// Most answer records (a_record_limit, udp_answer_limit).
    max: usize,
    /// Index of the domain the question used.
    domain: usize,
    /// How A/AAAA answers are ordered (the `load_balancing` setting).
    balance: Balance,
}

/// Lower-cases one label into `buf`; `None` if it is not UTF-8 (then no
/// registered name can match it).
fn lower<'b>(label: &[u8], buf: &'b mut [u8; 63]) -> Option<&'b str> {
    let out = &mut buf[..label.len()];
    out.copy_from_slice(label);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

/// `a.b.example.` from label `from` on, lower-cased.
fn lower_fqdn(labels: &Labels<'_>, from: usize) -> String {
    let mut s = String::with_capacity(64);
    for i in from..labels.len() {
        s.push_str(&String::from_utf8_lossy(labels.get(i)).to_ascii_lowercase());
        s.push('.');
    }
    if s.is_empty() {
        s.push('.');
    }
    s
}

impl Handler {
    pub fn new(
        answers: Arc<Answers>,
        zones: Vec<StaticZone>,
        forwarder: Option<Arc<Forwarder>>,
    ) -> Handler {
        let dns = answers.config().dns.clone();
        Handler {
            cookies: arc_swap::ArcSwap::from_pointee(super::cookie::Cookies::new(
                dns.cookie_secret,
                dns.cookie_secret_previous,
            )),
            rrl: arc_swap::ArcSwap::from_pointee(super::cookie::RateLimit::new(
                dns.rrl_responses_per_second,
                dns.rrl_slip,
            )),
            rrl_log: Default::default(),
            answers,
            zones: arc_swap::ArcSwap::from_pointee(zones),
            forwarder,
            remote: None,
            stats: Arc::default(),
            trusted: super::settings::Recursors::default().allow,
        }
    }

    /// The ranges whose clients get large UDP answers.
    pub fn with_trusted(mut self, trusted: Vec<ipnet::IpNet>) -> Handler {
        self.trusted = trusted;
        self
    }

    /// Whether warning instances are left out of answers (for the UI's
    /// "why not in DNS").
    pub fn only_passing(&self) -> bool {
        self.answers.config().dns.only_passing
    }

    /// Serves these static zones from now on.
    pub fn set_zones(&self, zones: Vec<StaticZone>) {
        self.zones.store(Arc::new(zones));
    }

    /// Counts replies into `stats` (the listeners record every one).
    pub fn with_stats(mut self, stats: Arc<crate::dns::stats::DnsStats>) -> Handler {
        self.stats = stats;
        self
    }

    pub fn stats(&self) -> &crate::dns::stats::DnsStats {
        &self.stats
    }

    /// How long a UDP query may wait in the socket queue before it is
    /// dropped unanswered.
    pub fn shed_after(&self) -> Duration {
        Duration::from_millis(self.answers.config().dns.shed_after_ms.into())
    }

    /// The forwarder, for its metrics.
    pub fn forwarder(&self) -> Option<&Arc<Forwarder>> {
        self.forwarder.as_ref()
    }

    /// Answers one query from memory, or says to drop or forward it. Over
    /// UDP, a client outside the trusted ranges without a valid server
    /// cookie is rate limited: its answer may be dropped, or sent empty
    /// with TC (slip).
    pub fn handle(
        &self,
        query: &[u8],
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> Outcome {
        let mut limited = false;
        let outcome = self.answer(query, transport, client, out, scratch, &mut limited);
        if !limited || outcome != Outcome::Reply {
            return outcome;
        }
        match self.rrl.load().check(client, std::time::Instant::now()) {
            super::cookie::Verdict::Send => Outcome::Reply,
            super::cookie::Verdict::Slip => {
                self.stats.rrl_slipped.fetch_add(1, Ordering::Relaxed);
                slip(out);
                Outcome::Reply
            }
            super::cookie::Verdict::Drop => {
                self.stats.rrl_dropped.fetch_add(1, Ordering::Relaxed);
                if self.rrl_log.due() {
                    tracing::warn!(
                        "rate limiting UDP answers to untrusted clients without a valid cookie (from {client}, among others; counted in signpost_dns_rrl_*)"
                    );
                }
                Outcome::Drop
            }
        }
    }

    /// Resolves an admitted query; the reply to send (empty when it was
    /// shed for a newer one).
    pub async fn forward(&self, query: &[u8], transport: Transport, ticket: Ticket) -> Vec<u8> {
        let Parsed::Query(q) = parse_query(query) else {
            return Vec::new();
        };
        // Only clients in `allow_recursion` are forwarded for: trusted.
        let budget = self.budget(transport, q.edns, true);
        match &self.forwarder {
            Some(f) => {
                let reply = f.forward(query, transport, budget, ticket).await;
                if reply.is_empty() {
                    self.stats.shed.fetch_add(1, Ordering::Relaxed);
                } else if reply
                    .get(3)
                    .is_some_and(|b| b & 0x0F == Rcode::ServFail as u8)
                {
                    self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                }
                reply
            }
            None => Vec::new(),
        }
    }

    /// Takes a place in flight for a query `handle` said to forward, before
    /// any task is spawned for it: `Err` carries the reply to send at once
    /// (SERVFAIL while every upstream is down).
    pub fn admit_forward(&self, query: &[u8], client: IpAddr) -> Result<Ticket, Vec<u8>> {
        let Some(f) = &self.forwarder else {
            return Err(Vec::new());
        };
        self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        f.admit(client).ok_or_else(|| {
            self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
            f.servfail(query)
        })
    }
}
