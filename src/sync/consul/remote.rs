//! Services in other datacenters, watched on demand for DNS (sidecar
//! mode's [`Remote`](crate::dns::handler::Remote)).

use super::*;

pub(super) struct RemoteWatch {
    pub(super) last_used: Instant,
    pub(super) task: AbortHandle,
    /// Resolved once the first answer is in the registry.
    pub(super) first: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The DNS side's view of the sync: readiness and remote datacenters.
pub struct Sidecar(pub Arc<ConsulSync>);

impl Remote for Sidecar {
    fn ready(&self) -> bool {
        self.0.is_synced()
    }

    fn knows(&self, dc: &str) -> bool {
        self.0.datacenters.read_locked().contains(dc)
    }

    fn touch(&self, dc: &str, service: &str) -> bool {
        let mut remote = self.0.remote.locked();
        match remote.get_mut(&(dc.to_string(), service.to_string())) {
            Some(w) => {
                w.last_used = Instant::now();
                w.first.is_none()
            }
            None => false,
        }
    }

    fn watch(&self, dc: String, service: String) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut ready = {
                let mut remote = self.0.remote.locked();
                let key = (dc.clone(), service.clone());
                if let Some(w) = remote.get_mut(&key) {
                    w.last_used = Instant::now();
                    match &w.first {
                        Some(rx) => rx.clone(),
                        None => return,
                    }
                } else {
                    let (tx, rx) = oneshot::channel();
                    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
                    let sync = Arc::clone(&self.0);
                    let task = self.0.tasks.locked().spawn(Arc::clone(&sync).watch_service(
                        Some(dc.clone()),
                        service.clone(),
                        Some(tx),
                    ));
                    tokio::spawn(async move {
                        let _ = rx.await;
                        let _ = done_tx.send(true);
                        let mut remote = sync.remote.locked();
                        if let Some(w) = remote.get_mut(&key) {
                            w.first = None;
                        }
                    });
                    remote.insert(
                        (dc.clone(), service.clone()),
                        RemoteWatch {
                            last_used: Instant::now(),
                            task,
                            first: Some(done_rx.clone()),
                        },
                    );
                    done_rx
                }
            };
            let _ = ready.wait_for(|done| *done).await;
        })
    }
}
