//! Vector-backed map and set for the registry's many tiny collections (an
//! instance's checks, a service's instances, an address's names). A B-tree
//! allocates a whole 11-slot leaf even for one entry, and a `Vec` grows from
//! nothing to four slots; at 100,000 instances that waste is most of the
//! memory. These grow one slot at a time while small.

use std::collections::BTreeSet;

/// Up to this many entries a set is a sorted vector; past it, a B-tree,
/// so that a service with 50,000 instances still inserts in log time.
const FEW: usize = 32;

/// Makes room for one more entry, growing exactly while small (the common
/// case is one to five entries) and by at most [`FEW`] after that.
fn reserve_one<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact(v.len().clamp(1, FEW));
    }
}

#[derive(Debug, Clone)]
pub struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: PartialEq, V> SmallMap<K, V> {
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0
            .iter()
            .find(|(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        self.0
            .iter_mut()
            .find(|(k, _)| k.borrow() == key)
            .map(|(_, v)| v)
    }

    /// Inserts or replaces; the old value comes back.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(std::mem::replace(v, value)),
            None => {
                reserve_one(&mut self.0);
                self.0.push((key, value));
                None
            }
        }
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        let i = self.0.iter().position(|(k, _)| k.borrow() == key)?;
        Some(self.0.swap_remove(i).1)
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A set kept in order: a sorted vector while small, a B-tree past [`FEW`].
#[derive(Debug, Clone)]
pub enum SmallSet<T> {
    Few(Vec<T>),
    Many(BTreeSet<T>),
}

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet::Few(Vec::new())
    }
}

impl<T: Ord> SmallSet<T> {
    /// Adds `value` unless it is there; true when added.
    pub fn insert(&mut self, value: T) -> bool {
        match self {
            SmallSet::Few(v) => match v.binary_search(&value) {
                Ok(_) => false,
                Err(_) if v.len() == FEW => {
                    let mut all: BTreeSet<T> = std::mem::take(v).into_iter().collect();
                    all.insert(value);
                    *self = SmallSet::Many(all);
                    true
                }
                Err(i) => {
                    reserve_one(v);
                    v.insert(i, value);
                    true
                }
            },
            SmallSet::Many(all) => all.insert(value),
        }
    }

    pub fn remove(&mut self, value: &T) -> bool {
        match self {
            SmallSet::Few(v) => match v.binary_search(value) {
                Ok(i) => {
                    v.remove(i);
                    true
                }
                Err(_) => false,
            },
            SmallSet::Many(all) => all.remove(value),
        }
    }

    pub fn contains(&self, value: &T) -> bool {
        match self {
            SmallSet::Few(v) => v.binary_search(value).is_ok(),
            SmallSet::Many(all) => all.contains(value),
        }
    }
}

impl<T> SmallSet<T> {
    pub fn iter(&self) -> Iter<'_, T> {
        match self {
            SmallSet::Few(v) => Iter::Few(v.iter()),
            SmallSet::Many(all) => Iter::Many(all.iter()),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            SmallSet::Few(v) => v.is_empty(),
            SmallSet::Many(all) => all.is_empty(),
        }
    }
}

/// Iterates a [`SmallSet`] in order.
pub enum Iter<'a, T> {
    Few(std::slice::Iter<'a, T>),
    Many(std::collections::btree_set::Iter<'a, T>),
}

impl<'a, T> Iterator for Iter<'a, T> {
    type Item = &'a T;
    fn next(&mut self) -> Option<&'a T> {
        match self {
            Iter::Few(i) => i.next(),
            Iter::Many(i) => i.next(),
        }
    }
}

impl<'a, T> IntoIterator for &'a SmallSet<T> {
    type Item = &'a T;
    type IntoIter = Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_and_set() {
        let mut m = SmallMap::default();
        assert_eq!(m.insert("a".to_string(), 1), None);
        assert_eq!(m.insert("a".to_string(), 2), Some(1));
        m.insert("b".to_string(), 3);
        assert_eq!(m.get("a"), Some(&2));
        assert_eq!(m.remove("a"), Some(2));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["b"]);
        let mut s = SmallSet::default();
        assert!(s.insert(1) && !s.insert(1) && s.insert(2));
        assert!(s.remove(&1) && !s.contains(&1) && !s.is_empty());
    }

    #[test]
    fn set_stays_ordered_as_it_grows_into_a_tree() {
        let mut s = SmallSet::default();
        for i in (0..100).rev() {
            assert!(s.insert(i));
        }
        assert!(matches!(s, SmallSet::Many(_)));
        assert!(s.iter().copied().eq(0..100));
        assert!(s.remove(&50) && !s.contains(&50) && !s.insert(49));
    }
}
