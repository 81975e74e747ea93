//! A process-shared latch on a shared futex, with postmaster-death
//! wake-ups.
//!
//! A [`Latch`] is a one-bit "something happened" flag that one process
//! sleeps on and any process may raise. It lives in a shared-memory segment
//! (all-zero bytes are an unset latch with no owner); it is PostgreSQL's
//! latch with the cross-process wake-up done by a shared futex instead of a
//! signal to a pid. A [`set`](Latch::set) that finds nobody asleep costs
//! one atomic swap and no system call; one that finds the owner asleep adds
//! one `FUTEX_WAKE`. A [`wait`](Latch::wait) says why it returned
//! ([`Wake`]), takes an absolute deadline, may spin a bounded, adaptive
//! while before it sleeps ([`SpinPolicy`]), and returns
//! [`Wake::PostmasterDied`] promptly once the process that forked this one
//! is gone ([`pmdeath`]).
//!
//! # Roles
//!
//! - **Owner**: one process, recorded by [`own`](Latch::own). Only it calls
//!   [`reset`](Latch::reset) and [`wait`](Latch::wait) (several of its
//!   threads may wait at once; each is woken). A wait by anyone else is
//!   [`LatchError::NotOwner`], never a hang.
//! - **Setters**: any process, any number, at any time, including from a
//!   signal handler ([`set`](Latch::set) is async-signal-safe).
//!
//! # The state word
//!
//! One 32-bit futex word, two bits:
//!
//! | bit              | set by                               | cleared by                                   |
//! |------------------|--------------------------------------|----------------------------------------------|
//! | [`SET`]          | `set` (swap to exactly `SET`)        | `reset` (`fetch_and`), owner only            |
//! | [`SLEEPING`]     | `wait`, just before `FUTEX_WAIT`     | `set` (its swap), or `wait` on leaving        |
//!
//! `set` swaps the word to `SET` and learns in the same instruction whether
//! `SLEEPING` was on; only then does it call `FUTEX_WAKE`. The sleeping
//! owner announces itself with a compare-and-swap from a value without
//! `SET`, so it can never announce over a set; and it sleeps with
//! `FUTEX_WAIT(word, value-it-announced)`, which the kernel turns into a
//! no-op if a set changed the word in between. The other fields
//! (`owner`, `spin_hint`) are written by the owner only; setters never
//! read them.
//!
//! # The usage loop, and the race it avoids
//!
//! Reset, *then* look for work, *then* wait:
//!
//! ```
//! use std::sync::atomic::Ordering;
//! use std::time::{Duration, Instant};
//! use latch::{Latch, Wake};
//! # #[allow(clippy::disallowed_types)]
//! # type Counter = std::sync::atomic::AtomicU64;
//!
//! let latch = Latch::new();
//! let work = Counter::new(0);
//! latch.own()?;
//!
//! // Another process: publish the work, then set.
//! work.fetch_add(1, Ordering::Release);
//! latch.set();
//!
//! // The owner:
//! let deadline = Instant::now() + Duration::from_secs(1);
//! let done = loop {
//!     latch.reset();
//!     let n = work.load(Ordering::Acquire);
//!     if n > 0 {
//!         break n; // handle it (and loop again in a real server)
//!     }
//!     match latch.wait(Some(deadline))? {
//!         Wake::Set => continue,
//!         Wake::Timeout => break 0,
//!         Wake::PostmasterDied => break 0, // clean up and exit
//!     }
//! };
//! assert_eq!(done, 1);
//! # Ok::<(), latch::LatchError>(())
//! ```
//!
//! The arrangement that loses wake-ups is "check for work, then reset,
//! then wait": a set landing between the check and the reset is erased by
//! the reset, and the owner sleeps on work it never saw. Checking *before*
//! the reset as well is fine, as long as a reset and a check come between
//! the last look and the wait. That fast form, `loop { if check() { break }
//! reset(); if check() { break } wait() }`, keeps the reset (an atomic
//! read-modify-write) off the critical path when work usually arrives with
//! the wake-up; `postmaster bench latch` uses it. With reset first,
//! a set after the reset stays visible to the wait, and a set before it
//! published its work before the reset read the word (below), so the check
//! sees the work.
//!
//! # Orderings
//!
//! - `set`'s swap is `Release`: work written before `set` happens-before
//!   anything that reads `SET` with `Acquire`.
//! - `wait`'s reads of the word and `reset`'s `fetch_and` are `Acquire`.
//!   `reset` being a read-modify-write matters: it reads the latest value
//!   in the word's modification order, so if a setter's swap came before
//!   the reset, the reset reads it and synchronises with it, and the
//!   owner's check for work that follows sees the work. A plain store
//!   would read nothing, and the check could miss work whose `SET` the
//!   store erased (PostgreSQL needs a full barrier after its store for the
//!   same reason). `reset` skips the read-modify-write when a relaxed load
//!   finds no `SET`: if that load was stale, the `SET` it missed is still
//!   in the word and the next wait returns at once, so nothing is lost.
//! - If the setter's swap came after the reset, the owner either announces
//!   `SLEEPING` before the swap (the swap sees it and wakes) or after (its
//!   compare-and-swap fails on `SET`), and the kernel's compare-and-sleep
//!   covers the gap between the announce and the sleep.
//!
//! `tests/loom.rs` checks these arguments exhaustively for small thread
//! counts, with a model futex under which a missing wake is a deadlock.
//!
//! # Channels
//!
//! [`channel`] puts blocking ends over the rings of [`shmem::ring`]: sends
//! and receives with deadlines that sleep on latches, with batched
//! wake-ups and the same reset-check-wait discipline as above.
//!
//! # Shared memory
//!
//! `Latch` is `#[repr(C)]`, 12 bytes, 4-aligned, all-zero valid, and any
//! bits at all are handled without undefined behaviour or a hang (unknown
//! bits are carried along; a garbage owner makes waits fail with
//! `NotOwner`). A latch set often by another CPU should not share a cache
//! line with other hot data.

pub mod channel;
pub mod futex;
pub mod pid;
#[cfg(not(loom))]
pub mod pmdeath;
pub mod spin;

use std::time::{Duration, Instant};

use shmem::sync::{AtomicU32, Ordering};
use thiserror::Error;

use crate::futex::{Futex, WaitReturn};
use crate::spin::SpinHint;
pub use crate::spin::{SpinPolicy, WaitOptions};

/// State bit: the latch is set.
pub const SET: u32 = 1;
/// State bit: the owner is asleep on the futex, or about to be; a setter
/// that sees it must wake.
pub const SLEEPING: u32 = 2;

/// Why [`Latch::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    /// The latch is set. It stays set until the owner resets it.
    Set,
    /// The deadline passed (never before it) with the latch unset.
    Timeout,
    /// The parent process died ([`pmdeath`]); reported before `Set` when
    /// both hold, and on every wait from then on.
    PostmasterDied,
}

/// What went wrong with a latch operation.
#[derive(Debug, Error)]
pub enum LatchError {
    /// Only the owner may wait on (or reset) a latch.
    #[error(
        "process {caller} may not wait on this latch: {} (call own() first)",
        describe_owner(*owner)
    )]
    NotOwner {
        /// The recorded owner, if any.
        owner: Option<u32>,
        /// The calling process.
        caller: u32,
    },
    /// The latch belongs to another live process.
    #[error(
        "the latch is owned by live process {owner}; it must disown it (or exit) before another process can own it"
    )]
    AlreadyOwned {
        /// The owner.
        owner: u32,
    },
    /// The futex system call failed in an unexpected way.
    #[error("futex wait failed: {0}")]
    Futex(#[source] std::io::Error),
}

fn describe_owner(owner: Option<u32>) -> String {
    match owner {
        Some(pid) => format!("it is owned by process {pid}"),
        None => "it has no owner".to_owned(),
    }
}

/// A process-shared latch; see the crate docs for the protocol.
#[repr(C)]
pub struct Latch {
    /// [`SET`] | [`SLEEPING`]; see "The state word".
    state: Futex,
    /// Pid of the owner, 0 for none. Written by `own`/`disown`.
    owner: AtomicU32,
    /// The owner's adaptive-spin memory, a packed [`SpinHint`]. Owner-only.
    spin_hint: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Latch>() == 12);
    assert!(std::mem::align_of::<Latch>() == 4);
};

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of three 32-bit atomics (Futex is a transparent
// AtomicU32): any bits are a valid value and are handled (see "Shared
// memory" in the crate docs), no pointers, all mutation is atomic.
unsafe impl shmem::ShmSafe for Latch {}

impl Default for Latch {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Latch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Relaxed: a diagnostic snapshot; nothing is read through it.
        f.debug_struct("Latch")
            .field("state", &self.state.word().load(Ordering::Relaxed))
            .field("owner", &self.owner())
            .finish()
    }
}

impl Latch {
    /// An unset latch with no owner, like all-zero bytes in a segment.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            state: Futex::new(0),
            owner: AtomicU32::new(0),
            spin_hint: AtomicU32::new(0),
        }
    }

    /// An unset latch with no owner (loom build).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            state: Futex::new(0),
            owner: AtomicU32::new(0),
            spin_hint: AtomicU32::new(0),
        }
    }

    /// Sets the latch and wakes its owner if it sleeps. Any process, any
    /// time; async-signal-safe. Costs one atomic swap, plus one
    /// `FUTEX_WAKE` if the owner was asleep.
    ///
    /// Everything written before `set` is visible to the owner once its
    /// wait returns [`Wake::Set`] or its [`reset`](Self::reset) follows it.
    ///
    /// ```
    /// let latch = latch::Latch::new();
    /// latch.set();
    /// latch.set(); // idempotent
    /// assert!(latch.is_set());
    /// ```
    #[inline]
    pub fn set(&self) {
        // Release: pairs with the Acquire loads in wait and the Acquire
        // fetch_and in reset, publishing the setter's work.
        let before = self.state.word().swap(SET, Ordering::Release);
        if before & SLEEPING != 0 {
            self.wake_sleepers();
        }
    }

    #[cold]
    fn wake_sleepers(&self) {
        // Cannot fail for a valid, aligned word; nothing useful to do if it
        // did (a set must not fail), so the result is only checked in tests.
        let woken = self.state.wake_all();
        debug_assert!(woken.is_ok(), "FUTEX_WAKE failed: {woken:?}");
    }

    /// Clears the latch. Owner only (another process resetting would erase
    /// a set meant for the owner). Does not wait; see the usage loop in the
    /// crate docs for why it comes *before* the check for work.
    ///
    /// Not checked here: from inside, a reset by the wrong process looks
    /// the same as an owner field that a crashing process scribbled over,
    /// and shared memory's contents must never make a call panic. The
    /// caller's next [`wait`](Self::wait) checks the owner and returns
    /// [`LatchError::NotOwner`].
    #[inline]
    pub fn reset(&self) {
        let word = self.state.word();
        // Relaxed: only decides whether there is anything to clear. If this
        // (possibly stale) load misses a SET, the SET stays in the word and
        // the caller's next wait returns at once; skipping a reset never
        // erases a set, only clearing one needs the ordering below. This
        // saves the read-modify-write when the latch is already clear (the
        // owner's loop resets before every check).
        if word.load(Ordering::Relaxed) & SET != 0 {
            // Acquire: pairs with the Release swap in set; as a read-modify-
            // write it reads the newest set, so work published before any
            // set that this reset clears is visible to the caller's next
            // check. Keeps SLEEPING, in case another owner thread sleeps.
            word.fetch_and(!SET, Ordering::Acquire);
        }
    }

    /// Whether the latch is set. With `true`, work published before the
    /// set is visible to the caller.
    #[inline]
    pub fn is_set(&self) -> bool {
        // Acquire: pairs with the Release swap in set.
        self.state.word().load(Ordering::Acquire) & SET != 0
    }

    /// Whether the owner has announced that it sleeps (or is about to sleep)
    /// on the futex, so that the next [`set`](Self::set) will make a system
    /// call. A snapshot for diagnostics and tests, stale once it returns.
    pub fn has_sleeper(&self) -> bool {
        // Relaxed: a diagnostic snapshot; nothing is read through it.
        self.state.word().load(Ordering::Relaxed) & SLEEPING != 0
    }

    /// Makes the calling process the owner. Succeeds if the latch has no
    /// owner, is already ours, or its owner is dead (zombies count as
    /// dead); otherwise [`LatchError::AlreadyOwned`].
    ///
    /// Async-signal-safe when the latch is free or ours (one system call
    /// and one compare-and-swap); checking a foreign owner reads `/proc`.
    ///
    /// ```
    /// let latch = latch::Latch::new();
    /// latch.own()?;
    /// assert_eq!(latch.owner(), Some(std::process::id()));
    /// latch.own()?; // already ours
    /// latch.disown();
    /// assert_eq!(latch.owner(), None);
    /// # Ok::<(), latch::LatchError>(())
    /// ```
    pub fn own(&self) -> Result<(), LatchError> {
        let me = pid::refresh();
        let mut seen = 0;
        loop {
            // Relaxed: the owner word carries no other data; the owner's
            // later waits are ordered after this by program order.
            match self
                .owner
                .compare_exchange(seen, me, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    // A new owner starts with a clean spin history.
                    // Relaxed: owner-private hint.
                    self.spin_hint.store(0, Ordering::Relaxed);
                    return Ok(());
                }
                Err(owner) if owner == me => return Ok(()),
                Err(owner) if owner != seen && shmem::liveness::is_alive(owner, 0) => {
                    return Err(LatchError::AlreadyOwned { owner });
                }
                // Free again, or the owner is dead: try to take it from
                // that value (another process may beat us to it).
                Err(owner) if owner != seen => seen = owner,
                // We already found `seen` dead and the word still holds it
                // only if our exchange failed spuriously: retry.
                Err(_) => {}
            }
        }
    }

    /// Makes `pid` (0: nobody) the owner without checking who owned it
    /// before. For a caller that holds the latch's container exclusively:
    /// a process slot it has just taken from a free list, or one whose
    /// owner it has proven dead. Costs one store where [`own`](Self::own)
    /// costs a system call and a compare-and-swap.
    #[inline]
    pub fn hand_over(&self, pid: u32) {
        // Relaxed: the container's own release publication (e.g. the slot's
        // status store) orders this for the new owner and its peers.
        self.owner.store(pid, Ordering::Relaxed);
        // Relaxed: owner-private hint; a new owner starts afresh.
        self.spin_hint.store(0, Ordering::Relaxed);
    }

    /// Gives up ownership, if the caller owns the latch; otherwise does
    /// nothing. A set latch stays set.
    pub fn disown(&self) {
        let me = pid::current();
        // Relaxed: as in own.
        let _ = self
            .owner
            .compare_exchange(me, 0, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The owning process, if any.
    pub fn owner(&self) -> Option<u32> {
        // Relaxed: a pid, read for itself.
        match self.owner.load(Ordering::Relaxed) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Waits until the latch is set, `deadline` passes (`None`: never) or
    /// the parent process dies, with the default options (adaptive spin of
    /// up to [`spin::DEFAULT_MAX_SPIN`]). Owner only. See
    /// [`wait_with`](Self::wait_with).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use latch::{Latch, Wake};
    ///
    /// let latch = Latch::new();
    /// latch.own()?;
    /// let deadline = Instant::now() + Duration::from_millis(10);
    /// assert_eq!(latch.wait(Some(deadline))?, Wake::Timeout);
    /// assert!(Instant::now() >= deadline);
    /// latch.set();
    /// assert_eq!(latch.wait(None)?, Wake::Set); // returns at once
    /// # Ok::<(), latch::LatchError>(())
    /// ```
    #[inline]
    pub fn wait(&self, deadline: Option<Instant>) -> Result<Wake, LatchError> {
        self.wait_with(deadline, &WaitOptions::default())
    }

    /// Waits until the latch is set, `deadline` passes or the parent
    /// process dies. Owner only: anyone else gets
    /// [`LatchError::NotOwner`] at once.
    ///
    /// Returns [`Wake::Set`] at once if the latch is already set (it does
    /// not reset it); [`Wake::Timeout`] only at or after `deadline`; and
    /// [`Wake::PostmasterDied`] whenever [`pmdeath`] has seen the parent
    /// die, before anything else. Before sleeping it may spin as
    /// `options.spin` says.
    ///
    /// Async-signal-safe in the sense that matters after `fork`: no
    /// allocation or locks on any path but the error paths.
    ///
    /// ```
    /// use latch::{Latch, LatchError, WaitOptions};
    ///
    /// let latch = Latch::new(); // nobody owns it
    /// let err = latch.wait_with(None, &WaitOptions::no_spin()).unwrap_err();
    /// assert!(matches!(err, LatchError::NotOwner { owner: None, .. }));
    /// ```
    pub fn wait_with(
        &self,
        deadline: Option<Instant>,
        options: &WaitOptions,
    ) -> Result<Wake, LatchError> {
        let me = pid::current();
        // Relaxed: set by this process's own() earlier in program order, or
        // not ours at all.
        let owner = self.owner.load(Ordering::Relaxed);
        if owner != me {
            return Err(LatchError::NotOwner {
                owner: (owner != 0).then_some(owner),
                caller: me,
            });
        }
        if parent_died() {
            return Ok(Wake::PostmasterDied);
        }
        if self.is_set() {
            return Ok(Wake::Set);
        }
        let (budget, adaptive) = match options.spin {
            SpinPolicy::Off => (Duration::ZERO, None),
            SpinPolicy::Fixed(max) => (max, None),
            SpinPolicy::Adaptive(max) => {
                // Relaxed: owner-private hint; a lost update costs a
                // slightly different spin, never correctness.
                let hint = SpinHint::unpack(self.spin_hint.load(Ordering::Relaxed));
                let (budget, planned) = hint.plan(max);
                (budget, Some((hint, planned)))
            }
        };
        let hit = !budget.is_zero() && self.spin_until_set(budget, deadline);
        if let Some((hint, planned)) = adaptive {
            let next = if budget.is_zero() {
                planned
            } else {
                planned.after_spin(hit)
            };
            if next != hint {
                // Relaxed: as above.
                self.spin_hint.store(next.pack(), Ordering::Relaxed);
            }
        }
        if hit {
            // The death handler sets the latch too; report the death.
            return Ok(if parent_died() {
                Wake::PostmasterDied
            } else {
                Wake::Set
            });
        }
        self.sleep(deadline)
    }

    /// Polls the word for up to `budget` (and not past `deadline`); `true`
    /// if it saw `SET`.
    #[cfg(not(loom))]
    fn spin_until_set(&self, budget: Duration, deadline: Option<Instant>) -> bool {
        // The clock is first read after one batch of polls, so a set that
        // arrives within it (the common case for a prompt peer) costs no
        // clock read at all; the budget overshoots by at most one batch.
        let mut start = None;
        loop {
            for _ in 0..spin::CLOCK_EVERY {
                if self.is_set() {
                    return true;
                }
                shmem::sync::spin_loop();
            }
            let now = Instant::now();
            if now.duration_since(*start.get_or_insert(now)) >= budget
                || deadline.is_some_and(|d| now >= d)
            {
                return false;
            }
        }
    }

    /// Polls the word a few times (loom build). No `spin_loop`: loom's is
    /// a yield that hands the turn to the setter, so the model would never
    /// see a spin run out before the set and then go to sleep. Each load is
    /// a scheduling point, and the poll count bounds the model.
    #[cfg(loom)]
    fn spin_until_set(&self, _budget: Duration, _deadline: Option<Instant>) -> bool {
        (0..spin::LOOM_SPIN_POLLS).any(|_| self.is_set())
    }

    /// Announces `SLEEPING` and sleeps on the futex until set, timed out or
    /// told the parent died.
    fn sleep(&self, deadline: Option<Instant>) -> Result<Wake, LatchError> {
        let word = self.state.word();
        // Listed before the flag check below (Dekker with the death handler).
        let entry = SleeperEntry::enter(self);
        loop {
            // First, because the death handler sets the latch to wake us.
            if parent_died() {
                // Relaxed: we only withdraw our announcement.
                word.fetch_and(!SLEEPING, Ordering::Relaxed);
                return Ok(Wake::PostmasterDied);
            }
            // Acquire: pairs with the Release swap in set.
            let seen = word.load(Ordering::Acquire);
            if seen & SET != 0 {
                return Ok(Wake::Set);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(self.leave_on_timeout());
            }
            let announced = seen | SLEEPING;
            // Relaxed on success: announcing publishes nothing, and a setter
            // reads SLEEPING only to decide to wake. Acquire on failure:
            // the new value may be SET (pairs with set's Release swap); we
            // re-read it at the top anyway.
            if seen != announced
                && word
                    .compare_exchange(seen, announced, Ordering::Relaxed, Ordering::Acquire)
                    .is_err()
            {
                continue;
            }
            let (wake_by, polling) = match poll_deadline(&entry) {
                Some(poll) if deadline.is_none_or(|d| poll < d) => (Some(poll), true),
                _ => (deadline, false),
            };
            match self.state.wait(announced, wake_by) {
                Ok(WaitReturn::Returned) => {}
                Ok(WaitReturn::TimedOut) if !polling => return Ok(self.leave_on_timeout()),
                Ok(WaitReturn::TimedOut) => {}
                Err(e) => {
                    // Relaxed: withdrawing the announcement, as above.
                    word.fetch_and(!SLEEPING, Ordering::Relaxed);
                    return Err(LatchError::Futex(e));
                }
            }
        }
    }

    /// Withdraws `SLEEPING` after the deadline; a set that raced with the
    /// timeout wins.
    fn leave_on_timeout(&self) -> Wake {
        // Acquire: pairs with set's Release swap, in case SET is on.
        let before = self.state.word().fetch_and(!SLEEPING, Ordering::Acquire);
        if before & SET != 0 {
            Wake::Set
        } else {
            Wake::Timeout
        }
    }
}

#[cfg(not(loom))]
use pmdeath::{SleeperEntry, parent_died};

#[cfg(not(loom))]
fn poll_deadline(entry: &SleeperEntry<'_>) -> Option<Instant> {
    entry
        .must_poll()
        .then(|| Instant::now() + pmdeath::POLL_WHEN_UNLISTED)
}

/// loom build: no postmaster, nobody dies.
#[cfg(loom)]
fn parent_died() -> bool {
    false
}

#[cfg(loom)]
struct SleeperEntry;

#[cfg(loom)]
impl SleeperEntry {
    fn enter(_latch: &Latch) -> Self {
        Self
    }
}

#[cfg(loom)]
fn poll_deadline(_entry: &SleeperEntry) -> Option<Instant> {
    None
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn owned() -> Latch {
        let latch = Latch::new();
        latch.own().unwrap();
        latch
    }

    #[test]
    fn set_before_wait_returns_at_once_for_every_policy() {
        for options in [
            WaitOptions::no_spin(),
            WaitOptions::default(),
            WaitOptions::default().spin(SpinPolicy::Fixed(Duration::from_micros(5))),
        ] {
            let latch = owned();
            latch.set();
            // No deadline: a wrong answer would hang the test, so bound it.
            let deadline = Instant::now() + Duration::from_secs(10);
            assert_eq!(
                latch.wait_with(Some(deadline), &options).unwrap(),
                Wake::Set
            );
            assert!(latch.is_set(), "wait must not reset the latch");
        }
    }

    #[test]
    fn reset_clears_and_set_is_idempotent() {
        let latch = owned();
        assert!(!latch.is_set());
        latch.set();
        latch.set();
        assert!(latch.is_set());
        latch.reset();
        assert!(!latch.is_set());
        latch.reset();
        assert!(!latch.is_set());
    }

    #[test]
    fn timeout_is_never_early_and_does_return() {
        let latch = owned();
        for (ms, options) in [
            (0, WaitOptions::no_spin()),
            (2, WaitOptions::no_spin()),
            (2, WaitOptions::default()),
            (20, WaitOptions::default()),
        ] {
            let deadline = Instant::now() + Duration::from_millis(ms);
            assert_eq!(
                latch.wait_with(Some(deadline), &options).unwrap(),
                Wake::Timeout
            );
            assert!(Instant::now() >= deadline, "returned before the deadline");
            // The word is left clean: no SLEEPING bit for a setter to wake.
            assert_eq!(latch.state.word().load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_past_deadline_still_reports_a_set_latch() {
        let latch = owned();
        latch.set();
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(latch.wait(Some(past)).unwrap(), Wake::Set);
    }

    /// Shared memory decides who owns the latch, so a reset under a
    /// foreign (or scribbled) owner must not panic, in debug builds either;
    /// the wait that follows in the usage loop reports the mismatch.
    #[test]
    fn a_reset_under_another_owner_is_no_panic_and_the_wait_says_why() {
        let latch = Latch::new();
        // Pid 1 is alive and is not us.
        latch.owner.store(1, Ordering::Relaxed);
        latch.set();
        latch.reset();
        assert!(!latch.is_set(), "the reset still clears");
        assert!(matches!(
            latch.wait(None),
            Err(LatchError::NotOwner { owner: Some(1), .. })
        ));
    }

    #[test]
    fn wait_by_a_non_owner_is_an_error_not_a_hang() {
        let latch = Latch::new();
        let me = std::process::id();
        match latch.wait(None) {
            Err(LatchError::NotOwner {
                owner: None,
                caller,
            }) => assert_eq!(caller, me),
            other => panic!("expected NotOwner, got {other:?}"),
        }
        // Owned by someone else (pid 1 is alive and is not us).
        latch.owner.store(1, Ordering::Relaxed);
        match latch.wait(None) {
            Err(LatchError::NotOwner {
                owner: Some(1),
                caller,
            }) => assert_eq!(caller, me),
            other => panic!("expected NotOwner, got {other:?}"),
        }
        assert!(matches!(
            latch.own(),
            Err(LatchError::AlreadyOwned { owner: 1 })
        ));
        let msg = LatchError::NotOwner {
            owner: None,
            caller: 7,
        }
        .to_string();
        assert!(msg.contains("own()"), "{msg}");
    }

    #[test]
    fn a_dead_owner_can_be_replaced() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let latch = Latch::new();
        latch.owner.store(dead, Ordering::Relaxed);
        latch.own().unwrap();
        assert_eq!(latch.owner(), Some(std::process::id()));
    }

    #[test]
    fn disown_by_a_non_owner_does_nothing() {
        let latch = Latch::new();
        latch.owner.store(1, Ordering::Relaxed);
        latch.disown();
        assert_eq!(latch.owner(), Some(1));
    }

    #[test]
    fn garbage_in_the_word_neither_hangs_nor_loses_a_set() {
        let latch = owned();
        latch.state.word().store(0xfff0, Ordering::Relaxed);
        assert!(!latch.is_set());
        let deadline = Instant::now() + Duration::from_millis(2);
        assert_eq!(
            latch
                .wait_with(Some(deadline), &WaitOptions::no_spin())
                .unwrap(),
            Wake::Timeout
        );
        latch.set();
        assert_eq!(latch.wait(None).unwrap(), Wake::Set);
    }

    #[test]
    fn a_thread_of_the_owner_is_woken_by_another_thread() {
        let latch = std::sync::Arc::new(owned());
        for options in [WaitOptions::no_spin(), WaitOptions::default()] {
            latch.reset();
            let waiter = {
                let latch = latch.clone();
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    latch.wait_with(Some(deadline), &options).unwrap()
                })
            };
            latch.set();
            assert_eq!(waiter.join().unwrap(), Wake::Set);
        }
    }

    #[test]
    fn adaptive_spin_backs_off_when_spins_run_out() {
        let latch = owned();
        let options = WaitOptions::default();
        for _ in 0..spin::MISSES_TO_PAUSE {
            let deadline = Instant::now() + Duration::from_micros(50);
            assert_eq!(
                latch.wait_with(Some(deadline), &options).unwrap(),
                Wake::Timeout
            );
        }
        let hint = SpinHint::unpack(latch.spin_hint.load(Ordering::Relaxed));
        assert_eq!(hint.misses, spin::MISSES_TO_PAUSE);
        // A wait that finds the latch set does not count as a spin.
        latch.set();
        assert_eq!(latch.wait_with(None, &options).unwrap(), Wake::Set);
        assert_eq!(
            SpinHint::unpack(latch.spin_hint.load(Ordering::Relaxed)).misses,
            spin::MISSES_TO_PAUSE
        );
    }
}
