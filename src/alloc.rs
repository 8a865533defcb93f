//! mimalloc, as the binary and the memory bench set it up.
//!
//! The registry is many small strings and maps, for which mimalloc keeps
//! resident memory well below glibc's malloc (262 vs 342 MiB for 100,000
//! instances, `cargo bench --bench memory`). Two settings on top of its
//! defaults keep memory freed after a bulk load from staying resident, and
//! the runtime's workers hand back what they freed when they go idle.

use libmimalloc_sys::{mi_collect, mi_option_set, mi_option_t};

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (the
/// same number in mimalloc 2 and 3; libmimalloc-sys names only some
/// options).
const ARENA_EAGER_COMMIT: mi_option_t = 4;

/// Commits arena memory as it is used instead of all at once, mimalloc's
/// default on Linux. With it, 100,000 instances loaded from one file left
/// the binary at 184–188 MiB; without, 167–171 (and 139 instead of 158
/// registered over HTTP; `benches/memory-binary.sh`). It must run before
/// the first allocation creates an arena, so [`configure_allocator!`]
/// runs it as a constructor, before Rust's runtime starts.
pub extern "C" fn configure() {
    // SAFETY: sets one of mimalloc's global options; no pointer is passed.
    unsafe { mi_option_set(ARENA_EAGER_COMMIT, 0) }
}

/// Hands the pages freed after a bulk load (the parsed definitions, the
/// transactions' bookkeeping) back to the OS now. mimalloc purges them
/// lazily, on the owning thread's later allocations, and the thread that
/// loads at start and on SIGHUP sleeps in between.
pub fn release_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps; it takes no
    // pointer and is safe to call at any time from any thread.
    unsafe { mi_collect(true) }
}

/// Busy time after which a runtime worker, going idle, hands back what it
/// freed.
const COLLECT_AFTER_BUSY: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// When this worker last woke, and how long it has been busy since it
    /// last handed memory back.
    static BUSY: std::cell::Cell<(Option<std::time::Instant>, std::time::Duration)> =
        const { std::cell::Cell::new((None, std::time::Duration::ZERO)) };
}

/// For the runtime's `on_thread_unpark`: the worker starts being busy.
pub fn worker_busy() {
    BUSY.set((Some(std::time::Instant::now()), BUSY.get().1));
}

/// For the runtime's `on_thread_park`: a worker going idle after 100 ms of
/// work since it last did hands back the pages it freed. mimalloc purges
/// them only on the thread's later allocations, and an idle worker makes
/// none: one `/v1/catalog/services` over a million instances left 37 MiB
/// resident on the worker that built it. Collecting walks the worker's
/// heap (1.7 ms there), so it is paid once per 100 ms of work, not per
/// park: under 2 % of a busy worker.
pub fn worker_idle() {
    let (woke, busy) = BUSY.get();
    let busy = busy + woke.map(|t| t.elapsed()).unwrap_or_default();
    if busy < COLLECT_AFTER_BUSY {
        BUSY.set((None, busy));
        return;
    }
    BUSY.set((None, std::time::Duration::ZERO));
    release_freed_memory();
}

/// Runs [`configure`] before the program's first allocation, as an ELF
/// constructor (Linux only, as the UDP fast path is). For the binaries
/// whose global allocator is mimalloc: `main.rs` and the memory bench.
#[macro_export]
macro_rules! configure_allocator {
    () => {
        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static CONFIGURE_ALLOCATOR: extern "C" fn() = $crate::alloc::configure;
    };
}
