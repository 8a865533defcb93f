//! The UDP fast path on Linux: batched receive and send (`recvmmsg`,
//! `sendmmsg`), and load shedding by age.
//!
//! One thread per socket reads up to [`BATCH`] datagrams with one system
//! call, answers them from memory, and sends the replies with one more.
//! The kernel stamps each datagram when it arrives (`SO_TIMESTAMPNS`); one
//! that waited in the socket's bounded receive queue longer than the shed
//! limit is dropped unanswered, so under overload the oldest queries, whose
//! clients are giving up, go first and the backlog never grows past the
//! queue. IPv4 replies carry Don't Fragment unless too big for the link
//! ([`dont_fragment`]).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Datagrams read or written per system call.
pub const BATCH: usize = 32;
/// The largest query accepted over UDP (bigger ones are cut and get
/// FORMERR, like any malformed query).
const MAX_QUERY: usize = 4096;
/// Room for one SCM_TIMESTAMPNS control message.
const CMSG_SPACE: usize = 64;

/// Asks the kernel to stamp datagrams with their arrival time.
pub fn enable_timestamps(sock: &UdpSocket) -> io::Result<()> {
    set_int_option(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// IPv4 replies go out with Don't Fragment set and the path MTU ignored
/// (`IP_PMTUDISC_PROBE`), as BIND's have since DNS Flag Day 2020: a
/// reply within `udp_payload_max` (1232) fits any link, and no forged
/// ICMP can shrink it. It is also cheaper: the kernel gives an unfragmented
/// datagram from an unconnected socket IP ID 0 instead of hashing one from
/// a shared table (3.6 % of the core at 400k replies a second). A reply too
/// big for the link (a trusted client's, up to `udp_payload_max_trusted`)
/// is refused with EMSGSIZE and goes out fragmented, as it did before,
/// under a `Fragmenting` ([`send_reply`], and [`Batch::send`] for the
/// rest of its batch).
pub fn dont_fragment(sock: &UdpSocket) -> io::Result<()> {
    set_int_option(
        sock,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}

fn set_int_option(
    sock: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a plain setsockopt on a socket we own, with a c_int option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Held while a socket is switched to fragmenting, so that two senders
/// never switch it back under each other. The UDP thread's ordinary sends
/// do not take it: one that goes out while the socket fragments is only
/// sent as before.
static FRAGMENTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// An IPv4 socket set by [`dont_fragment`], allowed to fragment until this
/// is dropped.
struct Fragmenting<'a> {
    sock: &'a UdpSocket,
    _held: std::sync::MutexGuard<'static, ()>,
}

impl<'a> Fragmenting<'a> {
    fn begin(sock: &'a UdpSocket) -> io::Result<Fragmenting<'a>> {
        let held = FRAGMENTING.lock().unwrap_or_else(|e| e.into_inner());
        set_int_option(
            sock,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )?;
        Ok(Fragmenting { sock, _held: held })
    }
}

impl Drop for Fragmenting<'_> {
    fn drop(&mut self) {
        if let Err(e) = dont_fragment(self.sock) {
            tracing::warn!("udp: could not set Don't Fragment again: {e}");
        }
    }
}

/// Sends one reply, and if the kernel refuses it as bigger than the link
/// (see [`dont_fragment`]), sends it again allowed to fragment.
pub fn send_reply(sock: &UdpSocket, reply: &[u8], to: SocketAddr) -> io::Result<usize> {
    match sock.send_to(reply, to) {
        Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) && to.is_ipv4() => {
            let _fragmenting = Fragmenting::begin(sock)?;
            sock.send_to(reply, to)
        }
        sent => sent,
    }
}

/// Buffers for one batch, reused for the life of the thread.
pub struct Batch {
    bufs: Vec<[u8; MAX_QUERY]>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u8; CMSG_SPACE]>,
    iovecs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
    /// Datagrams the last `receive` read: the headers to reset next time.
    received: usize,
    /// Replies of this batch and their destinations.
    replies: Vec<Vec<u8>>,
    reply_to: Vec<usize>,
    out_iovecs: Vec<libc::iovec>,
    out_msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside (libc's msghdr and iovec) only ever
// point into this struct's own heap buffers, which move with it and are
// never shared: sending the whole batch to another thread is sound.
unsafe impl Send for Batch {}

/// One received datagram.
pub struct Datagram<'a> {
    pub bytes: &'a [u8],
    pub from: SocketAddr,
    /// It arrived before the batch's cutoff (see [`Stamp::cutoff`]): its
    /// client has likely given up.
    pub stale: bool,
}

/// A wall-clock time as the kernel stamps datagrams: (seconds,
/// nanoseconds) since the epoch, so that stamps are compared, not converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(i64, i64);

impl Stamp {
    /// The time before which a datagram has waited longer than `limit` as
    /// of `now`.
    pub fn cutoff(now: SystemTime, limit: Duration) -> Stamp {
        let t = now
            .checked_sub(limit)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        Stamp(t.as_secs() as i64, i64::from(t.subsec_nanos()))
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    pub fn new() -> Batch {
        let mut b = Batch {
            bufs: vec![[0u8; MAX_QUERY]; BATCH],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C
            // structs for which all zeroes is a valid value.
            addrs: vec![unsafe { zeroed() }; BATCH],
            cmsgs: vec![[0u8; CMSG_SPACE]; BATCH],
            // SAFETY: as above, plain C structs.
            iovecs: vec![unsafe { zeroed() }; BATCH],
            // SAFETY: as above, plain C structs.
            msgs: vec![unsafe { zeroed() }; BATCH],
            received: BATCH,
            replies: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            reply_to: Vec::with_capacity(BATCH),
            // SAFETY: as above, plain C structs.
            out_iovecs: vec![unsafe { zeroed() }; BATCH],
            // SAFETY: as above, plain C structs.
            out_msgs: vec![unsafe { zeroed() }; BATCH],
        };
        // The headers point into the vectors' heap buffers, which never
        // move or grow, so they are set once; `receive` only resets what
        // the kernel writes back.
        for i in 0..BATCH {
            b.iovecs[i] = libc::iovec {
                iov_base: b.bufs[i].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_QUERY,
            };
            let hdr = &mut b.msgs[i].msg_hdr;
            hdr.msg_name = &mut b.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            hdr.msg_iov = &mut b.iovecs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = b.cmsgs[i].as_mut_ptr() as *mut libc::c_void;
        }
        b
    }

    /// Waits for at least one datagram (or the socket's read timeout) and
    /// reads up to [`BATCH`]. Returns how many.
    pub fn receive(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        // Only the headers of the last call's datagrams were written to.
        for msg in &mut self.msgs[..self.received] {
            msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msg.msg_hdr.msg_controllen = CMSG_SPACE as _;
            msg.msg_hdr.msg_flags = 0;
            msg.msg_len = 0;
        }
        // Through syscall(2), not libc's wrapper: the wrapper is a thread
        // cancellation point, which costs two calls into libc a batch that
        // this thread, never cancelled, does not need (so `send` too).
        // SAFETY: every pointer in `msgs` points into buffers owned by
        // `self`, sized as declared, alive for the call.
        let n = unsafe {
            libc::syscall(
                libc::SYS_recvmmsg,
                sock.as_raw_fd(),
                self.msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut::<libc::timespec>(),
            )
        };
        if n < 0 {
            // Nothing read, but reset all next time rather than trust that
            // a failed call left every header alone.
            self.received = BATCH;
            Err(io::Error::last_os_error())
        } else {
            self.received = n as usize;
            Ok(n as usize)
        }
    }

    /// Datagram `i` of the last [`receive`](Self::receive), with the
    /// buffer for its reply (sent by [`send`](Self::send) unless
    /// [`cancel_reply`](Self::cancel_reply) takes it back).
    pub fn slot(&mut self, i: usize, cutoff: Stamp) -> Option<(Datagram<'_>, &mut Vec<u8>)> {
        let msg = &self.msgs[i];
        let len = (msg.msg_len as usize).min(MAX_QUERY);
        let from = sockaddr(&self.addrs[i], msg.msg_hdr.msg_namelen)?;
        let stale = arrival(&msg.msg_hdr).is_some_and(|t| t < cutoff);
        let k = self.reply_to.len();
        self.reply_to.push(i);
        Some((
            Datagram {
                bytes: &self.bufs[i][..len],
                from,
                stale,
            },
            &mut self.replies[k],
        ))
    }

    /// The replies made so far in this batch.
    pub fn replies(&self) -> &[Vec<u8>] {
        &self.replies[..self.reply_to.len()]
    }

    /// Starts a batch of replies.
    pub fn clear_replies(&mut self) {
        self.reply_to.clear();
    }

    /// Takes back the last reply buffer (nothing to send after all).
    pub fn cancel_reply(&mut self) {
        self.reply_to.pop();
    }

    /// Sends every reply of the batch; returns how many went out.
    pub fn send(&mut self, sock: &UdpSocket) -> usize {
        let count = self.reply_to.len();
        for k in 0..count {
            let i = self.reply_to[k];
            self.out_iovecs[k] = libc::iovec {
                iov_base: self.replies[k].as_ptr() as *mut libc::c_void,
                iov_len: self.replies[k].len(),
            };
            let hdr = &mut self.out_msgs[k].msg_hdr;
            hdr.msg_name = &mut self.addrs[i] as *mut libc::sockaddr_storage as *mut libc::c_void;
            hdr.msg_namelen = self.msgs[i].msg_hdr.msg_namelen;
            hdr.msg_iov = &mut self.out_iovecs[k];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        let mut sent = 0;
        // Set once a reply was too big for the link: the rest of the batch
        // then goes out allowed to fragment, so that a flood of big replies
        // costs two more system calls a batch rather than three a reply.
        let mut fragmenting = None;
        while sent < count {
            // SAFETY: as in `receive`; the replies and addresses outlive
            // the call.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_sendmmsg,
                    sock.as_raw_fd(),
                    self.out_msgs[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            if n > 0 {
                sent += n as usize;
                continue;
            }
            let too_big =
                n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EMSGSIZE);
            let i = self.reply_to[sent];
            if too_big && fragmenting.is_none() && self.addrs[i].ss_family == libc::AF_INET as u16 {
                fragmenting = Fragmenting::begin(sock).ok();
                if fragmenting.is_some() {
                    continue;
                }
            }
            // Skip the reply the kernel refused (e.g. an unreachable
            // destination) and go on with the rest.
            sent += 1;
        }
        count
    }
}

fn sockaddr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: the kernel filled `storage` with an address of `len` bytes.
    let addr = unsafe { socket2::SockAddr::new(*storage, len) };
    addr.as_socket()
}

/// The kernel's arrival stamp of a received message.
fn arrival(hdr: &libc::msghdr) -> Option<Stamp> {
    // SAFETY: walking the control buffer the kernel filled, with the libc
    // macros made for it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(hdr);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                return Some(Stamp(ts.tv_sec as i64, ts.tv_nsec as i64));
            }
            c = libc::CMSG_NXTHDR(hdr, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(t: SystemTime) -> Stamp {
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        Stamp(d.as_secs() as i64, i64::from(d.subsec_nanos()))
    }

    #[test]
    fn a_stamp_is_stale_only_past_the_limit() {
        // Nanoseconds just past a second boundary, so the cutoff borrows.
        let now = UNIX_EPOCH + Duration::new(1_700_000_000, 100);
        let cutoff = Stamp::cutoff(now, Duration::from_millis(1000));
        assert!(stamp(now - Duration::from_millis(1001)) < cutoff);
        assert!(stamp(now - Duration::from_millis(999)) > cutoff);
        assert!(stamp(now - Duration::from_nanos(1_000_000_001)) < cutoff);
        assert!(stamp(now - Duration::from_nanos(999_999_999)) > cutoff);
        assert!(stamp(now) > cutoff);
    }
}
