//! A bounded multi-producer single-consumer ring of `Pod` values, after
//! Dmitry Vyukov's bounded MPMC queue: every cell carries a state word
//! stamped with the lap (`position / capacity`) it belongs to, so producers
//! never read the consumer's index on the fast path and a stale view can
//! never be mistaken for a fresh one.
//!
//! # Protocol
//!
//! | field          | written by                                   | read by |
//! |----------------|----------------------------------------------|---------|
//! | `tail`         | any producer (CAS, a hint only)               | producers |
//! | `head`         | the consumer (`Release`)                      | producers when the ring looks full, bystanders |
//! | cell state     | producers: claim (CAS), publish (`Release`); consumer: free (`Release`); supervisor: poison (CAS) | all |
//! | cell value     | the producer holding the claim                | the consumer, after seeing FULL |
//! | role words     | claimants (CAS)                               | the supervisor |
//!
//! A cell's state word packs `lap << 18 | producer << 2 | kind`:
//!
//! - `EMPTY(lap)`: free for the position of that lap. All-zero is
//!   `EMPTY(0)`, so a zeroed ring is an empty one.
//! - `CLAIMED(lap, producer)`: that producer owns the cell and is writing it.
//! - `FULL(lap, producer)`: the value is written; the consumer may take it.
//! - `POISONED(lap, producer)`: the claim was abandoned (its producer died);
//!   the consumer skips the cell and reports the loss once.
//!
//! Vyukov's queue claims a position by a CAS on `tail` and only then marks
//! the cell, which leaves a window in which a claim belongs to nobody. Here
//! the claim *is* the CAS of the cell's state from `EMPTY(lap)` to
//! `CLAIMED(lap, id)`, so every claim names its producer from the first
//! instant; `tail` only tells producers where to try, and any producer that
//! finds the cell at `tail` already taken helps advance it. Hence at most
//! one claimed position lies at or beyond `tail` (the one at `tail`), and
//! `0 <= tail - head <= capacity` once the consumer has published `head`
//! (it frees cells first, so for a moment producers may be up to a batch
//! ahead of the published `head`, never of the cells it has freed).
//!
//! Push (position `p = tail`, lap `L`):
//!
//! 1. load the cell state (`Acquire`, pairs with the consumer's `Release`
//!    store of `EMPTY(L)` after it copied the previous lap's value out);
//! 2. `EMPTY(L)`: CAS it to `CLAIMED(L, id)` (`Acquire`, same pairing), CAS
//!    `tail` from `p` to `p + 1`, write the value, store `FULL(L, id)`
//!    (`Release`, pairs with the consumer's `Acquire` load);
//! 3. claimed/full/poisoned in lap `L`, or `EMPTY(L + 1)`: someone has the
//!    position already; help advance `tail`, retry;
//! 4. a state of lap `L - 1`: the consumer has not freed the cell; if `head`
//!    (`Acquire`) confirms `p - head >= capacity`, the ring is full;
//!    otherwise the consumer freed it since, and a reload sees that;
//! 5. anything else: a stale `tail`, retried; the same contradictory
//!    (position, state) seen over and over is reported as [`Corrupt`].
//!
//! Pop (position `h = head`, lap `L`): `FULL(L)` → copy the value, store
//! `EMPTY(L + 1)`, store `head = h + 1`; `CLAIMED(L, id)` →
//! [`MpscPopError::InFlight`]; `POISONED(L, id)` → store `EMPTY(L + 1)`,
//! advance, [`MpscPopError::Abandoned`]; `EMPTY(L)` → empty; anything else
//! is corrupt.
//!
//! # A producer that dies mid-message
//!
//! Its cell stays `CLAIMED(L, id)` and the consumer reports
//! [`MpscPopError::InFlight`] at that position, naming the producer slot;
//! nothing behind it can be delivered out of order. (A live producer is in
//! that state for a few instructions; one descheduled for longer is
//! indistinguishable from a dead one, which is why the consumer only
//! reports.) The supervisor, once it has reaped the process, calls
//! [`MpscRing::recover_owner`] with its owner token: every cell
//! claimed by that owner's slots becomes `POISONED`, the slots are freed,
//! and the consumer reports each lost message once as
//! [`MpscPopError::Abandoned`] before continuing. A handle that is dropped
//! with an uncommitted [`MpscClaim`] (a panic while filling it) poisons its
//! own cell the same way.
//!
//! A consumer that dies between copying a value and freeing the cell leaves
//! it `FULL`, and the next consumer receives it again (at least once across
//! a consumer crash); one that dies after freeing it but before storing
//! `head` is caught up by the next consumer, which skips cells already
//! freed for the next lap.
//!
//! # Producers sharing a CPU
//!
//! A producer preempted between its claim and its commit holds up the
//! consumer for as long as it stays off the CPU, and that is no rare
//! window: the claiming CAS waits for the cell's cache line from the
//! consumer's CPU, and a timer interrupt that arrives meanwhile is taken
//! as soon as it retires. If another producer on that CPU then finds the
//! ring full and spins, it keeps the CPU from the one it waits for until
//! the scheduler's slice runs out. So a producer that keeps finding the
//! ring full should yield (`std::thread::yield_now`) after a short spin:
//! measured with two producer processes on one CPU (`postmaster bench
//! ring`), spinning lost a third of the run to such stalls, and yielding
//! raised throughput by about half.
//!
//! ```
//! use shmem::{Layout, Segment, ring::{MpscRing, MpscPopError}};
//!
//! let layout = Layout::builder().mpsc_ring::<u64>("jobs", 64).build()?;
//! let segment = Segment::create(&layout)?;
//! let ring = MpscRing::<u64>::from_segment(&segment, "jobs")?;
//! let mut a = ring.producer(101)?;
//! let mut b = ring.producer(102)?;
//! let mut rx = ring.consumer(100)?;
//! a.try_push(1)?;
//! b.try_push(2)?;
//! assert_eq!(rx.try_pop(), Ok(1));
//! assert_eq!(rx.try_pop(), Ok(2));
//! assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use bytemuck::Pod;
use thiserror::Error;

use super::{Corrupt, Line, RingError, check_capacity, check_owner, claim_role, release_role};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell, spin_loop};

/// How many producers one ring admits at a time (one role word each; the id
/// in a cell state is the slot index).
pub const MAX_PRODUCERS: usize = 32;

const KIND_MASK: u64 = 0b11;
/// Free for the position of its lap.
const EMPTY: u64 = 0;
/// Owned by the producer named in the state; being written.
const CLAIMED: u64 = 1;
/// Written; the consumer may take it.
const FULL: u64 = 2;
/// Abandoned by a dead producer; the consumer skips it and reports it.
const POISONED: u64 = 3;
const ID_SHIFT: u32 = 2;
const ID_MASK: u64 = 0xffff;
const LAP_SHIFT: u32 = 18;
/// Laps are compared modulo 2^46: two states of the same cell are never
/// that many laps apart.
const LAP_MASK: u64 = (1 << (64 - LAP_SHIFT)) - 1;

/// How many times in a row a producer may see the *same* contradictory
/// observation (same position, same cell state word) before it calls the
/// ring corrupt. In a correct ring a contradiction is a store not yet
/// visible, which the next reload (after an `Acquire` load of `head`, or of
/// a fresher `tail`) resolves; a state that stays put is garbage.
const MAX_INCONSISTENT: u32 = 1 << 10;

/// A decoded cell state word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CellState {
    lap: u64,
    producer: u16,
    kind: u64,
}

impl CellState {
    fn decode(word: u64) -> Self {
        Self {
            lap: word >> LAP_SHIFT,
            producer: ((word >> ID_SHIFT) & ID_MASK) as u16,
            kind: word & KIND_MASK,
        }
    }

    fn encode(lap: u64, kind: u64, producer: u16) -> u64 {
        ((lap & LAP_MASK) << LAP_SHIFT) | (u64::from(producer) << ID_SHIFT) | kind
    }
}

/// The shared header of an [`MpscRing`]; all-zero is an empty ring with no
/// role taken.
#[derive(Debug, Default)]
#[repr(C)]
pub struct MpscRingHeader {
    /// The next position to claim, as far as producers know (a hint: the
    /// cell states decide).
    tail: Line<AtomicU64>,
    /// Count of values (and poisoned cells) consumed. Consumer only.
    head: Line<AtomicU64>,
    /// Owner token of the consumer, 0 when free.
    consumer: Line<AtomicU32>,
    /// Owner token of each producer slot, 0 when free.
    producers: Line<[AtomicU32; MAX_PRODUCERS]>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<MpscRingHeader>() == 4 * crate::CACHE_LINE);
    assert!(align_of::<MpscRingHeader>() == crate::CACHE_LINE);
};

// SAFETY: repr(C) of atomics on padded lines; any bytes valid; no pointers.
#[cfg(not(loom))]
unsafe impl crate::ShmSafe for MpscRingHeader {}

impl MpscRingHeader {
    /// An empty ring's header.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One cell of an [`MpscRing`]: a state word and a value.
#[derive(Debug, Default)]
#[repr(C)]
pub struct MpscCell<T> {
    state: AtomicU64,
    value: UnsafeCell<T>,
}

// SAFETY: the value is written only by the producer whose CAS claimed the
// cell and read only by the consumer after an Acquire load of FULL; the
// state word orders the two (module docs).
unsafe impl<T: Send> Sync for MpscCell<T> {}

// SAFETY: repr(C) of an atomic and a Pod value: any bytes valid (a garbage
// state decodes to a state the protocol checks), no pointers, mutation
// through the state protocol.
#[cfg(not(loom))]
unsafe impl<T: Pod + Send> crate::ShmSafe for MpscCell<T> {}

impl<T: Pod> MpscCell<T> {
    fn zeroed() -> Self {
        Self {
            state: AtomicU64::new(0),
            value: UnsafeCell::new(T::zeroed()),
        }
    }
}

/// What [`MpscRing::recover_owner`] cleaned up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Producer slots freed.
    pub producers: usize,
    /// Claimed cells turned into poisoned ones (messages lost).
    pub abandoned: usize,
}

/// A view of an MPSC ring; hands out producers and the consumer. See the
/// module docs.
#[derive(Debug)]
pub struct MpscRing<'a, T> {
    header: &'a MpscRingHeader,
    cells: &'a [MpscCell<T>],
}

impl<T> Clone for MpscRing<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for MpscRing<'_, T> {}

impl<'a, T: Pod + Send> MpscRing<'a, T> {
    /// A view over `header` and `cells`; `cells.len()` is the capacity and
    /// must be a power of two.
    pub fn new(header: &'a MpscRingHeader, cells: &'a [MpscCell<T>]) -> Result<Self, RingError> {
        check_capacity(cells.len(), 1)?;
        Ok(Self { header, cells })
    }

    /// The ring reserved as `name` by
    /// [`LayoutBuilder::mpsc_ring`](crate::LayoutBuilder::mpsc_ring).
    #[cfg(not(loom))]
    pub fn from_segment(segment: &'a crate::Segment, name: &str) -> Result<Self, RingError> {
        Self::new(
            segment.region(name)?,
            segment.array(&super::cells_region_name(name))?,
        )
    }

    /// How many values the ring holds when full.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// Positions claimed but not yet consumed, as a momentary snapshot
    /// (includes in-flight claims).
    pub fn len(&self) -> Result<usize, Corrupt> {
        // Acquire: pairs with the consumer's Release store of `head`; tail
        // is loaded after it for the same reason as in SpscRing::len.
        let head = self.header.head.0.load(Ordering::Acquire);
        // Relaxed: tail is a hint; a snapshot tolerates a stale one.
        let tail = self.header.tail.0.load(Ordering::Relaxed);
        if head.wrapping_sub(tail) < 1 << 63 {
            return Ok(0);
        }
        // `tail - head` may exceed the capacity by the consumer's unpublished
        // batch (see MpscProducer::claim), never by a whole lap more.
        let used = tail.wrapping_sub(head);
        if used > 2 * self.capacity() as u64 {
            return Err(Corrupt::new("tail - head exceeds capacity", head, tail));
        }
        Ok((used as usize).min(self.capacity()))
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> Result<bool, Corrupt> {
        self.len().map(|n| n == 0)
    }

    /// Registers a producer for `owner` (normally
    /// [`own_token`](super::own_token)) in a free producer slot.
    pub fn producer(&self, owner: u32) -> Result<MpscProducer<'a, T>, RingError> {
        check_owner(owner)?;
        for (id, word) in self.header.producers.0.iter().enumerate() {
            if claim_role(word, owner, "producer").is_ok() {
                let shift = self.capacity().trailing_zeros();
                return Ok(MpscProducer {
                    ring: *self,
                    id: id as u16,
                    owner,
                    mask: self.capacity() as u64 - 1,
                    shift,
                });
            }
        }
        Err(RingError::NoProducerSlot)
    }

    /// Claims the consumer role for `owner`. Catches up past cells that a
    /// previous consumer freed without publishing `head` (it died between
    /// the two stores).
    pub fn consumer(&self, owner: u32) -> Result<MpscConsumer<'a, T>, RingError> {
        claim_role(&self.header.consumer.0, owner, "consumer")?;
        let mut consumer = MpscConsumer {
            ring: *self,
            owner,
            mask: self.capacity() as u64 - 1,
            shift: self.capacity().trailing_zeros(),
            // Relaxed: the consumer is the only writer of `head`, and the
            // Acquire of the role claim ordered us after the last one.
            head: self.header.head.0.load(Ordering::Relaxed),
        };
        // Bounded: at most one lap of cells can have been freed ahead.
        for _ in 0..self.capacity() {
            let position = consumer.head;
            let lap = consumer.lap_of(position);
            // Acquire: pairs with the Release store of EMPTY(lap + 1) by the
            // consumer that freed it.
            let state = CellState::decode(consumer.cell(position).state.load(Ordering::Acquire));
            if state.kind == EMPTY && state.lap == (lap + 1) & LAP_MASK {
                consumer.head = position.wrapping_add(1);
            } else {
                break;
            }
        }
        // Release: pairs with the Acquire load of `head` in a producer's
        // full check.
        self.header.head.0.store(consumer.head, Ordering::Release);
        Ok(consumer)
    }

    /// The owner token of producer slot `id` (as named by
    /// [`MpscPopError::InFlight`]), or 0 if the slot is free.
    pub fn producer_owner(&self, id: u16) -> u32 {
        // Relaxed: informational.
        self.header
            .producers
            .0
            .get(usize::from(id))
            .map_or(0, |word| word.load(Ordering::Relaxed))
    }

    /// For a supervisor that has reaped the process `owner` names: poisons
    /// every cell claimed by that owner's producer slots (so the consumer
    /// reports each lost message as [`MpscPopError::Abandoned`] and moves
    /// on) and frees the slots. Also frees the consumer role if `owner`
    /// held it. Bounded: one pass over the cells per slot.
    ///
    /// # Safety
    ///
    /// The process (or thread) that registered under `owner` must be gone
    /// for good: a poisoned cell is handed to the next lap's producer, which
    /// would race with a still-running writer.
    pub unsafe fn recover_owner(&self, owner: u32) -> Recovered {
        let mut recovered = Recovered::default();
        for (id, word) in self.header.producers.0.iter().enumerate() {
            // Acquire: pairs with the claim; we then look at its cells.
            if owner == 0 || word.load(Ordering::Acquire) != owner {
                continue;
            }
            for cell in self.cells {
                // Acquire: pairs with the claim CAS, so the state we see is
                // at least as new as that producer's claim.
                let found = cell.state.load(Ordering::Acquire);
                let state = CellState::decode(found);
                if state.kind == CLAIMED && usize::from(state.producer) == id {
                    let poisoned = CellState::encode(state.lap, POISONED, state.producer);
                    // Release: pairs with the consumer's Acquire load; no
                    // data travels, but it keeps the state history simple.
                    // Relaxed on failure: the consumer or nobody changed it.
                    if cell
                        .state
                        .compare_exchange(found, poisoned, Ordering::Release, Ordering::Relaxed)
                        .is_ok()
                    {
                        recovered.abandoned += 1;
                    }
                }
            }
            if release_role(word, owner) {
                recovered.producers += 1;
            }
        }
        release_role(&self.header.consumer.0, owner);
        recovered
    }
}

/// Why [`MpscProducer::try_push`] did not push.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MpscPushError {
    /// The ring holds `capacity` values; retry after the consumer pops.
    #[error("ring is full")]
    Full,
    /// A cell state or index is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why [`MpscConsumer::try_pop`] returned no value.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum MpscPopError {
    /// Nothing has been claimed at the consumer's position.
    #[error("ring is empty")]
    Empty,
    /// A producer has claimed the next position but not published it yet.
    /// Transient if the producer is alive; if it has died, the supervisor
    /// must call [`MpscRing::recover_owner`].
    #[error(
        "the message at position {position} is claimed by producer slot {producer} but not \
         published; if that producer died, recover its slot"
    )]
    InFlight {
        /// The consumer's position.
        position: u64,
        /// The producer slot holding the claim (see [`MpscRing::producer_owner`]).
        producer: u16,
    },
    /// The message at this position was lost with its producer. The cell is
    /// consumed: this is reported once, and the next pop continues after it.
    #[error(
        "the message at position {position} was lost: producer slot {producer} died writing it"
    )]
    Abandoned {
        /// The position skipped.
        position: u64,
        /// The producer slot that held the claim.
        producer: u16,
    },
    /// A cell state is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// A producing end of an [`MpscRing`]: one producer slot. Frees the slot
/// when dropped.
#[derive(Debug)]
pub struct MpscProducer<'a, T> {
    ring: MpscRing<'a, T>,
    id: u16,
    owner: u32,
    mask: u64,
    shift: u32,
}

impl<'a, T: Pod + Send> MpscProducer<'a, T> {
    /// Pushes `value`, or reports that the ring is full.
    pub fn try_push(&mut self, value: T) -> Result<(), MpscPushError> {
        self.claim()?.commit(value);
        Ok(())
    }

    /// Claims the next position; the value is published by
    /// [`MpscClaim::commit`]. Until then the consumer waits at this position
    /// ([`MpscPopError::InFlight`]), so commit promptly.
    pub fn claim(&mut self) -> Result<MpscClaim<'_, 'a, T>, MpscPushError> {
        let header = self.ring.header;
        let capacity = self.ring.capacity() as u64;
        let mut repeats = 0u32;
        let mut last_contradiction = None;
        // Relaxed: tail only says where to try; the CAS on the cell state
        // decides, with its own ordering.
        let mut position = header.tail.0.load(Ordering::Relaxed);
        loop {
            let lap = (position >> self.shift) & LAP_MASK;
            let cell = self.cell(position);
            // Acquire: pairs with the consumer's Release store of EMPTY(lap)
            // in try_pop, after it copied the previous lap's value out.
            let word = cell.state.load(Ordering::Acquire);
            let state = CellState::decode(word);
            let ahead = state.lap.wrapping_sub(lap) & LAP_MASK;
            match (ahead, state.kind) {
                (0, EMPTY) => {
                    let claimed = CellState::encode(lap, CLAIMED, self.id);
                    // Acquire: same pairing as the load above; our value
                    // write cannot move before the claim.
                    // Relaxed on failure: we look at the cell again.
                    if cell
                        .state
                        .compare_exchange(word, claimed, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                    {
                        // Relaxed: a hint (see above). If it fails, another
                        // producer has already helped it along.
                        let _ = header.tail.0.compare_exchange(
                            position,
                            position.wrapping_add(1),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        return Ok(MpscClaim {
                            producer: self,
                            position,
                            committed: false,
                        });
                    }
                    // Another producer took it: move on to where tail is.
                    spin_loop();
                    position = Self::fresh_tail(header);
                    continue;
                }
                // Taken in this lap, or even consumed already: tail lags
                // behind the claims; help it along. The CAS (a read-modify-
                // write, so it sees the latest tail) also tells us where to
                // look next: a plain reload could keep returning the stale
                // value we just helped past.
                (0, _) | (1, EMPTY) => {
                    // Relaxed: a hint, as above.
                    position = match header.tail.0.compare_exchange(
                        position,
                        position.wrapping_add(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => position.wrapping_add(1),
                        Err(current) => current,
                    };
                    continue;
                }
                // The cell still holds the previous lap: full, if `head`
                // agrees that the consumer has not freed position - capacity.
                // `tail - head` may exceed `capacity` for a while: the
                // consumer frees cells (a whole batch in pop_slice) before
                // it publishes `head`, and producers may claim the freed
                // cells in between.
                (LAP_MASK, CLAIMED | FULL | POISONED) => {
                    // Acquire: pairs with the consumer's Release store of
                    // `head`, which follows its store of EMPTY into this
                    // cell; so if head has passed it, a reload sees EMPTY.
                    let head = header.head.0.load(Ordering::Acquire);
                    let used = position.wrapping_sub(head);
                    if (capacity..1 << 63).contains(&used) {
                        return Err(MpscPushError::Full);
                    }
                }
                // A state of no neighbouring lap: our tail is stale (the
                // fresh read below fixes that) or the cell is garbage.
                _ => {}
            }
            if last_contradiction == Some((position, word)) {
                repeats += 1;
                if repeats > MAX_INCONSISTENT {
                    return Err(Corrupt::new(
                        "cell state contradicts tail and head",
                        position,
                        word,
                    )
                    .into());
                }
            } else {
                repeats = 0;
                last_contradiction = Some((position, word));
            }
            spin_loop();
            position = Self::fresh_tail(header);
        }
    }

    /// The latest `tail`: a read-modify-write always reads the newest value
    /// in the modification order, where a plain load may return an older
    /// one (and loom explores exactly that, forever, if we let it).
    #[cold]
    fn fresh_tail(header: &MpscRingHeader) -> u64 {
        // Relaxed: a hint, as in claim.
        header.tail.0.fetch_add(0, Ordering::Relaxed)
    }

    /// This producer's slot id, as reported in [`MpscPopError`].
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The shared `tail` hint, freshly loaded.
    pub fn position(&self) -> u64 {
        // Relaxed: a hint.
        self.ring.header.tail.0.load(Ordering::Relaxed)
    }

    /// The consumer's `head`, freshly loaded.
    pub fn peer_position(&self) -> u64 {
        // Acquire: pairs with the consumer's Release store of `head`.
        self.ring.header.head.0.load(Ordering::Acquire)
    }

    #[inline(always)]
    fn cell(&self, position: u64) -> &'a MpscCell<T> {
        let index = (position & self.mask) as usize;
        debug_assert!(index < self.ring.cells.len());
        // SAFETY: mask == cells.len() - 1, a power of two minus one checked
        // by MpscRing::new, so the index is in bounds.
        unsafe { self.ring.cells.get_unchecked(index) }
    }
}

impl<T> Drop for MpscProducer<'_, T> {
    fn drop(&mut self) {
        release_role(
            &self.ring.header.producers.0[usize::from(self.id)],
            self.owner,
        );
    }
}

/// A claimed position of an [`MpscRing`]: publish it with
/// [`commit`](Self::commit). Dropping it uncommitted poisons the cell, so
/// the consumer reports the message as abandoned instead of waiting.
#[derive(Debug)]
#[must_use = "the consumer waits at this position until it is committed"]
pub struct MpscClaim<'p, 'a, T: Pod + Send> {
    producer: &'p mut MpscProducer<'a, T>,
    position: u64,
    committed: bool,
}

impl<T: Pod + Send> MpscClaim<'_, '_, T> {
    /// The position claimed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Writes `value` into the claimed cell and publishes it.
    pub fn commit(mut self, value: T) {
        let lap = (self.position >> self.producer.shift) & LAP_MASK;
        let cell = self.producer.cell(self.position);
        // SAFETY: our CAS to CLAIMED(lap, id) made this cell ours: the
        // consumer reads it only after seeing FULL, other producers only
        // claim it from EMPTY, and the supervisor poisons it only once we
        // are dead (its safety contract).
        cell.value.with_mut(|p| unsafe { p.write(value) });
        // Release: pairs with the Acquire load in MpscConsumer::try_pop: the
        // value is visible before the state that publishes it.
        cell.state.store(
            CellState::encode(lap, FULL, self.producer.id),
            Ordering::Release,
        );
        self.committed = true;
    }
}

impl<T: Pod + Send> Drop for MpscClaim<'_, '_, T> {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let lap = (self.position >> self.producer.shift) & LAP_MASK;
        // Release: pairs with the consumer's Acquire load, as in commit.
        self.producer.cell(self.position).state.store(
            CellState::encode(lap, POISONED, self.producer.id),
            Ordering::Release,
        );
    }
}

/// The consuming end of an [`MpscRing`]. Frees the consumer role when
/// dropped.
#[derive(Debug)]
pub struct MpscConsumer<'a, T> {
    ring: MpscRing<'a, T>,
    owner: u32,
    mask: u64,
    shift: u32,
    /// Our own count of positions consumed; the shared `head` mirrors it.
    head: u64,
}

impl<T: Pod + Send> MpscConsumer<'_, T> {
    /// Pops the oldest value; see [`MpscPopError`] for why it may not.
    pub fn try_pop(&mut self) -> Result<T, MpscPopError> {
        let value = self.take(true)?;
        // Release: pairs with the Acquire load of `head` in a producer's
        // full check; our store of EMPTY into the cell precedes it.
        self.ring.header.head.0.store(self.head, Ordering::Release);
        Ok(value)
    }

    /// Pops up to `out.len()` ready values into `out`, stopping at the first
    /// cell that is not ready, and publishes `head` once. Returns how many
    /// were popped; if none, the reason the first one was not.
    pub fn pop_slice(&mut self, out: &mut [T]) -> Result<usize, MpscPopError> {
        let mut n = 0;
        let mut first_error = None;
        for place in out.iter_mut() {
            // Only the first position may consume a poisoned cell: its loss
            // is then the error this call reports. Later ones stop before
            // it, so the next call reports it.
            match self.take(n == 0) {
                Ok(value) => {
                    *place = value;
                    n += 1;
                }
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
        // Release: as in try_pop, for the whole batch (and for a poisoned
        // cell `take` consumed).
        self.ring.header.head.0.store(self.head, Ordering::Release);
        match (n, first_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(n),
        }
    }

    /// Positions consumed so far.
    pub fn position(&self) -> u64 {
        self.head
    }

    /// The shared `tail` hint, freshly loaded: positions below it are
    /// claimed (perhaps not yet published).
    pub fn peer_position(&self) -> u64 {
        // Relaxed: a hint.
        self.ring.header.tail.0.load(Ordering::Relaxed)
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    fn lap_of(&self, position: u64) -> u64 {
        (position >> self.shift) & LAP_MASK
    }

    fn cell(&self, position: u64) -> &MpscCell<T> {
        let index = (position & self.mask) as usize;
        debug_assert!(index < self.ring.cells.len());
        // SAFETY: mask == cells.len() - 1, checked by MpscRing::new.
        unsafe { self.ring.cells.get_unchecked(index) }
    }

    /// Takes the value at `head` and frees its cell, without publishing
    /// `head`. A poisoned cell is consumed (and reported) only if
    /// `consume_poisoned`; otherwise it is left for the next call and
    /// reported as `Empty`, which callers treat as "stop here".
    fn take(&mut self, consume_poisoned: bool) -> Result<T, MpscPopError> {
        let position = self.head;
        let lap = self.lap_of(position);
        let cell = self.cell(position);
        // Acquire: pairs with the Release store of FULL in MpscClaim::commit
        // (the value is visible) and of POISONED in recovery.
        let word = cell.state.load(Ordering::Acquire);
        let state = CellState::decode(word);
        if state.lap != lap {
            return Err(Corrupt::new("cell state from another lap at head", position, word).into());
        }
        let freed = CellState::encode(lap + 1, EMPTY, 0);
        match state.kind {
            FULL => {
                // SAFETY: FULL(lap) was published by the producer that
                // claimed this position, after its write (Acquire above);
                // no producer writes the cell again before we store EMPTY.
                let value = cell.value.with(|p| unsafe { p.read() });
                // Release: pairs with the Acquire claim in MpscProducer::claim:
                // our read happens before the next lap's write.
                cell.state.store(freed, Ordering::Release);
                self.head = position.wrapping_add(1);
                Ok(value)
            }
            POISONED if !consume_poisoned => Err(MpscPopError::Empty),
            POISONED => {
                // Release: as above (no value is read, but the next lap's
                // producer must see the cell free).
                cell.state.store(freed, Ordering::Release);
                self.head = position.wrapping_add(1);
                Err(MpscPopError::Abandoned {
                    position,
                    producer: state.producer,
                })
            }
            CLAIMED => Err(MpscPopError::InFlight {
                position,
                producer: state.producer,
            }),
            _ => Err(MpscPopError::Empty),
        }
    }
}

impl<T> Drop for MpscConsumer<'_, T> {
    fn drop(&mut self) {
        release_role(&self.ring.header.consumer.0, self.owner);
    }
}

/// An [`MpscRing`] on the heap: for tests, loom models and in-process use.
#[derive(Debug)]
pub struct MpscStorage<T> {
    header: MpscRingHeader,
    cells: Box<[MpscCell<T>]>,
}

impl<T: Pod + Send> MpscStorage<T> {
    /// An empty ring of `capacity` (a power of two) values.
    pub fn new(capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity, 1)?;
        Ok(Self {
            header: MpscRingHeader::new(),
            cells: (0..capacity).map(|_| MpscCell::zeroed()).collect(),
        })
    }

    /// The view over this storage.
    pub fn ring(&self) -> MpscRing<'_, T> {
        MpscRing {
            header: &self.header,
            cells: &self.cells,
        }
    }

    /// Overwrites the shared indices and cell states, as a crashed or
    /// hostile process might; for the fuzzer and corruption tests.
    #[cfg(not(loom))]
    pub(crate) fn scribble(&self, tail: u64, head: u64, states: impl Iterator<Item = u64>) {
        // Relaxed: single-threaded test setup.
        self.header.tail.0.store(tail, Ordering::Relaxed);
        self.header.head.0.store(head, Ordering::Relaxed);
        for (cell, state) in self.cells.iter().zip(states) {
            cell.state.store(state, Ordering::Relaxed);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_across_wraparound_from_two_producers() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut a = ring.producer(1).unwrap();
        let mut b = ring.producer(2).unwrap();
        let mut rx = ring.consumer(3).unwrap();
        let mut expected = std::collections::VecDeque::new();
        let mut next = 0u64;
        for round in 0..12 {
            assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
            for i in 0..4 {
                let p = if (i + round) % 2 == 0 { &mut a } else { &mut b };
                p.try_push(next).unwrap();
                expected.push_back(next);
                next += 1;
            }
            assert_eq!(a.try_push(99), Err(MpscPushError::Full));
            assert_eq!(b.try_push(99), Err(MpscPushError::Full));
            assert_eq!(ring.len(), Ok(4));
            for _ in 0..(round % 4 + 1) {
                assert_eq!(rx.try_pop().ok(), expected.pop_front());
            }
            let mut out = [0u64; 8];
            let n = rx.pop_slice(&mut out).unwrap_or(0);
            for v in &out[..n] {
                assert_eq!(Some(*v), expected.pop_front());
            }
            assert!(expected.is_empty());
        }
    }

    #[test]
    fn a_claim_left_behind_blocks_then_is_reported_once_after_recovery() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut live = ring.producer(10).unwrap();
        let mut dying = ring.producer(20).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        live.try_push(1).unwrap();
        let claim = dying.claim().unwrap();
        let lost_at = claim.position();
        std::mem::forget(claim); // the producer dies here
        std::mem::forget(dying);
        live.try_push(2).unwrap();
        assert_eq!(rx.try_pop(), Ok(1));
        for _ in 0..3 {
            assert_eq!(
                rx.try_pop(),
                Err(MpscPopError::InFlight {
                    position: lost_at,
                    producer: 1
                })
            );
        }
        assert_eq!(ring.producer_owner(1), 20);
        // SAFETY: the forgotten handle and claim are never used again.
        let recovered = unsafe { ring.recover_owner(20) };
        assert_eq!(
            recovered,
            Recovered {
                producers: 1,
                abandoned: 1
            }
        );
        assert_eq!(
            rx.try_pop(),
            Err(MpscPopError::Abandoned {
                position: lost_at,
                producer: 1
            })
        );
        assert_eq!(rx.try_pop(), Ok(2));
        assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
        // The slot is free again and the ring keeps working across laps.
        let mut again = ring.producer(30).unwrap();
        for i in 0..10 {
            again.try_push(i).unwrap();
            assert_eq!(rx.try_pop(), Ok(i));
        }
    }

    #[test]
    fn a_dropped_claim_poisons_its_cell() {
        let storage = MpscStorage::<u64>::new(2).unwrap();
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        drop(tx.claim().unwrap());
        tx.try_push(5).unwrap();
        let mut out = [0; 4];
        assert!(matches!(
            rx.pop_slice(&mut out),
            Err(MpscPopError::Abandoned { position: 0, .. })
        ));
        assert_eq!(rx.pop_slice(&mut out), Ok(1));
        assert_eq!(out[0], 5);
    }

    #[test]
    fn a_batch_stops_before_a_poisoned_cell() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        tx.try_push(1).unwrap();
        drop(tx.claim().unwrap());
        tx.try_push(3).unwrap();
        let mut out = [0; 4];
        assert_eq!(rx.pop_slice(&mut out), Ok(1));
        assert!(matches!(
            rx.pop_slice(&mut out),
            Err(MpscPopError::Abandoned { position: 1, .. })
        ));
        assert_eq!(rx.pop_slice(&mut out), Ok(1));
        assert_eq!(out[0], 3);
    }

    #[test]
    fn producer_slots_run_out_and_come_back() {
        let storage = MpscStorage::<u64>::new(2).unwrap();
        let ring = storage.ring();
        let all: Vec<_> = (0..MAX_PRODUCERS)
            .map(|i| ring.producer(i as u32 + 1).unwrap())
            .collect();
        assert_eq!(ring.producer(99).unwrap_err(), RingError::NoProducerSlot);
        drop(all);
        assert!(ring.producer(99).is_ok());
    }

    #[test]
    fn a_new_consumer_skips_cells_its_dead_predecessor_freed() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        for i in 0..3 {
            tx.try_push(i).unwrap();
        }
        let mut rx = ring.consumer(2).unwrap();
        // Simulate death after freeing two cells but before storing head.
        assert_eq!(rx.take(true), Ok(0));
        assert_eq!(rx.take(true), Ok(1));
        std::mem::forget(rx);
        // SAFETY: the forgotten consumer is never used again.
        unsafe { ring.recover_owner(2) };
        let mut rx = ring.consumer(3).unwrap();
        assert_eq!(rx.try_pop(), Ok(2));
        assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
    }

    #[test]
    fn corrupt_states_give_errors_not_hangs() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        // A cell state of an old lap, while head says there is room.
        storage.scribble(5, 4, [CellState::encode(7, FULL, 0); 4].into_iter());
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        assert!(matches!(tx.try_push(1), Err(MpscPushError::Corrupt(_))));
        let mut rx = ring.consumer(1).unwrap();
        assert!(matches!(rx.try_pop(), Err(MpscPopError::Corrupt(_))));
        storage.scribble(100, 0, std::iter::empty());
        assert!(ring.len().is_err());
    }
}
