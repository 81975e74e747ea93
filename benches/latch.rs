//! Criterion benches for the latch, each group against its named baselines
//! so ratios come from one run:
//!
//! - `latch_set`: `Latch::set` with no waiter vs an 8-byte pipe write vs an
//!   eventfd write;
//! - `latch_pingpong`: cross-process round trip between processes pinned to
//!   CPUs 0 and 1: latch (adaptive spin), latch (no spin), pipe, eventfd,
//!   Unix datagram socket pair, pure spinning on a shared word (the floor);
//! - `latch_pingpong_samecpu`: latch (adaptive spin) vs eventfd with both
//!   processes on CPU 0.
//!
//! The transports and the forked, pinned child are those of
//! `postmaster bench latch` (`src/bench/latch.rs`, included below), which
//! check every ball and the child's count. This binary runs its benches on
//! the main thread, so forking from it is sound.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use latch::{Latch, WaitOptions};
use nix::sys::eventfd::{EfdFlags, EventFd};
use shmem::{Layout, Segment};

// What `src/bench/latch.rs` expects from its parent module (`super::`),
// reduced to what this binary needs; its `run` is not used here.

/// As in `src/bench/mod.rs`.
#[allow(dead_code)]
struct BenchOpts {
    quick: bool,
}

#[allow(dead_code)]
impl BenchOpts {
    fn budget(&self) -> Duration {
        Duration::from_millis(if self.quick { 200 } else { 2000 })
    }
}

/// As in `src/bench/mod.rs`.
#[allow(dead_code)]
struct Figure;

#[allow(dead_code)]
impl Figure {
    fn new(_name: &str, _value: f64, _unit: &'static str) -> Self {
        Self
    }
    fn ratio(_ours: &Figure, _peer: &Figure) -> Self {
        Self
    }
}

/// As in `src/bench/mod.rs`.
#[allow(dead_code)]
fn mean_ns(budget: Duration, mut op: impl FnMut()) -> f64 {
    let (start, mut calls) = (Instant::now(), 0u64);
    while start.elapsed() < budget {
        op();
        calls += 1;
    }
    start.elapsed().as_nanos() as f64 / calls.max(1) as f64
}

// The process helpers the included group files call as `super::...`.
#[allow(dead_code)] // each bench uses some of them
#[path = "../src/bench/child.rs"]
mod child;
use child::{err, pin_to_cpu};

#[allow(dead_code)]
#[path = "../src/bench/latch.rs"]
mod figures;

use figures::{Placement, Session, Transport};

fn set_vs_write(c: &mut Criterion) {
    let mut group = c.benchmark_group("latch_set");
    let layout = Layout::builder()
        .region::<Latch>("latch")
        .build()
        .expect("layout");
    let segment = Segment::create(&layout).expect("segment");
    let latch: &Latch = segment.region("latch").expect("region");
    latch.own().expect("own");
    group.bench_function("latch_set_nowaiter", |b| b.iter(|| latch.set()));
    assert!(latch.is_set() && !latch.has_sleeper());

    let (rx, tx) = nix::unistd::pipe().expect("pipe");
    let mut drain = vec![0u8; 2048 * 8];
    group.bench_function("pipe_write_8b", |b| {
        b.iter_custom(|iters| {
            // Drain outside the timed part, before the pipe could fill.
            let mut took = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(2048);
                let start = Instant::now();
                for i in 0..n {
                    let wrote = nix::unistd::write(&tx, &black_box(i).to_le_bytes());
                    assert_eq!(wrote, Ok(8));
                }
                took += start.elapsed();
                let bytes = &mut drain[..n as usize * 8];
                let mut got = 0;
                while got < bytes.len() {
                    got += nix::unistd::read(&rx, &mut bytes[got..]).expect("drain");
                }
                left -= n;
            }
            took
        })
    });

    let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).expect("eventfd");
    group.bench_function("eventfd_write", |b| {
        b.iter(|| assert_eq!(efd.write(1), Ok(8)))
    });
    assert!(efd.read().expect("eventfd read") > 0);
    group.finish();
}

fn pingpong_group(
    c: &mut Criterion,
    name: &str,
    placement: Placement,
    cases: Vec<(&str, Transport)>,
) {
    let mut group = c.benchmark_group(name);
    if placement == Placement::Apart {
        // A blocking round trip across vCPUs takes ~60 µs; keep runs short.
        group.sample_size(20);
    }
    for (case, transport) in cases {
        let mut session = Session::start(transport, placement).expect("start ping-pong");
        group.bench_function(case, |b| {
            b.iter_custom(|iters| session.rounds(iters).expect("ping-pong round"))
        });
        // Checks that the child served every round before the figure counts.
        session.finish().expect("ping-pong check");
    }
    group.finish();
}

fn pingpong(c: &mut Criterion) {
    let apart = vec![
        (
            "latch_spin",
            Transport::latch(WaitOptions::default()).expect("latch"),
        ),
        (
            "latch_nospin",
            Transport::latch(WaitOptions::no_spin()).expect("latch"),
        ),
        ("pipe", Transport::pipe().expect("pipe")),
        ("eventfd", Transport::eventfd().expect("eventfd")),
        ("uds_dgram", Transport::uds().expect("uds")),
        ("spin_floor", Transport::spin().expect("spin")),
    ];
    pingpong_group(c, "latch_pingpong", Placement::Apart, apart);
    let together = vec![
        (
            "latch_spin",
            Transport::latch(WaitOptions::default()).expect("latch"),
        ),
        ("eventfd", Transport::eventfd().expect("eventfd")),
    ];
    pingpong_group(c, "latch_pingpong_samecpu", Placement::Together, together);
}

criterion_group!(benches, set_vs_write, pingpong);
criterion_main!(benches);
