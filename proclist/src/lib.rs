//! PGPROC-like process slots for postmaster: a fixed array of slots in
//! shared memory, handed out lock-free, linked into wait lists by index, with
//! a condition variable built on each process's latch.
//!
//! - [`slot`]: one [`ProcSlot`]: identity, state and generation, the
//!   dead-man switch and critical-section depth, heartbeat, latch;
//! - [`array`](mod@array): the [`ProcArray`] of slots with per-kind ranges, acquire
//!   and release (a released slot parks with its thread for its next
//!   acquire), the postmaster's assign/activate/release path, and
//!   reclaiming the slots of processes that died holding them;
//! - [`freelist`]: the lock-free free list (a tagged Treiber stack of
//!   indices) that hands slots out;
//! - [`lock`]: [`ShmLock`], a small mutex on a shared futex word;
//! - [`list`]: [`ProcList`], doubly-linked lists of slot indices under a
//!   [`ShmLock`];
//! - [`condvar`]: [`ConditionVariable`], a wait list of slots woken through
//!   their latches.
//!
//! Known limit: a process killed in the few instructions between marking a
//! slot free and pushing it on the free list (or between popping it and
//! marking it taken, or between claiming a parked slot and marking it
//! taken) leaks that slot until the next segment reset. And a
//! self-attached process that gives its slot back while the postmaster
//! resets the segment under it can, in an equally short window, push the
//! slot onto a free list that the reset has just refilled. The slot is then
//! listed twice: a later pop that finds it in use reports
//! [`ProcArrayError::Corrupt`] rather than sharing it, and free slots may
//! be lost from the list until the next reset.

pub mod array;
pub mod condvar;
pub mod freelist;
pub mod list;
pub mod lock;
pub mod slot;

pub use array::{
    CriticalSection, Kind, ProcArray, ProcArrayConfig, ProcArrayError, Released, SlotGuard,
    SlotHandle,
};
pub use condvar::{ConditionVariable, CvError, CvWait, CvWake, WaitNode};
pub use freelist::{FreeList, FreeListError, Place, PopHint, Popped};
pub use list::{ListError, ListField, ListHead, ListLink, ListNode, LockedList, ProcList};
pub use lock::{LockError, LockGuard, ShmLock};
pub use slot::{ProcSlot, SlotStatus};
