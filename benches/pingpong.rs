//! Criterion bench for ping-pong round trips between two processes pinned
//! to CPUs 0 and 1, each contender in one group so ratios come from one
//! run (`pingpong_rtt`; time per element = one round trip):
//!
//! - `spsc_rings`: a numbered `u64` out on one of our SPSC rings and back
//!   on another, both sides busy-polling (ours);
//! - `spin_word`: both sides spinning on one shared word (the floor);
//! - `iceoryx2_pubsub` (with `--features peers`): iceoryx2 0.10's
//!   publish-subscribe, busy-polling, set up as its own benchmark does;
//!
//! and, blocking (`pingpong_blocking_rtt`): our latch with the spin off,
//! eventfd, and (with `--features peers`) iceoryx2's event.
//!
//! The ping-pongs are those of `postmaster bench pingpong`
//! (`src/bench/pingpong.rs` and `src/bench/latch.rs`, included below),
//! which check every ball and that the answering side served exactly the
//! rounds sent before a time is returned; `iter_custom` times only the
//! rounds after a warm-up, inside the measuring process. This binary runs
//! its benches on the main thread, so forking from it is sound.

use std::time::{Duration, Instant};

use ::latch::WaitOptions;
use criterion::{Criterion, criterion_group, criterion_main};

// What the included files expect from their parent module (`super::`),
// reduced to what this binary needs; their `run`s are not used here.

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
    fn new(_name: impl Into<String>, _value: f64, _unit: &'static str) -> Self {
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

// Named `latch` because `pingpong.rs` reaches its transports as
// `super::latch` (the crate is `::latch`).
#[allow(dead_code)]
#[path = "../src/bench/latch.rs"]
mod latch;

#[allow(dead_code)]
#[path = "../src/bench/pingpong.rs"]
mod pingpong;

use self::latch::{Placement, Session, Transport};
use pingpong::Plan;

type Rtt = fn(Plan) -> Result<f64, String>;

/// Times `iters` rounds of one contender (after its warm-up).
fn timed(label: &str, run: Rtt, iters: u64) -> Duration {
    let mean = run(Plan::Rounds(iters)).unwrap_or_else(|e| panic!("{label}: {e}"));
    Duration::from_nanos((mean * iters as f64) as u64)
}

/// A latch-transport session, timing exactly `iters` rounds.
fn session_rtt(transport: Result<Transport, String>, iters: u64) -> Result<f64, String> {
    let mut session = Session::start(transport?, Placement::Apart)?;
    session.rounds(200)?;
    let took = session.rounds(iters.max(1))?;
    session.finish()?;
    Ok(took.as_nanos() as f64 / iters.max(1) as f64)
}

fn spin_word(plan: Plan) -> Result<f64, String> {
    let Plan::Rounds(n) = plan else {
        return Err("the criterion bench plays fixed rounds".into());
    };
    session_rtt(Transport::spin(), n)
}

fn latch_nospin(plan: Plan) -> Result<f64, String> {
    let Plan::Rounds(n) = plan else {
        return Err("the criterion bench plays fixed rounds".into());
    };
    session_rtt(Transport::latch(WaitOptions::no_spin()), n)
}

fn eventfd(plan: Plan) -> Result<f64, String> {
    let Plan::Rounds(n) = plan else {
        return Err("the criterion bench plays fixed rounds".into());
    };
    session_rtt(Transport::eventfd(), n)
}

fn group(c: &mut Criterion, name: &str, contenders: &[(&str, Rtt)], time: Duration) {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(time);
    for &(label, run) in contenders {
        g.bench_function(label, |b| b.iter_custom(|iters| timed(label, run, iters)));
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let busy: &[(&str, Rtt)] = &[
        ("spsc_rings", pingpong::spsc_pingpong_rtt_ns),
        ("spin_word", spin_word),
        #[cfg(feature = "peers")]
        ("iceoryx2_pubsub", pingpong::peers::pubsub_rtt_ns),
    ];
    group(c, "pingpong_rtt", busy, Duration::from_secs(2));
    let blocking: &[(&str, Rtt)] = &[
        ("latch_nospin", latch_nospin),
        ("eventfd", eventfd),
        #[cfg(feature = "peers")]
        ("iceoryx2_event", pingpong::peers::event_rtt_ns),
    ];
    group(c, "pingpong_blocking_rtt", blocking, Duration::from_secs(3));
}

criterion_group!(pingpong_benches, benches);
criterion_main!(pingpong_benches);
