//! Session writes: creating one, and destroying it with what it held.

use super::*;

impl Txn<'_> {
    /// Adds a session.
    pub fn create_session(&mut self, mut session: Session) {
        session.create_index = self.next_index;
        session.modify_index = self.next_index;
        self.touched.sessions.insert(session.id.clone());
        self.state
            .sessions
            .insert(session.id.clone(), Arc::new(session));
        self.changes.sessions = true;
    }

    /// Invalidates a session: its locks are released or its keys deleted,
    /// as its behavior says. Returns the session and the keys it held.
    pub fn destroy_session(&mut self, id: &str) -> Option<(Session, Vec<String>)> {
        let session = self.state.sessions.remove(id)?;
        self.touched.sessions.insert(id.to_string());
        self.changes.sessions = true;
        // Prepared queries tied to the session go with it, as Consul's.
        let queries: Vec<String> = self
            .state
            .queries
            .values()
            .filter(|q| q.session == id)
            .map(|q| q.id.clone())
            .collect();
        for q in queries {
            self.remove_query(&q);
        }
        let held: Vec<String> = self
            .state
            .kv
            .values()
            .filter(|e| e.session.as_deref() == Some(id))
            .map(|e| e.key.clone())
            .collect();
        for key in &held {
            match session.behavior {
                Behavior::Delete => {
                    self.kv_delete(key, None);
                }
                Behavior::Release => {
                    let e = self.state.kv.get(key).cloned().expect("held key");
                    self.kv_release(key, e.value.clone(), e.flags, id);
                    if !session.lock_delay.is_zero() {
                        let until = model::unix_millis() + session.lock_delay.as_millis() as u64;
                        if let Some(e) = self.state.kv.get_mut(key) {
                            Arc::make_mut(e).lock_delay_until = until;
                        }
                    }
                }
            }
        }
        Some((Arc::unwrap_or_clone(session), held))
    }
}
