//! `postmaster demo`: the main job a new user runs first. A postmaster with
//! sample workers, a live status table, and two crashes staged to show the
//! difference between containment and a reset.
//!
//! The process forks. The child is the postmaster (single-threaded, as a
//! postmaster must be); the parent is the watcher, which attaches to the
//! named segment like `postmaster status` does, redraws the table, and at a
//! third and two thirds of the run SIGKILLs a worker:
//!
//! - `counter` (PostgreSQL's worker_spi sample, redone) bumps a shared
//!   counter every 100 ms, reports ready and feeds a watchdog. Killed
//!   outside any critical section, it is *contained*: restarted alone, the
//!   segment generation unchanged.
//! - `ledger` holds a critical section while it "updates" shared state.
//!   Killed inside it, the postmaster cannot trust the segment: every worker
//!   is stopped, the segment reset (generation + 1), everyone restarted.
//! - `ticker` is a state machine (`bgw::statem`): a state timeout fires
//!   every 250 ms and counts a batch, the PGQ ticker's job.
//! - `flaky` (no shared memory) fails after a second and is restarted with
//!   a growing backoff by its supervision group, which allows three
//!   restarts in 30 s: at the fourth failure (about 5 s in) the group gives
//!   up and `flaky` shows as `failed` until `postmaster start flaky`.
//! - `echo` registers its name and answers every call with the request
//!   (`postmaster call echo hello`).
//! - `scheduler` runs cron jobs as dynamic workers, keeping their history
//!   in shared memory (`postmaster jobs list`); see [`crate::scheduler`].
//!   The demo's job runs every three seconds and fails now and then, to
//!   show its retries.
//!
//! `ticker` also answers `status` calls (`postmaster call ticker status`).
//! With `--calm` nothing is killed: the postmaster runs until the duration
//! ends or Ctrl-C, for driving it by hand from another shell.
//!
//! Ctrl-C (or the end of `--duration`) asks for a fast shutdown; the
//! summary follows and the segment is gone.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use bgw::group::{Backoff, Escalation, GroupSpec, Intensity};
use bgw::spec::OnCrash;
use bgw::statem::{Event, EventSource, Message, Runner, StateMachine, Transition, WaitResult};
use bgw::status::{ShownState, WorkerRow};
use bgw::{
    Endpoint, Postmaster, Restart, Shared, SharedConfig, WorkerContext, WorkerExit, WorkerResult,
    WorkerSpec,
};
use latch::Wake;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shmem::sync::{AtomicU64, Ordering};
use shmem::{AttachError, Layout, LayoutBuilder, Segment};

use crate::scheduler::{self, Overlap};

/// The demo's own counters, one cache line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct DemoCounters {
    /// Bumped by `counter`.
    pub count: AtomicU64,
    /// Batches ticked by `ticker`.
    pub batches: AtomicU64,
    /// Updates finished by `ledger`.
    pub ledger: AtomicU64,
}

// SAFETY: repr(C) atomics only: any bytes are valid, no pointers, all
// mutation atomic.
unsafe impl shmem::ShmSafe for DemoCounters {}

/// Region name of [`DemoCounters`].
pub const COUNTERS: &str = "demo.counters";

/// The sizes the demo's postmaster uses (an attaching `postmaster status`
/// must use the same).
pub fn shared_config() -> SharedConfig {
    SharedConfig::default()
}

fn add_regions(builder: LayoutBuilder) -> LayoutBuilder {
    scheduler::declare(builder.region::<DemoCounters>(COUNTERS))
}

/// The job the scheduler starts with: every three seconds, skip a run
/// that comes due while the last still goes, two retries.
const DEMO_JOBS: &[(&str, &str, Overlap, u8)] = &[("tick-job", "*/3 * * * * *", Overlap::Skip, 2)];

/// The demo segment's layout, as the postmaster builds it.
pub fn layout() -> Result<Layout, String> {
    add_regions(shared_config().declare(Layout::builder()))
        .build()
        .map_err(|e| e.to_string())
}

fn counters(ctx: &WorkerContext<'_>) -> Result<&'static DemoCounters, Box<dyn std::error::Error>> {
    let segment = ctx.segment().ok_or("the demo workers need shared memory")?;
    Ok(segment.region::<DemoCounters>(COUNTERS)?)
}

fn counter_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let counters = counters(ctx)?;
    ctx.ready();
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        // Relaxed: a statistic shown by the watcher.
        counters.count.fetch_add(1, Ordering::Relaxed);
        ctx.heartbeat();
        if ctx.wait(Some(Instant::now() + Duration::from_millis(100))) == Wake::PostmasterDied {
            return Ok(WorkerExit::Done);
        }
    }
}

fn ledger_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let counters = counters(ctx)?;
    ctx.ready();
    loop {
        {
            // A multi-step update of shared state: a crash in here leaves it
            // half-done, which only a reset can repair.
            let _critical = ctx.critical();
            ctx.latch().reset();
            if ctx.should_stop() {
                return Ok(WorkerExit::Done);
            }
            if ctx.wait(Some(Instant::now() + Duration::from_millis(400))) == Wake::PostmasterDied {
                return Ok(WorkerExit::Done);
            }
            // Relaxed: a statistic.
            counters.ledger.fetch_add(1, Ordering::Relaxed);
        }
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
    }
}

fn flaky_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        ctx.latch().reset();
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        if ctx.wait(Some(until)) == Wake::PostmasterDied {
            return Ok(WorkerExit::Done);
        }
    }
    Err("the demo's deliberate failure".into())
}

fn echo_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let mut endpoint = ctx.endpoint()?;
    endpoint.register_name("echo")?;
    ctx.ready();
    while !ctx.should_stop() {
        let Some(message) = endpoint.recv(None)? else {
            continue;
        };
        if let Some(reply_to) = message.reply_to() {
            endpoint.reply(reply_to, message.payload())?;
        }
    }
    Ok(WorkerExit::Done)
}

fn scheduler_entry(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    scheduler::scheduler_main(ctx, DEMO_JOBS)
}

/// The ticker: one state, whose state timeout counts a batch and re-arms.
struct Ticker {
    batches: &'static AtomicU64,
}

const TICK: Duration = Duration::from_millis(250);

impl StateMachine for Ticker {
    type State = &'static str;

    fn init(&mut self) -> (&'static str, Vec<bgw::statem::Action>) {
        let first = Transition::<&'static str>::keep().state_timeout(TICK, *b"tick");
        ("ticking", first.actions)
    }

    fn handle_event(
        &mut self,
        state: &&'static str,
        event: &Event<&'static str>,
    ) -> Transition<&'static str> {
        match event {
            Event::Call { from, payload } if payload == b"status" => {
                // Relaxed: a statistic.
                let batches = self.batches.load(Ordering::Relaxed);
                Transition::keep().reply(*from, format!("{state} batches={batches}"))
            }
            Event::Call { from, payload } => Transition::keep().reply(
                *from,
                format!(
                    "unknown request {:?}; ask for status",
                    String::from_utf8_lossy(payload)
                ),
            ),
            Event::StateTimeout(_) => {
                // Relaxed: a statistic.
                self.batches.fetch_add(1, Ordering::Relaxed);
                Transition::keep().state_timeout(TICK, *b"tick")
            }
            _ => Transition::keep(),
        }
    }
}

/// A worker's latch, clock and inbox as the state machine's event source.
struct WorkerSource<'c, 'a> {
    ctx: &'c WorkerContext<'a>,
    endpoint: &'c RefCell<Endpoint<'static>>,
}

/// A statem reply handle carries the caller's inbox address in one word.
fn to_statem(reply_to: bgw::mailbox::ReplyTo) -> bgw::statem::ReplyTo {
    bgw::statem::ReplyTo {
        caller: u64::from(reply_to.to.proc_index) << 32 | u64::from(reply_to.to.generation),
        correlation: reply_to.correlation,
    }
}

fn from_statem(reply_to: bgw::statem::ReplyTo) -> bgw::mailbox::ReplyTo {
    bgw::mailbox::ReplyTo {
        to: bgw::mailbox::Address {
            proc_index: (reply_to.caller >> 32) as u32,
            generation: reply_to.caller as u32,
        },
        correlation: reply_to.correlation,
    }
}

impl EventSource for WorkerSource<'_, '_> {
    fn now(&mut self) -> Instant {
        Instant::now()
    }

    fn reset(&mut self) {
        self.ctx.latch().reset();
    }

    fn poll(&mut self) -> Option<Message> {
        let message = self.endpoint.borrow_mut().try_recv().ok()??;
        let payload = message.payload().to_vec();
        Some(match message.reply_to() {
            Some(reply_to) => Message::Call {
                from: to_statem(reply_to),
                payload,
            },
            None => Message::Cast(payload),
        })
    }

    fn wait(&mut self, deadline: Option<Instant>) -> WaitResult {
        if self.ctx.should_stop() {
            return WaitResult::Closed;
        }
        match self.ctx.wait(deadline) {
            latch::Wake::Timeout => WaitResult::TimedOut,
            latch::Wake::Set if self.ctx.should_stop() => WaitResult::Closed,
            latch::Wake::Set => WaitResult::Woken,
            latch::Wake::PostmasterDied => WaitResult::Closed,
        }
    }
}

fn ticker_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let batches = &counters(ctx)?.batches;
    let endpoint = RefCell::new(ctx.endpoint()?);
    endpoint.borrow_mut().register_name("ticker")?;
    let (mut runner, _) = Runner::start(Ticker { batches }, Instant::now());
    ctx.ready();
    let mut source = WorkerSource {
        ctx,
        endpoint: &endpoint,
    };
    runner.run(&mut source, |output| {
        if let bgw::statem::Output::Reply { to, payload } = output {
            // A caller that has gone misses its answer; nothing to do.
            let _ = endpoint.borrow().reply(from_statem(to), &payload);
        }
    });
    Ok(WorkerExit::Done)
}

/// The demo's postmaster; runs in the forked child and never returns.
fn run_postmaster(name: &str) -> ! {
    let mut pm = Postmaster::builder()
        .segment_name(name)
        .regions(add_regions)
        .crash_kill_timeout(Duration::from_secs(2))
        .build();
    pm.entry("counter", counter_main)
        .entry("ledger", ledger_main)
        .entry("ticker", ticker_main)
        .entry("flaky", flaky_main)
        .entry("echo", echo_main)
        .entry("scheduler", scheduler_entry)
        .entry(scheduler::JOB_ENTRY, scheduler::job_main);
    let code = (|| -> Result<i32, bgw::PostmasterError> {
        pm.group(
            GroupSpec::new("flaky")
                .intensity(Intensity {
                    max_restarts: 3,
                    period: Duration::from_secs(30),
                })
                .escalation(Escalation::StopGroup)
                .backoff(Backoff {
                    initial: Duration::from_millis(200),
                    max: Duration::from_secs(3),
                    jitter: 0.1,
                }),
        )?;
        let restart = Restart::After(Duration::from_millis(200));
        pm.register(
            WorkerSpec::new("counter")
                .restart(restart)
                .on_crash(OnCrash::Contain)
                .watchdog(Duration::from_secs(2)),
        )?;
        pm.register(
            WorkerSpec::new("ledger")
                .restart(restart)
                .on_crash(OnCrash::Contain),
        )?;
        pm.register(WorkerSpec::new("ticker").restart(restart))?;
        pm.register(
            WorkerSpec::new("echo")
                .restart(restart)
                .on_crash(OnCrash::Contain),
        )?;
        pm.register(
            WorkerSpec::new("scheduler")
                .restart(restart)
                .on_crash(OnCrash::Contain),
        )?;
        pm.register(
            WorkerSpec::new("flaky")
                .group("flaky")
                .shmem(false)
                .restart(Restart::Transient),
        )?;
        pm.run()
    })();
    std::process::exit(match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postmaster: {e}");
            1
        }
    })
}

/// Runs the demo.
pub fn run(name: &str, duration: Duration, calm: bool) -> Result<(), String> {
    let layout = layout()?;
    match Segment::attach(name, &layout) {
        Err(AttachError::NotFound { .. }) => {}
        Err(AttachError::Stale { .. }) => {
            Segment::remove_stale(name).map_err(|e| e.to_string())?;
            println!("removed the stale segment {name:?} left by a demo that died");
        }
        Ok(_) => {
            return Err(format!(
                "a postmaster is already running with segment {name:?}; stop it or pick \
                 another --name"
            ));
        }
        Err(e) => return Err(e.to_string()),
    }
    // Ctrl-C and SIGTERM reach the watcher through a signalfd; the
    // postmaster (same process group) gets Ctrl-C too and shuts down fast.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    // SAFETY: this process has one thread (the CLI starts none before the
    // demo), so the child is a complete copy; it runs only run_postmaster,
    // which never returns.
    let pm = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => run_postmaster(name),
        ForkResult::Parent { child } => child,
    };
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;
    let outcome = watch(name, &layout, pm, &sigfd, duration, calm);
    // However the watch ended, the postmaster goes too.
    let _ = kill(pm, Signal::SIGINT);
    let status = waitpid(pm, None);
    // The watcher's error first: after an early exit it has already reaped
    // the postmaster, and this waitpid only says ECHILD.
    let summary = outcome?;
    let status = status.map_err(|e| format!("waitpid: {e}"))?;
    println!("{summary}");
    match status {
        WaitStatus::Exited(_, 0) => {}
        other => return Err(format!("the postmaster ended with {other:?}")),
    }
    if Segment::attach(name, &layout).is_ok() {
        return Err(format!("segment {name:?} is still there after shutdown"));
    }
    println!("postmaster exited cleanly; segment {name:?} removed");
    Ok(())
}

/// Redraws the table until the duration ends or a signal comes; stages
/// the two crashes; returns the summary line.
fn watch(
    name: &str,
    layout: &Layout,
    pm: Pid,
    sigfd: &SignalFd,
    duration: Duration,
    calm: bool,
) -> Result<String, String> {
    let start = Instant::now();
    let segment = loop {
        match Segment::attach(name, layout) {
            Ok(segment) => break segment,
            Err(AttachError::NotFound { .. } | AttachError::NotReady { .. })
                if start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("attaching to the demo's segment: {e}")),
        }
    };
    let shared = Shared::attach(&segment, &shared_config()).map_err(|e| e.to_string())?;
    let demo = segment
        .region::<DemoCounters>(COUNTERS)
        .map_err(|e| e.to_string())?;
    let terminal = std::io::stdout().is_terminal();
    let deadline = start + duration;
    // A calm demo stages nothing: the kills count as done already.
    let mut staged = [
        (duration / 3, "counter", calm),
        (duration * 2 / 3, "ledger", calm),
    ];
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        for (at, worker, done) in &mut staged {
            if !*done && now >= start + *at {
                *done = true;
                let rows = bgw::status::read_all(shared.status);
                if let Some(row) = rows.iter().find(|r| r.name == *worker && r.pid != 0) {
                    println!("demo: SIGKILL {worker} (pid {})", row.pid);
                    let _ = kill(Pid::from_raw(row.pid as i32), Signal::SIGKILL);
                }
            }
        }
        print_table(&segment, &shared, demo, start.elapsed(), terminal);
        if now >= deadline {
            break;
        }
        // Wake for the next redraw, and for the next staged kill, which
        // must not wait for a redraw (a 2 s run would otherwise kill
        // `ledger` only at its very end, and never show the reset).
        let next_kill = staged
            .iter()
            .filter(|(_, _, done)| !done)
            .map(|(at, _, _)| (start + *at).saturating_duration_since(now))
            .min();
        let redraw = Duration::from_millis(if terminal { 250 } else { 1000 });
        let wait = (deadline - now)
            .min(redraw)
            .min(next_kill.unwrap_or(redraw));
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => {
                interrupted = true;
                break;
            }
            Err(e) => return Err(format!("poll: {e}")),
        }
        if waitpid(pm, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) != Ok(WaitStatus::StillAlive) {
            return Err("the postmaster exited early; see its log above".to_owned());
        }
    }
    let counters = shared.control.counters();
    let rows = bgw::status::read_all(shared.status);
    let restarts: u64 = rows.iter().map(|r| r.restarts).sum();
    Ok(format!(
        "demo {} after {:.1}s: workers={} restarts={} resets={} containments={} generation={} \
         count={} batches={}",
        if interrupted {
            "interrupted"
        } else {
            "finished"
        },
        start.elapsed().as_secs_f64(),
        rows.len(),
        restarts.max(counters.restarts),
        counters.resets,
        counters.containments,
        segment.generation(),
        // Relaxed: statistics.
        demo.count.load(Ordering::Relaxed),
        demo.batches.load(Ordering::Relaxed),
    ))
}

fn print_table(
    segment: &Segment,
    shared: &Shared<'_>,
    demo: &DemoCounters,
    elapsed: Duration,
    terminal: bool,
) {
    let rows = bgw::status::read_all(shared.status);
    let counters = shared.control.counters();
    let mut out = String::new();
    if terminal {
        out.push_str("\x1b[H\x1b[2J");
    }
    out.push_str(&format!(
        "t={:>5.1}s generation={} resets={} containments={} count={} batches={} ledger={}\n",
        elapsed.as_secs_f64(),
        segment.generation(),
        counters.resets,
        counters.containments,
        // Relaxed: statistics.
        demo.count.load(Ordering::Relaxed),
        demo.batches.load(Ordering::Relaxed),
        demo.ledger.load(Ordering::Relaxed),
    ));
    out.push_str(&table(shared, &rows));
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Messages waiting in the inbox of the process `pid`, if it holds a
/// proc slot.
pub fn inbox_depth(shared: &Shared<'_>, pid: u32) -> Option<usize> {
    if pid == 0 {
        return None;
    }
    let (index, _) = shared.procs.find_pid(pid)?;
    shared.mail.ring(index)?.len().ok()
}

/// The status table, one line per worker.
pub fn table(shared: &Shared<'_>, rows: &[WorkerRow]) -> String {
    let now = bgw::status::monotonic_ns();
    let mut out = format!(
        "  {:<12} {:<8} {:>7} {:<9} {:>8} {:<14} {:>8} {:>5}\n",
        "worker", "group", "pid", "state", "restarts", "last exit", "uptime", "inbox"
    );
    for r in rows {
        let uptime = if r.started_at_ns == 0 || r.state == ShownState::Waiting {
            "-".to_owned()
        } else {
            format!("{:.1}s", now.saturating_sub(r.started_at_ns) as f64 / 1e9)
        };
        out.push_str(&format!(
            "  {:<12} {:<8} {:>7} {:<9} {:>8} {:<14} {:>8} {:>5}\n",
            r.name,
            r.group,
            if r.pid == 0 {
                "-".to_owned()
            } else {
                r.pid.to_string()
            },
            r.state.name(),
            r.restarts,
            r.last_exit.map_or("-".to_owned(), |e| e.to_string()),
            uptime,
            inbox_depth(shared, r.pid).map_or("-".to_owned(), |d| d.to_string())
        ));
    }
    out
}
