//! The request handler: query bytes in, response bytes out.
//!
//! Pure and synchronous: it reads the answer sets and nothing else, so the
//! same function serves UDP, TCP, tests and benchmarks.

use std::sync::Arc;

use super::answers::{Answers, RecordSet, NS_TARGET_AT, SRV_TARGET_AT};
use super::name::{classify, Labels, Lookup};
use super::wire::{
    parse_query, pointer, rtype, Flags, Parsed, Query, Rcode, ResponseWriter, CLASS_ANY, CLASS_IN,
    HEADER_LEN, PLAIN_UDP_MAX,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The largest DNS message, and so the budget of a TCP reply.
pub const TCP_MAX: usize = 65535;

/// Per-loop working memory, reused across queries so that answering
/// allocates nothing once warmed up.
pub struct Scratch {
    rng: fastrand::Rng,
    order: Vec<u32>,
    /// (entry index, offset of its SRV target in the message)
    written: Vec<(u32, usize)>,
    seen_target: Vec<bool>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            rng: fastrand::Rng::new(),
            order: Vec::new(),
            written: Vec::new(),
            seen_target: Vec::new(),
        }
    }
}

pub struct Handler {
    answers: Arc<Answers>,
    udp_payload_max: u16,
}

/// Outcome of a lookup inside the domain.
enum Found {
    Answered,
    NoData,
    NxDomain,
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

impl Handler {
    pub fn new(answers: Arc<Answers>, udp_payload_max: u16) -> Handler {
        Handler {
            answers,
            udp_payload_max,
        }
    }

    /// Answers one query. Returns `false` when nothing should be sent.
    pub fn handle(
        &self,
        query: &[u8],
        transport: Transport,
        out: &mut Vec<u8>,
        scratch: &mut Scratch,
    ) -> bool {
        let q = match parse_query(query) {
            Parsed::Drop => return false,
            Parsed::Error {
                id,
                opcode,
                rd,
                rcode,
                edns,
            } => {
                ResponseWriter::error(out, id, opcode, rd, rcode, edns.is_some());
                return true;
            }
            Parsed::Query(q) => q,
        };
        let flags = Flags {
            authoritative: false,
            recursion_available: false,
        };
        let budget = match (transport, q.edns) {
            (Transport::Tcp, _) => TCP_MAX,
            (Transport::Udp, None) => PLAIN_UDP_MAX,
            (Transport::Udp, Some(e)) => {
                (e.payload as usize).clamp(PLAIN_UDP_MAX, self.udp_payload_max as usize)
            }
        };
        let payload = self.udp_payload_max;
        let mut w = ResponseWriter::new(out, &q, budget);
        if q.edns.is_some_and(|e| e.version > 0) {
            w.finish(Rcode::BadVers, flags, payload);
            return true;
        }
        if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
            w.finish(Rcode::Refused, flags, payload);
            return true;
        }
        let Some(labels) = Labels::split(q.qname) else {
            w.finish(Rcode::FormErr, flags, payload);
            return true;
        };
        let Some(head) = labels.strip_domain(&self.answers.config().domain) else {
            // Not ours, and no forwarder yet.
            w.finish(Rcode::Refused, flags, payload);
            return true;
        };
        let domain_at = HEADER_LEN + labels.offset(head);
        let found = self.lookup(&mut w, &q, classify(&labels, head), domain_at, scratch);
        let rcode = match found {
            Found::Answered => Rcode::NoError,
            Found::NoData => Rcode::NoError,
            Found::NxDomain => Rcode::NxDomain,
        };
        if !matches!(found, Found::Answered) {
            let owner = pointer(domain_at).expect("question name is near the start");
            w.authority(&[&owner, &self.answers.apex().soa_tail]);
        }
        let flags = Flags {
            authoritative: true,
            ..flags
        };
        w.finish(rcode, flags, payload);
        true
    }

    fn is_local_dc(&self, dc: Option<&[u8]>) -> bool {
        dc.is_none_or(|d| d.eq_ignore_ascii_case(self.answers.config().datacenter.as_bytes()))
    }

    fn lookup(
        &self,
        w: &mut ResponseWriter<'_>,
        q: &Query<'_>,
        lookup: Lookup<'_>,
        domain_at: usize,
        scratch: &mut Scratch,
    ) -> Found {
        let mut buf = [0u8; 63];
        match lookup {
            Lookup::Apex => self.apex(w, q.qtype, domain_at),
            Lookup::Service { name, tag, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let Some(set) = lower(name, &mut buf).and_then(|n| self.answers.service(n)) else {
                    return Found::NxDomain;
                };
                let records = match tag {
                    None => &set.all,
                    Some(t) => match lower(t, &mut buf).and_then(|t| set.tags.get(t)) {
                        Some(r) => r,
                        None => return Found::NxDomain,
                    },
                };
                write_set(w, records, q.qtype, scratch)
            }
            Lookup::Node { name, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let Some(node) = lower(name, &mut buf).and_then(|n| self.answers.node(n)) else {
                    return Found::NxDomain;
                };
                match (&node.addr_rr, q.qtype) {
                    (Some(rr), rtype::A) if !node.is_v6 => answer_one(w, rr),
                    (Some(rr), rtype::AAAA) if node.is_v6 => answer_one(w, rr),
                    (Some(rr), rtype::ANY) => answer_one(w, rr),
                    _ => Found::NoData,
                }
            }
            Lookup::Addr { hex, dc } => {
                if !self.is_local_dc(dc) {
                    return Found::NxDomain;
                }
                let ttl = self.answers.config().service_ttl.to_be_bytes();
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
                    match q.qtype {
                        rtype::A | rtype::ANY => write(w, rtype::A, &v4),
                        _ => Found::NoData,
                    }
                } else if let Some(v6) = parse_hex::<16>(hex) {
                    match q.qtype {
                        rtype::AAAA | rtype::ANY => write(w, rtype::AAAA, &v6),
                        _ => Found::NoData,
                    }
                } else {
                    Found::NxDomain
                }
            }
            Lookup::Unknown => Found::NxDomain,
        }
    }

    fn apex(&self, w: &mut ResponseWriter<'_>, qtype: u16, domain_at: usize) -> Found {
        let apex = self.answers.apex();
        let owner = pointer(domain_at).expect("question name is near the start");
        let soa = matches!(qtype, rtype::SOA | rtype::ANY);
        let ns = matches!(qtype, rtype::NS | rtype::ANY);
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
}

fn answer_one(w: &mut ResponseWriter<'_>, rr: &[u8]) -> Found {
    w.answer(&[rr]);
    Found::Answered
}

/// Writes a service's records of the asked type in a fresh random order,
/// as many as fit, then the glue of the SRV targets that made it in.
fn write_set(w: &mut ResponseWriter<'_>, set: &RecordSet, qtype: u16, s: &mut Scratch) -> Found {
    let n = set.entries.len();
    let wants = |e: &super::answers::Entry| -> bool {
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
    s.order.clear();
    s.order.extend(0..n as u32);
    s.written.clear();
    let mut matched = false;
    // Lazy Fisher-Yates: only as many draws as records written.
    for i in 0..n {
        let j = s.rng.usize(i..n);
        s.order.swap(i, j);
        let idx = s.order[i];
        let e = &set.entries[idx as usize];
        if !wants(e) {
            continue;
        }
        matched = true;
        let at = w.len();
        let rr = if qtype == rtype::SRV {
            &e.srv_rr
        } else {
            e.addr_rr.as_ref().expect("filtered above")
        };
        if !w.answer(&[rr]) {
            break;
        }
        if qtype == rtype::SRV {
            s.written.push((idx, at + SRV_TARGET_AT));
        }
    }
    if !matched {
        return Found::NoData;
    }
    if qtype == rtype::SRV {
        s.seen_target.clear();
        s.seen_target.resize(set.targets as usize, false);
        for &(idx, target_at) in &s.written {
            let e = &set.entries[idx as usize];
            let Some(tail) = e.addr_tail().filter(|_| e.glue) else {
                continue;
            };
            let seen = &mut s.seen_target[e.target_id as usize];
            if *seen {
                continue;
            }
            *seen = true;
            let fits = match pointer(target_at) {
                Some(p) => w.additional(&[&p, tail]),
                None => w.additional(&[&e.srv_rr[SRV_TARGET_AT..], tail]),
            };
            if !fits {
                break;
            }
        }
    }
    Found::Answered
}
