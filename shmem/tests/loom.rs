//! loom models of the rings: threads stand in for processes and the views
//! are built on the heap, so the production code of `shmem::ring` runs
//! against loom's atomics and cells. Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p shmem --release --test loom
//! ```
//!
//! and add `-- --include-ignored` for the deep variants of the models CI
//! runs at a lower bound (minutes each).
//!
//! Each model is small on purpose (capacity 2 to 32, two or three
//! threads, a handful of messages): loom explores every interleaving, and
//! the interesting ones (full, empty, wrap, a claim in flight, a detach
//! racing with the last send) all occur at these sizes.
//!
//! Every role is its own spawned thread; the main thread only sets up
//! before the first spawn, joins, and checks the end state. In loom 0.7 a
//! main thread that races a spawned one on an atomic the spawned thread
//! loads before it writes may be explored in a single interleaving
//! (tokio-rs/loom#392), and the model then passes without having looked.
//! So each model also names the interleavings it must reach (a ring found
//! full, a claim found in flight, both arrival orders, ...) and fails if
//! no iteration reached one.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::{Reached, explore, explore_bounded};
use shmem::ring::{
    ByteRecvError, ByteSendError, ByteStorage, MpscPopError, MpscPushError, MpscStorage,
    SpscPopError, SpscPushError, SpscStorage,
};

#[test]
fn spsc_push_pop_is_fifo_and_exactly_once_across_wraparound() {
    explore(
        &[
            "producer found the ring full",
            "consumer found the ring empty",
        ],
        |reached| {
            let storage = Arc::new(SpscStorage::<u64>::new(2).unwrap());
            let producer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut tx = storage.ring().producer(1).unwrap();
                    let mut next = 0;
                    while next < 3 {
                        match tx.try_push(next) {
                            Ok(()) => next += 1,
                            Err(SpscPushError::Full) => {
                                reached.note("producer found the ring full");
                                thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            };
            let consumer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut rx = storage.ring().consumer(2).unwrap();
                    let mut expected = 0;
                    while expected < 3 {
                        match rx.try_pop() {
                            Ok(v) => {
                                assert_eq!(v, expected);
                                expected += 1;
                            }
                            Err(SpscPopError::Empty) => {
                                reached.note("consumer found the ring empty");
                                thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            };
            producer.join().unwrap();
            consumer.join().unwrap();
            let mut rx = storage.ring().consumer(3).unwrap();
            assert_eq!(rx.try_pop(), Err(SpscPopError::Empty));
        },
    );
}

#[test]
fn spsc_batches_publish_whole_and_free_whole() {
    explore(
        &["a batch push fit only in part", "a batch pop took a part"],
        |reached| {
            let storage = Arc::new(SpscStorage::<u32>::new(4).unwrap());
            let producer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut tx = storage.ring().producer(1).unwrap();
                    let values = [10, 11, 12, 13, 14];
                    let mut sent = 0;
                    while sent < values.len() {
                        match tx.push_slice(&values[sent..]).unwrap() {
                            0 => thread::yield_now(),
                            n => {
                                if sent + n < values.len() {
                                    reached.note("a batch push fit only in part");
                                }
                                sent += n;
                            }
                        }
                    }
                })
            };
            let consumer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut rx = storage.ring().consumer(2).unwrap();
                    let mut got = Vec::new();
                    let mut out = [0u32; 3];
                    while got.len() < 5 {
                        match rx.pop_slice(&mut out).unwrap() {
                            0 => thread::yield_now(),
                            n => {
                                // Fewer than asked for and fewer than are
                                // still to come: the producer is mid-way.
                                if n < out.len().min(5 - got.len()) {
                                    reached.note("a batch pop took a part");
                                }
                                got.extend_from_slice(&out[..n]);
                            }
                        }
                    }
                    got
                })
            };
            producer.join().unwrap();
            assert_eq!(consumer.join().unwrap(), [10, 11, 12, 13, 14]);
        },
    );
}

/// Two producers push `counts[k]` values each into a ring of `capacity`
/// whose positions start at `start` (advanced by the main thread before it
/// spawns anything, so the claims cross into the next lap); the consumer
/// must see every value once, each producer's in order.
///
/// Only the consumer spin-waits: loom does not assume a fair scheduler, so
/// two threads yielding to each other in spin loops could starve the third
/// forever. The full ring, where a producer waits, is modelled with two
/// threads in `mpsc_batch_pop_races_producers_that_refill_freed_cells`.
fn mpsc_two_producers(reached: &Reached, capacity: usize, start: u64, counts: [u64; 2]) {
    assert!(counts[0] + counts[1] <= capacity as u64);
    let storage = Arc::new(MpscStorage::<u64>::new(capacity).unwrap());
    {
        let ring = storage.ring();
        let mut tx = ring.producer(9).unwrap();
        let mut rx = ring.consumer(9).unwrap();
        for i in 0..start {
            tx.try_push(i).unwrap();
            assert_eq!(rx.try_pop(), Ok(i));
        }
    }
    let producers: Vec<_> = (0..2u64)
        .map(|k| {
            let storage = storage.clone();
            thread::spawn(move || {
                let mut tx = storage.ring().producer(10 + k as u32).unwrap();
                for i in 0..counts[k as usize] {
                    tx.try_push(k * 100 + i).unwrap();
                }
            })
        })
        .collect();
    let consumer = {
        let (storage, reached) = (storage.clone(), reached.clone());
        thread::spawn(move || {
            let mut rx = storage.ring().consumer(1).unwrap();
            let mut next = [0u64; 2];
            while next[0] + next[1] < counts[0] + counts[1] {
                match rx.try_pop() {
                    Ok(v) => {
                        let k = (v / 100) as usize;
                        assert_eq!(v % 100, next[k], "producer {k} out of order");
                        if next == [0, 0] {
                            reached.note(if k == 0 {
                                "producer 0 arrived first"
                            } else {
                                "producer 1 arrived first"
                            });
                        }
                        next[k] += 1;
                    }
                    Err(MpscPopError::InFlight { .. }) => {
                        reached.note("consumer found a claim in flight");
                        thread::yield_now();
                    }
                    Err(MpscPopError::Empty) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
            next
        })
    };
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), counts);
}

const MPSC_TWO_PRODUCERS_REACH: [&str; 3] = [
    "producer 0 arrived first",
    "producer 1 arrived first",
    "consumer found a claim in flight",
];

#[test]
fn mpsc_two_producers_race_for_cells_across_the_lap_boundary() {
    // Positions 1 and 2 of a 2-cell ring: the second claim is in lap 1.
    explore(&MPSC_TWO_PRODUCERS_REACH, |reached| {
        mpsc_two_producers(reached, 2, 1, [1, 1])
    });
}

/// Three values across the lap boundary of a 4-cell ring, two of them from
/// one producer. At two preemptions this is some 40 s of CPU (the consumer's
/// polling multiplies the interleavings), so CI runs it at one; the
/// `_deep` twin keeps the full bound.
#[test]
fn mpsc_two_producers_and_a_consumer_deliver_each_value_once_in_producer_order() {
    explore_bounded(Some(1), &MPSC_TWO_PRODUCERS_REACH, |reached| {
        mpsc_two_producers(reached, 4, 2, [2, 1])
    });
}

/// Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p
/// shmem --release --test loom -- --ignored` (about 40 s of CPU).
#[test]
#[ignore = "deep: minutes at LOOM_MAX_PREEMPTIONS=2; CI runs the bounded twin"]
fn mpsc_two_producers_and_a_consumer_deliver_each_value_once_in_producer_order_deep() {
    explore(&MPSC_TWO_PRODUCERS_REACH, |reached| {
        mpsc_two_producers(reached, 4, 2, [2, 1])
    });
}

#[test]
fn mpsc_batch_pop_races_producers_that_refill_freed_cells() {
    explore(
        &[
            "producer found the ring full",
            "the refill came in one batch",
            "the refill came in two batches",
            "consumer found a claim in flight",
        ],
        |reached| {
            let storage = Arc::new(MpscStorage::<u64>::new(2).unwrap());
            // Fill the ring so the producer's next push waits on the batch.
            {
                let mut tx = storage.ring().producer(9).unwrap();
                tx.try_push(0).unwrap();
                tx.try_push(1).unwrap();
            }
            let producer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut tx = storage.ring().producer(10).unwrap();
                    let mut i = 2;
                    while i < 4 {
                        match tx.try_push(i) {
                            Ok(()) => i += 1,
                            Err(MpscPushError::Full) => {
                                reached.note("producer found the ring full");
                                thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            };
            let consumer = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut rx = storage.ring().consumer(1).unwrap();
                    let mut got = Vec::new();
                    let mut out = [0u64; 2];
                    while got.len() < 4 {
                        match rx.pop_slice(&mut out) {
                            Ok(n) => {
                                // The first batch is always [0, 1]; the
                                // refill may come whole or be caught
                                // half-way.
                                match out[..n] {
                                    [2, 3] => reached.note("the refill came in one batch"),
                                    [2] => reached.note("the refill came in two batches"),
                                    _ => {}
                                }
                                got.extend_from_slice(&out[..n]);
                            }
                            Err(MpscPopError::InFlight { .. }) => {
                                reached.note("consumer found a claim in flight");
                                thread::yield_now();
                            }
                            Err(MpscPopError::Empty) => thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    got
                })
            };
            producer.join().unwrap();
            assert_eq!(consumer.join().unwrap(), [0, 1, 2, 3]);
        },
    );
}

#[test]
fn mpsc_claim_abandoned_by_a_dead_producer_is_reported_once_after_recovery() {
    explore(
        &[
            "the live value came first",
            "the dead producer's value came first",
            "the loss was reported before the live value",
            "the loss was reported after the live value",
        ],
        |reached| {
            let storage = Arc::new(MpscStorage::<u64>::new(4).unwrap());
            let live = {
                let storage = storage.clone();
                thread::spawn(move || {
                    let mut tx = storage.ring().producer(30).unwrap();
                    loop {
                        match tx.try_push(7) {
                            Ok(()) => break,
                            Err(MpscPushError::Full) => thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                })
            };
            // The supervisor is also the consumer; it "forks" the producer
            // that dies, reaps it, recovers its claim and drains the ring.
            let supervisor = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let ring = storage.ring();
                    let mut rx = ring.consumer(1).unwrap();
                    let dying = {
                        let storage = storage.clone();
                        thread::spawn(move || {
                            let mut tx = storage.ring().producer(20).unwrap();
                            tx.try_push(1).unwrap();
                            let claim = tx.claim().unwrap();
                            // The thread "dies" here: no commit, no
                            // destructor.
                            std::mem::forget(claim);
                            std::mem::forget(tx);
                        })
                    };
                    dying.join().unwrap();
                    // SAFETY: the dying thread has ended and its handles
                    // were forgotten.
                    let recovered = unsafe { ring.recover_owner(20) };
                    assert_eq!(recovered.producers, 1);
                    let mut values = Vec::new();
                    let mut abandoned = 0;
                    while values.len() < 2 || abandoned < 1 {
                        match rx.try_pop() {
                            Ok(v) => values.push(v),
                            Err(MpscPopError::Abandoned { .. }) => {
                                abandoned += 1;
                                reached.note(if values.contains(&7) {
                                    "the loss was reported after the live value"
                                } else {
                                    "the loss was reported before the live value"
                                });
                            }
                            // The live producer's own claim may be in flight
                            // for a moment; the dead one's is poisoned by now.
                            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => {
                                thread::yield_now()
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    assert_eq!(abandoned, 1);
                    (values, rx.try_pop())
                })
            };
            live.join().unwrap();
            let (values, after) = supervisor.join().unwrap();
            assert_eq!(after, Err(MpscPopError::Empty));
            match values[..] {
                [1, 7] => reached.note("the dead producer's value came first"),
                [7, 1] => reached.note("the live value came first"),
                _ => panic!("{values:?}"),
            }
        },
    );
}

#[test]
fn byte_ring_messages_survive_wraparound_intact() {
    explore(
        &[
            "sender found the ring full",
            "receiver found the ring empty",
        ],
        |reached| {
            // 32 bytes: frames of 16, 16, 8 and 24 bytes wrap the buffer,
            // the last one with its payload split across the end.
            let storage = Arc::new(ByteStorage::new(32).unwrap());
            let messages: [&[u8]; 4] = [b"abcdefgh", b"ijk", b"", b"lmnopqrstu"];
            let sender = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut tx = storage.ring().sender(1).unwrap();
                    let mut i = 0;
                    while i < messages.len() {
                        match tx.try_send(messages[i]) {
                            Ok(()) => i += 1,
                            Err(ByteSendError::Full) => {
                                reached.note("sender found the ring full");
                                thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    // Stay attached: the receiver must not see a detach.
                    std::mem::forget(tx);
                })
            };
            let receiver = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut rx = storage.ring().receiver(2).unwrap();
                    let mut i = 0;
                    while i < messages.len() {
                        match rx.try_recv() {
                            Ok(m) => {
                                assert_eq!(&*m, messages[i]);
                                i += 1;
                            }
                            Err(ByteRecvError::Empty) => {
                                reached.note("receiver found the ring empty");
                                thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                    // Still attached: whatever the sender did last, it
                    // was no detach.
                    rx.try_recv().unwrap_err()
                })
            };
            sender.join().unwrap();
            let last = receiver.join().unwrap();
            assert!(
                matches!(last, ByteRecvError::Empty),
                "after the last message: {last:?}"
            );
        },
    );
}

#[test]
fn byte_ring_receiver_drains_every_message_sent_before_the_detach() {
    explore(
        &[
            "receiver found the ring empty",
            "the detach was there at the first look",
        ],
        |reached| {
            let storage = Arc::new(ByteStorage::new(16).unwrap());
            let sender = {
                let storage = storage.clone();
                thread::spawn(move || {
                    let mut tx = storage.ring().sender(1).unwrap();
                    for m in [&b"one"[..], b"two"] {
                        loop {
                            match tx.try_send(m) {
                                Ok(()) => break,
                                Err(ByteSendError::Full) => thread::yield_now(),
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                    tx.detach();
                })
            };
            let receiver = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut rx = storage.ring().receiver(2).unwrap();
                    let mut got = Vec::new();
                    let mut waited = false;
                    loop {
                        match rx.try_recv() {
                            Ok(m) => got.push(m.to_vec()),
                            Err(ByteRecvError::Empty) => {
                                waited = true;
                                thread::yield_now();
                            }
                            Err(ByteRecvError::Detached) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    reached.note(if waited {
                        "receiver found the ring empty"
                    } else {
                        "the detach was there at the first look"
                    });
                    got
                })
            };
            sender.join().unwrap();
            assert_eq!(receiver.join().unwrap(), [b"one".to_vec(), b"two".to_vec()]);
        },
    );
}

#[test]
fn byte_ring_sender_learns_the_receiver_detached() {
    explore(
        &[
            "a send went through before the detach",
            "the first send saw the detach",
        ],
        |reached| {
            let storage = Arc::new(ByteStorage::new(16).unwrap());
            let receiver = {
                let storage = storage.clone();
                thread::spawn(move || {
                    let rx = storage.ring().receiver(2).unwrap();
                    rx.detach();
                })
            };
            let sender = {
                let (storage, reached) = (storage.clone(), reached.clone());
                thread::spawn(move || {
                    let mut tx = storage.ring().sender(1).unwrap();
                    // Sends succeed or fail Full until the detach is seen;
                    // never lost silently after it.
                    let mut sent = 0;
                    loop {
                        match tx.try_send(b"x") {
                            Ok(()) => {
                                sent += 1;
                                thread::yield_now();
                            }
                            Err(ByteSendError::Full) => thread::yield_now(),
                            Err(ByteSendError::Detached) => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    reached.note(if sent > 0 {
                        "a send went through before the detach"
                    } else {
                        "the first send saw the detach"
                    });
                })
            };
            receiver.join().unwrap();
            sender.join().unwrap();
        },
    );
}
