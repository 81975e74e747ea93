//! The rings across `fork`: streaming with checksums, and producers that
//! die (by `_exit` holding a claim, or by SIGKILL mid-stream).
//!
//! The test harness is multi-threaded, so a forked child only does what is
//! safe after `fork` in such a process: atomics and ring operations on the
//! shared segment, stack buffers, `getpid`, `sched_yield`, `_exit`. No
//! allocation, no printing, no unwinding; a child reports through its exit
//! code and the segment. The parent waits for conditions with generous
//! deadlines, never for fixed times.
//!
//! Streaming counts are 10 million messages in release builds and
//! 1 million in debug builds (`cfg(debug_assertions)`), where unoptimised
//! ring code would make the test take minutes on a shared 2-core machine.

#![cfg(not(loom))]

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shmem::ring::{ByteRecvError, ByteRing, MpscPopError, MpscRing, SpscRing, own_token};
use shmem::sync::{AtomicU64, Ordering};
use shmem::{Layout, Segment};

const STREAM: u64 = if cfg!(debug_assertions) {
    1_000_000
} else {
    10_000_000
};

/// How long the parent waits for anything before declaring the test hung.
const PATIENCE: Duration = Duration::from_secs(120);

/// Forks; the child runs `body` and exits with its result, never returning.
fn fork_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child only runs `body` (async-signal-safe work on shared
    // memory, see the module docs) and leaves with _exit, which runs no
    // destructors or atexit handlers of the copied parent state.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(101);
            // SAFETY: _exit is async-signal-safe and ends the child here.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

/// Waits for `child` and asserts it exited with `code`.
fn expect_exit(child: Pid, code: i32) {
    match waitpid(child, None).expect("waitpid") {
        WaitStatus::Exited(_, c) => assert_eq!(c, code, "child {child} exit code"),
        other => panic!("child {child} ended with {other:?}"),
    }
}

/// Panics if `child` has already exited (with a failure) while the parent
/// still waits for it to produce something.
fn assert_running(child: Pid, started: Instant) {
    assert!(started.elapsed() < PATIENCE, "gave up waiting for {child}");
    if let Ok(status) = waitpid(child, Some(WaitPidFlag::WNOHANG))
        && status != WaitStatus::StillAlive
    {
        panic!("child {child} ended early: {status:?}");
    }
}

/// Spin briefly, then let the other processes run: three processes share
/// two CPUs in the MPSC tests.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if (*spins).is_multiple_of(64) {
        let _ = nix::sched::sched_yield();
    } else {
        shmem::sync::spin_loop();
    }
}

/// A cheap order-sensitive checksum both sides compute independently.
fn mix(sum: u64, value: u64) -> u64 {
    (sum ^ value).wrapping_mul(0x0100_0000_01b3).rotate_left(5)
}

#[test]
fn spsc_streams_numbered_messages_across_fork_exactly_once_in_order() {
    let layout = Layout::builder()
        .spsc_ring::<u64>("ring", 4096)
        .region::<AtomicU64>("sent_checksum")
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = SpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let sent_checksum = segment.region::<AtomicU64>("sent_checksum").unwrap();

    let child = fork_child(|| {
        let Ok(mut tx) = ring.producer(own_token()) else {
            return 2;
        };
        let mut sum = 0u64;
        let mut next = 0u64;
        let mut spins = 0;
        let mut batch = [0u64; 64];
        while next < STREAM {
            // Alternate between single pushes and batches of varying size.
            if (next / 1000).is_multiple_of(2) {
                match tx.try_push(next) {
                    Ok(()) => {
                        sum = mix(sum, next);
                        next += 1;
                    }
                    Err(shmem::ring::SpscPushError::Full) => backoff(&mut spins),
                    Err(_) => return 3,
                }
            } else {
                let n = ((next % 63) + 1).min(STREAM - next) as usize;
                for (i, slot) in batch[..n].iter_mut().enumerate() {
                    *slot = next + i as u64;
                }
                match tx.push_slice(&batch[..n]) {
                    Ok(0) => backoff(&mut spins),
                    Ok(pushed) => {
                        for v in &batch[..pushed] {
                            sum = mix(sum, *v);
                        }
                        next += pushed as u64;
                    }
                    Err(_) => return 3,
                }
            }
        }
        // Relaxed: the parent reads it after waitpid, which orders it.
        sent_checksum.store(sum, Ordering::Relaxed);
        0
    });

    let mut rx = ring.consumer(own_token()).unwrap();
    let started = Instant::now();
    let mut expected = 0u64;
    let mut sum = 0u64;
    let mut out = vec![0u64; 256];
    let mut idle = 0u64;
    while expected < STREAM {
        let n = rx.pop_slice(&mut out).unwrap();
        if n == 0 {
            idle += 1;
            if idle.is_multiple_of(1 << 20) {
                assert_running(child, started);
            }
            shmem::sync::spin_loop();
            continue;
        }
        for &v in &out[..n] {
            assert_eq!(v, expected, "FIFO, exactly once");
            sum = mix(sum, v);
            expected += 1;
        }
    }
    expect_exit(child, 0);
    assert_eq!(rx.try_pop(), Err(shmem::ring::SpscPopError::Empty));
    assert_eq!(sum, sent_checksum.load(Ordering::Relaxed));
}

#[test]
fn mpsc_streams_from_two_producers_across_fork_exactly_once_in_order() {
    let layout = Layout::builder()
        .mpsc_ring::<u64>("ring", 4096)
        .array::<AtomicU64>("sent_checksums", 2)
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = MpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let sums = segment.array::<AtomicU64>("sent_checksums").unwrap();
    let per_producer = STREAM / 2;

    let children: Vec<Pid> = (0..2u64)
        .map(|k| {
            fork_child(move || {
                let Ok(mut tx) = ring.producer(own_token()) else {
                    return 2;
                };
                let mut sum = 0u64;
                let mut spins = 0;
                let mut i = 0;
                while i < per_producer {
                    let value = k << 56 | i;
                    match tx.try_push(value) {
                        Ok(()) => {
                            sum = sum.wrapping_add(value);
                            i += 1;
                        }
                        Err(shmem::ring::MpscPushError::Full) => backoff(&mut spins),
                        Err(_) => return 3,
                    }
                }
                // Relaxed: read by the parent after waitpid.
                sums[k as usize].store(sum, Ordering::Relaxed);
                0
            })
        })
        .collect();

    let mut rx = ring.consumer(own_token()).unwrap();
    let started = Instant::now();
    let mut next = [0u64; 2];
    let mut sum = [0u64; 2];
    let mut out = vec![0u64; 256];
    let mut spins = 0;
    let mut reaped = [false; 2];
    while next[0] + next[1] < STREAM {
        match rx.pop_slice(&mut out) {
            Ok(n) => {
                for &v in &out[..n] {
                    let k = (v >> 56) as usize;
                    assert!(k < 2, "value {v:#x} from no producer");
                    assert_eq!(
                        v & ((1 << 56) - 1),
                        next[k],
                        "producer {k}: FIFO, exactly once"
                    );
                    next[k] += 1;
                    sum[k] = sum[k].wrapping_add(v);
                }
            }
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => {
                backoff(&mut spins);
                if spins % (1 << 16) == 0 {
                    for (c, done) in children.iter().zip(&mut reaped) {
                        if *done {
                            continue;
                        }
                        // A child that finished is fine; one that failed is not.
                        match waitpid(*c, Some(WaitPidFlag::WNOHANG)) {
                            Ok(WaitStatus::StillAlive) => {}
                            Ok(WaitStatus::Exited(_, 0)) => *done = true,
                            other => panic!("producer {c} ended with {other:?}"),
                        }
                    }
                    assert!(started.elapsed() < PATIENCE, "gave up at {next:?}");
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
    for (c, done) in children.into_iter().zip(reaped) {
        if !done {
            expect_exit(c, 0);
        }
    }
    assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
    for k in 0..2 {
        assert_eq!(next[k], per_producer);
        assert_eq!(sum[k], sums[k].load(Ordering::Relaxed));
    }
}

#[test]
fn mpsc_producer_that_exits_holding_a_claim_is_reported_then_recovered() {
    let layout = Layout::builder()
        .mpsc_ring::<u64>("ring", 8)
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = MpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let mut rx = ring.consumer(own_token()).unwrap();

    let child = fork_child(|| {
        let Ok(mut tx) = ring.producer(own_token()) else {
            return 2;
        };
        if tx.try_push(1).is_err() || tx.try_push(2).is_err() {
            return 3;
        }
        // Die between claiming and publishing: no destructor runs, as
        // with a crash.
        match tx.claim() {
            Ok(claim) => std::mem::forget(claim),
            Err(_) => return 4,
        }
        std::mem::forget(tx);
        0
    });
    expect_exit(child, 0);
    let mut tx = ring.producer(own_token()).unwrap();
    tx.try_push(100).unwrap();

    assert_eq!(rx.try_pop(), Ok(1));
    assert_eq!(rx.try_pop(), Ok(2));
    let Err(MpscPopError::InFlight { position, producer }) = rx.try_pop() else {
        panic!("the dead producer's claim must be visible");
    };
    assert_eq!(position, 2);
    assert_eq!(ring.producer_owner(producer), child.as_raw() as u32);
    // SAFETY: the child has been reaped.
    let recovered = unsafe { ring.recover_owner(child.as_raw() as u32) };
    assert_eq!(recovered.abandoned, 1);
    assert_eq!(
        rx.try_pop(),
        Err(MpscPopError::Abandoned {
            position: 2,
            producer
        })
    );
    assert_eq!(rx.try_pop(), Ok(100));
    assert_eq!(rx.try_pop(), Err(MpscPopError::Empty));
}

#[test]
fn mpsc_producer_killed_mid_stream_leaves_a_prefix_and_at_most_one_reported_loss() {
    let layout = Layout::builder()
        .mpsc_ring::<u64>("ring", 64)
        .build()
        .unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = MpscRing::<u64>::from_segment(&segment, "ring").unwrap();
    let mut rx = ring.consumer(own_token()).unwrap();
    let survivor_count = 200_000u64;

    let spawn = |k: u64, count: u64| {
        fork_child(move || {
            let Ok(mut tx) = ring.producer(own_token()) else {
                return 2;
            };
            let mut spins = 0;
            let mut i = 0;
            while i < count {
                match tx.try_push(k << 56 | i) {
                    Ok(()) => i += 1,
                    Err(shmem::ring::MpscPushError::Full) => backoff(&mut spins),
                    Err(_) => return 3,
                }
            }
            0
        })
    };
    let victim = spawn(0, u64::MAX >> 8);
    let survivor = spawn(1, survivor_count);

    let started = Instant::now();
    let mut next = [0u64; 2];
    let mut lost = 0;
    let mut killed = false;
    let mut spins = 0;
    while next[1] < survivor_count || !killed {
        assert!(started.elapsed() < PATIENCE, "gave up at {next:?}");
        if !killed && next[0] >= 50_000 {
            kill(victim, Signal::SIGKILL).unwrap();
            assert!(matches!(
                waitpid(victim, None).unwrap(),
                WaitStatus::Signaled(_, Signal::SIGKILL, _)
            ));
            // SAFETY: the victim has been reaped.
            unsafe { ring.recover_owner(victim.as_raw() as u32) };
            killed = true;
        }
        match rx.try_pop() {
            Ok(v) => {
                let k = (v >> 56) as usize;
                assert_eq!(v & ((1 << 56) - 1), next[k], "producer {k}");
                assert!(k == 1 || lost == 0, "victim values after its loss");
                next[k] += 1;
            }
            Err(MpscPopError::Abandoned { .. }) => {
                assert!(killed, "a loss is reported only for the dead producer");
                lost += 1;
            }
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => backoff(&mut spins),
            Err(e) => panic!("{e}"),
        }
    }
    expect_exit(survivor, 0);
    // Drain: nothing more may come from the victim after its loss.
    let victim_delivered = next[0];
    loop {
        match rx.try_pop() {
            Ok(v) => {
                assert_eq!(v >> 56, 0);
                assert_eq!(v & ((1 << 56) - 1), next[0]);
                next[0] += 1;
            }
            Err(MpscPopError::Abandoned { .. }) => lost += 1,
            Err(MpscPopError::Empty) => break,
            Err(e) => panic!("after recovery nothing may stay in flight: {e}"),
        }
    }
    assert!(
        lost <= 1,
        "one producer holds at most one claim, lost {lost}"
    );
    assert!(victim_delivered >= 50_000 && next[0] >= victim_delivered);
}

#[test]
fn byte_ring_streams_variable_messages_across_fork_then_drains_the_detach() {
    const MAX_LEN: u64 = 300;
    let count = STREAM / 10;
    let layout = Layout::builder().byte_ring("mq", 4096).build().unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = ByteRing::from_segment(&segment, "mq").unwrap();
    let mut rx = ring.receiver(own_token()).unwrap();

    let fill = |seq: u64, buf: &mut [u8; MAX_LEN as usize]| -> usize {
        let len = (seq.wrapping_mul(7919) % (MAX_LEN + 1)) as usize;
        for (i, b) in buf[..len].iter_mut().enumerate() {
            *b = (seq as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
        len
    };

    let child = fork_child(|| {
        let Ok(mut tx) = ring.sender(own_token()) else {
            return 2;
        };
        let mut buf = [0u8; MAX_LEN as usize];
        let mut spins = 0;
        let mut seq = 0;
        while seq < count {
            let len = fill(seq, &mut buf);
            match tx.try_send(&buf[..len]) {
                Ok(()) => seq += 1,
                Err(shmem::ring::ByteSendError::Full) => backoff(&mut spins),
                Err(_) => return 3,
            }
        }
        tx.detach();
        0
    });

    let started = Instant::now();
    let mut want = [0u8; MAX_LEN as usize];
    let mut seq = 0;
    let (mut in_place, mut copied) = (0u64, 0u64);
    loop {
        match rx.try_recv() {
            Ok(message) => {
                let len = fill(seq, &mut want);
                assert_eq!(&*message, &want[..len], "message {seq}");
                if message.is_in_place() {
                    in_place += 1;
                } else {
                    copied += 1;
                }
                seq += 1;
            }
            Err(ByteRecvError::Empty) => {
                assert!(started.elapsed() < PATIENCE, "gave up at {seq}");
                shmem::sync::spin_loop();
            }
            Err(ByteRecvError::Detached) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(seq, count, "every message sent before the detach arrives");
    assert!(in_place > 0 && copied > 0);
    expect_exit(child, 0);
}

#[test]
fn byte_ring_sender_killed_mid_stream_leaves_only_whole_messages() {
    let layout = Layout::builder().byte_ring("mq", 1024).build().unwrap();
    let segment = Segment::create(&layout).unwrap();
    let ring = ByteRing::from_segment(&segment, "mq").unwrap();
    let mut rx = ring.receiver(own_token()).unwrap();

    // Each message: its sequence number, then that number's low byte
    // repeated up to a length that varies with it.
    let child = fork_child(|| {
        let Ok(mut tx) = ring.sender(own_token()) else {
            return 2;
        };
        let mut buf = [0u8; 512];
        let mut seq = 0u64;
        loop {
            let len = 8 + (seq as usize * 13) % 500;
            buf[..8].copy_from_slice(&seq.to_le_bytes());
            buf[8..len].fill(seq as u8);
            match tx.try_send(&buf[..len]) {
                Ok(()) => seq += 1,
                Err(shmem::ring::ByteSendError::Full) => shmem::sync::spin_loop(),
                Err(_) => return 3,
            }
        }
    });

    let started = Instant::now();
    let mut seq = 0u64;
    let mut killed = false;
    loop {
        assert!(started.elapsed() < PATIENCE, "gave up at {seq}");
        if !killed && seq >= 20_000 {
            kill(child, Signal::SIGKILL).unwrap();
            waitpid(child, None).unwrap();
            assert_eq!(ring.mark_dead(child.as_raw() as u32), 1);
            killed = true;
        }
        match rx.try_recv() {
            Ok(m) => {
                assert_eq!(m.len(), 8 + (seq as usize * 13) % 500, "message {seq}");
                assert_eq!(u64::from_le_bytes(m[..8].try_into().unwrap()), seq);
                assert!(m[8..].iter().all(|&b| b == seq as u8), "message {seq} torn");
                seq += 1;
            }
            Err(ByteRecvError::Empty) => shmem::sync::spin_loop(),
            Err(ByteRecvError::PeerDied) => {
                assert!(killed);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(seq >= 20_000);
}
