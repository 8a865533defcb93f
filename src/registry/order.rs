//! The two orders the registry keeps its instances in, as ordered sets of
//! the instances themselves: by key (node, then ID), and by service
//! (lower-cased name, then key). An entry is one pointer and its order is
//! read through it; a map from a key to the instance held the key's names
//! beside the pointer, about 50 bytes more per instance and order once the
//! B-tree's spare room is counted.
//!
//! Instances are never changed in place while in a set (a change replaces
//! the `Arc`), so an entry's position cannot go stale.

use std::cmp::Ordering;
use std::sync::Arc;

use equivalent::{Comparable, Equivalent};

use super::model::{Instance, InstanceKey};

/// Equality and partial order from a type's `Ord`, for the two orders.
macro_rules! ordered_by_cmp {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                self.cmp(other) == Ordering::Equal
            }
        }

        impl Eq for $t {}

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }
    };
}

/// An instance in key order.
#[derive(Clone, Debug)]
pub(super) struct ByKey(pub(super) Arc<Instance>);

impl ByKey {
    fn parts(&self) -> (&str, &str) {
        (&self.0.node, &self.0.id)
    }
}

ordered_by_cmp!(ByKey);

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts().cmp(&other.parts())
    }
}

/// A key to look up or start a range at, borrowed: (node, ID).
pub(super) struct KeyAt<'a>(pub(super) &'a str, pub(super) &'a str);

impl Equivalent<ByKey> for KeyAt<'_> {
    fn equivalent(&self, key: &ByKey) -> bool {
        (self.0, self.1) == key.parts()
    }
}

impl Comparable<ByKey> for KeyAt<'_> {
    fn compare(&self, key: &ByKey) -> Ordering {
        (self.0, self.1).cmp(&key.parts())
    }
}

impl Equivalent<ByKey> for InstanceKey {
    fn equivalent(&self, key: &ByKey) -> bool {
        KeyAt(&self.node, &self.id).equivalent(key)
    }
}

impl Comparable<ByKey> for InstanceKey {
    fn compare(&self, key: &ByKey) -> Ordering {
        KeyAt(&self.node, &self.id).compare(key)
    }
}

/// An instance in service order: its name compared as if lower-cased
/// (the registry's service key), then its key.
#[derive(Clone, Debug)]
pub(super) struct ByService(pub(super) Arc<Instance>);

/// A name's bytes lower-cased, to compare without allocating.
fn folded(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().map(|b| b.to_ascii_lowercase())
}

ordered_by_cmp!(ByService);

impl Ord for ByService {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&self.0, &other.0);
        folded(&a.name)
            .cmp(folded(&b.name))
            .then_with(|| (&*a.node, &*a.id).cmp(&(&*b.node, &*b.id)))
    }
}

/// A position in service order, borrowed: (lower-cased name, node, ID).
/// `ServiceAt(name, "", "")` is where the service's instances start.
pub(super) struct ServiceAt<'a>(pub(super) &'a str, pub(super) &'a str, pub(super) &'a str);

impl Equivalent<ByService> for ServiceAt<'_> {
    fn equivalent(&self, key: &ByService) -> bool {
        self.compare(key) == Ordering::Equal
    }
}

impl Comparable<ByService> for ServiceAt<'_> {
    fn compare(&self, key: &ByService) -> Ordering {
        let i = &key.0;
        self.0
            .bytes()
            .cmp(folded(&i.name))
            .then_with(|| (self.1, self.2).cmp(&(&*i.node, &*i.id)))
    }
}
