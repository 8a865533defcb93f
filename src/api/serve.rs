//! The HTTP listener's accept loop, with the limits `axum::serve` lacks:
//! a cap on connections in total and per client address ([`crate::net`]:
//! at a cap the idlest connection, or the one waiting longest for its
//! headers, is closed to admit the new one, so a health probe is answered
//! through a slowloris flood from its own address), a timeout for a
//! request's headers (slowloris), an idle timeout for keep-alive
//! connections, and a back-off when the process runs out of descriptors.
//! The body-read timeout is a middleware (`api::read_body_in_time`).
//!
//! A connection with a request in progress (a blocking query) is never
//! closed for a newcomer. Each closing and each timeout is counted
//! (`signpost_http_*`) and logged at most every 10 s.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::locks::MutexExt;
use crate::net::{Admission, AdmissionStats, ConnState, Limits};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use crate::metrics::{counter, gauge};

/// The HTTP listener's bounds (see `api::serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// For a request's headers to arrive (slow clients are cut).
    pub header_timeout: std::time::Duration,
    /// For a request's body to arrive.
    pub body_timeout: std::time::Duration,
    /// A keep-alive connection with no request and no I/O for this long is
    /// closed (a blocking query in flight is not idle).
    pub idle_timeout: std::time::Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            // Ten thousand watchers (consul-template fleets, Prometheus,
            // UIs: a connection each) with room to spare; bounded further
            // by the open-file limit at start (see `serve`).
            max_connections: 16_384,
            max_connections_per_client: 512,
            header_timeout: std::time::Duration::from_secs(10),
            body_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(90),
        }
    }
}

/// What the listener closed or cut, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Open connections, and those closed at the caps.
    pub conns: Arc<AdmissionStats>,
    /// Connections closed for headers not sent in time or idling.
    pub timed_out: AtomicU64,
    pub accept_errors: AtomicU64,
}

/// The listener's shared pieces: the admission table and the limits.
struct Conns {
    limits: HttpLimits,
    admission: Arc<Admission>,
    stats: Arc<HttpStats>,
}

impl Conns {
    /// Logs at most every 10 s.
    fn report(&self, what: &str) {
        self.admission.report(what);
    }
}

/// Serves `app` on `listener` until `stop` turns true; then lets requests
/// in flight finish for at most `drain`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stats: Arc<HttpStats>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    // The descriptors left after the reserve and DNS over TCP's whole
    // table (at most 1,024; HTTP's watchers are the many).
    let mut max = limits.max_connections;
    if let Some(fds) = crate::fds::limit().map(|n| usize::try_from(n).unwrap_or(usize::MAX)) {
        let fit = fds
            .saturating_sub(crate::dns::tcp::RESERVED_FDS)
            .saturating_sub(crate::dns::tcp::MAX_CONNECTIONS);
        if fit < max {
            max = fit.max(16);
            tracing::warn!(
                "open file limit {fds}: HTTP takes at most {max} connections (raise the limit for more)"
            );
        }
    }
    let admission = Admission::with_stats(
        "http",
        Limits {
            max,
            per_client: limits.max_connections_per_client,
            evict_busy: false,
        },
        Arc::clone(&stats.conns),
    );
    let conns = Arc::new(Conns {
        limits,
        admission,
        stats,
    });
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                conns.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                // Out of descriptors (EMFILE, ENFILE) or memory: accepting
                // again at once would spin; give connections time to close.
                conns.report(&format!("cannot accept HTTP connections: {e}; backing off"));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(place) = conns.admission.admit(peer.ip()) else {
            continue;
        };
        let (app, conns, stop) = (app.clone(), Arc::clone(&conns), stop.clone());
        tasks.spawn(async move {
            connection(stream, peer, app, &conns, &place.state, stop).await;
            drop(place);
        });
    }
    let _ = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

/// I/O and requests in flight on one connection: it is idle when neither
/// moved for the idle timeout (a blocking query in flight is not idle).
#[derive(Default)]
struct Activity {
    last_io: Mutex<Option<Instant>>,
    requests: AtomicUsize,
    /// Since when a request's headers are awaited: from the connection's
    /// start, and from the first byte of each later request, until hyper
    /// hands the request over. Kept here rather than as hyper's header
    /// read timeout, which also runs while a keep-alive connection waits
    /// for nothing, and so cut every idle connection at 10 s (logged as a
    /// slow client) instead of at the idle timeout.
    head_since: Mutex<Option<Instant>>,
}

impl Activity {
    fn touch(&self) {
        *self.last_io.locked() = Some(Instant::now());
    }

    fn head_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.head_since.locked()
    }

    /// How long the headers of the request in progress have been awaited.
    fn head_waited(&self) -> Duration {
        self.head_since().map(|t| t.elapsed()).unwrap_or_default()
    }

    fn idle_for(&self) -> Duration {
        if self.requests.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.last_io
            .locked()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
}

/// A stream that notes when it last read or wrote.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            self.activity.touch();
            // Bytes between requests start the next one's headers.
            if buf.filled().len() > before && self.activity.requests.load(Ordering::Relaxed) == 0 {
                self.activity.head_since().get_or_insert_with(Instant::now);
            }
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Decrements a connection's requests in flight when a request ends,
/// however it ends.
struct InFlight(Arc<Activity>, Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
        self.1.end();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    conns: &Conns,
    state: &Arc<ConnState>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::default());
    activity.touch();
    *activity.head_since() = Some(Instant::now());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let act = Arc::clone(&activity);
    let st = Arc::clone(state);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        act.requests.fetch_add(1, Ordering::Relaxed);
        *act.head_since() = None;
        st.begin();
        let guard = InFlight(Arc::clone(&act), Arc::clone(&st));
        let app = app.clone();
        let conn = Arc::clone(&st);
        crate::net::CONNECTION.scope(Arc::clone(&conn), async move {
            let mut r = app.oneshot(req.map(axum::body::Body::new)).await;
            // Chosen to make room while holding a blocking query: it
            // answered early, and the connection closes after the answer.
            if let (Ok(r), true) = (&mut r, conn.answer_now.is_cancelled()) {
                r.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
            }
            drop(guard);
            r
        })
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let (idle, head) = (conns.limits.idle_timeout, conns.limits.header_timeout);
    let mut tick = tokio::time::interval(Duration::from_secs(1).min(idle).min(head));
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("http connection from {peer}: {e}");
                }
                return;
            }
            _ = tick.tick() => {
                if activity.head_waited() >= head {
                    conns.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    conns.report(&format!("closed an HTTP connection from {peer}: headers not received within {head:?}"));
                    return;
                }
                if activity.idle_for() >= idle {
                    conns.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("closing an HTTP connection from {peer} idle for {idle:?}");
                    return;
                }
            }
            // Chosen to make room for a newcomer (never while a request is
            // in progress): closed at once.
            _ = state.close.cancelled() => return,

            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The HTTP listener's bounds, read at scrape time.
#[derive(Debug)]
pub struct HttpCollector(pub Arc<HttpStats>);

impl Collector for HttpCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.0;
        let open = h.conns.open.load(Ordering::Relaxed) as i64;
        gauge(
            &mut encoder,
            "http_connections",
            "HTTP connections open now",
            open,
        )?;
        gauge(
            &mut encoder,
            "http_blocking_queries",
            "Blocking queries waiting for a change now",
            h.conns.held.load(Ordering::Relaxed) as i64,
        )?;
        for (name, help, v) in [
            (
                "http_refused_connection_limit",
                "HTTP connections closed at the total connection limit to admit a new one (the biggest holder's idlest)",
                &h.conns.evicted_total,
            ),
            (
                "http_refused_per_client",
                "HTTP connections closed at a client's connection limit to admit its new one (its idlest, or the one waiting longest for headers)",
                &h.conns.evicted_per_client,
            ),
            (
                "http_refused_busy",
                "New HTTP connections closed at once: at a limit, every candidate had a request in progress",
                &h.conns.refused,
            ),
            (
                "http_answered_early",
                "Blocking queries answered before their wait to make room for a new connection (the connection closes after the answer)",
                &h.conns.answered_early,
            ),
            (
                "http_timed_out",
                "HTTP connections cut: headers not sent in time, or idle past the idle timeout",
                &h.timed_out,
            ),
            (
                "http_accept_errors",
                "Failed accepts (out of file descriptors, memory); each backs off 100 ms",
                &h.accept_errors,
            ),
        ] {
            counter(&mut encoder, name, help, v.load(Ordering::Relaxed))?;
        }
        Ok(())
    }
}
