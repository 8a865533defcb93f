//! The ready-made answer sets: one instance's records ([`Entry`]), a
//! service's and its tags' sets, a node's, the apex's; and the encoding
//! helpers that make them.

use super::*;

/// Where the SRV target name starts inside a ready-made SRV record:
/// owner pointer (2), type, class, TTL, RDLENGTH (10), priority, weight,
/// port (6).
pub const SRV_TARGET_AT: usize = 18;

/// Where the RDATA starts in a record with a 2-byte owner pointer.
pub const RDATA_AT: usize = 12;

/// The `node_txt` of every instance whose node has no meta: an empty `Arc`
/// still allocates, and there is one per instance.
pub(super) static NO_TXT: std::sync::LazyLock<Arc<[Box<[u8]>]>> =
    std::sync::LazyLock::new(|| Arc::from(Vec::new()));

/// One instance's ready-made records.
///
/// Its records sit back to back in one boxed slice (there is one `Entry`
/// per instance, and three allocations each cost a million instances
/// about 50 MiB): first its A, AAAA or CNAME record, then its SRV record
/// for each domain.
#[derive(Debug)]
pub struct Entry {
    records: Box<[u8]>,
    /// Where each SRV record ends: `[end of the first record, end of the
    /// SRV of domain 0, of domain 1]` (the last two equal when there is
    /// one domain).
    ends: [u16; 3],
    head: Head,
    /// The node's meta as TXT records (type..RDATA), for the additional
    /// section of SRV answers whose target is the node.
    pub node_txt: Arc<[Box<[u8]>]>,
    /// Instances on the same target share one id, so glue is sent once.
    pub target_id: u32,
    /// SRV weight for its health state; also the weight of weighted order.
    pub weight: u16,
}

/// What an entry's first record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Head {
    V4,
    V6,
    /// The address is a host name: a CNAME to it.
    Cname,
}

impl Entry {
    /// `first` (an address or CNAME record) and one SRV record per domain
    /// (at most two: the domain and its alternative), each owned by the
    /// question name.
    pub(super) fn new(
        head: Head,
        first: &[u8],
        srv: &[Box<[u8]>],
        node_txt: Arc<[Box<[u8]>]>,
        target_id: u32,
        weight: u16,
    ) -> Entry {
        assert!(
            (1..=2).contains(&srv.len()),
            "a domain and at most one alternative"
        );
        let mut records =
            Vec::with_capacity(first.len() + srv.iter().map(|r| r.len()).sum::<usize>());
        records.extend_from_slice(first);
        let mut ends = [first.len() as u16; 3];
        for (d, rr) in srv.iter().enumerate() {
            records.extend_from_slice(rr);
            ends[d + 1] = records.len() as u16;
        }
        if srv.len() == 1 {
            ends[2] = ends[1];
        }
        Entry {
            records: records.into_boxed_slice(),
            ends,
            head,
            node_txt,
            target_id,
            weight,
        }
    }

    fn first(&self) -> &[u8] {
        &self.records[..self.ends[0] as usize]
    }

    /// Its A or AAAA record; `None` when the address is a host name.
    pub fn addr_rr(&self) -> Option<&[u8]> {
        (self.head != Head::Cname).then(|| self.first())
    }

    /// Whether its address record is an AAAA.
    pub fn is_v6(&self) -> bool {
        self.head == Head::V6
    }

    /// For a host-name address: a CNAME to it.
    pub fn cname_rr(&self) -> Option<&[u8]> {
        (self.head == Head::Cname).then(|| self.first())
    }

    /// Its SRV record in domain `d` (same order as `AnswerConfig::domains`).
    pub fn srv_rr(&self, d: usize) -> &[u8] {
        let start = self.ends[d] as usize;
        &self.records[start..self.ends[d + 1] as usize]
    }

    /// Whether the address record is also the glue of the SRV target.
    pub fn glue(&self) -> bool {
        self.head != Head::Cname
    }

    /// The A/AAAA record minus its owner: type, class, TTL, RDLENGTH, RDATA.
    pub fn addr_tail(&self) -> Option<&[u8]> {
        self.addr_rr().map(|rr| &rr[2..])
    }
}

/// The records of one service or one tag of it.
#[derive(Debug, Default)]
pub struct RecordSet {
    pub entries: Vec<Arc<Entry>>,
    /// Distinct SRV targets among the service's instances (the bound of
    /// `Entry::target_id`).
    pub targets: u32,
    /// Every entry has the same weight: a weighted order is a uniform one.
    pub uniform: bool,
    /// Where the next round-robin answer starts.
    pub next: AtomicU32,
}

impl RecordSet {
    /// A set of `entries`, with what is derived from them: `targets`
    /// distinct SRV targets, and whether every weight is the same.
    pub fn of(mut entries: Vec<Arc<Entry>>, targets: u32) -> RecordSet {
        // Built by pushing: give back the growth room it will never use.
        entries.shrink_to_fit();
        RecordSet {
            uniform: entries.windows(2).all(|p| p[0].weight == p[1].weight),
            targets,
            entries,
            next: AtomicU32::default(),
        }
    }
}

/// A service's tags with their sets (see [`ServiceSet`]).
type TagSets = Box<[(Arc<str>, Option<Box<RecordSet>>)]>;

#[derive(Debug, Default)]
pub struct ServiceSet {
    pub all: RecordSet,
    /// Lower-cased tag → the instances carrying it, sorted by tag: a
    /// service has a few tags, and a slice costs one allocation where a
    /// hash map costs a table. `None` when every instance carries the tag,
    /// as nearly always: the tag answers from `all` (and shares its
    /// rotation) instead of keeping the same set twice; boxed, so that such
    /// a tag costs two pointers.
    tags: TagSets,
}

impl ServiceSet {
    /// A service's set from its instances' entries and, per lower-cased
    /// tag, the entries carrying it (each entry at most once).
    pub fn new(
        all: Vec<Arc<Entry>>,
        tags: HashMap<Arc<str>, Vec<Arc<Entry>>>,
        targets: u32,
    ) -> ServiceSet {
        let mut tags: Vec<_> = tags
            .into_iter()
            .map(|(tag, entries)| {
                let set =
                    (entries.len() < all.len()).then(|| Box::new(RecordSet::of(entries, targets)));
                (tag, set)
            })
            .collect();
        tags.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        ServiceSet {
            all: RecordSet::of(all, targets),
            tags: tags.into_boxed_slice(),
        }
    }

    /// The instances carrying a lower-cased tag.
    pub fn tag(&self, lower: &str) -> Option<&RecordSet> {
        let i = self.tags.binary_search_by(|(t, _)| (**t).cmp(lower)).ok()?;
        Some(self.tags[i].1.as_deref().unwrap_or(&self.all))
    }

    /// The lower-cased tags some instance carries, sorted.
    pub fn tag_names(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|(t, _)| &**t)
    }
}

#[derive(Debug)]
pub struct NodeSet {
    pub addr_rr: Option<Box<[u8]>>,
    pub is_v6: bool,
    /// Node meta as TXT records owned by the question name.
    pub txt_rr: Vec<Box<[u8]>>,
}

/// Records of a domain apex, minus their owner (written as a pointer to
/// the domain part of the question name).
#[derive(Debug)]
pub struct Apex {
    /// The SOA for negative answers and SOA queries; TTL = SOA minimum.
    pub soa_tail: Box<[u8]>,
    pub ns_tail: Box<[u8]>,
    /// Glue for the NS target: type..RDATA.
    pub ns_glue_tail: Box<[u8]>,
}

/// type, class, TTL, RDLENGTH and RDATA of a record, encoded by hickory
/// with no name compression, so it can be copied into any message.
pub fn rr_tail(rtype: RecordType, ttl: u32, rdata: &RData) -> Vec<u8> {
    let mut rd = Vec::with_capacity(64);
    {
        let mut enc = BinEncoder::new(&mut rd);
        enc.set_name_encoding(NameEncoding::Uncompressed);
        rdata.emit(&mut enc).expect("encoding to a Vec cannot fail");
    }
    let mut out = Vec::with_capacity(10 + rd.len());
    out.extend_from_slice(&u16::from(rtype).to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rd.len() as u16).to_be_bytes());
    out.extend_from_slice(&rd);
    out
}

/// A record owned by the question name.
pub fn owned_by_question(tail: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(2 + tail.len());
    out.extend_from_slice(&(0xC000 | QNAME_OFFSET).to_be_bytes());
    out.extend_from_slice(tail);
    out.into_boxed_slice()
}

pub(super) fn addr_tail(ip: IpAddr, ttl: u32) -> (Vec<u8>, bool) {
    use hickory_proto::rr::rdata::{A, AAAA};
    match ip {
        IpAddr::V4(v4) => (rr_tail(RecordType::A, ttl, &RData::A(A(v4))), false),
        IpAddr::V6(v6) => (rr_tail(RecordType::AAAA, ttl, &RData::AAAA(AAAA(v6))), true),
    }
}

/// `<hex of the address>`, the label of `.addr.` names.
pub fn addr_hex(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.octets().iter().map(|b| format!("{b:02x}")).collect(),
        IpAddr::V6(v6) => v6.octets().iter().map(|b| format!("{b:02x}")).collect(),
    }
}

pub(super) fn name_of(labels: &[&str]) -> Option<Name> {
    let mut n = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// RFC 1464: `key=value`, with `` ` ``, `=` and leading/trailing blanks of
/// the key escaped by a backquote; cut to one 255-byte string.
pub fn meta_txt(key: &str, value: &str) -> String {
    let mut k = String::with_capacity(key.len());
    let last = key.chars().count().saturating_sub(1);
    for (i, c) in key.chars().enumerate() {
        let edge_blank = c == ' ' && (i == 0 || i == last);
        if c == '`' || c == '=' || edge_blank {
            k.push('`');
        }
        k.push(c);
    }
    let mut s = format!("{k}={value}");
    if s.len() > 255 {
        let mut end = 255;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub(super) fn txt_tails(meta: &Meta, ttl: u32) -> Vec<Box<[u8]>> {
    meta.iter()
        .map(|(k, v)| {
            rr_tail(
                RecordType::TXT,
                ttl,
                &RData::TXT(TXT::new(vec![meta_txt(k, v)])),
            )
            .into_boxed_slice()
        })
        .collect()
}
