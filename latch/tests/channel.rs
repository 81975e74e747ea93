//! The blocking channel ends (`latch::channel`) between threads on heap
//! rings and between processes on a memfd segment: streams through small
//! rings, so that both ends block over and over, checked for order, count
//! and checksum; peers that detach or die while the other end sleeps.
//!
//! Forked children only do what is safe after `fork` in a multi-threaded
//! test process (see tests/common): atomics, ring and latch operations,
//! stack buffers, `getpid`, `_exit`; they report through their exit code
//! and the segment. No test sleeps a fixed time and then asserts: every
//! wait is for a condition, with a generous deadline.
#![cfg(not(loom))]

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, child_wait_until, fork_child, reap, wait_until};
use latch::channel::mpsc::{self, ProducerLatches};
use latch::channel::{Latches, Stats, bytes, spsc};
use latch::{Latch, WaitOptions};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use shmem::ring::{ByteRing, ByteStorage, MpscRing, MpscStorage, SpscRing, SpscStorage, own_token};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use shmem::{Layout, Segment};

/// Messages streamed through each typed ring.
const STREAM: u64 = 1_000_000;

/// Capacity of the typed rings: small, so both ends block many times.
const CELLS: usize = 64;

/// How long one blocking operation may wait before the test calls the
/// stream stalled. Generous: the machine is shared; a correct run never
/// comes near it.
const STALL: Duration = Duration::from_secs(20);

// Child exit codes.
const OK: i32 = 0;
const OWN_FAILED: i32 = 2;
const ROLE_FAILED: i32 = 3;
const SEND_FAILED: i32 = 4;
const NOT_READY: i32 = 5;

/// A cheap order-sensitive checksum both sides compute independently.
fn mix(sum: u64, value: u64) -> u64 {
    (sum ^ value).wrapping_mul(0x0100_0000_01b3).rotate_left(5)
}

fn soon() -> Option<Instant> {
    Some(Instant::now() + STALL)
}

/// The child's state, for a failure message (parent side).
fn child_status(child: Pid) -> String {
    format!("{:?}", waitpid(child, Some(WaitPidFlag::WNOHANG)))
}

/// The payload of message `seq` of a byte stream: its length varies from 0
/// to `max` and its bytes depend on `seq`, so a torn, reordered or
/// misframed message does not pass for another.
fn byte_message(seq: u64, max: usize, buf: &mut [u8]) -> usize {
    let len = if seq.is_multiple_of(97) {
        max
    } else {
        (seq as usize * 37) % (max.min(300) + 1)
    };
    for (j, byte) in buf[..len].iter_mut().enumerate() {
        *byte = (seq as usize).wrapping_mul(31).wrapping_add(j * 7) as u8;
    }
    len
}

fn report(what: &str, tx: Stats, rx: Stats, messages: u64) {
    eprintln!(
        "{what}: {messages} messages; sender sets {} waits {}; receiver sets {} waits {}",
        tx.sets, tx.waits, rx.sets, rx.waits
    );
}

// ---------------------------------------------------------------------
// Across fork

#[test]
fn spsc_streams_a_million_messages_across_fork_through_64_cells() {
    let layout = Layout::builder()
        .spsc_ring::<u64>("ring", CELLS)
        .region::<Latch>("tx_latch")
        .region::<Latch>("rx_latch")
        .array::<AtomicU64>("tx_report", 3)
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = SpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let tx_latch = segment.region::<Latch>("tx_latch").unwrap();
    let rx_latch = segment.region::<Latch>("rx_latch").unwrap();
    let tx_report = segment.array::<AtomicU64>("tx_report").unwrap();
    rx_latch.own().unwrap();

    let child = fork_child(|| {
        if tx_latch.own().is_err() {
            return OWN_FAILED;
        }
        let Ok(producer) = ring.producer(own_token()) else {
            return ROLE_FAILED;
        };
        let latches = Latches {
            own: tx_latch,
            peer: rx_latch,
        };
        let mut tx = spsc::Sender::new(producer, latches);
        let (mut sum, mut next) = (0u64, 0u64);
        let mut batch = [0u64; 48];
        while next < STREAM {
            // Alternate single sends and batches of varying size.
            if (next / 1000).is_multiple_of(2) {
                if tx.send(next, soon()).is_err() {
                    return SEND_FAILED;
                }
                sum = mix(sum, next);
                next += 1;
            } else {
                let n = ((next % 47) + 1).min(STREAM - next) as usize;
                for (i, slot) in batch[..n].iter_mut().enumerate() {
                    *slot = next + i as u64;
                }
                let Ok(sent) = tx.send_slice(&batch[..n], soon()) else {
                    return SEND_FAILED;
                };
                for v in &batch[..sent] {
                    sum = mix(sum, *v);
                }
                next += sent as u64;
            }
        }
        let stats = tx.stats();
        // Relaxed: the parent reads these after reaping us.
        tx_report[0].store(sum, Ordering::Relaxed);
        tx_report[1].store(stats.sets, Ordering::Relaxed);
        tx_report[2].store(stats.waits, Ordering::Relaxed);
        OK
    });

    let consumer = ring.consumer(own_token()).unwrap();
    let latches = Latches {
        own: rx_latch,
        peer: tx_latch,
    };
    let mut rx = spsc::Receiver::new(consumer, latches);
    let (mut sum, mut expected) = (0u64, 0u64);
    let mut out = [0u64; 40];
    while expected < STREAM {
        let got = if (expected / 777).is_multiple_of(2) {
            rx.recv(soon()).map(|v| {
                out[0] = v;
                1
            })
        } else {
            rx.recv_slice(&mut out, soon())
        };
        let n = got.unwrap_or_else(|e| {
            panic!("stalled at {expected}: {e} (child {})", child_status(child))
        });
        for &v in &out[..n] {
            assert_eq!(v, expected, "FIFO, exactly once");
            sum = mix(sum, v);
            expected += 1;
        }
    }
    assert_eq!(reap(child), OK);
    assert!(matches!(
        rx.recv(Some(Instant::now())),
        Err(spsc::RecvError::Timeout)
    ));
    // Relaxed: written before the child exited, which reap ordered.
    assert_eq!(sum, tx_report[0].load(Ordering::Relaxed), "checksum");
    let tx_stats = Stats {
        sets: tx_report[1].load(Ordering::Relaxed),
        waits: tx_report[2].load(Ordering::Relaxed),
    };
    report("spsc across fork", tx_stats, rx.stats(), STREAM);
    assert!(
        tx_stats.waits + rx.stats().waits > 0,
        "a 64-cell ring streamed a million messages without either end blocking"
    );
}

#[test]
fn mpsc_streams_from_two_producer_processes_through_64_cells() {
    let per_producer = STREAM / 2;
    let layout = Layout::builder()
        .mpsc_ring::<u64>("ring", CELLS)
        .region::<ProducerLatches>("ring.waiters")
        .region::<Latch>("rx_latch")
        .array::<AtomicU64>("sums", 2)
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = MpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let waiters = segment.region::<ProducerLatches>("ring.waiters").unwrap();
    let rx_latch = segment.region::<Latch>("rx_latch").unwrap();
    let sums = segment.array::<AtomicU64>("sums").unwrap();
    rx_latch.own().unwrap();

    let children: Vec<Pid> = (0..2u64)
        .map(|k| {
            fork_child(move || {
                let Ok(producer) = ring.producer(own_token()) else {
                    return ROLE_FAILED;
                };
                let Ok(mut tx) = mpsc::Sender::new(producer, rx_latch, waiters) else {
                    return OWN_FAILED;
                };
                let mut sum = 0u64;
                for i in 0..per_producer {
                    let value = k << 56 | i;
                    if tx.send(value, soon()).is_err() {
                        return SEND_FAILED;
                    }
                    sum = mix(sum, value);
                }
                // Relaxed: read by the parent after reaping us.
                sums[k as usize].store(sum, Ordering::Relaxed);
                OK
            })
        })
        .collect();

    let consumer = ring.consumer(own_token()).unwrap();
    let mut rx = mpsc::Receiver::new(consumer, rx_latch, waiters);
    let mut next = [0u64; 2];
    let mut got_sums = [0u64; 2];
    let mut out = [0u64; 32];
    while next[0] + next[1] < 2 * per_producer {
        let n = rx.recv_slice(&mut out, soon()).unwrap_or_else(|e| {
            panic!(
                "stalled at {next:?}: {e} (children {} {})",
                child_status(children[0]),
                child_status(children[1])
            )
        });
        for &v in &out[..n] {
            let k = (v >> 56) as usize;
            assert_eq!(
                v & ((1 << 56) - 1),
                next[k],
                "per-producer FIFO, exactly once"
            );
            got_sums[k] = mix(got_sums[k], v);
            next[k] += 1;
        }
    }
    for child in children {
        assert_eq!(reap(child), OK);
    }
    for k in 0..2 {
        // Relaxed: written before the child exited, which reap ordered.
        assert_eq!(
            got_sums[k],
            sums[k].load(Ordering::Relaxed),
            "checksum of producer {k}"
        );
    }
    assert_eq!(
        waiters.waiting(),
        0,
        "every producer withdrew from the waiting mask"
    );
    assert!(matches!(
        rx.recv(Some(Instant::now())),
        Err(mpsc::RecvError::Timeout)
    ));
    eprintln!("mpsc across fork: receiver {:?}", rx.stats());
}

#[test]
fn byte_ring_streams_variable_lengths_across_fork_then_drains_the_detach() {
    const MESSAGES: u64 = 200_000;
    let layout = Layout::builder()
        .byte_ring("mq", 1024)
        .region::<Latch>("tx_latch")
        .region::<Latch>("rx_latch")
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = ByteRing::from_segment(&segment, "mq").unwrap();
    let tx_latch = segment.region::<Latch>("tx_latch").unwrap();
    let rx_latch = segment.region::<Latch>("rx_latch").unwrap();
    rx_latch.own().unwrap();
    let max = ring.max_message();

    let child = fork_child(|| {
        if tx_latch.own().is_err() {
            return OWN_FAILED;
        }
        let Ok(sender) = ring.sender(own_token()) else {
            return ROLE_FAILED;
        };
        let latches = Latches {
            own: tx_latch,
            peer: rx_latch,
        };
        let mut tx = bytes::Sender::new(sender, latches);
        let mut buf = [0u8; 1024];
        for seq in 0..MESSAGES {
            let len = byte_message(seq, max, &mut buf);
            if tx.send(&buf[..len], soon()).is_err() {
                return SEND_FAILED;
            }
        }
        // Dropping the sender detaches and wakes the receiver.
        OK
    });

    let receiver = ring.receiver(own_token()).unwrap();
    let latches = Latches {
        own: rx_latch,
        peer: tx_latch,
    };
    let mut rx = bytes::Receiver::new(receiver, latches);
    let mut want = vec![0u8; 1024];
    for seq in 0..MESSAGES {
        let len = byte_message(seq, max, &mut want);
        let message = rx
            .recv(soon())
            .unwrap_or_else(|e| panic!("stalled at {seq}: {e} (child {})", child_status(child)));
        assert_eq!(&*message, &want[..len], "message {seq}");
    }
    match rx.recv(soon()) {
        Err(bytes::RecvError::Detached) => {}
        other => panic!(
            "expected Detached after the drain, got {:?}",
            other.map(|m| m.len())
        ),
    }
    assert_eq!(reap(child), OK);
    eprintln!("bytes across fork: receiver {:?}", rx.stats());
}

#[test]
fn a_receiver_asleep_on_an_empty_byte_ring_sees_its_dead_sender() {
    let layout = Layout::builder()
        .byte_ring("mq", 256)
        .region::<Latch>("tx_latch")
        .region::<Latch>("rx_latch")
        .region::<AtomicU32>("child_pid")
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = ByteRing::from_segment(&segment, "mq").unwrap();
    let tx_latch = segment.region::<Latch>("tx_latch").unwrap();
    let rx_latch = segment.region::<Latch>("rx_latch").unwrap();
    rx_latch.own().unwrap();
    let receiver = ring.receiver(own_token()).unwrap();
    let latches = Latches {
        own: rx_latch,
        peer: tx_latch,
    };
    let mut rx = bytes::Receiver::new(receiver, latches);

    let child = fork_child(|| {
        if tx_latch.own().is_err() {
            return OWN_FAILED;
        }
        let Ok(sender) = ring.sender(own_token()) else {
            return ROLE_FAILED;
        };
        let latches = Latches {
            own: tx_latch,
            peer: rx_latch,
        };
        let mut tx = bytes::Sender::new(sender, latches);
        for message in [&b"one"[..], b"two", b"three"] {
            if tx.send(message, soon()).is_err() {
                return SEND_FAILED;
            }
        }
        // Die without detaching: only a supervisor can tell the receiver.
        std::mem::forget(tx);
        OK
    });

    std::thread::scope(|s| {
        // The supervisor: reaps the child, then declares it dead, while the
        // receiver below is (or soon will be) asleep on the empty ring.
        s.spawn(|| {
            assert_eq!(reap(child), OK);
            assert_eq!(ring.mark_dead(child.as_raw() as u32), 1);
        });
        for want in [&b"one"[..], b"two", b"three"] {
            assert_eq!(&*rx.recv(soon()).unwrap(), want);
        }
        let started = Instant::now();
        match rx.recv(Some(started + LIMIT)) {
            Err(bytes::RecvError::PeerDied) => {}
            other => panic!("expected PeerDied, got {:?}", other.map(|m| m.len())),
        }
        assert!(
            started.elapsed() < LIMIT,
            "the death must end the wait, not the deadline"
        );
    });
}

#[test]
fn a_sender_asleep_on_a_full_byte_ring_sees_its_receiver_detach() {
    let layout = Layout::builder()
        .byte_ring("mq", 64)
        .region::<Latch>("tx_latch")
        .region::<Latch>("rx_latch")
        .region::<AtomicU32>("ready")
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = ByteRing::from_segment(&segment, "mq").unwrap();
    let tx_latch = segment.region::<Latch>("tx_latch").unwrap();
    let rx_latch = segment.region::<Latch>("rx_latch").unwrap();
    let ready = segment.region::<AtomicU32>("ready").unwrap();
    tx_latch.own().unwrap();

    let child = fork_child(|| {
        if rx_latch.own().is_err() {
            return OWN_FAILED;
        }
        let Ok(receiver) = ring.receiver(own_token()) else {
            return ROLE_FAILED;
        };
        let latches = Latches {
            own: rx_latch,
            peer: tx_latch,
        };
        let rx = bytes::Receiver::new(receiver, latches);
        // Release: pairs with the parent's Acquire load.
        ready.store(1, Ordering::Release);
        // Detach only once the parent is asleep on its latch (announced
        // its sleep), so the wake-up must come from the detach.
        if !child_wait_until(LIMIT, || tx_latch.has_sleeper()) {
            return NOT_READY;
        }
        rx.detach();
        OK
    });

    // Acquire: pairs with the child's Release store.
    wait_until("the child to attach", || ready.load(Ordering::Acquire) == 1);
    let sender = ring.sender(own_token()).unwrap();
    let latches = Latches {
        own: tx_latch,
        peer: rx_latch,
    };
    let mut tx = bytes::Sender::new(sender, latches).with_options(WaitOptions::no_spin());
    tx.send(&[1; 56], soon()).unwrap(); // fills the 64-byte ring
    let started = Instant::now();
    match tx.send(b"no room", Some(started + LIMIT)) {
        Err(bytes::SendError::Detached) => {}
        other => panic!("expected Detached, got {other:?}"),
    }
    assert!(started.elapsed() < LIMIT);
    assert_eq!(reap(child), OK);
}

// ---------------------------------------------------------------------
// Between threads, on heap rings

#[test]
fn spsc_streams_between_threads_through_four_cells_with_and_without_spinning() {
    const COUNT: u64 = 200_000;
    for options in [WaitOptions::default(), WaitOptions::no_spin()] {
        let storage = SpscStorage::<u64>::new(4).unwrap();
        let ring = storage.ring();
        let (tx_latch, rx_latch) = (Latch::new(), Latch::new());
        tx_latch.own().unwrap();
        rx_latch.own().unwrap();
        let producer = ring.producer(1).unwrap();
        let tx_latches = Latches {
            own: &tx_latch,
            peer: &rx_latch,
        };
        let (sum_sent, tx_stats) = std::thread::scope(|s| {
            let sender = s.spawn(move || {
                let mut tx = spsc::Sender::new(producer, tx_latches).with_options(options);
                let mut sum = 0;
                for i in 0..COUNT {
                    tx.send(i, soon()).unwrap();
                    sum = mix(sum, i);
                }
                (sum, tx.stats())
            });
            let latches = Latches {
                own: &rx_latch,
                peer: &tx_latch,
            };
            let mut rx =
                spsc::Receiver::new(ring.consumer(2).unwrap(), latches).with_options(options);
            let mut sum = 0;
            for i in 0..COUNT {
                let v = rx.recv(soon()).unwrap();
                assert_eq!(v, i);
                sum = mix(sum, v);
            }
            let (sent, tx_stats) = sender.join().unwrap();
            assert_eq!(sum, sent);
            report(
                &format!("spsc threads {options:?}"),
                tx_stats,
                rx.stats(),
                COUNT,
            );
            (sent, tx_stats)
        });
        let _ = (sum_sent, tx_stats);
    }
}

#[test]
fn mpsc_streams_from_two_threads_through_four_cells() {
    const PER_PRODUCER: u64 = 100_000;
    let storage = MpscStorage::<u64>::new(4).unwrap();
    let ring = storage.ring();
    let waiters = ProducerLatches::new();
    let rx_latch = Latch::new();
    rx_latch.own().unwrap();
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let producer = ring.producer(k as u32 + 1).unwrap();
            let (rx_latch, waiters) = (&rx_latch, &waiters);
            s.spawn(move || {
                let mut tx = mpsc::Sender::new(producer, rx_latch, waiters).unwrap();
                for i in 0..PER_PRODUCER {
                    tx.send(k << 56 | i, soon()).unwrap();
                }
            });
        }
        let mut rx = mpsc::Receiver::new(ring.consumer(9).unwrap(), &rx_latch, &waiters);
        let mut next = [0u64; 2];
        for _ in 0..2 * PER_PRODUCER {
            let v = rx.recv(soon()).unwrap();
            let k = (v >> 56) as usize;
            assert_eq!(v & ((1 << 56) - 1), next[k]);
            next[k] += 1;
        }
        eprintln!("mpsc threads: receiver {:?}", rx.stats());
    });
    assert_eq!(waiters.waiting(), 0);
}

#[test]
fn byte_ring_streams_variable_lengths_between_threads() {
    const MESSAGES: u64 = 50_000;
    let storage = ByteStorage::new(256).unwrap();
    let ring = storage.ring();
    let max = ring.max_message();
    let (tx_latch, rx_latch) = (Latch::new(), Latch::new());
    tx_latch.own().unwrap();
    rx_latch.own().unwrap();
    let sender = ring.sender(1).unwrap();
    let tx_latches = Latches {
        own: &tx_latch,
        peer: &rx_latch,
    };
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut tx = bytes::Sender::new(sender, tx_latches);
            let mut buf = vec![0u8; max];
            for seq in 0..MESSAGES {
                let len = byte_message(seq, max, &mut buf);
                tx.send(&buf[..len], soon()).unwrap();
            }
        });
        let latches = Latches {
            own: &rx_latch,
            peer: &tx_latch,
        };
        let mut rx = bytes::Receiver::new(ring.receiver(2).unwrap(), latches);
        let mut want = vec![0u8; max];
        let (mut in_place, mut copied) = (0, 0);
        for seq in 0..MESSAGES {
            let len = byte_message(seq, max, &mut want);
            let message = rx.recv(soon()).unwrap();
            assert_eq!(&*message, &want[..len], "message {seq}");
            if message.is_in_place() {
                in_place += 1;
            } else {
                copied += 1;
            }
        }
        assert!(matches!(rx.recv(soon()), Err(bytes::RecvError::Detached)));
        assert!(
            in_place > 0 && copied > 0,
            "{in_place} in place, {copied} copied"
        );
    });
}
