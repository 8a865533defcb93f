//! Forwarding: names outside signpost's zones go to the upstream
//! resolvers, over the transport the client used, one upstream after the
//! other until one answers (a timeout or SERVFAIL moves on), and answers
//! are cached for their TTL.
//!
//! Only clients inside the allowed ranges get this; signpost listening on a
//! public address never becomes an open resolver.
//!
//! Bounded under abuse (a container in a retry loop, a dead upstream):
//! * [`admission`] caps the queries in flight, in total and per client,
//!   shedding the oldest;
//! * identical questions in flight share one upstream query;
//! * an upstream is marked down only on evidence about the upstream, not
//!   about one name: [`DOWN_AFTER`] failures in a row without an answer
//!   between them, or a refused connection. One slow name or one lost
//!   datagram costs that question a SERVFAIL, counted as a time-out, and
//!   nothing else;
//! * a down upstream is skipped and probed in the background until it
//!   answers again, every 250 ms growing to 1 s; while every upstream is
//!   down, one real question per upstream every [`TRIAL_EVERY`] is still
//!   sent (the first answer marks it up again) and the rest get SERVFAIL
//!   at once (RFC 9520), so a dead upstream never holds a backlog.

pub mod admission;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use lru::LruCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use admission::{Admission, Ticket};

use super::settings::Recursors;
use super::wire::Transport;
use super::wire::{parse_query, Flags, Parsed, Rcode, ResponseWriter};
use crate::locks::MutexExt;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// The first and the longest wait between probes of a down upstream.
const PROBE_FIRST: Duration = Duration::from_millis(250);
const PROBE_MAX: Duration = Duration::from_secs(1);
/// Failures in a row (time-outs or errors, with no answer between them)
/// that mark an upstream down.
pub const DOWN_AFTER: u32 = 3;
/// How often a down upstream is still sent one real question.
pub const TRIAL_EVERY: Duration = Duration::from_millis(100);
/// The longest a forwarded answer is cached, whatever its TTL.
const MAX_CACHE_TTL: u32 = 86_400;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    /// Lower-cased wire-form question name.
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    dnssec_ok: bool,
}

/// An upstream question in flight, shared by everyone asking it: the
/// answer (None: every upstream failed) once there is one.
type Shared = watch::Receiver<Option<Option<Arc<Message>>>>;

/// Whether an upstream answers. std Mutex: a few loads and stores, never
/// held across `.await`.
#[derive(Default)]
struct UpstreamState {
    /// Failures since its last answer.
    failures: u32,
    /// Since when it is down; `None` while up.
    down_since: Option<std::time::Instant>,
    /// When a real question was last let through to it while down.
    last_trial: Option<std::time::Instant>,
}

impl UpstreamState {
    fn trial_open(&self) -> bool {
        self.last_trial.is_none_or(|t| t.elapsed() >= TRIAL_EVERY)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Questions answered by another client's identical query in flight.
    pub coalesced: AtomicU64,
    /// Questions answered SERVFAIL at once because every upstream was down.
    pub upstreams_down: AtomicU64,
    /// Times an upstream was marked down.
    pub marked_down: AtomicU64,
    /// Questions an upstream did not answer in time (one name's time-out,
    /// whether or not the upstream was then marked down).
    pub timeouts: AtomicU64,
}

struct Cached {
    message: Message,
    stored: Instant,
    ttl: u32,
}

pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    random: bool,
    timeout: Duration,
    allow: Vec<ipnet::IpNet>,
    /// The UDP size signpost advertises in its own OPT records.
    payload: u16,
    /// std Mutex: held only for a lookup or an insert, never across .await.
    cache: Mutex<LruCache<CacheKey, Cached>>,
    admission: Arc<Admission>,
    /// Questions being resolved upstream now, by (question, over TCP).
    /// std Mutex: held for one lookup or insert.
    resolving: Mutex<HashMap<(CacheKey, bool), Shared>>,
    health: Vec<Mutex<UpstreamState>>,
    pub stats: ForwardStats,
    /// Paces the per-name time-out log line.
    timeout_log: crate::metrics::LogLimiter,
}

/// Takes a shared question out of `resolving` when its leader is done or
/// cancelled (the followers then see the channel close: SERVFAIL).
struct Leader<'a> {
    forwarder: &'a Forwarder,
    key: (CacheKey, bool),
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.forwarder.resolving.locked().remove(&self.key);
    }
}

fn cache_key(raw: &[u8]) -> Option<CacheKey> {
    let Parsed::Query(q) = parse_query(raw) else {
        return None;
    };
    Some(CacheKey {
        name: q.qname.to_ascii_lowercase().into_boxed_slice(),
        qtype: q.qtype,
        qclass: q.qclass,
        dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
    })
}

/// How long an answer may be cached: its smallest TTL, or for a negative
/// answer its SOA's negative TTL (RFC 2308); `None` when it must not be.
fn cache_ttl(m: &Message) -> Option<u32> {
    match m.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    if m.metadata.truncation {
        return None;
    }
    let ttl = if m.answers.is_empty() {
        m.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })?
    } else {
        m.answers
            .iter()
            .chain(&m.authorities)
            .map(|r| r.ttl)
            .min()?
    };
    (ttl > 0).then_some(ttl.min(MAX_CACHE_TTL))
}

impl Forwarder {
    pub fn new(cfg: &Recursors, payload: u16) -> Forwarder {
        Forwarder {
            upstreams: cfg.upstreams.clone(),
            random: cfg.random,
            timeout: cfg.timeout,
            allow: cfg.allow.clone(),
            payload,
            cache: Mutex::new(LruCache::new(
                NonZeroUsize::new(cfg.cache_size.max(1)).expect("at least one"),
            )),
            admission: Admission::new(cfg.max_in_flight, cfg.max_in_flight_per_client),
            resolving: Mutex::new(HashMap::new()),
            health: cfg.upstreams.iter().map(|_| Mutex::default()).collect(),
            stats: ForwardStats::default(),
            timeout_log: crate::metrics::LogLimiter::default(),
        }
    }

    /// Takes a place in flight for a query from `client` (see
    /// [`admission`]); `None` when every upstream is down and none is due
    /// a trial question, and the query should be answered with
    /// [`servfail`](Self::servfail) at once.
    pub fn admit(&self, client: IpAddr) -> Option<Ticket> {
        if !self.any_up() && !self.any_trial_open() {
            self.stats.upstreams_down.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.admission.admit(client)
    }

    /// Queries cancelled to admit newer ones, or refused while shed ones
    /// had not ended.
    pub fn shed(&self) -> u64 {
        self.admission.shed.load(Ordering::Relaxed) + self.admission.refused.load(Ordering::Relaxed)
    }

    pub fn in_flight(&self) -> usize {
        self.admission.in_flight()
    }

    fn state(&self, i: usize) -> std::sync::MutexGuard<'_, UpstreamState> {
        self.health[i].locked()
    }

    fn is_up(&self, i: usize) -> bool {
        self.state(i).down_since.is_none()
    }

    fn any_up(&self) -> bool {
        (0..self.upstreams.len()).any(|i| self.is_up(i))
    }

    fn any_trial_open(&self) -> bool {
        (0..self.upstreams.len()).any(|i| self.state(i).trial_open())
    }

    /// Whether a question may go to upstream `i` now: it is up, or it is
    /// down and due its trial question (taken here).
    fn take_turn(&self, i: usize) -> bool {
        let mut h = self.state(i);
        if h.down_since.is_none() {
            return true;
        }
        if h.trial_open() {
            h.last_trial = Some(std::time::Instant::now());
            return true;
        }
        false
    }

    /// Upstream `i` answered: its failures are forgotten, and it is up.
    fn answered(&self, i: usize) {
        let since = {
            let mut h = self.state(i);
            h.failures = 0;
            h.down_since.take()
        };
        if let Some(since) = since {
            tracing::warn!(
                "upstream {} answers again after {:.1}s down",
                self.upstreams[i],
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Upstream `i` failed a question. It is marked down (and its prober
    /// started) after [`DOWN_AFTER`] failures in a row, or at once when
    /// `conclusive` (the connection was refused: nothing listens there).
    fn failed(self: &Arc<Self>, i: usize, why: &str, conclusive: bool) {
        {
            let mut h = self.state(i);
            h.failures = h.failures.saturating_add(1);
            if h.down_since.is_some() || (!conclusive && h.failures < DOWN_AFTER) {
                return;
            }
            h.down_since = Some(std::time::Instant::now());
            h.last_trial = Some(std::time::Instant::now());
        }
        self.stats.marked_down.fetch_add(1, Ordering::Relaxed);
        let upstream = self.upstreams[i];
        tracing::warn!("upstream {upstream} marked down ({why}); probing it in the background");
        let me = Arc::clone(self);
        tokio::spawn(async move { me.probe(i).await });
    }

    /// Asks a down upstream for the root's NS until it answers; then it is
    /// up again. The prober holds only a weak interest: it ends when the
    /// upstream answers.
    async fn probe(self: Arc<Self>, i: usize) {
        let upstream = self.upstreams[i];
        let mut wait = PROBE_FIRST;
        let mut q = Message::query();
        q.add_query(hickory_proto::op::Query::query(
            hickory_proto::rr::Name::root(),
            hickory_proto::rr::RecordType::NS,
        ));
        loop {
            tokio::time::sleep(wait).await;
            if self.is_up(i) {
                // A trial question found it answering first.
                return;
            }
            wait = (wait * 2).min(PROBE_MAX);
            let id = fastrand::u16(..);
            q.metadata.id = id;
            let Ok(bytes) = q.to_vec() else { return };
            let answered = tokio::time::timeout(
                self.timeout.min(PROBE_MAX),
                exchange_udp(upstream, &bytes, id),
            )
            .await;
            if matches!(answered, Ok(Ok(_))) {
                self.answered(i);
                return;
            }
        }
    }

    /// Whether `client` may have names outside signpost's zones resolved.
    pub fn allowed(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.allow.iter().any(|net| net.contains(&client))
    }

    /// Answers from the cache when a fresh entry is there.
    pub fn cached(&self, raw: &[u8], budget: usize, out: &mut Vec<u8>) -> bool {
        let Some(key) = cache_key(raw) else {
            return false;
        };
        let hit = {
            let mut cache = self.cache.locked();
            match cache.get(&key) {
                Some(c) if c.stored.elapsed() < Duration::from_secs(c.ttl.into()) => {
                    Some((c.message.clone(), c.stored.elapsed().as_secs() as u32))
                }
                Some(_) => {
                    cache.pop(&key);
                    None
                }
                None => None,
            }
        };
        let Some((message, age)) = hit else {
            return false;
        };
        match self.reply(message, raw, budget, age) {
            Some(bytes) => {
                *out = bytes;
                true
            }
            None => false,
        }
    }

    /// Resolves a query upstream; always returns a reply for the client
    /// (SERVFAIL when every upstream failed), or an empty one when the
    /// query was shed for a newer one (`ticket` cancelled).
    pub async fn forward(
        self: &Arc<Self>,
        raw: &[u8],
        transport: Transport,
        budget: usize,
        ticket: Ticket,
    ) -> Vec<u8> {
        tokio::select! {
            m = self.resolve(raw, transport) => match m {
                Some(m) => self
                    .reply(Message::clone(&m), raw, budget, 0)
                    .unwrap_or_else(|| self.servfail(raw)),
                None => self.servfail(raw),
            },
            _ = ticket.cancelled.cancelled() => Vec::new(),
        }
    }

    /// The upstream answer to `raw`'s question, shared with everyone who
    /// asks the same question while it is in flight.
    async fn resolve(self: &Arc<Self>, raw: &[u8], transport: Transport) -> Option<Arc<Message>> {
        let key = (cache_key(raw)?, transport == Transport::Tcp);
        // Either a receiver to wait on (someone asks already) or the
        // sender of a new shared question; the lock is gone before any
        // `.await`.
        let joined: Result<Shared, watch::Sender<_>> = {
            let mut resolving = self.resolving.locked();
            match resolving.get(&key) {
                Some(rx) => Ok(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(None);
                    resolving.insert(key.clone(), rx);
                    Err(tx)
                }
            }
        };
        let tx = match joined {
            Ok(mut rx) => {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                return match rx.wait_for(|v| v.is_some()).await {
                    Ok(v) => v.clone().flatten(),
                    Err(_) => None,
                };
            }
            Err(tx) => tx,
        };
        let _leader = Leader {
            forwarder: self,
            key,
        };
        let answer = self.ask_upstreams(raw, transport).await.map(Arc::new);
        let _ = tx.send(Some(answer.clone()));
        answer
    }

    async fn ask_upstreams(self: &Arc<Self>, raw: &[u8], transport: Transport) -> Option<Message> {
        let mut order: Vec<usize> = (0..self.upstreams.len()).collect();
        if self.random {
            fastrand::shuffle(&mut order);
        }
        // A fresh ID upstream, so that answers cannot be matched to the
        // client's guessable one.
        let id = fastrand::u16(..);
        let mut query = raw.to_vec();
        query[..2].copy_from_slice(&id.to_be_bytes());
        let asked = Message::from_vec(raw).ok()?;
        for i in order {
            if !self.take_turn(i) {
                continue;
            }
            let upstream = self.upstreams[i];
            let exchange = async {
                match transport {
                    Transport::Udp => exchange_udp(upstream, &query, id).await,
                    Transport::Tcp => exchange_tcp(upstream, &query).await,
                }
            };
            let bytes = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    let refused = e.kind() == io::ErrorKind::ConnectionRefused;
                    self.failed(i, &e.to_string(), refused);
                    continue;
                }
                Err(_) => {
                    self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    if self.timeout_log.due() {
                        let q = asked.queries.first();
                        tracing::info!(
                            "upstream {upstream} gave no answer for {} {} within {:?} (counted in signpost_forward_timeouts; {DOWN_AFTER} failures in a row mark it down)",
                            q.map(|q| q.name().to_string()).unwrap_or_default(),
                            q.map(|q| q.query_type().to_string()).unwrap_or_default(),
                            self.timeout
                        );
                    }
                    self.failed(
                        i,
                        &format!(
                            "{DOWN_AFTER} questions in a row unanswered within {:?}",
                            self.timeout
                        ),
                        false,
                    );
                    continue;
                }
            };
            // Any reply is evidence that the upstream is there.
            self.answered(i);
            let Ok(m) = Message::from_vec(&bytes) else {
                tracing::debug!("upstream {upstream} sent a malformed reply");
                continue;
            };
            let same_question = m.queries.len() == asked.queries.len()
                && m.queries.iter().zip(&asked.queries).all(|(a, b)| {
                    a.query_type() == b.query_type() && a.name().eq_ignore_root_case(b.name())
                });
            if m.metadata.message_type != MessageType::Response || !same_question {
                continue;
            }
            if m.metadata.response_code == ResponseCode::ServFail {
                continue;
            }
            if let (Some(ttl), Some(key)) = (cache_ttl(&m), cache_key(raw)) {
                self.cache.locked().put(
                    key,
                    Cached {
                        message: m.clone(),
                        stored: Instant::now(),
                        ttl,
                    },
                );
            }
            return Some(m);
        }
        None
    }

    /// An upstream or cached answer readied for the client: its ID and
    /// question, TTLs aged, RA set, OPT as the client asked, fitted to its
    /// size budget (TC and no records when it does not fit).
    fn reply(&self, mut m: Message, raw: &[u8], budget: usize, age: u32) -> Option<Vec<u8>> {
        let client = Message::from_vec(raw).ok()?;
        m.metadata.id = client.metadata.id;
        m.metadata.recursion_desired = client.metadata.recursion_desired;
        m.metadata.recursion_available = true;
        m.metadata.authoritative = false;
        m.queries = client.queries.clone();
        for r in m
            .answers
            .iter_mut()
            .chain(m.authorities.iter_mut())
            .chain(m.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        m.edns = client.edns.as_ref().map(|_| {
            let mut e = Edns::new();
            e.set_max_payload(self.payload);
            e
        });
        let bytes = m.to_vec().ok()?;
        if bytes.len() <= budget {
            return Some(bytes);
        }
        m.answers.clear();
        m.authorities.clear();
        m.additionals.clear();
        m.metadata.truncation = true;
        m.to_vec().ok()
    }

    pub fn servfail(&self, raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        if let Parsed::Query(q) = parse_query(raw) {
            let w = ResponseWriter::new(&mut out, &q, 512);
            w.finish(
                Rcode::ServFail,
                Flags {
                    authoritative: false,
                    recursion_available: true,
                },
                self.payload,
            );
        }
        out
    }

    /// Answers in the cache.
    pub fn cache_len(&self) -> usize {
        self.cache.locked().len()
    }
}

async fn exchange_udp(upstream: SocketAddr, query: &[u8], id: u16) -> io::Result<Vec<u8>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = tokio::net::UdpSocket::bind(local).await?;
    // A connected socket only hears from the upstream asked.
    sock.connect(upstream).await?;
    sock.send(query).await?;
    // The buffer exists only once there is something to read: a thousand
    // questions waiting on a silent upstream hold no 64 KiB each.
    loop {
        sock.readable().await?;
        let mut buf = vec![0u8; 65535];
        let n = match sock.try_recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    s.write_all(&framed).await?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Forwarding's bounds, read from the [`Forwarder`](Forwarder)
/// at scrape time.
pub struct ForwardCollector(pub Arc<Forwarder>);

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
        gauge(
            &mut encoder,
            "forward_cache_entries",
            "Forwarded answers cached now (at most recursor_cache_size; the least recently used go first)",
            f.cache_len() as i64,
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
