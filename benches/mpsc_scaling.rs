//! Criterion bench for MPSC throughput as producers are added: our MPSC
//! ring with 1, 2, 4 and 8 producer processes against crossbeam's
//! `ArrayQueue` with as many producer threads, in one group
//! (`mpsc_scaling_8b`, messages per second) so ratios come from one run.
//!
//! Every producer runs on CPU 1 and the consumer on CPU 0, threads and
//! processes alike, as in `postmaster bench ring` (`src/bench/ring.rs`,
//! included below, which checks every message's producer and order and the
//! total before returning a time). On a two-CPU machine more than one
//! producer oversubscribes CPU 1: the curve shows degradation under
//! time-sharing, not a speed-up. `iter_custom` times only the streaming
//! phase. This binary runs its benches on the main thread, so forking from
//! it is sound.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::ArrayQueue;

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

use ring::{Backoff, SWEEP_PRODUCERS};

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// `ArrayQueue` with `producers` threads on CPU 1 and the consumer on CPU
/// 0; checks each producer's order and the total.
fn arrayqueue_producers(producers: usize, count: u64) -> Result<Duration, String> {
    let queue = ArrayQueue::<u64>::new(ring::RING_CAPACITY);
    let barrier = Barrier::new(producers + 1);
    let per_producer = count / producers as u64;
    pin(0);
    std::thread::scope(|s| {
        for k in 0..producers as u64 {
            let (queue, barrier) = (&queue, &barrier);
            s.spawn(move || {
                pin(1);
                barrier.wait();
                let mut backoff = Backoff::new();
                for seq in 0..per_producer {
                    let mut m = k << 56 | seq;
                    while let Err(back) = queue.push(m) {
                        m = back;
                        backoff.snooze();
                    }
                    backoff.reset();
                }
            });
        }
        barrier.wait();
        let started = Instant::now();
        let mut next = vec![0u64; producers];
        let mut backoff = Backoff::new();
        for _ in 0..per_producer * producers as u64 {
            let m = loop {
                match queue.pop() {
                    Some(m) => break m,
                    None => backoff.snooze(),
                }
            };
            backoff.reset();
            let (k, seq) = ((m >> 56) as usize, m & ((1 << 56) - 1));
            match next.get_mut(k) {
                Some(n) if *n == seq => *n += 1,
                _ => return Err(format!("arrayqueue: got {m:#x}, next {next:?}")),
            }
        }
        Ok(started.elapsed())
    })
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("mpsc_scaling_8b");
    g.throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for producers in SWEEP_PRODUCERS {
        // Each sample streams at least 50k messages per producer, so that
        // start-up stays outside what is timed and the producers sharing
        // CPU 1 take turns many times.
        let floor = 50_000 * producers as u64;
        g.bench_function(BenchmarkId::new("mpsc_xproc", producers), |b| {
            b.iter_custom(|iters| {
                let count = iters.max(floor);
                let run = ring::mpsc_xproc::<u64>(producers, count)
                    .unwrap_or_else(|e| panic!("mpsc_xproc p{producers}: {e}"));
                let sent = count / producers as u64 * producers as u64;
                run.elapsed.mul_f64(iters as f64 / sent as f64)
            })
        });
        g.bench_function(BenchmarkId::new("arrayqueue_threads", producers), |b| {
            b.iter_custom(|iters| {
                let count = iters.max(floor);
                let elapsed = arrayqueue_producers(producers, count)
                    .unwrap_or_else(|e| panic!("arrayqueue p{producers}: {e}"));
                let sent = count / producers as u64 * producers as u64;
                elapsed.mul_f64(iters as f64 / sent as f64)
            })
        });
    }
    g.finish();
}

criterion_group!(mpsc_scaling_benches, benches);
criterion_main!(mpsc_scaling_benches);
