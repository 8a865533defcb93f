//! Consul's `?filter=` expressions (the go-bexpr grammar), parsed once per
//! request and evaluated against each result item as it is serialized, so
//! the selectors are the response's own field names (`Service.Tags`,
//! `Node.Meta.env`, `Checks.Status`, `ServiceMeta.version`).
//!
//! ```text
//! expr    = or
//! or      = and { "or" and }
//! and     = unary { "and" unary }
//! unary   = "not" unary | "(" expr ")" | match
//! match   = selector ("==" | "!=") value
//!         | selector "is" ["not"] "empty"
//!         | value ["not"] "in" selector
//!         | selector ["not"] ("contains" | "matches") value
//! ```
//!
//! A selector that passes through a list (`Checks.Status`) matches when any
//! element does, as Consul's does; a selector naming nothing matches no
//! value (so `!=` and `is empty` hold for it).

use regex::Regex;
use serde_json::Value;

/// A parse error: the byte position in the expression and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid filter at position {pos}: {reason}")]
pub struct FilterError {
    pub pos: usize,
    pub reason: String,
}

/// A parsed expression.
#[derive(Debug)]
pub enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Match { selector: Vec<String>, op: Op },
}

#[derive(Debug)]
pub enum Op {
    Equal(String),
    NotEqual(String),
    Empty,
    NotEmpty,
    In(String),
    NotIn(String),
    Contains(String),
    NotContains(String),
    Matches(Regex),
    NotMatches(Regex),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Eq,
    Ne,
    Open,
    Close,
}

fn lex(s: &str) -> Result<Vec<(usize, Tok)>, FilterError> {
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'(' => {
                out.push((start, Tok::Open));
                i += 1;
            }
            b')' => {
                out.push((start, Tok::Close));
                i += 1;
            }
            b'=' | b'!' => {
                if bytes.get(i + 1) != Some(&b'=') {
                    return Err(FilterError {
                        pos: start,
                        reason: format!("expected \"{}=\"", c as char),
                    });
                }
                out.push((start, if c == b'=' { Tok::Eq } else { Tok::Ne }));
                i += 2;
            }
            b'"' | b'`' => {
                let mut text = String::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => {
                            return Err(FilterError {
                                pos: start,
                                reason: "unterminated quoted value".into(),
                            })
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if c == b'"' && i + 1 < bytes.len() => {
                            let next = s[i + 1..].chars().next().expect("in bounds");
                            text.push(match next {
                                'n' => '\n',
                                't' => '\t',
                                other => other,
                            });
                            i += 1 + next.len_utf8();
                        }
                        Some(_) => {
                            let ch = s[i..].chars().next().expect("in bounds");
                            text.push(ch);
                            i += ch.len_utf8();
                        }
                    }
                }
                out.push((start, Tok::Quoted(text)));
            }
            _ => {
                while i < bytes.len()
                    && !matches!(
                        bytes[i],
                        b' ' | b'\t' | b'\n' | b'\r' | b'(' | b')' | b'"' | b'`' | b'=' | b'!'
                    )
                {
                    i += 1;
                }
                out.push((start, Tok::Word(s[start..i].to_string())));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    end: usize,
    /// Parentheses and `not`s open now: bounded, so that a hostile
    /// expression cannot exhaust the stack of the recursive descent.
    depth: usize,
}

/// Nesting allowed, and the longest expression taken.
const MAX_DEPTH: usize = 64;
const MAX_LEN: usize = 16 * 1024;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at).map(|(_, t)| t)
    }

    fn pos(&self) -> usize {
        self.toks.get(self.at).map(|(p, _)| *p).unwrap_or(self.end)
    }

    fn error<T>(&self, reason: impl Into<String>) -> Result<T, FilterError> {
        Err(FilterError {
            pos: self.pos(),
            reason: reason.into(),
        })
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == word)
    }

    fn keyword_at(&self, offset: usize, word: &str) -> bool {
        matches!(self.toks.get(self.at + offset), Some((_, Tok::Word(w))) if w == word)
    }

    fn or(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, FilterError> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        if self.depth >= MAX_DEPTH {
            return self.error(format!("nested deeper than {MAX_DEPTH}"));
        }
        if self.keyword("not") {
            self.at += 1;
            self.depth += 1;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        if self.peek() == Some(&Tok::Open) {
            self.at += 1;
            self.depth += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if self.peek() != Some(&Tok::Close) {
                return self.error("expected \")\"");
            }
            self.at += 1;
            return Ok(inner);
        }
        self.matcher()
    }

    /// A value: a quoted string or a bare word that is not an operator.
    fn value(&mut self) -> Result<String, FilterError> {
        match self.peek().cloned() {
            Some(Tok::Quoted(v)) => {
                self.at += 1;
                Ok(v)
            }
            Some(Tok::Word(w)) if !is_keyword(&w) => {
                self.at += 1;
                Ok(w)
            }
            Some(_) => self.error("expected a value"),
            None => self.error("expected a value, found the end"),
        }
    }

    fn selector(&mut self) -> Result<Vec<String>, FilterError> {
        let pos = self.pos();
        let raw = match self.peek().cloned() {
            Some(Tok::Word(w)) if !is_keyword(&w) => w,
            // JSON Pointer form: "/Service/Meta/version".
            Some(Tok::Quoted(q)) if q.starts_with('/') => {
                self.at += 1;
                return Ok(q[1..]
                    .split('/')
                    .map(|p| p.replace("~1", "/").replace("~0", "~"))
                    .collect());
            }
            Some(_) => return self.error("expected a selector"),
            None => return self.error("expected a selector, found the end"),
        };
        let parts: Vec<String> = raw.split('.').map(str::to_string).collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == ':')
        }) {
            return Err(FilterError {
                pos,
                reason: format!("invalid selector {raw:?}"),
            });
        }
        self.at += 1;
        Ok(parts)
    }

    fn matcher(&mut self) -> Result<Filter, FilterError> {
        // `value in selector` and `value not in selector` put the value first.
        let in_at = if self.keyword_at(1, "in") {
            Some(false)
        } else if self.keyword_at(1, "not") && self.keyword_at(2, "in") {
            Some(true)
        } else {
            None
        };
        if let Some(negated) = in_at {
            let value = self.value()?;
            self.at += if negated { 2 } else { 1 };
            let selector = self.selector()?;
            let op = if negated {
                Op::NotIn(value)
            } else {
                Op::In(value)
            };
            return Ok(Filter::Match { selector, op });
        }
        let selector = self.selector()?;
        let op = match self.peek().cloned() {
            Some(Tok::Eq) => {
                self.at += 1;
                Op::Equal(self.value()?)
            }
            Some(Tok::Ne) => {
                self.at += 1;
                Op::NotEqual(self.value()?)
            }
            Some(Tok::Word(w)) if w == "is" => {
                self.at += 1;
                let negated = self.keyword("not");
                if negated {
                    self.at += 1;
                }
                if !self.keyword("empty") {
                    return self.error("expected \"empty\"");
                }
                self.at += 1;
                if negated {
                    Op::NotEmpty
                } else {
                    Op::Empty
                }
            }
            Some(Tok::Word(w)) if w == "contains" || w == "matches" || w == "not" => {
                let negated = w == "not";
                self.at += 1;
                let verb = if negated {
                    match self.peek() {
                        Some(Tok::Word(v)) if v == "contains" || v == "matches" => {
                            let v = v.clone();
                            self.at += 1;
                            v
                        }
                        _ => return self.error("expected \"contains\" or \"matches\""),
                    }
                } else {
                    w
                };
                let value_pos = self.pos();
                let value = self.value()?;
                match (verb.as_str(), negated) {
                    ("contains", false) => Op::Contains(value),
                    ("contains", true) => Op::NotContains(value),
                    (_, negated) => {
                        let re = Regex::new(&value).map_err(|e| FilterError {
                            pos: value_pos,
                            reason: format!(
                                "invalid regular expression: {}",
                                e.to_string().lines().last().unwrap_or("")
                            ),
                        })?;
                        if negated {
                            Op::NotMatches(re)
                        } else {
                            Op::Matches(re)
                        }
                    }
                }
            }
            Some(_) => {
                return self.error(
                    "expected an operator: ==, !=, is empty, is not empty, contains, matches",
                )
            }
            None => return self.error("expected an operator, found the end"),
        };
        Ok(Filter::Match { selector, op })
    }
}

fn is_keyword(w: &str) -> bool {
    matches!(
        w,
        "and" | "or" | "not" | "in" | "is" | "empty" | "contains" | "matches"
    )
}

impl Filter {
    pub fn parse(s: &str) -> Result<Filter, FilterError> {
        if s.len() > MAX_LEN {
            return Err(FilterError {
                pos: MAX_LEN,
                reason: format!("longer than {MAX_LEN} bytes"),
            });
        }
        let toks = lex(s)?;
        if toks.is_empty() {
            return Err(FilterError {
                pos: 0,
                reason: "empty expression".into(),
            });
        }
        let mut p = Parser {
            toks,
            at: 0,
            end: s.len(),
            depth: 0,
        };
        let f = p.or()?;
        if p.at < p.toks.len() {
            return p.error("expected \"and\", \"or\" or the end");
        }
        Ok(f)
    }

    /// One clause, `selector == value`, as `?node-meta=` adds them.
    pub fn equal(selector: &[&str], value: &str) -> Filter {
        Filter::Match {
            selector: selector.iter().map(|s| s.to_string()).collect(),
            op: Op::Equal(value.to_string()),
        }
    }

    pub fn and(self, other: Filter) -> Filter {
        Filter::And(Box::new(self), Box::new(other))
    }

    pub fn matches(&self, item: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(item) && b.matches(item),
            Filter::Or(a, b) => a.matches(item) || b.matches(item),
            Filter::Not(f) => !f.matches(item),
            Filter::Match { selector, op } => {
                let mut found = Vec::new();
                resolve(item, selector, &mut found);
                let any = |f: &dyn Fn(&Value) -> bool| found.iter().any(|v| f(v));
                match op {
                    Op::Equal(want) => any(&|v| equals(v, want)),
                    Op::NotEqual(want) => !any(&|v| equals(v, want)),
                    Op::Empty => !any(&|v| !is_empty(v)),
                    Op::NotEmpty => any(&|v| !is_empty(v)),
                    Op::In(want) | Op::Contains(want) => any(&|v| contains(v, want)),
                    Op::NotIn(want) | Op::NotContains(want) => !any(&|v| contains(v, want)),
                    Op::Matches(re) => any(&|v| text(v).is_some_and(|t| re.is_match(&t))),
                    Op::NotMatches(re) => !any(&|v| text(v).is_some_and(|t| re.is_match(&t))),
                }
            }
        }
    }
}

/// The values a selector names in `v`, fanning out over lists.
fn resolve<'a>(v: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        out.push(v);
        return;
    };
    match v {
        Value::Object(map) => {
            let field = map.get(first.as_str()).or_else(|| {
                map.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(first))
                    .map(|(_, v)| v)
            });
            if let Some(field) = field {
                resolve(field, rest, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| resolve(i, path, out)),
        _ => {}
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn equals(v: &Value, want: &str) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| equals(i, want)),
        other => text(other).is_some_and(|t| t == want),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn contains(v: &Value, want: &str) -> bool {
    match v {
        Value::Array(items) => items.iter().any(|i| text(i).is_some_and(|t| t == want)),
        Value::Object(map) => map.contains_key(want),
        Value::String(s) => s.contains(want),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry() -> Value {
        json!({
            "Node": {"Node": "n1", "Meta": {"env": "prod", "rack": "r1"}},
            "Service": {"Service": "web", "ID": "web-1", "Port": 8080,
                        "Tags": ["v1", "primary"], "Meta": {"version": "1.2"},
                        "EnableTagOverride": false},
            "Checks": [{"CheckID": "serfHealth", "Status": "passing"},
                       {"CheckID": "service:web-1", "Status": "critical"}],
            "ServiceMeta": {},
        })
    }

    /// Consul's documented examples, and the edges around them.
    #[test]
    fn consul_examples() {
        let cases: &[(&str, bool)] = &[
            ("Service.Service == web", true),
            ("Service.Service == \"web\"", true),
            ("Service.Service == `web`", true),
            ("Service.Service != web", false),
            ("Service.Port == 8080", true),
            ("Service.EnableTagOverride == false", true),
            ("v1 in Service.Tags", true),
            ("\"v2\" in Service.Tags", false),
            ("\"v2\" not in Service.Tags", true),
            ("Service.Tags contains primary", true),
            ("Service.Tags not contains primary", false),
            ("Service.Meta.version == \"1.2\"", true),
            ("Service.Meta.missing == x", false),
            ("Service.Meta.missing != x", true),
            ("Service.Meta.missing is empty", true),
            ("Service.Meta is not empty", true),
            ("ServiceMeta is empty", true),
            ("env in Node.Meta", true),
            ("Node.Meta.env == prod and Node.Meta.rack == r1", true),
            ("Node.Meta.env == dev or Node.Meta.rack == r1", true),
            ("not Node.Meta.env == dev", true),
            ("not (Node.Meta.env == prod or Service.Port == 1)", false),
            ("Checks.Status == critical", true),
            ("Checks.Status != critical", false),
            (
                "Checks.CheckID == serfHealth and Service.Service == web",
                true,
            ),
            ("Service.Service matches \"^w.b$\"", true),
            ("Service.Service not matches \"^x\"", true),
            ("Service.ID contains \"-1\"", true),
            ("\"/Service/Meta/version\" == \"1.2\"", true),
            ("service.service == web", true),
        ];
        for (expr, want) in cases {
            let f = Filter::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(f.matches(&entry()), *want, "{expr}");
        }
    }

    /// Precedence, spacing and quoting edges: `and` binds tighter than
    /// `or`, `not` tighter than both; whitespace is free; a quoted value
    /// may hold what would otherwise be an operator.
    #[test]
    fn grammar_edges() {
        let cases: &[(&str, bool)] = &[
            // (a or b) and c would be false; a or (b and c) is true.
            (
                "Service.Port == 8080 or Service.Port == 1 and Service.Service == x",
                true,
            ),
            (
                "Service.Port == 1 or Service.Port == 8080 and Service.Service == web",
                true,
            ),
            ("not Service.Port == 1 and Service.Service == web", true),
            ("not (Service.Port == 1 and Service.Service == web)", true),
            ("  Service.Service   ==   web  ", true),
            ("(((Service.Service == web)))", true),
            ("Service.Service == \"web and not\"", false),
            ("\"a b\" not in Service.Tags", true),
            ("Service.Port == \"8080\"", true),
            ("Service.Port != 8081", true),
            (
                "Checks.Status == passing and Checks.Status == critical",
                true,
            ),
        ];
        for (expr, want) in cases {
            let f = Filter::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
            assert_eq!(f.matches(&entry()), *want, "{expr}");
        }
    }

    #[test]
    fn hostile_nesting_is_refused_not_a_crash() {
        let deep = format!(
            "{}Service == web{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert!(Filter::parse(&deep).is_err());
        let nots = format!("{}Service == web", "not ".repeat(3000));
        let e = Filter::parse(&nots).expect_err("too deep");
        assert!(e.reason.contains("nested"), "{e}");
        let ok = format!("{}Service == web{}", "(".repeat(60), ")".repeat(60));
        assert!(Filter::parse(&ok).is_ok());
        // A long flat chain is iterative, not recursive: fine.
        let chain = vec!["Service == web"; 500].join(" or ");
        assert!(Filter::parse(&chain).is_ok());
    }

    #[test]
    fn errors_name_the_position() {
        let cases: &[(&str, usize)] = &[
            ("", 0),
            ("Service.Service ==", 18),
            ("Service.Service = web", 16),
            ("Service.Service == web and", 26),
            ("(Service.Service == web", 23),
            ("Service.Service === web", 18),
            ("Service..Service == web", 0),
            ("Service.Service == \"web", 19),
            ("Service.Service matches \"[\"", 24),
            ("Service.Service web", 16),
            ("Service.Service is full", 19),
        ];
        for (expr, pos) in cases {
            let e = Filter::parse(expr).expect_err(expr);
            assert_eq!(e.pos, *pos, "{expr}: {e}");
        }
    }
}
