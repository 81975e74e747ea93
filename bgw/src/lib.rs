//! The postmaster: registration, launching, restart and crash reset of
//! worker processes around a shared-memory segment (PostgreSQL's postmaster
//! and background workers, as a library).
//!
//! - [`spec`]: what a worker is ([`WorkerSpec`]).
//! - [`core`]: the postmaster's decisions, a deterministic state machine
//!   with no I/O.
//! - [`postmaster`]: the single-threaded OS driver around the core
//!   ([`Postmaster`]).
//! - [`child`]: the forked child's side ([`WorkerContext`]).
//! - [`registry`]: dynamic registration slots in shared memory.
//! - [`handle`]: handles to dynamic workers ([`WorkerHandle`]).
//! - [`shared`]: the postmaster's regions of the segment.

pub mod child;
pub mod core;
pub mod group;
pub mod handle;
pub mod postmaster;
pub mod registry;
pub mod shared;
pub mod spec;

pub use child::{CriticalGuard, WorkerContext, WorkerExit, WorkerResult};
pub use handle::{RegisterDynamicError, WaitError, WorkerHandle};
pub use postmaster::{Postmaster, PostmasterBuilder, PostmasterError};
pub use shared::{Shared, SharedConfig};
pub use spec::{Phase, Restart, SpecError, WorkerSpec};
