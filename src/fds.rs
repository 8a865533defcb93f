//! The process's open-file limit: every DNS TCP and HTTP connection is a
//! descriptor, and the usual soft limit of 1,024 runs out under load.

fn get() -> Option<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a syscall writing into a local struct.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim)
}

/// The soft limit now, or None when it cannot be read.
pub fn limit() -> Option<u64> {
    get().map(|l| l.rlim_cur)
}

/// Raises the soft limit to the hard limit; returns (before, after).
pub fn raise_to_hard() -> Option<(u64, u64)> {
    let mut lim = get()?;
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: a syscall reading a local struct.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0;
    Some((before, if raised { lim.rlim_cur } else { before }))
}
