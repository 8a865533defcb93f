//! DNS over TCP: the accept loop and one task per connection, with the
//! bounds RFC 7766 lets a server keep:
//! * at most `max` connections, sized from the descriptor limit so that
//!   the HTTP API and UDP keep working when TCP is full; when full, the
//!   longest-idle connection is closed to admit the new one, so one client
//!   holding idle connections cannot starve the others;
//! * at most `per_client` from one address (new ones past it are closed);
//! * an idle connection is closed after [`IDLE`];
//! * a failed accept (out of descriptors) backs off instead of spinning.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::handler::{Handler, Outcome, Scratch, Transport};

/// A TCP connection with no query for this long is closed (RFC 7766 asks
/// servers to time idle connections out).
pub const IDLE: Duration = Duration::from_secs(10);
/// Open TCP connections at most, before the descriptor limit lowers it.
pub const MAX_CONNECTIONS: usize = 1024;
/// Open TCP connections from one address at most.
pub const MAX_PER_CLIENT: usize = 64;
/// Descriptors left for everything else (HTTP, UDP, the store, upstream
/// sockets) when sizing the TCP limit from the process's limit.
const RESERVED_FDS: usize = 256;

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TcpStats {
    pub open: AtomicU64,
    /// Idle connections closed to admit a new one.
    pub evicted_idle: AtomicU64,
    /// New connections closed: their client was at its limit, or every
    /// connection was busy.
    pub refused: AtomicU64,
    pub accept_errors: AtomicU64,
}

struct Entry {
    client: IpAddr,
    /// When its last query was answered (or it opened).
    last: Instant,
    /// A query of its is being answered: not idle.
    busy: Arc<AtomicBool>,
    close: CancellationToken,
}

#[derive(Default)]
struct Table {
    next: u64,
    conns: HashMap<u64, Entry>,
    per_client: HashMap<IpAddr, usize>,
}

/// The open connections. std Mutex: taken per connection opened, closed
/// or answered, never across `.await`.
pub struct TcpConns {
    max: usize,
    per_client: usize,
    table: Mutex<Table>,
    pub stats: TcpStats,
    reports: crate::metrics::Throttle,
}

/// A connection's place in the table; gives it back when dropped.
struct Place {
    conns: Arc<TcpConns>,
    id: u64,
    busy: Arc<AtomicBool>,
    close: CancellationToken,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        if let Some(e) = t.conns.remove(&self.id) {
            if let Some(n) = t.per_client.get_mut(&e.client) {
                *n -= 1;
                if *n == 0 {
                    t.per_client.remove(&e.client);
                }
            }
            self.conns.stats.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Place {
    fn answered(&self) {
        if let Some(e) = self.conns.lock().conns.get_mut(&self.id) {
            e.last = Instant::now();
        }
    }
}

impl TcpConns {
    /// The table, its size bounded by [`MAX_CONNECTIONS`] and by the
    /// descriptors left after [`RESERVED_FDS`] (half of them: every
    /// listener address shares it, and HTTP needs its own).
    pub fn new() -> Arc<TcpConns> {
        let mut max = MAX_CONNECTIONS;
        if let Some(fds) = crate::fds::limit().map(|n| usize::try_from(n).unwrap_or(usize::MAX)) {
            let fit = fds.saturating_sub(RESERVED_FDS) / 2;
            if fit < max {
                max = fit.max(16);
                tracing::warn!(
                    "open file limit {fds}: DNS over TCP takes at most {max} connections (raise the limit for more)"
                );
            }
        }
        Arc::new(TcpConns {
            max,
            per_client: MAX_PER_CLIENT.min(max),
            table: Mutex::new(Table::default()),
            stats: TcpStats::default(),
            reports: Default::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn report(&self, what: &str) {
        if self.reports.due() {
            tracing::warn!(
                open = self.stats.open.load(Ordering::Relaxed),
                limit = self.max,
                per_client = self.per_client,
                "dns over tcp: {what} (counted in /metrics, logged every 10 s)"
            );
        }
    }

    /// A place for a new connection from `client`, closing the
    /// longest-idle connection when the table is full.
    fn admit(self: &Arc<Self>, client: IpAddr) -> Option<Place> {
        let mut t = self.lock();
        if t.per_client.get(&client).copied().unwrap_or(0) >= self.per_client {
            drop(t);
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            self.report(&format!(
                "{client} is at its connection limit; closing its new ones"
            ));
            return None;
        }
        if t.conns.len() >= self.max {
            let idlest = t
                .conns
                .iter()
                .filter(|(_, e)| !e.busy.load(Ordering::Relaxed))
                .min_by_key(|(_, e)| e.last)
                .map(|(id, _)| *id);
            let Some(id) = idlest else {
                drop(t);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.report("every connection is busy; closing new ones");
                return None;
            };
            // Out of the table now (its task ends on the token), so the
            // new connection can take its place at once.
            if let Some(e) = t.conns.remove(&id) {
                e.close.cancel();
                if let Some(n) = t.per_client.get_mut(&e.client) {
                    *n -= 1;
                    if *n == 0 {
                        t.per_client.remove(&e.client);
                    }
                }
                self.stats.open.fetch_sub(1, Ordering::Relaxed);
            }
            self.stats.evicted_idle.fetch_add(1, Ordering::Relaxed);
            drop(t);
            self.report("at the connection limit; closing the longest-idle connections");
            t = self.lock();
        }
        let id = t.next;
        t.next += 1;
        let busy = Arc::new(AtomicBool::new(false));
        let close = CancellationToken::new();
        t.conns.insert(
            id,
            Entry {
                client,
                last: Instant::now(),
                busy: Arc::clone(&busy),
                close: close.clone(),
            },
        );
        *t.per_client.entry(client).or_default() += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Some(Place {
            conns: Arc::clone(self),
            id,
            busy,
            close,
        })
    }
}

pub async fn accept_loop(
    listener: TcpListener,
    handler: Arc<Handler>,
    conns: Arc<TcpConns>,
    mut stop: watch::Receiver<bool>,
    query_log: bool,
) {
    let mut conn_tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors (EMFILE, ENFILE): accepting at
                        // once again would spin a core.
                        conns.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        conns.report(&format!("cannot accept: {e}; backing off"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(place) = conns.admit(peer.ip()) else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let stop = stop.clone();
                conn_tasks.spawn(async move {
                    connection(stream, &handler, &place, stop, query_log).await;
                    drop(place);
                });
            }
            Some(_) = conn_tasks.join_next(), if !conn_tasks.is_empty() => {}
        }
    }
    // In-flight queries finish (each connection stops after its current
    // answer), bounded by the idle timeout.
    while conn_tasks.join_next().await.is_some() {}
}

async fn connection(
    mut stream: TcpStream,
    handler: &Handler,
    place: &Place,
    mut stop: watch::Receiver<bool>,
    query_log: bool,
) {
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let mut scratch = Scratch::default();
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE, stream.read_exact(&mut len)) => r,
            _ = stop.changed() => return,
            _ = place.close.cancelled() => return,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        place.busy.store(true, Ordering::Relaxed);
        buf.resize(u16::from_be_bytes(len) as usize, 0);
        if !matches!(
            tokio::time::timeout(IDLE, stream.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let started = std::time::Instant::now();
        match handler.handle(&buf, Transport::Tcp, peer.ip(), &mut out, &mut scratch) {
            Outcome::Reply => {}
            Outcome::Drop => out.clear(),
            Outcome::Forward => {
                out = match handler.admit_forward(&buf, peer.ip()) {
                    Ok(t) => handler.forward(&buf, Transport::Tcp, t).await,
                    Err(reply) => reply,
                }
            }
            Outcome::Remote => out = handler.remote(&buf, Transport::Tcp, peer.ip()).await,
        }
        handler.stats().record(true, &out, started.elapsed());
        if query_log {
            super::server::log_query(peer, "tcp", &out, started.elapsed());
        }
        if !out.is_empty() {
            let mut framed = Vec::with_capacity(out.len() + 2);
            framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
            framed.extend_from_slice(&out);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
        place.busy.store(false, Ordering::Relaxed);
        place.answered();
    }
}
