//! mimalloc, as the binary and the memory bench set it up.
//!
//! The registry is many small strings and maps, for which mimalloc keeps
//! resident memory well below glibc's malloc (262 vs 342 MiB for 100,000
//! instances, `cargo bench --bench memory`). Two settings on top of its
//! defaults keep memory freed after a bulk load from staying resident.

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
