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
//!   the slot [`EXITING`] after its cleanup, and the
//!   postmaster, after `waitpid`, calls [`ProcArray::release_assigned`]
//!   with its own record of the handle. The postmaster never takes an index
//!   from shared memory on trust: a free-list pop is range-checked and the
//!   slot it names must be free, or the array is reported corrupt (and the
//!   postmaster resets the segment).
//!
//! # Free lists
//!
//! Each kind has [`FREE_LIST_SHARDS`] free lists: every thread takes from
//! and gives back to a home list of its own and takes from the others only
//! when its own is empty, so processes taking slots at once do not fight
//! over one head. `NoFreeSlot` still means every slot of the kind was taken
//! at one moment: an empty scan is confirmed by a second one that finds
//! every head word unchanged (see `take`). A fresh array keeps all slots on
//! the first list, lowest index on top. Each slot's link sits on a cache
//! line of its own ([`LINK_STRIDE`]).
//!
//! # Parking
//!
//! A thread that releases a slot usually takes one again soon, and a
//! free-list round trip costs two CASes on the list head. So a released
//! slot is not pushed but *parked*: its status becomes [`PARKED`] (with the
//! generation bumped) and the releasing thread remembers it. Its next
//! acquire of that kind takes the slot back with one CAS on the slot's own
//! status word, `PARKED -> FREE`, and touches no list. Each thread parks at
//! most one slot; a release while it has one parked pushes as before.
//! The slot's latch stays owned by the parking process while it is parked,
//! which saves the release two stores; whoever claims the slot hands the
//! latch over, as a taker from a list does. So a thread that kept the
//! slot's latch past its release, and waits on it, is no longer refused
//! as a non-owner: a misuse the latch catches only for pushed slots.
//!
//! A parked slot is free, not reserved: whoever finds every list of the
//! kind empty scans the kind's slots and takes a parked one with the same
//! CAS, so the keeper's claim and a stranger's race fairly and one wins.
//! A thread that exits, or dies, with a slot parked leaves it for such a
//! scan; nothing leaks. The thread's memory of its parked slot is only a
//! guess, checked by that CAS: a stale one (the slot was taken, the segment
//! reset, or another array is in use) fails it and costs nothing else.
//!
//! `NoFreeSlot` stays exact. The exhaustion check reads every list head,
//! then every slot's status (taking a parked slot if it finds one), then
//! the statuses again and the heads again. If every head word is unchanged
//! no list changed, and if the sum of the slots' generations is unchanged
//! no slot was parked (parking bumps the generation, and generations never
//! go down while the segment lives): so at a moment between the two status
//! scans, every list was empty and no slot was parked, and every slot was
//! taken. That needs the second look to see every change that came before
//! one the first look saw, which is why a claim's CAS releases as well as
//! acquires, and acquires even when it fails.
//!
//! Views made [`without_parking`](ProcArray::without_parking) push every
//! release, for callers that want slots to go back to the lists.
//!
//! Every state change by someone who does not hold the slot alone is a CAS
//! on the slot's `(generation, state)` word (see [`crate::slot`]), so a
//! handle or a reclaimer that is one tenancy late changes nothing. Only the
//! two ends of a self-attached tenancy are plain release stores: the taker
//! has just won the slot from a free list, and a live owner's ACTIVE slot
//! is written by nobody else (see [`SlotGuard`]'s `Drop`).
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

use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

use crate::freelist::{FreeList, FreeListError, Place, Popped};
use crate::slot::{ACTIVE, ASSIGNED, EXITING, FREE, PARKED, ProcSlot, SlotStatus};

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

/// How many free lists (shards) [`ProcArray::declare`] gives each kind.
///
/// Each process (each thread, in fact) takes from and gives back to its
/// *home* shard, so a few processes taking and releasing slots at once each
/// work on a head, slots and links of their own and never share a cache
/// line; one whose home shard is empty takes from the others. Homes are
/// dealt round-robin in the order threads first take a slot, so up to this
/// many never share one; past that, sharers of a shard are just as correct
/// and contend as they would on a single list.
pub const FREE_LIST_SHARDS: usize = 8;

/// The most shards [`ProcArray::from_parts`] accepts per kind.
pub const MAX_FREE_LIST_SHARDS: usize = 16;

/// The link stride [`ProcArray::declare`] lays out: one link per cache
/// line (see [`FreeList::strided`]).
pub const LINK_STRIDE: u32 = (shmem::CACHE_LINE / std::mem::size_of::<u32>()) as u32;

/// A free-list head alone on its cache line.
///
/// The first head of the array also hands out home-shard tickets (see
/// [`FREE_LIST_SHARDS`]); that counter is touched once per process, so it
/// may share the head's line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct FreeListHead {
    word: AtomicU64,
    tickets: AtomicU32,
}

// SAFETY: atomic integers padded to a cache line: any bytes are valid, no
// pointers, atomic mutation only.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for FreeListHead {}

impl FreeListHead {
    /// The packed head word (see [`crate::freelist::Head`]).
    pub fn word(&self) -> &AtomicU64 {
        &self.word
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
    /// `config.total() * stride` cells; slot `i`'s link is `links[i * stride]`.
    links: &'a [AtomicU32],
    /// Shard-major: shard `s` of kind `k` is `heads[s * Kind::ALL.len() + k]`,
    /// so shard 0 of each kind is where a one-shard array keeps its head.
    heads: &'a [FreeListHead],
    config: ProcArrayConfig,
    /// Free lists per kind: a power of two, at most [`MAX_FREE_LIST_SHARDS`].
    shards: u32,
    /// 1, or [`LINK_STRIDE`].
    stride: u32,
    /// Whether releases through this view park (see the module docs).
    parking: bool,
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
            .array::<AtomicU32>(regions::LINKS, total * LINK_STRIDE as usize)
            .array::<FreeListHead>(regions::HEADS, Kind::ALL.len() * FREE_LIST_SHARDS)
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
        // Tenancies of one segment generation never share a generation
        // with those of the next: a guard or handle that outlived a reset
        // (a self-attached process during a reset) then matches nothing,
        // rather than the slot's first tenant after the reset.
        let base = (segment.generation() as u32).wrapping_mul(1 << 20);
        for slot in array.slots {
            slot.publish(SlotStatus {
                generation: base,
                state: FREE,
            });
        }
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
    /// it on the heap). `slots` must be `config.total()` long; `links`
    /// `config.total()` (packed) or `config.total() * LINK_STRIDE` (one per
    /// cache line, as [`declare`](Self::declare) lays them out) long;
    /// `heads` `Kind::ALL.len()` times the number of shards per kind, a
    /// power of two up to [`MAX_FREE_LIST_SHARDS`] (one shard is a single
    /// free list per kind).
    pub fn from_parts(
        slots: &'a [ProcSlot],
        links: &'a [AtomicU32],
        heads: &'a [FreeListHead],
        config: ProcArrayConfig,
    ) -> Result<Self, ProcArrayError> {
        let total = config.total() as usize;
        let kinds = Kind::ALL.len();
        let stride = if links.len() == total {
            Some(1)
        } else if Some(links.len()) == total.checked_mul(LINK_STRIDE as usize) {
            Some(LINK_STRIDE)
        } else {
            None
        };
        let shards = heads.len() / kinds;
        let (Some(stride), true, true) = (
            stride,
            slots.len() == total,
            heads.len().is_multiple_of(kinds)
                && shards.is_power_of_two()
                && shards <= MAX_FREE_LIST_SHARDS,
        ) else {
            return Err(ProcArrayError::Corrupt(format!(
                "storage for {} slots, {} links, {} heads does not fit {config:?}",
                slots.len(),
                links.len(),
                heads.len()
            )));
        };
        Ok(Self {
            slots,
            links,
            heads,
            config,
            shards: shards as u32,
            stride,
            parking: true,
        })
    }

    /// This view, with releases that always push the slot back on a free
    /// list instead of parking it (see the module docs). Acquires still
    /// take slots that other views parked.
    pub fn without_parking(self) -> Self {
        Self {
            parking: false,
            ..self
        }
    }

    /// Puts every slot on its kind's first shard (lowest index on top) and
    /// empties the other shards. Only while nobody else uses the array.
    pub fn fill_free_lists(&self) {
        for kind in Kind::ALL {
            self.free_list(kind, 0).fill();
            for shard in 1..self.shards {
                // Release: pairs with the acquire head loads in
                // FreeList::pop_observed(); an empty list has nothing to
                // publish, but the tag moves on as for any change.
                let word = self.free_list(kind, shard).head();
                let tag = crate::freelist::Head::decode(word.load(Ordering::Relaxed))
                    .tag
                    .wrapping_add(1);
                word.store(
                    crate::freelist::Head { tag, top: 0 }.encode(),
                    Ordering::Release,
                );
            }
        }
    }

    /// Shard `shard` of `kind`'s free lists; the caller keeps `shard` below
    /// `self.shards`.
    #[inline]
    fn free_list(&self, kind: Kind, shard: u32) -> FreeList<'a> {
        let stride = self.stride as usize;
        let start = self.config.start(kind) as usize * stride;
        let end = start + self.config.size(kind) as usize * stride;
        let head = &self.heads[shard as usize * Kind::ALL.len() + kind as usize];
        // The stride and the sizes were checked by from_parts().
        FreeList::strided_checked(
            &head.word,
            &self.links[start..end],
            self.stride,
            self.config.size(kind),
        )
    }

    /// The calling thread's pid, its process's start time and its home
    /// shard (see [`FREE_LIST_SHARDS`]), from one thread-local read.
    #[inline]
    fn me(&self) -> Me {
        let (pid, start_time, ticket) = me::lookup(&self.heads[0].tickets);
        Me {
            pid,
            start_time,
            // A mask, not `%`: shards is a power of two (from_parts checks),
            // and a division costs more than the rest of this function.
            home: ticket & (self.shards - 1),
        }
    }

    /// The calling thread's home shard.
    #[inline]
    fn home_shard(&self) -> u32 {
        self.me().home
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
            .find(|(_, s)| !s.status().is_free() && s.pid() == pid)
    }

    /// Pops a slot of `kind`, from the caller's home shard if it has one,
    /// else from the others in turn, and checks that the free list told
    /// the truth: the index is in range (the list checks) and the slot is
    /// free.
    ///
    /// `NoFreeSlot` must mean that every slot of the kind was taken at one
    /// moment, not that slots moved between shards while we looked. So an
    /// empty scan is confirmed by a second: every shard's head word still
    /// being the one its empty pop saw proves that no shard changed in
    /// between (every push and pop bumps the tag), so at the moment the
    /// first scan ended all were empty together (a double collect). If some
    /// shard changed, someone pushed or popped: scan again, a bounded number
    /// of times like the list's own retries.
    #[inline(always)]
    fn take(&self, kind: Kind, home: u32, list: FreeList<'a>) -> Result<Taken<'a>, ProcArrayError> {
        if let Some(Popped::Slot { index, head }) = list.pop_guessed(me::hint()) {
            return self.check_taken(kind, index, head);
        }
        self.take_elsewhere(kind, home)
    }

    /// [`take`](Self::take)'s slow path: the hint was wrong, or the home
    /// shard empty. Out of line, with its arguments in registers: a call
    /// that took the home list's view by reference would make the inlined
    /// hot path build that view on the stack.
    #[cold]
    #[inline(never)]
    fn take_elsewhere(&self, kind: Kind, home: u32) -> Result<Taken<'a>, ProcArrayError> {
        let mut seen = [0u64; MAX_FREE_LIST_SHARDS];
        for _ in 0..crate::freelist::MAX_ATTEMPTS {
            for step in 0..self.shards {
                let shard = (home + step) & (self.shards - 1);
                match self.free_list(kind, shard).pop_observed()? {
                    // The slot goes back to the home shard, so the guess
                    // for that push is what the pop left there, or else
                    // the empty home head this scan saw first.
                    Popped::Slot { index, head } => {
                        let guess = if shard == home {
                            head
                        } else {
                            seen[home as usize]
                        };
                        return self.check_taken(kind, index, guess);
                    }
                    Popped::Empty(word) => seen[shard as usize] = word,
                }
            }
            // Every list was empty: a parked slot, then, or proof that none
            // was parked (see the module docs).
            let generations = match self.take_parked_anywhere(kind, seen[home as usize]) {
                Ok(taken) => return Ok(taken),
                Err(generations) => generations,
            };
            // Acquire: as in pop_observed(); program order keeps these loads
            // after the first scans' acquire loads.
            let unchanged = self.generations(kind) == generations
                && (0..self.shards).all(|shard| {
                    self.free_list(kind, shard).head().load(Ordering::Acquire)
                        == seen[shard as usize]
                });
            if unchanged {
                return Err(ProcArrayError::NoFreeSlot {
                    kind,
                    size: self.config.size(kind),
                });
            }
        }
        Err(FreeListError::Contended.into())
    }

    /// Takes the slot this thread parked, if it is of `kind` and still
    /// parked. An entry of another kind stays for a later acquire of that
    /// kind; one that fails the claim is stale and forgotten.
    #[inline(always)]
    fn take_parked(&self, kind: Kind) -> Option<Taken<'a>> {
        if !self.parking {
            return None;
        }
        let parked = me::parked();
        // Parked::NONE's index is in no range.
        let relative = parked.index.wrapping_sub(self.config.start(kind));
        if relative >= self.config.size(kind) {
            return None;
        }
        let slot = self.slots.get(parked.index as usize)?;
        // A parked slot is parked again on release, unless the thread parks
        // another by then; a guess of 0 then costs one failed CAS.
        let taken = Taken::claim(slot, parked.index, relative, parked.status(), 0);
        // On success the entry stays until the release parks the slot over
        // it; a failed claim means it is stale.
        if taken.is_none() {
            me::set_parked(Parked::NONE);
        }
        taken
    }

    /// Scans `kind`'s slots and takes the first parked one it wins, with
    /// `guess` for the push that may give it back. If it wins none: the sum
    /// of the generations it saw, for the exhaustion check.
    #[cold]
    fn take_parked_anywhere(&self, kind: Kind, guess: u64) -> Result<Taken<'a>, u64> {
        let start = self.config.start(kind);
        let mut generations = 0u64;
        for (relative, slot) in (0..).zip(self.kind_slots(kind)) {
            let status = slot.status();
            if status.state == PARKED
                && let Some(taken) = Taken::claim(slot, start + relative, relative, status, guess)
            {
                return Ok(taken);
            }
            generations += u64::from(status.generation);
        }
        Err(generations)
    }

    /// The sum of the generations of `kind`'s slots.
    fn generations(&self, kind: Kind) -> u64 {
        self.kind_slots(kind)
            .iter()
            .map(|slot| u64::from(slot.status().generation))
            .sum()
    }

    /// The slots of `kind`'s range.
    fn kind_slots(&self, kind: Kind) -> &'a [ProcSlot] {
        let start = self.config.start(kind) as usize;
        &self.slots[start..start + self.config.size(kind) as usize]
    }

    /// Checks that slot `relative` of `kind`, just popped, is free; `guess`
    /// is the guess for the push that will give it back.
    #[inline(always)]
    fn check_taken(
        &self,
        kind: Kind,
        relative: u32,
        guess: u64,
    ) -> Result<Taken<'a>, ProcArrayError> {
        let index = self.config.start(kind) + relative;
        let slot = &self.slots[index as usize];
        let status = slot.status();
        if status.state != FREE {
            // Not pushed back: it is someone's. The caller resets the segment.
            return Err(corrupt_pop(kind, index, status));
        }
        Ok(Taken {
            slot,
            index,
            relative,
            free: status,
            guess,
        })
    }

    /// Takes a slot of `kind` for the calling process, marking it active.
    /// The guard gives it back when dropped.
    #[inline(always)]
    pub fn acquire(&self, kind: Kind) -> Result<SlotGuard<'a>, ProcArrayError> {
        self.acquire_tagged(kind, 0)
    }

    /// As [`acquire`](Self::acquire), recording an opaque `owner_tag`.
    ///
    /// Hot path: one CAS (claiming the slot this thread parked, or else the
    /// pop on the caller's own shard) and plain stores, no system call: the
    /// pid, its start time and the home shard come from a per-thread cache
    /// that a forked child refills (it has another pid). Winning the claim
    /// or the pop makes the slot ours alone (nobody else acts on a FREE
    /// slot: reclaimers only touch ACTIVE or EXITING ones), so the
    /// identity, the latch owner and the ACTIVE status are published by one
    /// release store. A pop is predicted from what this thread's last push
    /// left on the list, and the guard keeps what the pop left for a push
    /// on release (see the free list's docs on hints).
    ///
    /// Always inlined, so that the guard is built in the caller's registers:
    /// returned through memory, it costs a store-forwarding stall (the
    /// callee writes its fields one by one and the caller moves it with
    /// wide loads), a third of the whole pair.
    #[inline(always)]
    pub fn acquire_tagged(
        &self,
        kind: Kind,
        owner_tag: u64,
    ) -> Result<SlotGuard<'a>, ProcArrayError> {
        // The parked claim first, with nothing else live: whatever the
        // compiler spills before a locked instruction waits for it.
        let taken = self.take_parked(kind);
        let me = self.me();
        let list = self.free_list(kind, me.home);
        let taken = match taken {
            Some(taken) => taken,
            None => self.take(kind, me.home, list)?,
        };
        let Taken {
            slot,
            index,
            relative,
            free,
            guess,
        } = taken;
        slot.set_identity(me.pid, me.start_time, kind as u32, owner_tag);
        slot.latch().hand_over(me.pid);
        let active = SlotStatus {
            generation: free.generation.wrapping_add(1),
            state: ACTIVE,
        };
        slot.publish(active);
        Ok(SlotGuard {
            slot,
            place: list.place_taken(relative),
            handle: SlotHandle {
                index,
                generation: active.generation,
            },
            guess,
            parking: self.parking,
        })
    }

    /// The postmaster's path, before `fork`: takes a slot of `kind` for a
    /// child whose pid is not known yet. Keep the handle privately; the
    /// child passes it to [`activate`](Self::activate).
    pub fn assign(&self, kind: Kind, owner_tag: u64) -> Result<SlotHandle, ProcArrayError> {
        let home = self.home_shard();
        let Taken {
            slot, index, free, ..
        } = self.take(kind, home, self.free_list(kind, home))?;
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
        let me = self.me();
        slot.set_identity(me.pid, me.start_time, slot.kind(), slot.owner_tag());
        slot.latch().hand_over(me.pid);
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
        self.reclaim_dead_with(|_| {})
    }

    /// As [`reclaim_dead`](Self::reclaim_dead), calling `before_free` for
    /// each dead owner's slot while it still says who held it, before it
    /// goes back to a free list (and so before anyone can take it again):
    /// the place to free what the owner held elsewhere in shared memory.
    /// With several reclaimers at once, `before_free` may run for a slot
    /// that another one frees, so what it does must be idempotent.
    pub fn reclaim_dead_with(&self, mut before_free: impl FnMut(&Released)) -> Vec<Released> {
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
            before_free(&released);
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
        self.free_list(kind, self.home_shard())
            .push(index - self.config.start(kind))?;
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

    /// Counts free slots of `kind`: those on its lists and those parked.
    /// Only meaningful while no process takes or releases slots of that
    /// kind.
    pub fn count_free_quiescent(&self, kind: Kind) -> Result<u32, ProcArrayError> {
        let mut free = 0u32;
        for shard in 0..self.shards {
            free = free.saturating_add(self.free_list(kind, shard).count_quiescent()?);
        }
        let parked = self
            .kind_slots(kind)
            .iter()
            .filter(|slot| slot.status().state == PARKED)
            .count();
        free = free.saturating_add(parked as u32);
        if free > self.config.size(kind) {
            return Err(ProcArrayError::Corrupt(format!(
                "the {kind} free lists hold {} entries and {parked} slots are parked, of {}",
                free - parked as u32,
                self.config.size(kind)
            )));
        }
        Ok(free)
    }
}

#[cold]
fn corrupt_pop(kind: Kind, index: u32, status: SlotStatus) -> ProcArrayError {
    ProcArrayError::Corrupt(format!(
        "the {kind} free list handed out slot {index}, which is {}",
        status.state_name()
    ))
}

/// What the calling thread needs on the hot path, cached per thread: its
/// process's pid (from [`latch::pid::current`], itself cached and refreshed
/// in a forked child before the child runs any code of ours), the process's
/// start time (for [`ProcArray::reclaim_dead`]'s pid-reuse check; read from
/// `/proc` once per process) and the thread's home-shard ticket.
///
/// Per thread rather than per process, so that threads of one process get
/// homes of their own just as processes do. The entry is keyed by pid: the
/// thread that forks a child lives on in the child with the parent's entry,
/// sees that the pid differs and fills its own, so no fork handler is
/// needed here. Thread-local, so no ordering is involved.
#[cfg(not(loom))]
mod me {
    use std::cell::Cell;

    use shmem::sync::{AtomicU32, Ordering};

    use super::Parked;
    use crate::freelist::PopHint;

    #[derive(Clone, Copy)]
    struct Me {
        /// 0 until filled; the pid the rest belongs to.
        pid: u32,
        ticket: u32,
        start: u64,
    }

    thread_local! {
        static ME: Cell<Me> = const { Cell::new(Me { pid: 0, ticket: 0, start: 0 }) };
    }

    /// The caller's pid, its process's start time and the thread's
    /// home-shard ticket (drawn from `tickets` on first use).
    #[inline]
    pub(super) fn lookup(tickets: &AtomicU32) -> (u32, u64, u32) {
        let pid = latch::pid::current();
        let me = ME.get();
        if me.pid == pid {
            return (pid, me.start, me.ticket);
        }
        fill(pid, tickets)
    }

    thread_local! {
        static HINT: Cell<PopHint> = const { Cell::new(PopHint::NONE) };
        static PARKED: Cell<Parked> = const { Cell::new(Parked::NONE) };
    }

    /// The slot this thread parked last, if it has not taken it back. Not
    /// keyed by pid or array: the claim's CAS checks it (see the array's
    /// docs on parking).
    #[inline]
    pub(super) fn parked() -> Parked {
        PARKED.with(Cell::get)
    }

    #[inline]
    pub(super) fn set_parked(parked: Parked) {
        PARKED.with(|cell| cell.set(parked));
    }

    /// What this thread's last release left on its free list, for its next
    /// acquire (see the free list's docs on hinted pops). Not keyed by
    /// pid: a forked child's inherited hint is checked like any other.
    #[inline]
    pub(super) fn hint() -> PopHint {
        HINT.get()
    }

    #[inline]
    pub(super) fn set_hint(hint: PopHint) {
        // Not `HINT.set`: `LocalKey::set` goes through an out-of-line
        // initializer even for a const thread-local, which perf showed as a
        // seventh of the slot pair.
        HINT.with(|cell| cell.set(hint));
    }

    #[cold]
    fn fill(pid: u32, tickets: &AtomicU32) -> (u32, u64, u32) {
        // Relaxed: the counter only hands out distinct numbers; nothing is
        // published with it.
        let ticket = tickets.fetch_add(1, Ordering::Relaxed);
        let start = shmem::liveness::own_start_time_as(pid);
        ME.set(Me { pid, ticket, start });
        (pid, start, ticket)
    }
}

/// Under loom, modelled threads share one pid and thread-locals are not
/// modelled: no cache, and every thread's home is shard 0 (the models move
/// slots between shards by hand to exercise the scan).
#[cfg(loom)]
mod me {
    use super::Parked;
    use shmem::sync::AtomicU32;

    pub(super) fn lookup(_tickets: &AtomicU32) -> (u32, u64, u32) {
        let pid = latch::pid::current();
        (pid, shmem::liveness::own_start_time_as(pid), 0)
    }

    /// No hints under loom: the free list's own models check hinted pops.
    pub(super) fn hint() -> crate::freelist::PopHint {
        crate::freelist::PopHint::NONE
    }

    pub(super) fn set_hint(_hint: crate::freelist::PopHint) {}

    loom::thread_local! {
        static PARKED: std::cell::Cell<Parked> = std::cell::Cell::new(Parked::NONE);
    }

    /// Modelled per thread, as outside loom: parking is a protocol the
    /// array's models check.
    pub(super) fn parked() -> Parked {
        PARKED.with(std::cell::Cell::get)
    }

    pub(super) fn set_parked(parked: Parked) {
        PARKED.with(|cell| cell.set(parked));
    }
}

impl<'a> Taken<'a> {
    /// Claims `slot` (at `index`, `relative` within its kind), which was
    /// found with the status `parked`; `None` if someone claimed it first.
    #[inline(always)]
    fn claim(
        slot: &'a ProcSlot,
        index: u32,
        relative: u32,
        parked: SlotStatus,
        guess: u64,
    ) -> Option<Self> {
        slot.claim_parked(parked).then_some(Self {
            slot,
            index,
            relative,
            free: SlotStatus {
                state: FREE,
                ..parked
            },
            guess,
        })
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

/// The slot a thread parked: its index and the generation it parked it
/// with. Eight bytes, so that a release writes it with one store.
#[derive(Clone, Copy)]
struct Parked {
    index: u32,
    generation: u32,
}

impl Parked {
    /// Nothing parked: an index in no kind's range.
    const NONE: Self = Self {
        index: u32::MAX,
        generation: 0,
    };

    /// The status word the slot was parked with.
    fn status(self) -> SlotStatus {
        SlotStatus {
            generation: self.generation,
            state: PARKED,
        }
    }
}

/// A slot popped from a free list and found free, or claimed parked.
struct Taken<'a> {
    slot: &'a ProcSlot,
    index: u32,
    /// Its index within the list.
    relative: u32,
    free: SlotStatus,
    /// The guess for the push that gives the slot back to the home shard:
    /// the head word the pop left there (see [`SlotGuard`]).
    guess: u64,
}

/// The calling thread as the hot path needs it; see [`me`].
#[derive(Clone, Copy)]
struct Me {
    pid: u32,
    start_time: u64,
    home: u32,
}

/// A slot held by the calling process; gives it back when dropped.
///
/// Holds just what the release needs, worked out at acquire time: built
/// in the caller's registers when [`ProcArray::acquire`] is inlined, and
/// small when it is not.
pub struct SlotGuard<'a> {
    slot: &'a ProcSlot,
    /// Where the slot goes back: its place on its kind's free list on the
    /// taker's home shard.
    place: Place<'a>,
    handle: SlotHandle,
    /// The head word the slot's pop left: the release's guess of that
    /// list's head (see the free list's docs on hints).
    guess: u64,
    /// Whether the release may park the slot (see the module docs).
    parking: bool,
}

impl std::fmt::Debug for SlotGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("handle", &self.handle)
            .field("slot", self.slot)
            .finish()
    }
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
    #[inline]
    pub fn slot(&self) -> &'a ProcSlot {
        self.slot
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
    /// The owner's release, the other half of the hot path: a check and
    /// one release store to PARKED, which no other thread writes over
    /// without a CAS (see the module docs). If this thread has a slot
    /// parked already: a release store to FREE and the push (one CAS) onto
    /// the taker's home shard, whose hint is kept for this thread's next
    /// pop. The identity fields are left as they were; every reader looks
    /// at the state first, and a free slot's identity means nothing.
    ///
    /// A store, not a CAS, because nobody else writes the status of a live
    /// owner's ACTIVE slot: reclaimers act only on owners found dead by pid
    /// and start time, and the postmaster's `release_assigned` only on the
    /// slots it assigned. What remains is a reset of the segment while we
    /// run, which rewrites every slot (see [`ProcArray::init`]): the check
    /// below sees a reset that came before it, and a reset that lands
    /// between the check and the push is the window the crate docs
    /// describe, which a CAS here would only narrow by a few instructions.
    #[inline]
    fn drop(&mut self) {
        let slot = self.slot();
        let handle = self.handle;
        let free = SlotStatus {
            generation: handle.generation,
            state: FREE,
        };
        // Only our own tenancy is ours to clear: after a reset of the
        // segment (or a reclaim that misjudged us) the latch and the
        // critical-section depth may belong to the slot's next tenant.
        let active = SlotStatus {
            state: ACTIVE,
            ..free
        };
        if slot.status() != active {
            return;
        }
        slot.reset_critical();
        if self.parking && may_park(handle.index) {
            // The latch stays ours while the slot is parked (see the module
            // docs): whoever claims it next hands it over.
            let parked = Parked {
                index: handle.index,
                generation: handle.generation.wrapping_add(1),
            };
            slot.publish(parked.status());
            me::set_parked(parked);
            return;
        }
        slot.latch().hand_over(0);
        slot.publish(free);
        match self.place.push_guessed(self.guess) {
            Some(hint) => me::set_hint(hint),
            None => push_missed(self.place),
        }
    }
}

/// Whether this thread may park slot `index` on release: it has no slot
/// parked, or the entry is this slot's own, left from taking it back.
#[inline]
fn may_park(index: u32) -> bool {
    let kept = me::parked().index;
    kept == Parked::NONE.index || kept == index
}

/// A release's push when its guess was wrong: out of line, and keeping
/// the hint itself rather than merging it with the hot path's.
#[cold]
#[inline(never)]
fn push_missed(place: Place<'_>) {
    // Contended: the slot leaks until the next reset.
    if let Ok(hint) = place.push() {
        me::set_hint(hint);
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

/// Heap storage for an array with `shards` free lists per kind.
#[cfg(test)]
struct Storage {
    slots: Vec<ProcSlot>,
    links: Vec<AtomicU32>,
    heads: Vec<FreeListHead>,
    config: ProcArrayConfig,
}

#[cfg(test)]
impl Storage {
    fn new(config: ProcArrayConfig, shards: usize) -> Self {
        let total = config.total() as usize;
        let storage = Self {
            slots: (0..total).map(|_| ProcSlot::default()).collect(),
            links: (0..total).map(|_| AtomicU32::new(0)).collect(),
            heads: (0..shards * Kind::ALL.len())
                .map(|_| FreeListHead::default())
                .collect(),
            config,
        };
        storage.procs().fill_free_lists();
        storage
    }

    fn procs(&self) -> ProcArray<'_> {
        ProcArray::from_parts(&self.slots, &self.links, &self.heads, self.config)
            .expect("storage fits")
    }

    /// Moves the top free slot of `kind` from shard `from` to shard `to`, as
    /// a process homed on `to` that took it and gave it back would.
    fn move_free(&self, kind: Kind, from: u32, to: u32) {
        let procs = self.procs();
        let slot = procs
            .free_list(kind, from)
            .pop()
            .expect("consistent")
            .expect("a free slot");
        procs.free_list(kind, to).push(slot).expect("in range");
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const CONFIG: ProcArrayConfig = ProcArrayConfig {
        workers: 1,
        backends: 3,
    };

    /// Takes all three backend slots, and checks that a fourth acquire
    /// reports exhaustion.
    fn take_every_backend_slot(procs: ProcArray<'_>) -> Vec<SlotGuard<'_>> {
        let held: Vec<_> = (0..3)
            .map(|_| procs.acquire(Kind::Backend).unwrap())
            .collect();
        assert_eq!(
            procs.acquire(Kind::Backend).unwrap_err(),
            ProcArrayError::NoFreeSlot {
                kind: Kind::Backend,
                size: 3
            }
        );
        held
    }

    #[test]
    fn storage_that_does_not_fit_is_refused() {
        let s = Storage::new(CONFIG, 2);
        let c = CONFIG;
        assert!(ProcArray::from_parts(&s.slots, &s.links, &s.heads[..3], c).is_err());
        assert!(ProcArray::from_parts(&s.slots, &s.links[..3], &s.heads, c).is_err());
        let three: Vec<_> = (0..6).map(|_| FreeListHead::default()).collect();
        assert!(
            ProcArray::from_parts(&s.slots, &s.links, &three, c).is_err(),
            "shards must be a power of two"
        );
        let strided: Vec<_> = (0..4 * LINK_STRIDE).map(|_| AtomicU32::new(0)).collect();
        assert!(ProcArray::from_parts(&s.slots, &strided, &s.heads, c).is_ok());
    }

    #[test]
    fn slots_on_other_shards_are_found_and_exhaustion_is_exact() {
        let s = Storage::new(CONFIG, 4);
        // Spread the backend slots over shards 1, 2 and 3: whatever our home
        // shard is, at least two slots are elsewhere.
        for to in 1..4 {
            s.move_free(Kind::Backend, 0, to);
        }
        let procs = s.procs();
        assert_eq!(procs.count_free_quiescent(Kind::Backend), Ok(3));
        let held = take_every_backend_slot(procs);
        let mut indices: Vec<_> = held.iter().map(|g| g.index()).collect();
        indices.sort_unstable();
        assert_eq!(indices, [1, 2, 3]);
        drop(held);
        assert_eq!(procs.count_free_quiescent(Kind::Backend), Ok(3));
        assert_eq!(procs.count_free_quiescent(Kind::Worker), Ok(1));
        // Released slots went to one shard, our home; all can be had again.
        let again: Vec<_> = (0..3)
            .map(|_| procs.acquire(Kind::Backend).unwrap())
            .collect();
        assert_eq!(again.len(), 3);
    }

    #[test]
    fn a_released_slot_is_parked_and_its_thread_takes_it_back() {
        let s = Storage::new(CONFIG, 1);
        let procs = s.procs();
        let guard = procs.acquire(Kind::Backend).unwrap();
        let (index, generation) = (guard.index(), guard.handle().generation);
        drop(guard);
        let slot = procs.get(index).unwrap();
        assert_eq!(
            slot.status(),
            SlotStatus {
                generation: generation + 1,
                state: PARKED
            }
        );
        assert!(slot.status().is_free());
        assert!(procs.find_pid(std::process::id()).is_none());
        // The latch stays with the parking process; a push clears it.
        let me = Some(std::process::id());
        assert_eq!(slot.latch().owner(), me);
        // Parked, not listed, and still counted free.
        assert_eq!(procs.free_list(Kind::Backend, 0).count_quiescent(), Ok(2));
        assert_eq!(procs.count_free_quiescent(Kind::Backend), Ok(3));
        let again = procs.acquire(Kind::Backend).unwrap();
        assert_eq!(again.index(), index);
        assert_eq!(again.handle().generation, generation + 2);
        assert_eq!(procs.free_list(Kind::Backend, 0).count_quiescent(), Ok(2));
        // A second release while one slot is parked goes to the list.
        let other = procs.acquire(Kind::Backend).unwrap();
        let other_index = other.index();
        drop(again);
        drop(other);
        assert_eq!(procs.get(other_index).unwrap().status().state, FREE);
        assert_eq!(procs.get(other_index).unwrap().latch().owner(), None);
        assert_eq!(slot.latch().owner(), me);
        assert_eq!(procs.free_list(Kind::Backend, 0).count_quiescent(), Ok(2));
    }

    #[test]
    fn a_view_without_parking_pushes_every_release() {
        let s = Storage::new(CONFIG, 1);
        let procs = s.procs().without_parking();
        let guard = procs.acquire(Kind::Backend).unwrap();
        let index = guard.index();
        drop(guard);
        assert_eq!(procs.get(index).unwrap().status().state, FREE);
        assert_eq!(procs.get(index).unwrap().latch().owner(), None);
        assert_eq!(procs.free_list(Kind::Backend, 0).count_quiescent(), Ok(3));
    }

    #[test]
    fn a_slot_parked_by_another_thread_is_taken_when_the_lists_are_empty() {
        let s = Storage::new(CONFIG, 2);
        let parked = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let guard = s.procs().acquire(Kind::Backend).unwrap();
                    guard.index()
                })
                .join()
                .unwrap()
        });
        let procs = s.procs();
        assert_eq!(procs.get(parked).unwrap().status().state, PARKED);
        // Three slots, one parked by a thread that has ended: all three can
        // be had, and then none.
        let held = take_every_backend_slot(procs);
        assert!(held.iter().any(|g| g.index() == parked));
        drop(held);
        assert_eq!(procs.count_free_quiescent(Kind::Backend), Ok(3));
    }

    #[test]
    fn a_parked_slot_of_another_array_is_left_for_that_array() {
        let (a, b) = (Storage::new(CONFIG, 1), Storage::new(CONFIG, 1));
        let index = {
            let guard = a.procs().acquire(Kind::Backend).unwrap();
            guard.index()
        };
        // This thread's parked entry names a slot of `a`; `b`'s same slot
        // is listed, not parked, so the claim fails and `b` pops instead.
        let in_b = b.procs().acquire(Kind::Backend).unwrap();
        assert_eq!(in_b.status().state, ACTIVE);
        assert_eq!(a.procs().get(index).unwrap().status().state, PARKED);
        assert_eq!(a.procs().count_free_quiescent(Kind::Backend), Ok(3));
        drop(in_b);
        assert_eq!(b.procs().count_free_quiescent(Kind::Backend), Ok(3));
        // `a`'s parked slot can still be had there, by anyone.
        let all: Vec<_> = (0..3)
            .map(|_| a.procs().acquire(Kind::Backend).unwrap())
            .collect();
        assert!(all.iter().any(|g| g.index() == index));
    }

    #[test]
    fn a_slot_listed_on_two_shards_is_reported() {
        let s = Storage::new(CONFIG, 2);
        let procs = s.procs();
        // Scribble: list worker slot 0 on shard 1 as well.
        procs.free_list(Kind::Worker, 1).push(0).unwrap();
        assert!(matches!(
            procs.count_free_quiescent(Kind::Worker),
            Err(ProcArrayError::Corrupt(_))
        ));
    }

    #[test]
    fn the_home_ticket_is_stable_within_a_process() {
        let s = Storage::new(CONFIG, 8);
        let procs = s.procs();
        let me = procs.me();
        assert_eq!(procs.home_shard(), me.home);
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.start_time, shmem::liveness::own_start_time());
        // A guard gives its slot back to the shard it was taken for.
        let guard = procs.acquire(Kind::Backend).unwrap();
        let home = procs.free_list(Kind::Backend, me.home);
        assert!(std::ptr::eq(guard.place.head(), home.head()));
    }
}

/// loom: slots moving between shards never make a scan report a spurious
/// `NoFreeSlot`, and are never handed to two owners.
///
/// Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --lib loom_`
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    const CONFIG: ProcArrayConfig = ProcArrayConfig {
        workers: 0,
        backends: 2,
    };

    /// Counts the holders of each slot; a second holder fails the model.
    struct Holders(Vec<AtomicU32>);

    impl Holders {
        fn new(n: usize) -> Self {
            Self((0..n).map(|_| AtomicU32::new(0)).collect())
        }

        fn hold<'a>(&self, guard: SlotGuard<'a>) -> Held<'_, 'a> {
            assert_eq!(guard.status().state, ACTIVE);
            // SeqCst: the model's own bookkeeping, not the protocol's.
            let before = self.0[guard.index() as usize].fetch_add(1, Ordering::SeqCst);
            assert_eq!(before, 0, "slot {} handed to two holders", guard.index());
            Held {
                holders: self,
                guard: Some(guard),
            }
        }
    }

    /// The guard, or `None` for `NoFreeSlot`; any other error fails.
    fn taken_or_exhausted(
        acquired: Result<SlotGuard<'_>, ProcArrayError>,
    ) -> Option<SlotGuard<'_>> {
        match acquired {
            Ok(guard) => Some(guard),
            Err(ProcArrayError::NoFreeSlot { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    /// A guard counted in [`Holders`]; uncounted before it releases.
    struct Held<'h, 'a> {
        holders: &'h Holders,
        guard: Option<SlotGuard<'a>>,
    }

    impl Drop for Held<'_, '_> {
        fn drop(&mut self) {
            let guard = self.guard.take().expect("dropped once");
            // SeqCst: as in hold().
            self.holders.0[guard.index() as usize].fetch_sub(1, Ordering::SeqCst);
            drop(guard);
        }
    }

    /// Two slots, one list. A takes a slot (unless B holds both) and
    /// releases it, which parks it with A, and then ends. B takes two
    /// slots: its second acquire may find the list empty, and must then
    /// find A's parked slot by the scan, unless A had not released it yet
    /// when the acquire began. Nobody ever shares
    /// a slot, and at the end both are free (one parked, or both).
    #[test]
    fn loom_parked_slots_are_found_by_others_and_never_shared() {
        loom::model(|| {
            let storage = Arc::new(Storage::new(CONFIG, 1));
            let holders = Arc::new(Holders::new(2));
            let released = Arc::new(AtomicU32::new(0));
            let a = {
                let (storage, holders, released) =
                    (storage.clone(), holders.clone(), released.clone());
                thread::spawn(move || {
                    let procs = storage.procs();
                    // B may have taken both first.
                    if let Some(guard) = taken_or_exhausted(procs.acquire(Kind::Backend)) {
                        drop(holders.hold(guard));
                    }
                    // SeqCst: orders the release before B's check below.
                    released.store(1, Ordering::SeqCst);
                })
            };
            let b = {
                let (storage, holders, released) =
                    (storage.clone(), holders.clone(), released.clone());
                thread::spawn(move || {
                    let procs = storage.procs();
                    let first = holders.hold(procs.acquire(Kind::Backend).expect("one is free"));
                    // SeqCst: see A's store.
                    let a_was_done = released.load(Ordering::SeqCst) == 1;
                    match procs.acquire(Kind::Backend) {
                        Ok(second) => drop(holders.hold(second)),
                        Err(e) => {
                            assert!(matches!(e, ProcArrayError::NoFreeSlot { .. }), "{e}");
                            assert!(!a_was_done, "A's parked slot was not found");
                        }
                    }
                    drop(first);
                })
            };
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(storage.procs().count_free_quiescent(Kind::Backend), Ok(2));
        });
    }

    /// One slot. A takes it, parks it and claims it back while B tries to
    /// take it (a stranger's claim of the parked slot). One of them wins
    /// each time, the other reports `NoFreeSlot`, and the slot is free at
    /// the end.
    #[test]
    fn loom_a_parked_slot_goes_to_one_claimant() {
        const ONE: ProcArrayConfig = ProcArrayConfig {
            workers: 0,
            backends: 1,
        };
        loom::model(|| {
            let storage = Arc::new(Storage::new(ONE, 1));
            let holders = Arc::new(Holders::new(1));
            let a = {
                let (storage, holders) = (storage.clone(), holders.clone());
                thread::spawn(move || {
                    let procs = storage.procs();
                    for _ in 0..2 {
                        if let Some(guard) = taken_or_exhausted(procs.acquire(Kind::Backend)) {
                            drop(holders.hold(guard));
                        }
                    }
                })
            };
            let b = {
                let (storage, holders) = (storage.clone(), holders.clone());
                thread::spawn(move || {
                    let procs = storage.procs();
                    if let Some(guard) = taken_or_exhausted(procs.acquire(Kind::Backend)) {
                        drop(holders.hold(guard));
                    }
                })
            };
            a.join().unwrap();
            b.join().unwrap();
            assert_eq!(storage.procs().count_free_quiescent(Kind::Backend), Ok(1));
        });
    }

    /// A one-shot event for one waiter, with the happens-before edge of a
    /// release and an acquire. loom's `Notify` alone may wake spuriously,
    /// and a spin on an atomic alone makes too many branches.
    #[derive(Default)]
    struct Flag {
        raised: loom::sync::atomic::AtomicBool,
        notify: loom::sync::Notify,
    }

    impl Flag {
        fn raise(&self) {
            // Release: pairs with the acquire load in wait_for().
            self.raised.store(true, Ordering::Release);
            self.notify.notify();
        }

        fn wait_for(&self) {
            // Acquire: see raise().
            while !self.raised.load(Ordering::Acquire) {
                self.notify.wait();
            }
        }
    }

    /// What the threads of a straddle model share: two slots, a record of
    /// who holds them, and `N` one-shot flags.
    struct Scene<const N: usize> {
        storage: Storage,
        holders: Holders,
        flags: [Flag; N],
    }

    impl<const N: usize> Scene<N> {
        fn new(storage: Storage) -> Arc<Self> {
            Arc::new(Self {
                storage,
                holders: Holders::new(2),
                flags: [(); N].map(|()| Flag::default()),
            })
        }

        /// Runs each of `threads` on a thread of its own, joins them, and
        /// checks that both slots are free again.
        fn play<const K: usize>(scene: Arc<Self>, threads: [fn(&Self); K]) {
            let handles = threads.map(|body| {
                let scene = scene.clone();
                thread::spawn(move || body(&scene))
            });
            for handle in handles {
                handle.join().unwrap();
            }
            let procs = scene.storage.procs();
            assert_eq!(procs.count_free_quiescent(Kind::Backend), Ok(2));
        }
    }

    /// Two slots, one list, neither on it: A holds one, D has parked the other.
    /// Then A releases (parking its slot), D takes its own back, and B
    /// acquires. From the start of B's acquire on, a slot is always free,
    /// so B and D must both get one. B's scan can see A's slot still
    /// active and then D's active again; only the generation sum tells its
    /// second look that a slot was parked in between (see the module docs),
    /// and only if that look sees A's parking: the claim's CAS must release
    /// on success and acquire on failure (see `ProcSlot::claim_parked`).
    /// Taking out the sum, or either ordering, fails this model.
    #[test]
    fn loom_a_slot_parked_during_the_scan_is_not_missed() {
        // One preemption is enough for the scan to straddle both changes,
        // and the model's waits make every bound above it slow (minutes).
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(1);
        model.check(|| {
            // Flags: a_holds, d_parked, a_released, b_done.
            Scene::play(
                Scene::<4>::new(Storage::new(CONFIG, 1)),
                [
                    // A
                    |scene| {
                        let procs = scene.storage.procs();
                        let taken = procs.acquire(Kind::Backend).expect("two are free");
                        let held = scene.holders.hold(taken);
                        scene.flags[0].raise();
                        drop(held);
                        scene.flags[2].raise();
                    },
                    // D
                    |scene| {
                        let procs = scene.storage.procs();
                        let taken = procs.acquire(Kind::Backend).expect("one is free");
                        drop(scene.holders.hold(taken));
                        scene.flags[1].raise();
                        scene.flags[2].wait_for();
                        let again = procs.acquire(Kind::Backend).expect("A's or D's is free");
                        let held = scene.holders.hold(again);
                        scene.flags[3].wait_for();
                        drop(held);
                    },
                    // B
                    |scene| {
                        let procs = scene.storage.procs();
                        scene.flags[0].wait_for();
                        scene.flags[1].wait_for();
                        let taken = procs.acquire(Kind::Backend);
                        drop(
                            scene
                                .holders
                                .hold(taken.expect("a slot was free all along")),
                        );
                        scene.flags[3].raise();
                    },
                ],
            );
        });
    }

    /// The same straddle on the list heads. Two slots, two shards, views
    /// without parking: X holds the slot from shard 0, the other waits on
    /// shard 1. X pushes its slot back, and then Y pops shard 1's (and
    /// keeps it, FREE and unpublished, as between a pop and an
    /// activation). B acquires once X holds, with a slot free throughout.
    /// B can read shard 0 empty before X's push and shard 1 empty after
    /// Y's pop; its second look at shard 0 must see the push, so a pop's
    /// CAS must release what came before it (see `FreeList::try_pop`).
    #[test]
    fn loom_a_push_during_the_scan_is_not_missed() {
        let mut model = loom::model::Builder::new();
        // As in the model above.
        model.preemption_bound = Some(1);
        model.check(|| {
            let storage = Storage::new(CONFIG, 2);
            storage.move_free(Kind::Backend, 0, 1);
            // Flags: x_holds, x_released, b_done.
            Scene::play(
                Scene::<3>::new(storage),
                [
                    // X
                    |scene| {
                        let procs = scene.storage.procs().without_parking();
                        let taken = procs.acquire(Kind::Backend).expect("two are free");
                        let held = scene.holders.hold(taken);
                        scene.flags[0].raise();
                        drop(held);
                        scene.flags[1].raise();
                    },
                    // Y
                    |scene| {
                        let shard_1 = scene.storage.procs().free_list(Kind::Backend, 1);
                        scene.flags[1].wait_for();
                        // B may have popped it first; then there is nothing to
                        // keep or give back.
                        let kept = shard_1.pop().expect("consistent");
                        scene.flags[2].wait_for();
                        if let Some(index) = kept {
                            shard_1.push(index).expect("in range");
                        }
                    },
                    // B
                    |scene| {
                        let procs = scene.storage.procs().without_parking();
                        scene.flags[0].wait_for();
                        let taken = procs.acquire(Kind::Backend);
                        drop(
                            scene
                                .holders
                                .hold(taken.expect("a slot was free all along")),
                        );
                        scene.flags[2].raise();
                    },
                ],
            );
        });
    }

    /// Two slots, two shards, two threads that each hold at most one slot
    /// at a time: every acquire must succeed. One slot starts on each shard;
    /// every thread's home is shard 0 under loom, so each release moves a
    /// slot to shard 0 while the other thread may be scanning shard 1: the
    /// double collect must catch that move rather than report exhaustion.
    #[test]
    fn loom_moving_slots_never_look_exhausted() {
        loom::model(|| {
            let storage = Arc::new(Storage::new(CONFIG, 2));
            storage.move_free(Kind::Backend, 0, 1);
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let storage = storage.clone();
                    thread::spawn(move || {
                        // Parking would keep each slot with its thread.
                        let procs = storage.procs().without_parking();
                        for _ in 0..2 {
                            let guard = procs
                                .acquire(Kind::Backend)
                                .expect("a slot is always free for us");
                            assert_eq!(guard.status().state, ACTIVE);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(storage.procs().count_free_quiescent(Kind::Backend), Ok(2));
        });
    }
}
