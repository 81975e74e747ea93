//! The postmaster with real processes.
//!
//! The cargo test harness is multi-threaded and a postmaster refuses to run
//! in a multi-threaded process, so this file has its own `main`
//! (`harness = false`): run plainly, it plays each scenario by starting
//! *itself* as the postmaster (`BGW_TEST_POSTMASTER=<scenario>`), then
//! watches through the events log every worker appends to, the
//! postmaster's stderr, and the named segment.
//!
//! Every wait is for a condition with a generous deadline; nothing sleeps a
//! fixed time and then asserts.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bgw::core::ExitStatus;
use bgw::registry::HandleStatus;
use bgw::shared::{Shared, SharedConfig};
use bgw::{
    Phase, Postmaster, PostmasterError, Restart, WorkerContext, WorkerExit, WorkerResult,
    WorkerSpec,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shmem::{Layout, Segment};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

/// A scenario: its test name, the postmaster role's short name, and the
/// check.
type Scenario = (&'static str, &'static str, fn(&Harness));

fn main() {
    if let Ok(scenario) = std::env::var("BGW_TEST_POSTMASTER") {
        std::process::exit(run_postmaster(&scenario));
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let scenarios: &[Scenario] = &[
        (
            "static_workers_start_and_smart_shutdown_stops_them_in_reverse_order",
            "smart",
            smart_shutdown,
        ),
        (
            "fast_shutdown_stops_every_worker_at_once",
            "fast",
            fast_shutdown,
        ),
        (
            "immediate_shutdown_quits_every_worker",
            "immediate",
            immediate_shutdown,
        ),
        (
            "shmem_crash_resets_the_segment_and_every_worker_returns_at_once",
            "shmem_crash",
            shmem_crash,
        ),
        (
            "non_shmem_crash_restarts_that_worker_alone",
            "non_shmem_crash",
            non_shmem_crash,
        ),
        ("restart_delay_is_honoured", "restart_delay", restart_delay),
        (
            "never_restart_and_exit_zero_are_not_started_again",
            "never_restart",
            never_restart,
        ),
        (
            "dynamic_register_wait_started_terminate_wait_stopped",
            "dynamic",
            dynamic,
        ),
        (
            "phase_announced_by_a_worker_starts_the_workers_waiting_for_it",
            "phase",
            phase,
        ),
        (
            "sigkill_of_the_postmaster_takes_every_worker_down",
            "postmaster_death",
            postmaster_death,
        ),
    ];
    let mut failed = 0;
    let mut ran = 0;
    for (name, short, scenario) in scenarios {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        let outcome = std::panic::catch_unwind(|| {
            let harness = Harness::new(short);
            scenario(&harness);
        });
        match outcome {
            Ok(()) => println!("ok"),
            Err(_) => {
                println!("FAILED");
                failed += 1;
            }
        }
    }
    // The in-process checks need no postmaster child.
    for (name, check) in [
        ("run_refuses_a_multithreaded_process", multithreaded as fn()),
        (
            "unknown_entry_is_rejected_with_the_known_ones_listed",
            unknown_entry,
        ),
    ] {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        print!("test {name} ... ");
        match std::panic::catch_unwind(check) {
            Ok(()) => println!("ok"),
            Err(_) => {
                println!("FAILED");
                failed += 1;
            }
        }
    }
    println!("\ntest result: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The postmaster side (runs in the child process).

fn events_path() -> PathBuf {
    PathBuf::from(std::env::var("BGW_TEST_EVENTS").expect("set by the harness"))
}

fn mono_ns() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

/// Appends `<worker> <what> <pid> <generation> <monotonic ns> [extra]`.
fn record(ctx: &WorkerContext<'_>, what: &str, extra: &str) {
    let line = format!(
        "{} {what} {} {} {} {extra}\n",
        ctx.name(),
        std::process::id(),
        ctx.generation().unwrap_or(0),
        mono_ns()
    );
    // One write(2) of a short line to an O_APPEND file: lines from
    // different workers never interleave.
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(events_path())
        .expect("events log");
    file.write_all(line.as_bytes()).expect("write events log");
}

fn sleeper(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            record(ctx, "stop", "");
            return Ok(WorkerExit::Done);
        }
        if ctx.wait(None) == latch::Wake::PostmasterDied {
            return Ok(WorkerExit::Restart);
        }
    }
}

fn exit_one(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    Ok(WorkerExit::Restart)
}

fn exit_zero(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    Ok(WorkerExit::Done)
}

fn announcer(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    assert!(ctx.announce_phase(Phase::ConsistentState));
    sleeper_loop(ctx)
}

fn sleeper_loop(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            record(ctx, "stop", "");
            return Ok(WorkerExit::Done);
        }
        ctx.wait(None);
    }
}

/// Registers `dyn`, waits for it, terminates it, waits for its end, and
/// checks that the stale handle acts on nothing.
fn registrar(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let deadline = Some(Instant::now() + DEADLINE);
    let spec = WorkerSpec::new("dyn")
        .entry("sleeper")
        .restart(Restart::After(Duration::ZERO));
    let handle = ctx.register_dynamic(&spec)?;
    let pid = handle.wait_started(deadline)?;
    record(ctx, "dyn-started", &pid.to_string());
    assert!(handle.terminate(), "a live handle terminates");
    handle.wait_stopped(deadline)?;
    let stale = handle.terminate();
    let status = handle.status();
    record(
        ctx,
        "dyn-stopped",
        &format!(
            "stale_terminate={stale} status={}",
            status == HandleStatus::Stopped
        ),
    );
    // The same name can be registered again once the first is gone.
    let again = ctx.register_dynamic(&spec)?;
    let pid2 = again.wait_started(deadline)?;
    record(ctx, "dyn-again", &pid2.to_string());
    sleeper_loop(ctx)
}

fn layout_for(config: &SharedConfig) -> Layout {
    config.declare(Layout::builder()).build().expect("layout")
}

fn run_postmaster(scenario: &str) -> i32 {
    let segment = std::env::var("BGW_TEST_SEGMENT").expect("set by the harness");
    let mut pm = Postmaster::builder()
        .segment_name(segment)
        .max_workers(8)
        .crash_kill_timeout(Duration::from_secs(5))
        .build();
    pm.entry("sleeper", sleeper)
        .entry("exit_one", exit_one)
        .entry("exit_zero", exit_zero)
        .entry("registrar", registrar)
        .entry("announcer", announcer);
    let long = Restart::After(Duration::from_secs(600));
    let specs: Vec<WorkerSpec> = match scenario {
        "smart" | "fast" | "immediate" => vec![
            WorkerSpec::new("w1").entry("sleeper"),
            WorkerSpec::new("w2").entry("sleeper").shmem(false),
            WorkerSpec::new("w3").entry("sleeper"),
        ],
        "shmem_crash" => vec![
            WorkerSpec::new("s1").entry("sleeper").restart(long),
            WorkerSpec::new("s2").entry("sleeper").restart(long),
            WorkerSpec::new("n1")
                .entry("sleeper")
                .shmem(false)
                .restart(long),
            WorkerSpec::new("never").entry("sleeper"),
        ],
        "non_shmem_crash" => vec![
            WorkerSpec::new("s1").entry("sleeper").restart(long),
            WorkerSpec::new("n1")
                .entry("sleeper")
                .shmem(false)
                .restart(Restart::After(Duration::ZERO)),
        ],
        "restart_delay" => vec![
            WorkerSpec::new("e1")
                .entry("exit_one")
                .restart(Restart::After(Duration::from_millis(300))),
        ],
        "never_restart" => vec![
            WorkerSpec::new("e1").entry("exit_one"),
            WorkerSpec::new("z0")
                .entry("exit_zero")
                .restart(Restart::After(Duration::ZERO)),
        ],
        "dynamic" => vec![WorkerSpec::new("registrar")],
        "phase" => vec![
            WorkerSpec::new("late")
                .entry("sleeper")
                .start(Phase::ConsistentState),
            WorkerSpec::new("announcer"),
        ],
        "postmaster_death" => vec![
            WorkerSpec::new("s1").entry("sleeper"),
            WorkerSpec::new("n1").entry("sleeper").shmem(false),
        ],
        other => panic!("unknown scenario {other}"),
    };
    for spec in specs {
        pm.register(spec).expect("register");
    }
    match pm.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postmaster failed: {e}");
            99
        }
    }
}

// ---------------------------------------------------------------------------
// The harness side.

/// One scenario's postmaster process, events log and segment name.
struct Harness {
    scenario: &'static str,
    dir: PathBuf,
    segment: String,
}

/// A running postmaster; killed (with its workers, through their
/// death signal) if the scenario fails.
struct Running {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[derive(Clone, Debug)]
struct Line {
    worker: String,
    what: String,
    pid: u32,
    generation: u64,
    at_ns: u128,
    extra: String,
}

impl Harness {
    /// `scenario` is the short name the postmaster role knows.
    fn new(scenario: &'static str) -> Self {
        let dir = std::env::temp_dir().join(format!("bgwtest-{}-{scenario}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Harness {
            scenario,
            segment: format!("bgwtest-{}-{scenario}", std::process::id()),
            dir,
        }
    }

    fn start(&self) -> Running {
        let stderr = self.dir.join("postmaster.stderr");
        let child = Command::new(std::env::current_exe().expect("own path"))
            .env("BGW_TEST_POSTMASTER", self.scenario)
            .env("BGW_TEST_SEGMENT", &self.segment)
            .env("BGW_TEST_EVENTS", self.dir.join("events.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn postmaster");
        Running {
            child: Some(child),
            stderr,
        }
    }

    fn events(&self) -> Vec<Line> {
        let text = std::fs::read_to_string(self.dir.join("events.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut f = l.splitn(6, ' ');
                Some(Line {
                    worker: f.next()?.to_owned(),
                    what: f.next()?.to_owned(),
                    pid: f.next()?.parse().ok()?,
                    generation: f.next()?.parse().ok()?,
                    at_ns: f.next()?.parse().ok()?,
                    extra: f.next().unwrap_or("").trim().to_owned(),
                })
            })
            .collect()
    }

    /// Waits until `done` holds for the events log, or fails the test.
    fn wait_events(&self, what: &str, done: impl Fn(&[Line]) -> bool) -> Vec<Line> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let events = self.events();
            if done(&events) {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; events so far:\n{events:#?}",
                self.scenario
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn attach(&self) -> Segment {
        Segment::attach(&self.segment, &layout_for(&test_shared_config())).expect("attach")
    }
}

fn test_shared_config() -> SharedConfig {
    SharedConfig {
        max_workers: 8,
        ..SharedConfig::default()
    }
}

impl Running {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the postmaster");
    }

    /// Waits for the postmaster to exit; returns its exit code.
    fn wait_exit(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("postmaster did not exit; its log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "postmaster log never said {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

fn wait_dead(pids: &[u32]) {
    let deadline = Instant::now() + DEADLINE;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "workers {pids:?} outlived the wait"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn segment_exists(name: &str) -> bool {
    Path::new(&format!("/dev/shm/postmaster.{name}")).exists()
}

fn count(events: &[Line], worker: &str, what: &str) -> usize {
    events
        .iter()
        .filter(|l| l.worker == worker && l.what == what)
        .count()
}

// ---------------------------------------------------------------------------
// Scenarios.

fn three_started(h: &Harness) -> Vec<Line> {
    h.wait_events("three workers to start", |e| {
        ["w1", "w2", "w3"].iter().all(|w| count(e, w, "start") == 1)
    })
}

fn smart_shutdown(h: &Harness) {
    let mut pm = h.start();
    three_started(h);
    // Start order is fork order, which the postmaster logs; the workers'
    // own lines may land in any order.
    let log = pm.log();
    let mut start_order: Vec<String> = ["w1", "w2", "w3"].map(String::from).to_vec();
    start_order.sort_by_key(|w| log.find(&format!("worker {w} started")));
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let stops: Vec<String> = h
        .events()
        .into_iter()
        .filter(|l| l.what == "stop")
        .map(|l| l.worker)
        .collect();
    let mut expected = start_order;
    expected.reverse();
    assert_eq!(
        stops, expected,
        "smart shutdown stops in reverse start order"
    );
    assert!(!segment_exists(&h.segment), "the named segment is removed");
}

fn fast_shutdown(h: &Harness) {
    let mut pm = h.start();
    three_started(h);
    pm.signal(Signal::SIGINT);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    for w in ["w1", "w2", "w3"] {
        assert_eq!(count(&events, w, "stop"), 1, "{w} got SIGTERM and stopped");
    }
    assert!(!segment_exists(&h.segment));
}

fn immediate_shutdown(h: &Harness) {
    let mut pm = h.start();
    let events = three_started(h);
    pm.signal(Signal::SIGQUIT);
    assert_eq!(pm.wait_exit(), 0);
    let pids: Vec<u32> = events.iter().map(|l| l.pid).collect();
    wait_dead(&pids);
    let events = h.events();
    assert!(
        events.iter().all(|l| l.what != "stop"),
        "SIGQUIT leaves without cleanup: {events:#?}"
    );
    assert!(!segment_exists(&h.segment));
}

fn shmem_crash(h: &Harness) {
    let mut pm = h.start();
    let all = ["s1", "s2", "n1", "never"];
    let before = h.wait_events("every worker to start", |e| {
        all.iter().all(|w| count(e, w, "start") == 1)
    });
    let segment = h.attach();
    let generation = segment.generation();
    let s1 = before.iter().find(|l| l.worker == "s1").expect("s1").pid;
    kill(Pid::from_raw(s1 as i32), Signal::SIGKILL).expect("kill s1");
    // Restart delays are ten minutes: only the reset's "at once" rule can
    // bring them back within the deadline. `never` is gone for good.
    let after = h.wait_events("s1, s2 and n1 to start again", |e| {
        ["s1", "s2", "n1"].iter().all(|w| count(e, w, "start") == 2)
    });
    assert!(
        segment.generation() > generation,
        "the reset bumped the generation"
    );
    for l in after
        .iter()
        .filter(|l| l.what == "start" && l.worker.starts_with('s'))
    {
        if l.pid != s1 && before.iter().any(|b| b.pid == l.pid) {
            assert_eq!(l.generation, generation);
        }
    }
    let restarted: Vec<&Line> = after.iter().filter(|l| l.what == "start").skip(4).collect();
    for l in restarted.iter().filter(|l| l.worker != "n1") {
        assert_eq!(
            l.generation,
            segment.generation(),
            "{} restarted after the reset",
            l.worker
        );
    }
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    assert_eq!(shared.control.resets(), 1);
    pm.wait_log("worker never unregistered");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    assert_eq!(count(&h.events(), "never", "start"), 1);
}

fn non_shmem_crash(h: &Harness) {
    let mut pm = h.start();
    let before = h.wait_events("both to start", |e| {
        count(e, "s1", "start") == 1 && count(e, "n1", "start") == 1
    });
    let generation = h.attach().generation();
    let n1 = before.iter().find(|l| l.worker == "n1").expect("n1").pid;
    kill(Pid::from_raw(n1 as i32), Signal::SIGKILL).expect("kill n1");
    h.wait_events("n1 to start again", |e| count(e, "n1", "start") == 2);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(count(&events, "s1", "start"), 1, "s1 was left alone");
    assert!(
        !pm.log().contains("resetting shared memory"),
        "no reset for a worker without shared memory:\n{}",
        pm.log()
    );
    let _ = generation;
}

fn restart_delay(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("e1 to start twice", |e| count(e, "e1", "start") >= 2);
    let starts: Vec<&Line> = events.iter().filter(|l| l.what == "start").collect();
    let gap = starts[1].at_ns - starts[0].at_ns;
    assert!(
        gap >= 300_000_000,
        "restarted after {gap} ns, before its 300 ms delay"
    );
    pm.signal(Signal::SIGINT);
    assert_eq!(pm.wait_exit(), 0);
}

fn never_restart(h: &Harness) {
    let mut pm = h.start();
    pm.wait_log("worker e1 unregistered");
    pm.wait_log("worker z0 unregistered");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(count(&events, "e1", "start"), 1, "restart=never ran once");
    assert_eq!(count(&events, "z0", "start"), 1, "exit 0 ran once");
    let _ = ExitStatus::Code(0);
}

fn dynamic(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("the registrar's round trip", |e| {
        count(e, "registrar", "dyn-again") == 1
    });
    let started = events
        .iter()
        .find(|l| l.what == "dyn-started")
        .expect("dyn-started");
    let dyn_starts: Vec<&Line> = events
        .iter()
        .filter(|l| l.worker == "dyn" && l.what == "start")
        .collect();
    assert_eq!(
        started.extra,
        dyn_starts[0].pid.to_string(),
        "wait_started returned its pid"
    );
    assert_eq!(count(&events, "dyn", "stop"), 1, "terminate stopped it");
    let stopped = events
        .iter()
        .find(|l| l.what == "dyn-stopped")
        .expect("dyn-stopped");
    assert_eq!(stopped.extra, "stale_terminate=false status=true");
    assert_eq!(dyn_starts.len(), 2, "registered again under the same name");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn phase(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("late to start", |e| count(e, "late", "start") == 1);
    let announcer = events
        .iter()
        .position(|l| l.worker == "announcer")
        .expect("announcer");
    let late = events
        .iter()
        .position(|l| l.worker == "late")
        .expect("late");
    assert!(announcer < late, "late started only after the announcement");
    assert!(pm.log().contains("phase consistent-state reached"));
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn postmaster_death(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("both to start", |e| {
        count(e, "s1", "start") == 1 && count(e, "n1", "start") == 1
    });
    pm.signal(Signal::SIGKILL);
    let _ = pm.wait_exit();
    let pids: Vec<u32> = events.iter().map(|l| l.pid).collect();
    wait_dead(&pids);
    assert!(
        segment_exists(&h.segment),
        "a killed postmaster leaves its segment"
    );
    match Segment::attach(&h.segment, &layout_for(&test_shared_config())) {
        Err(shmem::AttachError::Stale { .. }) => {}
        other => panic!("expected a stale segment, got {other:?}"),
    }
    Segment::remove_stale(&h.segment).expect("remove the stale segment");
    assert!(!segment_exists(&h.segment));
}

fn multithreaded() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let pm = Postmaster::builder().log(false).build();
    match pm.run() {
        Err(PostmasterError::MultiThreaded { threads }) => assert!(threads >= 2),
        other => panic!("expected MultiThreaded, got {other:?}"),
    }
    drop(tx);
    thread.join().expect("join");
}

fn unknown_entry() {
    let mut pm = Postmaster::builder().log(false).build();
    pm.entry("counter", exit_zero).entry("ticker", exit_zero);
    match pm.register(WorkerSpec::new("w").entry("missing")) {
        Err(PostmasterError::UnknownEntry { entry, known, .. }) => {
            assert_eq!(entry, "missing");
            assert_eq!(known, "counter, ticker");
        }
        other => panic!("expected UnknownEntry, got {other:?}"),
    }
}
