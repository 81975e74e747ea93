//! Ring figures: throughput of the shared-memory rings across processes,
//! against crossbeam's `ArrayQueue` and `std::sync::mpsc::sync_channel`
//! between threads of one process and a pipe between two processes, all
//! measured in the same run.
//!
//! Placement: the consumer runs on CPU 0, producers on CPU 1 (both
//! producers share CPU 1 in the two-producer runs, threads and processes
//! alike). Every message carries its sequence number (and its producer);
//! the consumer checks order and count as it goes, and a figure is only
//! reported if every message arrived exactly once and in order. Each figure
//! is the best of [`REPEATS`] runs, baselines included, because the machine
//! is shared; the runs go in rounds, every figure once per round, so that
//! ours and the baselines meet the host's slow phases alike. Every loop
//! waits with the same [`Backoff`].
//!
//! The functions that run one measurement return the time the consumer
//! took from "go" to the last message; `benches/ring.rs` includes this file
//! and times the same functions under criterion.
//!
//! `spsc_blocking_xproc_mmsgs` streams through the blocking ends of
//! `latch::channel` instead of spinning on `try_push`/`try_pop`: both sides
//! sleep on latches when the ring is full or empty, on a smaller ring
//! ([`BLOCKING_CAPACITY`]). Next to it, `spsc_blocking_sets_per_kmsg` and
//! `spsc_blocking_waits_per_kmsg` count the latch sets both ends made and
//! the waits they entered per thousand messages in that run: without the
//! batched wake-ups every message would cost a set.
//!
//! # Scaling: `mpsc_xproc_p{1,2,4,8}_mmsgs`
//!
//! The MPSC ring with 1, 2, 4 and 8 producer processes, all pinned to
//! CPU 1, the consumer on CPU 0 (`mpsc2_xproc_mmsgs`, issue 5's figure, is
//! the two-producer point of this sweep). This machine has two CPUs, so
//! from two producers on they take turns on one CPU: the sweep shows how
//! throughput degrades under oversubscription (a producer preempted
//! between claiming a cell and publishing it stalls the consumer until it
//! runs again, which the others hasten by yielding: see [`Backoff`]), not
//! a speed-up. `mpsc_xproc_pN_fairness` says how evenly
//! the producers got through: when the consumer has taken half of all
//! messages, the fewest any producer had delivered divided by the most
//! (1 = perfectly even; the median of the runs).
//!
//! `--quick` streams a third as many messages per run as one fifth of the
//! full run, and takes the best of [`QUICK_REPEATS`] runs instead of
//! [`REPEATS`].

use std::os::fd::AsFd;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bytemuck::Pod;
use crossbeam_queue::ArrayQueue;
use latch::Latch;
use latch::channel::{Latches, Stats, spsc};
use nix::sched::{sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use shmem::ring::{
    ByteRecvError, ByteRing, ByteSendError, MpscPopError, MpscPushError, MpscRing, SpscPopError,
    SpscPushError, SpscRing, own_token,
};
use shmem::sync::{AtomicU32, AtomicU64, Ordering, spin_loop};
use shmem::{Layout, Segment};

use super::{BenchOpts, Figure, fork_pinned, pin_to_cpu, reap};

/// Cells (or bytes, times 16) in every ring and queue measured.
pub const RING_CAPACITY: usize = 4096;

/// Runs per figure; the best is reported. The machine is shared and a
/// spinning stream is metastable (a consumer just behind the producer pays
/// two cache-line transfers per refresh of the index, one with a backlog
/// streams), so single runs vary by several times, and the host moves
/// between phases in which every contender streams three to four times
/// faster; the best of ten rounds is what the hardware can do, for every
/// contender alike.
const REPEATS: usize = 10;

/// Runs per figure with `--quick`.
const QUICK_REPEATS: usize = 5;

/// The longest one run should stream (see [`fit_count`]).
fn run_target(opts: &BenchOpts) -> Duration {
    if opts.quick {
        Duration::from_millis(120)
    } else {
        Duration::from_millis(750)
    }
}

/// The messages for each run of `f`: `count`, or fewer (never fewer than
/// `floor`) if a short probe run shows that `count` would stream for
/// longer than `target`. On an idle machine the counts stand; on a loaded
/// one (spinners sharing their CPU with other work run many times slower)
/// this keeps `--quick` within its minute. Rates from different counts
/// compare: each run is long enough (at least the probe's count) for
/// start-up not to matter.
fn fit_count(
    count: u64,
    floor: u64,
    target: Duration,
    f: &dyn Fn(u64) -> Result<Duration, String>,
) -> Result<u64, String> {
    let probe = (count / 20).max(20_000).min(count);
    let took = f(probe)?.as_secs_f64().max(1e-6);
    let fits = (probe as f64 * target.as_secs_f64() / took) as u64;
    Ok(fits.clamp(probe.max(floor.min(count)), count))
}

/// Producer counts of the MPSC scaling sweep.
pub const SWEEP_PRODUCERS: [usize; 4] = [1, 2, 4, 8];

/// The fewest messages each producer of the sweep sends in one run.
const SWEEP_PER_PRODUCER: u64 = 50_000;

/// A consumer that sees no progress for this long gives up.
const STALL: Duration = Duration::from_secs(10);

/// Cells in the ring of the blocking-ends figure.
pub const BLOCKING_CAPACITY: usize = 1024;

/// Bytes per message in the byte-ring figure.
pub const BYTE_MESSAGE: usize = 1024;

/// The wait policy every loop here uses, ours and the baselines' alike,
/// when its queue is empty (consumer) or full (producer): spin for 1, 2,
/// 4, ... up to [`Backoff::MAX_SPINS`] pause instructions without touching
/// the queue, so that a poller does not steal the cache line the other
/// side is about to write on every iteration; once the spins have reached
/// their cap, yield the CPU before every further try.
///
/// The yield matters where producers share a CPU (the MPSC figures): a
/// producer preempted between claiming a cell and publishing it holds up
/// the consumer, and the producer that runs instead finds the ring full.
/// Spinning, it would keep the CPU from the one whose commit it waits for
/// until the scheduler's slice ran out (milliseconds); yielding hands it
/// over. Measured here, two producers on one CPU and 15 million messages:
/// 29-35 million a second spinning, 47-53 yielding. A producer preempted
/// just after its claiming CAS is the common case, not bad luck: that CAS
/// waits for the cell's line from the consumer's CPU, and a timer
/// interrupt that arrives meanwhile is taken when it retires.
pub(crate) struct Backoff(u32);

impl Backoff {
    const MAX_SPINS: u32 = 64;

    pub(crate) fn new() -> Self {
        Self(1)
    }

    pub(crate) fn snooze(&mut self) {
        if self.0 > Self::MAX_SPINS {
            std::thread::yield_now();
            return;
        }
        for _ in 0..self.0 {
            spin_loop();
        }
        self.0 *= 2;
    }

    pub(crate) fn reset(&mut self) {
        self.0 = 1;
    }
}

/// A message type for the typed rings: built from a sequence number, and
/// checked on arrival (`None` if torn).
pub trait Message: Pod + Send + Sync {
    /// The message for `seq`.
    fn make(seq: u64) -> Self;
    /// The sequence number it carries, if intact.
    fn seq(&self) -> Option<u64>;
}

impl Message for u64 {
    fn make(seq: u64) -> Self {
        seq
    }
    fn seq(&self) -> Option<u64> {
        Some(*self)
    }
}

/// A 64-byte message: the sequence number in every word.
impl Message for [u64; 8] {
    fn make(seq: u64) -> Self {
        [seq; 8]
    }
    fn seq(&self) -> Option<u64> {
        self.iter().all(|&w| w == self[0]).then_some(self[0])
    }
}

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    // Messages per run: 6 million per scale unit (pipes and the byte ring
    // far fewer); `--quick` runs a third of one unit, 5 times, so that it
    // stays around 15 seconds even when the spinners share their CPUs.
    let (scale, repeats) = if opts.quick {
        (Scale::Third, QUICK_REPEATS)
    } else {
        (Scale::Times(5), REPEATS)
    };
    let saved =
        sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let figures = measure_all(scale, repeats, run_target(opts));
    // Restore the CLI's own placement for the groups that follow.
    let _ = sched_setaffinity(Pid::from_raw(0), &saved);
    figures
}

/// How many messages a run streams, in scale units.
#[derive(Clone, Copy)]
enum Scale {
    /// A third of a unit (`--quick`).
    Third,
    /// This many units.
    Times(u64),
}

impl Scale {
    fn of(self, unit: u64) -> u64 {
        match self {
            Self::Third => unit / 3,
            Self::Times(n) => unit * n,
        }
    }
}

/// One timed run of a figure: the streaming time, and what the blocking
/// and sweep runs report beside it.
struct Sample {
    elapsed: Duration,
    stats: Option<Stats>,
    fairness: Option<f64>,
}

impl Sample {
    fn timed(elapsed: Duration) -> Self {
        Self {
            elapsed,
            stats: None,
            fairness: None,
        }
    }
}

/// A figure to measure: its name, how many messages each run streams, and
/// the run.
struct Contender<'a> {
    name: String,
    count: u64,
    run: Box<dyn Fn(u64) -> Result<Sample, String> + 'a>,
    samples: Vec<Sample>,
}

impl<'a> Contender<'a> {
    /// Fits `count` to the run target (see [`fit_count`]).
    fn new(
        name: impl Into<String>,
        (count, floor): (u64, u64),
        target: Duration,
        run: impl Fn(u64) -> Result<Sample, String> + 'a,
    ) -> Result<Self, String> {
        let count = fit_count(count, floor, target, &|c| run(c).map(|s| s.elapsed))?;
        Ok(Self {
            name: name.into(),
            count,
            run: Box::new(run),
            samples: Vec::new(),
        })
    }

    fn timed(
        name: &str,
        count: u64,
        target: Duration,
        run: impl Fn(u64) -> Result<Duration, String> + 'a,
    ) -> Result<Self, String> {
        Self::new(name, (count, 0), target, move |c| run(c).map(Sample::timed))
    }

    /// The fastest sample, in millions of messages a second.
    fn best_rate(&self) -> f64 {
        self.samples
            .iter()
            .map(|s| self.count as f64 / s.elapsed.as_secs_f64() / 1e6)
            .fold(0.0, f64::max)
    }

    /// [`best_rate`](Self::best_rate) as this contender's figure.
    fn figure(&self) -> Figure {
        Figure::new(self.name.clone(), self.best_rate(), "mmsgs")
    }

    fn fastest(&self) -> Option<&Sample> {
        self.samples.iter().min_by_key(|s| s.elapsed)
    }
}

/// Where the contender named `name` is in `contenders`.
fn position(contenders: &[Contender], name: &str) -> Result<usize, String> {
    contenders
        .iter()
        .position(|c| c.name == name)
        .ok_or_else(|| format!("ring: no figure {name}"))
}

/// The figures the goals compare, ours then its baseline, in the order each
/// round starts with (see [`measure_all`]).
const PAIRED: [&str; 5] = [
    "spsc_xproc_mmsgs",
    "arrayqueue_spsc_mmsgs",
    "mpsc_xproc_p2_mmsgs",
    "arrayqueue_mpsc2_mmsgs",
    "pipe_xproc_mmsgs",
];

/// Measures every figure in `repeats` rounds, each round running every
/// figure once, ours and the baselines in turn: the host's slow phases
/// (they last from milliseconds to seconds) then fall on all of them alike
/// rather than on whichever figure happened to be running, and each figure
/// is its fastest round. Each round starts with [`PAIRED`], so that a
/// figure and its baseline run back to back and mostly share a phase.
fn measure_all(scale: Scale, repeats: usize, target: Duration) -> Result<Vec<Figure>, String> {
    let typed = scale.of(6_000_000);
    let mut contenders = vec![
        Contender::timed("spsc_xproc_mmsgs", typed, target, spsc_xproc::<u64>)?,
        Contender::timed(
            "spsc64_xproc_mmsgs",
            typed / 2,
            target,
            spsc_xproc::<[u64; 8]>,
        )?,
        Contender::timed("spsc_batch_xproc_mmsgs", typed, target, spsc_batch_xproc)?,
        Contender::new("spsc_blocking_xproc_mmsgs", (typed / 3, 0), target, |c| {
            spsc_blocking_xproc(c).map(|(elapsed, stats)| Sample {
                elapsed,
                stats: Some(stats),
                fairness: None,
            })
        })?,
        Contender::timed(
            "mpsc2_64_xproc_mmsgs",
            typed / 4,
            target,
            mpsc2_xproc::<[u64; 8]>,
        )?,
        Contender::timed(
            "arrayqueue_spsc_mmsgs",
            typed / 2,
            target,
            arrayqueue_spsc::<u64>,
        )?,
        Contender::timed(
            "arrayqueue_mpsc2_mmsgs",
            typed / 2,
            target,
            arrayqueue_mpsc2::<u64>,
        )?,
        Contender::timed(
            "sync_channel_spsc_mmsgs",
            typed / 10,
            target,
            sync_channel_spsc::<u64>,
        )?,
        Contender::timed("pipe_xproc_mmsgs", scale.of(200_000), target, pipe_xproc)?,
        Contender::timed(
            "bytering_xproc_mmsgs",
            scale.of(200_000),
            target,
            bytering_xproc,
        )?,
    ];
    // The MPSC sweep; its two-producer point is issue 5's mpsc2_xproc.
    // Enough messages per producer that the producers sharing CPU 1 take
    // many turns on it (a run shorter than a few scheduler slices would
    // measure one producer streaming alone): each sends at least
    // SWEEP_PER_PRODUCER, however loaded the machine is.
    for producers in SWEEP_PRODUCERS {
        let least = SWEEP_PER_PRODUCER * producers as u64;
        let name = format!("mpsc_xproc_p{producers}_mmsgs");
        contenders.push(Contender::new(
            name,
            ((typed / 2).max(least), least),
            target,
            move |c| {
                mpsc_xproc::<u64>(producers, c).map(|run| Sample {
                    elapsed: run.elapsed,
                    stats: None,
                    fairness: Some(run.fairness),
                })
            },
        )?);
    }
    let paired = PAIRED
        .iter()
        .map(|name| position(&contenders, name))
        .collect::<Result<Vec<_>, _>>()?;
    let rest = (0..contenders.len()).filter(|i| !paired.contains(i));
    let order: Vec<usize> = paired.iter().copied().chain(rest).collect();
    for _ in 0..repeats {
        for &i in &order {
            let contender = &mut contenders[i];
            let sample = (contender.run)(contender.count)?;
            contender.samples.push(sample);
        }
    }

    let get = |name: &str| position(&contenders, name).map(|i| &contenders[i]);
    let figure = |name: &str| get(name).map(Contender::figure);
    let (spsc, blocking, aq_spsc, aq_mpsc, pipe) = (
        figure("spsc_xproc_mmsgs")?,
        figure("spsc_blocking_xproc_mmsgs")?,
        figure("arrayqueue_spsc_mmsgs")?,
        figure("arrayqueue_mpsc2_mmsgs")?,
        figure("pipe_xproc_mmsgs")?,
    );
    let mpsc = Figure::new(
        "mpsc2_xproc_mmsgs",
        get("mpsc_xproc_p2_mmsgs")?.best_rate(),
        "mmsgs",
    );
    let blocking_run = get("spsc_blocking_xproc_mmsgs")?;
    let stats = blocking_run
        .fastest()
        .and_then(|s| s.stats)
        .ok_or("no blocking run")?;
    let per_kmsg = |n: u64| n as f64 * 1000.0 / blocking_run.count as f64;
    let ratios = [
        Figure::ratio(&blocking, &spsc),
        Figure::ratio(&spsc, &aq_spsc),
        Figure::ratio(&mpsc, &aq_mpsc),
        Figure::ratio(&spsc, &pipe),
        Figure::ratio(&mpsc, &pipe),
    ];
    let mut figures = vec![
        spsc,
        figure("spsc64_xproc_mmsgs")?,
        figure("spsc_batch_xproc_mmsgs")?,
        blocking,
        Figure::new("spsc_blocking_sets_per_kmsg", per_kmsg(stats.sets), "sets"),
        Figure::new(
            "spsc_blocking_waits_per_kmsg",
            per_kmsg(stats.waits),
            "waits",
        ),
        mpsc,
        figure("mpsc2_64_xproc_mmsgs")?,
        aq_spsc,
        aq_mpsc,
        figure("sync_channel_spsc_mmsgs")?,
        pipe,
        Figure::new(
            "bytering_xproc_mbps",
            get("bytering_xproc_mmsgs")?.best_rate() * BYTE_MESSAGE as f64,
            "mbps",
        ),
    ];
    for producers in SWEEP_PRODUCERS {
        let sweep = get(&format!("mpsc_xproc_p{producers}_mmsgs"))?;
        let mut fairness: Vec<f64> = sweep.samples.iter().filter_map(|s| s.fairness).collect();
        fairness.sort_by(f64::total_cmp);
        figures.push(sweep.figure());
        figures.push(Figure::new(
            format!("mpsc_xproc_p{producers}_fairness"),
            fairness.get(fairness.len() / 2).copied().unwrap_or(1.0),
            "frac",
        ));
    }
    figures.extend(ratios);
    Ok(figures)
}

/// Kills and reaps children after a failure, then returns the error.
fn abandon<T>(children: &[Pid], error: String) -> Result<T, String> {
    for &c in children {
        let _ = kill(c, Signal::SIGKILL);
        let _ = waitpid(c, None);
    }
    Err(error)
}

/// Startup handshake in the segment: children count themselves ready, the
/// parent says go and starts its clock.
fn handshake_layout(builder: shmem::LayoutBuilder) -> shmem::LayoutBuilder {
    builder
        .region::<AtomicU32>("ready")
        .region::<AtomicU32>("go")
}

fn child_ready_then_wait(segment: &Segment) -> bool {
    let (Ok(ready), Ok(go)) = (
        segment.region::<AtomicU32>("ready"),
        segment.region::<AtomicU32>("go"),
    ) else {
        return false;
    };
    // Release/Acquire: pair with the parent's loads and store, so the ring
    // roles claimed before this are visible to it, and it starts timing
    // only once we are about to run.
    ready.fetch_add(1, Ordering::Release);
    while go.load(Ordering::Acquire) == 0 {
        spin_loop();
    }
    true
}

fn parent_go(segment: &Segment, children: &[Pid]) -> Result<Instant, String> {
    let ready = segment
        .region::<AtomicU32>("ready")
        .map_err(|e| e.to_string())?;
    let go = segment
        .region::<AtomicU32>("go")
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    // Acquire: pairs with the children's Release increments.
    while ready.load(Ordering::Acquire) < children.len() as u32 {
        if started.elapsed() > STALL {
            return abandon(children, "children never became ready".into());
        }
        std::thread::yield_now();
    }
    // Release: pairs with the children's Acquire loads.
    go.store(1, Ordering::Release);
    Ok(Instant::now())
}

/// SPSC across processes, one `try_push`/`try_pop` per message.
pub fn spsc_xproc<T: Message>(count: u64) -> Result<Duration, String> {
    let layout = handshake_layout(Layout::builder().spsc_ring::<T>("ring", RING_CAPACITY))
        .build()
        .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    let ring = SpscRing::<T>::from_segment(&segment, "ring").map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        let Ok(mut tx) = ring.producer(own_token()) else {
            return 2;
        };
        if !child_ready_then_wait(&segment) {
            return 4;
        }
        let mut seq = 0;
        let mut backoff = Backoff::new();
        while seq < count {
            match tx.try_push(T::make(seq)) {
                Ok(()) => {
                    seq += 1;
                    backoff.reset();
                }
                Err(SpscPushError::Full) => backoff.snooze(),
                Err(SpscPushError::Corrupt(_)) => return 3,
            }
        }
        0
    })?;
    let mut rx = ring.consumer(own_token()).map_err(|e| e.to_string())?;
    let started = parent_go(&segment, &[child])?;
    let mut expected = 0;
    let mut idle = 0u32;
    let mut backoff = Backoff::new();
    while expected < count {
        match rx.try_pop() {
            Ok(m) if m.seq() == Some(expected) => {
                expected += 1;
                backoff.reset();
            }
            Ok(m) => {
                return abandon(
                    &[child],
                    format!("spsc: got {:?}, want {expected}", m.seq()),
                );
            }
            Err(SpscPopError::Empty) => {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(1 << 20) && started.elapsed() > STALL {
                    return abandon(&[child], format!("spsc: stalled at {expected}"));
                }
                backoff.snooze();
            }
            Err(e) => return abandon(&[child], e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    reap(child)?;
    Ok(elapsed)
}

/// SPSC across processes with `push_slice`/`pop_slice` of up to 64.
pub fn spsc_batch_xproc(count: u64) -> Result<Duration, String> {
    let layout = handshake_layout(Layout::builder().spsc_ring::<u64>("ring", RING_CAPACITY))
        .build()
        .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    let ring = SpscRing::<u64>::from_segment(&segment, "ring").map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        let Ok(mut tx) = ring.producer(own_token()) else {
            return 2;
        };
        if !child_ready_then_wait(&segment) {
            return 4;
        }
        let mut batch = [0u64; 64];
        let mut seq = 0;
        let mut backoff = Backoff::new();
        while seq < count {
            let n = (count - seq).min(64) as usize;
            for (i, slot) in batch[..n].iter_mut().enumerate() {
                *slot = seq + i as u64;
            }
            match tx.push_slice(&batch[..n]) {
                Ok(0) => backoff.snooze(),
                Ok(pushed) => {
                    seq += pushed as u64;
                    backoff.reset();
                }
                Err(_) => return 3,
            }
        }
        0
    })?;
    let mut rx = ring.consumer(own_token()).map_err(|e| e.to_string())?;
    let started = parent_go(&segment, &[child])?;
    let mut expected = 0;
    let mut out = [0u64; 64];
    let mut backoff = Backoff::new();
    while expected < count {
        match rx.pop_slice(&mut out) {
            Ok(0) => {
                if started.elapsed() > STALL {
                    return abandon(&[child], format!("spsc batch: stalled at {expected}"));
                }
                backoff.snooze();
            }
            Ok(n) => {
                backoff.reset();
                for &v in &out[..n] {
                    if v != expected {
                        return abandon(&[child], format!("spsc batch: got {v}, want {expected}"));
                    }
                    expected += 1;
                }
            }
            Err(e) => return abandon(&[child], e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    reap(child)?;
    Ok(elapsed)
}

/// SPSC across processes through the blocking ends of `latch::channel`
/// (ring of [`BLOCKING_CAPACITY`]), one `send`/`recv` per message: both
/// ends sleep on their latches when the ring is full or empty. Returns the
/// time and the two ends' [`Stats`] added up.
pub fn spsc_blocking_xproc(count: u64) -> Result<(Duration, Stats), String> {
    let layout = handshake_layout(
        Layout::builder()
            .spsc_ring::<u64>("ring", BLOCKING_CAPACITY)
            .region::<Latch>("tx_latch")
            .region::<Latch>("rx_latch")
            .array::<AtomicU64>("tx_stats", 2),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    let ring = SpscRing::<u64>::from_segment(&segment, "ring").map_err(|e| e.to_string())?;
    let region = |name| segment.region::<Latch>(name).map_err(|e| e.to_string());
    let (tx_latch, rx_latch) = (region("tx_latch")?, region("rx_latch")?);
    let tx_stats = segment
        .array::<AtomicU64>("tx_stats")
        .map_err(|e| e.to_string())?;
    rx_latch.own().map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        let Ok(producer) = ring.producer(own_token()) else {
            return 2;
        };
        if tx_latch.own().is_err() {
            return 5;
        }
        let latches = Latches {
            own: tx_latch,
            peer: rx_latch,
        };
        let mut tx = spsc::Sender::new(producer, latches);
        if !child_ready_then_wait(&segment) {
            return 4;
        }
        // One deadline for the run: reading the clock per message would
        // cost more than the message.
        let deadline = Some(Instant::now() + STALL);
        for seq in 0..count {
            if tx.send(seq, deadline).is_err() {
                return 3;
            }
        }
        let stats = tx.stats();
        // Relaxed: the parent reads them after reaping us.
        tx_stats[0].store(stats.sets, Ordering::Relaxed);
        tx_stats[1].store(stats.waits, Ordering::Relaxed);
        0
    })?;
    let consumer = ring.consumer(own_token()).map_err(|e| e.to_string())?;
    let latches = Latches {
        own: rx_latch,
        peer: tx_latch,
    };
    let mut rx = spsc::Receiver::new(consumer, latches);
    let started = parent_go(&segment, &[child])?;
    let deadline = Some(started + STALL);
    for expected in 0..count {
        match rx.recv(deadline) {
            Ok(v) if v == expected => {}
            Ok(v) => return abandon(&[child], format!("spsc blocking: got {v}, want {expected}")),
            Err(e) => {
                return abandon(&[child], format!("spsc blocking: at {expected}: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    reap(child)?;
    let rx_stats = rx.stats();
    // Relaxed: written before the child exited, which waitpid ordered.
    let stats = Stats {
        sets: rx_stats.sets + tx_stats[0].load(Ordering::Relaxed),
        waits: rx_stats.waits + tx_stats[1].load(Ordering::Relaxed),
    };
    Ok((elapsed, stats))
}

/// Checks per-producer order of values `producer << 56 | seq`.
struct ProducerCheck {
    next: Vec<u64>,
}

impl ProducerCheck {
    fn new(producers: usize) -> Self {
        Self {
            next: vec![0; producers],
        }
    }

    fn tag(producer: u64, seq: u64) -> u64 {
        producer << 56 | seq
    }

    fn accept(&mut self, value: u64) -> Result<(), String> {
        let producer = (value >> 56) as usize;
        let seq = value & ((1 << 56) - 1);
        match self.next.get_mut(producer) {
            Some(next) if *next == seq => {
                *next += 1;
                Ok(())
            }
            _ => Err(format!("producers: got {value:#x}, next {:?}", self.next)),
        }
    }

    fn total(&self) -> u64 {
        self.next.iter().sum()
    }

    /// The fewest messages any producer delivered so far over the most.
    fn fairness(&self) -> f64 {
        let most = self.next.iter().copied().max().unwrap_or(0);
        let fewest = self.next.iter().copied().min().unwrap_or(0);
        if most == 0 {
            1.0
        } else {
            fewest as f64 / most as f64
        }
    }
}

/// One run of [`mpsc_xproc`].
pub struct MpscRun {
    /// From "go" to the last message.
    pub elapsed: Duration,
    /// [`ProducerCheck::fairness`] when half the messages had arrived.
    pub fairness: f64,
}

/// MPSC across processes: two producers on CPU 1, the consumer on CPU 0.
pub fn mpsc2_xproc<T: Message>(count: u64) -> Result<Duration, String> {
    mpsc_xproc::<T>(2, count).map(|run| run.elapsed)
}

/// MPSC across processes: `producers` producer processes, all on CPU 1,
/// each sending `count / producers` messages; the consumer on CPU 0.
pub fn mpsc_xproc<T: Message>(producers: usize, count: u64) -> Result<MpscRun, String> {
    if producers == 0 || producers > 255 {
        return Err(format!("{producers} producers: 1 to 255 fit the tag"));
    }
    let layout = handshake_layout(Layout::builder().mpsc_ring::<T>("ring", RING_CAPACITY))
        .build()
        .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    let ring = MpscRing::<T>::from_segment(&segment, "ring").map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let per_producer = count / producers as u64;
    let mut children = Vec::new();
    for k in 0..producers as u64 {
        let segment = &segment;
        let spawned = fork_pinned(1, move || {
            let Ok(mut tx) = ring.producer(own_token()) else {
                return 2;
            };
            if !child_ready_then_wait(segment) {
                return 4;
            }
            let mut seq = 0;
            let mut backoff = Backoff::new();
            while seq < per_producer {
                match tx.try_push(T::make(ProducerCheck::tag(k, seq))) {
                    Ok(()) => {
                        seq += 1;
                        backoff.reset();
                    }
                    Err(MpscPushError::Full) => backoff.snooze(),
                    Err(MpscPushError::Corrupt(_)) => return 3,
                }
            }
            0
        });
        match spawned {
            Ok(pid) => children.push(pid),
            Err(e) => return abandon(&children, e),
        }
    }
    let mut rx = ring.consumer(own_token()).map_err(|e| e.to_string())?;
    let started = parent_go(&segment, &children)?;
    let total = per_producer * producers as u64;
    let mut check = ProducerCheck::new(producers);
    let mut fairness = None;
    let mut idle = 0u32;
    let mut backoff = Backoff::new();
    while check.total() < total {
        match rx.try_pop() {
            Ok(m) => {
                backoff.reset();
                let accepted = m.seq().ok_or_else(|| "mpsc: torn message".to_owned());
                if let Err(e) = accepted.and_then(|v| check.accept(v)) {
                    return abandon(&children, e);
                }
                if fairness.is_none() && check.total() * 2 >= total {
                    fairness = Some(check.fairness());
                }
            }
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => {
                idle = idle.wrapping_add(1);
                if idle.is_multiple_of(1 << 20) && started.elapsed() > STALL {
                    return abandon(&children, format!("mpsc: stalled at {:?}", check.next));
                }
                backoff.snooze();
            }
            Err(e) => return abandon(&children, e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    for c in children {
        reap(c)?;
    }
    Ok(MpscRun {
        elapsed,
        fairness: fairness.unwrap_or(1.0),
    })
}

/// crossbeam's `ArrayQueue` between two threads (producer on CPU 1).
pub fn arrayqueue_spsc<T: Message>(count: u64) -> Result<Duration, String> {
    let queue = ArrayQueue::<T>::new(RING_CAPACITY);
    let barrier = Barrier::new(2);
    pin_to_cpu(0)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = pin_to_cpu(1);
            barrier.wait();
            let mut backoff = Backoff::new();
            for seq in 0..count {
                let mut m = T::make(seq);
                while let Err(back) = queue.push(m) {
                    m = back;
                    backoff.snooze();
                }
                backoff.reset();
            }
        });
        barrier.wait();
        let started = Instant::now();
        let mut expected = 0;
        let mut backoff = Backoff::new();
        while expected < count {
            match queue.pop() {
                Some(m) if m.seq() == Some(expected) => {
                    expected += 1;
                    backoff.reset();
                }
                Some(_) => return Err("arrayqueue: out of order".to_owned()),
                None => backoff.snooze(),
            }
        }
        Ok(started.elapsed())
    })
}

/// crossbeam's `ArrayQueue`, two producer threads on CPU 1, the consumer
/// on CPU 0.
pub fn arrayqueue_mpsc2<T: Message>(count: u64) -> Result<Duration, String> {
    let queue = ArrayQueue::<T>::new(RING_CAPACITY);
    let barrier = Barrier::new(3);
    let per_producer = count / 2;
    pin_to_cpu(0)?;
    std::thread::scope(|s| {
        for k in 0..2u64 {
            let (queue, barrier) = (&queue, &barrier);
            s.spawn(move || {
                let _ = pin_to_cpu(1);
                barrier.wait();
                let mut backoff = Backoff::new();
                for seq in 0..per_producer {
                    let mut m = T::make(ProducerCheck::tag(k, seq));
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
        let mut check = ProducerCheck::new(2);
        let mut backoff = Backoff::new();
        while check.total() < 2 * per_producer {
            match queue.pop() {
                Some(m) => {
                    check.accept(m.seq().ok_or("torn")?)?;
                    backoff.reset();
                }
                None => backoff.snooze(),
            }
        }
        Ok(started.elapsed())
    })
}

/// `std::sync::mpsc::sync_channel` between two threads.
pub fn sync_channel_spsc<T: Message>(count: u64) -> Result<Duration, String> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(RING_CAPACITY);
    let barrier = Arc::new(Barrier::new(2));
    pin_to_cpu(0)?;
    std::thread::scope(|s| {
        let b = barrier.clone();
        s.spawn(move || {
            let _ = pin_to_cpu(1);
            b.wait();
            for seq in 0..count {
                if tx.send(T::make(seq)).is_err() {
                    return;
                }
            }
        });
        barrier.wait();
        let started = Instant::now();
        for expected in 0..count {
            match rx.recv() {
                Ok(m) if m.seq() == Some(expected) => {}
                other => return Err(format!("sync_channel: {:?}", other.map(|m| m.seq()))),
            }
        }
        Ok(started.elapsed())
    })
}

/// A pipe between two processes: one `write` of 8 bytes per message, the
/// reader reading as much as is there.
pub fn pipe_xproc(count: u64) -> Result<Duration, String> {
    let (reader, writer) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let layout = handshake_layout(Layout::builder())
        .build()
        .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        if !child_ready_then_wait(&segment) {
            return 4;
        }
        for seq in 0..count {
            // 8 bytes < PIPE_BUF: each write is atomic and whole.
            match nix::unistd::write(writer.as_fd(), &seq.to_ne_bytes()) {
                Ok(8) => {}
                _ => return 3,
            }
        }
        0
    })?;
    drop(writer);
    let started = parent_go(&segment, &[child])?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let mut expected = 0;
    while expected < count {
        let n = match nix::unistd::read(&reader, &mut buf[have..]) {
            Ok(0) => return abandon(&[child], format!("pipe: closed at {expected}")),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return abandon(&[child], format!("pipe read: {e}")),
        };
        have += n;
        let whole = have / 8 * 8;
        for chunk in buf[..whole].chunks_exact(8) {
            let v = u64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
            if v != expected {
                return abandon(&[child], format!("pipe: got {v}, want {expected}"));
            }
            expected += 1;
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    let elapsed = started.elapsed();
    reap(child)?;
    Ok(elapsed)
}

/// The byte ring across processes, [`BYTE_MESSAGE`]-byte messages.
pub fn bytering_xproc(count: u64) -> Result<Duration, String> {
    let layout = handshake_layout(Layout::builder().byte_ring("mq", 16 * RING_CAPACITY))
        .build()
        .map_err(|e| e.to_string())?;
    let segment = Segment::create(&layout).map_err(|e| e.to_string())?;
    let ring = ByteRing::from_segment(&segment, "mq").map_err(|e| e.to_string())?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        let Ok(mut tx) = ring.sender(own_token()) else {
            return 2;
        };
        if !child_ready_then_wait(&segment) {
            return 4;
        }
        let mut message = [0u8; BYTE_MESSAGE];
        let mut seq = 0u64;
        let mut backoff = Backoff::new();
        while seq < count {
            message[..8].copy_from_slice(&seq.to_le_bytes());
            message[BYTE_MESSAGE - 1] = seq as u8;
            match tx.try_send(&message) {
                Ok(()) => {
                    seq += 1;
                    backoff.reset();
                }
                Err(ByteSendError::Full) => backoff.snooze(),
                Err(_) => return 3,
            }
        }
        0
    })?;
    let mut rx = ring.receiver(own_token()).map_err(|e| e.to_string())?;
    let started = parent_go(&segment, &[child])?;
    let mut expected = 0u64;
    let mut backoff = Backoff::new();
    while expected < count {
        match rx.try_recv() {
            Ok(m) => {
                backoff.reset();
                let intact = m.len() == BYTE_MESSAGE
                    && m[..8] == expected.to_le_bytes()
                    && m[BYTE_MESSAGE - 1] == expected as u8;
                if !intact {
                    return abandon(&[child], format!("bytering: message {expected} wrong"));
                }
                expected += 1;
            }
            Err(ByteRecvError::Empty) => {
                if started.elapsed() > STALL {
                    return abandon(&[child], format!("bytering: stalled at {expected}"));
                }
                backoff.snooze();
            }
            Err(e) => return abandon(&[child], e.to_string()),
        }
    }
    let elapsed = started.elapsed();
    reap(child)?;
    Ok(elapsed)
}
