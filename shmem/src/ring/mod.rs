//! Lock-free rings that live in shared memory: [`SpscRing`], [`MpscRing`]
//! and [`ByteRing`].
//!
//! # What every ring promises
//!
//! Each ring is a *view*: a header struct (indices and role words, each hot
//! index on its own cache line) plus a slice of cells. The view holds no
//! pointer into shared memory that another process must understand; the
//! header and the cells are two regions of a [`Layout`](crate::Layout)
//! (`name` and `name.cells`), found by offset, so every process may map the
//! segment at a different address. The same view can be built on the heap
//! ([`SpscStorage`], [`MpscStorage`], [`ByteStorage`]), which is how the loom
//! models run the production code.
//!
//! Positions are 64-bit counters that only grow (`written`, `read`); a
//! position's cell is `position & (capacity - 1)`. At a billion messages a
//! second they would wrap after 584 years, so the code never has to reason
//! about wrap-around of the counters themselves. For every ring, at every
//! moment:
//!
//! - `0 <= written - read <= capacity`;
//! - messages are received in the order their positions were claimed (FIFO),
//!   each exactly once;
//! - a message's bytes are visible to the consumer before the index (or cell
//!   state) that publishes it: the publishing store is `Release`, the
//!   consumer's load of it is `Acquire`;
//! - the consumer's reads of a cell finish before the producer may overwrite
//!   it: the consumer hands a cell back with a `Release` store that the
//!   producer loads with `Acquire`.
//!
//! # Roles
//!
//! Who may push and who may pop is a matter of types: a ring view hands out
//! producer and consumer handles, and only a producer has `try_push`. Across
//! processes, types cannot stop two processes from both asking for the
//! single-producer role, so each role is also *claimed* in the header: a
//! role word holds the claimant's owner token (normally its pid, see
//! [`own_token`]) or zero when free. A second claim fails with
//! [`RingError::RoleTaken`]; dropping the handle frees the role.
//!
//! A process that dies holding a role never drops its handle. The
//! supervisor, which knows it has reaped that process, calls the ring's
//! recovery function with the dead owner token (`release_roles_of`,
//! `recover_owner`, `mark_dead`); those are `unsafe` where handing the
//! role to someone else while the old holder still ran would let two
//! writers race on one cell.
//!
//! # Dead producers leave no silent hole
//!
//! - [`SpscRing`] and [`ByteRing`] publish a message with one store of
//!   `written` after every byte of it is in place. A producer that dies
//!   mid-message has published nothing of it: the consumer sees an intact
//!   prefix of the stream. `ByteRing` additionally turns the death into a
//!   detach the receiver observes ([`ByteRecvError::PeerDied`]) after it has
//!   drained everything complete.
//! - [`MpscRing`] producers claim a cell by writing their producer id into
//!   the cell's state word, atomically with the claim. The consumer, finding
//!   a claimed-but-unpublished cell at its position, reports
//!   [`MpscPopError::InFlight`] naming that producer; once the supervisor
//!   declares the producer dead ([`MpscRing::recover_owner`]) the
//!   cell turns into a poisoned one and the consumer reports it once as
//!   [`MpscPopError::Abandoned`] and moves past it.
//!
//! # Untrusted contents
//!
//! Shared memory may hold anything a crashed or buggy process left there.
//! Every index and length read from it is checked before it is used to
//! address a cell; a value no correct peer could have written gives a
//! [`Corrupt`] error (the segment should then be reset), never a panic, an
//! out-of-bounds access or an endless loop. Capacities are taken from the
//! layout (whose hash the segment header carries), never from the ring
//! header. What cannot be defended against is a live process that breaks the
//! protocol by writing a cell it does not own; processes attached to a
//! segment are trusted not to do that.
//!
//! # Blocking ends
//!
//! The rings never sleep. A blocking layer over latches builds on what the
//! handles expose: each handle knows its own position (`position()`) and can
//! load the peer's (`peer_position()`), so it can wake the peer when the
//! ring goes from empty to non-empty or from full to non-full, or every
//! quarter ring as shm_mq does. Its wait loop must be "reset latch, try,
//! wait", and its publish side "push, then set the peer's latch". The
//! latch's own orderings (`Release` set, `Acquire` reset) do not order a
//! store before a later load, so a layer that skips sets (looks at the
//! peer's latch or position before setting) needs a `SeqCst` fence on both
//! sides of that store-then-load pattern; `latch::channel` is that layer.

mod bytes;
mod mpsc;
mod spsc;

pub use bytes::{
    ByteCell, ByteReceiver, ByteRecvError, ByteRing, ByteRingHeader, ByteSendError, ByteSender,
    ByteStorage, FRAME_HEADER, Received,
};
pub use mpsc::{
    MAX_PRODUCERS, MpscCell, MpscClaim, MpscConsumer, MpscPopError, MpscProducer, MpscPushError,
    MpscRing, MpscRingHeader, MpscStorage, Recovered,
};
pub use spsc::{
    SpscConsumer, SpscPopError, SpscProducer, SpscPushError, SpscRing, SpscRingHeader, SpscSlot,
    SpscStorage,
};

use thiserror::Error;

use crate::error::RegionError;
use crate::layout::LayoutBuilder;
use crate::sync::{AtomicU32, Ordering};

/// The largest owner token: the values above it are reserved for role-word
/// states ([`ByteRing`]'s "detached" and "died").
pub const MAX_OWNER: u32 = u32::MAX - 16;

/// The largest capacity a ring accepts, in cells (or bytes for a
/// [`ByteRing`]): 2^32. Larger rings are possible in principle but no
/// segment needs one, and the bound keeps every length a `u32`.
pub const MAX_CAPACITY: usize = 1 << 32;

/// This process's owner token: its pid, which a supervisor that reaps the
/// process knows and can pass to a ring's recovery function.
pub fn own_token() -> u32 {
    std::process::id()
}

/// A value read from shared memory that no correct peer could have written.
///
/// The ring cannot be trusted any more; the supervisor should reset the
/// segment.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
#[error(
    "ring is corrupt: {what} (position {position}, found {found:#x}); \
     reset the segment and restart the processes that use it"
)]
pub struct Corrupt {
    /// What was wrong.
    pub what: &'static str,
    /// This side's position when it noticed.
    pub position: u64,
    /// The offending value.
    pub found: u64,
}

impl Corrupt {
    pub(crate) fn new(what: &'static str, position: u64, found: u64) -> Self {
        Self {
            what,
            position,
            found,
        }
    }
}

/// Why a ring view or a role handle could not be made.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RingError {
    /// The segment has no such region, or it holds another type.
    #[error("ring region: {0}")]
    Region(#[from] RegionError),
    /// The cell array's length is not a usable capacity.
    #[error(
        "ring capacity {capacity} is not valid: {reason}; reserve the ring with a power-of-two \
         capacity"
    )]
    Capacity {
        /// The capacity found.
        capacity: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Zero and the reserved values above [`MAX_OWNER`] cannot name an owner.
    #[error("owner token {0} is not valid: use a non-zero value up to {MAX_OWNER} (a pid)")]
    InvalidOwner(u32),
    /// Another handle holds this role.
    #[error(
        "the {role} role of this ring is held by owner {owner}; if that process has died, \
         the supervisor must release its roles first"
    )]
    RoleTaken {
        /// `"producer"`, `"consumer"`, `"sender"` or `"receiver"`.
        role: &'static str,
        /// The role word found (the holder's token).
        owner: u32,
    },
    /// Every producer slot of an [`MpscRing`] is taken.
    #[error(
        "all {MAX_PRODUCERS} producer slots of this ring are taken; drop a producer or release \
         the slots of dead ones"
    )]
    NoProducerSlot,
    /// A [`ByteRing`] side that has detached cannot be attached again until
    /// the segment is reset.
    #[error(
        "the {role} side of this byte ring has detached; rings are not reusable before a reset"
    )]
    Detached {
        /// `"sender"` or `"receiver"`.
        role: &'static str,
    },
    /// The ring's shared state is inconsistent.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// A value on a cache line of its own, so that the index one side writes
/// does not share a line with the index the other side writes.
///
/// 128 bytes, as [`CACHE_LINE`](crate::CACHE_LINE) explains.
#[derive(Debug, Default)]
#[repr(C, align(128))]
pub(crate) struct Line<T>(pub(crate) T);

/// Checks that `capacity` (a cell count) is a usable ring capacity.
pub(crate) fn check_capacity(capacity: usize, min: usize) -> Result<(), RingError> {
    let reason = if !capacity.is_power_of_two() {
        "not a power of two"
    } else if capacity < min {
        "too small"
    } else if capacity > MAX_CAPACITY {
        "larger than MAX_CAPACITY"
    } else {
        return Ok(());
    };
    Err(RingError::Capacity { capacity, reason })
}

pub(crate) fn check_owner(owner: u32) -> Result<(), RingError> {
    if owner == 0 || owner > MAX_OWNER {
        return Err(RingError::InvalidOwner(owner));
    }
    Ok(())
}

/// Claims a free role word (zero) for `owner`.
pub(crate) fn claim_role(
    word: &AtomicU32,
    owner: u32,
    role: &'static str,
) -> Result<(), RingError> {
    check_owner(owner)?;
    // Acquire on success: pairs with the Release in `release_role`, so the
    // new holder sees the indices the previous holder published before it
    // let go. Relaxed on failure: nothing is read on that path.
    word.compare_exchange(0, owner, Ordering::Acquire, Ordering::Relaxed)
        .map(|_| ())
        .map_err(|found| RingError::RoleTaken { role, owner: found })
}

/// Frees a role word if it still names `owner` (a supervisor may have
/// released it already). Returns whether it did.
pub(crate) fn release_role(word: &AtomicU32, owner: u32) -> bool {
    // Release: pairs with the Acquire of the next `claim_role`.
    word.compare_exchange(owner, 0, Ordering::Release, Ordering::Relaxed)
        .is_ok()
}

/// The name of the cell array of the ring called `name`.
pub fn cells_region_name(name: &str) -> String {
    format!("{name}.cells")
}

impl LayoutBuilder {
    /// Reserves an [`SpscRing`] of `capacity` values of `T`: a header region
    /// `name` and a cell array `name.cells`. `capacity` must be a power of
    /// two; [`SpscRing::from_segment`] reports it otherwise.
    pub fn spsc_ring<T: bytemuck::Pod + Send>(self, name: &str, capacity: usize) -> Self {
        self.ring_regions::<SpscRingHeader, SpscSlot<T>>(name, capacity)
    }

    /// Reserves an [`MpscRing`] of `capacity` values of `T` (regions `name`
    /// and `name.cells`). `capacity` must be a power of two.
    pub fn mpsc_ring<T: bytemuck::Pod + Send>(self, name: &str, capacity: usize) -> Self {
        self.ring_regions::<MpscRingHeader, MpscCell<T>>(name, capacity)
    }

    /// Reserves a [`ByteRing`] of `capacity` bytes (regions `name` and
    /// `name.cells`). `capacity` must be a power of two of at least 16; the
    /// largest message is `capacity - FRAME_HEADER` bytes.
    pub fn byte_ring(self, name: &str, capacity: usize) -> Self {
        self.ring_regions::<ByteRingHeader, ByteCell>(name, capacity)
    }

    #[cfg(not(loom))]
    fn ring_regions<H: crate::ShmSafe, C: crate::ShmSafe>(
        self,
        name: &str,
        capacity: usize,
    ) -> Self {
        self.region::<H>(name)
            .array::<C>(&cells_region_name(name), capacity)
    }

    /// Under loom ring types hold loom atomics, which cannot live in a
    /// segment; the builder still exists so that code compiles, but reserves
    /// nothing. (The type parameters stay, so call sites are the same in
    /// both builds.)
    #[cfg(loom)]
    #[allow(clippy::extra_unused_type_parameters)]
    fn ring_regions<H, C>(self, _name: &str, _capacity: usize) -> Self {
        self
    }
}
