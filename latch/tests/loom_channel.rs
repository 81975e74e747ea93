//! loom models of the channel protocol (see `latch::channel`).
//!
//! Threads stand in for processes and heap storage for the segment. Under
//! `--cfg loom` the futex is a loom `Mutex` + `Condvar` (see
//! `latch::futex`), every wait here has no deadline and no wait is sliced
//! (`latch::channel` under loom), so an end can only return once a set has
//! woken it: a wake-up that the protocol or its batching forgets leaves a
//! modelled thread asleep forever, and loom reports a deadlock.
//!
//! The rings are tiny so that both ends block on every other message:
//! full and empty, and the quarter-ring rule reduced to a single cell.
//!
//! Each model also checks, from the ends' own counters ([`Stats`]), that
//! loom reached the interleavings in which an end actually waited, so a
//! model cannot pass by never putting anyone to sleep.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p latch --release --test loom_channel`
//!
//! CI runs that. The two-producer MPSC model takes minutes at two
//! preemptions, so it runs at one there; its `_deep` twin is `#[ignore]`d:
//! add `-- --include-ignored` to run it too (about two minutes of CPU).
#![cfg(loom)]

use latch::channel::Stats;
use latch::channel::mpsc::{self, ProducerLatches};
use latch::channel::{Latches, bytes, spsc};
use latch::{Latch, SpinPolicy, WaitOptions};
use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::{Reached, explore, explore_bounded};
use shmem::ring::{ByteStorage, MpscStorage, SpscStorage};

/// Notes `class` if the end whose counters are `stats` waited.
fn note_waits(reached: &Reached, stats: Stats, class: &'static str) {
    if stats.waits > 0 {
        reached.note(class);
    }
}

const SENDER_WAITED: &str = "the sender waited";
const RECEIVER_WAITED: &str = "the receiver waited";

/// The sender's and the receiver's latch, owned up front (modelled threads
/// share one pid, so ownership is per "process" = the whole model).
struct Pair {
    sender: Latch,
    receiver: Latch,
}

impl Pair {
    fn new() -> Self {
        let pair = Self {
            sender: Latch::new(),
            receiver: Latch::new(),
        };
        pair.sender.own().expect("own");
        pair.receiver.own().expect("own");
        pair
    }

    fn sender(&self) -> Latches<'_> {
        Latches {
            own: &self.sender,
            peer: &self.receiver,
        }
    }

    fn receiver(&self) -> Latches<'_> {
        Latches {
            own: &self.receiver,
            peer: &self.sender,
        }
    }
}

struct SpscScene {
    storage: SpscStorage<u32>,
    latches: Pair,
}

/// `count` messages through an SPSC ring of `capacity`, blocking on both
/// sides; asserts FIFO and exactly once, and that each side waited in some
/// interleaving.
fn spsc_stream(capacity: usize, count: u32, options: WaitOptions) {
    explore(&[SENDER_WAITED, RECEIVER_WAITED], move |reached| {
        let scene = Arc::new(SpscScene {
            storage: SpscStorage::new(capacity).expect("storage"),
            latches: Pair::new(),
        });
        let sending = scene.clone();
        let sender = thread::spawn(move || {
            let producer = sending.storage.ring().producer(1).expect("producer");
            let mut tx =
                spsc::Sender::new(producer, sending.latches.sender()).with_options(options);
            for i in 0..count {
                tx.send(i, None).expect("send");
            }
            tx.stats()
        });
        let consumer = scene.storage.ring().consumer(2).expect("consumer");
        let mut rx = spsc::Receiver::new(consumer, scene.latches.receiver()).with_options(options);
        for i in 0..count {
            assert_eq!(rx.recv(None).expect("recv"), i);
        }
        note_waits(reached, sender.join().expect("sender"), SENDER_WAITED);
        note_waits(reached, rx.stats(), RECEIVER_WAITED);
    });
}

#[test]
fn spsc_capacity_1_three_messages_lose_no_wakeup() {
    spsc_stream(1, 3, WaitOptions::no_spin());
}

#[test]
fn spsc_capacity_2_four_messages_lose_no_wakeup() {
    spsc_stream(2, 4, WaitOptions::no_spin());
}

#[test]
fn spsc_with_a_spin_before_sleeping_loses_no_wakeup() {
    spsc_stream(
        1,
        2,
        WaitOptions::default().spin(SpinPolicy::Fixed(std::time::Duration::from_micros(1))),
    );
}

#[test]
fn spsc_slices_lose_no_wakeup() {
    explore(&[SENDER_WAITED, RECEIVER_WAITED], |reached| {
        let scene = Arc::new(SpscScene {
            storage: SpscStorage::new(2).expect("storage"),
            latches: Pair::new(),
        });
        let sending = scene.clone();
        let sender = thread::spawn(move || {
            let producer = sending.storage.ring().producer(1).expect("producer");
            let mut tx = spsc::Sender::new(producer, sending.latches.sender())
                .with_options(WaitOptions::no_spin());
            let values = [0, 1, 2];
            let mut sent = 0;
            while sent < values.len() {
                sent += tx.send_slice(&values[sent..], None).expect("send");
            }
            tx.stats()
        });
        let consumer = scene.storage.ring().consumer(2).expect("consumer");
        let mut rx = spsc::Receiver::new(consumer, scene.latches.receiver())
            .with_options(WaitOptions::no_spin());
        let mut out = [0u32; 3];
        let mut got = 0;
        while got < out.len() {
            got += rx.recv_slice(&mut out[got..], None).expect("recv");
        }
        assert_eq!(out, [0, 1, 2]);
        note_waits(reached, sender.join().expect("sender"), SENDER_WAITED);
        note_waits(reached, rx.stats(), RECEIVER_WAITED);
    });
}

struct MpscScene {
    storage: MpscStorage<u32>,
    waiters: ProducerLatches,
    receiver: Latch,
}

const PRODUCER_WAITED: &str = "a producer waited on the full ring";

/// `producers` producers, each sending `per_producer` messages into a
/// ring of `capacity`, and a blocking receiver; per-producer FIFO, exactly
/// once. `bound` caps the preemptions (see [`explore_bounded`]).
fn mpsc_stream(bound: Option<usize>, producers: u32, capacity: usize, per_producer: u32) {
    explore_bounded(bound, &[PRODUCER_WAITED, RECEIVER_WAITED], move |reached| {
        let scene = Arc::new(MpscScene {
            storage: MpscStorage::new(capacity).expect("storage"),
            waiters: ProducerLatches::new(),
            receiver: Latch::new(),
        });
        scene.receiver.own().expect("own");
        let threads: Vec<_> = (0..producers)
            .map(|k| {
                let scene = scene.clone();
                thread::spawn(move || {
                    let producer = scene.storage.ring().producer(k + 1).expect("producer");
                    let mut tx = mpsc::Sender::new(producer, &scene.receiver, &scene.waiters)
                        .expect("sender")
                        .with_options(WaitOptions::no_spin());
                    for i in 0..per_producer {
                        tx.send(k << 16 | i, None).expect("send");
                    }
                    tx.stats()
                })
            })
            .collect();
        let consumer = scene.storage.ring().consumer(9).expect("consumer");
        let mut rx = mpsc::Receiver::new(consumer, &scene.receiver, &scene.waiters)
            .with_options(WaitOptions::no_spin());
        let mut next = [0u32; 2];
        for _ in 0..producers * per_producer {
            let value = rx.recv(None).expect("recv");
            let k = (value >> 16) as usize;
            assert_eq!(value & 0xffff, next[k], "per-producer FIFO");
            next[k] += 1;
        }
        for thread in threads {
            note_waits(reached, thread.join().expect("producer"), PRODUCER_WAITED);
        }
        note_waits(reached, rx.stats(), RECEIVER_WAITED);
        assert_eq!(scene.waiters.waiting(), 0, "every producer withdrew");
    });
}

/// Both producers meet a full ring (one cell), so at least one of them
/// sleeps until the receiver's quarter-ring check finds its waiting bit.
/// The largest model here: minutes at two preemptions (two messages each
/// did not finish in half an hour), so CI runs it at one, which still
/// reaches a producer asleep on the full ring; the `_deep` twin below runs
/// it at `LOOM_MAX_PREEMPTIONS`.
#[test]
fn mpsc_two_producers_on_a_one_cell_ring_lose_no_wakeup() {
    mpsc_stream(Some(1), 2, 1, 1);
}

/// Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p
/// latch --release --test loom_channel -- --ignored` (about two minutes of
/// CPU).
#[test]
#[ignore = "deep: minutes at LOOM_MAX_PREEMPTIONS=2; CI runs the bounded twin"]
fn mpsc_two_producers_on_a_one_cell_ring_lose_no_wakeup_deep() {
    mpsc_stream(None, 2, 1, 1);
}

/// One producer through the MPSC ring and its waiting mask, full on every
/// other message.
#[test]
fn mpsc_one_producer_three_messages_on_a_one_cell_ring_lose_no_wakeup() {
    mpsc_stream(None, 1, 1, 3);
}

struct ByteScene {
    storage: ByteStorage,
    latches: Pair,
}

fn byte_scene() -> Arc<ByteScene> {
    // 16 bytes: one frame of an 8-byte message fills the ring.
    Arc::new(ByteScene {
        storage: ByteStorage::new(16).expect("storage"),
        latches: Pair::new(),
    })
}

/// The receiver drains what was sent, and a detach that lands while it
/// sleeps on the empty ring wakes it to see `Detached`.
#[test]
fn bytes_sender_detach_wakes_a_sleeping_receiver_after_the_drain() {
    explore(&[RECEIVER_WAITED], |reached| {
        let scene = byte_scene();
        let sending = scene.clone();
        let sender = thread::spawn(move || {
            let ring = sending.storage.ring().sender(1).expect("sender");
            let mut tx = bytes::Sender::new(ring, sending.latches.sender())
                .with_options(WaitOptions::no_spin());
            tx.send(b"one", None).expect("send");
            tx.send(b"two", None).expect("send");
            // Dropped: detaches, then sets the receiver's latch.
        });
        let ring = scene.storage.ring().receiver(2).expect("receiver");
        let mut rx = bytes::Receiver::new(ring, scene.latches.receiver())
            .with_options(WaitOptions::no_spin());
        assert_eq!(&*rx.recv(None).expect("recv"), b"one");
        assert_eq!(&*rx.recv(None).expect("recv"), b"two");
        assert!(matches!(rx.recv(None), Err(bytes::RecvError::Detached)));
        note_waits(reached, rx.stats(), RECEIVER_WAITED);
        sender.join().expect("sender");
    });
}

/// A receiver that detaches while the sender sleeps on a full ring wakes
/// it; the send either got in before the detach or reports it.
#[test]
fn bytes_receiver_detach_wakes_a_sender_asleep_on_a_full_ring() {
    explore(&[SENDER_WAITED], |reached| {
        let scene = byte_scene();
        let sending = scene.clone();
        let sender = thread::spawn(move || {
            let ring = sending.storage.ring().sender(1).expect("sender");
            let mut tx = bytes::Sender::new(ring, sending.latches.sender())
                .with_options(WaitOptions::no_spin());
            tx.send(b"fills it", None).expect("send");
            match tx.send(b"waits", None) {
                Ok(()) | Err(bytes::SendError::Detached) => {}
                Err(e) => panic!("unexpected {e:?}"),
            }
            tx.stats()
        });
        let ring = scene.storage.ring().receiver(2).expect("receiver");
        let mut rx = bytes::Receiver::new(ring, scene.latches.receiver())
            .with_options(WaitOptions::no_spin());
        assert_eq!(&*rx.recv(None).expect("recv"), b"fills it");
        rx.detach();
        note_waits(reached, sender.join().expect("sender"), SENDER_WAITED);
    });
}

/// A message that needs the whole ring waits for the receiver to drain it;
/// the receiver frees less than a quarter ring and then finds the ring
/// empty, so only the "report freed space before waiting" rule can wake the
/// sender. Without it both ends sleep forever.
#[test]
fn bytes_a_message_as_long_as_the_ring_waits_for_the_drain() {
    explore(&[SENDER_WAITED], |reached| {
        let scene = Arc::new(ByteScene {
            // 64 bytes, a quarter is 16: an empty message's 8-byte frame
            // crosses no quarter boundary.
            storage: ByteStorage::new(64).expect("storage"),
            latches: Pair::new(),
        });
        let sending = scene.clone();
        let sender = thread::spawn(move || {
            let ring = sending.storage.ring().sender(1).expect("sender");
            let mut tx = bytes::Sender::new(ring, sending.latches.sender())
                .with_options(WaitOptions::no_spin());
            tx.send(b"", None).expect("send");
            tx.send(&[7; 56], None).expect("send"); // a 64-byte frame
            tx.stats()
        });
        let ring = scene.storage.ring().receiver(2).expect("receiver");
        let mut rx = bytes::Receiver::new(ring, scene.latches.receiver())
            .with_options(WaitOptions::no_spin());
        assert!(rx.recv(None).expect("recv").is_empty());
        assert_eq!(&*rx.recv(None).expect("recv"), &[7; 56]);
        note_waits(reached, sender.join().expect("sender"), SENDER_WAITED);
    });
}
