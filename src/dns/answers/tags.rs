//! Every tag some local instance carries, counted by service, for the
//! empty non-terminals of RFC 2782 names.

use super::*;

/// Tags of local services: service → its tags, tag → how many services
/// carry it.
#[derive(Debug, Default)]
pub(super) struct TagIndex {
    /// Written by the listener only; never held across an await.
    pub(super) by_service: Mutex<HashMap<String, Vec<Box<str>>>>,
    /// Read by DNS queries (the NXDOMAIN path): a sharded map, so that a
    /// flood of such queries on every DNS thread takes no common lock.
    pub(super) counts: NameMap<u32>,
}

impl TagIndex {
    pub(super) fn set(&self, service: &str, tags: Vec<Box<str>>) {
        let mut by_service = self.by_service.locked();
        for old in by_service.remove(service).unwrap_or_default() {
            if let dashmap::Entry::Occupied(mut c) = self.counts.entry(old) {
                *c.get_mut() -= 1;
                if *c.get() == 0 {
                    c.remove();
                }
            }
        }
        for t in &tags {
            *self.counts.entry(t.clone()).or_default() += 1;
        }
        if !tags.is_empty() {
            by_service.insert(service.to_string(), tags);
        }
    }
}
