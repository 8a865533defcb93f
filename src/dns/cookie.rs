//! What keeps signpost on a public address from amplifying anything: DNS
//! cookies (RFC 7873, with RFC 9018's interoperable server cookie) and
//! response rate limiting for clients outside the trusted ranges that have
//! no valid server cookie.
//!
//! Such a client gets at most 512 bytes over UDP, and at most `rate`
//! answers a second per /24 (/56 for IPv6); past that, every `slip`-th
//! answer is sent empty with TC (a real client retries over TCP, where no
//! address can be spoofed) and the others are dropped, as Knot's and
//! BIND's response rate limiting do. A client that echoes a valid server
//! cookie proved its address and is exempt.

use std::hash::Hasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use siphasher::sip::SipHasher24;

/// RFC 9018: a server cookie older than an hour is invalid; one from up to
/// five minutes in the future is accepted (clock skew within a fleet).
const MAX_AGE: u32 = 3600;
const MAX_AHEAD: u32 = 300;

/// The server secret(s): the current one signs, the previous one is still
/// accepted, so a fleet rotating its secret fails no client.
pub struct Cookies {
    secret: [u8; 16],
    previous: Option<[u8; 16]>,
    /// The settings it was made from (`None`: a random secret), so that a
    /// reload with the same settings keeps the random one.
    configured: (Option<[u8; 16]>, Option<[u8; 16]>),
}

impl Cookies {
    /// `secret`: shared by a fleet (from config); a random one otherwise.
    pub fn new(secret: Option<[u8; 16]>, previous: Option<[u8; 16]>) -> Cookies {
        let configured = (secret, previous);
        let secret = secret.unwrap_or_else(|| std::array::from_fn(|_| fastrand::u8(..)));
        Cookies {
            secret,
            previous,
            configured,
        }
    }

    /// Whether these cookies were made from these settings.
    pub fn made_from(&self, secret: Option<[u8; 16]>, previous: Option<[u8; 16]>) -> bool {
        self.configured == (secret, previous)
    }

    fn hash(secret: &[u8; 16], client: &[u8; 8], head: &[u8; 8], ip: IpAddr) -> [u8; 8] {
        let mut h = SipHasher24::new_with_key(secret);
        h.write(client);
        h.write(head);
        match ip {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.finish().to_be_bytes()
    }

    /// RFC 9018's server cookie: version 1, three reserved bytes, the
    /// time, and SipHash-2-4 of client cookie, those 8 bytes and the
    /// client's address.
    pub fn server_cookie(&self, client: &[u8; 8], ip: IpAddr, now: u32) -> [u8; 16] {
        let mut head = [1, 0, 0, 0, 0, 0, 0, 0];
        head[4..].copy_from_slice(&now.to_be_bytes());
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&head);
        out[8..].copy_from_slice(&Self::hash(&self.secret, client, &head, ip));
        out
    }

    /// Whether `server` is a cookie this fleet gave `client` at `ip`
    /// recently.
    pub fn valid(&self, client: &[u8; 8], server: &[u8], ip: IpAddr, now: u32) -> bool {
        let Ok(server) = <&[u8; 16]>::try_from(server) else {
            return false;
        };
        if server[0] != 1 {
            return false;
        }
        let head: [u8; 8] = server[..8].try_into().expect("8 bytes");
        let t = u32::from_be_bytes(server[4..8].try_into().expect("4 bytes"));
        if t.wrapping_add(MAX_AGE) < now || t > now.saturating_add(MAX_AHEAD) {
            return false;
        }
        std::iter::once(&self.secret)
            .chain(self.previous.as_ref())
            .any(|s| Self::hash(s, client, &head, ip) == server[8..])
    }
}

/// What to do with an answer to a rate-limited client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it empty, with TC.
    Slip,
    Drop,
}

/// Per-prefix token buckets.
pub struct RateLimit {
    /// Answers a second per prefix; 0 turns limiting off.
    rate: u32,
    /// Every `slip`-th limited answer goes out truncated; 0: none do.
    slip: u32,
    /// Sharded: every DNS thread checks here for every limited answer, so
    /// a flood must not serialise them on one lock.
    buckets: DashMap<[u8; 8], Bucket, foldhash::fast::RandomState>,
    /// When the buckets were last swept; taken only while they are full.
    swept: Mutex<Instant>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
    limited: u32,
}

/// Prefixes tracked at most; past it, idle ones are swept (a flood from
/// random addresses costs bounded memory).
const MAX_PREFIXES: usize = 100_000;

fn prefix(ip: IpAddr) -> [u8; 8] {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, o[0], o[1], o[2], 0, 0, 0, 0]
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            // A /56: seven bytes.
            [6, o[0], o[1], o[2], o[3], o[4], o[5], o[6]]
        }
    }
}

impl RateLimit {
    /// Whether this limiter has these settings.
    pub fn is(&self, rate: u32, slip: u32) -> bool {
        (self.rate, self.slip) == (rate, slip)
    }

    pub fn new(rate: u32, slip: u32) -> RateLimit {
        RateLimit {
            rate,
            slip,
            buckets: DashMap::default(),
            swept: Mutex::new(Instant::now()),
        }
    }

    pub fn check(&self, ip: IpAddr, now: Instant) -> Verdict {
        if self.rate == 0 {
            return Verdict::Send;
        }
        if self.buckets.len() >= MAX_PREFIXES {
            // One thread sweeps; the others need not wait for it.
            let swept = match self.swept.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            };
            if let Some(mut swept) = swept {
                if now.duration_since(*swept) > Duration::from_millis(100) {
                    self.buckets
                        .retain(|_, v| now.duration_since(v.last) < Duration::from_secs(2));
                    *swept = now;
                }
            }
            if self.buckets.len() >= MAX_PREFIXES {
                return Verdict::Drop;
            }
        }
        let rate = f64::from(self.rate);
        let mut bucket = self.buckets.entry(prefix(ip)).or_insert(Bucket {
            tokens: rate,
            last: now,
            limited: 0,
        });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Send;
        }
        bucket.limited = bucket.limited.wrapping_add(1);
        if self.slip > 0 && bucket.limited.is_multiple_of(self.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// A secret given in config: 32 hex digits.
pub fn parse_secret(hex: &str) -> Result<[u8; 16], String> {
    let hex = hex.trim();
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err("a cookie secret is 32 hex digits (16 bytes)".into());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex checked");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_validate_for_their_client_only_and_survive_rotation() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let client = [1, 2, 3, 4, 5, 6, 7, 8];
        let old = Cookies::new(Some([7; 16]), None);
        let c = old.server_cookie(&client, ip, 1_000_000);
        assert!(old.valid(&client, &c, ip, 1_000_010));
        assert!(!old.valid(&client, &c, other, 1_000_010), "another address");
        assert!(
            !old.valid(&[9; 8], &c, ip, 1_000_010),
            "another client cookie"
        );
        assert!(!old.valid(&client, &c, ip, 1_000_000 + 3601), "too old");
        assert!(!old.valid(&client, &c[..15], ip, 1_000_010), "wrong length");
        let rotated = Cookies::new(Some([8; 16]), Some([7; 16]));
        assert!(rotated.valid(&client, &c, ip, 1_000_010), "previous secret");
        let fresh = Cookies::new(Some([9; 16]), None);
        assert!(!fresh.valid(&client, &c, ip, 1_000_010));
    }

    #[test]
    fn rate_limit_per_prefix_with_slip() {
        let rl = RateLimit::new(5, 2);
        let t = Instant::now();
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let same_24: IpAddr = "198.51.100.200".parse().unwrap();
        let other: IpAddr = "198.51.101.1".parse().unwrap();
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| rl.check(if i % 2 == 0 { a } else { same_24 }, t))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Send).count(), 5);
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Slip).count(), 2);
        assert_eq!(rl.check(other, t), Verdict::Send, "another /24");
        assert_eq!(
            rl.check(a, t + Duration::from_secs(1)),
            Verdict::Send,
            "refilled"
        );
    }

    #[test]
    fn tracked_prefixes_are_bounded_and_swept_when_idle() {
        let rl = RateLimit::new(5, 2);
        let t = Instant::now();
        for i in 0..MAX_PREFIXES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i << 8));
            assert_eq!(rl.check(ip, t), Verdict::Send);
        }
        // Beyond the /24s above (they end at 1.134.159.0/24).
        let new: IpAddr = "203.0.113.1".parse().unwrap();
        assert_eq!(rl.check(new, t), Verdict::Drop, "full: a new prefix waits");
        assert_eq!(
            rl.check(new, t + Duration::from_secs(3)),
            Verdict::Send,
            "idle prefixes swept"
        );
        assert_eq!(rl.buckets.len(), 1);
    }

    #[test]
    fn secrets_parse() {
        assert_eq!(parse_secret(&"ab".repeat(16)).unwrap(), [0xab; 16]);
        assert!(parse_secret("abc").is_err());
    }
}
