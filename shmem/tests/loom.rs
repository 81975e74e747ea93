//! loom models of the rings: threads stand in for processes and the views
//! are built on the heap, so the production code of `shmem::ring` runs
//! against loom's atomics and cells. Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p shmem --release --test loom
//! ```
//!
//! Each model is small on purpose (capacity 2 to 32, two or three
//! threads, a handful of messages): loom explores every interleaving, and
//! the interesting ones (full, empty, wrap, a claim in flight, a detach
//! racing with the last send) all occur at these sizes.
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use shmem::ring::{
    ByteRecvError, ByteSendError, ByteStorage, MpscPopError, MpscPushError, MpscStorage,
    SpscPopError, SpscPushError, SpscStorage,
};

#[test]
fn spsc_push_pop_is_fifo_and_exactly_once_across_wraparound() {
    loom::model(|| {
        let storage = Arc::new(SpscStorage::<u64>::new(2).unwrap());
        let producer_storage = storage.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_storage.ring().producer(1).unwrap();
            let mut next = 0;
            while next < 3 {
                match tx.try_push(next) {
                    Ok(()) => next += 1,
                    Err(SpscPushError::Full) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut rx = storage.ring().consumer(2).unwrap();
        let mut expected = 0;
        while expected < 3 {
            match rx.try_pop() {
                Ok(v) => {
                    assert_eq!(v, expected);
                    expected += 1;
                }
                Err(SpscPopError::Empty) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(rx.try_pop(), Err(SpscPopError::Empty));
    });
}

#[test]
fn spsc_batches_publish_whole_and_free_whole() {
    loom::model(|| {
        let storage = Arc::new(SpscStorage::<u32>::new(4).unwrap());
        let producer_storage = storage.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_storage.ring().producer(1).unwrap();
            let values = [10, 11, 12, 13, 14];
            let mut sent = 0;
            while sent < values.len() {
                match tx.push_slice(&values[sent..]).unwrap() {
                    0 => thread::yield_now(),
                    n => sent += n,
                }
            }
        });
        let mut rx = storage.ring().consumer(2).unwrap();
        let mut got = Vec::new();
        let mut out = [0u32; 3];
        while got.len() < 5 {
            match rx.pop_slice(&mut out).unwrap() {
                0 => thread::yield_now(),
                n => got.extend_from_slice(&out[..n]),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [10, 11, 12, 13, 14]);
    });
}

/// Two producers push `counts[k]` values each into a ring of `capacity`
/// whose positions start at `start` (advanced by the main thread first, so
/// the claims cross into the next lap); the consumer must see every value
/// once, each producer's in order.
///
/// Only the consumer spin-waits: loom does not assume a fair scheduler, so
/// two threads yielding to each other in spin loops could starve the third
/// forever. The full ring, where a producer waits, is modelled with two
/// threads in `mpsc_batch_pop_races_producers_that_refill_freed_cells`.
fn mpsc_two_producers(capacity: usize, start: u64, counts: [u64; 2]) {
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
    let mut rx = storage.ring().consumer(1).unwrap();
    let mut next = [0u64; 2];
    while next[0] + next[1] < counts[0] + counts[1] {
        match rx.try_pop() {
            Ok(v) => {
                let k = (v / 100) as usize;
                assert_eq!(v % 100, next[k], "producer {k} out of order");
                next[k] += 1;
            }
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(next, counts);
    assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
}

#[test]
fn mpsc_two_producers_race_for_cells_across_the_lap_boundary() {
    // Positions 1 and 2 of a 2-cell ring: the second claim is in lap 1.
    loom::model(|| mpsc_two_producers(2, 1, [1, 1]));
}

#[test]
fn mpsc_two_producers_and_a_consumer_deliver_each_value_once_in_producer_order() {
    loom::model(|| mpsc_two_producers(4, 2, [2, 1]));
}

#[test]
fn mpsc_batch_pop_races_producers_that_refill_freed_cells() {
    loom::model(|| {
        let storage = Arc::new(MpscStorage::<u64>::new(2).unwrap());
        // Fill the ring so the producer's next push waits on the batch.
        {
            let mut tx = storage.ring().producer(9).unwrap();
            tx.try_push(0).unwrap();
            tx.try_push(1).unwrap();
        }
        let producer_storage = storage.clone();
        let producer = thread::spawn(move || {
            let mut tx = producer_storage.ring().producer(10).unwrap();
            let mut i = 2;
            while i < 4 {
                match tx.try_push(i) {
                    Ok(()) => i += 1,
                    Err(MpscPushError::Full) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let mut rx = storage.ring().consumer(1).unwrap();
        let mut got = Vec::new();
        let mut out = [0u64; 2];
        while got.len() < 4 {
            match rx.pop_slice(&mut out) {
                Ok(n) => got.extend_from_slice(&out[..n]),
                Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        producer.join().unwrap();
        assert_eq!(got, [0, 1, 2, 3]);
    });
}

#[test]
fn mpsc_claim_abandoned_by_a_dead_producer_is_reported_once_after_recovery() {
    loom::model(|| {
        let storage = Arc::new(MpscStorage::<u64>::new(4).unwrap());
        let dying_storage = storage.clone();
        let dying = thread::spawn(move || {
            let mut tx = dying_storage.ring().producer(20).unwrap();
            tx.try_push(1).unwrap();
            let claim = tx.claim().unwrap();
            // The thread "dies" here: no commit, no destructor.
            std::mem::forget(claim);
            std::mem::forget(tx);
        });
        let live_storage = storage.clone();
        let live = thread::spawn(move || {
            let mut tx = live_storage.ring().producer(30).unwrap();
            loop {
                match tx.try_push(7) {
                    Ok(()) => break,
                    Err(MpscPushError::Full) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        });
        let ring = storage.ring();
        let mut rx = ring.consumer(1).unwrap();
        dying.join().unwrap();
        // The supervisor has reaped the dying producer.
        // SAFETY: its thread has ended and its handles were forgotten.
        let recovered = unsafe { ring.recover_owner(20) };
        assert_eq!(recovered.producers, 1);
        let mut values = Vec::new();
        let mut abandoned = 0;
        while values.len() < 2 || abandoned < 1 {
            match rx.try_pop() {
                Ok(v) => values.push(v),
                Err(MpscPopError::Abandoned { .. }) => abandoned += 1,
                // The live producer's own claim may be in flight for a
                // moment; the dead one's is poisoned by now.
                Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        live.join().unwrap();
        assert_eq!(abandoned, 1);
        assert!(values == [1, 7] || values == [7, 1], "{values:?}");
        assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
    });
}

#[test]
fn byte_ring_messages_survive_wraparound_intact() {
    loom::model(|| {
        // 32 bytes: frames of 16, 16, 8 and 24 bytes wrap the buffer, the
        // last one with its payload split across the end.
        let storage = Arc::new(ByteStorage::new(32).unwrap());
        let messages: [&[u8]; 4] = [b"abcdefgh", b"ijk", b"", b"lmnopqrstu"];
        let sender_storage = storage.clone();
        let sender = thread::spawn(move || {
            let mut tx = sender_storage.ring().sender(1).unwrap();
            let mut i = 0;
            while i < messages.len() {
                match tx.try_send(messages[i]) {
                    Ok(()) => i += 1,
                    Err(ByteSendError::Full) => thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
            // Stay attached: the receiver must not see a detach here.
            std::mem::forget(tx);
        });
        let mut rx = storage.ring().receiver(2).unwrap();
        let mut i = 0;
        while i < messages.len() {
            match rx.try_recv() {
                Ok(m) => {
                    assert_eq!(&*m, messages[i]);
                    i += 1;
                }
                Err(ByteRecvError::Empty) => thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        sender.join().unwrap();
        assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Empty);
    });
}

#[test]
fn byte_ring_receiver_drains_every_message_sent_before_the_detach() {
    loom::model(|| {
        let storage = Arc::new(ByteStorage::new(16).unwrap());
        let sender_storage = storage.clone();
        let sender = thread::spawn(move || {
            let mut tx = sender_storage.ring().sender(1).unwrap();
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
        });
        let mut rx = storage.ring().receiver(2).unwrap();
        let mut got = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(m) => got.push(m.to_vec()),
                Err(ByteRecvError::Empty) => thread::yield_now(),
                Err(ByteRecvError::Detached) => break,
                Err(e) => panic!("{e}"),
            }
        }
        sender.join().unwrap();
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
    });
}

#[test]
fn byte_ring_sender_learns_the_receiver_detached() {
    loom::model(|| {
        let storage = Arc::new(ByteStorage::new(16).unwrap());
        let receiver_storage = storage.clone();
        let receiver = thread::spawn(move || {
            let rx = receiver_storage.ring().receiver(2).unwrap();
            rx.detach();
        });
        let mut tx = storage.ring().sender(1).unwrap();
        // Sends succeed or fail Full until the detach is seen; never lost
        // silently after it.
        loop {
            match tx.try_send(b"x") {
                Ok(()) | Err(ByteSendError::Full) => thread::yield_now(),
                Err(ByteSendError::Detached) => break,
                Err(e) => panic!("{e}"),
            }
        }
        receiver.join().unwrap();
    });
}
