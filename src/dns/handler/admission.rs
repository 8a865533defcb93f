//! Admission of a query: who is trusted, the UDP size budget (EDNS,
//! cookies), response rate limiting for unproven clients, and the top of
//! answering (`answer`), which admits and then routes.

use super::routing::{chaos, is_reverse};
use super::*;

/// Seconds since the epoch, for cookie timestamps (read only when a query
/// carries a cookie).
pub(super) fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// Turns a reply into its empty, truncated form: header and question,
/// TC set, no records (RRL's slip: a real client retries over TCP).
pub(super) fn slip(out: &mut Vec<u8>) {
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

impl Handler {
    pub(super) fn is_trusted(&self, client: IpAddr) -> bool {
        let client = match client {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(client),
            v4 => v4,
        };
        self.trusted.iter().any(|net| net.contains(&client))
    }

    /// The largest UDP answer a client may get, and signpost advertises to
    /// it: trusted clients up to `udp_payload_max_trusted`, others the
    /// fragmentation-safe `udp_payload_max`.
    pub(super) fn udp_cap(&self, trusted: bool) -> u16 {
        let dns = &self.answers.config().dns;
        if trusted {
            dns.udp_payload_max_trusted
        } else {
            dns.udp_payload_max
        }
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
            self.cookies
                .store(Arc::new(crate::dns::cookie::Cookies::new(
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
            self.rrl.store(Arc::new(crate::dns::cookie::RateLimit::new(
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

    /// The reply budget of a query on a transport.
    pub(super) fn budget(
        &self,
        transport: Transport,
        edns: Option<crate::dns::wire::Edns>,
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

    pub(super) fn answer(
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
        // Loaded only for a query that carries a cookie (most carry none).
        let cookies = cookie.map(|_| self.cookies.load());
        let now = cookie.map(|_| unix_now()).unwrap_or(0);
        let proven = cookie
            .zip(cookies.as_deref())
            .is_some_and(|(c, k)| c.server_len > 0 && k.valid(&c.client, c.server(), client, now));
        // Neither trusted nor proven over UDP: the classic 512 bytes at
        // most, and rate limited (see `handle`).
        *limited = transport == Transport::Udp && !trusted && !proven;
        let mut budget = self.budget(transport, q.edns, trusted);
        if *limited {
            budget = budget.min(PLAIN_UDP_MAX);
        }
        let payload = self.udp_cap(trusted);
        let mut w = ResponseWriter::new(out, &q, budget);
        if let (Some(c), Some(cookies)) = (cookie, cookies.as_deref()) {
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
                if crate::dns::name::empty_non_terminal(&labels, head).is_some_and(|nt| {
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
}
