//! The calling process's id, without a system call on the hot path.
//!
//! [`Latch::wait`](crate::Latch::wait) checks that the caller owns the latch,
//! which needs our pid. glibc stopped caching `getpid()` (2.25), and a
//! system call costs about as much as a whole spinning latch round trip on
//! this machine, so the pid is cached here. The cache must be right after
//! `fork`, in the child, before the child does anything else, and at that
//! point a child of a multi-threaded parent may only do async-signal-safe
//! things. So:
//!
//! - a constructor in `.init_array` runs before `main` (before any thread
//!   exists), fills the cache and registers a `pthread_atfork` child
//!   handler; registering it lazily could happen inside such a child, where
//!   `pthread_atfork` is not safe to call;
//! - the child handler refreshes the cache with `getpid()` (async-signal-
//!   safe) and clears the inherited postmaster-death state;
//! - should the constructor not have run (the cache reads 0), [`current`]
//!   asks the kernel; [`Latch::own`](crate::Latch::own) always asks the
//!   kernel and refreshes the cache, which also repairs it in a process made
//!   by a raw `clone` that skipped the fork handlers.
//!
//! Under `--cfg loom` modelled threads stand in for processes and share one
//! pid, so there is no cache.

#[cfg(not(loom))]
use shmem::sync::{AtomicU32, Ordering};

/// The cached pid; 0 until the constructor runs.
#[cfg(not(loom))]
static CACHED_PID: AtomicU32 = AtomicU32::new(0);

/// Runs before `main`: see the module docs.
#[cfg(not(loom))]
#[used]
#[unsafe(link_section = ".init_array")]
static PRIME_AT_START: extern "C" fn() = prime_at_start;

#[cfg(not(loom))]
extern "C" fn prime_at_start() {
    // SAFETY: pthread_atfork only records the function pointer, which is a
    // plain `extern "C" fn()` that stays valid for the life of the program.
    // We are in a constructor, before any thread of ours exists.
    let rc = unsafe { nix::libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    if rc == 0 {
        // Relaxed: the value only changes at fork, in a single-threaded
        // child, before anything reads it; there is nothing to order.
        CACHED_PID.store(kernel_pid(), Ordering::Relaxed);
    }
    // If registration failed the cache stays 0 and `current` falls back to
    // a system call: slower, never wrong.
}

#[cfg(not(loom))]
extern "C" fn after_fork_in_child() {
    // Relaxed: as in prime_at_start.
    CACHED_PID.store(kernel_pid(), Ordering::Relaxed);
    crate::pmdeath::after_fork_in_child();
}

#[cfg(not(loom))]
fn kernel_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// The calling process's id. Async-signal-safe.
#[cfg(not(loom))]
#[inline]
pub fn current() -> u32 {
    // Relaxed: see prime_at_start.
    match CACHED_PID.load(Ordering::Relaxed) {
        0 => kernel_pid(),
        pid => pid,
    }
}

/// The calling process's id, asked of the kernel; refreshes the cache.
#[cfg(not(loom))]
pub fn refresh() -> u32 {
    let pid = kernel_pid();
    // Only overwrite a primed cache: a 0 means the fork handler is not
    // registered, and a cached value could then go stale at the next fork.
    // Relaxed: see prime_at_start.
    let _ = CACHED_PID.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        (old != 0 && old != pid).then_some(pid)
    });
    pid
}

/// The calling process's id (loom build: every modelled thread shares it).
#[cfg(loom)]
pub fn current() -> u32 {
    std::process::id()
}

/// The calling process's id (loom build).
#[cfg(loom)]
pub fn refresh() -> u32 {
    std::process::id()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_constructor_primed_the_cache() {
        assert_eq!(CACHED_PID.load(Ordering::Relaxed), std::process::id());
        assert_eq!(current(), std::process::id());
        assert_eq!(refresh(), std::process::id());
    }
}
