//! Static zones: RFC 1035 master files (`zones/*.zone`) served
//! authoritatively beside the service domain.
//!
//! Each file is parsed by hickory-proto's zone parser and checked by
//! hickory-server's in-memory zone handler (an SOA at the origin, records
//! that fit the zone), then turned into ready-made records keyed by
//! lower-cased owner name, as the service answers are. The origin is the
//! file's `$ORIGIN`, or else its name without `.zone`.
//!
//! hickory's parse errors carry no position, so on a failure the file is
//! parsed again in prefixes that end at record boundaries until the first
//! failing one: its last line is the line reported.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use hickory_proto::rr::{Name, RData, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, ZoneType};

use super::answers::{owned_by_question, rr_tail};

/// A zone file that cannot be loaded: its path and line.
pub type ZoneError = crate::located::Located;

/// The records of one owner name.
#[derive(Debug, Default)]
pub struct NameRecords {
    /// (type, records owned by the question name)
    pub sets: Vec<(u16, Vec<Box<[u8]>>)>,
}

impl NameRecords {
    pub fn get(&self, rtype: u16) -> Option<&[Box<[u8]>]> {
        self.sets
            .iter()
            .find(|(t, _)| *t == rtype)
            .map(|(_, r)| r.as_slice())
    }
}

/// One zone, ready to answer from.
#[derive(Debug)]
pub struct StaticZone {
    /// Lower-case, with the trailing dot: `example.internal.`
    pub origin: String,
    /// The origin's labels, lower-cased.
    pub labels: Vec<String>,
    /// The SOA minus its owner, TTL set to its negative-caching TTL.
    pub soa_tail: Box<[u8]>,
    /// Lower-cased owner name (with trailing dot) → records.
    pub names: HashMap<String, NameRecords>,
    /// Names that exist without records (empty non-terminals): NODATA,
    /// not NXDOMAIN.
    pub empty_nonterminals: HashSet<String>,
    pub path: PathBuf,
}

/// Where a record ends: paren depth back at zero outside quotes, comments
/// skipped. Returns, for each line, whether a prefix ending there is
/// complete.
fn record_boundaries(text: &str) -> Vec<bool> {
    let mut depth = 0i32;
    text.lines()
        .map(|line| {
            let mut quoted = false;
            let mut escaped = false;
            for c in line.chars() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => quoted = !quoted,
                    ';' if !quoted => break,
                    '(' if !quoted => depth += 1,
                    ')' if !quoted => depth -= 1,
                    _ => {}
                }
            }
            depth <= 0
        })
        .collect()
}

type Parsed = (Name, BTreeMap<RrKey, RecordSet>);

/// Parses and checks a zone text. Errors carry no line yet.
fn parse(text: &str, path: &Path, default_origin: &Name) -> Result<Parsed, String> {
    let (origin, records) =
        Parser::new(text, Some(path.to_path_buf()), Some(default_origin.clone()))
            .parse()
            .map_err(|e| e.to_string())?;
    for key in records.keys() {
        let name = Name::from(key.name.clone());
        if !origin.zone_of(&name) {
            return Err(format!("{name} is outside the zone {origin}"));
        }
    }
    InMemoryZoneHandler::<hickory_server::net::runtime::TokioRuntimeProvider>::new(
        origin.clone(),
        records.clone(),
        ZoneType::Primary,
        AxfrPolicy::Deny,
    )
    .map_err(|e| e.to_lowercase())?;
    Ok((origin, records))
}

/// Reads and builds one zone file.
pub fn load_zone(path: &Path) -> Result<StaticZone, ZoneError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ZoneError::file(path, format!("cannot read: {e}")))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let default_origin = Name::from_ascii(format!("{stem}.")).map_err(|e| {
        ZoneError::line(
            path,
            1,
            format!("file name {stem:?} is not a zone name and no $ORIGIN is given: {e}"),
        )
    })?;
    let (origin, records) = match parse(&text, path, &default_origin) {
        Ok(p) => p,
        Err(reason) => return Err(locate(&text, path, &default_origin, reason)),
    };
    Ok(build(origin, records, path))
}

/// Finds the first line at which a prefix of the file stops parsing.
fn locate(text: &str, path: &Path, origin: &Name, whole_reason: String) -> ZoneError {
    let lines: Vec<&str> = text.lines().collect();
    let ends = record_boundaries(text);
    let prefix = |n: usize| lines[..n].join("\n") + "\n";
    // Prefixes that end on a record boundary fail from the bad record on.
    let candidates: Vec<usize> = (1..=lines.len()).filter(|&n| ends[n - 1]).collect();
    let first_bad = candidates.partition_point(|&n| parse(&prefix(n), path, origin).is_ok());
    let (line, reason) = match candidates.get(first_bad) {
        Some(&n) => {
            let reason = parse(&prefix(n), path, origin)
                .err()
                .unwrap_or(whole_reason);
            (n, reason)
        }
        // Only the whole file fails (an unclosed parenthesis, say).
        None => (lines.len().max(1), whole_reason),
    };
    ZoneError::line(path, line, reason)
}

fn build(origin: Name, records: BTreeMap<RrKey, RecordSet>, path: &Path) -> StaticZone {
    let origin_lower = origin.to_lowercase();
    let mut names: HashMap<String, NameRecords> = HashMap::new();
    let mut soa_tail = Vec::new();
    for set in records.values() {
        let owner = set.name().to_lowercase().to_ascii();
        let rtype = set.record_type();
        let mut rrs = Vec::new();
        for r in set.records_without_rrsigs() {
            if let RData::SOA(soa) = &r.data {
                if set.name().to_lowercase() == origin_lower {
                    let negative_ttl = r.ttl.min(soa.minimum);
                    soa_tail = rr_tail(RecordType::SOA, negative_ttl, &r.data);
                }
            }
            rrs.push(owned_by_question(&rr_tail(rtype, r.ttl, &r.data)));
        }
        names
            .entry(owner)
            .or_default()
            .sets
            .push((u16::from(rtype), rrs));
    }
    let origin_text = origin_lower.to_ascii();
    let mut empty_nonterminals = HashSet::new();
    for owner in names.keys() {
        let mut n = Name::from_ascii(owner).expect("owner names parse");
        while n.num_labels() > origin_lower.num_labels() + 1 {
            n = n.base_name();
            let text = n.to_ascii();
            if !names.contains_key(&text) {
                empty_nonterminals.insert(text);
            }
        }
    }
    StaticZone {
        labels: origin_lower
            .iter()
            .map(|l| String::from_utf8_lossy(l).to_string())
            .collect(),
        origin: origin_text,
        soa_tail: soa_tail.into_boxed_slice(),
        names,
        empty_nonterminals,
        path: path.to_path_buf(),
    }
}

/// Every `*.zone` file of `dir`, in name order.
pub fn load_dir(dir: &Path) -> Result<Vec<StaticZone>, ZoneError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ZoneError::file(dir, format!("cannot read zones directory: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "zone") && p.is_file())
        .collect();
    paths.sort();
    let mut zones: Vec<StaticZone> = Vec::new();
    for p in paths {
        let zone = load_zone(&p)?;
        if let Some(other) = zones.iter().find(|z| z.origin == zone.origin) {
            return Err(ZoneError::line(
                &p,
                1,
                format!(
                    "zone {} is also loaded from {}",
                    zone.origin,
                    other.path.display()
                ),
            ));
        }
        zones.push(zone);
    }
    Ok(zones)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    const GOOD: &str = "$ORIGIN example.internal.
$TTL 300
@ IN SOA ns.example.internal. admin.example.internal. ( 1 3600 600 86400 60 )
@ IN NS ns
ns IN A 192.0.2.1
www IN A 192.0.2.10
a.b.c IN TXT \"deep\"
";

    #[test]
    fn loads_a_zone() {
        let (_d, p) = write("x.zone", GOOD);
        let z = load_zone(&p).unwrap();
        assert_eq!(z.origin, "example.internal.");
        assert!(z.names["www.example.internal."].get(1).is_some());
        assert!(z.empty_nonterminals.contains("b.c.example.internal."));
        assert!(z.empty_nonterminals.contains("c.example.internal."));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = GOOD.replace("www IN A 192.0.2.10", "www IN A 192.0.2.300");
        let (_d, p) = write("x.zone", &bad);
        let err = load_zone(&p).unwrap_err().to_string();
        assert!(err.contains("x.zone:6:"), "{err}");
        let no_soa = "$ORIGIN e.x.\nwww 60 IN A 192.0.2.1\n";
        let (_d, p) = write("y.zone", no_soa);
        let err = load_zone(&p).unwrap_err().to_string();
        assert!(err.contains("y.zone:") && err.contains("soa"), "{err}");
        let outside = format!("{GOOD}other.example. 60 IN A 192.0.2.2\n");
        let (_d, p) = write("z.zone", &outside);
        let err = load_zone(&p).unwrap_err().to_string();
        assert!(
            err.contains("z.zone:8:") && err.contains("outside"),
            "{err}"
        );
    }
}
