//! A crash, the segment reset it causes, and every worker coming back: the
//! postmaster's central promise, watched from outside through the public
//! API.
//!
//! ```text
//! cargo run --release --example crash_and_return
//! ```
//!
//! What happens:
//!
//! 1. This process forks; the child becomes the postmaster (it must run in
//!    a single-threaded process, and this one has not started any thread).
//!    It has two static workers: `keeper`, which reports itself in an
//!    application region of the segment (the *board*) and sleeps, and
//!    `launcher`, which registers the dynamic worker `helper` from inside
//!    the postmaster's world (`ctx.register_dynamic`), waits until it runs,
//!    and finishes (a dynamic worker outlives its registrant, as in
//!    PostgreSQL).
//! 2. The parent is the watcher: it attaches to the named segment and waits
//!    until `keeper` and `helper` have both reported themselves in segment
//!    generation 1.
//! 3. It SIGKILLs `helper`, a shared-memory worker. The postmaster cannot
//!    know what a killed worker left half-done in shared memory, so it
//!    SIGQUITs every other worker, waits until all are reaped, zeroes the
//!    segment (generation 2), and starts again, at once, every worker whose
//!    policy allows it: the static `keeper` and the dynamic `helper` alike.
//! 4. The watcher sees the generation change and both workers report again
//!    with new pids in generation 2, then asks for a smart shutdown
//!    (SIGTERM) and checks that the postmaster exits 0 and removes its
//!    segment.
//!
//! Lines starting `postmaster:` are the postmaster's own log. The program
//! exits non-zero if any step does not happen within [`DEADLINE`].

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid};
use postmaster::bgw::{
    Postmaster, Restart, Shared, SharedConfig, WorkerContext, WorkerExit, WorkerResult, WorkerSpec,
};
use postmaster::latch::Wake;
use postmaster::shmem::sync::{AtomicU32, AtomicU64, Ordering};
use postmaster::shmem::{AttachError, Layout, LayoutBuilder, Segment, ShmSafe};

/// How long any step may take before the program gives up.
const DEADLINE: Duration = Duration::from_secs(20);

/// Workers registered at once (keeper, launcher, helper) and a spare.
const MAX_WORKERS: u32 = 4;

/// Region name of the [`Board`].
const BOARD: &str = "example.board";

/// Board rows: which worker reports where.
const KEEPER: usize = 0;
const HELPER: usize = 1;
const NAMES: [&str; 2] = ["keeper", "helper"];

/// What one worker said about itself when it started.
#[repr(C)]
struct Sighting {
    /// The segment generation it started in; 0 = not yet (a reset zeroes
    /// it). Written last, with Release.
    generation: AtomicU64,
    /// Its pid.
    pid: AtomicU32,
    _pad: u32,
}

/// The application's region: one row per watched worker.
#[repr(C, align(128))]
struct Board {
    rows: [Sighting; 2],
}

// SAFETY: repr(C) of atomic integers and a plain u32: every bit pattern,
// all-zero included, is a valid value; no pointers; shared mutation only
// through atomics.
unsafe impl ShmSafe for Board {}

const _: () = assert!(size_of::<Sighting>() == 16 && align_of::<Board>() == 128);

fn add_board(builder: LayoutBuilder) -> LayoutBuilder {
    builder.region::<Board>(BOARD)
}

fn main() -> ExitCode {
    let name = format!("crash-and-return-{}", std::process::id());
    let watcher = getpid();
    // SAFETY: no thread has been started, so the child is a complete copy
    // of this process; it runs the postmaster and exits, never returning
    // here.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => std::process::exit(run_postmaster(&name, watcher)),
        Ok(ForkResult::Parent { child }) => {
            let mut pm = PostmasterChild {
                pid: child,
                name,
                exited: false,
            };
            match watch(&mut pm) {
                Ok(()) => {
                    println!("watcher: everything came back; done");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("watcher: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
            // `pm` drops here: a postmaster still running is stopped.
        }
        Err(e) => {
            eprintln!("fork: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// The postmaster and its workers (the forked child).

fn run_postmaster(name: &str, watcher: Pid) -> i32 {
    // If the watcher dies, shut down at once rather than run unwatched.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGQUIT).is_err() || getppid() != watcher {
        return 1;
    }
    let mut pm = Postmaster::builder()
        .segment_name(name)
        .max_workers(MAX_WORKERS)
        .regions(add_board)
        .build();
    pm.entry("reporter", reporter).entry("launcher", launcher);
    // A restart delay far longer than this program runs: only the reset's
    // "restart at once" rule can bring the keeper back in time.
    let keeper = WorkerSpec::new("keeper")
        .entry("reporter")
        .arg([KEEPER as u8])
        .restart(Restart::After(Duration::from_secs(600)));
    let registered = pm
        .register(keeper)
        .and_then(|_| pm.register(WorkerSpec::new("launcher")));
    if let Err(e) = registered {
        eprintln!("postmaster: {e}");
        return 1;
    }
    match pm.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postmaster: {e}");
            1
        }
    }
}

/// `keeper` and `helper`: write (pid, generation) to the board row named
/// by the argument, then sleep until asked to stop.
fn reporter(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let segment = ctx.segment().ok_or("the reporter needs shared memory")?;
    let board = segment.region::<Board>(BOARD)?;
    let row = ctx
        .arg()
        .first()
        .and_then(|&i| board.rows.get(i as usize))
        .ok_or("the argument names no board row")?;
    let generation = segment.generation();
    println!(
        "{}: running as pid {} in segment generation {generation}",
        ctx.name(),
        std::process::id()
    );
    // Relaxed: published by the Release store of the generation below.
    row.pid.store(std::process::id(), Ordering::Relaxed);
    // Release: pairs with the watcher's Acquire load in `sightings`.
    row.generation.store(generation, Ordering::Release);
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            println!("{}: asked to stop; exiting", ctx.name());
            return Ok(WorkerExit::Done);
        }
        if ctx.wait(None) == Wake::PostmasterDied {
            return Ok(WorkerExit::Restart);
        }
    }
}

/// `launcher`: registers the dynamic `helper`, waits until it runs, and
/// finishes for good (exit 0), leaving `helper` registered.
fn launcher(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let helper = WorkerSpec::new("helper")
        .entry("reporter")
        .arg([HELPER as u8])
        .restart(Restart::After(Duration::from_secs(600)));
    let handle = ctx.register_dynamic(&helper)?;
    let pid = handle.wait_started(Some(Instant::now() + DEADLINE))?;
    println!("launcher: registered helper dynamically; it runs as pid {pid}; my work is done");
    Ok(WorkerExit::Done)
}

// ---------------------------------------------------------------------------
// The watcher (the parent).

/// The forked postmaster; dropping it stops one that is still running.
struct PostmasterChild {
    pid: Pid,
    name: String,
    exited: bool,
}

impl PostmasterChild {
    /// Its exit code, if it has exited.
    fn try_exit_code(&mut self) -> Option<i32> {
        if self.exited {
            return None;
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => {
                self.exited = true;
                Some(code)
            }
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                self.exited = true;
                Some(128 + signal as i32)
            }
            _ => None,
        }
    }
}

impl Drop for PostmasterChild {
    fn drop(&mut self) {
        if !self.exited {
            // Immediate shutdown; if even that hangs, kill it (its workers
            // follow through their death signal).
            let _ = kill(self.pid, Signal::SIGQUIT);
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.try_exit_code().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !self.exited {
                let _ = kill(self.pid, Signal::SIGKILL);
                let _ = waitpid(self.pid, None);
            }
        }
        // Only a postmaster that was killed leaves its segment behind.
        let _ = Segment::remove_stale(&self.name);
    }
}

/// Polls `check` every few milliseconds until it yields a value; fails if
/// the postmaster exits or the deadline passes first.
fn wait_until<T>(
    pm: &mut PostmasterChild,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if let Some(code) = pm.try_exit_code() {
            return Err(format!("the postmaster exited with {code} before {what}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not happen within {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pids of keeper and helper once both reported `generation`.
fn sightings(board: &Board, generation: u64) -> Option<[u32; 2]> {
    let mut pids = [0; 2];
    for (pid, row) in pids.iter_mut().zip(&board.rows) {
        // Acquire: pairs with the reporter's Release store.
        if row.generation.load(Ordering::Acquire) != generation {
            return None;
        }
        // Relaxed: ordered by the Acquire load above.
        *pid = row.pid.load(Ordering::Relaxed);
    }
    Some(pids)
}

fn watch(pm: &mut PostmasterChild) -> Result<(), String> {
    let shared_config = SharedConfig {
        max_workers: MAX_WORKERS,
        ..SharedConfig::default()
    };
    let layout = add_board(shared_config.declare(Layout::builder()))
        .build()
        .map_err(|e| e.to_string())?;
    let name = pm.name.clone();
    let segment = wait_until(pm, "the segment appeared", || {
        Segment::attach(&name, &layout).ok()
    })?;
    let board = segment.region::<Board>(BOARD).map_err(|e| e.to_string())?;
    let shared = Shared::attach(&segment, &shared_config).map_err(|e| e.to_string())?;

    let before = segment.generation();
    let pids = wait_until(pm, "keeper and helper ran", || sightings(board, before))?;
    println!(
        "watcher: generation {before}: keeper is pid {}, helper is pid {}",
        pids[KEEPER], pids[HELPER]
    );

    println!(
        "watcher: SIGKILL to helper (pid {}), a shared-memory worker",
        pids[HELPER]
    );
    kill(Pid::from_raw(pids[HELPER] as i32), Signal::SIGKILL)
        .map_err(|e| format!("kill helper: {e}"))?;
    let after = wait_until(pm, "the segment was reset", || {
        let generation = segment.generation();
        (generation > before).then_some(generation)
    })?;
    println!("watcher: segment generation {before} -> {after}: shared memory was reset");

    let again = wait_until(pm, "keeper and helper came back", || {
        sightings(board, after)
    })?;
    for (row, name) in NAMES.iter().enumerate() {
        if again[row] == pids[row] {
            return Err(format!(
                "{name} reports generation {after} but never restarted"
            ));
        }
        println!(
            "watcher: {name} is back as pid {} (was {}) in generation {after}",
            again[row], pids[row]
        );
    }
    let resets = shared.control.resets();
    if resets != 1 {
        return Err(format!(
            "the postmaster counted {resets} resets, expected 1"
        ));
    }
    println!("watcher: the postmaster counted {resets} reset");

    println!("watcher: SIGTERM to the postmaster (smart shutdown)");
    kill(pm.pid, Signal::SIGTERM).map_err(|e| format!("signal the postmaster: {e}"))?;
    let deadline = Instant::now() + DEADLINE;
    let code = loop {
        if let Some(code) = pm.try_exit_code() {
            break code;
        }
        if Instant::now() > deadline {
            return Err("the postmaster did not exit after SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if code != 0 {
        return Err(format!("the postmaster exited with {code}"));
    }
    if !matches!(
        Segment::attach(&pm.name, &layout),
        Err(AttachError::NotFound { .. })
    ) {
        return Err("the postmaster left its segment behind".into());
    }
    println!("watcher: the postmaster exited 0 and removed its segment");
    Ok(())
}
