//! The process array: a fixed number of [`ProcSlot`]s in a segment, split
//! into per-kind ranges, each range with its own lock-free [`FreeList`].
//!
//! # Two ways to hold a slot
//!
//! - **Processes that attach by themselves** ([`Kind::Backend`]) call
//!   [`ProcArray::acquire`] and get a [`SlotGuard`] that gives the slot back
//!   when dropped. Nobody reaps such a process, so a slot whose owner died
//!   without dropping its guard is found by [`ProcArray::reclaim_dead`].
//! - **The postmaster's children** ([`Kind::Worker`]): the postmaster calls
//!   [`ProcArray::assign`] *before* forking, keeps the returned
//!   [`SlotHandle`] in its private memory, and the child calls
//!   [`ProcArray::activate`] with it. When the child exits, the child marks
//!   the slot [`EXITING`](crate::slot::EXITING) after its cleanup, and the
//!   postmaster, after `waitpid`, calls [`ProcArray::release_assigned`]
//!   with its own record of the handle. The postmaster never takes an index
//!   from shared memory on trust: a free-list pop is range-checked and the
//!   slot it names must be free, or the array is reported corrupt (and the
//!   postmaster resets the segment).
//!
//! Every state change is a CAS on the slot's `(generation, state)` word
//! (see [`crate::slot`]), so a handle or a reclaimer that is one tenancy
//! late changes nothing.
//!
//! ```
//! use proclist::{Kind, ProcArray, ProcArrayConfig};
//! use shmem::{Layout, Segment};
//!
//! let config = ProcArrayConfig { workers: 2, backends: 2 };
//! let layout = ProcArray::declare(Layout::builder(), config).build()?;
//! let segment = Segment::create(&layout)?;
//! let procs = ProcArray::init(&segment, config)?;
//!
//! let a = procs.acquire(Kind::Backend)?;
//! let b = procs.acquire(Kind::Backend)?;
//! assert!(procs.acquire(Kind::Backend).is_err()); // NoFreeSlot: both taken
//! assert_ne!(a.index(), b.index());
//! drop(a);                                         // released on drop
//! assert!(procs.acquire(Kind::Backend).is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;

use shmem::sync::{AtomicU32, AtomicU64};
use thiserror::Error;

use crate::freelist::{FreeList, FreeListError};
use crate::slot::{ACTIVE, ASSIGNED, EXITING, FREE, ProcSlot, SlotStatus};

/// The kinds of process that hold slots, each with its own range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Kind {
    /// A child the postmaster forks; assigned before fork.
    Worker = 0,
    /// A process that attaches to the segment by itself.
    Backend = 1,
}

impl Kind {
    /// Every kind, in range order.
    pub const ALL: [Kind; 2] = [Kind::Worker, Kind::Backend];

    /// The kind's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Worker => "worker",
            Kind::Backend => "backend",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many slots each kind gets. Part of the layout: every process that
/// attaches must use the same configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcArrayConfig {
    /// Slots for the postmaster's children.
    pub workers: u32,
    /// Slots for processes that attach by themselves.
    pub backends: u32,
}

impl ProcArrayConfig {
    /// Slots of `kind`.
    pub fn size(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Worker => self.workers,
            Kind::Backend => self.backends,
        }
    }

    /// Index of the first slot of `kind`.
    pub fn start(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Worker => 0,
            Kind::Backend => self.workers,
        }
    }

    /// All slots.
    pub fn total(&self) -> u32 {
        self.workers.saturating_add(self.backends)
    }

    /// The kind whose range holds `index`.
    pub fn kind_of(&self, index: u32) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|&k| index >= self.start(k) && index - self.start(k) < self.size(k))
    }
}

/// A free-list head alone on its cache line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct FreeListHead(AtomicU64);

// SAFETY: one atomic integer padded to a cache line: any bytes are valid,
// no pointers, atomic mutation only.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for FreeListHead {}

impl FreeListHead {
    /// The packed head word (see [`crate::freelist::Head`]).
    pub fn word(&self) -> &AtomicU64 {
        &self.0
    }
}

/// A slot that names one tenancy: the index and the generation it was
/// taken with. Plain data; the postmaster keeps these in private memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotHandle {
    /// Index into the array.
    pub index: u32,
    /// The generation of this tenancy.
    pub generation: u32,
}

/// Why a slot could not be had, or a handle could not be used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProcArrayError {
    /// Every slot of the kind is taken.
    #[error(
        "no free {kind} slot: all {size} are taken; raise the {kind} count in the \
         ProcArrayConfig or wait for one to be released"
    )]
    NoFreeSlot {
        /// The exhausted kind.
        kind: Kind,
        /// How many slots it has.
        size: u32,
    },
    /// The handle's tenancy is over (or never was): nothing was changed.
    #[error(
        "slot {index} is no longer generation {generation} (found {found}); the handle is stale"
    )]
    StaleHandle {
        /// The slot.
        index: u32,
        /// The handle's generation.
        generation: u32,
        /// What the slot holds now.
        found: String,
    },
    /// Shared memory disagrees with itself: reset the segment.
    #[error("process array is corrupt: {0}; the segment needs a reset")]
    Corrupt(String),
    /// The segment was laid out with another configuration.
    #[error("process array was created as {found:?}, this process expects {expected:?}")]
    ConfigMismatch {
        /// The configuration in the segment.
        found: ProcArrayConfig,
        /// The caller's.
        expected: ProcArrayConfig,
    },
    /// A region is missing or has the wrong type.
    #[error(transparent)]
    Region(#[from] shmem::RegionError),
}

impl From<FreeListError> for ProcArrayError {
    fn from(e: FreeListError) -> Self {
        ProcArrayError::Corrupt(e.to_string())
    }
}

/// What [`ProcArray::release_assigned`] or [`ProcArray::reclaim_dead`]
/// found in a slot whose owner is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// The slot.
    pub index: u32,
    /// The status it was in before release.
    pub was: SlotStatus,
    /// The owner's pid, as recorded.
    pub pid: u32,
    /// Critical-section depth at death: non-zero means shared state may be
    /// half-changed and the segment must be reset.
    pub crit_depth: u32,
}

impl Released {
    /// Whether the owner finished its cleanup (or never started): its death
    /// left shared state consistent, so it can be contained.
    pub fn clean(&self) -> bool {
        matches!(self.was.state, EXITING | ASSIGNED) && self.crit_depth == 0
    }
}

/// Region names used by [`ProcArray::declare`].
pub mod regions {
    /// The slots.
    pub const SLOTS: &str = "procs";
    /// One free-list link per slot.
    pub const LINKS: &str = "procs.free_links";
    /// One free-list head per kind.
    pub const HEADS: &str = "procs.free_heads";
    /// The per-kind sizes, as written by the creator.
    pub const CONFIG: &str = "procs.config";
}

/// A view of the process array; see the module docs.
#[derive(Clone, Copy)]
pub struct ProcArray<'a> {
    slots: &'a [ProcSlot],
    links: &'a [AtomicU32],
    heads: &'a [FreeListHead],
    config: ProcArrayConfig,
}

impl fmt::Debug for ProcArray<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcArray")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<'a> ProcArray<'a> {
    /// Adds the array's regions to a layout.
    #[cfg(not(loom))]
    pub fn declare(builder: shmem::LayoutBuilder, config: ProcArrayConfig) -> shmem::LayoutBuilder {
        let total = config.total() as usize;
        builder
            .array::<ProcSlot>(regions::SLOTS, total)
            .array::<AtomicU32>(regions::LINKS, total)
            .array::<FreeListHead>(regions::HEADS, Kind::ALL.len())
            .array::<AtomicU32>(regions::CONFIG, Kind::ALL.len())
    }

    /// Initialises the array in a new (or freshly reset) segment: records the
    /// configuration and puts every slot on its kind's free list. Only for a
    /// segment nobody else uses yet.
    #[cfg(not(loom))]
    pub fn init(
        segment: &'a shmem::Segment,
        config: ProcArrayConfig,
    ) -> Result<Self, ProcArrayError> {
        let array = Self::view(segment, config)?;
        let stored = segment.array::<AtomicU32>(regions::CONFIG)?;
        for (cell, kind) in stored.iter().zip(Kind::ALL) {
            // Relaxed: published with the segment (attachers arrive after the
            // creator's release store of the header state, or after reinit).
            cell.store(config.size(kind), shmem::sync::Ordering::Relaxed);
        }
        array.fill_free_lists();
        Ok(array)
    }

    /// A view of an array another process initialised with `config`.
    #[cfg(not(loom))]
    pub fn attach(
        segment: &'a shmem::Segment,
        config: ProcArrayConfig,
    ) -> Result<Self, ProcArrayError> {
        let array = Self::view(segment, config)?;
        let stored = segment.array::<AtomicU32>(regions::CONFIG)?;
        // Relaxed: written before the segment was published (see init()).
        let found = ProcArrayConfig {
            workers: stored[0].load(shmem::sync::Ordering::Relaxed),
            backends: stored[1].load(shmem::sync::Ordering::Relaxed),
        };
        if found != config {
            return Err(ProcArrayError::ConfigMismatch {
                found,
                expected: config,
            });
        }
        Ok(array)
    }

    #[cfg(not(loom))]
    fn view(segment: &'a shmem::Segment, config: ProcArrayConfig) -> Result<Self, ProcArrayError> {
        Self::from_parts(
            segment.array(regions::SLOTS)?,
            segment.array(regions::LINKS)?,
            segment.array(regions::HEADS)?,
            config,
        )
    }

    /// A view over storage the caller laid out (tests and loom models build
    /// it on the heap). The slices must be `config.total()`,
    /// `config.total()` and `Kind::ALL.len()` long.
    pub fn from_parts(
        slots: &'a [ProcSlot],
        links: &'a [AtomicU32],
        heads: &'a [FreeListHead],
        config: ProcArrayConfig,
    ) -> Result<Self, ProcArrayError> {
        let total = config.total() as usize;
        if slots.len() != total || links.len() != total || heads.len() != Kind::ALL.len() {
            return Err(ProcArrayError::Corrupt(format!(
                "storage for {} slots, {} links, {} heads does not fit {config:?}",
                slots.len(),
                links.len(),
                heads.len()
            )));
        }
        Ok(Self {
            slots,
            links,
            heads,
            config,
        })
    }

    /// Puts every slot on its kind's free list. Only while nobody else uses
    /// the array.
    pub fn fill_free_lists(&self) {
        for kind in Kind::ALL {
            self.free_list(kind).fill();
        }
    }

    fn free_list(&self, kind: Kind) -> FreeList<'a> {
        let start = self.config.start(kind) as usize;
        let end = start + self.config.size(kind) as usize;
        FreeList::new(&self.heads[kind as usize].0, &self.links[start..end])
    }

    /// The configuration.
    pub fn config(&self) -> ProcArrayConfig {
        self.config
    }

    /// Slot `index`, if it exists.
    pub fn get(&self, index: u32) -> Option<&'a ProcSlot> {
        self.slots.get(index as usize)
    }

    /// Every slot with its index, for status displays.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &'a ProcSlot)> + 'a {
        self.slots.iter().enumerate().map(|(i, s)| (i as u32, s))
    }

    /// The occupied slot whose owner has `pid`, if any.
    pub fn find_pid(&self, pid: u32) -> Option<(u32, &'a ProcSlot)> {
        if pid == 0 {
            return None;
        }
        self.iter()
            .find(|(_, s)| s.status().state != FREE && s.pid() == pid)
    }

    /// Pops a slot of `kind` and checks that the free list told the truth:
    /// the index is in range (the list checks) and the slot is free.
    fn take(&self, kind: Kind) -> Result<(u32, SlotStatus), ProcArrayError> {
        let Some(relative) = self.free_list(kind).pop()? else {
            return Err(ProcArrayError::NoFreeSlot {
                kind,
                size: self.config.size(kind),
            });
        };
        let index = self.config.start(kind) + relative;
        let status = self.slots[index as usize].status();
        if status.state != FREE {
            // Not pushed back: it is someone's. The caller resets the segment.
            return Err(ProcArrayError::Corrupt(format!(
                "the {kind} free list handed out slot {index}, which is {}",
                status.state_name()
            )));
        }
        Ok((index, status))
    }

    /// Takes a slot of `kind` for the calling process, marking it active.
    /// The guard gives it back when dropped.
    pub fn acquire(&self, kind: Kind) -> Result<SlotGuard<'a>, ProcArrayError> {
        self.acquire_tagged(kind, 0)
    }

    /// As [`acquire`](Self::acquire), recording an opaque `owner_tag`.
    ///
    /// Hot path: one CAS (the pop) and plain stores. Winning the pop makes
    /// the slot ours alone (nobody else acts on a FREE slot: reclaimers
    /// only touch ACTIVE or EXITING ones), so the identity, the latch owner
    /// and the ACTIVE status are published by one release store.
    pub fn acquire_tagged(
        &self,
        kind: Kind,
        owner_tag: u64,
    ) -> Result<SlotGuard<'a>, ProcArrayError> {
        let (index, free) = self.take(kind)?;
        let slot = &self.slots[index as usize];
        let pid = latch::pid::current();
        slot.set_identity(
            pid,
            shmem::liveness::own_start_time_as(pid),
            kind as u32,
            owner_tag,
        );
        slot.latch().hand_over(pid);
        let active = SlotStatus {
            generation: free.generation.wrapping_add(1),
            state: ACTIVE,
        };
        slot.publish(active);
        Ok(SlotGuard {
            array: *self,
            handle: SlotHandle {
                index,
                generation: active.generation,
            },
        })
    }

    /// The postmaster's path, before `fork`: takes a slot of `kind` for a
    /// child whose pid is not known yet. Keep the handle privately; the
    /// child passes it to [`activate`](Self::activate).
    pub fn assign(&self, kind: Kind, owner_tag: u64) -> Result<SlotHandle, ProcArrayError> {
        let (index, free) = self.take(kind)?;
        let slot = &self.slots[index as usize];
        slot.set_identity(0, 0, kind as u32, owner_tag);
        let assigned = SlotStatus {
            generation: free.generation.wrapping_add(1),
            state: ASSIGNED,
        };
        slot.transition(free, assigned).map_err(|found| {
            ProcArrayError::Corrupt(format!(
                "slot {index} changed to {found:?} while being assigned"
            ))
        })?;
        Ok(SlotHandle {
            index,
            generation: assigned.generation,
        })
    }

    /// The child's side of [`assign`](Self::assign): records its pid and
    /// marks the slot active (the dead-man switch is now armed).
    pub fn activate(&self, handle: SlotHandle) -> Result<&'a ProcSlot, ProcArrayError> {
        let slot = self.slot_of(handle)?;
        let assigned = SlotStatus {
            generation: handle.generation,
            state: ASSIGNED,
        };
        let current = slot.status();
        if current != assigned {
            return Err(stale(handle, current));
        }
        let pid = latch::pid::current();
        slot.set_identity(
            pid,
            shmem::liveness::own_start_time_as(pid),
            slot.kind(),
            slot.owner_tag(),
        );
        slot.latch().hand_over(pid);
        slot.transition(
            assigned,
            SlotStatus {
                generation: handle.generation,
                state: ACTIVE,
            },
        )
        .map_err(|found| stale(handle, found))?;
        Ok(slot)
    }

    /// The child's last step before exiting cleanly: after all its cleanup,
    /// marks the slot exiting, so that the postmaster knows the death was
    /// clean. The slot stays out of the free list until
    /// [`release_assigned`](Self::release_assigned).
    pub fn mark_exiting(&self, handle: SlotHandle) -> Result<(), ProcArrayError> {
        let slot = self.slot_of(handle)?;
        slot.latch().disown();
        slot.transition(
            SlotStatus {
                generation: handle.generation,
                state: ACTIVE,
            },
            SlotStatus {
                generation: handle.generation,
                state: EXITING,
            },
        )
        .map_err(|found| stale(handle, found))
    }

    /// The postmaster's path, after reaping the child that held `handle`
    /// (or after a failed fork): reports what the slot said about the death
    /// and returns the slot to its free list.
    ///
    /// Trusts only `handle`, which came from the postmaster's private
    /// memory. If the slot no longer carries the handle's generation, a
    /// child overwrote it: the slot is left alone and `Corrupt` returned.
    pub fn release_assigned(&self, handle: SlotHandle) -> Result<Released, ProcArrayError> {
        let slot = self.slot_of(handle)?;
        let was = slot.status();
        if was.generation != handle.generation || was.state == FREE || was.state > EXITING {
            return Err(ProcArrayError::Corrupt(format!(
                "slot {} should be generation {} in use, but is {was:?}",
                handle.index, handle.generation
            )));
        }
        let released = Released {
            index: handle.index,
            was,
            pid: slot.pid(),
            crit_depth: slot.crit_depth(),
        };
        self.free(handle.index, was)?;
        Ok(released)
    }

    /// Finds self-attached ([`Kind::Backend`]) slots whose owner died
    /// without releasing them, and frees them. A live owner's slot is never
    /// touched: liveness is judged by pid *and* start time, so a recycled
    /// pid does not keep a dead owner's slot, nor does it lose a live one.
    ///
    /// Returns what each reclaimed slot held; a [`Released`] that is not
    /// [`clean`](Released::clean) means shared state may be damaged.
    /// Worker slots are left to the postmaster, which reaps its children.
    pub fn reclaim_dead(&self) -> Vec<Released> {
        let kind = Kind::Backend;
        let start = self.config.start(kind);
        let mut reclaimed = Vec::new();
        for index in start..start + self.config.size(kind) {
            let slot = &self.slots[index as usize];
            let seen = slot.status();
            if !matches!(seen.state, ACTIVE | EXITING) {
                continue;
            }
            let (pid, started) = (slot.pid(), slot.start_time());
            if shmem::liveness::is_alive(pid, started) {
                continue;
            }
            let released = Released {
                index,
                was: seen,
                pid,
                crit_depth: slot.crit_depth(),
            };
            // The CAS inside free() fails if the slot moved on since `seen`
            // (released by its owner, or reclaimed by someone else first).
            if self.free(index, seen).is_ok() {
                reclaimed.push(released);
            }
        }
        reclaimed
    }

    /// Moves slot `index` from `from` to FREE and pushes it on its list.
    fn free(&self, index: u32, from: SlotStatus) -> Result<(), ProcArrayError> {
        let slot = &self.slots[index as usize];
        let kind = self
            .config
            .kind_of(index)
            .ok_or_else(|| ProcArrayError::Corrupt(format!("slot {index} is in no range")))?;
        // Claim the slot for freeing first, so no one else frees it too.
        let exiting = SlotStatus {
            generation: from.generation,
            state: EXITING,
        };
        if from != exiting {
            slot.transition(from, exiting)
                .map_err(|found| stale_at(index, from.generation, found))?;
        }
        // The owner is gone (or is us, giving up): nobody owns the latch.
        slot.latch().hand_over(0);
        slot.clear_identity();
        slot.transition(
            exiting,
            SlotStatus {
                generation: from.generation,
                state: FREE,
            },
        )
        .map_err(|found| stale_at(index, from.generation, found))?;
        // A process that dies between the FREE transition and this push
        // leaks the slot until the next segment reset (a window of a few
        // instructions); see the crate docs.
        self.free_list(kind).push(index - self.config.start(kind))?;
        Ok(())
    }

    fn slot_of(&self, handle: SlotHandle) -> Result<&'a ProcSlot, ProcArrayError> {
        self.slots.get(handle.index as usize).ok_or_else(|| {
            ProcArrayError::Corrupt(format!(
                "handle names slot {} of {}",
                handle.index,
                self.slots.len()
            ))
        })
    }

    /// Counts free slots of `kind` by walking its list. Only meaningful
    /// while no process takes or releases slots of that kind.
    pub fn count_free_quiescent(&self, kind: Kind) -> Result<u32, ProcArrayError> {
        Ok(self.free_list(kind).count_quiescent()?)
    }
}

fn stale(handle: SlotHandle, found: SlotStatus) -> ProcArrayError {
    stale_at(handle.index, handle.generation, found)
}

fn stale_at(index: u32, generation: u32, found: SlotStatus) -> ProcArrayError {
    ProcArrayError::StaleHandle {
        index,
        generation,
        found: format!("generation {} {}", found.generation, found.state_name()),
    }
}

/// A slot held by the calling process; gives it back when dropped.
#[derive(Debug)]
pub struct SlotGuard<'a> {
    array: ProcArray<'a>,
    handle: SlotHandle,
}

impl<'a> SlotGuard<'a> {
    /// The slot's index.
    pub fn index(&self) -> u32 {
        self.handle.index
    }

    /// The handle: index and generation of this tenancy.
    pub fn handle(&self) -> SlotHandle {
        self.handle
    }

    /// The slot.
    pub fn slot(&self) -> &'a ProcSlot {
        &self.array.slots[self.handle.index as usize]
    }

    /// Enters a critical section; it ends when the returned guard drops.
    pub fn critical(&self) -> CriticalSection<'a> {
        let slot = self.slot();
        slot.enter_critical();
        CriticalSection { slot }
    }

    /// Gives the slot up without running the release path, e.g. in a
    /// forked child that must leave the parent's slot alone.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl std::ops::Deref for SlotGuard<'_> {
    type Target = ProcSlot;
    fn deref(&self) -> &ProcSlot {
        self.slot()
    }
}

impl Drop for SlotGuard<'_> {
    /// The owner's release, the other half of the hot path: one CAS to FREE
    /// and the push. The identity fields are left as they were; every
    /// reader looks at the state first, and a FREE slot's identity means
    /// nothing.
    fn drop(&mut self) {
        let slot = self.slot();
        let handle = self.handle;
        slot.latch().hand_over(0);
        slot.reset_critical();
        let active = SlotStatus {
            generation: handle.generation,
            state: ACTIVE,
        };
        let free = SlotStatus {
            generation: handle.generation,
            state: FREE,
        };
        // Fails only if someone reclaimed the slot from under us (they judged
        // us dead) or shared memory was overwritten; either way it is not
        // ours to free any more.
        let config = self.array.config;
        if slot.transition(active, free).is_ok()
            && let Some(kind) = config.kind_of(handle.index)
        {
            // Contended or corrupt: the slot leaks until the next reset,
            // which a corrupt list gets anyway.
            let _ = self
                .array
                .free_list(kind)
                .push(handle.index - config.start(kind));
        }
    }
}

/// A critical section of the slot's owner; see [`ProcSlot::enter_critical`].
#[derive(Debug)]
pub struct CriticalSection<'a> {
    slot: &'a ProcSlot,
}

impl Drop for CriticalSection<'_> {
    fn drop(&mut self) {
        self.slot.exit_critical();
    }
}
