//! DNS messages on the wire: reading a query and writing a response.
//!
//! The query path never builds a message object. [`parse_query`] reads the
//! header, the question and the OPT record in place; [`ResponseWriter`]
//! copies the question back (so the asker's letter case is echoed) and
//! appends ready-made resource records, keeping to the size budget itself:
//! it drops records that do not fit, sets TC only when an answer record was
//! dropped, and always leaves room for the OPT record of an EDNS reply.

/// Record types signpost answers or reads.
pub mod rtype {
    pub const A: u16 = 1;
    pub const NS: u16 = 2;
    pub const CNAME: u16 = 5;
    pub const SOA: u16 = 6;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const OPT: u16 = 41;
    pub const ANY: u16 = 255;
}

pub const CLASS_IN: u16 = 1;
pub const CLASS_ANY: u16 = 255;
pub const HEADER_LEN: usize = 12;
/// An OPT record with no options: root name, type, class, TTL, RDLENGTH.
pub const OPT_LEN: usize = 11;
/// The UDP size every client takes (RFC 1035).
pub const PLAIN_UDP_MAX: usize = 512;
/// Offset of the question name in any message: right after the header.
pub const QNAME_OFFSET: u16 = HEADER_LEN as u16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
    /// EDNS extended code 16: its low 4 bits go in the header, the rest in
    /// the OPT record.
    BadVers = 16,
    /// A server cookie that is not valid (RFC 7873): the reply carries a
    /// fresh one to retry with.
    BadCookie = 23,
}

/// The EDNS part of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edns {
    pub payload: u16,
    pub version: u8,
    pub dnssec_ok: bool,
    /// The query carries an NSID option (RFC 5001): say which server this is.
    pub nsid: bool,
    pub cookie: Option<Cookie>,
}

/// A COOKIE option (RFC 7873): the client's cookie, and the server cookie
/// it echoes (`server_len` 0: none yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cookie {
    pub client: [u8; 8],
    pub server: [u8; 32],
    pub server_len: u8,
}

impl Cookie {
    pub fn server(&self) -> &[u8] {
        &self.server[..self.server_len as usize]
    }
}

/// EDNS option codes signpost reads.
const OPTION_NSID: u16 = 3;
const OPTION_COOKIE: u16 = 10;

/// A query, read in place.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub id: u16,
    pub opcode: u8,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The whole question: name, type and class, to echo verbatim.
    pub question: &'a [u8],
    /// The question name in wire form (a prefix of `question`).
    pub qname: &'a [u8],
    pub qtype: u16,
    pub qclass: u16,
    pub edns: Option<Edns>,
}

/// What to do with a datagram.
#[derive(Debug)]
pub enum Parsed<'a> {
    Query(Query<'a>),
    /// Malformed, but with a readable header: answer with this code and no
    /// question (FORMERR, NOTIMP).
    Error {
        id: u16,
        opcode: u8,
        rd: bool,
        rcode: Rcode,
        edns: Option<Edns>,
    },
    /// Not worth an answer: too short for a header, or itself a response.
    Drop,
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Skips a possibly compressed name; returns the offset after it.
fn skip_name(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let l = *b.get(pos)?;
        match l {
            0 => return Some(pos + 1),
            1..=63 => pos += 1 + l as usize,
            0xC0..=0xFF => {
                b.get(pos + 1)?;
                return Some(pos + 2);
            }
            _ => return None,
        }
    }
}

/// Reads the header, the one question and the OPT record of a query.
pub fn parse_query(b: &[u8]) -> Parsed<'_> {
    if b.len() < HEADER_LEN {
        return Parsed::Drop;
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let flags = u16::from_be_bytes([b[2], b[3]]);
    if flags & 0x8000 != 0 {
        return Parsed::Drop;
    }
    let opcode = ((flags >> 11) & 0xF) as u8;
    let rd = flags & 0x0100 != 0;
    let cd = flags & 0x0010 != 0;
    let counts = [
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]),
        u16::from_be_bytes([b[8], b[9]]),
        u16::from_be_bytes([b[10], b[11]]),
    ];
    let err = |rcode, edns| Parsed::Error {
        id,
        opcode,
        rd,
        rcode,
        edns,
    };
    if counts[0] != 1 {
        return err(Rcode::FormErr, None);
    }
    // The question name: plain labels only (nothing earlier to point to).
    let mut pos = HEADER_LEN;
    loop {
        let Some(&l) = b.get(pos) else {
            return err(Rcode::FormErr, None);
        };
        if l == 0 {
            pos += 1;
            break;
        }
        if l > 63 {
            return err(Rcode::FormErr, None);
        }
        pos += 1 + l as usize;
        if pos - HEADER_LEN > 255 {
            return err(Rcode::FormErr, None);
        }
    }
    let qname = &b[HEADER_LEN..pos];
    let (Some(qtype), Some(qclass)) = (u16_at(b, pos), u16_at(b, pos + 2)) else {
        return err(Rcode::FormErr, None);
    };
    let question = &b[HEADER_LEN..pos + 4];
    pos += 4;
    // Skip answer and authority records; find OPT among the additionals.
    let mut edns = None;
    let records = counts[1] as usize + counts[2] as usize + counts[3] as usize;
    let additional_from = counts[1] as usize + counts[2] as usize;
    for i in 0..records {
        let name_at = pos;
        let Some(after) = skip_name(b, pos) else {
            return err(Rcode::FormErr, edns);
        };
        let (Some(t), Some(class), Some(ttl_hi), Some(ttl_lo), Some(rdlen)) = (
            u16_at(b, after),
            u16_at(b, after + 2),
            u16_at(b, after + 4),
            u16_at(b, after + 6),
            u16_at(b, after + 8),
        ) else {
            return err(Rcode::FormErr, edns);
        };
        pos = after + 10 + rdlen as usize;
        if pos > b.len() {
            return err(Rcode::FormErr, edns);
        }
        if t == rtype::OPT {
            // One OPT, in the additional section, owned by the root.
            if edns.is_some() || i < additional_from || b[name_at] != 0 {
                return err(Rcode::FormErr, None);
            }
            let mut e = Edns {
                payload: class,
                version: (ttl_hi & 0xFF) as u8,
                dnssec_ok: ttl_lo & 0x8000 != 0,
                nsid: false,
                cookie: None,
            };
            // The options: NSID asked for; a COOKIE of a length RFC 7873
            // does not allow (a client cookie is 8 bytes, with a server
            // cookie 16 to 40) is a malformed query.
            let mut at = after + 10;
            let end = at + rdlen as usize;
            while at < end {
                let (Some(code), Some(len)) = (u16_at(b, at), u16_at(b, at + 2)) else {
                    return err(Rcode::FormErr, Some(e));
                };
                at += 4 + len as usize;
                if at > end {
                    return err(Rcode::FormErr, Some(e));
                }
                match code {
                    OPTION_NSID => e.nsid = true,
                    OPTION_COOKIE if len != 8 && !(16..=40).contains(&len) => {
                        return err(Rcode::FormErr, Some(e));
                    }
                    OPTION_COOKIE => {
                        let data = &b[at - len as usize..at];
                        let mut c = Cookie {
                            client: data[..8].try_into().expect("8 bytes"),
                            server: [0; 32],
                            server_len: (len - 8) as u8,
                        };
                        c.server[..len as usize - 8].copy_from_slice(&data[8..]);
                        e.cookie = Some(c);
                    }
                    _ => {}
                }
            }
            edns = Some(e);
        }
    }
    if opcode != 0 {
        return err(Rcode::NotImp, edns);
    }
    Parsed::Query(Query {
        id,
        opcode,
        recursion_desired: rd,
        checking_disabled: cd,
        question,
        qname,
        qtype,
        qclass,
        edns,
    })
}

/// Appends `src` to `buf`. A reply is built from many pieces of 2 to 32
/// bytes (name pointers, record tails), and a call into libc's memcpy for
/// each cost more than the copy: short ones are copied inline, as two
/// overlapping words.
#[inline(always)]
fn append(buf: &mut Vec<u8>, src: &[u8]) {
    let n = src.len();
    if !(2..=32).contains(&n) {
        buf.extend_from_slice(src);
        return;
    }
    buf.reserve(n);
    let at = buf.len();
    // SAFETY: `reserve` made room for `n` more bytes after `at`; both
    // words of each pair lie within `src` (n >= their size) and within
    // the `n` bytes after `at`, which are all written before `set_len`.
    unsafe {
        let (s, d) = (src.as_ptr(), buf.as_mut_ptr().add(at));
        macro_rules! two_words {
            ($t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let a = std::ptr::read_unaligned(s as *const $t);
                let b = std::ptr::read_unaligned(s.add(n - W) as *const $t);
                std::ptr::write_unaligned(d as *mut $t, a);
                std::ptr::write_unaligned(d.add(n - W) as *mut $t, b);
            }};
        }
        match n {
            16.. => two_words!(u128),
            8.. => two_words!(u64),
            4.. => two_words!(u32),
            _ => two_words!(u16),
        }
        buf.set_len(at + n);
    }
}

/// Writes one response into a reused buffer, within a size budget.
pub struct ResponseWriter<'b> {
    buf: &'b mut Vec<u8>,
    /// Bytes the message may reach before the OPT record is added.
    limit: usize,
    counts: [u16; 3],
    truncated: bool,
    edns: bool,
    /// Copied into the reply's OPT (RFC 3225).
    dnssec_ok: bool,
    /// The reply's EDNS options (NSID, COOKIE), encoded; empty for most
    /// replies, so no allocation.
    options: Vec<u8>,
}

/// Header flags of a response.
#[derive(Debug, Clone, Copy)]
pub struct Flags {
    pub authoritative: bool,
    pub recursion_available: bool,
}

impl<'b> ResponseWriter<'b> {
    /// Starts a response to `q`: header, then the question copied verbatim.
    /// `max_size` is the transport's budget (512, the EDNS size, or 65535).
    pub fn new(buf: &'b mut Vec<u8>, q: &Query<'_>, max_size: usize) -> ResponseWriter<'b> {
        buf.clear();
        buf.extend_from_slice(&q.id.to_be_bytes());
        let mut f1 = 0x80 | (q.opcode << 3);
        if q.recursion_desired {
            f1 |= 0x01;
        }
        let f2 = if q.checking_disabled { 0x10 } else { 0 };
        buf.extend_from_slice(&[f1, f2, 0, 1, 0, 0, 0, 0, 0, 0]);
        buf.extend_from_slice(q.question);
        let edns = q.edns.is_some();
        let limit = max_size.saturating_sub(if edns { OPT_LEN } else { 0 });
        ResponseWriter {
            buf,
            limit,
            counts: [0; 3],
            truncated: false,
            edns,
            dnssec_ok: q.edns.is_some_and(|e| e.dnssec_ok),
            options: Vec::new(),
        }
    }

    fn option(&mut self, code: u16, data: &[&[u8]]) {
        let len: usize = data.iter().map(|d| d.len()).sum();
        self.limit = self.limit.saturating_sub(4 + len);
        self.options.extend_from_slice(&code.to_be_bytes());
        self.options.extend_from_slice(&(len as u16).to_be_bytes());
        for d in data {
            self.options.extend_from_slice(d);
        }
    }

    /// Answers a COOKIE option with the client's cookie and a server
    /// cookie (call before adding records).
    pub fn cookie(&mut self, client: &[u8; 8], server: &[u8; 16]) {
        if self.edns {
            self.option(OPTION_COOKIE, &[client, server]);
        }
    }

    /// Answers an NSID request with `id` (call before adding records: it
    /// takes its room from the budget).
    pub fn nsid(&mut self, id: &[u8]) {
        if self.edns {
            self.option(OPTION_NSID, &[&id[..id.len().min(255)]]);
        }
    }

    /// A response with no question: FORMERR, NOTIMP.
    pub fn error(buf: &mut Vec<u8>, id: u16, opcode: u8, rd: bool, rcode: Rcode, edns: bool) {
        buf.clear();
        buf.extend_from_slice(&id.to_be_bytes());
        let f1 = 0x80 | (opcode << 3) | u8::from(rd);
        buf.extend_from_slice(&[f1, (rcode as u16 & 0xF) as u8, 0, 0, 0, 0, 0, 0, 0, 0]);
        if edns {
            buf[11] = 1;
            push_opt(buf, PLAIN_UDP_MAX as u16, rcode, false, &[]);
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.buf.len())
    }

    fn push(&mut self, section: usize, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.len() + len > self.limit || self.counts[section] == u16::MAX {
            return false;
        }
        self.buf.reserve(len);
        for p in parts {
            append(self.buf, p);
        }
        self.counts[section] += 1;
        true
    }

    /// Appends an answer record. When it does not fit, the reply is marked
    /// truncated and `false` comes back: stop adding answers.
    pub fn answer(&mut self, parts: &[&[u8]]) -> bool {
        let ok = self.push(0, parts);
        if !ok {
            self.truncated = true;
        }
        ok
    }

    /// Appends an authority record; `false` (and TC) when it does not fit.
    pub fn authority(&mut self, parts: &[&[u8]]) -> bool {
        let ok = self.push(1, parts);
        if !ok {
            self.truncated = true;
        }
        ok
    }

    /// Appends an additional record, such as glue. Dropping one for room
    /// is not truncation: the answer is complete without it.
    pub fn additional(&mut self, parts: &[&[u8]]) -> bool {
        self.push(2, parts)
    }

    pub fn answers(&self) -> u16 {
        self.counts[0]
    }

    /// Completes the header and adds the OPT record to an EDNS reply.
    /// `payload` is the UDP size signpost advertises.
    pub fn finish(self, rcode: Rcode, flags: Flags, payload: u16) {
        let b = self.buf;
        let mut f1 = b[2];
        if flags.authoritative {
            f1 |= 0x04;
        }
        if self.truncated {
            f1 |= 0x02;
        }
        b[2] = f1;
        let mut f2 = b[3] | (rcode as u16 & 0xF) as u8;
        if flags.recursion_available {
            f2 |= 0x80;
        }
        b[3] = f2;
        b[6..8].copy_from_slice(&self.counts[0].to_be_bytes());
        b[8..10].copy_from_slice(&self.counts[1].to_be_bytes());
        let mut ar = self.counts[2];
        if self.edns {
            ar += 1;
            push_opt(b, payload, rcode, self.dnssec_ok, &self.options);
        }
        b[10..12].copy_from_slice(&ar.to_be_bytes());
    }
}

fn push_opt(b: &mut Vec<u8>, payload: u16, rcode: Rcode, dnssec_ok: bool, options: &[u8]) {
    let ext = ((rcode as u16) >> 4) as u8;
    b.push(0);
    b.extend_from_slice(&rtype::OPT.to_be_bytes());
    b.extend_from_slice(&payload.to_be_bytes());
    b.extend_from_slice(&[ext, 0, if dnssec_ok { 0x80 } else { 0 }, 0]);
    b.extend_from_slice(&(options.len() as u16).to_be_bytes());
    b.extend_from_slice(options);
}

/// `name TYPE` of a message's first question, for logs.
pub fn question_text(msg: &[u8]) -> Option<String> {
    if msg.len() < 12 || msg[5] == 0 {
        return None;
    }
    let mut name = String::new();
    let mut pos = HEADER_LEN;
    loop {
        let l = *msg.get(pos)? as usize;
        if l == 0 {
            break;
        }
        if l > 63 {
            return None;
        }
        name.push_str(&String::from_utf8_lossy(msg.get(pos + 1..pos + 1 + l)?));
        name.push('.');
        pos += 1 + l;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos + 1)?, *msg.get(pos + 2)?]);
    let qtype = hickory_proto::rr::RecordType::from(qtype);
    Some(format!(
        "{} {qtype}",
        if name.is_empty() { "." } else { &name }
    ))
}

/// A compression pointer to offset `at` of the message.
pub fn pointer(at: usize) -> Option<[u8; 2]> {
    (at < 0x4000).then(|| (0xC000 | at as u16).to_be_bytes())
}

/// The transport a query came over: it sets the reply's size budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One line per query, for `--query-log`.
pub fn log_query(
    peer: std::net::SocketAddr,
    transport: &str,
    reply: &[u8],
    elapsed: std::time::Duration,
) {
    let name = question_text(reply).unwrap_or_else(|| "-".into());
    let rcode = reply.get(3).map(|b| b & 0x0F).unwrap_or(0);
    let answers = reply
        .get(6..8)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .unwrap_or(0);
    tracing::info!(
        target: "signpost::query",
        %peer, transport, question = %name, rcode, answers, micros = elapsed.as_micros() as u64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_copies_every_length_exactly() {
        let src: Vec<u8> = (1..=40).collect();
        for start in [0usize, 1, 7, 13] {
            for n in 0..=40 {
                let mut fast = vec![0xAA; start];
                let mut plain = fast.clone();
                append(&mut fast, &src[40 - n..]);
                plain.extend_from_slice(&src[40 - n..]);
                assert_eq!(fast, plain, "start {start}, length {n}");
            }
        }
    }

    fn query(name: &[u8], qtype: u16, opt: Option<u16>) -> Vec<u8> {
        let mut b = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        b.extend_from_slice(name);
        b.extend_from_slice(&qtype.to_be_bytes());
        b.extend_from_slice(&CLASS_IN.to_be_bytes());
        if let Some(size) = opt {
            b.push(0);
            b.extend_from_slice(&rtype::OPT.to_be_bytes());
            b.extend_from_slice(&size.to_be_bytes());
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        b
    }

    #[test]
    fn reads_a_query_with_edns() {
        let b = query(b"\x03web\x07service\x06consul\x00", rtype::SRV, Some(4096));
        let Parsed::Query(q) = parse_query(&b) else {
            panic!("not a query")
        };
        assert_eq!(q.id, 0x1234);
        assert_eq!(q.qtype, rtype::SRV);
        assert_eq!(q.qname.len(), 20);
        assert_eq!(q.edns.unwrap().payload, 4096);
    }

    #[test]
    fn malformed_queries() {
        assert!(matches!(parse_query(&[1, 2, 3]), Parsed::Drop));
        let mut b = query(b"\x03web\x00", rtype::A, None);
        b[2] |= 0x80;
        assert!(matches!(parse_query(&b), Parsed::Drop));
        let b = query(b"\x03web\x00", rtype::A, None);
        assert!(matches!(
            parse_query(&b[..b.len() - 2]),
            Parsed::Error {
                rcode: Rcode::FormErr,
                ..
            }
        ));
        let mut b = query(b"\x03web\x00", rtype::A, None);
        b[5] = 0;
        assert!(matches!(
            parse_query(&b),
            Parsed::Error {
                rcode: Rcode::FormErr,
                ..
            }
        ));
        let mut b = query(b"\x03web\x00", rtype::A, None);
        b[2] = 0x10; // opcode 2 (STATUS)
        assert!(matches!(
            parse_query(&b),
            Parsed::Error {
                rcode: Rcode::NotImp,
                ..
            }
        ));
    }

    #[test]
    fn writer_keeps_room_for_opt_and_flags_truncation() {
        let b = query(b"\x01a\x00", rtype::A, Some(512));
        let Parsed::Query(q) = parse_query(&b) else {
            panic!()
        };
        let mut out = Vec::new();
        let mut w = ResponseWriter::new(&mut out, &q, 70);
        let rr = [0u8; 16];
        assert!(w.answer(&[&rr]));
        assert!(w.answer(&[&rr]));
        assert!(!w.answer(&[&rr]));
        w.finish(
            Rcode::NoError,
            Flags {
                authoritative: true,
                recursion_available: false,
            },
            1232,
        );
        assert!(out.len() <= 70);
        assert_eq!(out[2] & 0x02, 0x02, "TC set");
        assert_eq!(u16::from_be_bytes([out[6], out[7]]), 2);
        assert_eq!(u16::from_be_bytes([out[10], out[11]]), 1, "OPT present");
    }
}
