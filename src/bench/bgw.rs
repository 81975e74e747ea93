//! Postmaster figures: how fast a dynamic worker starts, how many workers
//! the loop launches per second, and how long a crash of one shared-memory
//! worker takes to turn into every worker running again on a fresh segment.
//!
//! Each scenario runs a real postmaster in a process forked from the bench
//! (the CLI process is single-threaded, as [`Postmaster::run`] demands),
//! on a named segment `bench-bgw-<pid>-<scenario>` that the bench attaches
//! to. The workers write what they saw into the [`Board`], an application
//! region of that segment, stamping times against one monotonic epoch taken
//! before the first fork (every process inherits the same `Instant`, and
//! `CLOCK_MONOTONIC` is system-wide). The bench only polls the board, so
//! its own polling granularity never enters a figure.
//!
//! Whatever happens, the postmaster is shut down (SIGINT, then SIGQUIT,
//! then SIGKILL), reaped, and its segment name removed.
//!
//! # Scaling: `worker_start_w{16,64,256}_us`
//!
//! The dynamic start of `worker_start_us` again, while 16, 64 or 256 other
//! static workers are registered and running (asleep on their latches;
//! `max_workers` is raised to fit them, the registrant and the probe). It
//! shows what the postmaster's per-iteration work over all its workers
//! costs a start. On this two-CPU machine 256 processes are far more than
//! the CPUs: the figure measures how the start degrades with a crowded
//! process table and slot array, not parallelism. `--quick` plays fewer
//! rounds ([`QUICK_SCALING_ROUNDS`]).

use std::time::{Duration, Instant};

use bgw::{
    Postmaster, PostmasterError, Restart, SharedConfig, WorkerContext, WorkerExit, WorkerResult,
    WorkerSpec,
};
use latch::Wake;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use shmem::{Layout, LayoutBuilder, Segment, ShmSafe};

use super::{BenchOpts, Figure};

/// Region name of the [`Board`].
const BOARD: &str = "bench.bgw.board";

/// The most workers in one scenario (the fork storm and the largest reset).
const MAX_WORKERS: usize = 64;

/// The most dynamic-start rounds one run records.
const MAX_ROUNDS: usize = 256;

/// Idle workers beside the dynamic starts of the scaling figures.
const SCALING_IDLE_WORKERS: [usize; 3] = [16, 64, 256];

/// Dynamic-start rounds per scaling figure with `--quick`.
const QUICK_SCALING_ROUNDS: usize = 30;

/// How long any awaited condition may take before the bench gives up.
const DEADLINE: Duration = Duration::from_secs(10);

/// How long the bench sleeps between looks at the board. The figures come
/// from the workers' own time stamps, so this only bounds the bench's own
/// CPU use (it shares two CPUs with the postmaster and the workers).
const POLL: Duration = Duration::from_micros(200);

/// One worker's report in the reset scenario: written by the worker when it
/// starts, read by the bench.
#[repr(C)]
struct BoardEntry {
    /// The segment generation the worker saw at start; 0 = not started in
    /// this generation (a reset zeroes it). Written last, with Release.
    generation: AtomicU64,
    /// When the worker's entry point began, in ns since the bench's epoch.
    started_ns: AtomicU64,
    /// The worker's pid.
    pid: AtomicU32,
    _pad: u32,
}

/// What the workers report. All-zero is "nothing reported yet", which is
/// also what a segment reset leaves behind.
#[repr(C, align(128))]
struct Board {
    /// Fork storm: workers that ran so far (each adds 1 after writing its
    /// `bump_ns` entry).
    bumps: AtomicU32,
    /// Dynamic start: 1 + the round the probe worker last reported.
    probe_round: AtomicU32,
    /// Dynamic start: when the probe of `probe_round` began, in ns since
    /// the epoch. Written before `probe_round`.
    probe_started_ns: AtomicU64,
    /// Dynamic start: rounds the registrant finished; set once, at the end,
    /// after every sample.
    rounds_done: AtomicU32,
    /// Dynamic start: 1 + the round at which the registrant gave up.
    failed_round: AtomicU32,
    /// Scaling: idle workers that started (each adds 1, then sleeps).
    idle_started: AtomicU32,
    /// Dynamic start, per round: register → the probe's entry point ran.
    start_ns: [AtomicU64; MAX_ROUNDS],
    /// Dynamic start, per round: register → `wait_started` returned.
    handle_ns: [AtomicU64; MAX_ROUNDS],
    /// Dynamic start, per round: `terminate` → `wait_stopped` returned.
    stop_ns: [AtomicU64; MAX_ROUNDS],
    /// Fork storm, per worker: when its entry point began.
    bump_ns: [AtomicU64; MAX_WORKERS],
    /// Reset scenario, per worker.
    entries: [BoardEntry; MAX_WORKERS],
}

// SAFETY: repr(C) of atomic integers and a plain u32: every bit pattern
// (all-zero included) is valid, there are no pointers, and every shared
// mutation goes through an atomic.
unsafe impl ShmSafe for Board {}

const _: () = assert!(size_of::<BoardEntry>() == 24 && align_of::<BoardEntry>() == 8);
const _: () = assert!(align_of::<Board>() == 128);

/// Adds the board to a layout; the postmaster and the bench use the same.
fn add_board(builder: LayoutBuilder) -> LayoutBuilder {
    builder.region::<Board>(BOARD)
}

/// Nanoseconds since `epoch`, never 0 (0 means "not written").
fn since(epoch: Instant) -> u64 {
    (epoch.elapsed().as_nanos() as u64).max(1)
}

fn board_of(ctx: &WorkerContext<'_>) -> Result<&'static Board, Box<dyn std::error::Error>> {
    let segment = ctx
        .segment()
        .ok_or("bench workers need shared-memory access")?;
    Ok(segment.region::<Board>(BOARD)?)
}

/// The worker's argument as an index.
fn arg_index(ctx: &WorkerContext<'_>) -> Result<usize, Box<dyn std::error::Error>> {
    let bytes: [u8; 4] = ctx
        .arg()
        .try_into()
        .map_err(|_| "the argument is not a u32")?;
    Ok(u32::from_le_bytes(bytes) as usize)
}

/// The usual worker loop with no work in it: sleep on the latch until
/// SIGTERM (SIGQUIT ends the process from its handler).
fn sleep_until_stopped(ctx: &WorkerContext<'_>) -> WorkerResult {
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        if ctx.wait(None) == Wake::PostmasterDied {
            return Ok(WorkerExit::Restart);
        }
    }
}

// ---------------------------------------------------------------------------
// The postmaster process.

/// A postmaster running in a forked child, and the bench's mapping of its
/// segment. Dropping it shuts the postmaster down however things went.
struct PostmasterProcess {
    pid: Pid,
    name: String,
    /// `None` until attached, and once the postmaster exited.
    segment: Option<Segment>,
    reaped: bool,
}

impl PostmasterProcess {
    /// Forks a postmaster with up to `max_workers` workers and the board
    /// region; `setup` adds its entries and static workers (it runs in the
    /// child). Returns once the bench has attached to the segment.
    fn start(
        scenario: &str,
        max_workers: u32,
        setup: impl FnOnce(&mut Postmaster) -> Result<(), PostmasterError>,
    ) -> Result<Self, String> {
        let name = format!("bench-bgw-{}-{scenario}", std::process::id());
        // Left over from a killed bench that had our pid: remove it (this
        // refuses if its creator is alive).
        let _ = Segment::remove_stale(&name);
        let bench_pid = getpid();
        // SAFETY: the CLI process is single-threaded here (the groups run one
        // after another and join their threads), so the child is a complete
        // copy; it never returns into the bench (it exits below).
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                let code = run_postmaster(bench_pid, &name, max_workers, setup);
                std::process::exit(code)
            }
            ForkResult::Parent { child } => {
                let mut pm = PostmasterProcess {
                    pid: child,
                    name,
                    segment: None,
                    reaped: false,
                };
                pm.segment = Some(pm.attach(max_workers)?);
                Ok(pm)
            }
        }
    }

    /// Attaches to the segment as soon as the postmaster has created it.
    fn attach(&mut self, max_workers: u32) -> Result<Segment, String> {
        let layout = layout(max_workers)?;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let error = match Segment::attach(&self.name, &layout) {
                Ok(segment) => return Ok(segment),
                Err(e) => e,
            };
            if let Some(code) = self.try_reap()? {
                return Err(format!(
                    "the postmaster exited with {code} before the bench could attach"
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("cannot attach to {}: {error}", self.name));
            }
            std::thread::sleep(POLL);
        }
    }

    fn segment(&self) -> &Segment {
        self.segment.as_ref().expect("attached in start")
    }

    fn board(&self) -> Result<&Board, String> {
        self.segment()
            .region::<Board>(BOARD)
            .map_err(|e| e.to_string())
    }

    /// Reaps the postmaster if it exited; its exit code (or 128 + signal).
    fn try_reap(&mut self) -> Result<Option<i32>, String> {
        if self.reaped {
            return Ok(Some(-1));
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                self.reaped = true;
                Ok(Some(code))
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                self.reaped = true;
                Ok(Some(128 + signal as i32))
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(None),
            Err(e) => Err(format!("waitpid(postmaster): {e}")),
        }
    }

    /// Sends `signal` and waits up to `within` for the postmaster to exit.
    fn signal_and_wait(&mut self, signal: Signal, within: Duration) -> Option<i32> {
        let _ = kill(self.pid, signal);
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            match self.try_reap() {
                Ok(Some(code)) => return Some(code),
                Ok(None) => std::thread::sleep(POLL),
                Err(_) => return None,
            }
        }
        None
    }

    /// Fast shutdown; the postmaster's exit code.
    fn stop(mut self) -> Result<i32, String> {
        self.signal_and_wait(Signal::SIGINT, DEADLINE)
            .ok_or_else(|| "the postmaster did not exit after SIGINT".to_owned())
    }
}

impl Drop for PostmasterProcess {
    fn drop(&mut self) {
        if !self.reaped
            && self
                .signal_and_wait(Signal::SIGQUIT, Duration::from_secs(5))
                .is_none()
        {
            // Its workers follow it through their death signal.
            let _ = kill(self.pid, Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
            self.reaped = true;
        }
        self.segment = None;
        // A postmaster that exited removed its segment; one that was killed
        // left it behind.
        let _ = Segment::remove_stale(&self.name);
    }
}

/// The sizes of the postmaster's regions when built with
/// `.max_workers(max_workers)` and defaults otherwise.
fn shared_config(max_workers: u32) -> SharedConfig {
    SharedConfig {
        max_workers,
        ..SharedConfig::default()
    }
}

/// The layout the postmaster builds for `max_workers` (its regions, then
/// the board).
fn layout(max_workers: u32) -> Result<Layout, String> {
    add_board(shared_config(max_workers).declare(Layout::builder()))
        .build()
        .map_err(|e| e.to_string())
}

/// The forked child's life: build, set up and run a postmaster; its exit
/// code.
fn run_postmaster(
    bench_pid: Pid,
    name: &str,
    max_workers: u32,
    setup: impl FnOnce(&mut Postmaster) -> Result<(), PostmasterError>,
) -> i32 {
    // If the bench dies, take the postmaster down too (immediate shutdown),
    // so no workers outlive it; check the parent after arming, in case it
    // died before.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).is_err() || getppid() != bench_pid {
        return 98;
    }
    let mut pm = Postmaster::builder()
        .segment_name(name)
        .max_workers(max_workers)
        .log(false)
        .regions(add_board)
        .build();
    if let Err(e) = setup(&mut pm) {
        eprintln!("bench postmaster: {e}");
        return 97;
    }
    match pm.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench postmaster: {e}");
            99
        }
    }
}

/// Polls `done` until it gives a value, the postmaster exits, or the
/// deadline passes.
fn wait_for<T>(
    pm: &mut PostmasterProcess,
    what: &str,
    mut done: impl FnMut(&Board) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = done(pm.board()?)? {
            return Ok(value);
        }
        if let Some(code) = pm.try_reap()? {
            return Err(format!(
                "the postmaster exited with {code} while waiting for {what}"
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("timed out after {DEADLINE:?} waiting for {what}"));
        }
        std::thread::sleep(POLL);
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

// ---------------------------------------------------------------------------
// Scenarios.

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let epoch = Instant::now();
    let mut figures = worker_start(opts, epoch, 0)?;
    for idle in SCALING_IDLE_WORKERS {
        figures.extend(worker_start(opts, epoch, idle)?);
    }
    figures.extend(fork_rate(opts, epoch)?);
    figures.extend(reinit(opts, epoch, 16)?);
    figures.extend(reinit(opts, epoch, 64)?);
    Ok(figures)
}

/// A registrant worker registers a probe worker, waits for it, terminates
/// it and waits for its end, `rounds` times, once `idle` other workers run.
/// With `idle` 0, `worker_start_us` and its companions; otherwise only
/// `worker_start_w<idle>_us`.
fn worker_start(opts: &BenchOpts, epoch: Instant, idle: usize) -> Result<Vec<Figure>, String> {
    let rounds: usize = match (opts.quick, idle) {
        (true, 0) => 50,
        (true, _) => QUICK_SCALING_ROUNDS,
        (false, _) => MAX_ROUNDS,
    };
    let scenario = if idle == 0 {
        "start".to_owned()
    } else {
        format!("start-w{idle}")
    };
    let max_workers = idle as u32 + 2;
    let mut pm = PostmasterProcess::start(&scenario, max_workers, move |pm| {
        pm.entry("probe", move |ctx| probe(ctx, epoch));
        pm.entry("registrant", move |ctx| {
            registrant(ctx, epoch, rounds, idle)
        });
        pm.entry("idle", idle_worker);
        pm.register(WorkerSpec::new("registrant"))?;
        for i in 0..idle {
            pm.register(WorkerSpec::new(format!("idle{i}")).entry("idle"))?;
        }
        Ok(())
    })?;
    let done = wait_for(&mut pm, "the registrant's rounds", |board| {
        // Acquire: pairs with the registrant's Release store after its last
        // sample.
        if board.rounds_done.load(Ordering::Acquire) as usize == rounds {
            return Ok(Some(()));
        }
        // Relaxed: a flag; the registrant's own error went to stderr.
        match board.failed_round.load(Ordering::Relaxed) {
            0 => Ok(None),
            r => Err(format!(
                "the registrant failed in round {} (its error is above)",
                r - 1
            )),
        }
    });
    let samples = done.and_then(|()| {
        let board = pm.board()?;
        let read = |cells: &[AtomicU64]| -> Result<Vec<f64>, String> {
            cells[..rounds]
                .iter()
                // Relaxed: published by the rounds_done Release/Acquire pair.
                .map(|c| c.load(Ordering::Relaxed))
                .map(|ns| match ns {
                    0 => Err("a round recorded no time".to_owned()),
                    ns => Ok(ns as f64 / 1e3),
                })
                .collect()
        };
        Ok((
            read(&board.start_ns)?,
            read(&board.handle_ns)?,
            read(&board.stop_ns)?,
        ))
    });
    let (mut start, mut handle, mut stop) = samples?;
    let code = pm.stop()?;
    if code != 0 {
        return Err(format!(
            "the postmaster exited with {code} after a fast shutdown"
        ));
    }
    if idle > 0 {
        return Ok(vec![Figure::new(
            format!("worker_start_w{idle}_us"),
            median(&mut start),
            "us",
        )]);
    }
    Ok(vec![
        Figure::new("worker_start_us", median(&mut start), "us"),
        Figure::new("worker_start_handle_us", median(&mut handle), "us"),
        Figure::new("worker_stop_us", median(&mut stop), "us"),
    ])
}

/// The registrant: once `idle` idle workers run, one dynamic start and stop
/// per round, timed from its side and from the probe's.
fn registrant(
    ctx: &mut WorkerContext<'_>,
    epoch: Instant,
    rounds: usize,
    idle: usize,
) -> WorkerResult {
    let board = board_of(ctx)?;
    let deadline = Instant::now() + DEADLINE;
    // Acquire: pairs with each idle worker's Release increment (nothing
    // else is read with it; it only says they are all up).
    while (board.idle_started.load(Ordering::Acquire) as usize) < idle {
        if Instant::now() > deadline {
            // Relaxed: a flag, as in the round loop below.
            board.failed_round.store(1, Ordering::Relaxed);
            return Err(format!("only some of the {idle} idle workers started").into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for round in 0..rounds {
        if let Err(e) = one_round(ctx, board, epoch, round) {
            // Relaxed: a flag for the bench, which reads nothing else with it.
            board
                .failed_round
                .store(round as u32 + 1, Ordering::Relaxed);
            return Err(e);
        }
    }
    // Release: pairs with the bench's Acquire load; publishes every sample.
    board.rounds_done.store(rounds as u32, Ordering::Release);
    sleep_until_stopped(ctx)
}

fn one_round(
    ctx: &WorkerContext<'_>,
    board: &Board,
    epoch: Instant,
    round: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Some(Instant::now() + DEADLINE);
    let spec = WorkerSpec::new("probe").arg((round as u32).to_le_bytes());
    let registered = since(epoch);
    let handle = ctx.register_dynamic(&spec)?;
    let pid = handle.wait_started(deadline)?;
    let handle_ns = since(epoch) - registered;
    // The probe may not have reached its entry point yet (the postmaster
    // reports the start right after fork).
    let started = loop {
        // Acquire: pairs with the probe's Release store of probe_round.
        if board.probe_round.load(Ordering::Acquire) == round as u32 + 1 {
            // Relaxed: ordered by the probe_round pair above.
            break board.probe_started_ns.load(Ordering::Relaxed);
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(format!("probe {pid} of round {round} never ran").into());
        }
        std::thread::sleep(Duration::from_micros(20));
    };
    let terminated = since(epoch);
    if !handle.terminate() {
        return Err(format!("terminate of round {round}'s probe acted on nothing").into());
    }
    handle.wait_stopped(deadline)?;
    // Relaxed: published by the Release store of rounds_done.
    board.stop_ns[round].store(since(epoch) - terminated, Ordering::Relaxed);
    board.handle_ns[round].store(handle_ns.max(1), Ordering::Relaxed);
    board.start_ns[round].store(started.saturating_sub(registered).max(1), Ordering::Relaxed);
    Ok(())
}

/// An idle worker of the scaling figures: counts itself, then sleeps until
/// stopped.
fn idle_worker(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    // Release: pairs with the registrant's Acquire load.
    board_of(ctx)?.idle_started.fetch_add(1, Ordering::Release);
    sleep_until_stopped(ctx)
}

/// The probe: reports when it began, then sleeps until terminated.
fn probe(ctx: &mut WorkerContext<'_>, epoch: Instant) -> WorkerResult {
    let now = since(epoch);
    let board = board_of(ctx)?;
    let round = arg_index(ctx)?;
    // Relaxed: published by the Release store of probe_round just below.
    board.probe_started_ns.store(now, Ordering::Relaxed);
    // Release: pairs with the registrant's Acquire load.
    board.probe_round.store(round as u32 + 1, Ordering::Release);
    sleep_until_stopped(ctx)
}

/// 64 static workers that each record when they ran and exit 0: the rate
/// between the first and the last of them to run. Best of a few postmaster
/// runs is not taken: the median is.
fn fork_rate(opts: &BenchOpts, epoch: Instant) -> Result<Vec<Figure>, String> {
    let runs = if opts.quick { 3 } else { 9 };
    let mut rates = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..runs {
        let mut pm = PostmasterProcess::start("forks", MAX_WORKERS as u32, move |pm| {
            pm.entry("bump", move |ctx| bump(ctx, epoch));
            for i in 0..MAX_WORKERS as u32 {
                pm.register(
                    WorkerSpec::new(format!("bump{i}"))
                        .entry("bump")
                        .arg(i.to_le_bytes()),
                )?;
            }
            Ok(())
        })?;
        let span = wait_for(&mut pm, "every worker of the fork storm", |board| {
            // Acquire: pairs with each worker's Release increment, which
            // follows its bump_ns store.
            if board.bumps.load(Ordering::Acquire) as usize != MAX_WORKERS {
                return Ok(None);
            }
            let stamps: Vec<u64> = board
                .bump_ns
                .iter()
                // Relaxed: ordered by the bumps pair above.
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            if stamps.contains(&0) {
                return Err("a worker counted itself without a time stamp".into());
            }
            let first = stamps.iter().min().copied().unwrap_or(0);
            let last = stamps.iter().max().copied().unwrap_or(0);
            Ok(Some(Duration::from_nanos(last - first)))
        })?;
        let code = pm.stop()?;
        if code != 0 {
            return Err(format!("the postmaster exited with {code}"));
        }
        rates.push((MAX_WORKERS - 1) as f64 / span.as_secs_f64());
        spans.push(span.as_secs_f64() * 1e3);
    }
    let ours = Figure::new("fork_rate_per_s", median(&mut rates), "per_s");
    let mut bare: Vec<f64> = (0..runs)
        .map(|_| bare_fork_rate())
        .collect::<Result<_, _>>()?;
    let bare = Figure::new("bare_fork_rate_per_s", median(&mut bare), "per_s");
    Ok(vec![
        Figure::new(
            "ratio_fork_rate_vs_bare_fork_rate",
            ours.value / bare.value,
            "x",
        ),
        ours,
        bare,
        Figure::new(
            format!("fork_storm_{MAX_WORKERS}_ms"),
            median(&mut spans),
            "ms",
        ),
    ])
}

/// The baseline: the bench process forks 64 children that exit at once,
/// back to back, and reaps them afterwards; forks per second. This is what
/// `fork` alone costs a process of this size on this machine.
fn bare_fork_rate() -> Result<f64, String> {
    let mut children = Vec::with_capacity(MAX_WORKERS);
    let start = Instant::now();
    for _ in 0..MAX_WORKERS {
        // SAFETY: the bench process is single-threaded here; the child only
        // calls `_exit`.
        match unsafe { fork() } {
            // SAFETY: `_exit` takes no pointers and skips the at-exit work
            // (stdio flushes) that belongs to the parent.
            Ok(ForkResult::Child) => unsafe { nix::libc::_exit(0) },
            Ok(ForkResult::Parent { child }) => children.push(child),
            Err(e) => {
                for child in children {
                    let _ = waitpid(child, None);
                }
                return Err(format!("fork: {e}"));
            }
        }
    }
    let elapsed = start.elapsed();
    for child in children {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("a baseline child ended with {other:?}")),
        }
    }
    Ok(MAX_WORKERS as f64 / elapsed.as_secs_f64())
}

/// A fork-storm worker: records when it ran, counts itself, exits 0.
fn bump(ctx: &mut WorkerContext<'_>, epoch: Instant) -> WorkerResult {
    let now = since(epoch);
    let board = board_of(ctx)?;
    let i = arg_index(ctx)?;
    let cell = board.bump_ns.get(i).ok_or("worker index out of range")?;
    // Relaxed: published by the Release increment below.
    cell.store(now, Ordering::Relaxed);
    // Release: pairs with the bench's Acquire load of the count.
    board.bumps.fetch_add(1, Ordering::Release);
    Ok(WorkerExit::Done)
}

/// `n` shared-memory sleepers; SIGKILL one, then time until the last of
/// them runs again on the reset segment. A few crashes per postmaster.
fn reinit(opts: &BenchOpts, epoch: Instant, n: usize) -> Result<Vec<Figure>, String> {
    let crashes = if opts.quick { 5 } else { 15 };
    // Restart delays far longer than the bench: only the reset's "restart
    // at once" rule can bring the workers back in time.
    let delay = Restart::After(Duration::from_secs(600));
    let mut pm = PostmasterProcess::start(&format!("reinit{n}"), n as u32, move |pm| {
        pm.entry("sleeper", move |ctx| board_sleeper(ctx, epoch));
        for i in 0..n as u32 {
            pm.register(
                WorkerSpec::new(format!("s{i}"))
                    .entry("sleeper")
                    .arg(i.to_le_bytes())
                    .restart(delay),
            )?;
        }
        Ok(())
    })?;
    let mut generation = pm.segment().generation();
    let mut reports = all_started(&mut pm, n, generation)?;
    let mut last = Vec::new();
    let mut first = Vec::new();
    for crash in 0..crashes {
        let victim = reports[crash % n].pid;
        let killed = since(epoch);
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL)
            .map_err(|e| format!("kill worker {victim}: {e}"))?;
        generation += 1;
        let again = all_started(&mut pm, n, generation)?;
        if let Some(old) = again
            .iter()
            .find(|r| reports.iter().any(|o| o.pid == r.pid))
        {
            return Err(format!(
                "worker {} reported the new generation without restarting",
                old.pid
            ));
        }
        let latest = again.iter().map(|r| r.started_ns).max().unwrap_or(killed);
        let earliest = again.iter().map(|r| r.started_ns).min().unwrap_or(killed);
        last.push(latest.saturating_sub(killed) as f64 / 1e6);
        first.push(earliest.saturating_sub(killed) as f64 / 1e6);
        reports = again;
    }
    let shared =
        bgw::Shared::attach(pm.segment(), &shared_config(n as u32)).map_err(|e| e.to_string())?;
    let resets = shared.control.resets();
    if resets != crashes as u64 {
        return Err(format!("{crashes} crashes but {resets} resets"));
    }
    let code = pm.stop()?;
    if code != 0 {
        return Err(format!("the postmaster exited with {code}"));
    }
    Ok(vec![
        Figure::new(format!("reinit_{n}_ms"), median(&mut last), "ms"),
        Figure::new(format!("reinit_{n}_first_ms"), median(&mut first), "ms"),
    ])
}

#[derive(Clone, Copy, Debug)]
struct Report {
    pid: u32,
    started_ns: u64,
}

/// Waits until each of the `n` workers reported `generation`.
fn all_started(
    pm: &mut PostmasterProcess,
    n: usize,
    generation: u64,
) -> Result<Vec<Report>, String> {
    wait_for(
        pm,
        &format!("{n} workers in generation {generation}"),
        |board| {
            let mut reports = Vec::with_capacity(n);
            for (i, entry) in board.entries[..n].iter().enumerate() {
                // Acquire: pairs with the worker's Release store of its
                // generation, which follows its other fields.
                match entry.generation.load(Ordering::Acquire) {
                    g if g == generation => reports.push(Report {
                        // Relaxed: ordered by the generation pair above.
                        pid: entry.pid.load(Ordering::Relaxed),
                        started_ns: entry.started_ns.load(Ordering::Relaxed),
                    }),
                    g if g > generation => {
                        return Err(format!(
                            "worker s{i} saw generation {g}, expected {generation}: an extra reset"
                        ));
                    }
                    _ => return Ok(None),
                }
            }
            Ok(Some(reports))
        },
    )
}

/// A reset-scenario worker: reports its start and generation, then sleeps.
fn board_sleeper(ctx: &mut WorkerContext<'_>, epoch: Instant) -> WorkerResult {
    let now = since(epoch);
    let board = board_of(ctx)?;
    let entry = board
        .entries
        .get(arg_index(ctx)?)
        .ok_or("worker index out of range")?;
    let generation = ctx.generation().ok_or("no segment")?;
    // Relaxed: published by the Release store of the generation below.
    entry.started_ns.store(now, Ordering::Relaxed);
    entry.pid.store(std::process::id(), Ordering::Relaxed);
    // Release: pairs with the bench's Acquire load in all_started.
    entry.generation.store(generation, Ordering::Release);
    sleep_until_stopped(ctx)
}
