//! DNS over TCP: the accept loop and one task per connection, with the
//! bounds RFC 7766 lets a server keep:
//! * at most `max` connections, sized from the descriptor limit so that
//!   the HTTP API and UDP keep working when TCP is full, and at most
//!   [`MAX_PER_CLIENT`] from one address; at either cap a connection
//!   already open is closed to admit the new one ([`crate::net`]), so a
//!   client's new query is answered however many connections it or anyone
//!   holds;
//! * a connection told to close answers the query it already received
//!   (on a connection that has had none yet: one arriving within
//!   [`FIRST_QUERY_GRACE`]) before it closes, so closing it loses no
//!   question a client sent;
//! * an idle connection is closed after [`IDLE`];
//! * a failed accept (out of descriptors) backs off instead of spinning.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::handler::{Handler, Outcome, Scratch};
use super::wire::Transport;
use crate::net::{Admission, Limits, Place};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// A TCP connection with no query for this long is closed (RFC 7766 asks
/// servers to time idle connections out).
pub const IDLE: Duration = Duration::from_secs(10);
/// Open TCP connections at most, before the descriptor limit lowers it.
pub const MAX_CONNECTIONS: usize = 1024;
/// Open TCP connections from one address at most.
pub const MAX_PER_CLIENT: usize = 64;
/// How long a connection closed before its first query still waits for
/// it: a client writes its query right after connecting.
pub const FIRST_QUERY_GRACE: Duration = Duration::from_millis(200);
/// Descriptors left for everything else (UDP, the store, upstream sockets)
/// when sizing the DNS TCP and the HTTP tables from the process's limit.
pub(crate) const RESERVED_FDS: usize = 256;

/// The open connections: the shared admission table, and the closed
/// connections still waiting out their [`FIRST_QUERY_GRACE`] (bounded, so a
/// connect flood cannot hold descriptors past the table's size).
pub struct TcpConns {
    pub admission: Arc<Admission>,
    lingering: AtomicUsize,
    pub accept_errors: std::sync::atomic::AtomicU64,
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
            admission: Admission::new(
                "dns over tcp",
                Limits {
                    max,
                    per_client: MAX_PER_CLIENT.min(max),
                    evict_busy: true,
                },
            ),
            lingering: AtomicUsize::new(0),
            accept_errors: Default::default(),
        })
    }

    fn admit(&self, client: IpAddr) -> Option<Place> {
        self.admission.admit(client)
    }

    /// Takes a place among the connections waiting out their grace; false
    /// when a quarter of the table's size already does.
    fn linger(&self) -> bool {
        let bound = (self.admission.limits().max / 4).max(1);
        self.lingering
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < bound).then_some(n + 1)
            })
            .is_ok()
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
                        conns.accept_errors.fetch_add(1, Ordering::Relaxed);
                        conns.admission.report(&format!("cannot accept: {e}; backing off"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(place) = conns.admit(peer.ip()) else {
                    continue;
                };
                let handler = Arc::clone(&handler);
                let stop = stop.clone();
                let conns = Arc::clone(&conns);
                conn_tasks.spawn(async move {
                    connection(stream, &handler, &place, &conns, stop, query_log).await;
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

/// What ended a wait for the next query.
enum Next {
    Query,
    Done,
}

async fn connection(
    mut stream: TcpStream,
    handler: &Handler,
    place: &Place,
    conns: &TcpConns,
    mut stop: watch::Receiver<bool>,
    query_log: bool,
) {
    let _ = stream.set_nodelay(true);
    let Ok(peer) = stream.peer_addr() else {
        return;
    };
    let state = &place.state;
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let mut scratch = Scratch::default();
    loop {
        let mut len = [0u8; 2];
        let next = {
            // One read future across both waits, so that a length that
            // started arriving is never dropped half read.
            let read = stream.read_exact(&mut len);
            tokio::pin!(read);
            let closing = tokio::select! {
                biased;
                r = tokio::time::timeout(IDLE, &mut read) => Some(r),
                _ = stop.changed() => return,
                _ = state.close.cancelled() => None,
            };
            match closing {
                Some(Ok(Ok(_))) => Next::Query,
                Some(_) => Next::Done,
                // Told to close: answer what already arrived, or on a
                // connection that has had no query yet, what arrives soon.
                None => {
                    let grace = !state.served() && conns.linger();
                    let wait = if grace {
                        FIRST_QUERY_GRACE
                    } else {
                        Duration::ZERO
                    };
                    let r = tokio::time::timeout(wait, &mut read).await;
                    if grace {
                        conns.lingering.fetch_sub(1, Ordering::Relaxed);
                    }
                    match r {
                        Ok(Ok(_)) => Next::Query,
                        _ => Next::Done,
                    }
                }
            }
        };
        if matches!(next, Next::Done) {
            return;
        }
        state.begin();
        let answered = answer(
            &mut stream,
            handler,
            peer,
            &len,
            &mut buf,
            &mut out,
            &mut scratch,
            query_log,
        )
        .await;
        state.end();
        if !answered || state.close.is_cancelled() {
            return;
        }
    }
}

/// Reads the query whose length is `len`, answers it, and writes the
/// answer; false when the connection failed.
#[allow(clippy::too_many_arguments)]
async fn answer(
    stream: &mut TcpStream,
    handler: &Handler,
    peer: std::net::SocketAddr,
    len: &[u8; 2],
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    scratch: &mut Scratch,
    query_log: bool,
) -> bool {
    buf.resize(u16::from_be_bytes(*len) as usize, 0);
    if !matches!(
        tokio::time::timeout(IDLE, stream.read_exact(buf)).await,
        Ok(Ok(_))
    ) {
        return false;
    }
    let started = std::time::Instant::now();
    match handler.handle(buf, Transport::Tcp, peer.ip(), out, scratch) {
        Outcome::Reply => {}
        Outcome::Drop => out.clear(),
        Outcome::Forward => {
            *out = match handler.admit_forward(buf, peer.ip()) {
                Ok(t) => handler.forward(buf, Transport::Tcp, t).await,
                Err(reply) => reply,
            }
        }
        Outcome::Remote => *out = handler.remote(buf, Transport::Tcp, peer.ip()).await,
    }
    handler.stats().record(true, out, started.elapsed());
    if query_log {
        super::wire::log_query(peer, "tcp", out, started.elapsed());
    }
    if !out.is_empty() {
        let mut framed = Vec::with_capacity(out.len() + 2);
        framed.extend_from_slice(&(out.len() as u16).to_be_bytes());
        framed.extend_from_slice(out);
        if stream.write_all(&framed).await.is_err() {
            return false;
        }
    }
    true
}

/// DNS over TCP's connection table, read at scrape time.
pub struct TcpCollector(pub Arc<TcpConns>);

impl std::fmt::Debug for TcpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpCollector")
    }
}

impl Collector for TcpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = &self.0.admission.stats;
        let open = t.open.load(Ordering::Relaxed) as i64;
        gauge(
            &mut encoder,
            "dns_tcp_connections",
            "DNS over TCP connections open now",
            open,
        )?;
        for (name, help, v) in [
            (
                "dns_tcp_evicted_idle",
                "DNS TCP connections closed (after any query they had sent) to admit a new one at the connection limit",
                &t.evicted_total,
            ),
            (
                "dns_tcp_evicted_per_client",
                "DNS TCP connections closed (after any query they had sent) to admit a new one from the same client at its limit",
                &t.evicted_per_client,
            ),
            (
                "dns_tcp_refused",
                "New DNS TCP connections closed at once: every candidate connection was busy",
                &t.refused,
            ),
            (
                "dns_tcp_accept_errors",
                "Failed DNS TCP accepts (out of file descriptors); each backs off 100 ms",
                &self.0.accept_errors,
            ),
        ] {
            counter(&mut encoder, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}
