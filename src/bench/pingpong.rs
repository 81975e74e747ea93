//! Ping-pong round trips between two processes pinned to CPUs 0 and 1:
//! ours, and (with `--features peers`) iceoryx2 0.10's, measured the way
//! iceoryx2's own benchmarks (`benchmarks/publish-subscribe` and
//! `benchmarks/event` in its repository) measure theirs.
//!
//! - `spsc_pingpong_rtt_ns`: a numbered `u64` goes out on one
//!   [`SpscRing`] and comes back on another; both sides busy-poll
//!   `try_pop` (a pause instruction between polls). Always measured.
//! - `iceoryx2_pubsub_rtt_ns` (peers): two publish-subscribe services
//!   (`a2b`, `b2a`) of `ipc::Service`, configured as in iceoryx2's
//!   benchmark (history 0, subscriber buffer 1, safe overflow, one
//!   publisher and one subscriber each); each side loans its next sample
//!   before it waits, busy-polls `receive()` and answers by sending. The
//!   payload is a `u64` carrying the round number (theirs is an untouched
//!   8 KiB slice: zero-copy makes the size irrelevant to the latency, and a
//!   number lets us check every round).
//! - `iceoryx2_event_rtt_ns` (peers): two event services; each side
//!   `notify`s the other and sleeps in `blocking_wait` until notified, as
//!   in iceoryx2's event benchmark. The event id carries the round number
//!   (modulo 100) and is checked.
//! - `latch_pingpong_nospin_rtt_ns` (peers): our blocking latch ping-pong
//!   with the spin turned off, measured again here (the transport of the
//!   `latch` group, timed like iceoryx2's event) so that it sits next to
//!   iceoryx2's event in one run.
//! - `ratio_spsc_pingpong_rtt_vs_iceoryx2_pubsub_rtt` (goal ≤ 0.5) and
//!   `ratio_latch_pingpong_nospin_rtt_vs_iceoryx2_event_rtt` (goal ≤ 1.0),
//!   from issue 10.
//!
//! # Method
//!
//! iceoryx2's benchmarks run both participants as threads of one process,
//! pinned to two cores, and divide the total time by the iterations. Here
//! the participants are two processes (the point of both libraries), each
//! forked from the single-threaded CLI before it creates anything of its
//! own: the CLI never creates an iceoryx2 node, so the groups that fork
//! after this one still fork a clean single-threaded process. Side A (CPU
//! 0) warms up, then plays batches of about 50 µs ([`BATCH`]) for the time
//! budget and reports the median batch's mean round trip (as the `latch`
//! group does with 1 ms batches; the machine is shared, and a poller
//! preempted for a time slice would otherwise dominate a sub-microsecond
//! mean). A blocking round trip is longer than a batch, so there every
//! batch is one round and the figure is the median round. Side B (CPU 1)
//! answers and counts. The budget is played in [`ROUNDS`] slices (200 ms
//! each in a full run, 20 ms with `--quick`), the four figures taking
//! turns, each slice with a fresh pair of processes, and a figure is the
//! median of its slices: the host has phases in which a blocking wake-up
//! costs five times what it costs in others, or our busy-poll round trip
//! four times, and a ratio of two figures measured one after the other
//! could divide one phase by another. A figure is reported only if both
//! exited cleanly, every reply carried the number it should, and B served
//! exactly the rounds A sent.
//!
//! The criterion bench `benches/pingpong.rs` includes this file and times
//! the same ping-pongs with [`Plan::Rounds`]: a fixed number of rounds
//! after the warm-up, timed as one stretch inside side A.

use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use shmem::ring::{SpscPopError, SpscRing, own_token};
use shmem::sync::{AtomicU64, Ordering, spin_loop};
use shmem::{Layout, Segment};

use super::{BenchOpts, Figure, err};

/// Filters besides the group's name that select it.
pub const KEYWORDS: &[&str] = if cfg!(feature = "peers") {
    &["iceoryx2", "peers"]
} else {
    &[]
};

/// A side that sees no progress for this long gives up (its peer died).
const STALL: Duration = Duration::from_secs(10);

/// The ball that tells side B to stop.
const STOP: u64 = u64::MAX;

/// How long one timed batch of rounds should take. Short, because the
/// machine may be shared: a batch either ran while both sides were on
/// their CPUs or contains a preemption (milliseconds), and with batches
/// much shorter than a time slice the clean ones are most of them, so the
/// median is a round trip and not a scheduler figure.
const BATCH: Duration = Duration::from_micros(50);

/// Cells in each SPSC ring (one ball is in flight at a time).
const PINGPONG_CAPACITY: usize = 64;

/// Slots of the [`OUTCOME`] array in the bench segment.
const SENT: usize = 0;
const SERVED: usize = 1;
const RTT_BITS: usize = 2;
/// Side B's handshake steps (see the iceoryx2 sides).
#[cfg(feature = "peers")]
const STEP: usize = 3;
const OUTCOME: &str = "outcome";

/// How side A measures.
#[derive(Clone, Copy, Debug)]
pub enum Plan {
    /// Batches of about [`BATCH`] for this long; the median batch's
    /// mean round trip.
    Budget(Duration),
    /// Exactly this many rounds (at least 1), timed as one stretch; their
    /// mean round trip.
    #[allow(dead_code, reason = "only benches/pingpong.rs plays fixed rounds")]
    Rounds(u64),
}

/// Slices of each figure's budget, the figures taking turns (see
/// "Method").
const ROUNDS: u32 = 10;

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let budget = opts.budget();
    let plan = Plan::Budget(budget / ROUNDS);
    #[cfg_attr(not(feature = "peers"), allow(unused_mut))]
    let mut measures: Vec<(&str, Measure)> = vec![("spsc_pingpong_rtt_ns", spsc_pingpong_rtt_ns)];
    #[cfg(feature = "peers")]
    measures.extend([
        ("iceoryx2_pubsub_rtt_ns", peers::pubsub_rtt_ns as Measure),
        ("latch_pingpong_nospin_rtt_ns", latch_nospin_rtt_ns),
        ("iceoryx2_event_rtt_ns", peers::event_rtt_ns),
    ]);
    let mut slices = vec![Vec::new(); measures.len()];
    for _ in 0..ROUNDS {
        for ((_, measure), values) in measures.iter().zip(&mut slices) {
            values.push(measure(plan)?);
        }
    }
    let mut figures: Vec<Figure> = measures
        .iter()
        .zip(slices)
        .map(|((name, _), mut values)| {
            values.sort_by(f64::total_cmp);
            Figure::new(*name, values[values.len() / 2], "ns")
        })
        .collect();
    if let [spsc, pubsub, latch_nospin, event] = &figures[..] {
        // Goals (issue 10): <= 0.5 and <= 1.0.
        let ratios = [
            Figure::ratio(spsc, pubsub),
            Figure::ratio(latch_nospin, event),
        ];
        figures.extend(ratios);
    }
    Ok(figures)
}

/// One figure's measurement: a round trip in ns.
type Measure = fn(Plan) -> Result<f64, String>;

/// Our SPSC ring ping-pong: see the module docs.
pub fn spsc_pingpong_rtt_ns(plan: Plan) -> Result<f64, String> {
    let layout = Layout::builder()
        .spsc_ring::<u64>("down", PINGPONG_CAPACITY)
        .spsc_ring::<u64>("up", PINGPONG_CAPACITY)
        .array::<AtomicU64>(OUTCOME, 4)
        .build()
        .map_err(err)?;
    let segment = Segment::create(&layout).map_err(err)?;
    let down = SpscRing::<u64>::from_segment(&segment, "down").map_err(err)?;
    let up = SpscRing::<u64>::from_segment(&segment, "up").map_err(err)?;
    two_process_rtt(
        &segment,
        || {
            let mut tx = down.producer(own_token()).map_err(err)?;
            let mut rx = up.consumer(own_token()).map_err(err)?;
            let measured = measure_rounds(plan, |ball| {
                tx.try_push(ball).map_err(err)?;
                let back = poll(|| match rx.try_pop() {
                    Ok(v) => Ok(Some(v)),
                    Err(SpscPopError::Empty) => Ok(None),
                    Err(e) => Err(e.to_string()),
                })?;
                if back != ball {
                    return Err(format!("spsc ping-pong: got {back}, wanted {ball}"));
                }
                Ok(())
            })?;
            tx.try_push(STOP).map_err(err)?;
            Ok(measured)
        },
        || {
            let mut rx = down.consumer(own_token()).map_err(err)?;
            let mut tx = up.producer(own_token()).map_err(err)?;
            let mut served = 0u64;
            loop {
                let ball = poll(|| match rx.try_pop() {
                    Ok(v) => Ok(Some(v)),
                    Err(SpscPopError::Empty) => Ok(None),
                    Err(e) => Err(e.to_string()),
                })?;
                if ball == STOP {
                    return Ok(served);
                }
                if ball != served {
                    return Err(format!("spsc ping-pong: got {ball}, wanted {served}"));
                }
                tx.try_push(ball).map_err(err)?;
                served += 1;
            }
        },
    )
}

/// Our blocking latch ping-pong with the spin off: the `latch` group's
/// transport and forked child (which check every ball and the count), timed
/// by [`measure_rounds`] like iceoryx2's event beside it, so that both
/// figures come from the same estimator.
#[cfg(feature = "peers")]
pub fn latch_nospin_rtt_ns(plan: Plan) -> Result<f64, String> {
    use super::latch::{Placement, Session, Transport};
    let transport = Transport::latch(latch::WaitOptions::no_spin())?;
    let mut session = Session::start(transport, Placement::Apart)?;
    let measured = measure_rounds(plan, |_| session.rounds(1).map(drop))?;
    session.finish()?;
    Ok(measured.rtt_ns)
}

/// What side A measured: the median batch's mean round trip, and how many
/// rounds it sent in all (warm-up included).
struct Measured {
    rtt_ns: f64,
    sent: u64,
}

/// Plays `round(0)`, `round(1)`, ...: 200 rounds of warm-up, then what
/// `plan` says: batches of about [`BATCH`] until the budget has passed
/// and at least five batches ran (the median batch's mean round trip), or
/// a fixed number of rounds (their mean).
fn measure_rounds(
    plan: Plan,
    mut round: impl FnMut(u64) -> Result<(), String>,
) -> Result<Measured, String> {
    let mut sent = 0u64;
    let mut rounds = |n: u64| -> Result<Duration, String> {
        let start = Instant::now();
        for _ in 0..n {
            round(sent)?;
            sent += 1;
        }
        Ok(start.elapsed())
    };
    rounds(200)?;
    let budget = match plan {
        Plan::Budget(budget) => budget,
        Plan::Rounds(n) => {
            let n = n.max(1);
            let took = rounds(n)?;
            return Ok(Measured {
                rtt_ns: took.as_nanos() as f64 / n as f64,
                sent,
            });
        }
    };
    let probe = rounds(16)?.as_nanos().max(16) as u64 / 16;
    let batch = (BATCH.as_nanos() as u64 / probe).clamp(1, 1 << 16);
    let (mut total, mut means) = (Duration::ZERO, Vec::new());
    while total < budget || means.len() < 5 {
        let took = rounds(batch)?;
        total += took;
        means.push(took.as_nanos() as f64 / batch as f64);
    }
    means.sort_by(f64::total_cmp);
    Ok(Measured {
        rtt_ns: means[means.len() / 2],
        sent,
    })
}

/// Busy-polls `ready` (a pause instruction between polls) until it gives a
/// value; gives up after [`STALL`], reading the clock only every 4096 polls.
fn poll<T>(mut ready: impl FnMut() -> Result<Option<T>, String>) -> Result<T, String> {
    let mut deadline = None;
    loop {
        for _ in 0..4096 {
            if let Some(v) = ready()? {
                return Ok(v);
            }
            spin_loop();
        }
        let now = Instant::now();
        if now > *deadline.get_or_insert(now + STALL) {
            return Err("ping-pong: the other side stalled".into());
        }
    }
}

/// Runs `side_a` in a child pinned to CPU 0 and `side_b` in a child pinned
/// to CPU 1, both forked from this (single-threaded) process; reaps both
/// and checks that B served every round A sent. `segment` must hold the
/// [`OUTCOME`] array.
fn two_process_rtt(
    segment: &Segment,
    side_a: impl FnOnce() -> Result<Measured, String>,
    side_b: impl FnOnce() -> Result<u64, String>,
) -> Result<f64, String> {
    let outcome = segment.array::<AtomicU64>(OUTCOME).map_err(err)?;
    let saved = sched_getaffinity(Pid::from_raw(0)).map_err(err)?;
    let a = fork_side(0, || {
        let m = side_a()?;
        // Relaxed: the parent reads these after reaping us.
        outcome[RTT_BITS].store(m.rtt_ns.to_bits(), Ordering::Relaxed);
        outcome[SENT].store(m.sent, Ordering::Relaxed);
        Ok(())
    })?;
    let b = match fork_side(1, || {
        let served = side_b()?;
        // Relaxed: as above.
        outcome[SERVED].store(served, Ordering::Relaxed);
        Ok(())
    }) {
        Ok(b) => b,
        Err(e) => {
            let _ = kill(a, Signal::SIGKILL);
            let _ = waitpid(a, None);
            return Err(e);
        }
    };
    let result = reap_both(a, b);
    let _ = sched_setaffinity(Pid::from_raw(0), &saved);
    result?;
    // Relaxed: written before the children exited, which waitpid ordered.
    let (sent, served) = (
        outcome[SENT].load(Ordering::Relaxed),
        outcome[SERVED].load(Ordering::Relaxed),
    );
    if sent == 0 || sent != served {
        return Err(format!("side A sent {sent} rounds, side B served {served}"));
    }
    Ok(f64::from_bits(outcome[RTT_BITS].load(Ordering::Relaxed)))
}

/// Forks a child pinned to `cpu` that runs `body`, dies with this process,
/// and leaves through `_exit` (0 on success).
fn fork_side(cpu: usize, body: impl FnOnce() -> Result<(), String>) -> Result<Pid, String> {
    let parent = getpid();
    // SAFETY: the CLI process is single-threaded here (groups run one after
    // another and join their threads), so the child is a complete copy; it
    // never returns into the bench.
    match unsafe { fork() }.map_err(err)? {
        ForkResult::Child => {
            let orphan =
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent;
            let mut set = CpuSet::new();
            let pinned = set.set(cpu).is_ok() && sched_setaffinity(Pid::from_raw(0), &set).is_ok();
            if !pinned {
                eprintln!("pingpong bench: cannot pin a side to CPU {cpu}");
            }
            let ok = !orphan
                && pinned
                && body()
                    .inspect_err(|e| eprintln!("pingpong bench, side on CPU {cpu}: {e}"))
                    .is_ok();
            // SAFETY: ends the child without running the parent's
            // destructors or atexit handlers; `body` dropped its own state.
            unsafe { nix::libc::_exit(if ok { 0 } else { 1 }) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Waits for both sides; if one fails, kills the other (which may be
/// blocked waiting for it). Polls every 10 ms so that the bench process
/// barely disturbs the two CPUs.
fn reap_both(a: Pid, b: Pid) -> Result<(), String> {
    let deadline = Instant::now() + STALL * 6;
    let mut pending = vec![(a, "A"), (b, "B")];
    let mut failure = None;
    while !pending.is_empty() {
        let mut i = 0;
        while i < pending.len() {
            let (pid, side) = pending[i];
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => i += 1,
                Ok(WaitStatus::Exited(_, 0)) => {
                    pending.swap_remove(i);
                }
                other => {
                    failure.get_or_insert(format!("side {side} ended with {other:?}"));
                    pending.swap_remove(i);
                }
            }
        }
        if failure.is_some() || Instant::now() > deadline {
            for &(pid, _) in &pending {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            return Err(failure.unwrap_or_else(|| "the ping-pong did not finish".into()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    failure.map_or(Ok(()), Err)
}

/// iceoryx2 0.10 as the peer (`--features peers`).
#[cfg(feature = "peers")]
pub mod peers {
    use std::time::Instant;

    use iceoryx2::prelude::*;
    use shmem::sync::{AtomicU64, Ordering, spin_loop};
    use shmem::{Layout, Segment};

    use super::{
        Measured, OUTCOME, Plan, STALL, STEP, STOP, measure_rounds, poll, two_process_rtt,
    };

    /// Event ids carry `1 + round % ROUND_IDS`; 0 means stop.
    const ROUND_IDS: u64 = 100;

    /// iceoryx2's benchmark default for `event_id_max_value`.
    const EVENT_ID_MAX: usize = 128;

    /// Side B's handshake: A created the services (B may open them).
    const CREATED: u64 = 1;
    /// Side B's handshake: B's ports exist (A may send).
    const CONNECTED: u64 = 2;

    fn err(e: impl std::fmt::Debug) -> String {
        format!("iceoryx2: {e:?}")
    }

    /// A segment with the outcome array (the handshake lives in it).
    fn segment() -> Result<Segment, String> {
        let layout = Layout::builder()
            .array::<AtomicU64>(OUTCOME, 4)
            .build()
            .map_err(super::err)?;
        Segment::create(&layout).map_err(super::err)
    }

    /// Service names unique to this bench process.
    fn names() -> Result<(ServiceName, ServiceName), String> {
        let pid = std::process::id();
        Ok((
            ServiceName::new(&format!("postmaster-bench-{pid}/a2b")).map_err(err)?,
            ServiceName::new(&format!("postmaster-bench-{pid}/b2a")).map_err(err)?,
        ))
    }

    /// A node that leaves signals to us (the bench kills a stuck side).
    fn node() -> Result<Node<ipc::Service>, String> {
        set_log_level(LogLevel::Error);
        NodeBuilder::new()
            .signal_handling_mode(SignalHandlingMode::Disabled)
            .create::<ipc::Service>()
            .map_err(err)
    }

    /// Sets B's handshake step (Release: pairs with `await_step`'s Acquire,
    /// so what the setter created before is there for the other side).
    fn set_step(step: &AtomicU64, value: u64) {
        step.store(value, Ordering::Release);
    }

    /// Spins (politely: these are set-up steps) until `step` reaches `value`.
    fn await_step(step: &AtomicU64, value: u64) -> Result<(), String> {
        let deadline = Instant::now() + STALL;
        // Acquire: pairs with set_step.
        while step.load(Ordering::Acquire) < value {
            if Instant::now() > deadline {
                return Err(format!("the other side never reached step {value}"));
            }
            for _ in 0..64 {
                spin_loop();
            }
            std::thread::yield_now();
        }
        Ok(())
    }

    /// Publish-subscribe ping-pong, busy-polling (see the module docs).
    pub fn pubsub_rtt_ns(plan: Plan) -> Result<f64, String> {
        let segment = segment()?;
        let step = &segment.array::<AtomicU64>(OUTCOME).map_err(super::err)?[STEP];
        let (a2b, b2a) = names()?;
        let (a2b, b2a) = (&a2b, &b2a);
        let service = |node: &Node<ipc::Service>, name: &ServiceName| {
            // As in iceoryx2's publish-subscribe benchmark.
            node.service_builder(name)
                .publish_subscribe::<u64>()
                .max_publishers(1)
                .max_subscribers(1)
                .history_size(0)
                .subscriber_max_buffer_size(1)
                .enable_safe_overflow(true)
                .create()
                .map_err(err)
        };
        two_process_rtt(
            &segment,
            || {
                let node = node()?;
                let (to_b, from_b) = (service(&node, a2b)?, service(&node, b2a)?);
                let publisher = to_b.publisher_builder().create().map_err(err)?;
                let subscriber = from_b.subscriber_builder().create().map_err(err)?;
                set_step(step, CREATED);
                await_step(step, CONNECTED)?;
                let mut next = Some(publisher.loan_uninit().map_err(err)?);
                let mut round = |ball: u64| -> Result<(), String> {
                    let sample = next.take().ok_or("no loaned sample")?;
                    if sample.write_payload(ball).send().map_err(err)? != 1 {
                        return Err("pubsub: the sample reached no subscriber".into());
                    }
                    // Loan the next one before waiting, as iceoryx2's
                    // benchmark does.
                    next = Some(publisher.loan_uninit().map_err(err)?);
                    let back = poll(|| {
                        Ok(subscriber
                            .receive()
                            .map_err(err)?
                            .map(|sample| *sample.payload()))
                    })?;
                    if back != ball {
                        return Err(format!("pubsub: got {back}, wanted {ball}"));
                    }
                    Ok(())
                };
                let measured = measure_rounds(plan, &mut round)?;
                let stop = next.take().ok_or("no loaned sample")?;
                stop.write_payload(STOP).send().map_err(err)?;
                Ok(measured)
            },
            || {
                await_step(step, CREATED)?;
                let node = node()?;
                let open = |name| {
                    node.service_builder(name)
                        .publish_subscribe::<u64>()
                        .open()
                        .map_err(err)
                };
                let (from_a, to_a) = (open(a2b)?, open(b2a)?);
                let publisher = to_a.publisher_builder().create().map_err(err)?;
                let subscriber = from_a.subscriber_builder().create().map_err(err)?;
                set_step(step, CONNECTED);
                let mut served = 0u64;
                loop {
                    let sample = publisher.loan_uninit().map_err(err)?;
                    let ball = poll(|| {
                        Ok(subscriber
                            .receive()
                            .map_err(err)?
                            .map(|sample| *sample.payload()))
                    })?;
                    if ball == STOP {
                        return Ok(served);
                    }
                    if ball != served {
                        return Err(format!("pubsub: got {ball}, wanted {served}"));
                    }
                    if sample.write_payload(ball).send().map_err(err)? != 1 {
                        return Err("pubsub: the answer reached no subscriber".into());
                    }
                    served += 1;
                }
            },
        )
    }

    /// The event id that carries round `ball`.
    fn id_of(ball: u64) -> usize {
        if ball == STOP {
            0
        } else {
            1 + (ball % ROUND_IDS) as usize
        }
    }

    /// Sleeps in `blocking_wait` until notified; the one id that arrived.
    fn wait_one(
        listener: &iceoryx2::port::listener::Listener<ipc::Service>,
    ) -> Result<usize, String> {
        loop {
            let mut ids = [None; 2];
            let mut seen = 0;
            let n = listener
                .blocking_wait(|activation| {
                    if seen < ids.len() {
                        ids[seen] = Some(activation.id.as_value());
                    }
                    seen += 1;
                })
                .map_err(err)?;
            match (n, seen, ids[0]) {
                (0, 0, _) => continue,
                (_, 1, Some(id)) => return Ok(id),
                _ => return Err(format!("event: {n} notifications, ids {ids:?}")),
            }
        }
    }

    /// Event ping-pong, blocking (see the module docs).
    pub fn event_rtt_ns(plan: Plan) -> Result<f64, String> {
        let segment = segment()?;
        let step = &segment.array::<AtomicU64>(OUTCOME).map_err(super::err)?[STEP];
        let (a2b, b2a) = names()?;
        let (a2b, b2a) = (&a2b, &b2a);
        let service = |node: &Node<ipc::Service>, name: &ServiceName| {
            // As in iceoryx2's event benchmark; the notifier life-cycle
            // events are off so that only the rounds' ids arrive.
            node.service_builder(name)
                .event()
                .max_notifiers(1)
                .max_listeners(1)
                .event_id_max_value(EVENT_ID_MAX)
                .disable_notifier_created_event()
                .disable_notifier_dropped_event()
                .disable_notifier_dead_event()
                .create()
                .map_err(err)
        };
        let notify =
            |notifier: &iceoryx2::port::notifier::Notifier<ipc::Service>, ball| match notifier
                .notify_with_custom_event_id(EventId::new(id_of(ball)))
            {
                Ok(1) => Ok(()),
                other => Err(format!("event: notify reached {other:?} listeners")),
            };
        two_process_rtt(
            &segment,
            || {
                let node = node()?;
                let (to_b, from_b) = (service(&node, a2b)?, service(&node, b2a)?);
                let notifier = to_b.notifier_builder().create().map_err(err)?;
                let listener = from_b.listener_builder().create().map_err(err)?;
                set_step(step, CREATED);
                await_step(step, CONNECTED)?;
                let measured = measure_rounds(plan, |ball| {
                    notify(&notifier, ball)?;
                    let back = wait_one(&listener)?;
                    if back != id_of(ball) {
                        return Err(format!("event: got id {back}, wanted {}", id_of(ball)));
                    }
                    Ok(())
                })?;
                notify(&notifier, STOP)?;
                Ok::<Measured, String>(measured)
            },
            || {
                await_step(step, CREATED)?;
                let node = node()?;
                let open = |name| node.service_builder(name).event().open().map_err(err);
                let (from_a, to_a) = (open(a2b)?, open(b2a)?);
                let notifier = to_a.notifier_builder().create().map_err(err)?;
                let listener = from_a.listener_builder().create().map_err(err)?;
                set_step(step, CONNECTED);
                let mut served = 0u64;
                loop {
                    let id = wait_one(&listener)?;
                    if id == id_of(STOP) {
                        return Ok(served);
                    }
                    if id != id_of(served) {
                        return Err(format!("event: got id {id}, wanted {}", id_of(served)));
                    }
                    notify(&notifier, served)?;
                    served += 1;
                }
            },
        )
    }
}
