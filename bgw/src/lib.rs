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
//! - [`names`]: the unique name table in shared memory.
//! - [`mailbox`]: per-worker inboxes: cast, call and reply.
//! - [`endpoint`]: a process's own names and inbox, wired up
//!   ([`Endpoint`]).
//! - [`shared`]: the postmaster's regions of the segment.
//!
//! Under `--cfg loom` only the shared-memory protocols (registry, status,
//! and the pure core) are built: loom cannot model processes.

#[cfg(not(loom))]
pub mod child;
pub mod core;
#[cfg(not(loom))]
pub mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
pub mod group;
#[cfg(not(loom))]
pub mod handle;
pub mod mailbox;
pub mod names;
#[cfg(not(loom))]
pub mod postmaster;
pub mod registry;
#[cfg(not(loom))]
pub mod shared;
pub mod spec;
pub mod statem;
pub mod status;

#[cfg(not(loom))]
pub use child::{CriticalGuard, WorkerContext, WorkerExit, WorkerResult};
#[cfg(not(loom))]
pub use endpoint::{Endpoint, EndpointError};
#[cfg(not(loom))]
pub use handle::{RegisterDynamicError, WaitError, WorkerHandle};
#[cfg(not(loom))]
pub use postmaster::{Departed, Postmaster, PostmasterBuilder, PostmasterError};
#[cfg(not(loom))]
pub use shared::{Shared, SharedConfig};
pub use spec::{Phase, Restart, SpecError, WorkerSpec};
