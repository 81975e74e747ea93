//! What the postmaster keeps in its segment, and the view every attached
//! process uses to reach it.
//!
//! | region                | written by                       | read by                     |
//! |-----------------------|----------------------------------|-----------------------------|
//! | [`Control`]           | postmaster (pid, phase, resets); | everyone                    |
//! |                       | anyone (`phase_request`)         | postmaster                  |
//! | proc array            | see `proclist`                   |                             |
//! | registration slots    | see [`crate::registry`]          |                             |
//! | name table            | see [`crate::names`]             |                             |
//! | inboxes               | see [`crate::mailbox`]           |                             |
//! | the application's own | the application                  | the application             |
//!
//! Every region is all-zero valid, so a reset is "zero the segment and
//! initialise the proc array's free lists".

use proclist::{Kind, ProcArray, ProcArrayConfig, ProcArrayError};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use shmem::{LayoutBuilder, RegionError, Segment};
use thiserror::Error;

use crate::mailbox::{MailError, Mailboxes};
use crate::names::{NameError, Names};
use crate::registry::Registry;
use crate::spec::Phase;
use crate::status::{STATUS_REGION, StatusEntry};

/// Region name of the [`Control`] block.
pub const CONTROL_REGION: &str = "bgw.control";

/// Region name of the per-proc-slot [`WorkerBoard`]s.
pub const BOARD_REGION: &str = "bgw.board";

/// What a worker tells the postmaster about itself, one per proc slot.
/// Each field is stamped with the proc slot generation it belongs to, so a
/// value left by the slot's previous tenant never counts for the next.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct WorkerBoard {
    /// The proc slot generation of the tenant that reported ready; 0 =
    /// none.
    ready_generation: AtomicU32,
}

// SAFETY: repr(C) atomics only: any bytes are valid values, no pointers,
// every mutation is atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for WorkerBoard {}

impl WorkerBoard {
    /// The worker's side: it is ready (the caller then signals the
    /// postmaster).
    pub fn set_ready(&self, slot_generation: u32) {
        // Relaxed: the postmaster reads it after the SIGUSR1 the worker
        // sends next (the signal orders it); nothing is published with it.
        self.ready_generation
            .store(slot_generation, Ordering::Relaxed);
    }

    /// Whether the tenant of `slot_generation` reported ready.
    pub fn is_ready(&self, slot_generation: u32) -> bool {
        // Relaxed: see set_ready.
        slot_generation != 0 && self.ready_generation.load(Ordering::Relaxed) == slot_generation
    }
}

/// The postmaster's public facts, one cache line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct Control {
    /// The postmaster's pid; written once per (re)initialisation.
    postmaster_pid: AtomicU32,
    /// The phase the postmaster has reached, as its wire number.
    phase: AtomicU32,
    /// 1 + the highest phase a process asked the postmaster to announce;
    /// 0 = none asked.
    phase_request: AtomicU32,
    /// Segment resets so far (the postmaster rewrites it after each).
    resets: AtomicU64,
    /// Crashes contained without a reset.
    containments: AtomicU64,
    /// Restarts after failures.
    restarts: AtomicU64,
    /// When the postmaster started, CLOCK_MONOTONIC nanoseconds.
    started_at_ns: AtomicU64,
}

/// The postmaster's counters, as published in [`Control`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Segment resets.
    pub resets: u64,
    /// Crashes contained without a reset.
    pub containments: u64,
    /// Restarts after failures.
    pub restarts: u64,
}

// SAFETY: repr(C) atomics only: any bytes are valid values, no pointers,
// every mutation is atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for Control {}

impl Control {
    /// The postmaster's pid (0 before it wrote it).
    pub fn postmaster_pid(&self) -> u32 {
        // Relaxed: written before any child is forked (fork orders it) or
        // before the segment is published to attachers.
        self.postmaster_pid.load(Ordering::Relaxed)
    }

    /// The phase the postmaster has reached.
    pub fn phase(&self) -> Phase {
        // Relaxed: a status read; nothing else is published with it.
        Phase::from_u8(self.phase.load(Ordering::Relaxed) as u8).unwrap_or_default()
    }

    /// How many resets the postmaster has done.
    pub fn resets(&self) -> u64 {
        // Relaxed: a statistic.
        self.resets.load(Ordering::Relaxed)
    }

    /// Asks the postmaster to announce `phase` (the caller then signals
    /// it). Requests only move forward.
    pub fn request_phase(&self, phase: Phase) {
        // Relaxed: the postmaster reads it after the SIGUSR1 the caller
        // sends next, and nothing else is published with it.
        self.phase_request
            .fetch_max(phase as u32 + 1, Ordering::Relaxed);
    }

    /// The postmaster's side: the highest phase asked for, if any is valid.
    pub(crate) fn requested_phase(&self) -> Option<Phase> {
        // Relaxed: see request_phase.
        let raw = self.phase_request.load(Ordering::Relaxed);
        raw.checked_sub(1)
            .and_then(|p| u8::try_from(p).ok())
            .and_then(Phase::from_u8)
    }

    pub(crate) fn publish(&self, pid: u32, phase: Phase, resets: u64) {
        // Relaxed: status fields; see the readers.
        self.postmaster_pid.store(pid, Ordering::Relaxed);
        self.phase.store(phase as u32, Ordering::Relaxed);
        self.resets.store(resets, Ordering::Relaxed);
    }

    pub(crate) fn publish_counters(&self, counters: Counters, started_at_ns: u64) {
        // Relaxed: statistics, read on their own.
        self.resets.store(counters.resets, Ordering::Relaxed);
        self.containments
            .store(counters.containments, Ordering::Relaxed);
        self.restarts.store(counters.restarts, Ordering::Relaxed);
        self.started_at_ns.store(started_at_ns, Ordering::Relaxed);
    }

    /// The postmaster's counters.
    pub fn counters(&self) -> Counters {
        // Relaxed: statistics.
        Counters {
            resets: self.resets.load(Ordering::Relaxed),
            containments: self.containments.load(Ordering::Relaxed),
            restarts: self.restarts.load(Ordering::Relaxed),
        }
    }

    /// When the postmaster started (CLOCK_MONOTONIC nanoseconds).
    pub fn started_at_ns(&self) -> u64 {
        // Relaxed: written once per (re)initialisation, read on its own.
        self.started_at_ns.load(Ordering::Relaxed)
    }
}

/// The sizes of the postmaster's regions. Every process that attaches must
/// use the same values (the layout hash checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedConfig {
    /// Proc slots for workers the postmaster forks.
    pub max_workers: u32,
    /// Proc slots for processes that attach by themselves.
    pub max_backends: u32,
    /// Dynamic registration slots.
    pub max_registrations: u32,
    /// Entries in the name table: names registered at once.
    pub max_names: u32,
    /// Messages each process slot's inbox holds (a power of two); every
    /// slot, worker or backend, has one of `256 * inbox_capacity` bytes.
    pub inbox_capacity: u32,
}

impl Default for SharedConfig {
    fn default() -> Self {
        SharedConfig {
            max_workers: 64,
            max_backends: 16,
            max_registrations: 32,
            max_names: 64,
            inbox_capacity: 32,
        }
    }
}

impl SharedConfig {
    /// The proc array's configuration.
    pub fn procs(&self) -> ProcArrayConfig {
        ProcArrayConfig {
            workers: self.max_workers,
            backends: self.max_backends,
        }
    }

    /// Adds the postmaster's regions to a layout.
    pub fn declare(&self, builder: LayoutBuilder) -> LayoutBuilder {
        let builder = builder
            .region::<Control>(CONTROL_REGION)
            .array::<WorkerBoard>(BOARD_REGION, self.procs().total() as usize)
            .array::<StatusEntry>(STATUS_REGION, self.max_workers as usize);
        let builder = ProcArray::declare(builder, self.procs());
        let builder = Registry::declare(builder, self.max_registrations as usize);
        let builder = Names::declare(builder, self.max_names as usize);
        Mailboxes::declare(
            builder,
            self.procs().total() as usize,
            self.inbox_capacity as usize,
        )
    }
}

/// The postmaster's regions in a mapped segment.
#[derive(Clone, Copy, Debug)]
pub struct Shared<'a> {
    /// The segment.
    pub segment: &'a Segment,
    /// The control block.
    pub control: &'a Control,
    /// One board per proc slot.
    pub board: &'a [WorkerBoard],
    /// One status entry per registered worker.
    pub status: &'a [StatusEntry],
    /// The proc array.
    pub procs: ProcArray<'a>,
    /// The registration slots.
    pub registry: Registry<'a>,
    /// The name table.
    pub names: Names<'a>,
    /// One inbox per proc slot.
    pub mail: Mailboxes<'a>,
}

/// Why the postmaster's regions could not be reached.
#[derive(Debug, Error)]
pub enum SharedError {
    /// A region is missing or of another type: the segment was made by a
    /// program with another layout.
    #[error("the segment lacks the postmaster's regions: {0}")]
    Region(#[from] RegionError),
    /// The proc array does not match.
    #[error(transparent)]
    Procs(#[from] ProcArrayError),
    /// The registration slots do not match.
    #[error("registration slots: {0}")]
    Registry(#[from] crate::registry::RegistryError),
    /// The name table does not match.
    #[error("name table: {0}")]
    Names(#[from] NameError),
    /// The inboxes do not match.
    #[error("inboxes: {0}")]
    Mail(#[from] MailError),
}

impl<'a> Shared<'a> {
    /// Initialises the regions of a new or freshly reset segment.
    pub fn init(segment: &'a Segment, config: &SharedConfig) -> Result<Self, SharedError> {
        let procs = ProcArray::init(segment, config.procs())?;
        Self::with_procs(segment, procs)
    }

    /// The regions of a segment another process initialised.
    pub fn attach(segment: &'a Segment, config: &SharedConfig) -> Result<Self, SharedError> {
        let procs = ProcArray::attach(segment, config.procs())?;
        Self::with_procs(segment, procs)
    }

    fn with_procs(segment: &'a Segment, procs: ProcArray<'a>) -> Result<Self, SharedError> {
        Ok(Shared {
            segment,
            control: segment.region::<Control>(CONTROL_REGION)?,
            board: segment.array::<WorkerBoard>(BOARD_REGION)?,
            status: segment.array::<StatusEntry>(STATUS_REGION)?,
            procs,
            registry: Registry::from_segment(segment)?,
            names: Names::from_segment(segment)?,
            mail: Mailboxes::from_segment(segment)?,
        })
    }

    /// Worker slots in use, for status displays.
    pub fn workers_in_use(&self) -> usize {
        let config = self.procs.config();
        let start = config.start(Kind::Worker);
        (start..start + config.size(Kind::Worker))
            .filter_map(|i| self.procs.get(i))
            .filter(|s| !s.status().is_free())
            .count()
    }
}
