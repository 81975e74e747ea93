//! A single-producer single-consumer ring of `Pod` values (Lamport's
//! bounded buffer, with each side caching the other's index as in the
//! FastForward/MCRingBuffer line of work).
//!
//! # Protocol
//!
//! | field           | written by          | read by             |
//! |-----------------|---------------------|---------------------|
//! | `written`       | producer (`Release`) | consumer (`Acquire`) |
//! | `read`          | consumer (`Release`) | producer (`Acquire`) |
//! | cell `i`        | producer, while `i` is in `[read, read + capacity)` and `>= written` | consumer, while `i` is in `[read, written)` |
//! | role words      | claimants (CAS)     | claimants           |
//!
//! `written` and `read` each sit on a cache line of their own. The producer
//! keeps its own `written` in a private field (it is the only writer) and a
//! private copy of `read` that it refreshes only when the ring looks full;
//! the consumer does the mirror image. So in a streaming steady state each
//! side touches the other's line once per capacity's worth of messages, not
//! once per message.
//!
//! - Push: if `written - cached_read == capacity`, reload `read`
//!   (`Acquire`, pairs with the consumer's `Release` store after it has
//!   copied the value out, so our overwrite cannot overtake its read); write
//!   the cell; store `written + 1` (`Release`, pairs with the consumer's
//!   `Acquire` load: the value is visible before the index that publishes
//!   it).
//! - Pop: if `read == cached_written`, reload `written` (`Acquire`); copy
//!   the cell out; store `read + 1` (`Release`).
//! - A loaded index is validated against the local one: `written - read`
//!   must lie in `0..=capacity`, else the call returns [`Corrupt`].
//!
//! A producer that dies before its `written` store has published nothing of
//! its message. A consumer that dies between copying a value and storing
//! `read` leaves that value in the ring, and the next consumer receives it
//! again: delivery is exactly once while the consumer lives, at least once
//! across a consumer crash.
//!
//! ```
//! use shmem::{Layout, Segment, ring::SpscRing};
//!
//! let layout = Layout::builder().spsc_ring::<u64>("events", 1024).build()?;
//! let segment = Segment::create(&layout)?;
//! let ring = SpscRing::<u64>::from_segment(&segment, "events")?;
//! let mut tx = ring.producer(shmem::ring::own_token())?;
//! let mut rx = ring.consumer(shmem::ring::own_token())?;
//! tx.try_push(7)?;
//! assert_eq!(tx.push_slice(&[8, 9])?, 2);
//! assert_eq!(rx.try_pop()?, 7);
//! let mut out = [0; 4];
//! assert_eq!(rx.pop_slice(&mut out)?, 2);
//! assert_eq!(&out[..2], &[8, 9]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A consumer cannot push:
//!
//! ```compile_fail,E0599
//! # use shmem::ring::SpscStorage;
//! let storage = SpscStorage::<u64>::new(8).unwrap();
//! let mut rx = storage.ring().consumer(1).unwrap();
//! rx.try_push(1);
//! ```
//!
//! and a producer handle cannot be duplicated:
//!
//! ```compile_fail,E0599
//! # use shmem::ring::SpscStorage;
//! let storage = SpscStorage::<u64>::new(8).unwrap();
//! let tx = storage.ring().producer(1).unwrap();
//! let tx2 = tx.clone();
//! ```

use bytemuck::Pod;
use thiserror::Error;

use super::{Corrupt, Line, RingError, check_capacity, claim_role, release_role};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};

/// The shared header of an [`SpscRing`]; all-zero is an empty ring with no
/// role taken.
#[derive(Debug, Default)]
#[repr(C)]
pub struct SpscRingHeader {
    /// Count of values ever pushed. Written by the producer only.
    written: Line<AtomicU64>,
    /// Count of values ever popped. Written by the consumer only.
    read: Line<AtomicU64>,
    /// Role words: owner token of the producer and of the consumer, 0 when
    /// free. Rarely touched, so they share a line.
    roles: Line<[AtomicU32; 2]>,
}

const PRODUCER: usize = 0;
const CONSUMER: usize = 1;

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<SpscRingHeader>() == 3 * crate::CACHE_LINE);
    assert!(align_of::<SpscRingHeader>() == crate::CACHE_LINE);
};

// SAFETY: repr(C) of atomics on padded lines: any bytes are valid (padding
// included), no pointers, all mutation through atomics.
#[cfg(not(loom))]
unsafe impl crate::ShmSafe for SpscRingHeader {}

impl SpscRingHeader {
    /// An empty ring's header.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One cell of an [`SpscRing`]: a `T` that the protocol hands back and forth.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct SpscSlot<T>(UnsafeCell<T>);

// SAFETY: access to the value is serialised by the ring protocol (module
// docs): the producer writes a cell only while it is outside [read, written)
// and the consumer reads it only while inside, with Release/Acquire index
// stores between the two.
unsafe impl<T: Send> Sync for SpscSlot<T> {}

// SAFETY: transparent over a Pod `T`: repr fixed, any bytes valid, no
// pointers that matter (Send + Pod excludes raw pointers in practice and a
// Pod pointer is never dereferenced by the ring); mutation follows the
// ring protocol.
#[cfg(not(loom))]
unsafe impl<T: Pod + Send> crate::ShmSafe for SpscSlot<T> {}

impl<T: Pod> SpscSlot<T> {
    fn zeroed() -> Self {
        Self(UnsafeCell::new(T::zeroed()))
    }
}

/// A view of an SPSC ring: its header and cells. Cheap to copy; hands out
/// the [`SpscProducer`] and [`SpscConsumer`] roles. See the module docs.
#[derive(Debug)]
pub struct SpscRing<'a, T> {
    header: &'a SpscRingHeader,
    cells: &'a [SpscSlot<T>],
}

impl<T> Clone for SpscRing<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SpscRing<'_, T> {}

impl<'a, T: Pod + Send> SpscRing<'a, T> {
    /// A view over `header` and `cells`; `cells.len()` is the capacity and
    /// must be a power of two.
    pub fn new(header: &'a SpscRingHeader, cells: &'a [SpscSlot<T>]) -> Result<Self, RingError> {
        check_capacity(cells.len(), 1)?;
        Ok(Self { header, cells })
    }

    /// The ring reserved as `name` by
    /// [`LayoutBuilder::spsc_ring`](crate::LayoutBuilder::spsc_ring).
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

    /// How many values are in the ring now, as seen by a bystander (a
    /// momentary snapshot, or `Err` if the indices are inconsistent).
    pub fn len(&self) -> Result<usize, Corrupt> {
        // Acquire on both: pairs with the Release stores of the two sides;
        // only a snapshot. `written` is loaded first: both indices only
        // grow, so a consistent ring can at worst show `read` past the
        // `written` we saw (the consumer raced ahead between the loads),
        // never `written - read > capacity`.
        let written = self.header.written.0.load(Ordering::Acquire);
        let read = self.header.read.0.load(Ordering::Acquire);
        if read.wrapping_sub(written) < 1 << 63 {
            return Ok(0);
        }
        let used = written.wrapping_sub(read);
        if used > self.capacity() as u64 {
            return Err(Corrupt::new(
                "written - read exceeds capacity",
                read,
                written,
            ));
        }
        Ok(used as usize)
    }

    /// Whether [`len`](Self::len) is zero.
    pub fn is_empty(&self) -> Result<bool, Corrupt> {
        self.len().map(|n| n == 0)
    }

    /// Claims the producer role for `owner` (normally
    /// [`own_token`](super::own_token)).
    pub fn producer(&self, owner: u32) -> Result<SpscProducer<'a, T>, RingError> {
        claim_role(&self.header.roles.0[PRODUCER], owner, "producer")?;
        // Relaxed: we are the only writer of `written`, and the Acquire of
        // the role claim ordered us after the previous producer's last store.
        let written = self.header.written.0.load(Ordering::Relaxed);
        // Acquire: pairs with the consumer's Release store of `read`.
        let read = self.header.read.0.load(Ordering::Acquire);
        if written.wrapping_sub(read) > self.capacity() as u64 {
            release_role(&self.header.roles.0[PRODUCER], owner);
            return Err(Corrupt::new("written - read exceeds capacity", written, read).into());
        }
        Ok(SpscProducer {
            ring: *self,
            mask: self.capacity() as u64 - 1,
            owner,
            written,
            cached_read: read,
        })
    }

    /// Claims the consumer role for `owner`.
    pub fn consumer(&self, owner: u32) -> Result<SpscConsumer<'a, T>, RingError> {
        claim_role(&self.header.roles.0[CONSUMER], owner, "consumer")?;
        // Relaxed: only the consumer writes `read`; see `producer`.
        let read = self.header.read.0.load(Ordering::Relaxed);
        // Acquire: pairs with the producer's Release store of `written`.
        let written = self.header.written.0.load(Ordering::Acquire);
        if written.wrapping_sub(read) > self.capacity() as u64 {
            release_role(&self.header.roles.0[CONSUMER], owner);
            return Err(Corrupt::new("written - read exceeds capacity", read, written).into());
        }
        Ok(SpscConsumer {
            ring: *self,
            mask: self.capacity() as u64 - 1,
            owner,
            read,
            cached_written: written,
        })
    }

    /// The owner tokens holding the producer and consumer roles (0 = free).
    pub fn role_owners(&self) -> (u32, u32) {
        // Relaxed: informational.
        (
            self.header.roles.0[PRODUCER].load(Ordering::Relaxed),
            self.header.roles.0[CONSUMER].load(Ordering::Relaxed),
        )
    }

    /// Frees every role `owner` holds, for a supervisor that has reaped the
    /// process `owner` names. Returns how many roles were freed.
    ///
    /// # Safety
    ///
    /// The process (or thread) that claimed the roles under `owner` must be
    /// gone for good: if it still pushed or popped, it and the next holder
    /// would race on the same cells.
    pub unsafe fn release_roles_of(&self, owner: u32) -> usize {
        self.header
            .roles
            .0
            .iter()
            .filter(|word| release_role(word, owner))
            .count()
    }

    #[inline(always)]
    fn slot(&self, position: u64, mask: u64) -> &SpscSlot<T> {
        let index = (position & mask) as usize;
        debug_assert!(index < self.cells.len());
        // SAFETY: mask == cells.len() - 1 (set at handle creation from the
        // capacity, which `new` checked is a power of two), so the index is
        // in bounds whatever position shared memory held.
        unsafe { self.cells.get_unchecked(index) }
    }
}

/// Why [`SpscProducer::try_push`] did not push.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SpscPushError {
    /// The ring holds `capacity` values; retry after the consumer pops.
    #[error("ring is full")]
    Full,
    /// The consumer's index is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why [`SpscConsumer::try_pop`] returned nothing.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SpscPopError {
    /// Nothing to pop; retry after the producer pushes.
    #[error("ring is empty")]
    Empty,
    /// The producer's index is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// The producing end of an [`SpscRing`]: the only handle with `try_push`.
/// Frees the producer role when dropped.
#[derive(Debug)]
pub struct SpscProducer<'a, T> {
    ring: SpscRing<'a, T>,
    mask: u64,
    owner: u32,
    /// Our own count of values pushed; the shared `written` mirrors it.
    written: u64,
    /// The consumer's `read` when we last looked; `written - cached_read`
    /// is in `0..=capacity`.
    cached_read: u64,
}

impl<T: Pod + Send> SpscProducer<'_, T> {
    /// Pushes `value`, or reports that the ring is full.
    pub fn try_push(&mut self, value: T) -> Result<(), SpscPushError> {
        if self.free_cached() == 0 && self.refresh_read()? == 0 {
            return Err(SpscPushError::Full);
        }
        let slot = self.ring.slot(self.written, self.mask);
        // SAFETY: `written` is outside [read, written) of the consumer's
        // view and inside [read, read + capacity) (checked above), so the
        // consumer does not read this cell until we publish it below and
        // its previous value was copied out before `read` passed it.
        slot.0.with_mut(|p| unsafe { p.write(value) });
        self.written = self.written.wrapping_add(1);
        // Release: pairs with the Acquire load in SpscConsumer::refresh_written:
        // the value above is visible before the index that publishes it.
        self.ring
            .header
            .written
            .0
            .store(self.written, Ordering::Release);
        Ok(())
    }

    /// Pushes as many leading values of `values` as fit and publishes them
    /// with one index store. Returns how many were pushed (0 if full).
    pub fn push_slice(&mut self, values: &[T]) -> Result<usize, Corrupt> {
        let mut free = self.free_cached();
        if free < values.len() {
            free = self.refresh_read()?;
        }
        let n = free.min(values.len());
        for (i, value) in values[..n].iter().enumerate() {
            let slot = self
                .ring
                .slot(self.written.wrapping_add(i as u64), self.mask);
            // SAFETY: as in try_push, for each of the `n <= free` positions
            // after `written`.
            slot.0.with_mut(|p| unsafe { p.write(*value) });
        }
        if n > 0 {
            self.written = self.written.wrapping_add(n as u64);
            // Release: as in try_push, for the whole batch.
            self.ring
                .header
                .written
                .0
                .store(self.written, Ordering::Release);
        }
        Ok(n)
    }

    /// Values pushed so far (this ring's `written` index).
    pub fn position(&self) -> u64 {
        self.written
    }

    /// The consumer's `read` index, freshly loaded; a blocking layer
    /// compares it with [`position`](Self::position) to decide whether the
    /// consumer may be waiting for data.
    pub fn peer_position(&self) -> u64 {
        // Acquire: pairs with the consumer's Release store of `read`.
        self.ring.header.read.0.load(Ordering::Acquire)
    }

    /// How many values fit now (refreshing the consumer's index).
    pub fn free(&mut self) -> Result<usize, Corrupt> {
        self.refresh_read()
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    fn free_cached(&self) -> usize {
        self.ring.capacity() - self.written.wrapping_sub(self.cached_read) as usize
    }

    /// Reloads the consumer's index and returns the free space it implies.
    #[cold]
    fn refresh_read(&mut self) -> Result<usize, Corrupt> {
        // Acquire: pairs with the Release store of `read` in try_pop and
        // pop_slice: the consumer's copies out of the cells we are about to
        // reuse happened before.
        let read = self.ring.header.read.0.load(Ordering::Acquire);
        let used = self.written.wrapping_sub(read);
        if used > self.ring.capacity() as u64 {
            return Err(Corrupt::new(
                "consumer index outside [written - capacity, written]",
                self.written,
                read,
            ));
        }
        self.cached_read = read;
        Ok(self.ring.capacity() - used as usize)
    }
}

impl<T> Drop for SpscProducer<'_, T> {
    fn drop(&mut self) {
        release_role(&self.ring.header.roles.0[PRODUCER], self.owner);
    }
}

/// The consuming end of an [`SpscRing`]. Frees the consumer role when
/// dropped.
#[derive(Debug)]
pub struct SpscConsumer<'a, T> {
    ring: SpscRing<'a, T>,
    mask: u64,
    owner: u32,
    /// Our own count of values popped; the shared `read` mirrors it.
    read: u64,
    /// The producer's `written` when we last looked; `cached_written - read`
    /// is in `0..=capacity`.
    cached_written: u64,
}

impl<T: Pod + Send> SpscConsumer<'_, T> {
    /// Pops the oldest value, or reports that the ring is empty.
    pub fn try_pop(&mut self) -> Result<T, SpscPopError> {
        if self.read == self.cached_written && self.refresh_written()? == 0 {
            return Err(SpscPopError::Empty);
        }
        let slot = self.ring.slot(self.read, self.mask);
        // SAFETY: `read` is in [read, written) (checked above against an
        // Acquire load of `written`), so the producer published this cell
        // and will not write it again until our Release store of `read`
        // below lets it.
        let value = slot.0.with(|p| unsafe { p.read() });
        self.read = self.read.wrapping_add(1);
        // Release: pairs with the Acquire load in SpscProducer::refresh_read:
        // our read of the cell happens before the producer overwrites it.
        self.ring.header.read.0.store(self.read, Ordering::Release);
        Ok(value)
    }

    /// Pops up to `out.len()` values into `out` and frees their cells with
    /// one index store. Returns how many were popped (0 if empty).
    pub fn pop_slice(&mut self, out: &mut [T]) -> Result<usize, Corrupt> {
        let mut available = self.cached_written.wrapping_sub(self.read) as usize;
        if available < out.len() {
            available = self.refresh_written()?;
        }
        let n = available.min(out.len());
        for (i, place) in out[..n].iter_mut().enumerate() {
            let slot = self.ring.slot(self.read.wrapping_add(i as u64), self.mask);
            // SAFETY: as in try_pop, for each of the `n <= available`
            // published positions from `read`.
            *place = slot.0.with(|p| unsafe { p.read() });
        }
        if n > 0 {
            self.read = self.read.wrapping_add(n as u64);
            // Release: as in try_pop, for the whole batch.
            self.ring.header.read.0.store(self.read, Ordering::Release);
        }
        Ok(n)
    }

    /// Values popped so far (this ring's `read` index).
    pub fn position(&self) -> u64 {
        self.read
    }

    /// The producer's `written` index, freshly loaded.
    pub fn peer_position(&self) -> u64 {
        // Acquire: pairs with the producer's Release store of `written`.
        self.ring.header.written.0.load(Ordering::Acquire)
    }

    /// How many values are ready now (refreshing the producer's index).
    pub fn available(&mut self) -> Result<usize, Corrupt> {
        self.refresh_written()
    }

    /// The ring's capacity.
    pub fn capacity(&self) -> usize {
        self.ring.capacity()
    }

    /// Reloads the producer's index and returns how many values it makes
    /// available.
    #[cold]
    fn refresh_written(&mut self) -> Result<usize, Corrupt> {
        // Acquire: pairs with the Release store of `written` in try_push and
        // push_slice: the values are visible before their index.
        let written = self.ring.header.written.0.load(Ordering::Acquire);
        let available = written.wrapping_sub(self.read);
        if available > self.ring.capacity() as u64 {
            return Err(Corrupt::new(
                "producer index outside [read, read + capacity]",
                self.read,
                written,
            ));
        }
        self.cached_written = written;
        Ok(available as usize)
    }
}

impl<T> Drop for SpscConsumer<'_, T> {
    fn drop(&mut self) {
        release_role(&self.ring.header.roles.0[CONSUMER], self.owner);
    }
}

/// An [`SpscRing`] on the heap: for tests, loom models and rings private to
/// one process.
#[derive(Debug)]
pub struct SpscStorage<T> {
    header: SpscRingHeader,
    cells: Box<[SpscSlot<T>]>,
}

impl<T: Pod + Send> SpscStorage<T> {
    /// An empty ring of `capacity` (a power of two) values.
    pub fn new(capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity, 1)?;
        Ok(Self {
            header: SpscRingHeader::new(),
            cells: (0..capacity).map(|_| SpscSlot::zeroed()).collect(),
        })
    }

    /// The view over this storage.
    pub fn ring(&self) -> SpscRing<'_, T> {
        SpscRing {
            header: &self.header,
            cells: &self.cells,
        }
    }

    /// Overwrites the shared indices, as a crashed or hostile process might;
    /// for the fuzzer and corruption tests.
    #[cfg(not(loom))]
    pub(crate) fn scribble(&self, written: u64, read: u64) {
        // Relaxed: single-threaded test setup.
        self.header.written.0.store(written, Ordering::Relaxed);
        self.header.read.0.store(read, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_across_wraparound_with_full_and_empty_boundaries() {
        let storage = SpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        let mut next_in = 0u64;
        let mut next_out = 0u64;
        for round in 0..10 {
            assert_eq!(rx.try_pop(), Err(SpscPopError::Empty), "round {round}");
            for _ in 0..4 {
                tx.try_push(next_in).unwrap();
                next_in += 1;
            }
            assert_eq!(tx.try_push(99), Err(SpscPushError::Full));
            assert_eq!(ring.len(), Ok(4));
            // Drain a varying amount so the positions cross the wrap point
            // at every offset.
            for _ in 0..(round % 4 + 1) {
                assert_eq!(rx.try_pop(), Ok(next_out));
                next_out += 1;
            }
            while let Ok(v) = rx.try_pop() {
                assert_eq!(v, next_out);
                next_out += 1;
            }
        }
        assert_eq!(next_in, next_out);
    }

    #[test]
    fn batches_stop_at_full_and_empty() {
        let storage = SpscStorage::<u32>::new(8).unwrap();
        let ring = storage.ring();
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        let input: Vec<u32> = (0..20).collect();
        assert_eq!(tx.push_slice(&input[..5]), Ok(5));
        let mut out = [0u32; 3];
        assert_eq!(rx.pop_slice(&mut out), Ok(3));
        assert_eq!(out, [0, 1, 2]);
        assert_eq!(tx.push_slice(&input[5..]), Ok(6));
        assert_eq!(tx.push_slice(&input[11..]), Ok(0));
        let mut out = [0u32; 16];
        assert_eq!(rx.pop_slice(&mut out), Ok(8));
        assert_eq!(&out[..8], &input[3..11]);
        assert_eq!(rx.pop_slice(&mut out), Ok(0));
    }

    #[test]
    fn roles_are_exclusive_until_released() {
        let storage = SpscStorage::<u64>::new(2).unwrap();
        let ring = storage.ring();
        let tx = ring.producer(7).unwrap();
        assert_eq!(
            ring.producer(8).unwrap_err(),
            RingError::RoleTaken {
                role: "producer",
                owner: 7
            }
        );
        drop(tx);
        let tx = ring.producer(8).unwrap();
        std::mem::forget(tx); // a producer that died without dropping
        assert!(ring.producer(9).is_err());
        // SAFETY: the forgotten handle is never used again.
        assert_eq!(unsafe { ring.release_roles_of(8) }, 1);
        assert!(ring.producer(9).is_ok());
        assert_eq!(ring.producer(0).unwrap_err(), RingError::InvalidOwner(0));
    }

    #[test]
    fn a_new_producer_continues_where_the_last_one_stopped() {
        let storage = SpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let mut rx = ring.consumer(1).unwrap();
        for i in 0..3 {
            let mut tx = ring.producer(2).unwrap();
            tx.try_push(i).unwrap();
        }
        for i in 0..3 {
            assert_eq!(rx.try_pop(), Ok(i));
        }
    }

    #[test]
    fn corrupt_indices_are_reported_not_trusted() {
        let storage = SpscStorage::<u64>::new(4).unwrap();
        storage.scribble(100, 0);
        let ring = storage.ring();
        assert!(matches!(ring.consumer(1), Err(RingError::Corrupt(_))));
        assert!(matches!(ring.producer(1), Err(RingError::Corrupt(_))));
        // Roles were not left claimed by the failed attempts.
        assert_eq!(ring.role_owners(), (0, 0));
        assert!(ring.len().is_err());

        // Corruption after the handles exist.
        storage.scribble(0, 0);
        let mut tx = ring.producer(1).unwrap();
        let mut rx = ring.consumer(1).unwrap();
        storage.scribble(0, 50);
        for _ in 0..4 {
            tx.try_push(1).unwrap();
        }
        assert!(matches!(tx.try_push(1), Err(SpscPushError::Corrupt(_))));
        storage.scribble(u64::MAX, 0);
        assert!(matches!(rx.try_pop(), Err(SpscPopError::Corrupt(_))));
        assert!(rx.pop_slice(&mut [0; 4]).is_err());
    }

    #[test]
    fn capacity_must_be_a_power_of_two() {
        assert!(matches!(
            SpscStorage::<u64>::new(6),
            Err(RingError::Capacity { capacity: 6, .. })
        ));
        assert!(SpscStorage::<u64>::new(0).is_err());
        assert!(SpscStorage::<u64>::new(1).is_ok());
    }
}
