//! PGPROC-like process slots for postmaster: a fixed array of slots in
//! shared memory, handed out lock-free, linked into wait lists by index, with
//! a condition variable built on each process's latch.
//!
//! - [`freelist`]: the lock-free free list (a tagged Treiber stack of
//!   indices) that hands slots out;
//! - [`lock`]: [`ShmLock`], a small mutex on a shared futex word.

pub mod freelist;
pub mod lock;

pub use freelist::{FreeList, FreeListError};
pub use lock::{LockError, LockGuard, ShmLock};
