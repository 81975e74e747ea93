//! postmaster: a supervising process that forks workers around a
//! fixed-layout shared-memory segment, for any multi-process Rust server.
//!
//! This facade re-exports the layers, lowest first:
//!
//! - [`shmem`]: segments, typed layouts, the sync shim, rings;
//! - [`latch`]: a process-shared latch on a shared futex;
//! - [`proclist`]: process slots, free lists, wait lists;
//! - [`bgw`]: the postmaster itself.

pub use bgw;
pub use latch;
pub use proclist;
pub use shmem;
