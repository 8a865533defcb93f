//! The DNS listeners: UDP and TCP on every `--dns` address.
//!
//! UDP is served by plain threads, one `SO_REUSEPORT` socket each, one per
//! core: the handler never waits on anything, so a blocking receive → answer
//! → send loop (batched, see `udp`) has no task, channel or allocation per
//! datagram. TCP runs on
//! tokio, one task per connection, answering its queries in order.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::handler::{Handler, Outcome, Scratch};
use super::udp::{dont_fragment, enable_timestamps, send_reply, Batch, Stamp};
use super::wire::Transport;

/// How often an idle UDP thread looks at the stop flag.
const UDP_STOP_POLL: Duration = Duration::from_millis(100);
/// Tries at finding a port free for both UDP and TCP when asked for port 0.
const PORT_TRIES: usize = 20;

pub struct DnsServer {
    addrs: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    stop_tcp: watch::Sender<bool>,
    udp_threads: Vec<JoinHandle<()>>,
    tcp_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// DNS over TCP's connection table, shared by every listener address.
    pub tcp_conns: Arc<super::tcp::TcpConns>,
    /// UDP queries being resolved upstream; shutdown waits for them.
    udp_in_flight: TaskTracker,
}

fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // The bounded queue in front of the thread: room for bursts, while
    // shedding by age keeps what waits in it fresh.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    s.set_read_timeout(Some(UDP_STOP_POLL))?;
    let sock: UdpSocket = s.into();
    enable_timestamps(&sock)?;
    if addr.is_ipv4() {
        dont_fragment(&sock)?;
    }
    Ok(sock)
}

fn tcp_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Binds UDP and TCP on `addr`; for port 0, on one port free for both.
fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, std::net::TcpListener)> {
    if addr.port() != 0 {
        return Ok((udp_socket(addr)?, tcp_listener(addr)?));
    }
    let mut last = None;
    for _ in 0..PORT_TRIES {
        let udp = udp_socket(addr)?;
        match tcp_listener(udp.local_addr()?) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free port")))
}

impl DnsServer {
    /// Binds every address and starts serving. Must run inside a tokio
    /// runtime (for TCP).
    /// `query_log`: log every query at info (target `signpost::query`).
    pub fn start(
        addrs: &[SocketAddr],
        handler: Arc<Handler>,
        tcp_conns: Arc<super::tcp::TcpConns>,
        query_log: bool,
    ) -> io::Result<DnsServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (stop_tcp, stop_rx) = watch::channel(false);
        let per_addr = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let mut server = DnsServer {
            addrs: Vec::new(),
            stop,
            stop_tcp,
            udp_threads: Vec::new(),
            tcp_tasks: Vec::new(),
            tcp_conns,
            udp_in_flight: TaskTracker::new(),
        };
        let conns = Arc::clone(&server.tcp_conns);
        for &addr in addrs {
            let (first, tcp) = bind_pair(addr).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen for DNS on {addr}: {e}"))
            })?;
            let bound = first.local_addr()?;
            server.addrs.push(bound);
            let mut sockets = vec![first];
            for _ in 1..per_addr {
                sockets.push(udp_socket(bound)?);
            }
            for (i, sock) in sockets.into_iter().enumerate() {
                let handler = Arc::clone(&handler);
                let stop = Arc::clone(&server.stop);
                let runtime = tokio::runtime::Handle::current();
                let in_flight = server.udp_in_flight.clone();
                let t = std::thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || {
                        udp_loop(
                            Arc::new(sock),
                            handler,
                            &stop,
                            &runtime,
                            &in_flight,
                            query_log,
                        )
                    })?;
                server.udp_threads.push(t);
            }
            let listener = TcpListener::from_std(tcp)?;
            server.tcp_tasks.push(tokio::spawn(super::tcp::accept_loop(
                listener,
                Arc::clone(&handler),
                Arc::clone(&conns),
                stop_rx.clone(),
                query_log,
            )));
        }
        Ok(server)
    }

    /// The bound addresses, in the order given (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, lets queries in hand finish, and waits for the
    /// listeners to end.
    pub async fn shutdown(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stop_tcp.send(true);
        for t in self.tcp_tasks {
            let _ = t.await;
        }
        let threads = self.udp_threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        // Queries already handed upstream still get their answer.
        self.udp_in_flight.close();
        self.udp_in_flight.wait().await;
    }
}

fn udp_loop(
    sock: Arc<UdpSocket>,
    handler: Arc<Handler>,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
    in_flight: &TaskTracker,
    query_log: bool,
) {
    let mut batch = Batch::new();
    let mut scratch = Scratch::default();
    let shed_after = handler.shed_after();
    while !stop.load(Ordering::Relaxed) {
        let n = match batch.receive(&sock) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!("udp receive failed: {e}");
                continue;
            }
        };
        // Two clock reads a batch, none a datagram: the shed cutoff, and
        // the start of the batch's latency (its replies all go out together).
        let cutoff = Stamp::cutoff(std::time::SystemTime::now(), shed_after);
        let started = std::time::Instant::now();
        batch.clear_replies();
        for i in 0..n {
            let Some((datagram, out)) = batch.slot(i, cutoff) else {
                continue;
            };
            let peer = datagram.from;
            // Waited too long in the queue: its client has likely given
            // up; dropping it lets the fresh ones behind it through.
            if datagram.stale {
                handler.stats().shed.fetch_add(1, Ordering::Relaxed);
                batch.cancel_reply();
                continue;
            }
            let outcome =
                handler.handle(datagram.bytes, Transport::Udp, peer.ip(), out, &mut scratch);
            match outcome {
                Outcome::Reply => {
                    if query_log {
                        super::wire::log_query(peer, "udp", out, started.elapsed());
                    }
                }
                Outcome::Drop => {
                    handler.stats().record(false, &[], started.elapsed());
                    batch.cancel_reply();
                }
                // Upstream answers take milliseconds: resolve on the runtime
                // and keep this thread answering from memory meanwhile.
                outcome @ (Outcome::Forward | Outcome::Remote) => {
                    // Admitted here, before a task exists: a flood of
                    // forwarded names costs bounded memory, and while every
                    // upstream is down it is answered from this thread.
                    let ticket = if outcome == Outcome::Forward {
                        match handler.admit_forward(datagram.bytes, peer.ip()) {
                            Ok(t) => Some(t),
                            Err(reply) => {
                                handler.stats().record(false, &reply, started.elapsed());
                                batch.cancel_reply();
                                if !reply.is_empty() {
                                    let _ = send_reply(&sock, &reply, peer);
                                }
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    let query = datagram.bytes.to_vec();
                    batch.cancel_reply();
                    let (handler, sock) = (Arc::clone(&handler), Arc::clone(&sock));
                    in_flight.spawn_on(
                        async move {
                            let reply = match ticket {
                                Some(t) => handler.forward(&query, Transport::Udp, t).await,
                                None => handler.remote(&query, Transport::Udp, peer.ip()).await,
                            };
                            handler.stats().record(false, &reply, started.elapsed());
                            if query_log {
                                super::wire::log_query(peer, "udp", &reply, started.elapsed());
                            }
                            if !reply.is_empty() {
                                let _ = send_reply(&sock, &reply, peer);
                            }
                        },
                        runtime,
                    );
                }
            }
        }
        handler
            .stats()
            .record_udp_batch(batch.replies(), started.elapsed());
        batch.send(&sock);
    }
}
