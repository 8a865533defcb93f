//! The watchers of other datacenters: one blocking query per service asked
//! for by DNS (within the remote slots), and the datacenter list.

use super::blocking::segment;
use super::*;

impl ConsulSync {
    pub(super) async fn watch_service(
        self: Arc<Self>,
        dc: Option<String>,
        name: String,
        mut first: Option<oneshot::Sender<()>>,
    ) {
        struct Count<'a>(&'a AtomicUsize);
        impl Drop for Count<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.watchers.fetch_add(1, Ordering::Relaxed);
        let _count = Count(&self.watchers);
        let path = format!("/v1/health/service/{}", segment(&name));
        let mut index = 0;
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            let result = {
                let _slot = self.slots.acquire().await.expect("never closed");
                self.get::<Vec<Entry>>(&path, dc.as_deref(), index, self.wait())
                    .await
            };
            let (returned, entries, arrived) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                    continue;
                }
            };
            backoff.reset();
            if returned != index || first.is_some() {
                self.apply(dc.as_deref(), &name, entries);
                self.stats
                    .change_to_dns
                    .observe(arrived.elapsed().as_secs_f64());
            }
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
            index = next_index(index, returned);
            tokio::time::sleep_until(started + MIN_INTERVAL).await;
        }
    }

    pub(super) async fn follow_datacenters(self: Arc<Self>) {
        let mut backoff = Backoff::new();
        loop {
            let result = {
                let _slot = self.slots.acquire().await.expect("never closed");
                self.get::<Vec<String>>("/v1/catalog/datacenters", None, 0, Duration::ZERO)
                    .await
            };
            match result {
                Ok((_, dcs, _)) => {
                    backoff.reset();
                    *self.datacenters.write_locked() =
                        dcs.into_iter().map(|d| d.to_ascii_lowercase()).collect();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                Err(e) => {
                    self.failed(&e);
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    pub(super) async fn expire_remote(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let idle: Vec<(String, String)> = {
                let mut remote = self.remote.locked();
                let idle: Vec<_> = remote
                    .iter()
                    .filter(|(_, w)| w.last_used.elapsed() >= REMOTE_IDLE)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &idle {
                    if let Some(w) = remote.remove(k) {
                        w.task.abort();
                    }
                }
                idle
            };
            for (dc, name) in idle {
                tracing::debug!("dropping the unused watch of {name} in {dc}");
                self.purge(Some(&dc), &name);
            }
        }
    }
}
