//! One process slot: PostgreSQL's PGPROC, reduced to what a supervisor and
//! its peers need to know about a process, and laid out for shared memory.
//!
//! # Fields, who writes them, and when
//!
//! | field        | written by                           | read by                     |
//! |--------------|--------------------------------------|-----------------------------|
//! | `status`     | acquirer / owner / reclaimer (CAS)   | everyone                    |
//! | `pid`        | acquirer, or the child on activation | status, reclaim, peers      |
//! | `start_time` | same as `pid`                        | reclaim (pid-reuse check)   |
//! | `kind`       | acquirer                             | status                      |
//! | `owner_tag`  | acquirer (opaque to this crate)      | the embedding application   |
//! | `crit_depth` | owner only                           | whoever handles its death   |
//! | `heartbeat`  | owner only                           | the supervisor's watchdog   |
//! | `latch`      | `set` by anyone, `wait` by owner     |                             |
//! | `link`       | whoever holds the list's lock        | the same                    |
//!
//! `status` packs the slot's state with a generation that every acquisition
//! and every parking bumps (decoded through [`SlotStatus`]), so that while
//! the segment lives a slot's generation only goes up. Every transition by
//! someone who may not hold the slot alone is a CAS on the pair, so an
//! actor that read `(g, ACTIVE)` cannot act on a slot that has since been
//! freed and taken again as `(g + 1, ACTIVE)`: the handle
//! `(index, generation)` names one tenancy of a slot, never the next.
//!
//! # The dead-man switch
//!
//! A process marks its slot [`ACTIVE`] before it touches shared state and
//! moves it on (to [`EXITING`], then [`FREE`]) only after all its cleanup.
//! Whoever handles its death (the postmaster after `waitpid`, or
//! [`ProcArray::reclaim_dead`](crate::ProcArray::reclaim_dead) for processes
//! nobody reaps) and finds the slot still `ACTIVE` knows the process died
//! without cleaning up. If `crit_depth` is non-zero as well, it died in the
//! middle of a multi-step change to shared state, and only a segment reset
//! restores consistency.
//!
//! Contended fields sit on their own cache lines: the identity line is
//! written a few times per tenancy, the heartbeat by its owner on a
//! schedule, the latch by every process that wakes the owner.

use shmem::sync::{AtomicU32, AtomicU64, Ordering};

/// `state`: on a free list, or never used. All-zero slots are free.
pub const FREE: u32 = 0;
/// `state`: taken from the free list for a child the postmaster is about to
/// fork; `pid` is not known yet. The child moves it to [`ACTIVE`].
pub const ASSIGNED: u32 = 1;
/// `state`: the owner is running and may touch shared state.
pub const ACTIVE: u32 = 2;
/// `state`: the owner finished its cleanup and is giving the slot back.
pub const EXITING: u32 = 3;
/// `state`: free, and set aside by the thread that last released it for
/// its next acquire, off the free lists. Anyone may take it: the keeper and
/// a taker who found the free lists empty race for it with one CAS (see
/// [`crate::array`]'s docs on parking).
pub const PARKED: u32 = 4;

/// The decoded `status` word of a slot: generation and state, changed
/// together by one CAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    /// Bumped each time the slot is taken or parked; part of every handle.
    pub generation: u32,
    /// One of [`FREE`], [`ASSIGNED`], [`ACTIVE`], [`EXITING`], [`PARKED`]
    /// (anything else means the slot was overwritten).
    pub state: u32,
}

impl SlotStatus {
    /// Unpacks a status word.
    #[inline]
    pub fn decode(word: u64) -> Self {
        Self {
            generation: (word >> 32) as u32,
            state: word as u32,
        }
    }

    /// Packs a status word.
    #[inline]
    pub fn encode(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.state)
    }

    /// The state's name, for status displays.
    pub fn state_name(self) -> &'static str {
        match self.state {
            FREE => "free",
            ASSIGNED => "assigned",
            ACTIVE => "active",
            EXITING => "exiting",
            PARKED => "parked",
            _ => "corrupt",
        }
    }

    /// Whether the slot belongs to nobody: [`FREE`] or [`PARKED`].
    #[inline]
    pub fn is_free(self) -> bool {
        matches!(self.state, FREE | PARKED)
    }
}

/// Identity fields, written a few times per tenancy.
#[repr(C, align(128))]
#[derive(Debug, Default)]
struct Identity {
    status: AtomicU64,
    owner_tag: AtomicU64,
    start_time: AtomicU64,
    pid: AtomicU32,
    kind: AtomicU32,
    crit_depth: AtomicU32,
    /// Membership in one wait list at a time (a condition variable's).
    link: crate::list::ListLink,
}

/// A value alone on its cache line(s).
#[repr(C, align(128))]
#[derive(Debug, Default)]
struct Line<T>(T);

/// One process slot; see the module docs.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ProcSlot {
    ident: Identity,
    heartbeat: Line<AtomicU64>,
    latch: Line<latch::Latch>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::align_of::<ProcSlot>() == shmem::CACHE_LINE);
    assert!(std::mem::size_of::<Identity>() == shmem::CACHE_LINE);
};

// SAFETY: repr(C) of atomics and a Latch (itself ShmSafe), each on its own
// aligned line: any bytes are a valid value (integers, and the latch's own
// guarantee), there are no pointers, and all mutation is atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for ProcSlot {}

impl ProcSlot {
    /// The current status.
    #[inline]
    pub fn status(&self) -> SlotStatus {
        // Acquire: pairs with the release CASes of the transitions, so a
        // reader that sees ACTIVE also sees the pid written before it.
        SlotStatus::decode(self.ident.status.load(Ordering::Acquire))
    }

    /// Moves the status from `from` to `to` if it still is `from`.
    #[inline]
    pub(crate) fn transition(&self, from: SlotStatus, to: SlotStatus) -> Result<(), SlotStatus> {
        self.ident
            .status
            .compare_exchange(
                from.encode(),
                to.encode(),
                // Release: publishes the identity fields written before the
                // transition; Acquire: we act on the slot after winning it.
                // Pairs with the acquire load in status().
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(SlotStatus::decode)
    }

    /// Takes a slot found [`PARKED`] as `parked`: moves it to [`FREE`] with
    /// the same generation, which makes the caller its only holder, as a
    /// free-list pop would. Fails if anyone took it first.
    #[inline]
    pub(crate) fn claim_parked(&self, parked: SlotStatus) -> bool {
        let free = SlotStatus {
            state: FREE,
            ..parked
        };
        self.ident
            .status
            .compare_exchange(
                parked.encode(),
                free.encode(),
                // Acquire: pairs with the release store that parked the slot
                // (publish()), so the last holder's writes come before ours.
                // Release, and acquire on failure: an exhaustion check that
                // sees this claim, by a status load or by losing the race,
                // must also see whatever came before it (another slot's
                // parking, say). Otherwise its second look at the statuses
                // may re-read a stale one and take the double collect for a
                // quiet moment that never was: the loom model
                // `loom_a_slot_parked_during_the_scan_is_not_missed` finds
                // both. Free on x86, where a locked instruction is a full
                // barrier either way.
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Publishes `to` as the status of a slot the caller holds exclusively
    /// (it just won it from a free list), with the identity written before.
    #[inline]
    pub(crate) fn publish(&self, to: SlotStatus) {
        // Release: pairs with the acquire load in status(), publishing the
        // identity fields and latch owner written before.
        self.ident.status.store(to.encode(), Ordering::Release);
    }

    /// The owner's pid (0 while assigned and not yet activated, or free).
    #[inline]
    pub fn pid(&self) -> u32 {
        // Relaxed: read after status(), whose acquire orders it.
        self.ident.pid.load(Ordering::Relaxed)
    }

    /// The owner's start time in clock ticks since boot (0 if unknown).
    #[inline]
    pub fn start_time(&self) -> u64 {
        // Relaxed: as pid().
        self.ident.start_time.load(Ordering::Relaxed)
    }

    /// The kind the slot was taken as.
    #[inline]
    pub fn kind(&self) -> u32 {
        // Relaxed: as pid().
        self.ident.kind.load(Ordering::Relaxed)
    }

    /// The opaque tag its acquirer attached (e.g. a worker registration id).
    #[inline]
    pub fn owner_tag(&self) -> u64 {
        // Relaxed: as pid().
        self.ident.owner_tag.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn set_identity(&self, pid: u32, start_time: u64, kind: u32, owner_tag: u64) {
        // Relaxed: published by the release transition that follows.
        self.ident.pid.store(pid, Ordering::Relaxed);
        self.ident.start_time.store(start_time, Ordering::Relaxed);
        self.ident.kind.store(kind, Ordering::Relaxed);
        self.ident.owner_tag.store(owner_tag, Ordering::Relaxed);
    }

    pub(crate) fn clear_identity(&self) {
        self.set_identity(0, 0, 0, 0);
        self.reset_critical();
    }

    #[inline]
    pub(crate) fn reset_critical(&self) {
        // Relaxed: owner-only field, published by the following release
        // transition; see enter_critical().
        self.ident.crit_depth.store(0, Ordering::Relaxed);
    }

    /// How deep in critical sections the owner is; non-zero after its death
    /// means shared state may be half-changed.
    #[inline]
    pub fn crit_depth(&self) -> u32 {
        // Relaxed: read after the owner's death, which the kernel orders
        // after every store the owner made.
        self.ident.crit_depth.load(Ordering::Relaxed)
    }

    /// Marks the start of a multi-step change to shared state. Owner only;
    /// pair with [`exit_critical`](Self::exit_critical), or use
    /// [`SlotGuard::critical`](crate::SlotGuard::critical).
    #[inline]
    pub fn enter_critical(&self) {
        // Relaxed: only read once the owner is dead (see crit_depth()); the
        // owner's own program order keeps this before its changes.
        self.ident.crit_depth.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the end of a critical section entered with
    /// [`enter_critical`](Self::enter_critical).
    #[inline]
    pub fn exit_critical(&self) {
        // Release: a reader that sees the depth fall also sees the changes
        // made inside the section (pairs with the acquire in status()
        // taken by a reclaimer before it reads the depth).
        self.ident.crit_depth.fetch_sub(1, Ordering::Release);
    }

    /// Records that the owner is alive; `now` is any monotonic count the
    /// supervisor understands (e.g. milliseconds since the segment began).
    #[inline]
    pub fn beat(&self, now: u64) {
        // Relaxed: a liveness hint; nothing is published with it.
        self.heartbeat.0.store(now, Ordering::Relaxed);
    }

    /// The last heartbeat.
    #[inline]
    pub fn heartbeat(&self) -> u64 {
        // Relaxed: see beat().
        self.heartbeat.0.load(Ordering::Relaxed)
    }

    /// The owner's latch: anyone may set it, only the owner waits on it.
    #[inline]
    pub fn latch(&self) -> &latch::Latch {
        &self.latch.0
    }
}

impl crate::list::ListNode for ProcSlot {
    fn link(&self) -> &crate::list::ListLink {
        &self.ident.link
    }
}

impl crate::condvar::WaitNode for ProcSlot {
    fn latch(&self) -> &latch::Latch {
        &self.latch.0
    }

    fn enter_critical(&self) {
        ProcSlot::enter_critical(self);
    }

    fn exit_critical(&self) {
        ProcSlot::exit_critical(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_word_round_trips_and_zero_is_free() {
        assert_eq!(
            SlotStatus::decode(0),
            SlotStatus {
                generation: 0,
                state: FREE
            }
        );
        for s in [
            SlotStatus {
                generation: 1,
                state: ACTIVE,
            },
            SlotStatus {
                generation: u32::MAX,
                state: EXITING,
            },
            SlotStatus {
                generation: 7,
                state: 99,
            },
        ] {
            assert_eq!(SlotStatus::decode(s.encode()), s);
        }
        assert_eq!(
            SlotStatus {
                generation: 0,
                state: 99
            }
            .state_name(),
            "corrupt"
        );
    }

    #[test]
    fn transition_requires_the_same_generation() {
        let slot = ProcSlot::default();
        let g0 = slot.status();
        let taken = SlotStatus {
            generation: 1,
            state: ACTIVE,
        };
        slot.transition(g0, taken).unwrap();
        // A stale actor that saw generation 0 cannot touch tenancy 1.
        assert_eq!(
            slot.transition(
                g0,
                SlotStatus {
                    generation: 0,
                    state: EXITING
                }
            ),
            Err(taken)
        );
        let freed = SlotStatus {
            generation: 1,
            state: FREE,
        };
        slot.transition(taken, freed).unwrap();
        let retaken = SlotStatus {
            generation: 2,
            state: ACTIVE,
        };
        slot.transition(freed, retaken).unwrap();
        assert_eq!(
            slot.transition(taken, freed),
            Err(retaken),
            "ABA on the state alone is caught"
        );
    }
}
