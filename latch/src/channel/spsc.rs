//! Blocking ends over an [`SpscRing`](shmem::ring::SpscRing): a
//! [`Sender`] that sleeps while the ring is full and a [`Receiver`] that
//! sleeps while it is empty. The protocol is in the [module
//! docs](super).
//!
//! Values are `Pod`, hence `Copy`: a send that fails leaves the caller's
//! value as it was, so the errors carry none back.
//!
//! ```
//! use std::time::Instant;
//! use latch::Latch;
//! use latch::channel::{Latches, spsc};
//! use shmem::ring::SpscStorage;
//!
//! let storage = SpscStorage::<u32>::new(2)?;
//! let (a, b) = (Latch::new(), Latch::new());
//! a.own()?;
//! b.own()?;
//! let mut tx = spsc::Sender::new(storage.ring().producer(1)?, Latches { own: &a, peer: &b });
//! let mut rx = spsc::Receiver::new(storage.ring().consumer(1)?, Latches { own: &b, peer: &a });
//! let now = Some(Instant::now());
//! assert_eq!(tx.send_slice(&[1, 2, 3], now)?, 2); // what fits
//! assert!(matches!(tx.send(3, now), Err(spsc::SendError::Timeout)));
//! assert!(b.is_set(), "the receiver was woken by the first publish");
//! assert_eq!(rx.recv(now)?, 1);
//! let mut out = [0; 4];
//! assert_eq!(rx.recv_slice(&mut out, now)?, 1);
//! assert_eq!(out[0], 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::ControlFlow::{Break, Continue};
use std::time::Instant;

use bytemuck::Pod;
use shmem::ring::{Corrupt, SpscConsumer, SpscPopError, SpscProducer, SpscPushError};
use thiserror::Error;

use super::{DataWaker, FromStop, Latches, SpaceWaiters, SpaceWaker, Stats, Stop, block_on};
use crate::{Latch, LatchError, WaitOptions};

/// Why a blocking send gave up. Shared by [`spsc`](self) and
/// [`mpsc`](super::mpsc) senders.
#[derive(Debug, Error)]
pub enum SendError {
    /// The ring stayed full until the deadline.
    #[error("the ring stayed full until the deadline; the receiver is slow, stopped or gone")]
    Timeout,
    /// The postmaster died while this end waited.
    #[error("the postmaster died while the ring was full; clean up and exit")]
    PostmasterDied,
    /// The receiver's index is impossible; the segment should be reset.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// Waiting on this end's latch failed (not its owner, or the futex).
    #[error("cannot wait for space in the ring: {0}")]
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
    /// The ring stayed empty until the deadline.
    #[error("the ring stayed empty until the deadline; the sender is slow, done or gone")]
    Timeout,
    /// The postmaster died while this end waited.
    #[error("the postmaster died while the ring was empty; clean up and exit")]
    PostmasterDied,
    /// The sender's index is impossible; the segment should be reset.
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

/// The sending end: an [`SpscProducer`] that waits on its own latch while
/// the ring is full and sets the receiver's latch after publishing.
#[derive(Debug)]
pub struct Sender<'a, T> {
    ring: SpscProducer<'a, T>,
    own: &'a Latch,
    options: WaitOptions,
    waits: u64,
    data: DataWaker<'a>,
}

impl<'a, T: Pod + Send> Sender<'a, T> {
    /// Wraps the producer role; `latches.own` must be owned by the calling
    /// process before the first wait.
    pub fn new(ring: SpscProducer<'a, T>, latches: Latches<'a>) -> Self {
        Self {
            ring,
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

    /// Pushes `value` if there is room, and wakes the receiver if it
    /// needs waking; never waits.
    pub fn try_send(&mut self, value: T) -> Result<(), SpscPushError> {
        self.ring.try_push(value)?;
        self.data.published();
        Ok(())
    }

    /// Pushes `value`, waiting while the ring is full until `deadline`
    /// (`None`: no deadline).
    pub fn send(&mut self, value: T, deadline: Option<Instant>) -> Result<(), SendError> {
        match self.try_send(value) {
            Ok(()) => Ok(()),
            Err(SpscPushError::Full) => self.send_blocking(value, deadline),
            Err(SpscPushError::Corrupt(c)) => Err(c.into()),
        }
    }

    #[cold]
    #[inline(never)]
    fn send_blocking(&mut self, value: T, deadline: Option<Instant>) -> Result<(), SendError> {
        let Self {
            ring,
            own,
            options,
            waits,
            data,
        } = self;
        block_on(own, deadline, options, waits, |_| {
            match ring.try_push(value) {
                Ok(()) => {
                    data.published();
                    Break(Ok(()))
                }
                Err(SpscPushError::Full) => Continue(None),
                Err(SpscPushError::Corrupt(c)) => Break(Err(c.into())),
            }
        })
    }

    /// Pushes as many leading values as fit, with one publish and at most
    /// one set; never waits. Returns how many were pushed.
    pub fn try_send_slice(&mut self, values: &[T]) -> Result<usize, Corrupt> {
        let n = self.ring.push_slice(values)?;
        if n > 0 {
            self.data.published();
        }
        Ok(n)
    }

    /// Pushes as many leading values as fit, waiting until at least one
    /// does (or `deadline`). Returns how many were pushed: all of them
    /// only if they fit; loop to send the rest. An empty slice returns 0
    /// at once.
    pub fn send_slice(
        &mut self,
        values: &[T],
        deadline: Option<Instant>,
    ) -> Result<usize, SendError> {
        if values.is_empty() {
            return Ok(0);
        }
        let Self {
            ring,
            own,
            options,
            waits,
            data,
        } = self;
        block_on(own, deadline, options, waits, |_| {
            match ring.push_slice(values) {
                Ok(0) => Continue(None),
                Ok(n) => {
                    data.published();
                    Break(Ok(n))
                }
                Err(c) => Break(Err(c.into())),
            }
        })
    }

    /// The producer role underneath (positions, capacity).
    pub fn ring(&self) -> &SpscProducer<'a, T> {
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

/// The receiving end: an [`SpscConsumer`] that waits on its own latch
/// while the ring is empty and sets the sender's latch once per quarter
/// ring it frees (and before it waits).
#[derive(Debug)]
pub struct Receiver<'a, T> {
    ring: SpscConsumer<'a, T>,
    own: &'a Latch,
    options: WaitOptions,
    waits: u64,
    space: SpaceWaker<'a>,
}

impl<'a, T: Pod + Send> Receiver<'a, T> {
    /// Wraps the consumer role; `latches.own` must be owned by the calling
    /// process before the first wait.
    pub fn new(ring: SpscConsumer<'a, T>, latches: Latches<'a>) -> Self {
        let capacity = ring.capacity();
        Self {
            ring,
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

    /// Pops the oldest value if there is one; never waits.
    pub fn try_recv(&mut self) -> Result<T, SpscPopError> {
        let before = self.ring.position();
        match self.ring.try_pop() {
            Ok(value) => {
                self.space.freed(before, self.ring.position());
                Ok(value)
            }
            Err(SpscPopError::Empty) => {
                self.space.before_empty();
                Err(SpscPopError::Empty)
            }
            Err(e) => Err(e),
        }
    }

    /// Pops the oldest value, waiting while the ring is empty until
    /// `deadline` (`None`: no deadline).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<T, RecvError> {
        match self.try_recv() {
            Ok(value) => Ok(value),
            Err(SpscPopError::Empty) => self.recv_blocking(deadline),
            Err(SpscPopError::Corrupt(c)) => Err(c.into()),
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
            match ring.try_pop() {
                Ok(value) => {
                    space.freed(before, ring.position());
                    Break(Ok(value))
                }
                Err(SpscPopError::Empty) => {
                    if after_reset {
                        space.before_wait();
                    }
                    Continue(None)
                }
                Err(SpscPopError::Corrupt(c)) => Break(Err(c.into())),
            }
        })
    }

    /// Pops up to `out.len()` values, with one index store; never waits.
    /// Returns how many were popped (0 if empty).
    pub fn try_recv_slice(&mut self, out: &mut [T]) -> Result<usize, Corrupt> {
        let before = self.ring.position();
        let n = self.ring.pop_slice(out)?;
        if n > 0 {
            self.space.freed(before, self.ring.position());
        } else if !out.is_empty() {
            self.space.before_empty();
        }
        Ok(n)
    }

    /// Pops up to `out.len()` values, waiting until there is at least one
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
            match ring.pop_slice(out) {
                Ok(0) => {
                    if after_reset {
                        space.before_wait();
                    }
                    Continue(None)
                }
                Ok(n) => {
                    space.freed(before, ring.position());
                    Break(Ok(n))
                }
                Err(c) => Break(Err(c.into())),
            }
        })
    }

    /// The consumer role underneath (positions, capacity).
    pub fn ring(&self) -> &SpscConsumer<'a, T> {
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

    use shmem::ring::SpscStorage;

    use super::*;

    fn owned() -> Latch {
        let latch = Latch::new();
        latch.own().unwrap();
        latch
    }

    #[test]
    fn a_past_deadline_times_out_at_once_on_full_and_empty() {
        let storage = SpscStorage::<u64>::new(2).unwrap();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(
            storage.ring().producer(1).unwrap(),
            Latches { own: &a, peer: &b },
        );
        let mut rx = Receiver::new(
            storage.ring().consumer(1).unwrap(),
            Latches { own: &b, peer: &a },
        );
        let past = Some(Instant::now() - Duration::from_millis(1));
        assert!(matches!(rx.recv(past), Err(RecvError::Timeout)));
        assert!(matches!(
            rx.recv_slice(&mut [0; 2], past),
            Err(RecvError::Timeout)
        ));
        tx.send(1, past).unwrap();
        tx.send(2, past).unwrap();
        assert!(matches!(tx.send(3, past), Err(SendError::Timeout)));
        assert!(matches!(tx.send_slice(&[3], past), Err(SendError::Timeout)));
        assert_eq!(rx.recv(past).unwrap(), 1);
        assert_eq!(rx.recv(past).unwrap(), 2);
        assert!(tx.stats().waits >= 2 && rx.stats().waits >= 2);
    }

    #[test]
    fn a_streaming_sender_sets_the_receivers_latch_once() {
        let storage = SpscStorage::<u64>::new(64).unwrap();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(
            storage.ring().producer(1).unwrap(),
            Latches { own: &a, peer: &b },
        );
        for i in 0..64 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(
            tx.stats().sets,
            1,
            "the latch stays set until the receiver resets it"
        );
        assert!(matches!(tx.try_send(64), Err(SpscPushError::Full)));
    }

    #[test]
    fn a_receiver_that_frees_space_wakes_the_sender_per_quarter() {
        let storage = SpscStorage::<u64>::new(16).unwrap();
        let (a, b) = (owned(), owned());
        let mut tx = Sender::new(
            storage.ring().producer(1).unwrap(),
            Latches { own: &a, peer: &b },
        );
        let mut rx = Receiver::new(
            storage.ring().consumer(1).unwrap(),
            Latches { own: &b, peer: &a },
        );
        assert_eq!(tx.try_send_slice(&[7; 16]).unwrap(), 16);
        for _ in 0..3 {
            rx.try_recv().unwrap();
        }
        assert!(!a.is_set(), "three cells are less than a quarter of 16");
        rx.try_recv().unwrap();
        assert!(a.is_set(), "the fourth cell completes a quarter");
        assert_eq!(rx.stats().sets, 1);
        a.reset();
        let mut out = [0; 16];
        assert_eq!(rx.try_recv_slice(&mut out).unwrap(), 12);
        assert_eq!(rx.stats().sets, 2, "a batch across boundaries sets once");
    }

    #[test]
    fn a_wait_by_a_non_owner_is_an_error() {
        let storage = SpscStorage::<u64>::new(2).unwrap();
        let (a, b) = (Latch::new(), Latch::new()); // nobody owns them
        let mut rx = Receiver::new(
            storage.ring().consumer(1).unwrap(),
            Latches { own: &b, peer: &a },
        );
        assert!(matches!(
            rx.recv(None),
            Err(RecvError::Latch(LatchError::NotOwner { .. }))
        ));
    }
}
