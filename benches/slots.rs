//! Process slots: acquire + release, alone and with two threads contending,
//! against a `Mutex<Vec<u32>>` free list in the same groups. The
//! two-process figures (and a shared-memory spinlock list, PostgreSQL's
//! approach) are in `postmaster bench slots`, which can fork freely.
//!
//! Not like for like: the mutex baseline here moves an index and nothing
//! else, while `acquire` also writes the slot's identity, latch owner and
//! status (and the release clears them). `postmaster bench slots` has the
//! fair comparison (`mutex_freelist_*` there do the same slot writes) and
//! the bare-list one (`freelist_pop_push_ns` vs `mutex_bare_pop_push_ns`).
//! Two threads of one process get separate home free lists, as two
//! processes do (see `proclist::array::FREE_LIST_SHARDS`).

use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use proclist::{Kind, ProcArray, ProcArrayConfig};
use shmem::{Layout, Segment};

const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 0,
    backends: 64,
};

fn segment() -> Segment {
    let layout = ProcArray::declare(Layout::builder(), CONFIG)
        .build()
        .expect("layout");
    let seg = Segment::create(&layout).expect("segment");
    ProcArray::init(&seg, CONFIG).expect("init");
    seg
}

fn mutex_list() -> Mutex<Vec<u32>> {
    Mutex::new((0..CONFIG.backends).collect())
}

fn mutex_cycle(list: &Mutex<Vec<u32>>) {
    let i = list.lock().expect("unpoisoned").pop().expect("a free slot");
    list.lock().expect("unpoisoned").push(i);
}

fn uncontended(c: &mut Criterion) {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).expect("attach");
    // Correctness first: all slots can be had, and all come back.
    let all: Vec<_> = (0..CONFIG.backends)
        .map(|_| procs.acquire(Kind::Backend).expect("slot"))
        .collect();
    assert!(procs.acquire(Kind::Backend).is_err());
    drop(all);
    let list = mutex_list();

    let mut group = c.benchmark_group("slot_acquire_release");
    group.bench_function("proclist", |b| {
        b.iter(|| drop(procs.acquire(Kind::Backend).expect("slot")))
    });
    group.bench_function("mutex_vec_baseline", |b| b.iter(|| mutex_cycle(&list)));
    group.finish();
    assert_eq!(
        procs
            .count_free_quiescent(Kind::Backend)
            .expect("consistent"),
        CONFIG.backends
    );
}

/// Times `iters` operations on each of two threads started together;
/// reports the wall time of the slower one.
fn two_threads(iters: u64, op: &(dyn Fn() + Sync)) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        op();
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .max()
            .expect("two")
    })
}

fn contended(c: &mut Criterion) {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).expect("attach");
    let list = mutex_list();

    let mut group = c.benchmark_group("slot_acquire_release_2threads");
    group.bench_function("proclist", |b| {
        b.iter_custom(|iters| {
            two_threads(iters, &|| drop(procs.acquire(Kind::Backend).expect("slot")))
        })
    });
    group.bench_function("mutex_vec_baseline", |b| {
        b.iter_custom(|iters| two_threads(iters, &|| mutex_cycle(&list)))
    });
    group.finish();
    assert_eq!(
        procs
            .count_free_quiescent(Kind::Backend)
            .expect("consistent"),
        CONFIG.backends
    );
}

criterion_group!(benches, uncontended, contended);
criterion_main!(benches);
