//! Criterion benches for the rings, each group against its named baselines
//! so ratios come from one run (throughput in messages per second):
//!
//! - `ring_spsc_8b`, `ring_spsc_64b`: our SPSC ring across processes and
//!   between threads, crossbeam's `ArrayQueue` and `std::sync::mpsc::
//!   sync_channel` between threads, and (8 bytes) a pipe across processes;
//! - `ring_mpsc2_8b`, `ring_mpsc2_64b`: two producers and a consumer: our
//!   MPSC ring across processes and between threads, `ArrayQueue`, and a
//!   `sync_channel` with two senders;
//! - `ring_bytes`: the byte ring across processes, 1 KiB messages.
//!
//! Every loop waits with the same `Backoff` when its queue is empty or
//! full. The cross-process runs are those of `postmaster bench ring`
//! (`src/bench/ring.rs`, included below): consumer on CPU 0, producers on
//! CPU 1, every message checked for order and count before a time is
//! returned. `iter_custom` times only the streaming phase (from "go" to the
//! last message). This binary runs its benches on the main thread, so
//! forking from it is sound.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shmem::ring::{MpscPopError, MpscPushError, MpscStorage, SpscStorage};

// What `src/bench/ring.rs` expects from its parent module (`super::`),
// reduced to what this binary needs; its `run` is not used here.

/// As in `src/bench/mod.rs`.
#[allow(dead_code)]
struct BenchOpts {
    quick: bool,
}

/// As in `src/bench/mod.rs`.
#[allow(dead_code)]
struct Figure;

#[allow(dead_code)]
impl Figure {
    fn new(_name: impl Into<String>, _value: f64, _unit: &'static str) -> Self {
        Self
    }
    fn ratio(_ours: &Figure, _peer: &Figure) -> Self {
        Self
    }
}

// The process helpers the included group files call as `super::...`.
#[allow(dead_code)] // each bench uses some of them
#[path = "../src/bench/child.rs"]
mod child;
use child::{fork_pinned, pin_to_cpu, reap};

#[allow(dead_code)]
#[path = "../src/bench/ring.rs"]
mod ring;

use ring::{Backoff, Message};

/// Our SPSC ring between two threads of one process (heap storage), with
/// the same placement and checks as the cross-process run.
fn spsc_threads<T: Message>(count: u64) -> Result<Duration, String> {
    let storage = SpscStorage::<T>::new(ring::RING_CAPACITY).map_err(|e| e.to_string())?;
    let view = storage.ring();
    let barrier = Barrier::new(2);
    pin(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(1);
            let mut tx = view.producer(2).expect("free");
            barrier.wait();
            let mut seq = 0;
            let mut backoff = Backoff::new();
            while seq < count {
                if tx.try_push(T::make(seq)).is_ok() {
                    seq += 1;
                    backoff.reset();
                } else {
                    backoff.snooze();
                }
            }
        });
        let mut rx = view.consumer(1).map_err(|e| e.to_string())?;
        barrier.wait();
        let started = Instant::now();
        let mut expected = 0;
        let mut backoff = Backoff::new();
        while expected < count {
            match rx.try_pop() {
                Ok(m) if m.seq() == Some(expected) => {
                    expected += 1;
                    backoff.reset();
                }
                Ok(_) => return Err("spsc threads: out of order".to_owned()),
                Err(_) => backoff.snooze(),
            }
        }
        Ok(started.elapsed())
    })
}

/// Our MPSC ring, two producer threads and a consumer thread.
fn mpsc2_threads<T: Message>(count: u64) -> Result<Duration, String> {
    let storage = MpscStorage::<T>::new(ring::RING_CAPACITY).map_err(|e| e.to_string())?;
    let view = storage.ring();
    let barrier = Barrier::new(3);
    let per_producer = count / 2;
    pin(0);
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let barrier = &barrier;
            s.spawn(move || {
                pin(1);
                let mut tx = view.producer(10 + k as u32).expect("free slot");
                barrier.wait();
                let mut seq = 0;
                let mut backoff = Backoff::new();
                while seq < per_producer {
                    match tx.try_push(T::make(k << 56 | seq)) {
                        Ok(()) => {
                            seq += 1;
                            backoff.reset();
                        }
                        Err(MpscPushError::Full) => backoff.snooze(),
                        Err(e) => panic!("{e}"),
                    }
                }
            });
        }
        let mut rx = view.consumer(1).map_err(|e| e.to_string())?;
        barrier.wait();
        let started = Instant::now();
        let mut next = [0u64; 2];
        let mut backoff = Backoff::new();
        while next[0] + next[1] < 2 * per_producer {
            match rx.try_pop() {
                Ok(m) => {
                    backoff.reset();
                    let v = m.seq().ok_or("torn")?;
                    let k = (v >> 56) as usize;
                    if k > 1 || v & ((1 << 56) - 1) != next[k] {
                        return Err(format!("mpsc threads: got {v:#x}"));
                    }
                    next[k] += 1;
                }
                Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => backoff.snooze(),
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(started.elapsed())
    })
}

/// `sync_channel` with two sending threads.
fn sync_channel_mpsc2<T: Message>(count: u64) -> Result<Duration, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(ring::RING_CAPACITY);
    let barrier = Barrier::new(3);
    let per_producer = count / 2;
    pin(0);
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let (tx, barrier) = (tx.clone(), &barrier);
            s.spawn(move || {
                pin(1);
                barrier.wait();
                for seq in 0..per_producer {
                    if tx.send(T::make(k << 56 | seq)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        barrier.wait();
        let started = Instant::now();
        let mut next = [0u64; 2];
        for _ in 0..2 * per_producer {
            let v = rx.recv().map_err(|e| e.to_string())?.seq().ok_or("torn")?;
            let k = (v >> 56) as usize;
            if k > 1 || v & ((1 << 56) - 1) != next[k] {
                return Err(format!("sync_channel mpsc: got {v:#x}"));
            }
            next[k] += 1;
        }
        Ok(started.elapsed())
    })
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

type Run = fn(u64) -> Result<Duration, String>;

fn group(c: &mut Criterion, name: &str, contenders: &[(&str, Run)]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (label, run) in contenders {
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            // Each sample streams at least 100k messages so that process
            // start-up and the handshake stay outside what is timed.
            b.iter_custom(|iters| {
                let count = iters.max(100_000);
                let elapsed = run(count).unwrap_or_else(|e| panic!("{label}: {e}"));
                elapsed.mul_f64(iters as f64 / count as f64)
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    group(
        c,
        "ring_spsc_8b",
        &[
            ("spsc_xproc", ring::spsc_xproc::<u64>),
            ("spsc_threads", spsc_threads::<u64>),
            ("arrayqueue_threads", ring::arrayqueue_spsc::<u64>),
            ("sync_channel_threads", ring::sync_channel_spsc::<u64>),
            ("pipe_xproc", ring::pipe_xproc),
        ],
    );
    group(
        c,
        "ring_spsc_64b",
        &[
            ("spsc_xproc", ring::spsc_xproc::<[u64; 8]>),
            ("spsc_threads", spsc_threads::<[u64; 8]>),
            ("arrayqueue_threads", ring::arrayqueue_spsc::<[u64; 8]>),
            ("sync_channel_threads", ring::sync_channel_spsc::<[u64; 8]>),
        ],
    );
    group(
        c,
        "ring_mpsc2_8b",
        &[
            ("mpsc2_xproc", ring::mpsc2_xproc::<u64>),
            ("mpsc2_threads", mpsc2_threads::<u64>),
            ("arrayqueue_threads", ring::arrayqueue_mpsc2::<u64>),
            ("sync_channel_threads", sync_channel_mpsc2::<u64>),
        ],
    );
    group(
        c,
        "ring_mpsc2_64b",
        &[
            ("mpsc2_xproc", ring::mpsc2_xproc::<[u64; 8]>),
            ("mpsc2_threads", mpsc2_threads::<[u64; 8]>),
            ("arrayqueue_threads", ring::arrayqueue_mpsc2::<[u64; 8]>),
            ("sync_channel_threads", sync_channel_mpsc2::<[u64; 8]>),
        ],
    );
    group(
        c,
        "ring_bytes_1k",
        &[("bytering_xproc", ring::bytering_xproc)],
    );
}

criterion_group!(ring_benches, benches);
criterion_main!(ring_benches);
