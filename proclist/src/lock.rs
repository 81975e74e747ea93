//! A small mutex that lives in shared memory: a shared futex word that any
//! process mapping the segment can take, spin on briefly, and sleep on.
//!
//! # Protocol
//!
//! Shared state, all in the segment:
//!
//! - `state`: the futex word, one of three values (anything else means the
//!   segment was overwritten, reported as [`LockError::Corrupt`]):
//!   - [`UNLOCKED`] (0): free. All-zero bytes are therefore a free lock.
//!   - [`LOCKED`] (1): held, and nobody has announced that they sleep on it,
//!     so the holder's release makes no system call.
//!   - [`CONTENDED`] (2): held, and someone may be asleep on the word; the
//!     holder's release must wake.
//! - `holder`: the pid of the process holding the lock, 0 if none or not yet
//!   recorded. Written only by the holder, under the lock (right after taking
//!   it, and cleared right before releasing it). Diagnostic: nothing else
//!   depends on it.
//!
//! Taking the lock: one compare-and-swap 0 → 1. If that fails, poll the word
//! up to [`SPIN_POLLS`] times, retrying the CAS whenever it reads 0 (a holder
//! that runs on the other CPU usually lets go within that time). Then sleep:
//! swap in 2; if the swap returned 0 the lock is ours (held as 2, since we
//! cannot know whether others still sleep: at worst one needless wake
//! later); otherwise sleep on the futex while the word still reads 2, and
//! swap again on waking. Releasing: clear `holder`, swap in 0; if the word
//! was 2, wake the sleepers.
//!
//! No lost wake-up: a sleeper goes to sleep only if the word still reads 2,
//! and the kernel's compare-and-sleep is atomic with respect to a wake. A
//! releaser that swaps 0 in after the sleeper's swap of 2 sees 2 and wakes;
//! one that swaps before makes the sleeper's compare fail.
//!
//! Orderings: the successful CAS or swap that takes the lock is Acquire and
//! pairs with the Release swap that releases it, so everything the previous
//! holder wrote under the lock is visible to the next one.
//!
//! This is the three-state futex mutex of Ulrich Drepper's "Futexes Are
//! Tricky" (2004, "mutex, take 2"), with a bounded spin in front and a
//! deadline.
//!
//! # Crashes
//!
//! A process that dies while holding the lock leaves it held forever, and
//! leaves whatever the lock protects possibly half-changed. Nothing can
//! repair that from the outside; the segment must be reset (DESIGN.md,
//! "Critical sections"). The lock cannot tell the postmaster so itself (it
//! knows no slot): a process whose crash may be contained (a worker with
//! `OnCrash::Contain`, a process that attached by itself) takes the lock
//! inside a critical section of its slot
//! ([`SlotGuard::critical`](crate::SlotGuard::critical), entered before
//! locking and left after unlocking), which makes its death while holding
//! a reset. [`ShmLock::holder`] names the holder so that a
//! supervisor can see that it is dead; a lock that reads locked with no
//! holder recorded was either taken an instant ago or lost its holder
//! between the CAS and the store of its pid, so it cannot be judged from
//! one look.
//!
//! Hence the rule for the postmaster, which must never hang on a child:
//! use [`ShmLock::try_lock`] or [`ShmLock::lock_until`], never
//! [`ShmLock::lock`].
//!
//! ```
//! use proclist::ShmLock;
//!
//! let lock = ShmLock::new();
//! {
//!     let _guard = lock.lock()?;
//!     assert_eq!(lock.holder(), Some(std::process::id()));
//!     assert!(lock.try_lock()?.is_none());
//! } // released here
//! assert!(lock.try_lock()?.is_some());
//! # Ok::<(), proclist::LockError>(())
//! ```

use std::io;
use std::time::Instant;

use latch::futex::{Futex, WaitReturn};
use shmem::sync::{AtomicU32, Ordering};
use thiserror::Error;

/// Lock state: free.
pub const UNLOCKED: u32 = 0;
/// Lock state: held, nobody asleep on it.
pub const LOCKED: u32 = 1;
/// Lock state: held, and a process may be asleep on it; release must wake.
pub const CONTENDED: u32 = 2;

/// How many times a locker polls the word before it sleeps. About 2 µs on
/// this machine, under a tenth of a cross-CPU futex wake-up (DESIGN.md fact
/// 5): list operations under the lock take well under that, so a holder on
/// the other CPU is usually gone before we would have slept. Under loom one
/// poll, to keep the models small.
pub const SPIN_POLLS: u32 = if cfg!(loom) { 1 } else { 100 };

/// How many times a locker may wake without getting the lock before it
/// gives up with [`LockError::Starved`]. Each wake means the lock was
/// released (or a signal arrived), so a legitimate caller never gets near
/// this; it bounds the loop against a process that rewrites the word.
pub const MAX_WAKEUPS: u32 = 1 << 20;

/// Why a lock operation failed.
#[derive(Debug, Error)]
pub enum LockError {
    /// The lock word holds a value that is not a lock state: shared memory
    /// was overwritten.
    #[error("lock word holds {state}, which is not a lock state; the segment needs a reset")]
    Corrupt {
        /// The value found.
        state: u32,
    },
    /// [`ShmLock::lock_until`]'s deadline passed before the lock was free.
    #[error("timed out waiting for a lock held by {}", describe_holder(*holder))]
    TimedOut {
        /// The holder recorded when we gave up, if any.
        holder: Option<u32>,
    },
    /// The lock was released [`MAX_WAKEUPS`] times without us getting it.
    #[error(
        "woke {MAX_WAKEUPS} times without getting the lock; another process may be rewriting it"
    )]
    Starved,
    /// The futex system call failed in an unexpected way.
    #[error("futex wait on a lock failed: {0}")]
    Futex(#[source] io::Error),
}

fn describe_holder(holder: Option<u32>) -> String {
    match holder {
        Some(pid) => format!("process {pid} (if it is dead, the segment needs a reset)"),
        None => "a process that has not recorded its pid yet".to_owned(),
    }
}

/// A mutex in shared memory; see the module docs for the protocol.
///
/// `#[repr(C)]`, 8 bytes, all-zero is unlocked. It guards no data of its
/// own: it protects whatever its users agree it protects (a list head and
/// the links of its nodes, for [`crate::ProcList`]).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ShmLock {
    /// [`UNLOCKED`], [`LOCKED`] or [`CONTENDED`].
    state: Futex,
    /// Pid of the holder, 0 if none (or not yet recorded).
    holder: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ShmLock>() == 8);
    assert!(std::mem::align_of::<ShmLock>() == 4);
};

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of two 32-bit words (Futex is a transparent AtomicU32):
// any bits are a valid value (unknown states are reported as Corrupt, never
// trusted), there are no pointers, and all mutation is atomic.
unsafe impl shmem::ShmSafe for ShmLock {}

/// The pid recorded as holder, from latch's fork-aware cache (no system
/// call).
#[inline]
fn current_pid() -> u32 {
    latch::pid::current()
}

impl ShmLock {
    /// An unlocked lock, like all-zero bytes in a segment.
    pub fn new() -> Self {
        Self {
            state: Futex::new(UNLOCKED),
            holder: AtomicU32::new(0),
        }
    }

    /// Takes the lock, sleeping as long as it takes. For processes that may
    /// block on each other; the postmaster uses [`try_lock`](Self::try_lock)
    /// or [`lock_until`](Self::lock_until) instead.
    pub fn lock(&self) -> Result<LockGuard<'_>, LockError> {
        self.acquire(None)
    }

    /// Takes the lock, or gives up with [`LockError::TimedOut`] once
    /// `deadline` has passed (never before it).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use proclist::{LockError, ShmLock};
    ///
    /// let lock = ShmLock::new();
    /// let _held = lock.lock()?;
    /// let deadline = Instant::now() + Duration::from_millis(5);
    /// let err = lock.lock_until(deadline).unwrap_err();
    /// assert!(matches!(err, LockError::TimedOut { holder: Some(_) }));
    /// # Ok::<(), LockError>(())
    /// ```
    pub fn lock_until(&self, deadline: Instant) -> Result<LockGuard<'_>, LockError> {
        self.acquire(Some(deadline))
    }

    /// Takes the lock if it is free; `Ok(None)` if someone holds it. Never
    /// sleeps and never spins.
    pub fn try_lock(&self) -> Result<Option<LockGuard<'_>>, LockError> {
        // Acquire on success: pairs with the Release swap in release(), so
        // the previous holder's writes are visible. Relaxed on failure: we
        // only inspect the value.
        match self.state.word().compare_exchange(
            UNLOCKED,
            LOCKED,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(Some(self.took())),
            Err(LOCKED | CONTENDED) => Ok(None),
            Err(state) => Err(LockError::Corrupt { state }),
        }
    }

    /// The pid of the process holding the lock, if the lock is held and the
    /// holder has recorded itself. A snapshot: stale as soon as it returns.
    /// See "Crashes" in the module docs.
    pub fn holder(&self) -> Option<u32> {
        // Relaxed: a diagnostic snapshot; nothing is read through it.
        match self.holder.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether the lock is held right now (a snapshot, stale on return).
    pub fn is_locked(&self) -> bool {
        // Relaxed: a diagnostic snapshot; nothing is read through it.
        self.state.word().load(Ordering::Relaxed) != UNLOCKED
    }

    fn acquire(&self, deadline: Option<Instant>) -> Result<LockGuard<'_>, LockError> {
        let word = self.state.word();
        // Fast path. Acquire on success: pairs with the Release swap in
        // release(). Relaxed on failure: the value only steers what follows.
        let mut seen =
            match word.compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(self.took()),
                Err(seen) => seen,
            };
        for _ in 0..SPIN_POLLS {
            match seen {
                UNLOCKED => {
                    // Acquire/Relaxed: as in the fast path.
                    match word.compare_exchange(
                        UNLOCKED,
                        LOCKED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Ok(self.took()),
                        Err(now) => seen = now,
                    }
                }
                LOCKED | CONTENDED => {
                    shmem::sync::spin_loop();
                    // Relaxed: a poll; the CAS above does the acquiring.
                    seen = word.load(Ordering::Relaxed);
                }
                state => return Err(LockError::Corrupt { state }),
            }
        }
        if !matches!(seen, UNLOCKED | LOCKED | CONTENDED) {
            return Err(LockError::Corrupt { state: seen });
        }
        for _ in 0..MAX_WAKEUPS {
            // Announce that we (may) sleep. Acquire: if this returns
            // UNLOCKED we hold the lock; pairs with the Release swap in
            // release().
            match word.swap(CONTENDED, Ordering::Acquire) {
                UNLOCKED => return Ok(self.took()),
                LOCKED | CONTENDED => {}
                // We overwrote garbage with CONTENDED; the segment needs a
                // reset either way, and whoever else waits will wake into
                // it (or time out).
                state => return Err(LockError::Corrupt { state }),
            }
            match self.state.wait(CONTENDED, deadline) {
                Ok(WaitReturn::Returned) => {}
                // The word stays CONTENDED after we leave: the holder's
                // release makes one wake that finds nobody, which is cheaper
                // than tracking how many sleep.
                Ok(WaitReturn::TimedOut) => {
                    return Err(LockError::TimedOut {
                        holder: self.holder(),
                    });
                }
                Err(e) => return Err(LockError::Futex(e)),
            }
        }
        Err(LockError::Starved)
    }

    /// Records the new holder and makes its guard.
    #[inline]
    fn took(&self) -> LockGuard<'_> {
        // Relaxed: written under the lock by the holder; the lock's own
        // Acquire/Release orders it for the next holder, and outside
        // readers (holder()) take it as a snapshot.
        self.holder.store(current_pid(), Ordering::Relaxed);
        LockGuard { lock: self }
    }

    fn release(&self) {
        // Relaxed: cleared under the lock; the Release swap below orders
        // it before the next holder's store.
        self.holder.store(0, Ordering::Relaxed);
        // Release: pairs with the Acquire CAS/swap that takes the lock, so
        // our writes under the lock are visible to the next holder.
        let before = self.state.word().swap(UNLOCKED, Ordering::Release);
        if before != LOCKED {
            // CONTENDED: someone may sleep. Anything else was not a state
            // we could have left: wake anyway, so no sleeper is stranded.
            // FUTEX_WAKE cannot fail on a valid, aligned word, and a drop
            // has nobody to report to.
            let woken = self.state.wake_all();
            debug_assert!(woken.is_ok(), "FUTEX_WAKE failed: {woken:?}");
        }
    }
}

/// Proof that the lock is held; dropping it releases the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
#[derive(Debug)]
pub struct LockGuard<'a> {
    lock: &'a ShmLock,
}

impl LockGuard<'_> {
    /// The lock this guard holds.
    pub fn lock(&self) -> &ShmLock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::time::Duration;

    #[test]
    fn zeroed_lock_is_unlocked_and_guard_releases() {
        let lock = ShmLock::new();
        assert!(!lock.is_locked());
        assert_eq!(lock.holder(), None);
        let guard = lock.lock().unwrap();
        assert!(lock.is_locked());
        assert_eq!(lock.holder(), Some(std::process::id()));
        assert!(lock.try_lock().unwrap().is_none());
        drop(guard);
        assert!(!lock.is_locked());
        assert_eq!(lock.holder(), None);
        assert!(lock.try_lock().unwrap().is_some());
    }

    #[test]
    fn lock_until_times_out_never_early_and_names_the_holder() {
        let lock = ShmLock::new();
        let _held = lock.lock().unwrap();
        let deadline = Instant::now() + Duration::from_millis(3);
        match lock.lock_until(deadline) {
            Err(LockError::TimedOut { holder }) => {
                assert_eq!(holder, Some(std::process::id()));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(Instant::now() >= deadline);
    }

    #[test]
    fn corrupt_words_are_errors_not_hangs() {
        let lock = ShmLock::new();
        lock.state.word().store(77, Ordering::Relaxed);
        assert!(matches!(
            lock.try_lock(),
            Err(LockError::Corrupt { state: 77 })
        ));
        assert!(matches!(lock.lock(), Err(LockError::Corrupt { state: 77 })));
        let soon = Instant::now() + Duration::from_millis(1);
        assert!(matches!(
            lock.lock_until(soon),
            Err(LockError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_sleeping_locker_is_woken_by_release() {
        let lock = ShmLock::new();
        let held = lock.lock().unwrap();
        let entered = AtomicU32::new(0);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let _g = lock.lock().unwrap();
                // Relaxed: ordered by the lock itself.
                entered.store(1, Ordering::Relaxed);
            });
            // Wait (bounded) until the waiter has announced itself, so the
            // release below takes the waking path.
            let give_up = Instant::now() + Duration::from_secs(10);
            while lock.state.word().load(Ordering::Relaxed) != CONTENDED {
                assert!(Instant::now() < give_up, "waiter never went to sleep");
                std::thread::yield_now();
            }
            assert_eq!(entered.load(Ordering::Relaxed), 0);
            drop(held);
            waiter.join().unwrap();
        });
        assert_eq!(entered.load(Ordering::Relaxed), 1);
        assert!(!lock.is_locked());
    }

    #[test]
    fn threads_exclude_each_other() {
        const THREADS: usize = 4;
        const ROUNDS: u32 = 20_000;
        let lock = ShmLock::new();
        // A non-atomic read-modify-write split into two atomic halves: two
        // holders at once would lose increments.
        let counter = AtomicU32::new(0);
        let inside = AtomicU32::new(0);
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..ROUNDS {
                        let _g = lock.lock().unwrap();
                        // Relaxed: the lock orders these; the counter only
                        // detects a second holder.
                        assert_eq!(inside.swap(1, Ordering::Relaxed), 0);
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        inside.store(0, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), THREADS as u32 * ROUNDS);
        assert!(!lock.is_locked());
    }
}
