//! Blocking ends over an [`MpscRing`](shmem::ring::MpscRing): any number
//! of [`Sender`]s (up to [`MAX_PRODUCERS`]) that sleep while the ring is
//! full, and one [`Receiver`] that sleeps while it is empty or while the
//! next message is still being written.
//!
//! # Waking many producers
//!
//! The receiver sets the latches of producers waiting for space, so it has
//! to find them. [`ProducerLatches`] is a region of the segment, next to the
//! ring: one [`Latch`] per producer slot of the ring, owned by the process
//! that holds that slot, and a `waiting` mask with one bit per slot.
//!
//! | field       | written by                                         | read by |
//! |-------------|----------------------------------------------------|---------|
//! | `waiting` bit `k` | the producer in slot `k`: set when it finds the ring full, cleared when its send ends (`fetch_or`/`fetch_and`) | the receiver, after its fence (step 3) |
//! | latch `k`   | owner: the producer in slot `k` ([`Sender::new`] takes it, `Drop` gives it up); setters: the receiver | |
//!
//! A producer that finds the ring full sets its bit *before* the reset and
//! fence of step 1, so by the argument of the [module docs](super) either
//! its look after the fence sees the space the receiver freed, or the
//! receiver's look at the mask after its own fence sees the bit (and then
//! its look at latch `k` sees the reset). With no producer waiting, the
//! receiver's check is a fence and one load of a line only blocked
//! producers write. The mask is trusted no further than its 32 bits: any
//! bit names a slot that exists, and a bit left by a dead producer only
//! costs a set of a latch nobody sleeps on, until the next producer of
//! that slot clears it.
//!
//! Alternatives considered: producers that poll a full ring with a short
//! timeout (simple, but each poll is a timer sleep of tens of microseconds
//! on this machine, so a ring that a fast receiver drains in less sits
//! idle), and one latch all producers share (a latch has one owner).
//!
//! # In-flight and abandoned cells
//!
//! [`MpscPopError::InFlight`] (a cell claimed but not yet published) makes
//! [`Receiver::recv`] wait: the producer publishes and then sets the
//! receiver's latch. If the producer died holding the claim, nobody will;
//! the wait is therefore sliced into [`PEER_CHECK_INTERVAL`]s, and once a
//! supervisor has called [`MpscRing::recover_owner`](shmem::ring::MpscRing::recover_owner)
//! the receiver reports the loss as [`RecvError::Abandoned`] and
//! continues after it on the next call.
//!
//! [`PEER_CHECK_INTERVAL`]: super::PEER_CHECK_INTERVAL
//!
//! ```
//! use std::time::Instant;
//! use latch::Latch;
//! use latch::channel::mpsc::{self, ProducerLatches};
//! use shmem::ring::MpscStorage;
//!
//! let storage = MpscStorage::<u64>::new(4)?;
//! let ring = storage.ring();
//! let (waiters, receiver_latch) = (ProducerLatches::new(), Latch::new());
//! receiver_latch.own()?;
//! let mut a = mpsc::Sender::new(ring.producer(1)?, &receiver_latch, &waiters)?;
//! let mut b = mpsc::Sender::new(ring.producer(2)?, &receiver_latch, &waiters)?;
//! let mut rx = mpsc::Receiver::new(ring.consumer(3)?, &receiver_latch, &waiters);
//! let now = Some(Instant::now());
//! a.send(1, now)?;
//! b.send(2, now)?;
//! assert_eq!(rx.recv(now)?, 1);
//! assert_eq!(rx.recv(now)?, 2);
//! assert!(matches!(rx.recv(now), Err(mpsc::RecvError::Timeout)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::ControlFlow::{Break, Continue};
use std::time::Instant;

use bytemuck::Pod;
use shmem::ring::{
    Corrupt, MAX_PRODUCERS, MpscConsumer, MpscPopError, MpscProducer, MpscPushError,
};
use shmem::sync::{AtomicU32, Ordering};
use thiserror::Error;

pub use super::spsc::SendError;
use super::{
    DataWaker, FromStop, PEER_CHECK_INTERVAL, SpaceWaiters, SpaceWaker, Stats, Stop, block_on,
    set_unless_set,
};
use crate::{Latch, LatchError, WaitOptions};

const _: () = assert!(MAX_PRODUCERS <= u32::BITS as usize);

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(C, align(128))]
struct Line<T>(T);

/// The producers' side of an MPSC channel in shared memory: one latch per
/// producer slot and the mask of slots waiting for space (module docs).
/// All-zero is the initial state: no latch owned or set, nobody waiting.
///
/// Reserve it next to the ring, e.g.
/// `.mpsc_ring::<u64>("jobs", 1024).region::<ProducerLatches>("jobs.waiters")`.
#[derive(Debug)]
#[repr(C)]
pub struct ProducerLatches {
    /// Bit `k`: the producer in slot `k` is waiting (or about to) for space
    /// on `latches[k]`. Written only by that producer.
    waiting: Line<AtomicU32>,
    /// Latch `k` belongs to whoever holds producer slot `k`.
    latches: [Latch; MAX_PRODUCERS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<ProducerLatches>() == 4 * shmem::CACHE_LINE);
    assert!(align_of::<ProducerLatches>() == shmem::CACHE_LINE);
};

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of an AtomicU32 (padded) and ShmSafe latches: any
// bits are valid (any mask bit names an existing slot; latches handle any
// bits), no pointers, all mutation is atomic.
unsafe impl shmem::ShmSafe for ProducerLatches {}

impl Default for ProducerLatches {
    fn default() -> Self {
        Self::new()
    }
}

impl ProducerLatches {
    /// No latch owned or set, nobody waiting (like all-zero bytes).
    pub fn new() -> Self {
        Self {
            waiting: Line(AtomicU32::new(0)),
            latches: std::array::from_fn(|_| Latch::new()),
        }
    }

    /// The latch of producer slot `id` (as [`MpscProducer::id`] reports).
    pub fn latch(&self, id: u16) -> Option<&Latch> {
        self.latches.get(usize::from(id))
    }

    /// The waiting mask, a snapshot for diagnostics and tests.
    pub fn waiting(&self) -> u32 {
        // Relaxed: a snapshot; nothing is read through it.
        self.waiting.0.load(Ordering::Relaxed)
    }

    /// The producer in slot `id` is about to wait for space. Before the
    /// reset and fence of its wait.
    fn announce(&self, id: u16) {
        // Relaxed: ordered before the receiver's load of the mask by the
        // SeqCst fence that follows in block_on (and the receiver's own).
        self.waiting.0.fetch_or(1 << id, Ordering::Relaxed);
    }

    /// The producer in slot `id` no longer waits.
    fn withdraw(&self, id: u16) {
        // Relaxed: clearing only spares the receiver a set; a set it makes
        // anyway is harmless.
        self.waiting.0.fetch_and(!(1 << id), Ordering::Relaxed);
    }

    /// Step 3 of the protocol for producers: sets the latch of every slot
    /// whose bit is on (unless set). The caller has issued its fence.
    pub(crate) fn set_waiting(&self, sets: &mut u64) {
        // Relaxed: ordered after the receiver's publishing stores by the
        // fence its caller issued (SpaceWaker::wake_now or block_on).
        let mut mask = self.waiting.0.load(Ordering::Relaxed);
        while mask != 0 {
            let slot = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            // Any of the 32 bits names a latch (const assertion above).
            if let Some(latch) = self.latches.get(slot) {
                set_unless_set(latch, sets);
            }
        }
    }
}

/// A producing end: an [`MpscProducer`] that waits on its slot's latch in
/// [`ProducerLatches`] while the ring is full and sets the receiver's latch
/// after publishing. Gives the slot's latch up when dropped.
#[derive(Debug)]
pub struct Sender<'a, T> {
    ring: MpscProducer<'a, T>,
    /// The ring's slot id for this producer, and the index of its latch.
    id: u16,
    waiters: &'a ProducerLatches,
    options: WaitOptions,
    waits: u64,
    data: DataWaker<'a>,
}

impl<'a, T: Pod + Send> Sender<'a, T> {
    /// Wraps a producer slot: the calling process takes ownership of the
    /// slot's latch in `waiters` (so that it can wait on it), and sets
    /// `receiver` (the receiver's latch) after publishing.
    ///
    /// Fails with [`LatchError::AlreadyOwned`] if another live process owns
    /// that latch, which happens only if it held the slot and did not drop
    /// its `Sender`.
    pub fn new(
        ring: MpscProducer<'a, T>,
        receiver: &'a Latch,
        waiters: &'a ProducerLatches,
    ) -> Result<Self, LatchError> {
        let id = ring.id();
        let own = waiters
            .latch(id)
            .expect("MpscProducer ids are below MAX_PRODUCERS");
        own.own()?;
        // A previous holder of the slot that died while waiting left its bit.
        waiters.withdraw(id);
        Ok(Self {
            ring,
            id,
            waiters,
            options: WaitOptions::default(),
            waits: 0,
            data: DataWaker::new(receiver),
        })
    }

    /// These wait options (spin policy) for every wait from now on.
    pub fn with_options(mut self, options: WaitOptions) -> Self {
        self.options = options;
        self
    }

    /// Pushes `value` if there is room, and wakes the receiver if it needs
    /// waking; never waits.
    pub fn try_send(&mut self, value: T) -> Result<(), MpscPushError> {
        self.ring.try_push(value)?;
        self.data.published();
        Ok(())
    }

    /// Pushes `value`, waiting while the ring is full until `deadline`
    /// (`None`: no deadline).
    pub fn send(&mut self, value: T, deadline: Option<Instant>) -> Result<(), SendError> {
        match self.try_send(value) {
            Ok(()) => Ok(()),
            Err(MpscPushError::Full) => self.send_blocking(value, deadline),
            Err(MpscPushError::Corrupt(c)) => Err(c.into()),
        }
    }

    #[cold]
    #[inline(never)]
    fn send_blocking(&mut self, value: T, deadline: Option<Instant>) -> Result<(), SendError> {
        let Self {
            ring,
            id,
            waiters,
            options,
            waits,
            data,
        } = self;
        let id = *id;
        let own = waiters
            .latch(id)
            .expect("MpscProducer ids are below MAX_PRODUCERS");
        let mut announced = false;
        let sent = block_on(own, deadline, options, waits, |_| {
            match ring.try_push(value) {
                Ok(()) => {
                    data.published();
                    Break(Ok(()))
                }
                Err(MpscPushError::Full) => {
                    // Every look that finds the ring full before the reset and
                    // fence of block_on comes here first (see the module docs).
                    if !announced {
                        waiters.announce(id);
                        announced = true;
                    }
                    Continue(None)
                }
                Err(MpscPushError::Corrupt(c)) => Break(Err(c.into())),
            }
        });
        if announced {
            waiters.withdraw(id);
        }
        sent
    }

    /// This producer's slot id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// What this end has done to wake and wait so far.
    pub fn stats(&self) -> Stats {
        Stats {
            sets: self.data.sets(),
            waits: self.waits,
        }
    }
}

impl<T> Drop for Sender<'_, T> {
    fn drop(&mut self) {
        // Before the producer slot is released (the field drops after
        // this), so the next holder of the slot finds the latch free.
        self.waiters.withdraw(self.id);
        if let Some(latch) = self.waiters.latch(self.id) {
            latch.disown();
        }
    }
}

/// Why a blocking receive gave up.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The ring stayed empty (or its next message unpublished) until the
    /// deadline.
    #[error(
        "no message arrived before the deadline; the producers are slow, done or gone (a \
         producer that died while writing stays unpublished until a supervisor recovers its slot)"
    )]
    Timeout,
    /// The postmaster died while this end waited.
    #[error("the postmaster died while the ring was empty; clean up and exit")]
    PostmasterDied,
    /// The message at `position` was lost with its producer (the supervisor
    /// recovered the producer's slot). Reported once; the next receive
    /// continues after it.
    #[error(
        "the message at position {position} was lost: producer slot {producer} died writing it"
    )]
    Abandoned {
        /// The ring position skipped.
        position: u64,
        /// The producer slot that held the claim.
        producer: u16,
    },
    /// A cell state is impossible; the segment should be reset.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Waiting on this end's latch failed (not its owner, or the futex).
    #[error("cannot wait for messages in the ring: {0}")]
    Latch(#[from] LatchError),
}

impl FromStop for RecvError {
    fn from_stop(stop: Stop) -> Self {
        match stop {
            Stop::Timeout => Self::Timeout,
            Stop::PostmasterDied => Self::PostmasterDied,
            Stop::Latch(e) => Self::Latch(e),
        }
    }
}

/// The receiving end: an [`MpscConsumer`] that waits on its own latch while
/// the ring is empty (or its next cell in flight), and sets the latches of
/// producers waiting for space once per quarter ring it frees (and before
/// it waits).
#[derive(Debug)]
pub struct Receiver<'a, T> {
    ring: MpscConsumer<'a, T>,
    own: &'a Latch,
    options: WaitOptions,
    waits: u64,
    space: SpaceWaker<'a>,
}

/// What a look at the ring means for a blocking receive.
fn outcome<V>(result: Result<V, MpscPopError>) -> Result<V, Option<RecvError>> {
    match result {
        Ok(value) => Ok(value),
        Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => Err(None),
        Err(MpscPopError::Abandoned { position, producer }) => {
            Err(Some(RecvError::Abandoned { position, producer }))
        }
        Err(MpscPopError::Corrupt(c)) => Err(Some(c.into())),
    }
}

impl<'a, T: Pod + Send> Receiver<'a, T> {
    /// Wraps the consumer role; `own` (the latch producers set) must be
    /// owned by the calling process before the first wait.
    pub fn new(ring: MpscConsumer<'a, T>, own: &'a Latch, waiters: &'a ProducerLatches) -> Self {
        let capacity = ring.capacity();
        Self {
            ring,
            own,
            options: WaitOptions::default(),
            waits: 0,
            space: SpaceWaker::new(SpaceWaiters::Producers(waiters), capacity),
        }
    }

    /// These wait options (spin policy) for every wait from now on.
    pub fn with_options(mut self, options: WaitOptions) -> Self {
        self.options = options;
        self
    }

    /// Pops the oldest value if it is ready; never waits. `InFlight` means
    /// a producer is still writing it.
    pub fn try_recv(&mut self) -> Result<T, MpscPopError> {
        let before = self.ring.position();
        let result = self.ring.try_pop();
        self.space.freed(before, self.ring.position());
        if matches!(
            result,
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. })
        ) {
            self.space.before_empty();
        }
        result
    }

    /// Pops the oldest value, waiting while the ring is empty or the value
    /// is still being written, until `deadline` (`None`: no deadline).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let before = self.ring.position();
        let result = self.ring.try_pop();
        // An abandoned cell is consumed too.
        self.space.freed(before, self.ring.position());
        match outcome(result) {
            Ok(value) => Ok(value),
            Err(Some(e)) => Err(e),
            Err(None) => self.recv_blocking(deadline),
        }
    }

    #[cold]
    #[inline(never)]
    fn recv_blocking(&mut self, deadline: Option<Instant>) -> Result<T, RecvError> {
        let Self {
            ring,
            own,
            options,
            waits,
            space,
        } = self;
        block_on(own, deadline, options, waits, |after_reset| {
            let before = ring.position();
            let result = ring.try_pop();
            // An abandoned cell is consumed too.
            space.freed(before, ring.position());
            let in_flight = matches!(result, Err(MpscPopError::InFlight { .. }));
            match outcome(result) {
                Ok(value) => Break(Ok(value)),
                Err(Some(e)) => Break(Err(e)),
                Err(None) => {
                    if after_reset {
                        space.before_wait();
                    }
                    Continue(in_flight.then_some(PEER_CHECK_INTERVAL))
                }
            }
        })
    }

    /// Pops up to `out.len()` ready values, stopping before the first cell
    /// that is not; never waits. Returns how many were popped, or, if none,
    /// why (as [`MpscConsumer::pop_slice`]).
    pub fn try_recv_slice(&mut self, out: &mut [T]) -> Result<usize, MpscPopError> {
        let before = self.ring.position();
        let result = self.ring.pop_slice(out);
        self.space.freed(before, self.ring.position());
        if matches!(
            result,
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. })
        ) {
            self.space.before_empty();
        }
        result
    }

    /// Pops up to `out.len()` values, waiting until at least one is ready
    /// (or `deadline`). Returns how many were popped. An empty `out`
    /// returns 0 at once.
    pub fn recv_slice(
        &mut self,
        out: &mut [T],
        deadline: Option<Instant>,
    ) -> Result<usize, RecvError> {
        if out.is_empty() {
            return Ok(0);
        }
        let Self {
            ring,
            own,
            options,
            waits,
            space,
        } = self;
        block_on(own, deadline, options, waits, |after_reset| {
            let before = ring.position();
            let result = ring.pop_slice(out);
            space.freed(before, ring.position());
            let in_flight = matches!(result, Err(MpscPopError::InFlight { .. }));
            match outcome(result) {
                Ok(n) => Break(Ok(n)),
                Err(Some(e)) => Break(Err(e)),
                Err(None) => {
                    if after_reset {
                        space.before_wait();
                    }
                    Continue(in_flight.then_some(PEER_CHECK_INTERVAL))
                }
            }
        })
    }

    /// The consumer role underneath (position, capacity).
    pub fn ring(&self) -> &MpscConsumer<'a, T> {
        &self.ring
    }

    /// What this end has done to wake and wait so far.
    pub fn stats(&self) -> Stats {
        Stats {
            sets: self.space.sets(),
            waits: self.waits,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use shmem::ring::MpscStorage;

    use super::*;

    #[test]
    fn a_full_ring_times_out_and_leaves_no_waiting_bit() {
        let storage = MpscStorage::<u64>::new(2).unwrap();
        let ring = storage.ring();
        let (waiters, rx_latch) = (ProducerLatches::new(), Latch::new());
        rx_latch.own().unwrap();
        let mut tx = Sender::new(ring.producer(1).unwrap(), &rx_latch, &waiters).unwrap();
        let past = Some(Instant::now() - Duration::from_millis(1));
        tx.send(1, past).unwrap();
        tx.send(2, past).unwrap();
        assert!(matches!(tx.send(3, past), Err(SendError::Timeout)));
        assert_eq!(waiters.waiting(), 0);
        assert_eq!(tx.stats().sets, 1);
    }

    #[test]
    fn the_receiver_sets_only_the_latches_of_waiting_producers() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let (waiters, rx_latch) = (ProducerLatches::new(), Latch::new());
        rx_latch.own().unwrap();
        let mut a = Sender::new(ring.producer(1).unwrap(), &rx_latch, &waiters).unwrap();
        let b = Sender::new(ring.producer(2).unwrap(), &rx_latch, &waiters).unwrap();
        let mut rx = Receiver::new(ring.consumer(3).unwrap(), &rx_latch, &waiters);
        for i in 0..4 {
            a.try_send(i).unwrap();
        }
        // Slot a's producer as if asleep on a full ring.
        waiters.announce(a.id());
        assert_eq!(rx.try_recv().unwrap(), 0); // a quarter of 4 is 1 cell
        assert!(waiters.latch(a.id()).unwrap().is_set());
        assert!(!waiters.latch(b.id()).unwrap().is_set());
        assert_eq!(rx.stats().sets, 1);
        waiters.withdraw(a.id());
        waiters.latch(a.id()).unwrap().reset();
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert!(
            !waiters.latch(a.id()).unwrap().is_set(),
            "nobody waits: nothing set"
        );
    }

    #[test]
    fn a_dropped_sender_frees_its_slot_latch_for_the_next_producer() {
        let storage = MpscStorage::<u64>::new(2).unwrap();
        let ring = storage.ring();
        let (waiters, rx_latch) = (ProducerLatches::new(), Latch::new());
        let tx = Sender::new(ring.producer(1).unwrap(), &rx_latch, &waiters).unwrap();
        let id = tx.id();
        assert_eq!(waiters.latch(id).unwrap().owner(), Some(std::process::id()));
        drop(tx);
        assert_eq!(waiters.latch(id).unwrap().owner(), None);
        let again = Sender::new(ring.producer(2).unwrap(), &rx_latch, &waiters).unwrap();
        assert_eq!(again.id(), id);
    }

    #[test]
    fn an_abandoned_claim_is_reported_once_then_skipped() {
        let storage = MpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let (waiters, rx_latch) = (ProducerLatches::new(), Latch::new());
        rx_latch.own().unwrap();
        let mut live = Sender::new(ring.producer(10).unwrap(), &rx_latch, &waiters).unwrap();
        let mut dying = ring.producer(20).unwrap();
        let mut rx = Receiver::new(ring.consumer(1).unwrap(), &rx_latch, &waiters);
        std::mem::forget(dying.claim().unwrap()); // dies holding a claim
        std::mem::forget(dying);
        live.try_send(2).unwrap();
        let soon = Some(Instant::now() + Duration::from_millis(5));
        // In flight: a wait, not an empty ring and not a message.
        assert!(matches!(rx.recv(soon), Err(RecvError::Timeout)));
        // SAFETY: the forgotten producer and claim are never used again.
        unsafe { ring.recover_owner(20) };
        assert!(matches!(
            rx.recv(None),
            Err(RecvError::Abandoned { position: 0, .. })
        ));
        assert_eq!(rx.recv(None).unwrap(), 2);
    }
}
