//! The request handler: query bytes in, response bytes out.
//!
//! Pure and synchronous: it reads the answer sets and nothing else, so the
//! same function serves UDP, TCP, tests and benchmarks.

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

/// The largest DNS message, and so the budget of a TCP reply.
pub const TCP_MAX: usize = 65535;
/// Where the NS target starts in an NS record written after a 2-byte owner.
const NS_TARGET_AT: usize = RDATA_AT;

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

/// How long a first query for a service in another datacenter waits for
/// the agent's answer before it gets SERVFAIL.
const REMOTE_FIRST_WAIT: Duration = Duration::from_secs(3);

/// The DNS side of sidecar mode (implemented by `sync::consul`).
pub trait Remote: Send + Sync {
    /// The first full sync is done: a name not found is really unknown.
    fn ready(&self) -> bool;
    /// The agent lists this (lower-cased) datacenter.
    fn knows(&self, dc: &str) -> bool;
    /// Marks a remote service as used; true once its first answer is in.
    fn touch(&self, dc: &str, service: &str) -> bool;
    /// Watches a remote service from now on; resolves once its first
    /// answer is in the registry.
    fn watch(&self, dc: String, service: String) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

pub struct Handler {
    answers: Arc<Answers>,
    /// Static zones; swapped whole on reload.
    zones: arc_swap::ArcSwap<Vec<StaticZone>>,
    forwarder: Option<Arc<Forwarder>>,
    remote: Option<Arc<dyn Remote>>,
    stats: Arc<crate::metrics::DnsStats>,
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

/// Sets larger than this are walked affinely rather than shuffled.
const AFFINE_ABOVE: usize = 64;

/// A query's order of a record set.
#[derive(Clone, Copy)]
enum Draw {
    Lazy,
    Fixed,
    Affine { start: usize, stride: usize },
}

/// Seconds since the epoch, for cookie timestamps (read only when a query
/// carries a cookie).
fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Turns a reply into its empty, truncated form: header and question,
/// TC set, no records (RRL's slip: a real client retries over TCP).
fn slip(out: &mut Vec<u8>) {
    if out.len() < HEADER_LEN {
        return;
    }
    let mut end = HEADER_LEN;
    if out[5] > 0 {
        while end < out.len() && out[end] != 0 {
            end += 1 + out[end] as usize;
        }
        end = (end + 5).min(out.len());
    }
    out.truncate(end);
    out[2] |= 0x02;
    out[6..12].fill(0);
}

/// CHAOS TXT `id.server` and `hostname.bind` answer the server ID, as
/// operators ask which server of a shared address answered; anything else
/// in CHAOS (`version.bind` included) is refused.
fn chaos(w: &mut ResponseWriter<'_>, q: &Query<'_>, labels: &Labels<'_>, id: &[u8]) -> Rcode {
    let name = lower_fqdn(labels, 0);
    if !(name == "id.server." || name == "hostname.bind.") {
        return Rcode::Refused;
    }
    if q.qtype == rtype::TXT || q.qtype == rtype::ANY {
        let id = &id[..id.len().min(255)];
        let rdlen = (id.len() + 1) as u16;
        w.answer(&[
            &[0xC0, 0x0C],
            &rtype::TXT.to_be_bytes(),
            &CLASS_CH.to_be_bytes(),
            &0u32.to_be_bytes(),
            &rdlen.to_be_bytes(),
            &[id.len() as u8],
            id,
        ]);
    }
    Rcode::NoError
}

/// The entries of `set` carrying every tag of `tags` and none of its
/// `!tag`s (membership by identity: a tag's set shares the entries). Each
/// tag's members are looked up once, so a query costs one pass over the
/// service's entries, not one per entry and tag.
fn filter_by_tags(set: &super::answers::ServiceSet, tags: &[String]) -> super::answers::RecordSet {
    let rules: Vec<(
        bool,
        std::collections::HashSet<*const super::answers::Entry>,
    )> = tags
        .iter()
        .map(|t| {
            let (wanted, tag) = match t.strip_prefix('!') {
                Some(not) => (false, not),
                None => (true, t.as_str()),
            };
            let members = set
                .tags
                .get(tag.to_ascii_lowercase().as_str())
                .map(|t| t.entries.iter().map(Arc::as_ptr).collect())
                .unwrap_or_default();
            (wanted, members)
        })
        .collect();
    let entries: Vec<_> = set
        .all
        .entries
        .iter()
        .filter(|e| {
            rules
                .iter()
                .all(|(wanted, members)| members.contains(&Arc::as_ptr(e)) == *wanted)
        })
        .cloned()
        .collect();
    super::answers::RecordSet::of(entries, set.all.targets)
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Lower-cases one label into `buf`; `None` if it is not UTF-8 (then no
/// registered name can match it).
fn lower<'b>(label: &[u8], buf: &'b mut [u8; 63]) -> Option<&'b str> {
    let out = &mut buf[..label.len()];
    out.copy_from_slice(label);
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}

fn parse_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// The address of a full reverse name (`4.3.2.1.in-addr.arpa`, 32 nibbles
/// `.ip6.arpa`); `None` for anything else.
fn reverse_address(labels: &Labels<'_>) -> Option<IpAddr> {
    let n = labels.len();
    let is = |i: usize, w: &str| labels.get(i).eq_ignore_ascii_case(w.as_bytes());
    if n == 6 && is(4, "in-addr") && is(5, "arpa") {
        let mut octets = [0u8; 4];
        for (i, o) in octets.iter_mut().enumerate() {
            let l = labels.get(3 - i);
            if l.is_empty() || l.len() > 3 || !l.iter().all(u8::is_ascii_digit) {
                return None;
            }
            *o = std::str::from_utf8(l).ok()?.parse().ok()?;
        }
        return Some(IpAddr::from(octets));
    }
    if n == 34 && is(32, "ip6") && is(33, "arpa") {
        let mut octets = [0u8; 16];
        for i in 0..32 {
            let l = labels.get(31 - i);
            if l.len() != 1 {
                return None;
            }
            let nibble = (l[0] as char).to_digit(16)? as u8;
            octets[i / 2] |= if i % 2 == 0 { nibble << 4 } else { nibble };
        }
        return Some(IpAddr::from(octets));
    }
    None
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

fn is_reverse(labels: &Labels<'_>) -> bool {
    labels.len() >= 2
        && labels.get(labels.len() - 1).eq_ignore_ascii_case(b"arpa")
        && (labels
            .get(labels.len() - 2)
            .eq_ignore_ascii_case(b"in-addr")
            || labels.get(labels.len() - 2).eq_ignore_ascii_case(b"ip6"))
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

    fn is_trusted(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&client))
    }

    /// The largest UDP answer a client may get, and signpost advertises to
    /// it: trusted clients up to `udp_payload_max_trusted`, others the
    /// fragmentation-safe `udp_payload_max`.
    fn udp_cap(&self, trusted: bool) -> u16 {
        let dns = &self.answers.config().dns;
        if trusted {
            dns.udp_payload_max_trusted
        } else {
            dns.udp_payload_max
        }
    }

    /// Serves these static zones from now on.
    pub fn set_zones(&self, zones: Vec<StaticZone>) {
        self.zones.store(Arc::new(zones));
    }

    /// Applies reloaded cookie and rate-limit settings (those of the
    /// answers' current config). Unchanged settings keep their state: a
    /// random cookie secret stays, and so do the rate limiter's buckets.
    pub fn reload_admission(&self) {
        let dns = self.answers.config().dns.clone();
        if !self
            .cookies
            .load()
            .made_from(dns.cookie_secret, dns.cookie_secret_previous)
        {
            self.cookies.store(Arc::new(super::cookie::Cookies::new(
                dns.cookie_secret,
                dns.cookie_secret_previous,
            )));
            tracing::info!("reload: DNS cookie secret changed");
        }
        if !self
            .rrl
            .load()
            .is(dns.rrl_responses_per_second, dns.rrl_slip)
        {
            self.rrl.store(Arc::new(super::cookie::RateLimit::new(
                dns.rrl_responses_per_second,
                dns.rrl_slip,
            )));
            tracing::info!(
                rate = dns.rrl_responses_per_second,
                slip = dns.rrl_slip,
                "reload: DNS response rate limit changed"
            );
        }
    }

    /// Counts replies into `stats` (the listeners record every one).
    pub fn with_stats(mut self, stats: Arc<crate::metrics::DnsStats>) -> Handler {
        self.stats = stats;
        self
    }

    pub fn stats(&self) -> &crate::metrics::DnsStats {
        &self.stats
    }

    /// How long a UDP query may wait in the socket queue before it is
    /// dropped unanswered.
    pub fn shed_after(&self) -> Duration {
        Duration::from_millis(self.answers.config().dns.shed_after_ms.into())
    }

    /// Sidecar mode: readiness and other datacenters come from the sync.
    pub fn with_remote(mut self, remote: Arc<dyn Remote>) -> Handler {
        self.remote = Some(remote);
        self
    }

    /// Answers a query `handle` sent to [`Outcome::Remote`]: starts watching
    /// the service in its datacenter, waits (a bounded time) for the first
    /// answer, and answers from memory.
    pub async fn remote(&self, query: &[u8], transport: Transport, client: IpAddr) -> Vec<u8> {
        let Parsed::Query(q) = parse_query(query) else {
            return Vec::new();
        };
        if let (Some(r), Some((dc, name))) = (&self.remote, self.remote_target(&q)) {
            let _ = tokio::time::timeout(REMOTE_FIRST_WAIT, r.watch(dc, name)).await;
        }
        let mut out = Vec::new();
        match self.handle(query, transport, client, &mut out, &mut Scratch::default()) {
            Outcome::Reply => out,
            Outcome::Forward => match self.admit_forward(query, client) {
                Ok(t) => self.forward(query, transport, t).await,
                Err(reply) => reply,
            },
            Outcome::Drop => Vec::new(),
            Outcome::Remote => {
                let trusted = self.is_trusted(client);
                let w = ResponseWriter::new(&mut out, &q, self.budget(transport, q.edns, trusted));
                let flags = Flags {
                    authoritative: false,
                    recursion_available: self.forwarder.is_some(),
                };
                w.finish(Rcode::ServFail, flags, self.udp_cap(trusted));
                out
            }
        }
    }

    /// (datacenter, service), lower-cased, of a query for a service in a
    /// named datacenter.
    fn remote_target(&self, q: &Query<'_>) -> Option<(String, String)> {
        let labels = Labels::split(q.qname)?;
        let head = self
            .answers
            .config()
            .domains
            .iter()
            .find_map(|d| labels.strip_domain(d))?;
        match classify(&labels, head) {
            Lookup::Service {
                name, dc: Some(dc), ..
            } => Some((
                String::from_utf8_lossy(dc).to_ascii_lowercase(),
                String::from_utf8_lossy(name).to_ascii_lowercase(),
            )),
            // A prepared query failing over: the first of its datacenters
            // whose service is not watched yet.
            Lookup::Query { name, .. } => {
                let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                let spec = self
                    .answers
                    .template(&name)
                    .map(Arc::new)
                    .or_else(|| self.answers.query_failover(&name))?;
                let service = spec.service.to_ascii_lowercase();
                let remote = self.remote.as_ref()?;
                spec.failover_datacenters().into_iter().find_map(|dc| {
                    (remote.knows(&dc)
                        && self.answers.service_in(&dc, &service).is_none()
                        && !remote.touch(&dc, &service))
                    .then(|| (dc, service.clone()))
                })
            }
            _ => None,
        }
    }

    /// The reply budget of a query on a transport.
    fn budget(
        &self,
        transport: Transport,
        edns: Option<super::wire::Edns>,
        trusted: bool,
    ) -> usize {
        match (transport, edns) {
            (Transport::Tcp, _) => TCP_MAX,
            (Transport::Udp, None) => PLAIN_UDP_MAX,
            (Transport::Udp, Some(e)) => {
                (e.payload as usize).clamp(PLAIN_UDP_MAX, self.udp_cap(trusted) as usize)
            }
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

    fn answer(
        &self,
        query: &[u8],
        transport: Transport,
        client: IpAddr,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
        limited: &mut bool,
    ) -> Outcome {
        let q = match parse_query(query) {
            Parsed::Drop => return Outcome::Drop,
            Parsed::Error {
                id,
                opcode,
                rd,
                rcode,
                edns,
            } => {
                ResponseWriter::error(out, id, opcode, rd, rcode, edns.is_some());
                return Outcome::Reply;
            }
            Parsed::Query(q) => q,
        };
        // One load of the settings for the whole query.
        let settings = self.answers.config();
        let dns = &settings.dns;
        // RA tells clients recursion is on offer: only with upstreams.
        let mut flags = Flags {
            authoritative: false,
            recursion_available: self.forwarder.is_some(),
        };
        let trusted = self.is_trusted(client);
        let cookie = q.edns.and_then(|e| e.cookie);
        let cookies = self.cookies.load();
        let now = cookie.map(|_| unix_now()).unwrap_or(0);
        let proven = cookie
            .is_some_and(|c| c.server_len > 0 && cookies.valid(&c.client, c.server(), client, now));
        // Neither trusted nor proven over UDP: the classic 512 bytes at
        // most, and rate limited (see `handle`).
        *limited = transport == Transport::Udp && !trusted && !proven;
        let mut budget = self.budget(transport, q.edns, trusted);
        if *limited {
            budget = budget.min(PLAIN_UDP_MAX);
        }
        let payload = self.udp_cap(trusted);
        let mut w = ResponseWriter::new(out, &q, budget);
        if let Some(c) = cookie {
            w.cookie(&c.client, &cookies.server_cookie(&c.client, client, now));
            // A server cookie that is not ours (or too old): BADCOOKIE with
            // a fresh one, so that the client retries with it.
            if c.server_len > 0 && !proven && *limited {
                self.stats.bad_cookies.fetch_add(1, Ordering::Relaxed);
                w.finish(Rcode::BadCookie, flags, payload);
                return Outcome::Reply;
            }
        }
        let server_id = if dns.server_id.is_empty() {
            settings.node_name.as_bytes()
        } else {
            dns.server_id.as_bytes()
        };
        if q.edns.is_some_and(|e| e.nsid) {
            w.nsid(server_id);
        }
        if q.edns.is_some_and(|e| e.version > 0) {
            w.finish(Rcode::BadVers, flags, payload);
            return Outcome::Reply;
        }
        let Some(labels) = Labels::split(q.qname) else {
            w.finish(Rcode::FormErr, flags, payload);
            return Outcome::Reply;
        };
        if q.qclass == CLASS_CH {
            let rcode = chaos(&mut w, &q, &labels, server_id);
            w.finish(rcode, flags, payload);
            return Outcome::Reply;
        }
        if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
            w.finish(Rcode::Refused, flags, payload);
            return Outcome::Reply;
        }
        if q.qtype == AXFR || q.qtype == IXFR {
            w.finish(Rcode::Refused, flags, payload);
            return Outcome::Reply;
        }
        let mut max = usize::MAX;
        if matches!(q.qtype, rtype::A | rtype::AAAA | rtype::ANY) && dns.a_record_limit > 0 {
            max = dns.a_record_limit as usize;
        }
        if transport == Transport::Udp && q.edns.is_none() && dns.udp_answer_limit > 0 {
            max = max.min(dns.udp_answer_limit as usize);
        }
        let Some((domain, head)) = settings
            .domains
            .iter()
            .enumerate()
            .find_map(|(i, d)| labels.strip_domain(d).map(|h| (i, h)))
        else {
            if is_reverse(&labels) {
                if let Some(rcode) = self.reverse(&mut w, &q, &labels) {
                    flags.authoritative = true;
                    w.finish(rcode, flags, payload);
                    return Outcome::Reply;
                }
            }
            let zones = self.zones.load();
            if let Some((zone, head)) = Self::static_zone(&zones, &labels) {
                let rcode = self.zone_answer(&mut w, &q, &labels, zone, head);
                flags.authoritative = true;
                w.finish(rcode, flags, payload);
                return Outcome::Reply;
            }
            return match &self.forwarder {
                // RD=0 asks for what signpost holds itself: not forwarded.
                Some(f) if f.allowed(client) && q.recursion_desired => {
                    if f.cached(query, budget, out) {
                        Outcome::Reply
                    } else {
                        Outcome::Forward
                    }
                }
                _ => {
                    w.finish(Rcode::Refused, flags, payload);
                    Outcome::Reply
                }
            };
        };
        let ask = Ask {
            qtype: q.qtype,
            max,
            domain,
            balance: dns.load_balancing,
        };
        let domain_at = HEADER_LEN + labels.offset(head);
        let found = self.lookup(&mut w, ask, classify(&labels, head), domain_at, scratch);
        let rcode = match found {
            Found::Remote => return Outcome::Remote,
            // Before the first full sync, "not found" may just be "not
            // synced yet": say so rather than cache a false NXDOMAIN.
            Found::NxDomain if self.remote.as_ref().is_some_and(|r| !r.ready()) => {
                w.finish(Rcode::ServFail, flags, payload);
                return Outcome::Reply;
            }
            Found::Answered | Found::NoData => Rcode::NoError,
            // Names with names below them (`service.consul`, `dc1.consul`,
            // `_tcp.service.consul`) exist (RFC 8020): NODATA.
            Found::NxDomain
                if super::name::empty_non_terminal(&labels, head).is_some_and(|nt| {
                    self.dc_known(nt.dc) && nt.tag.is_none_or(|t| self.answers.has_tag(t))
                }) =>
            {
                Rcode::NoError
            }
            Found::NxDomain => Rcode::NxDomain,
        };
        if !matches!(found, Found::Answered) {
            let owner = pointer(domain_at).expect("question name is near the start");
            w.authority(&[&owner, &settings.apex(domain).soa_tail]);
        }
        flags.authoritative = true;
        w.finish(rcode, flags, payload);
        Outcome::Reply
    }

    /// PTR for a registered address; `None` for any other reverse name,
    /// which is not signpost's to answer.
    fn reverse(
        &self,
        w: &mut ResponseWriter<'_>,
        q: &Query<'_>,
        labels: &Labels<'_>,
    ) -> Option<Rcode> {
        let ptrs = reverse_address(labels).and_then(|ip| self.answers.ptr(&ip))?;
        if matches!(q.qtype, rtype::PTR | rtype::ANY) {
            for rr in ptrs.iter() {
                if !w.answer(&[rr]) {
                    break;
                }
            }
        }
        Some(Rcode::NoError)
    }

    /// The static zone holding the name (the deepest one), and how many
    /// labels stand in front of its origin.
    fn static_zone<'z>(
        zones: &'z [StaticZone],
        labels: &Labels<'_>,
    ) -> Option<(&'z StaticZone, usize)> {
        zones
            .iter()
            .filter_map(|z| {
                let n = z.labels.len();
                let head = labels.len().checked_sub(n)?;
                (0..n)
                    .all(|i| {
                        labels
                            .get(head + i)
                            .eq_ignore_ascii_case(z.labels[i].as_bytes())
                    })
                    .then_some((z, head))
            })
            .min_by_key(|(_, head)| *head)
    }

    fn zone_answer(
        &self,
        w: &mut ResponseWriter<'_>,
        q: &Query<'_>,
        labels: &Labels<'_>,
        zone: &StaticZone,
        head: usize,
    ) -> Rcode {
        let owner_name = lower_fqdn(labels, 0);
        let negative = |w: &mut ResponseWriter<'_>| {
            let at = HEADER_LEN + labels.offset(head);
            let owner = pointer(at).expect("question name is near the start");
            w.authority(&[&owner, &zone.soa_tail]);
        };
        let Some(records) = zone.names.get(&owner_name) else {
            if zone.empty_nonterminals.contains(&owner_name) {
                negative(w);
                return Rcode::NoError;
            }
            negative(w);
            return Rcode::NxDomain;
        };
        if q.qtype != rtype::CNAME {
            if let Some(cname) = records.get(rtype::CNAME).and_then(|c| c.first()) {
                let at = w.len();
                if w.answer(&[cname]) {
                    self.chase_in_zone(w, zone, &cname[RDATA_AT..], at + RDATA_AT, q.qtype);
                }
                return Rcode::NoError;
            }
        }
        let mut any = false;
        for (t, rrs) in &records.sets {
            if q.qtype == rtype::ANY || *t == q.qtype {
                for rr in rrs {
                    any = true;
                    if !w.answer(&[rr]) {
                        return Rcode::NoError;
                    }
                }
            }
        }
        if !any {
            negative(w);
        }
        Rcode::NoError
    }

    /// The records a CNAME's target has in the same zone, owned by the
    /// target (a pointer into the CNAME's RDATA).
    fn chase_in_zone(
        &self,
        w: &mut ResponseWriter<'_>,
        zone: &StaticZone,
        target: &[u8],
        target_at: usize,
        qtype: u16,
    ) {
        let (Some(labels), Some(owner)) = (Labels::split(target), pointer(target_at)) else {
            return;
        };
        let Some(records) = zone.names.get(&lower_fqdn(&labels, 0)) else {
            return;
        };
        for (t, rrs) in &records.sets {
            if *t == qtype || qtype == rtype::ANY {
                for rr in rrs {
                    if !w.answer(&[&owner, &rr[2..]]) {
                        return;
                    }
                }
            }
        }
    }

    /// A datacenter signpost answers for: its own, or one the agent knows
    /// in sidecar mode.
    fn dc_known(&self, dc: Option<&[u8]>) -> bool {
        self.is_local_dc(dc)
            || dc.is_some_and(|d| {
                self.remote
                    .as_ref()
                    .is_some_and(|r| r.knows(&String::from_utf8_lossy(d).to_ascii_lowercase()))
            })
    }

    fn is_local_dc(&self, dc: Option<&[u8]>) -> bool {
        dc.is_none_or(|d| d.eq_ignore_ascii_case(self.answers.config().datacenter.as_bytes()))
    }

    fn lookup(
        &self,
        w: &mut ResponseWriter<'_>,
        ask: Ask,
        lookup: Lookup<'_>,
        domain_at: usize,
        scratch: &mut Scratch,
    ) -> Found {
        let mut buf = [0u8; 63];
        match lookup {
            Lookup::Apex => self.apex(w, ask, domain_at),
            Lookup::Service { name, tag, dc } => {
                let set = match dc.filter(|_| !self.is_local_dc(dc)) {
                    None => lower(name, &mut buf).and_then(|n| self.answers.service(n)),
                    Some(dc) => match self.remote_set(dc, name) {
                        Ok(set) => set,
                        Err(found) => return found,
                    },
                };
                let Some(set) = set else {
                    return Found::NxDomain;
                };
                let records = match tag {
                    None => &set.all,
                    Some(t) => match lower(t, &mut buf).and_then(|t| set.tags.get(t)) {
                        Some(r) => r,
                        None => return Found::NxDomain,
                    },
                };
                self.write_set(w, records, ask, scratch)
            }
            Lookup::Node { name, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let Some(node) = lower(name, &mut buf).and_then(|n| self.answers.node(n)) else {
                    return Found::NxDomain;
                };
                let addr = node.addr_rr.as_ref().filter(|_| match ask.qtype {
                    rtype::A => !node.is_v6,
                    rtype::AAAA => node.is_v6,
                    rtype::ANY => true,
                    _ => false,
                });
                let txt_answers = matches!(ask.qtype, rtype::TXT | rtype::ANY);
                let has_txt = txt_answers && !node.txt_rr.is_empty();
                if addr.is_none() && !has_txt {
                    return Found::NoData;
                }
                if let Some(rr) = addr {
                    w.answer(&[rr]);
                }
                for rr in &node.txt_rr {
                    let fits = if txt_answers {
                        w.answer(&[rr])
                    } else if self.answers.config().dns.node_meta_txt {
                        w.additional(&[rr])
                    } else {
                        true
                    };
                    if !fits {
                        break;
                    }
                }
                Found::Answered
            }
            Lookup::Addr { hex, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let ttl = self.answers.config().dns.service_ttl.get("").to_be_bytes();
                let write = |w: &mut ResponseWriter<'_>, t: u16, ip: &[u8]| {
                    let head = [0xC0, HEADER_LEN as u8];
                    let len = (ip.len() as u16).to_be_bytes();
                    w.answer(&[
                        &head,
                        &t.to_be_bytes(),
                        &CLASS_IN.to_be_bytes(),
                        &ttl,
                        &len,
                        ip,
                    ]);
                    Found::Answered
                };
                if let Some(v4) = parse_hex::<4>(hex) {
                    match ask.qtype {
                        rtype::A | rtype::ANY => write(w, rtype::A, &v4),
                        _ => Found::NoData,
                    }
                } else if let Some(v6) = parse_hex::<16>(hex) {
                    match ask.qtype {
                        rtype::AAAA | rtype::ANY => write(w, rtype::AAAA, &v6),
                        _ => Found::NoData,
                    }
                } else {
                    Found::NxDomain
                }
            }
            Lookup::Query { name, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let Some(lower_name) = lower(name, &mut buf) else {
                    return Found::NxDomain;
                };
                if let Some(set) = self.answers.query(lower_name) {
                    return self.write_set(w, &set, ask, scratch);
                }
                let template = self.answers.template(lower_name);
                if let Some(spec) = &template {
                    // A template's search, as `execute` makes it: tags,
                    // OnlyPassing, service and node meta, its TTL.
                    if let Some(set) = self.answers.template_set(lower_name, spec) {
                        if !set.entries.is_empty() {
                            return self.write_set(w, &set, ask, scratch);
                        }
                    }
                }
                // Nothing here: the failover datacenters, in order.
                let spec = template
                    .map(Arc::new)
                    .or_else(|| self.answers.query_failover(lower_name));
                let Some(spec) = spec else {
                    return Found::NxDomain;
                };
                for dc in spec.failover_datacenters() {
                    match self.remote_set(dc.as_bytes(), spec.service.as_bytes()) {
                        Ok(Some(set)) => {
                            let filtered = filter_by_tags(&set, &spec.tags);
                            if !filtered.entries.is_empty() {
                                return self.write_set(w, &filtered, ask, scratch);
                            }
                        }
                        Err(Found::Remote) => return Found::Remote,
                        Ok(None) | Err(_) => {}
                    }
                }
                Found::NxDomain
            }
            Lookup::Unknown => Found::NxDomain,
        }
    }

    /// A service's answers in another datacenter, when sidecar mode knows
    /// that datacenter; `Err` with the outcome otherwise.
    fn remote_set(
        &self,
        dc: &[u8],
        name: &[u8],
    ) -> Result<Option<Arc<super::answers::ServiceSet>>, Found> {
        let Some(r) = &self.remote else {
            return Err(Found::NxDomain);
        };
        let (mut dc_buf, mut name_buf) = ([0u8; 63], [0u8; 63]);
        let (Some(dc), Some(name)) = (lower(dc, &mut dc_buf), lower(name, &mut name_buf)) else {
            return Err(Found::NxDomain);
        };
        // An unknown datacenter is answered at once, never asked about.
        if !r.knows(dc) {
            return Err(Found::NxDomain);
        }
        match self.answers.service_in(dc, name) {
            Some(set) => {
                r.touch(dc, name);
                Ok(Some(set))
            }
            None if r.touch(dc, name) => Ok(None),
            None => Err(Found::Remote),
        }
    }

    fn apex(&self, w: &mut ResponseWriter<'_>, ask: Ask, domain_at: usize) -> Found {
        let settings = self.answers.config();
        let apex = settings.apex(ask.domain);
        let owner = pointer(domain_at).expect("question name is near the start");
        let soa = matches!(ask.qtype, rtype::SOA | rtype::ANY);
        let ns = matches!(ask.qtype, rtype::NS | rtype::ANY);
        if !soa && !ns {
            return Found::NoData;
        }
        if soa {
            w.answer(&[&owner, &apex.soa_tail]);
        }
        if ns {
            let at = w.len();
            if w.answer(&[&owner, &apex.ns_tail]) {
                if let Some(target) = pointer(at + NS_TARGET_AT) {
                    w.additional(&[&target, &apex.ns_glue_tail]);
                }
            }
        }
        Found::Answered
    }

    /// How this query orders the entries of `set`: a lazy shuffle, an
    /// order put in `s.order`, or for large sets a random affine walk
    /// (`start + i·stride mod n`, stride coprime to n), which needs no
    /// per-query setup, so a 5,000-instance answer costs what its few
    /// answered records cost.
    fn order(&self, set: &RecordSet, mode: Balance, s: &mut Scratch) -> Draw {
        let n = set.entries.len();
        let uniform = matches!(mode, Balance::Random) || (mode == Balance::Weighted && set.uniform);
        if uniform && n > AFFINE_ABOVE {
            let mut stride = s.rng.usize(1..n);
            while gcd(stride, n) != 1 {
                stride = s.rng.usize(1..n);
            }
            return Draw::Affine {
                start: s.rng.usize(0..n),
                stride,
            };
        }
        s.order.clear();
        s.order.extend(0..n as u32);
        match mode {
            Balance::Random => Draw::Lazy,
            Balance::Weighted if set.uniform => Draw::Lazy,
            Balance::RoundRobin => {
                let start = set.next.fetch_add(1, Ordering::Relaxed) as usize % n;
                s.order.rotate_left(start);
                Draw::Fixed
            }
            Balance::Weighted => {
                // Efraimidis–Spirakis: sorting by -ln(u)/w draws a random
                // order in which each entry comes first with probability
                // w / Σw. Weight 0 goes last, in random order.
                s.keys.clear();
                for (i, e) in set.entries.iter().enumerate() {
                    let u = s.rng.f64();
                    let key = if e.weight == 0 {
                        (true, u)
                    } else {
                        (false, -(1.0 - u).ln() / e.weight as f64)
                    };
                    s.keys.push((key.0, key.1, i as u32));
                }
                s.keys
                    .sort_unstable_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).expect("no NaN"));
                s.order.clear();
                s.order.extend(s.keys.iter().map(|k| k.2));
                Draw::Fixed
            }
        }
    }

    /// Writes a service's records of the asked type in this query's order,
    /// as many as fit and as the limits allow; then, for SRV, the glue and
    /// node TXT of the targets that made it in. A/AAAA questions about a
    /// service whose instances have host names get one CNAME.
    fn write_set(
        &self,
        w: &mut ResponseWriter<'_>,
        set: &RecordSet,
        ask: Ask,
        s: &mut Scratch,
    ) -> Found {
        let qtype = ask.qtype;
        let wants = |e: &Entry| -> bool {
            match qtype {
                rtype::A => e.addr_rr.is_some() && !e.is_v6,
                rtype::AAAA => e.addr_rr.is_some() && e.is_v6,
                rtype::ANY => e.addr_rr.is_some(),
                rtype::SRV => true,
                _ => false,
            }
        };
        if !matches!(qtype, rtype::A | rtype::AAAA | rtype::ANY | rtype::SRV) {
            return Found::NoData;
        }
        // SRV is always a weighted draw (RFC 2782); A/AAAA follow the setting.
        let mode = if qtype == rtype::SRV {
            Balance::Weighted
        } else {
            ask.balance
        };
        let draw = self.order(set, mode, s);
        let n = set.entries.len();
        s.written.clear();
        let mut matched = false;
        let mut cname: Option<u32> = None;
        for i in 0..n {
            let idx = match draw {
                Draw::Lazy => {
                    let j = s.rng.usize(i..n);
                    s.order.swap(i, j);
                    s.order[i]
                }
                Draw::Fixed => s.order[i],
                Draw::Affine { start, stride } => ((start + i * stride) % n) as u32,
            };
            let e = &set.entries[idx as usize];
            if !wants(e) {
                if e.cname_rr.is_some() && cname.is_none() {
                    cname = Some(idx);
                }
                continue;
            }
            matched = true;
            if s.written.len() >= ask.max {
                break;
            }
            let at = w.len();
            let rr = if qtype == rtype::SRV {
                &e.srv_rr[ask.domain]
            } else {
                e.addr_rr.as_ref().expect("filtered above")
            };
            if !w.answer(&[rr]) {
                break;
            }
            s.written.push((idx, at + SRV_TARGET_AT));
        }
        if !matched {
            return match cname {
                Some(idx) => self.write_cname(w, &set.entries[idx as usize], ask, s),
                None => Found::NoData,
            };
        }
        if qtype == rtype::SRV {
            self.srv_additionals(w, set, s);
        }
        Found::Answered
    }

    fn srv_additionals(&self, w: &mut ResponseWriter<'_>, set: &RecordSet, s: &mut Scratch) {
        s.seen_target.clear();
        s.seen_target.resize(set.targets as usize, false);
        for &(idx, target_at) in &s.written {
            let e = &set.entries[idx as usize];
            let seen = &mut s.seen_target[e.target_id as usize];
            if *seen {
                continue;
            }
            *seen = true;
            // The target, as a pointer into the SRV record when in reach.
            let p = pointer(target_at);
            let owner: &[u8] = match &p {
                Some(p) => p,
                None => &e.srv_rr[0][SRV_TARGET_AT..],
            };
            if e.glue {
                if let Some(tail) = e.addr_tail() {
                    if !w.additional(&[owner, tail]) {
                        return;
                    }
                }
            }
            for txt in e.node_txt.iter() {
                if !w.additional(&[owner, txt]) {
                    return;
                }
            }
        }
    }

    /// One CNAME to an instance's host name, then, when the host name is in
    /// signpost's own domain, its addresses.
    fn write_cname(
        &self,
        w: &mut ResponseWriter<'_>,
        e: &Entry,
        ask: Ask,
        s: &mut Scratch,
    ) -> Found {
        let rr = e.cname_rr.as_ref().expect("chosen for its CNAME");
        let at = w.len();
        if !w.answer(&[rr]) {
            return Found::Answered;
        }
        let target = &rr[RDATA_AT..];
        let Some(labels) = Labels::split(target) else {
            return Found::Answered;
        };
        let domains = &self.answers.config().domains;
        let Some(head) = domains.iter().find_map(|d| labels.strip_domain(d)) else {
            return Found::Answered;
        };
        let Some(owner) = pointer(at + RDATA_AT) else {
            return Found::Answered;
        };
        let mut buf = [0u8; 63];
        let addr_ok = |e: &Entry| match ask.qtype {
            rtype::A => e.addr_rr.is_some() && !e.is_v6,
            rtype::AAAA => e.addr_rr.is_some() && e.is_v6,
            _ => e.addr_rr.is_some(),
        };
        match classify(&labels, head) {
            Lookup::Service { name, tag, dc } if self.is_local_dc(dc) => {
                let Some(set) = lower(name, &mut buf).and_then(|n| self.answers.service(n)) else {
                    return Found::Answered;
                };
                let records = match tag {
                    None => &set.all,
                    Some(t) => match lower(t, &mut buf).and_then(|t| set.tags.get(t)) {
                        Some(r) => r,
                        None => return Found::Answered,
                    },
                };
                let n = records.entries.len();
                s.order.clear();
                s.order.extend(0..n as u32);
                let mut written = 1;
                for i in 0..n {
                    let j = s.rng.usize(i..n);
                    s.order.swap(i, j);
                    let e = &records.entries[s.order[i] as usize];
                    if !addr_ok(e) {
                        continue;
                    }
                    if written >= ask.max
                        || !w.answer(&[&owner, e.addr_tail().expect("has an address")])
                    {
                        break;
                    }
                    written += 1;
                }
            }
            Lookup::Node { name, dc } if self.is_local_dc(dc) => {
                if let Some(node) = lower(name, &mut buf).and_then(|n| self.answers.node(n)) {
                    let ok = match ask.qtype {
                        rtype::A => !node.is_v6,
                        rtype::AAAA => node.is_v6,
                        _ => true,
                    };
                    if let Some(rr) = node.addr_rr.as_ref().filter(|_| ok && ask.max > 1) {
                        w.answer(&[&owner, &rr[2..]]);
                    }
                }
            }
            _ => {}
        }
        Found::Answered
    }
}
