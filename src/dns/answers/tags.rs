//! Every tag some local instance carries, counted by service, for the
//! empty non-terminals of RFC 2782 names.

use super::*;

/// Tag → how many local services carry it. A service's own tags are read
/// from its answer set, so they are not kept twice.
#[derive(Debug, Default)]
pub(super) struct TagIndex {
    /// Read by DNS queries (the NXDOMAIN path): a sharded map, so that a
    /// flood of such queries on every DNS thread takes no common lock.
    /// Written by the registry listener only, one service at a time.
    pub(super) counts: NameMap<u32>,
}

impl TagIndex {
    /// Counts a service's tags as its set goes from `old` to `new`.
    pub(super) fn replace(&self, old: Option<&ServiceSet>, new: Option<&ServiceSet>) {
        for tag in old.into_iter().flat_map(ServiceSet::tag_names) {
            if let dashmap::Entry::Occupied(mut c) = self.counts.entry(tag.into()) {
                *c.get_mut() -= 1;
                if *c.get() == 0 {
                    c.remove();
                }
            }
        }
        for tag in new.into_iter().flat_map(ServiceSet::tag_names) {
            match self.counts.get_mut(tag) {
                Some(mut c) => *c += 1,
                None => *self.counts.entry(tag.into()).or_default() += 1,
            }
        }
    }
}
