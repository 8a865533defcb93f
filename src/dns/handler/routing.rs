//! Routing a question to what answers it: the domain's names (services,
//! nodes, addresses, prepared queries), reverse names, static zones, the
//! apex and CHAOS.

use super::*;

/// Where the NS target starts in an NS record written after a 2-byte owner.
pub(super) const NS_TARGET_AT: usize = RDATA_AT;

/// CHAOS TXT `id.server` and `hostname.bind` answer the server ID, as
/// operators ask which server of a shared address answered; anything else
/// in CHAOS (`version.bind` included) is refused.
pub(super) fn chaos(
    w: &mut ResponseWriter<'_>,
    q: &Query<'_>,
    labels: &Labels<'_>,
    id: &[u8],
) -> Rcode {
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
pub(super) fn filter_by_tags(
    set: &crate::dns::answers::ServiceSet,
    tags: &[String],
) -> crate::dns::answers::RecordSet {
    let rules: Vec<(
        bool,
        std::collections::HashSet<*const crate::dns::answers::Entry>,
    )> = tags
        .iter()
        .map(|t| {
            let (wanted, tag) = match t.strip_prefix('!') {
                Some(not) => (false, not),
                None => (true, t.as_str()),
            };
            let members = set
                .tag(&tag.to_ascii_lowercase())
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
    crate::dns::answers::RecordSet::of(entries, set.all.targets)
}

pub(super) fn parse_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
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
pub(super) fn reverse_address(labels: &Labels<'_>) -> Option<IpAddr> {
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

pub(super) fn is_reverse(labels: &Labels<'_>) -> bool {
    labels.len() >= 2
        && labels.get(labels.len() - 1).eq_ignore_ascii_case(b"arpa")
        && (labels
            .get(labels.len() - 2)
            .eq_ignore_ascii_case(b"in-addr")
            || labels.get(labels.len() - 2).eq_ignore_ascii_case(b"ip6"))
}

impl Handler {
    /// PTR for a registered address; `None` for any other reverse name,
    /// which is not signpost's to answer.
    pub(super) fn reverse(
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
    pub(super) fn static_zone<'z>(
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

    pub(super) fn zone_answer(
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
    pub(super) fn chase_in_zone(
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
    pub(super) fn dc_known(&self, dc: Option<&[u8]>) -> bool {
        self.is_local_dc(dc)
            || dc.is_some_and(|d| {
                self.remote
                    .as_ref()
                    .is_some_and(|r| r.knows(&String::from_utf8_lossy(d).to_ascii_lowercase()))
            })
    }

    pub(super) fn is_local_dc(&self, dc: Option<&[u8]>) -> bool {
        dc.is_none_or(|d| d.eq_ignore_ascii_case(self.answers.config().datacenter.as_bytes()))
    }

    pub(super) fn lookup(
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
                    Some(t) => match lower(t, &mut buf).and_then(|t| set.tag(t)) {
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

    pub(super) fn apex(&self, w: &mut ResponseWriter<'_>, ask: Ask, domain_at: usize) -> Found {
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
}
