//! The postmaster: registration, launching, supervision, named workers,
//! mailboxes, state machines and timers.

pub mod core;
pub mod registry;
pub mod spec;

pub use spec::{Phase, Restart, SpecError, WorkerSpec};
