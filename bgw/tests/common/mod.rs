//! The harness shared by the real-process tests (`postmaster.rs`,
//! `supervision.rs`).
//!
//! The cargo test harness is multi-threaded and a postmaster refuses to run
//! in a multi-threaded process, so those files have their own `main`
//! (`harness = false`): run plainly, each scenario starts *the test binary
//! itself* as the postmaster (`BGW_TEST_POSTMASTER=<scenario>`), then
//! watches through the events log every worker appends to, the
//! postmaster's stderr, and the named segment.
//!
//! Every wait is for a condition with a generous deadline; nothing sleeps a
//! fixed time and then asserts.

#![allow(dead_code)] // each test file uses its own subset

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bgw::shared::SharedConfig;
use bgw::{Postmaster, WorkerContext, WorkerExit, WorkerResult, WorkerSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shmem::{Layout, Segment};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A scenario: its test name, the postmaster role's short name, and the
/// check.
pub type Scenario = (&'static str, &'static str, fn(&Harness));

/// Builds the postmaster of one scenario: entries, groups, static specs.
pub type Configure = fn(&str, &mut Postmaster) -> Vec<WorkerSpec>;

/// The test binary's `main`: the postmaster role if asked for, otherwise
/// every scenario and in-process check whose name matches the filter.
pub fn main(scenarios: &[Scenario], checks: &[(&str, fn())], configure: Configure) {
    if let Ok(scenario) = std::env::var("BGW_TEST_POSTMASTER") {
        std::process::exit(run_postmaster(&scenario, configure));
    }
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let mut failed = 0;
    let mut ran = 0;
    let mut report = |outcome: std::thread::Result<()>| {
        ran += 1;
        match outcome {
            Ok(()) => println!("ok"),
            Err(_) => {
                println!("FAILED");
                failed += 1;
            }
        }
    };
    for (name, short, scenario) in scenarios {
        if !wanted(name) {
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        report(std::panic::catch_unwind(|| scenario(&Harness::new(short))));
    }
    // The in-process checks need no postmaster child.
    for (name, check) in checks {
        if !wanted(name) {
            continue;
        }
        print!("test {name} ... ");
        report(std::panic::catch_unwind(check));
    }
    println!("\ntest result: {} passed; {failed} failed", ran - failed);
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// The postmaster side (runs in the child process).

pub fn events_path() -> PathBuf {
    PathBuf::from(std::env::var("BGW_TEST_EVENTS").expect("set by the harness"))
}

/// Appends `<worker> <what> <pid> <generation> <monotonic ns> [extra]`.
pub fn record(ctx: &WorkerContext<'_>, what: &str, extra: &str) {
    let line = format!(
        "{} {what} {} {} {} {extra}\n",
        ctx.name(),
        std::process::id(),
        ctx.generation().unwrap_or(0),
        bgw::status::monotonic_ns()
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

pub fn sleeper(ctx: &mut WorkerContext<'_>) -> WorkerResult {
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

pub fn exit_one(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    Ok(WorkerExit::Restart)
}

pub fn exit_zero(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    Ok(WorkerExit::Done)
}

pub fn sleeper_loop(ctx: &WorkerContext<'_>) -> WorkerResult {
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            record(ctx, "stop", "");
            return Ok(WorkerExit::Done);
        }
        // An orphan must go: every later wait would return at once.
        if ctx.wait(None) == latch::Wake::PostmasterDied {
            return Ok(WorkerExit::Restart);
        }
    }
}

pub fn layout_for(config: &SharedConfig) -> Layout {
    config.declare(Layout::builder()).build().expect("layout")
}

pub fn run_postmaster(scenario: &str, configure: Configure) -> i32 {
    let segment = std::env::var("BGW_TEST_SEGMENT").expect("set by the harness");
    let mut pm = Postmaster::builder()
        .segment_name(segment)
        .max_workers(8)
        .crash_kill_timeout(Duration::from_secs(5))
        .build();
    pm.entry("sleeper", sleeper)
        .entry("exit_one", exit_one)
        .entry("exit_zero", exit_zero);
    for spec in configure(scenario, &mut pm) {
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
pub struct Harness {
    pub scenario: &'static str,
    pub dir: PathBuf,
    pub segment: String,
}

/// A passed scenario leaves nothing behind: its scratch directory goes, and
/// so does its segment if a killed postmaster left it (dropped after the
/// `Running`, which is declared later). A failed one keeps both to look at.
impl Drop for Harness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}: kept {} for a look", self.scenario, self.dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = Segment::remove_stale(&self.segment);
    }
}

/// A running postmaster; killed (with its workers, through their
/// death signal) if the scenario fails.
pub struct Running {
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
pub struct Line {
    pub worker: String,
    pub what: String,
    pub pid: u32,
    pub generation: u64,
    pub at_ns: u128,
    pub extra: String,
}

impl Harness {
    /// `scenario` is the short name the postmaster role knows.
    pub fn new(scenario: &'static str) -> Self {
        let dir = std::env::temp_dir().join(format!("bgwtest-{}-{scenario}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Harness {
            scenario,
            segment: format!("bgwtest-{}-{scenario}", std::process::id()),
            dir,
        }
    }

    pub fn start(&self) -> Running {
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

    pub fn events(&self) -> Vec<Line> {
        parse_events(&std::fs::read_to_string(self.dir.join("events.log")).unwrap_or_default())
    }

    /// Waits until `done` holds for the events log, or fails the test.
    pub fn wait_events(&self, what: &str, done: impl Fn(&[Line]) -> bool) -> Vec<Line> {
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

    pub fn attach(&self) -> Segment {
        Segment::attach(&self.segment, &layout_for(&test_shared_config())).expect("attach")
    }
}

pub fn test_shared_config() -> SharedConfig {
    SharedConfig {
        max_workers: 8,
        ..SharedConfig::default()
    }
}

impl Running {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signal the postmaster");
    }

    /// Waits for the postmaster to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn wait_log(&self, needle: &str) {
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

/// Parses the events log.
pub fn parse_events(text: &str) -> Vec<Line> {
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

pub fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its new parent) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn wait_dead(pids: &[u32]) {
    let deadline = Instant::now() + DEADLINE;
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "workers {pids:?} outlived the wait"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn segment_exists(name: &str) -> bool {
    Path::new(&format!("/dev/shm/postmaster.{name}")).exists()
}

pub fn count(events: &[Line], worker: &str, what: &str) -> usize {
    events
        .iter()
        .filter(|l| l.worker == worker && l.what == what)
        .count()
}

/// Waits until `done` holds, or fails the test.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
