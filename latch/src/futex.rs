//! The one shared futex of the workspace: a 32-bit word that processes can
//! sleep on and wake each other through, wherever each one mapped it.
//!
//! # Why not `std`, `parking_lot` or `atomic-wait`
//!
//! They all pass `FUTEX_PRIVATE_FLAG`, which keys the kernel's wait queue on
//! (address space, virtual address). A process that wakes a word in a
//! `MAP_SHARED` segment then looks in *its own* queue and never finds the
//! sleeper in the other process (DESIGN.md, "Facts verified", 2). Without the
//! flag the key is (inode, offset) of the mapping, which every process
//! agrees on. This module therefore never sets the private flag; the
//! cross-`fork` tests in `tests/fork.rs` fail if someone adds it.
//!
//! # Deadlines
//!
//! [`Futex::wait`] takes an absolute [`Instant`] and hands the kernel an
//! absolute `CLOCK_MONOTONIC` time (`FUTEX_WAIT_BITSET` without
//! `FUTEX_CLOCK_REALTIME`). A caller that retries after `EINTR` or a
//! spurious return passes the same `Instant` again, so retries never stretch
//! the timeout. [`WaitReturn::TimedOut`] is only reported once
//! `Instant::now()` has reached the deadline, so a timeout is never early.
//!
//! # The loom model
//!
//! loom cannot model system calls, so under `--cfg loom` a [`Futex`] carries
//! a loom `Mutex` and `Condvar` next to its word. `wait` compares the word
//! under the mutex and sleeps on the condvar; `wake_all` takes the mutex and
//! notifies. That is the futex contract (compare-and-sleep is atomic with
//! respect to wake), and a wake that the protocol above forgot to send
//! leaves a modelled thread asleep forever, which loom reports as a
//! deadlock. A wait with a deadline is modelled as "the deadline passes
//! while the waiter would sleep": it returns [`WaitReturn::TimedOut`] right
//! after the comparison, so loom interleaves the timeout with every set.

use std::io;
use std::time::Instant;

use shmem::sync::AtomicU32;

/// Why [`Futex::wait`] returned, other than with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReturn {
    /// Woken, or the word did not hold `expected`, or a signal interrupted
    /// the sleep, or the kernel woke us for no reason. The caller re-reads
    /// the word and decides; it cannot tell these apart and need not.
    Returned,
    /// The deadline has passed (checked against [`Instant::now`]).
    TimedOut,
}

/// A 32-bit word that processes sharing a mapping can sleep on.
///
/// In production this is `#[repr(transparent)]` over [`AtomicU32`], so it can
/// sit in a segment; all-zero is a word holding 0.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Futex {
    word: AtomicU32,
}

/// A 32-bit word that modelled threads can sleep on (loom build): the word
/// plus a mutex and condvar that stand in for the kernel's wait queue.
#[cfg(loom)]
#[derive(Debug, Default)]
pub struct Futex {
    word: AtomicU32,
    queue: loom::sync::Mutex<()>,
    wakeup: loom::sync::Condvar,
}

#[cfg(not(loom))]
// SAFETY: a transparent wrapper around an AtomicU32 (ShmSafe itself): any
// bits are a valid word, it holds no pointers, and it mutates only through
// atomic operations and the kernel's atomic futex compare.
unsafe impl shmem::ShmSafe for Futex {}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Futex>() == 4);
    assert!(std::mem::align_of::<Futex>() == 4);
};

impl Futex {
    /// A futex word holding `value`.
    #[cfg(not(loom))]
    pub const fn new(value: u32) -> Self {
        Self {
            word: AtomicU32::new(value),
        }
    }

    /// A futex word holding `value`.
    #[cfg(loom)]
    pub fn new(value: u32) -> Self {
        Self {
            word: AtomicU32::new(value),
            queue: loom::sync::Mutex::new(()),
            wakeup: loom::sync::Condvar::new(),
        }
    }

    /// The word itself. Its protocol belongs to the caller.
    #[inline(always)]
    pub fn word(&self) -> &AtomicU32 {
        &self.word
    }

    /// Sleeps while the word holds `expected`, until woken, interrupted or
    /// past `deadline` (`None`: no deadline).
    ///
    /// The comparison and the going to sleep are one atomic step with
    /// respect to [`wake_all`](Self::wake_all): a waker that changes the
    /// word and then wakes cannot slip between them. Any return other than
    /// [`WaitReturn::TimedOut`] may be spurious; re-read the word.
    ///
    /// Async-signal-safe (no allocation, no locks, `errno` untouched: rustix
    /// issues the system call directly).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use latch::futex::{Futex, WaitReturn};
    ///
    /// let futex = Futex::new(7);
    /// // The word does not hold 5: returns at once.
    /// assert_eq!(futex.wait(5, None)?, WaitReturn::Returned);
    /// // It holds 7 and nobody wakes us: times out, never early.
    /// let deadline = Instant::now() + Duration::from_millis(5);
    /// loop {
    ///     if futex.wait(7, Some(deadline))? == WaitReturn::TimedOut {
    ///         break;
    ///     }
    /// }
    /// assert!(Instant::now() >= deadline);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    #[cfg(not(loom))]
    pub fn wait(&self, expected: u32, deadline: Option<Instant>) -> io::Result<WaitReturn> {
        use rustix::io::Errno;
        use rustix::thread::futex;

        let timeout = deadline.map(monotonic_timespec);
        let result = futex::wait_bitset(
            self.word.as_std(),
            // Empty flags: a SHARED futex (no FUTEX_PRIVATE_FLAG), and an
            // absolute CLOCK_MONOTONIC timeout (no FUTEX_CLOCK_REALTIME).
            futex::Flags::empty(),
            expected,
            timeout.as_ref(),
            // Match any waker: FUTEX_BITSET_MATCH_ANY. Plain FUTEX_WAKE
            // uses the same all-ones bitset.
            std::num::NonZeroU32::MAX,
        );
        match result {
            // Woken, or (EAGAIN) the word no longer held `expected`, or
            // (EINTR) a signal handler ran: the caller re-reads the word.
            Ok(()) | Err(Errno::AGAIN) | Err(Errno::INTR) => Ok(WaitReturn::Returned),
            Err(Errno::TIMEDOUT) => match deadline {
                // The kernel's clock and Instant are both CLOCK_MONOTONIC and
                // the timespec is rounded up, so this always holds; checking
                // keeps "never early" true by construction.
                Some(d) if Instant::now() >= d => Ok(WaitReturn::TimedOut),
                _ => Ok(WaitReturn::Returned),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Model of the futex wait; see the module docs.
    #[cfg(loom)]
    pub fn wait(&self, expected: u32, deadline: Option<Instant>) -> io::Result<WaitReturn> {
        use shmem::sync::Ordering;
        let guard = self
            .queue
            .lock()
            .map_err(|_| io::Error::other("futex model mutex poisoned"))?;
        // Relaxed: the mutex orders this load after any waker's store that
        // preceded its wake_all (both take `queue`), as the kernel's bucket
        // lock does.
        if self.word.load(Ordering::Relaxed) != expected {
            return Ok(WaitReturn::Returned);
        }
        if deadline.is_some() {
            return Ok(WaitReturn::TimedOut);
        }
        let _guard = self
            .wakeup
            .wait(guard)
            .map_err(|_| io::Error::other("futex model mutex poisoned"))?;
        Ok(WaitReturn::Returned)
    }

    /// Wakes every process and thread sleeping on this word, and returns
    /// how many there were. Change the word *before* calling this.
    ///
    /// Async-signal-safe, like [`wait`](Self::wait).
    #[cfg(not(loom))]
    pub fn wake_all(&self) -> io::Result<usize> {
        use rustix::thread::futex;
        // Empty flags: shared, as in `wait`. i32::MAX is "everyone" (the
        // kernel reads the count as an int).
        Ok(futex::wake(
            self.word.as_std(),
            futex::Flags::empty(),
            i32::MAX as u32,
        )?)
    }

    /// Model of the futex wake; see the module docs.
    #[cfg(loom)]
    pub fn wake_all(&self) -> io::Result<usize> {
        let _guard = self
            .queue
            .lock()
            .map_err(|_| io::Error::other("futex model mutex poisoned"))?;
        self.wakeup.notify_all();
        Ok(0)
    }
}

/// `deadline` as an absolute `CLOCK_MONOTONIC` time for the kernel.
///
/// `Instant` hides its raw value, so the conversion goes through "now" on
/// both clocks. `Instant::now()` is read first, so the remaining time is
/// measured from the earlier instant and the result is never earlier than
/// `deadline` (at worst later by the few nanoseconds between the reads).
#[cfg(not(loom))]
fn monotonic_timespec(deadline: Instant) -> rustix::time::Timespec {
    use rustix::time::{ClockId, Timespec, clock_gettime};
    let instant_now = Instant::now();
    let mono_now = clock_gettime(ClockId::Monotonic);
    let left = deadline.saturating_duration_since(instant_now);
    let nanos = mono_now.tv_nsec as u64 + u64::from(left.subsec_nanos());
    let secs = i64::try_from(left.as_secs())
        .ok()
        .and_then(|s| mono_now.tv_sec.checked_add(s))
        .and_then(|s| s.checked_add((nanos / 1_000_000_000) as i64));
    match secs {
        Some(tv_sec) => Timespec {
            tv_sec,
            tv_nsec: (nanos % 1_000_000_000) as _,
        },
        // Centuries away: as good as forever.
        None => Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 999_999_999,
        },
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use shmem::sync::Ordering;
    use std::time::Duration;

    #[test]
    fn wait_returns_at_once_when_the_word_differs() {
        let f = Futex::new(1);
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(f.wait(0, Some(far)).unwrap(), WaitReturn::Returned);
    }

    #[test]
    fn timeout_is_never_early() {
        let f = Futex::new(0);
        for ms in [0u64, 1, 3] {
            let deadline = Instant::now() + Duration::from_millis(ms);
            while f.wait(0, Some(deadline)).unwrap() != WaitReturn::TimedOut {}
            assert!(Instant::now() >= deadline);
        }
    }

    #[test]
    fn a_far_deadline_does_not_overflow() {
        let f = Futex::new(3);
        let far = Instant::now() + Duration::from_secs(u64::MAX / 4);
        assert_eq!(f.wait(0, Some(far)).unwrap(), WaitReturn::Returned);
    }

    #[test]
    fn wake_reaches_a_sleeping_thread() {
        let f = std::sync::Arc::new(Futex::new(0));
        let sleeper = {
            let f = f.clone();
            std::thread::spawn(move || {
                while f.word().load(Ordering::Acquire) == 0 {
                    f.wait(0, None).unwrap();
                }
            })
        };
        // Release: pairs with the sleeper's Acquire load.
        f.word().store(1, Ordering::Release);
        f.wake_all().unwrap();
        sleeper.join().unwrap();
    }
}
