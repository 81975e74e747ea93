//! Blocking ends over a [`ByteRing`](shmem::ring::ByteRing): a [`Sender`]
//! of byte messages that sleeps while the ring has no room for the next
//! one, and a [`Receiver`] that sleeps while it is empty, both ending their
//! wait when the peer detaches or dies.
//!
//! # Detach and death
//!
//! Dropping an end detaches it in the ring and then (step 4 of the
//! [protocol](super)) sets the peer's latch, so a peer asleep on a full or
//! empty ring wakes at once: a sender to see [`SendError::Detached`], a
//! receiver to drain every message sent before the detach and then see
//! [`RecvError::Detached`].
//!
//! A peer that dies cannot set anything, and the supervisor that reaps it
//! calls [`ByteRing::mark_dead`](shmem::ring::ByteRing::mark_dead) without
//! knowing any latch. Every wait here is therefore sliced into
//! [`PEER_CHECK_INTERVAL`]s: within one of them after `mark_dead`, a
//! waiting end reports [`SendError::PeerDied`] / [`RecvError::PeerDied`]
//! (a receiver after it has drained every complete message).
//!
//! [`PEER_CHECK_INTERVAL`]: super::PEER_CHECK_INTERVAL
//!
//! # Messages in place
//!
//! [`Receiver::recv`] hands out a [`Message`] that borrows the bytes in the
//! ring when they are contiguous (copied out when they wrap, as
//! [`ByteReceiver::try_recv`] does); the space is freed, and the sender
//! woken if a quarter of the ring has been freed, when it drops. To find
//! out whether a message is there without consuming it, `recv` looks once
//! and forgets the guard (the ring leaves a forgotten message in place),
//! then takes it; a wrapped message is copied twice.
//!
//! ```
//! use std::time::Instant;
//! use latch::Latch;
//! use latch::channel::{Latches, bytes};
//! use shmem::ring::ByteStorage;
//!
//! let storage = ByteStorage::new(64)?;
//! let (a, b) = (Latch::new(), Latch::new());
//! a.own()?;
//! b.own()?;
//! let mut tx = bytes::Sender::new(storage.ring().sender(1)?, Latches { own: &a, peer: &b });
//! let mut rx = bytes::Receiver::new(storage.ring().receiver(2)?, Latches { own: &b, peer: &a });
//! let now = Some(Instant::now());
//! tx.send(b"hello", now)?;
//! tx.detach(); // sets the receiver's latch
//! assert!(b.is_set());
//! assert_eq!(&*rx.recv(now)?, b"hello");
//! assert!(matches!(rx.recv(None), Err(bytes::RecvError::Detached)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::mem::ManuallyDrop;
use std::ops::ControlFlow::{Break, Continue};
use std::ops::Deref;
use std::time::Instant;

use shmem::ring::{
    ByteReceiver, ByteRecvError, ByteSendError, ByteSender, Corrupt, FRAME_HEADER, Received,
};
use thiserror::Error;

use super::{
    DataWaker, FromStop, Latches, PEER_CHECK_INTERVAL, SpaceWaiters, SpaceWaker, Stats, Stop,
    block_on,
};
use crate::{Latch, LatchError, WaitOptions};

/// Why a blocking send gave up.
#[derive(Debug, Error)]
pub enum SendError {
    /// The ring had no room for the message until the deadline.
    #[error(
        "the ring had no room for the message until the deadline; the receiver is slow or stopped"
    )]
    Timeout,
    /// The postmaster died while this end waited.
    #[error("the postmaster died while the ring was full; clean up and exit")]
    PostmasterDied,
    /// The receiver has detached: nobody will read this message.
    #[error("the receiver has detached; nobody will read this message")]
    Detached,
    /// The receiver died (as declared by the supervisor).
    #[error("the receiver died; nobody will read this message")]
    PeerDied,
    /// The message is longer than the ring's maximum; it will never fit.
    #[error(
        "message of {len} bytes exceeds this ring's maximum of {max}; split it or reserve a larger ring"
    )]
    TooLarge {
        /// The message length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The receiver's index is impossible; the segment should be reset.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Waiting on this end's latch failed (not its owner, or the futex).
    #[error("cannot wait for room in the ring: {0}")]
    Latch(#[from] LatchError),
}

impl FromStop for SendError {
    fn from_stop(stop: Stop) -> Self {
        match stop {
            Stop::Timeout => Self::Timeout,
            Stop::PostmasterDied => Self::PostmasterDied,
            Stop::Latch(e) => Self::Latch(e),
        }
    }
}

/// Why a blocking receive gave up.
#[derive(Debug, Error)]
pub enum RecvError {
    /// No message arrived before the deadline.
    #[error("no message arrived before the deadline; the sender is slow, done or stopped")]
    Timeout,
    /// The postmaster died while this end waited.
    #[error("the postmaster died while the ring was empty; clean up and exit")]
    PostmasterDied,
    /// The sender detached, and every message it sent has been received.
    #[error("the sender has detached and every message it sent has been received")]
    Detached,
    /// The sender died (as declared by the supervisor); every message it
    /// completed has been received, any it was writing is lost.
    #[error("the sender died; every message it completed has been received")]
    PeerDied,
    /// A frame or the sender's index is impossible; the segment should be
    /// reset.
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

/// The sending end: a [`ByteSender`] that waits on its own latch while the
/// ring has no room, sets the receiver's latch after publishing, and
/// detaches (and sets it) when dropped.
#[derive(Debug)]
pub struct Sender<'a> {
    /// Dropped by hand in `Drop`, before the receiver is woken.
    ring: ManuallyDrop<ByteSender<'a>>,
    own: &'a Latch,
    options: WaitOptions,
    waits: u64,
    data: DataWaker<'a>,
}

impl<'a> Sender<'a> {
    /// Wraps the sender side; `latches.own` must be owned by the calling
    /// process before the first wait.
    pub fn new(ring: ByteSender<'a>, latches: Latches<'a>) -> Self {
        Self {
            ring: ManuallyDrop::new(ring),
            own: latches.own,
            options: WaitOptions::default(),
            waits: 0,
            data: DataWaker::new(latches.peer),
        }
    }

    /// These wait options (spin policy) for every wait from now on.
    pub fn with_options(mut self, options: WaitOptions) -> Self {
        self.options = options;
        self
    }

    /// Sends `message` whole if there is room, and wakes the receiver if it
    /// needs waking; never waits.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), ByteSendError> {
        self.ring.try_send(message)?;
        self.data.published();
        Ok(())
    }

    /// Sends `message` whole, waiting while the ring has no room for it
    /// until `deadline` (`None`: no deadline). Fails at once, without
    /// waiting, if it can never be sent ([`SendError::TooLarge`],
    /// [`SendError::Detached`], [`SendError::PeerDied`]).
    pub fn send(&mut self, message: &[u8], deadline: Option<Instant>) -> Result<(), SendError> {
        let Self {
            ring,
            own,
            options,
            waits,
            data,
        } = self;
        block_on(own, deadline, options, waits, |_| {
            match ring.try_send(message) {
                Ok(()) => {
                    data.published();
                    Break(Ok(()))
                }
                // Sliced: a receiver's death is only visible in the ring.
                Err(ByteSendError::Full) => Continue(Some(PEER_CHECK_INTERVAL)),
                Err(ByteSendError::Detached) => Break(Err(SendError::Detached)),
                Err(ByteSendError::PeerDied) => Break(Err(SendError::PeerDied)),
                Err(ByteSendError::TooLarge { len, max }) => {
                    Break(Err(SendError::TooLarge { len, max }))
                }
                Err(ByteSendError::Corrupt(c)) => Break(Err(c.into())),
            }
        })
    }

    /// Detaches and wakes the receiver: it drains what was sent, then sees
    /// [`RecvError::Detached`]. Same as dropping the sender.
    pub fn detach(self) {}

    /// The sender side underneath (position, maximum message).
    pub fn ring(&self) -> &ByteSender<'a> {
        &self.ring
    }

    /// What this end has done to wake and wait so far.
    pub fn stats(&self) -> Stats {
        Stats {
            sets: self.data.sets(),
            waits: self.waits,
        }
    }
}

impl Drop for Sender<'_> {
    fn drop(&mut self) {
        // SAFETY: `ring` is dropped here exactly once and never used again
        // (this is the last use of `self`).
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        // The detach is published like a message (step 4).
        self.data.published();
    }
}

/// The receiving end: a [`ByteReceiver`] that waits on its own latch while
/// the ring is empty, sets the sender's latch once per quarter ring it
/// frees (and before it waits), and detaches (and sets it) when dropped.
#[derive(Debug)]
pub struct Receiver<'a> {
    /// Dropped by hand in `Drop`, before the sender is woken.
    ring: ManuallyDrop<ByteReceiver<'a>>,
    own: &'a Latch,
    options: WaitOptions,
    waits: u64,
    space: SpaceWaker<'a>,
}

impl<'a> Receiver<'a> {
    /// Wraps the receiver side; `latches.own` must be owned by the calling
    /// process before the first wait.
    pub fn new(ring: ByteReceiver<'a>, latches: Latches<'a>) -> Self {
        let capacity = ring.max_message() + FRAME_HEADER;
        Self {
            ring: ManuallyDrop::new(ring),
            own: latches.own,
            options: WaitOptions::default(),
            waits: 0,
            space: SpaceWaker::new(SpaceWaiters::Sender(latches.peer), capacity),
        }
    }

    /// These wait options (spin policy) for every wait from now on.
    pub fn with_options(mut self, options: WaitOptions) -> Self {
        self.options = options;
        self
    }

    /// Receives the next message if there is one; never waits. The message
    /// is consumed when the returned guard drops.
    pub fn try_recv(&mut self) -> Result<Message<'_, 'a>, ByteRecvError> {
        let Self { ring, space, .. } = self;
        let before = ring.position();
        match ring.try_recv() {
            Ok(received) => {
                // The frame this message occupies (the ring's framing: a
                // header, then the payload padded to a multiple of 8).
                let frame = FRAME_HEADER + received.len().next_multiple_of(8);
                Ok(Message {
                    received: ManuallyDrop::new(received),
                    space,
                    before,
                    after: before.wrapping_add(frame as u64),
                })
            }
            Err(ByteRecvError::Empty) => {
                space.before_empty();
                Err(ByteRecvError::Empty)
            }
            Err(e) => Err(e),
        }
    }

    /// Receives the next message, waiting while the ring is empty until
    /// `deadline` (`None`: no deadline). After the sender detaches or dies,
    /// returns every message it completed, then [`RecvError::Detached`] or
    /// [`RecvError::PeerDied`].
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Message<'_, 'a>, RecvError> {
        {
            let Self {
                ring,
                own,
                options,
                waits,
                space,
            } = self;
            block_on::<(), RecvError>(own, deadline, options, waits, |after_reset| {
                match ring.try_recv() {
                    // Left in the ring: taken below (see "Messages in
                    // place" for why it is not returned from here).
                    Ok(received) => {
                        std::mem::forget(received);
                        Break(Ok(()))
                    }
                    // Sliced: a sender's death is only visible in the ring.
                    Err(ByteRecvError::Empty) => {
                        if after_reset {
                            space.before_wait();
                        }
                        Continue(Some(PEER_CHECK_INTERVAL))
                    }
                    // Final states and corruption: reported again below.
                    Err(_) => Break(Ok(())),
                }
            })?;
        }
        // Only this end consumes and detaches are final, so the ring still
        // holds what the look above found.
        let position = self.ring.position();
        self.try_recv().map_err(|e| match e {
            ByteRecvError::Detached => RecvError::Detached,
            ByteRecvError::PeerDied => RecvError::PeerDied,
            ByteRecvError::Corrupt(c) => RecvError::Corrupt(c),
            ByteRecvError::Empty => RecvError::Corrupt(Corrupt {
                what: "byte ring emptied under its only receiver",
                position,
                found: 0,
            }),
        })
    }

    /// Detaches and wakes the sender: its sends fail with
    /// [`SendError::Detached`]. Same as dropping the receiver.
    pub fn detach(self) {}

    /// The receiver side underneath (position, maximum message).
    pub fn ring(&self) -> &ByteReceiver<'a> {
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

impl Drop for Receiver<'_> {
    fn drop(&mut self) {
        // SAFETY: `ring` is dropped here exactly once and never used again
        // (this is the last use of `self`).
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        // The detach is published like freed space (step 4).
        self.space.wake_now();
    }
}

/// A received message; derefs to its bytes. Dropping it consumes the
/// message and, once a quarter of the ring has been freed, wakes the
/// sender. Forgetting it leaves the message to be received again.
#[derive(Debug)]
pub struct Message<'r, 'a> {
    /// Dropped by hand in `Drop`, before the sender is woken.
    received: ManuallyDrop<Received<'r, 'a>>,
    space: &'r mut SpaceWaker<'a>,
    /// The receiver's position before and after this message.
    before: u64,
    after: u64,
}

impl Message<'_, '_> {
    /// Whether the bytes are read in place in the ring (not copied).
    pub fn is_in_place(&self) -> bool {
        self.received.is_in_place()
    }
}

impl Deref for Message<'_, '_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.received
    }
}

impl Drop for Message<'_, '_> {
    fn drop(&mut self) {
        // SAFETY: `received` is dropped here exactly once and never used
        // again (this is the last use of `self`).
        unsafe { ManuallyDrop::drop(&mut self.received) };
        self.space.freed(self.before, self.after);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use shmem::ring::ByteStorage;

    use super::*;

    fn owned() -> Latch {
        let latch = Latch::new();
        latch.own().unwrap();
        latch
    }

    #[test]
    fn too_large_and_detached_fail_without_waiting() {
        let storage = ByteStorage::new(64).unwrap();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(
            storage.ring().sender(1).unwrap(),
            Latches { own: &a, peer: &b },
        );
        let rx = Receiver::new(
            storage.ring().receiver(2).unwrap(),
            Latches { own: &b, peer: &a },
        );
        assert!(matches!(
            tx.send(&[0; 57], None),
            Err(SendError::TooLarge { len: 57, max: 56 })
        ));
        a.reset();
        drop(rx);
        assert!(a.is_set(), "a detaching receiver wakes the sender");
        assert!(matches!(tx.send(b"x", None), Err(SendError::Detached)));
        assert_eq!(tx.stats().waits, 0);
    }

    #[test]
    fn a_full_ring_times_out_and_a_freed_one_accepts() {
        let storage = ByteStorage::new(64).unwrap();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(
            storage.ring().sender(1).unwrap(),
            Latches { own: &a, peer: &b },
        );
        let mut rx = Receiver::new(
            storage.ring().receiver(2).unwrap(),
            Latches { own: &b, peer: &a },
        );
        let past = Some(Instant::now() - Duration::from_millis(1));
        tx.send(&[1; 40], past).unwrap(); // a 48-byte frame
        assert!(matches!(tx.send(&[2; 16], past), Err(SendError::Timeout)));
        a.reset();
        let message = rx.recv(past).unwrap();
        assert_eq!(&*message, &[1; 40]);
        assert!(
            !a.is_set(),
            "nothing is freed while the message is borrowed"
        );
        drop(message);
        assert!(a.is_set(), "48 bytes freed cross a quarter of 64");
        tx.send(&[2; 16], past).unwrap();
        assert_eq!(&*rx.recv(past).unwrap(), &[2; 16]);
        assert!(matches!(rx.recv(past), Err(RecvError::Timeout)));
    }

    #[test]
    fn a_dead_sender_is_reported_after_its_messages() {
        let storage = ByteStorage::new(64).unwrap();
        let ring = storage.ring();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(ring.sender(42).unwrap(), Latches { own: &a, peer: &b });
        let mut rx = Receiver::new(ring.receiver(2).unwrap(), Latches { own: &b, peer: &a });
        tx.send(b"last words", None).unwrap();
        std::mem::forget(tx); // dies without detaching
        assert_eq!(ring.mark_dead(42), 1);
        assert_eq!(&*rx.recv(None).unwrap(), b"last words");
        assert!(matches!(rx.recv(None), Err(RecvError::PeerDied)));
    }
}
