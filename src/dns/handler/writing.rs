//! Writing a record set into the response: answers, SRV additionals
//! (glue, node TXT) and CNAME chains, within the size budget.

use super::ordering::Draw;
use super::*;

impl Handler {
    /// Writes a service's records of the asked type in this query's order,
    /// as many as fit and as the limits allow; then, for SRV, the glue and
    /// node TXT of the targets that made it in. A/AAAA questions about a
    /// service whose instances have host names get one CNAME.
    pub(super) fn write_set(
        &self,
        w: &mut ResponseWriter<'_>,
        set: &RecordSet,
        ask: Ask,
        s: &mut Scratch,
    ) -> Found {
        let qtype = ask.qtype;
        let wants = |e: &Entry| -> bool {
            match qtype {
                rtype::A => e.addr_rr().is_some() && !e.is_v6(),
                rtype::AAAA => e.addr_rr().is_some() && e.is_v6(),
                rtype::ANY => e.addr_rr().is_some(),
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
        // The affine walk's next position, advanced without a division.
        let mut at_affine = match draw {
            Draw::Affine { start, .. } => start,
            _ => 0,
        };
        for i in 0..n {
            let idx = match draw {
                Draw::Lazy => {
                    let j = s.rng.usize(i..n);
                    s.order.swap(i, j);
                    s.order[i]
                }
                Draw::Fixed => s.order[i],
                Draw::Affine { stride, .. } => {
                    let idx = at_affine as u32;
                    at_affine += stride;
                    if at_affine >= n {
                        at_affine -= n;
                    }
                    idx
                }
            };
            let e = &set.entries[idx as usize];
            if !wants(e) {
                if e.cname_rr().is_some() && cname.is_none() {
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
                e.srv_rr(ask.domain)
            } else {
                e.addr_rr().expect("filtered above")
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

    pub(super) fn srv_additionals(
        &self,
        w: &mut ResponseWriter<'_>,
        set: &RecordSet,
        s: &mut Scratch,
    ) {
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
                None => &e.srv_rr(0)[SRV_TARGET_AT..],
            };
            if e.glue() {
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
    pub(super) fn write_cname(
        &self,
        w: &mut ResponseWriter<'_>,
        e: &Entry,
        ask: Ask,
        s: &mut Scratch,
    ) -> Found {
        let rr = e.cname_rr().expect("chosen for its CNAME");
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
            rtype::A => e.addr_rr().is_some() && !e.is_v6(),
            rtype::AAAA => e.addr_rr().is_some() && e.is_v6(),
            _ => e.addr_rr().is_some(),
        };
        match classify(&labels, head) {
            Lookup::Service { name, tag, dc } if self.is_local_dc(dc) => {
                let Some(set) = lower(name, &mut buf).and_then(|n| self.answers.service(n)) else {
                    return Found::Answered;
                };
                let records = match tag {
                    None => &set.all,
                    Some(t) => match lower(t, &mut buf).and_then(|t| set.tag(t)) {
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
