//! Postmaster death: a child learns promptly that the process that forked
//! it has gone, and every latch wait in the child returns
//! [`Wake::PostmasterDied`](crate::Wake::PostmasterDied).
//!
//! # Arming
//!
//! Right after `fork`, the child calls [`arm`] with the pid its parent had
//! before the fork. `arm` installs a handler for the death signal, asks the
//! kernel for that signal when the parent dies (`PR_SET_PDEATHSIG`), and
//! then compares `getppid()` with the expected parent: a parent that died
//! between `fork` and the `prctl` sends no signal, but has already handed
//! the child to a reaper, so the comparison catches it.
//!
//! `PR_SET_PDEATHSIG` fires when the parent *thread* exits. The handler
//! therefore checks `getppid()` too (the kernel reparents before it signals):
//! a parent process that is still there, or a stray `kill -USR2`, is
//! ignored. The postmaster forks from its only thread (DESIGN.md), so in
//! practice the signal means the process is gone.
//!
//! # Waking latch waits
//!
//! The handler stores a process-wide flag, then sets every latch that a
//! thread of this process is asleep on. Those latches are listed in a small
//! fixed table ([`SLEEPER_SLOTS`] entries): a waiter enters its latch's
//! address before it checks the flag and sleeps, and removes it after it
//! wakes. The handler and the waiter follow Dekker's pattern (each stores,
//! then loads the other's location, both SeqCst), so either the waiter sees
//! the flag before sleeping or the handler sees the entry and sets the
//! latch, whose futex word then no longer matches and the sleep ends.
//!
//! A handler on another thread might be setting a latch just as its waiter
//! returns and the latch's memory goes away. To rule that out the handler
//! marks the entry busy (low bit of the address) while it uses it, and a
//! waiter removing its entry waits for the mark to clear; the handler does
//! a swap and at most one futex wake, so that wait is short. A handler on
//! the waiter's own thread runs to completion before the waiter resumes, so
//! the waiter never waits for itself.
//!
//! If more than [`SLEEPER_SLOTS`] threads sleep at once, the extra ones
//! sleep in slices of [`POLL_WHEN_UNLISTED`] and check the flag between
//! slices.
//!
//! Everything the handler touches is async-signal-safe: atomics, `getppid`
//! and the futex wake, issued as raw system calls by rustix (which leaves
//! `errno` alone).
//!
//! After `fork`, the child's copy of this state is cleared (the pid
//! module's fork handler calls `after_fork_in_child`): the kernel does not
//! inherit `PR_SET_PDEATHSIG`, and the child's parent is a different process.
//!
//! ```no_run
//! use latch::{Latch, Wake, pmdeath};
//! use nix::unistd::{ForkResult, fork, getpid};
//!
//! let parent = getpid().as_raw() as u32;
//! # let latch: &Latch = Box::leak(Box::new(Latch::new()));
//! // SAFETY: a single-threaded program; the child only waits and exits.
//! if let ForkResult::Child = unsafe { fork() }? {
//!     pmdeath::arm(parent)?;
//!     latch.own()?;
//!     loop {
//!         latch.reset();
//!         // ... do work ...
//!         if latch.wait(None)? == Wake::PostmasterDied {
//!             std::process::exit(1); // clean up and leave
//!         }
//!     }
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::time::Duration;

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use shmem::sync::{AtomicU32, AtomicUsize, Ordering};
use thiserror::Error;

use crate::Latch;

/// The signal [`arm`] asks for. `SIGUSR2`'s default action would kill the
/// child, which is also what an unarmed child should do when its parent
/// dies; use [`arm_with_signal`] if the program needs `SIGUSR2` itself.
pub const DEFAULT_SIGNAL: Signal = Signal::SIGUSR2;

/// How many threads of one process can sleep on latches and still be woken
/// directly by the death handler.
pub const SLEEPER_SLOTS: usize = 64;

/// How long an unlisted sleeper (table full) sleeps between checks.
pub const POLL_WHEN_UNLISTED: Duration = Duration::from_millis(100);

/// Why arming failed.
#[derive(Debug, Error)]
pub enum PmDeathError {
    /// The signal handler could not be installed.
    #[error("cannot install the postmaster-death handler for {signal}: {source}")]
    Sigaction {
        /// The signal.
        signal: Signal,
        /// The error.
        source: nix::errno::Errno,
    },
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    #[error("prctl(PR_SET_PDEATHSIG) failed: {0}")]
    Prctl(#[source] nix::errno::Errno),
    /// The expected parent pid is 0 (not a process).
    #[error("the expected parent pid must not be 0; pass getpid() of the parent from before fork")]
    NoParent,
}

/// 1 once [`arm`] has run in this process.
static ARMED: AtomicU32 = AtomicU32::new(0);
/// The pid of the parent we expect; ours is dead once `getppid()` differs.
static EXPECTED_PARENT: AtomicU32 = AtomicU32::new(0);
/// 1 once the parent is known to be dead.
static PARENT_DIED: AtomicU32 = AtomicU32::new(0);
/// Addresses of latches a thread of this process sleeps on; 0 = free; the
/// low bit marks an entry the handler is using (latches are 4-aligned).
static SLEEPERS: [AtomicUsize; SLEEPER_SLOTS] = [const { AtomicUsize::new(0) }; SLEEPER_SLOTS];
const BUSY: usize = 1;

/// Arms postmaster-death detection with [`DEFAULT_SIGNAL`]; see the module
/// docs. Call it in the child right after `fork`, with the parent's pid from
/// before the fork. Async-signal-safe, so a child of a multi-threaded
/// parent may call it.
pub fn arm(expected_parent: u32) -> Result<(), PmDeathError> {
    arm_with_signal(expected_parent, DEFAULT_SIGNAL)
}

/// [`arm`] with a chosen signal, which this process must not use otherwise.
pub fn arm_with_signal(expected_parent: u32, signal: Signal) -> Result<(), PmDeathError> {
    if expected_parent == 0 {
        return Err(PmDeathError::NoParent);
    }
    // SeqCst, like every access to these three flags: they are read by the
    // signal handler, which may run on any thread, and the Dekker argument
    // in the module docs needs one total order.
    EXPECTED_PARENT.store(expected_parent, Ordering::SeqCst);
    ARMED.store(1, Ordering::SeqCst);
    // SA_RESTART: other system calls of the program should not see EINTR on
    // our account; latch waits do not rely on it (the handler sets them).
    let action = SigAction::new(
        SigHandler::Handler(on_death_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: the handler only touches atomics and makes async-signal-safe
    // system calls (getppid, futex wake) through rustix, which does not
    // touch errno; see on_death_signal.
    unsafe { sigaction(signal, &action) }
        .map_err(|source| PmDeathError::Sigaction { signal, source })?;
    nix::sys::prctl::set_pdeathsig(signal).map_err(PmDeathError::Prctl)?;
    // The parent may have died before the prctl: then no signal comes, but
    // we have already been reparented.
    check_parent();
    Ok(())
}

/// Whether the parent given to [`arm`] is still alive; always `true` in a
/// process that has not armed. Costs a `getppid()` when armed.
pub fn postmaster_is_alive() -> bool {
    if ARMED.load(Ordering::SeqCst) == 0 {
        return true;
    }
    check_parent();
    PARENT_DIED.load(Ordering::SeqCst) == 0
}

/// Whether the death of the parent has been noticed (no system call).
#[inline]
pub fn parent_died() -> bool {
    // SeqCst: the load half of the waiter's side of Dekker's pattern (the
    // store half is the SeqCst entry in `SleeperEntry::enter`).
    PARENT_DIED.load(Ordering::SeqCst) != 0
}

/// Clears the inherited state in a freshly forked child; called from the
/// fork handler in the pid module. Async-signal-safe.
pub(crate) fn after_fork_in_child() {
    // Relaxed: the child is single-threaded here and no handler can run
    // with ARMED at 0 mattering (the child has no death signal armed).
    ARMED.store(0, Ordering::Relaxed);
    EXPECTED_PARENT.store(0, Ordering::Relaxed);
    PARENT_DIED.store(0, Ordering::Relaxed);
    for slot in &SLEEPERS {
        slot.store(0, Ordering::Relaxed);
    }
}

extern "C" fn on_death_signal(_signal: nix::libc::c_int) {
    if ARMED.load(Ordering::SeqCst) != 0 {
        check_parent();
    }
}

/// Marks the parent dead if `getppid()` no longer names it, and wakes the
/// sleepers. Async-signal-safe.
fn check_parent() {
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if ppid == EXPECTED_PARENT.load(Ordering::SeqCst) {
        return;
    }
    // SeqCst: the store half of the handler's side of Dekker's pattern; the
    // loads of SLEEPERS below are its load half.
    PARENT_DIED.store(1, Ordering::SeqCst);
    for slot in &SLEEPERS {
        let addr = slot.load(Ordering::SeqCst);
        if addr == 0 || addr & BUSY != 0 {
            // Free, or being set by a handler on another thread right now.
            continue;
        }
        // SeqCst: keeps the claim in the same total order as the waiter's
        // entry and removal.
        if slot
            .compare_exchange(addr, addr | BUSY, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // SAFETY: the entry was made by a waiter from a `&Latch` it holds
            // for as long as the entry exists, and it cannot remove the entry
            // while BUSY is set (SleeperEntry::drop waits), so the latch is
            // alive until we clear BUSY below.
            let latch = unsafe { &*(addr as *const Latch) };
            latch.set();
            slot.store(addr, Ordering::SeqCst);
        }
    }
}

/// A waiter's entry in the sleeper table, removed on drop.
pub(crate) struct SleeperEntry<'a> {
    /// The slot, if one was free; `None` if not armed or the table is full.
    slot: Option<&'static AtomicUsize>,
    /// Whether the process is armed but no slot was free.
    unlisted: bool,
    _latch: std::marker::PhantomData<&'a Latch>,
}

impl<'a> SleeperEntry<'a> {
    /// Lists `latch` as slept on, if this process is armed.
    pub(crate) fn enter(latch: &'a Latch) -> Self {
        let mut entry = Self {
            slot: None,
            unlisted: false,
            _latch: std::marker::PhantomData,
        };
        if ARMED.load(Ordering::SeqCst) == 0 {
            return entry;
        }
        let addr = latch as *const Latch as usize;
        debug_assert_eq!(addr & BUSY, 0);
        // SeqCst: the store half of the waiter's side of Dekker's pattern.
        entry.slot = SLEEPERS.iter().find(|slot| {
            slot.compare_exchange(0, addr, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        });
        entry.unlisted = entry.slot.is_none();
        entry
    }

    /// Whether this sleeper must poll the flag (armed, table full).
    pub(crate) fn must_poll(&self) -> bool {
        self.unlisted
    }
}

impl Drop for SleeperEntry<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else { return };
        // Relaxed: we wrote this entry; only BUSY can have changed.
        let addr = slot.load(Ordering::Relaxed) & !BUSY;
        // SeqCst: ordered with the handler's claim; spins only while a
        // handler on another thread is setting the latch (a few µs at most).
        loop {
            match slot.compare_exchange(addr, 0, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) if seen == addr | BUSY => shmem::sync::spin_loop(),
                // Cleared under us: only the fork handler does that, in a
                // child where this thread was not asleep. Nothing to undo.
                Err(_) => break,
            }
        }
    }
}
