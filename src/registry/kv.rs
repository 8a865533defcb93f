//! KV writes: put with check-and-set, lock acquire and release, delete.

use super::*;

impl Txn<'_> {
    /// Writes a KV key. With `cas`, only when the key's ModifyIndex equals
    /// it (0: only when the key does not exist). False when the CAS failed.
    pub fn kv_put(&mut self, key: &str, value: Vec<u8>, flags: u64, cas: Option<u64>) -> bool {
        let old = self.state.kv.get(key);
        if let Some(cas) = cas {
            let current = old.map(|e| e.modify_index).unwrap_or(0);
            if current != cas {
                return false;
            }
        }
        let lock_index = old.map(|e| e.lock_index).unwrap_or(0);
        let session = old.and_then(|e| e.session.clone());
        self.kv_write(key, value, flags, lock_index, session);
        true
    }

    /// Stores a key's new value and lock state, stamped with this
    /// transaction's index: the one place KV entries are written.
    pub(super) fn kv_write(
        &mut self,
        key: &str,
        value: Vec<u8>,
        flags: u64,
        lock_index: u64,
        session: Option<String>,
    ) {
        let old = self.state.kv.get(key);
        let create_index = old.map(|e| e.create_index).unwrap_or(self.next_index);
        // A write does not lift a lock delay; only time does.
        let lock_delay_until = old.map(|e| e.lock_delay_until).unwrap_or(0);
        self.state.kv.insert(
            key.to_string(),
            Arc::new(KvEntry {
                key: key.to_string(),
                value,
                flags,
                create_index,
                modify_index: self.next_index,
                lock_index,
                session,
                lock_delay_until,
            }),
        );
        self.touched.kv.insert(key.to_string());
        self.changes.kv = true;
    }

    /// Writes `key` and takes its lock for `session`, as `?acquire=`: false
    /// when another session holds it. Taking it again by its holder only
    /// writes the value. The session must exist.
    pub fn kv_acquire(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let old = self.state.kv.get(key);
        if old.is_some_and(|e| e.session.is_none() && e.lock_delay_until > model::unix_millis()) {
            return false;
        }
        let held = old.map(|e| e.lock_index).unwrap_or(0);
        let lock_index = match old.and_then(|e| e.session.as_deref()) {
            Some(holder) if holder != session => return false,
            Some(_) => held,
            None => held + 1,
        };
        self.kv_write(key, value, flags, lock_index, Some(session.to_string()));
        true
    }

    /// Writes `key` and lets go of its lock, as `?release=`: false when
    /// `session` does not hold it.
    pub fn kv_release(&mut self, key: &str, value: Vec<u8>, flags: u64, session: &str) -> bool {
        let Some(old) = self.state.kv.get(key) else {
            return false;
        };
        if old.session.as_deref() != Some(session) {
            return false;
        }
        let lock_index = old.lock_index;
        self.kv_write(key, value, flags, lock_index, None);
        true
    }

    /// Deletes a key; with `cas`, only when its ModifyIndex equals it.
    /// True when the key is gone afterwards as asked.
    pub fn kv_delete(&mut self, key: &str, cas: Option<u64>) -> bool {
        if let Some(cas) = cas {
            match self.state.kv.get(key) {
                Some(e) if e.modify_index == cas => {}
                _ => return false,
            }
        }
        if self.state.kv.remove(key).is_some() {
            self.touched.kv.insert(key.to_string());
            self.changes.kv = true;
        }
        true
    }

    /// Deletes every key under `prefix`.
    pub fn kv_delete_tree(&mut self, prefix: &str) {
        let keys: Vec<String> = self
            .state
            .kv_prefix(prefix)
            .map(|e| e.key.clone())
            .collect();
        for k in keys {
            self.kv_delete(&k, None);
        }
    }
}
