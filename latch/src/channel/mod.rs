//! Blocking ends over the rings of [`shmem::ring`]: a send that sleeps on a
//! latch while the ring is full, a receive that sleeps while it is empty,
//! each with a deadline, woken by the peer through the peer's latch.
//!
//! The rings never sleep; this module adds the sleeping without adding a
//! lock, a pointer or a system call to the streaming path. A sender that
//! keeps a ring busy pays one fence and one load of the receiver's latch
//! word per message and sets that latch only when the receiver has found
//! the ring empty since the last set; a receiver pays a fence and a set only
//! once per quarter ring it frees, and only the first set after a sleep
//! makes a `FUTEX_WAKE`.
//!
//! # Roles and who sets whom
//!
//! Every channel has ends that *publish* (the sender: messages; the
//! receiver: free space) and ends that *wait* for what the other publishes.
//! Each end waits on a latch it owns and sets its peer's latch:
//!
//! | end                    | waits on (owns)                         | sets                                        |
//! |------------------------|-----------------------------------------|---------------------------------------------|
//! | [`spsc::Sender`], [`bytes::Sender`]     | its own latch ([`Latches::own`]), while the ring is full | the receiver's latch, after publishing     |
//! | [`spsc::Receiver`], [`bytes::Receiver`] | its own latch, while the ring is empty | the sender's latch, after freeing space (batched) |
//! | [`mpsc::Sender`]       | the latch of its producer slot in [`mpsc::ProducerLatches`] | the receiver's latch, after publishing |
//! | [`mpsc::Receiver`]     | its own latch                           | the latches of the producers that announced they wait |
//!
//! Latches are what the process already has (its process-slot latch, say):
//! one latch may serve several channels and other events at once, since
//! every wait below re-checks its own ring after any wake-up.
//!
//! # The protocol
//!
//! 1. **Wait**: an end that would block resets its own latch, issues a
//!    `SeqCst` fence, looks at the ring again, and only if it still would
//!    block waits on the latch; after any wake-up it looks again.
//! 2. **Publish a message**: the sender stores the ring index (or cell
//!    state) that publishes the message, as the ring always does
//!    (`Release`), then issues a `SeqCst` fence, then loads the receiver's
//!    latch and sets it *unless it is already set*.
//! 3. **Free space**: the receiver, when a receive moves its position across
//!    a multiple of a quarter of the ring, issues a `SeqCst` fence and sets
//!    the sender's latch unless it is set. Before it waits (in step 1, after
//!    the fence) or reports "empty", it does the same if it has freed
//!    anything since it last did.
//! 4. **Detach** ([`bytes`] only): an end detaches in the ring, then issues
//!    a `SeqCst` fence and sets the peer's latch, so a peer asleep on a full
//!    or empty ring wakes to see [`bytes::SendError::Detached`] /
//!    [`bytes::RecvError::Detached`].
//!
//! # Why no wake-up is lost
//!
//! Take a waiter (step 1) whose reset is `R` and whose fence is `F_w`, and
//! a publisher (steps 2 to 4) whose publishing store is `S` and whose fence
//! is `F_p`. `SeqCst` fences are totally ordered. If `F_p` comes first,
//! the waiter's look after `F_w` sees `S` (or something later) and does not
//! wait. If `F_w` comes first, the publisher's load of the latch after `F_p`
//! sees `R` or a later value of the latch word: either the latch is clear,
//! and the publisher sets it, so the wait returns; or it holds a `SET` that
//! came after `R`, and the wait returns at once for that one.
//!
//! That is also why skipping a set is safe: a publisher that finds the
//! latch set does nothing, and the waiter cannot sleep on it without first
//! resetting it; a reset that erases the `SET` the publisher saw comes after
//! that `SET` in the latch word's order, so `F_w` cannot precede `F_p` (the
//! publisher would have seen the reset), so the waiter's look sees `S`.
//! Only the owner resets a latch, and every wait of this module follows a
//! reset *and a fence* with a look at its own ring, so this holds even when
//! the latch is shared with other waits.
//!
//! Both halves need their fence. Without the waiter's, its reset (a store)
//! may be ordered after its look (a load); without the publisher's, its
//! publishing store may be ordered after its look at the latch; either way
//! both sides can miss each other's store, the classic store-buffering
//! outcome. [`Latch::has_sleeper`] cannot replace the latch check: a waiter
//! announces its sleep *after* its last look at the ring (and not at all
//! while it spins), so a publisher that skipped the set for want of a
//! sleeper could leave it asleep on a message; `tests/loom_channel.rs`
//! checks the protocol as written.
//!
//! # Batching, and why it is live
//!
//! Step 2's "unless set" is the batching on the data side: while a
//! receiver streams it never resets its latch (it only resets on finding
//! the ring empty), so the sender's check finds it set and costs a fence
//! and a load of a cache line that nobody writes. Only a receiver that has
//! caught up costs a set, and only a receiver that has fallen asleep costs
//! a futex wake.
//!
//! Step 3 is the batching on the space side, after PostgreSQL's `shm_mq`
//! (which sets the sender's latch once a quarter of the ring has been
//! consumed). A sender sleeps only after its look (after its fence) found
//! the ring too full for its message. If the receiver keeps receiving, it
//! either moves across the next quarter boundary above the position the
//! sender saw, or empties the ring before it could wait itself; either
//! event comes with a fence and a look at the sender's latch, and by the
//! argument above one of the two sees the other. If the space freed is
//! still too little (a long byte message), the sender sleeps again and the
//! next quarter or the drained ring wakes it: a drained ring has room for
//! any message. A receiver that stops receiving may leave a sender asleep
//! with up to a quarter ring free; that sender wakes once the receiver
//! receives again (or at its deadline).
//!
//! # Many producers
//!
//! An [`MpscRing`](shmem::ring::MpscRing) receiver cannot know the latches of
//! producers in other processes, and a latch has one owner, so producers
//! cannot share one. [`mpsc::ProducerLatches`] lives in the segment next to
//! the ring: one latch per producer slot, owned by whoever holds that slot,
//! and a bit mask of the slots whose producer waits for space. A producer
//! that finds the ring full sets its bit, then follows step 1 on its slot's
//! latch, and clears the bit when it leaves. The receiver's step 3 loads
//! the mask (after its fence) and sets the latches of the waiting slots;
//! with nobody waiting it sets nothing. A cell claimed but not yet
//! published ([`MpscPopError::InFlight`](shmem::ring::MpscPopError)) is a
//! reason to wait, not an empty ring: its producer publishes it and then
//! sets the receiver's latch like any other message.
//!
//! # What nobody sets
//!
//! A supervisor that reaps a dead process ([`ByteRing::mark_dead`],
//! [`MpscRing::recover_owner`]) knows nothing of latches. So a byte-ring
//! end waits in slices of [`PEER_CHECK_INTERVAL`] and looks at the ring
//! between them, to turn a peer's death into
//! [`bytes::RecvError::PeerDied`] within that interval; an MPSC receiver
//! stuck behind an in-flight cell does the same, to see the supervisor turn
//! it into [`mpsc::RecvError::Abandoned`]. SPSC rings have no notion of a
//! peer's death: a sender to a receiver that died waits until its deadline,
//! or until [`Wake::PostmasterDied`](crate::Wake) if the postmaster went
//! with it. Under `--cfg loom` nobody dies and no wait is sliced, so the
//! models prove that every wake-up comes from a set.
//!
//! [`ByteRing::mark_dead`]: shmem::ring::ByteRing::mark_dead
//! [`MpscRing::recover_owner`]: shmem::ring::MpscRing::recover_owner
//!
//! # Example
//!
//! Two threads stand in for two processes here; across `fork` the ring and
//! both latches live in a [`Segment`](shmem::Segment) instead, and each
//! process owns its own latch.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use latch::Latch;
//! use latch::channel::{Latches, spsc};
//! use shmem::ring::SpscStorage;
//!
//! let storage = SpscStorage::<u64>::new(8)?; // small: both ends block often
//! let ring = storage.ring();
//! let (sender_latch, receiver_latch) = (Latch::new(), Latch::new());
//! sender_latch.own()?;
//! receiver_latch.own()?;
//! let deadline = Some(Instant::now() + Duration::from_secs(30));
//!
//! std::thread::scope(|s| {
//!     let producer = ring.producer(1)?;
//!     let latches = Latches { own: &sender_latch, peer: &receiver_latch };
//!     s.spawn(move || {
//!         let mut tx = spsc::Sender::new(producer, latches);
//!         for i in 0..1000u64 {
//!             tx.send(i, deadline).expect("the receiver keeps up within the deadline");
//!         }
//!     });
//!     let latches = Latches { own: &receiver_latch, peer: &sender_latch };
//!     let mut rx = spsc::Receiver::new(ring.consumer(2)?, latches);
//!     for i in 0..1000u64 {
//!         assert_eq!(rx.recv(deadline)?, i);
//!     }
//!     // Nothing more is coming: a deadline in the past returns at once.
//!     let past = Some(Instant::now());
//!     assert!(matches!(rx.recv(past), Err(spsc::RecvError::Timeout)));
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bytes;
pub mod mpsc;
pub mod spsc;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use shmem::sync::{Ordering, fence};

use crate::{Latch, LatchError, WaitOptions, Wake};

/// How often an end that nobody may wake (see "What nobody sets") looks at
/// its ring while it waits: the delay with which a supervisor's
/// `mark_dead` or `recover_owner` is noticed. As long as the postmaster
/// death poll of [`pmdeath`](crate::pmdeath) for the same reason.
pub const PEER_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// The two latches of an SPSC or byte-ring end.
#[derive(Clone, Copy, Debug)]
pub struct Latches<'a> {
    /// This end's latch: it waits on it, so the calling process must own
    /// it ([`Latch::own`]); otherwise the first wait fails with
    /// [`LatchError::NotOwner`].
    pub own: &'a Latch,
    /// The peer end's latch: this end sets it.
    pub peer: &'a Latch,
}

/// What one end has done to wake and wait, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Latch sets this end made for its peer(s). Each is one atomic swap,
    /// plus one `FUTEX_WAKE` if the peer was asleep; checks that found the
    /// latch already set are not counted (they cost no write).
    pub sets: u64,
    /// Times this end waited on its own latch (a spin, then perhaps a
    /// sleep).
    pub waits: u64,
}

/// Why [`block_on`] stopped without the ring becoming ready.
pub(crate) enum Stop {
    Timeout,
    PostmasterDied,
    Latch(LatchError),
}

/// Each channel's error type says how it reports a [`Stop`].
pub(crate) trait FromStop {
    fn from_stop(stop: Stop) -> Self;
}

/// A look at the ring found that the operation would block: wait, and look
/// again after this long even if nobody sets the latch (`None`: only when
/// set, or at the deadline).
pub(crate) type Recheck = Option<Duration>;

/// Step 1 of the protocol (module docs): `look` at the ring; if it would
/// block, reset `own`, fence, look again, wait, repeat.
///
/// `look(after_reset)` tries the operation: `Break` ends the call with its
/// result, `Continue` means it would block. `after_reset` tells it that the
/// fence of step 1 has just been issued, so a receiver may do the check of
/// step 3 without another fence. At the deadline `look` gets one last try.
pub(crate) fn block_on<T, E: FromStop>(
    own: &Latch,
    deadline: Option<Instant>,
    options: &WaitOptions,
    waits: &mut u64,
    mut look: impl FnMut(bool) -> ControlFlow<Result<T, E>, Recheck>,
) -> Result<T, E> {
    loop {
        if let ControlFlow::Break(done) = look(false) {
            return done;
        }
        own.reset();
        // SeqCst: the waiter's half of the Dekker pair (module docs, "Why
        // no wake-up is lost"): orders the reset above before the look
        // below; pairs with the fence in DataWaker::published and
        // SpaceWaker::wake_now / freed.
        fence(Ordering::SeqCst);
        let recheck = match look(true) {
            ControlFlow::Break(done) => return done,
            ControlFlow::Continue(recheck) => recheck,
        };
        *waits += 1;
        let (wake_by, sliced) = wake_by(deadline, recheck);
        match own.wait_with(wake_by, options) {
            Ok(Wake::Set) => {}
            // A recheck slice ended before the deadline: look again.
            Ok(Wake::Timeout) if sliced => {}
            Ok(Wake::Timeout) => {
                // A message published just before the deadline whose set is
                // still on its way is better delivered than reported late.
                return match look(false) {
                    ControlFlow::Break(done) => done,
                    ControlFlow::Continue(_) => Err(E::from_stop(Stop::Timeout)),
                };
            }
            Ok(Wake::PostmasterDied) => return Err(E::from_stop(Stop::PostmasterDied)),
            Err(e) => return Err(E::from_stop(Stop::Latch(e))),
        }
    }
}

/// The deadline for one wait: `deadline`, or sooner if `recheck` asks for
/// it; and whether it is sooner (a slice, not the caller's deadline).
#[cfg(not(loom))]
fn wake_by(deadline: Option<Instant>, recheck: Recheck) -> (Option<Instant>, bool) {
    match recheck {
        Some(every) => {
            let slice = Instant::now() + every;
            if deadline.is_none_or(|d| slice < d) {
                (Some(slice), true)
            } else {
                (deadline, false)
            }
        }
        None => (deadline, false),
    }
}

/// Under loom nobody dies and nobody recovers, so no wait is sliced: every
/// wake-up the models see comes from a set (module docs).
#[cfg(loom)]
fn wake_by(deadline: Option<Instant>, _recheck: Recheck) -> (Option<Instant>, bool) {
    (deadline, false)
}

/// Sets `latch` unless it is set already (the skip is safe: module docs).
/// The caller has issued the fence that orders what it published before
/// this look at the latch.
#[inline]
fn set_unless_set(latch: &Latch, sets: &mut u64) {
    if !latch.is_set() {
        latch.set();
        *sets += 1;
    }
}

/// The sender's side of step 2: wakes the receiver after a publish.
#[derive(Debug)]
pub(crate) struct DataWaker<'a> {
    peer: &'a Latch,
    sets: u64,
}

impl<'a> DataWaker<'a> {
    pub(crate) fn new(peer: &'a Latch) -> Self {
        Self { peer, sets: 0 }
    }

    /// Call after every store that publishes a message (or a detach).
    #[inline]
    pub(crate) fn published(&mut self) {
        // SeqCst: the publisher's half of the Dekker pair: orders the
        // ring's publishing store before the load of the peer's latch in
        // set_unless_set; pairs with the fence in block_on.
        fence(Ordering::SeqCst);
        set_unless_set(self.peer, &mut self.sets);
    }

    pub(crate) fn sets(&self) -> u64 {
        self.sets
    }
}

/// Whose latches a receiver sets when it frees space.
#[derive(Debug)]
pub(crate) enum SpaceWaiters<'a> {
    /// The one sender of an SPSC or byte ring.
    Sender(&'a Latch),
    /// The producers of an MPSC ring that announced they wait.
    Producers(&'a mpsc::ProducerLatches),
}

/// The receiver's side of step 3: wakes the sender(s) once per quarter ring
/// freed, and before waiting or reporting empty if anything was freed
/// since.
#[derive(Debug)]
pub(crate) struct SpaceWaker<'a> {
    waiters: SpaceWaiters<'a>,
    /// log2 of a quarter of the capacity (at least one cell or byte).
    quarter_shift: u32,
    /// Space was freed since the last wake-up check.
    unchecked: bool,
    sets: u64,
}

impl<'a> SpaceWaker<'a> {
    /// `capacity` is a power of two (the rings check that).
    pub(crate) fn new(waiters: SpaceWaiters<'a>, capacity: usize) -> Self {
        Self {
            waiters,
            quarter_shift: capacity.trailing_zeros().saturating_sub(2),
            unchecked: false,
            sets: 0,
        }
    }

    /// The receiver's position moved from `before` to `after` (cells or
    /// bytes freed): wakes the sender(s) if it crossed a quarter boundary.
    #[inline]
    pub(crate) fn freed(&mut self, before: u64, after: u64) {
        if before >> self.quarter_shift != after >> self.quarter_shift {
            self.wake_now();
        } else if before != after {
            self.unchecked = true;
        }
    }

    /// Before a wait, right after [`block_on`]'s fence: wakes the
    /// sender(s) if space was freed since the last check.
    #[inline]
    pub(crate) fn before_wait(&mut self) {
        if std::mem::take(&mut self.unchecked) {
            self.set_waiters();
        }
    }

    /// Before reporting "empty" to a non-blocking caller (no fence issued
    /// yet): as [`before_wait`](Self::before_wait).
    #[inline]
    pub(crate) fn before_empty(&mut self) {
        if self.unchecked {
            self.wake_now();
        }
    }

    /// Fence, then set the waiters' latches (steps 3 and 4).
    pub(crate) fn wake_now(&mut self) {
        self.unchecked = false;
        // SeqCst: the publisher's half of the Dekker pair for space: orders
        // the ring's store of our position (or our detach) before the loads
        // of the waiters' latches (and of the waiting mask); pairs with the
        // fence in block_on on the sender's side.
        fence(Ordering::SeqCst);
        self.set_waiters();
    }

    fn set_waiters(&mut self) {
        match self.waiters {
            SpaceWaiters::Sender(latch) => set_unless_set(latch, &mut self.sets),
            SpaceWaiters::Producers(table) => table.set_waiting(&mut self.sets),
        }
    }

    pub(crate) fn sets(&self) -> u64 {
        self.sets
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn waker(latch: &Latch, capacity: usize) -> SpaceWaker<'_> {
        SpaceWaker::new(SpaceWaiters::Sender(latch), capacity)
    }

    #[test]
    fn space_is_reported_once_per_quarter_ring() {
        let sender = Latch::new();
        let mut space = waker(&sender, 64);
        for position in 0..64u64 {
            space.freed(position, position + 1);
            // A quarter of 64 cells is 16: the 16th, 32nd, ... cell wakes.
            assert_eq!(sender.is_set(), (position + 1) % 16 == 0, "at {position}");
            if sender.is_set() {
                sender.own().unwrap();
                sender.reset();
            }
        }
        assert_eq!(space.sets(), 4);
    }

    #[test]
    fn space_freed_below_a_quarter_is_reported_before_waiting() {
        let sender = Latch::new();
        let mut space = waker(&sender, 64);
        space.before_wait();
        assert!(!sender.is_set(), "nothing freed, nothing to report");
        space.freed(0, 3);
        assert!(!sender.is_set());
        space.before_wait();
        assert!(sender.is_set());
        assert_eq!(space.sets(), 1);
        // Reported once: the next empty ring finds nothing new.
        sender.own().unwrap();
        sender.reset();
        space.before_empty();
        assert!(!sender.is_set());
    }

    #[test]
    fn a_set_latch_is_not_set_again() {
        let receiver = Latch::new();
        let mut data = DataWaker::new(&receiver);
        for _ in 0..10 {
            data.published();
        }
        assert_eq!(data.sets(), 1);
    }

    #[test]
    fn tiny_rings_report_every_cell() {
        let sender = Latch::new();
        sender.own().unwrap();
        for capacity in [1, 2, 4] {
            let mut space = waker(&sender, capacity);
            for position in 0..8u64 {
                space.freed(position, position + 1);
                assert!(sender.is_set(), "capacity {capacity} at {position}");
                sender.reset();
            }
        }
    }
}
