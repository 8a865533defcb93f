//! Query names: the served domain, and the parse of a question name into
//! what it asks for (`[tag.]name.service[.dc].consul`, `node.node.consul`,
//! RFC 2782 `_name._tag.service.consul`, …).
//!
//! Works on the wire form of the name as it sits in the packet, without
//! allocating: labels are compared case-insensitively in place.

use std::fmt;

/// The most labels a 255-byte name can have.
pub const MAX_LABELS: usize = 128;

/// A validated domain such as `consul`, lower-cased, without the root dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainName {
    text: String,
    labels: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{0:?} is empty")]
    Empty(String),
    #[error("{0:?} has an empty or over-long label")]
    BadLabel(String),
    #[error("{0:?} has a character other than letters, digits, '-' and '_'")]
    BadChar(String),
}

impl DomainName {
    pub fn new(text: &str) -> Result<DomainName, NameError> {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if t.is_empty() {
            return Err(NameError::Empty(text.to_string()));
        }
        let labels: Vec<String> = t.split('.').map(str::to_string).collect();
        for l in &labels {
            if l.is_empty() || l.len() > 63 {
                return Err(NameError::BadLabel(text.to_string()));
            }
            if !l
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(NameError::BadChar(text.to_string()));
            }
        }
        Ok(DomainName { text: t, labels })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The labels of a wire-form name as (offset, length) pairs into it.
pub struct Labels<'a> {
    wire: &'a [u8],
    spans: [(u8, u8); MAX_LABELS],
    len: usize,
}

impl<'a> Labels<'a> {
    /// Splits an uncompressed wire-form name (as the question holds it).
    /// `None` when it is malformed.
    pub fn split(wire: &'a [u8]) -> Option<Labels<'a>> {
        let mut spans = [(0u8, 0u8); MAX_LABELS];
        let mut len = 0;
        let mut pos = 0usize;
        loop {
            let l = *wire.get(pos)? as usize;
            if l == 0 {
                break;
            }
            if l > 63 || len == MAX_LABELS || pos + 1 + l >= wire.len() {
                return None;
            }
            spans[len] = ((pos + 1) as u8, l as u8);
            len += 1;
            pos += 1 + l;
        }
        Some(Labels { wire, spans, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> &'a [u8] {
        let (o, l) = self.spans[i];
        &self.wire[o as usize..o as usize + l as usize]
    }

    /// Offset in the name where label `i` starts (its length byte).
    pub fn offset(&self, i: usize) -> usize {
        if i == self.len {
            // The root label.
            self.wire.len() - 1
        } else {
            self.spans[i].0 as usize - 1
        }
    }

    /// Whether the name ends in `domain`; then the number of labels before it.
    pub fn strip_domain(&self, domain: &DomainName) -> Option<usize> {
        let d = domain.labels();
        if d.len() > self.len {
            return None;
        }
        let head = self.len - d.len();
        d.iter()
            .enumerate()
            .all(|(i, l)| self.get(head + i).eq_ignore_ascii_case(l.as_bytes()))
            .then_some(head)
    }
}

/// What an in-domain question asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// The domain itself: SOA, NS.
    Apex,
    /// `[tag.]name.service[.dc]`, or RFC 2782 `_name._tag.service[.dc]`.
    Service {
        name: &'a [u8],
        tag: Option<&'a [u8]>,
        dc: Option<&'a [u8]>,
    },
    /// `name.node[.dc]`.
    Node {
        name: &'a [u8],
        dc: Option<&'a [u8]>,
    },
    /// `<hex>.addr[.dc]`.
    Addr { hex: &'a [u8], dc: Option<&'a [u8]> },
    /// `name.query[.dc]`, or RFC 2782 `_name._tcp.query[.dc]`: a prepared
    /// query by name or ID.
    Query {
        name: &'a [u8],
        dc: Option<&'a [u8]>,
    },
    /// In the domain, but not a name signpost knows how to answer.
    Unknown,
}

fn is(label: &[u8], word: &str) -> bool {
    label.eq_ignore_ascii_case(word.as_bytes())
}

fn is_kind(label: &[u8]) -> bool {
    is(label, "service") || is(label, "node") || is(label, "addr") || is(label, "query")
}

/// A name that may be an empty non-terminal: it is one if its datacenter
/// (`None`: the local one) is known and, for an RFC 2782 tag label, some
/// instance carries the tag.
pub struct NonTerminal<'a> {
    pub dc: Option<&'a [u8]>,
    /// `_tag` under `service`, without the underscore; `None` for `_tcp`,
    /// `_udp` and the other forms.
    pub tag: Option<&'a [u8]>,
}

/// Whether the `head` labels in front of the domain name an empty
/// non-terminal of signpost's namespace: `service`, `node`, `addr`,
/// `query` (with or without a datacenter), a datacenter alone, and
/// `_tcp`, `_udp` or `_<tag>` under `service` (RFC 2782's
/// `_name._tag.service` has names below `_tag.service`).
pub fn empty_non_terminal<'a>(labels: &Labels<'a>, head: usize) -> Option<NonTerminal<'a>> {
    let l = |i: usize| labels.get(i);
    let proto = |x: &[u8]| is(x, "_tcp") || is(x, "_udp");
    let tag = |x: &'a [u8]| (!proto(x)).then(|| &x[1..]);
    let under = |x: &[u8]| x.len() > 1 && x[0] == b'_';
    let nt = |dc, tag| Some(NonTerminal { dc, tag });
    match head {
        1 if is_kind(l(0)) => nt(None, None),
        1 => nt(Some(l(0)), None),
        2 if is_kind(l(0)) => nt(Some(l(1)), None),
        2 if under(l(0)) && is(l(1), "service") => nt(None, tag(l(0))),
        3 if under(l(0)) && is(l(1), "service") => nt(Some(l(2)), tag(l(0))),
        _ => None,
    }
}

/// Classifies the `head` labels in front of the domain.
pub fn classify<'a>(labels: &Labels<'a>, head: usize) -> Lookup<'a> {
    if head == 0 {
        return Lookup::Apex;
    }
    let l = |i: usize| labels.get(i);
    // Find the query kind and an optional datacenter: `… kind`, `… kind dc`
    // or `… kind dc "dc"`.
    let (kind_at, dc) = if head >= 3 && is(l(head - 1), "dc") && is_kind(l(head - 3)) {
        (head - 3, Some(l(head - 2)))
    } else if is_kind(l(head - 1)) {
        (head - 1, None)
    } else if head >= 2 && is_kind(l(head - 2)) {
        (head - 2, Some(l(head - 1)))
    } else {
        return Lookup::Unknown;
    };
    let kind = l(kind_at);
    let before = kind_at;
    if is(kind, "service") {
        match before {
            1 => Lookup::Service {
                name: l(0),
                tag: None,
                dc,
            },
            2 => {
                let (a, b) = (l(0), l(1));
                if a.first() == Some(&b'_')
                    && b.first() == Some(&b'_')
                    && a.len() > 1
                    && b.len() > 1
                {
                    // RFC 2782: _name._tag; _tcp and _udp mean "any tag".
                    let tag = &b[1..];
                    let tag = (!is(tag, "tcp") && !is(tag, "udp")).then_some(tag);
                    Lookup::Service {
                        name: &a[1..],
                        tag,
                        dc,
                    }
                } else {
                    Lookup::Service {
                        name: b,
                        tag: Some(a),
                        dc,
                    }
                }
            }
            _ => Lookup::Unknown,
        }
    } else if is(kind, "node") {
        match before {
            1 => Lookup::Node { name: l(0), dc },
            _ => Lookup::Unknown,
        }
    } else if is(kind, "query") {
        match before {
            1 => Lookup::Query { name: l(0), dc },
            2 if l(0).len() > 1 && l(0)[0] == b'_' && l(1).first() == Some(&b'_') => {
                Lookup::Query {
                    name: &l(0)[1..],
                    dc,
                }
            }
            _ => Lookup::Unknown,
        }
    } else if is(kind, "addr") {
        match before {
            1 => Lookup::Addr { hex: l(0), dc },
            _ => Lookup::Unknown,
        }
    } else {
        Lookup::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    fn lookup(name: &str) -> Option<String> {
        let w = wire(name);
        let labels = Labels::split(&w)?;
        let head = labels.strip_domain(&DomainName::new("consul").unwrap())?;
        let s = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        Some(match classify(&labels, head) {
            Lookup::Apex => "apex".into(),
            Lookup::Service { name, tag, dc } => format!(
                "service {} tag={:?} dc={:?}",
                s(name),
                tag.map(s),
                dc.map(s)
            ),
            Lookup::Node { name, dc } => format!("node {} dc={:?}", s(name), dc.map(s)),
            Lookup::Addr { hex, dc } => format!("addr {} dc={:?}", s(hex), dc.map(s)),
            Lookup::Query { name, dc } => format!("query {} dc={:?}", s(name), dc.map(s)),
            Lookup::Unknown => "unknown".into(),
        })
    }

    #[test]
    fn query_forms() {
        let cases = [
            ("consul.", "apex"),
            ("CONSUL.", "apex"),
            ("web.service.consul.", "service web tag=None dc=None"),
            ("Web.Service.Consul.", "service Web tag=None dc=None"),
            (
                "primary.db.service.consul.",
                "service db tag=Some(\"primary\") dc=None",
            ),
            (
                "web.service.dc1.consul.",
                "service web tag=None dc=Some(\"dc1\")",
            ),
            (
                "web.service.dc1.dc.consul.",
                "service web tag=None dc=Some(\"dc1\")",
            ),
            ("_web._tcp.service.consul.", "service web tag=None dc=None"),
            (
                "_db._primary.service.consul.",
                "service db tag=Some(\"primary\") dc=None",
            ),
            ("n1.node.consul.", "node n1 dc=None"),
            ("n1.node.dc2.consul.", "node n1 dc=Some(\"dc2\")"),
            (
                "7f000001.addr.dc1.consul.",
                "addr 7f000001 dc=Some(\"dc1\")",
            ),
            ("web-v2.query.consul.", "query web-v2 dc=None"),
            (
                "_web-v2._tcp.query.dc1.consul.",
                "query web-v2 dc=Some(\"dc1\")",
            ),
            ("a.b.c.service.consul.", "unknown"),
            ("service.consul.", "unknown"),
            ("foo.consul.", "unknown"),
        ];
        for (name, want) in cases {
            assert_eq!(lookup(name).as_deref(), Some(want), "{name}");
        }
        assert_eq!(lookup("example.com."), None);
    }

    #[test]
    fn malformed_names() {
        assert!(Labels::split(&[3, b'a', b'b']).is_none());
        assert!(Labels::split(&[64]).is_none());
        assert!(Labels::split(&[]).is_none());
        assert!(Labels::split(&[0]).unwrap().is_empty());
    }
}
