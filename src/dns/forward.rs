//! Forwarding: names outside signpost's zones go to the upstream
//! resolvers, over the transport the client used, one upstream after the
//! other until one answers (a timeout or SERVFAIL moves on), and answers
//! are cached for their TTL.
//!
//! Only clients inside the allowed ranges get this; signpost listening on a
//! public address never becomes an open resolver.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, ResponseCode};
use hickory_proto::rr::RData;
use lru::LruCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::handler::Transport;
use super::wire::{parse_query, Flags, Parsed, Rcode, ResponseWriter};
use crate::config::Recursors;

/// Forwarded queries in flight at most; beyond, SERVFAIL at once.
const MAX_IN_FLIGHT: usize = 1024;
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
    in_flight: Semaphore,
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
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
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
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
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
    /// (SERVFAIL when every upstream failed).
    pub async fn forward(&self, raw: &[u8], transport: Transport, budget: usize) -> Vec<u8> {
        let Ok(_slot) = self.in_flight.try_acquire() else {
            return self.servfail(raw);
        };
        let mut order = self.upstreams.clone();
        if self.random {
            fastrand::shuffle(&mut order);
        }
        // A fresh ID upstream, so that answers cannot be matched to the
        // client's guessable one.
        let id = fastrand::u16(..);
        let mut query = raw.to_vec();
        query[..2].copy_from_slice(&id.to_be_bytes());
        let Ok(asked) = Message::from_vec(raw) else {
            return self.servfail(raw);
        };
        for upstream in order {
            let exchange = async {
                match transport {
                    Transport::Udp => exchange_udp(upstream, &query, id).await,
                    Transport::Tcp => exchange_tcp(upstream, &query).await,
                }
            };
            let bytes = match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::debug!("upstream {upstream} failed: {e}");
                    continue;
                }
                Err(_) => {
                    tracing::debug!("upstream {upstream} timed out");
                    continue;
                }
            };
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
                self.cache.lock().unwrap_or_else(|e| e.into_inner()).put(
                    key,
                    Cached {
                        message: m.clone(),
                        stored: Instant::now(),
                        ttl,
                    },
                );
            }
            if let Some(reply) = self.reply(m, raw, budget, 0) {
                return reply;
            }
        }
        self.servfail(raw)
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

    fn servfail(&self, raw: &[u8]) -> Vec<u8> {
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
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
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
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
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
