//! The child's side of a fork: from the postmaster's copy of the world to a
//! running entry point, and back out through the dead-man switch.
//!
//! In order, right after `fork`:
//!
//! 1. Handlers: SIGTERM sets the stop flag and the worker's latch; SIGQUIT
//!    exits at once with status 2 (the postmaster is resetting or shutting
//!    down immediately, and nothing the worker would still do is wanted).
//!    Every other handled signal goes back to its default, then the signal
//!    mask is cleared (the postmaster blocks the signals it reads from its
//!    signalfd, and the mask survives `fork`).
//! 2. Postmaster death is armed (`PR_SET_PDEATHSIG`, then a `getppid`
//!    check), so latch waits return [`Wake::PostmasterDied`].
//! 3. A shared-memory worker activates the proc slot the postmaster
//!    assigned to it: from here until `mark_exiting`, dying counts as dying
//!    dirty. A worker without shared-memory access unmaps the segment
//!    instead and gets a private latch.
//! 4. The entry point runs; its result becomes the exit status: `Done` is
//!    0 (finished, unregistered), `Restart` or an error is 1 (restart per
//!    policy), a panic is [`PANIC_EXIT_CODE`] (a crash).
//! 5. A shared-memory worker marks its slot exiting, after every other
//!    cleanup, and the process exits.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use latch::{Latch, Wake};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
use proclist::SlotHandle;
use shmem::Segment;
use shmem::sync::{AtomicU32, AtomicUsize, Ordering};

use crate::endpoint::{Endpoint, EndpointError};
use crate::handle::{RegisterDynamicError, WorkerHandle};
use crate::shared::{Shared, SharedConfig};
use crate::spec::{Phase, WorkerSpec};

/// The exit status of a worker whose entry point panicked.
pub const PANIC_EXIT_CODE: i32 = 70;

/// The exit status of a worker that received SIGQUIT.
pub const QUIT_EXIT_CODE: i32 = 2;

/// The exit status of a worker that could not start (its proc slot was
/// taken from it, or its set-up failed): a crash.
pub const SETUP_FAILED_EXIT_CODE: i32 = 3;

/// How an entry point ends, when it ends on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerExit {
    /// Finished for good: exit status 0, the worker is unregistered.
    Done,
    /// Exit status 1: the postmaster restarts it per its policy.
    Restart,
}

/// What an entry point returns. An error is logged and handled as
/// [`WorkerExit::Restart`].
pub type WorkerResult = Result<WorkerExit, Box<dyn std::error::Error>>;

/// An entry point: looked up by name, run in the forked child.
pub type Entry = dyn Fn(&mut WorkerContext<'_>) -> WorkerResult;

/// 1 once SIGTERM arrived.
static STOP_REQUESTED: AtomicU32 = AtomicU32::new(0);
/// Address of the worker's latch, set by the SIGTERM handler; 0 = none.
static STOP_LATCH: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_sigterm(_signal: nix::libc::c_int) {
    // SeqCst for both: the handler may interrupt any code, and the worker's
    // reset → should_stop → wait loop relies on seeing either the flag or
    // the latch set (the latch's own protocol orders the set).
    STOP_REQUESTED.store(1, Ordering::SeqCst);
    let address = STOP_LATCH.load(Ordering::SeqCst);
    if address != 0 {
        // SAFETY: the address was stored from a `&'static`-lived latch (the
        // mapped segment, which a worker never unmaps, or a leaked box) by
        // `run_child` before the signal was unblocked; `Latch::set` is
        // atomics plus a raw futex wake, async-signal-safe.
        unsafe { &*(address as *const Latch) }.set();
    }
}

extern "C" fn on_sigquit(_signal: nix::libc::c_int) {
    // SAFETY: `_exit` is async-signal-safe and takes no pointers.
    unsafe { nix::libc::_exit(QUIT_EXIT_CODE) }
}

/// What the postmaster hands to its child.
pub(crate) struct ChildStart<'e> {
    pub spec: WorkerSpec,
    pub entry: &'e Entry,
    pub segment: Segment,
    pub config: SharedConfig,
    pub slot: Option<SlotHandle>,
    pub postmaster_pid: u32,
    pub handled: SigSet,
}

/// Runs a worker in the freshly forked child; never returns.
pub(crate) fn run_child(start: ChildStart<'_>) -> ! {
    let code = match set_up_and_run(start) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("worker: {message}");
            SETUP_FAILED_EXIT_CODE
        }
    };
    std::process::exit(code)
}

fn set_up_and_run(start: ChildStart<'_>) -> Result<i32, String> {
    let ChildStart {
        spec,
        entry,
        segment,
        config,
        slot,
        postmaster_pid,
        handled,
    } = start;
    install_handlers(&handled)?;
    latch::pmdeath::arm(postmaster_pid).map_err(|e| e.to_string())?;

    // A worker keeps the mapping for its whole life (the SIGTERM handler
    // may touch its latch at any time), so leaking it is the point.
    let (shared, latch): (Option<Shared<'static>>, &'static Latch) = if let Some(handle) = slot {
        let segment: &'static Segment = Box::leak(Box::new(segment));
        let shared = Shared::attach(segment, &config).map_err(|e| e.to_string())?;
        let slot = shared
            .procs
            .activate(handle)
            .map_err(|e| format!("cannot activate proc slot {}: {e}", handle.index))?;
        (Some(shared), slot.latch())
    } else {
        // Unmap: this worker is not trusted with shared memory.
        drop(segment);
        let latch: &'static Latch = Box::leak(Box::new(Latch::new()));
        latch.own().map_err(|e| e.to_string())?;
        (None, latch)
    };
    // SeqCst: pairs with the handler's load (see on_sigterm).
    STOP_LATCH.store(latch as *const Latch as usize, Ordering::SeqCst);
    unblock(&handled)?;

    let mut ctx = WorkerContext {
        spec: &spec,
        shared,
        slot,
        latch,
        postmaster_pid,
    };
    let code = match catch_unwind(AssertUnwindSafe(|| entry(&mut ctx))) {
        Ok(Ok(WorkerExit::Done)) => 0,
        Ok(Ok(WorkerExit::Restart)) => 1,
        Ok(Err(error)) => {
            eprintln!("worker {}: {error}", spec.name());
            1
        }
        Err(_) => PANIC_EXIT_CODE,
    };
    if let (Some(shared), Some(handle)) = (shared, slot) {
        // The dead-man switch: only now is the death clean. A failure means
        // the slot is no longer ours; the postmaster will see that too.
        let _ = shared.procs.mark_exiting(handle);
    }
    Ok(code)
}

fn install_handlers(handled: &SigSet) -> Result<(), String> {
    for signal in handled.iter() {
        let handler = match signal {
            Signal::SIGTERM => SigHandler::Handler(on_sigterm),
            Signal::SIGQUIT => SigHandler::Handler(on_sigquit),
            _ => SigHandler::SigDfl,
        };
        let action = SigAction::new(handler, SaFlags::SA_RESTART, SigSet::empty());
        // SAFETY: the handlers are async-signal-safe (atomics, a futex wake,
        // `_exit`); SigDfl has no code.
        unsafe { sigaction(signal, &action) }.map_err(|e| format!("sigaction({signal}): {e}"))?;
    }
    Ok(())
}

fn unblock(handled: &SigSet) -> Result<(), String> {
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(handled), None)
        .map_err(|e| format!("sigprocmask: {e}"))
}

/// What a running worker can reach: its spec, the segment (if it has
/// shared-memory access), its latch, and the postmaster.
pub struct WorkerContext<'a> {
    spec: &'a WorkerSpec,
    shared: Option<Shared<'static>>,
    slot: Option<SlotHandle>,
    latch: &'static Latch,
    postmaster_pid: u32,
}

impl std::fmt::Debug for WorkerContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("name", &self.spec.name())
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl WorkerContext<'_> {
    /// The worker's name.
    pub fn name(&self) -> &str {
        self.spec.name()
    }

    /// The argument bytes from its spec.
    pub fn arg(&self) -> &[u8] {
        self.spec.arg_bytes()
    }

    /// The postmaster's regions, for a worker with shared-memory access.
    pub fn shared(&self) -> Option<&Shared<'static>> {
        self.shared.as_ref()
    }

    /// The segment, for a worker with shared-memory access.
    pub fn segment(&self) -> Option<&'static Segment> {
        self.shared.map(|s| s.segment)
    }

    /// The proc slot this worker runs in, for a worker with shared-memory
    /// access.
    pub fn slot(&self) -> Option<SlotHandle> {
        self.slot
    }

    /// The worker's own latch: set by SIGTERM, by postmaster notifications
    /// and by peers.
    pub fn latch(&self) -> &'static Latch {
        self.latch
    }

    /// The postmaster's pid.
    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster_pid
    }

    /// Whether the postmaster asked this worker to stop (SIGTERM). Check it
    /// after each `latch().reset()` and before each wait.
    pub fn should_stop(&self) -> bool {
        stop_requested()
    }

    /// Waits on the worker's latch until `deadline`, returning early when
    /// it is set, the postmaster dies, or a stop is requested (the SIGTERM
    /// handler sets the latch). The caller resets the latch and checks for
    /// work first, as with any latch.
    pub fn wait(&self, deadline: Option<Instant>) -> Wake {
        // A latch we own never fails to wait; if it did, report it as a
        // wake so the caller's loop rechecks everything.
        self.latch.wait(deadline).unwrap_or(Wake::Set)
    }

    /// The segment generation (bumped by every reset), if mapped.
    pub fn generation(&self) -> Option<u64> {
        self.shared.map(|s| s.segment.generation())
    }

    /// Reports the worker ready: `wait_ready` callers and ordered groups
    /// go on. A worker without shared-memory access counts as ready once
    /// it runs.
    pub fn ready(&self) {
        if let (Some(shared), Some(slot)) = (self.shared, self.slot)
            && let Some(board) = shared.board.get(slot.index as usize)
        {
            board.set_ready(slot.generation);
            signal_postmaster(self.postmaster_pid);
        }
    }

    /// Feeds the watchdog (see `WorkerSpec::watchdog`). Cheap: one store.
    pub fn heartbeat(&self) {
        if let (Some(shared), Some(slot)) = (self.shared, self.slot)
            && let Some(proc) = shared.procs.get(slot.index)
        {
            proc.beat(crate::status::monotonic_ns());
        }
    }

    /// Enters a critical section: until the guard drops, a crash of this
    /// worker resets the segment. `None` without shared-memory access.
    pub fn critical(&self) -> Option<CriticalGuard<'_>> {
        let shared = self.shared.as_ref()?;
        let slot = shared.procs.get(self.slot?.index)?;
        slot.enter_critical();
        Some(CriticalGuard { slot })
    }

    /// Opens this worker's [`Endpoint`]: its inbox, and the names it
    /// registers. One at a time (a second is [`EndpointError::Inbox`]
    /// until the first drops). Its [`recv`](Endpoint::recv) returns early
    /// when the postmaster asks the worker to stop.
    pub fn endpoint(&self) -> Result<Endpoint<'static>, EndpointError> {
        let (Some(shared), Some(slot)) = (self.shared, self.slot) else {
            return Err(EndpointError::NoSharedMemory);
        };
        Endpoint::open(shared, slot, self.latch, stop_requested)
    }

    /// Registers a dynamic worker, signals the postmaster, and returns a
    /// handle to it. Needs shared-memory access.
    pub fn register_dynamic(
        &self,
        spec: &WorkerSpec,
    ) -> Result<WorkerHandle<'static>, RegisterDynamicError> {
        let shared = self.shared.ok_or(RegisterDynamicError::NoSharedMemory)?;
        let handle = WorkerHandle::submit(shared, spec, self.slot.map(|s| s.index))?;
        signal_postmaster(self.postmaster_pid);
        Ok(handle)
    }

    /// Asks the postmaster to announce `phase` (workers waiting for it then
    /// start). Needs shared-memory access; returns whether it was sent.
    pub fn announce_phase(&self, phase: Phase) -> bool {
        let Some(shared) = self.shared else {
            return false;
        };
        shared.control.request_phase(phase);
        signal_postmaster(self.postmaster_pid);
        true
    }
}

/// Whether SIGTERM arrived.
fn stop_requested() -> bool {
    // SeqCst: pairs with the handler's store (see on_sigterm).
    STOP_REQUESTED.load(Ordering::SeqCst) != 0
}

/// Tells the postmaster to look at shared memory (SIGUSR1).
pub(crate) fn signal_postmaster(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        // A dead postmaster cannot be told anything; the caller's next
        // latch wait reports its death.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGUSR1);
    }
}

/// A critical section of a worker: see [`WorkerContext::critical`].
#[derive(Debug)]
pub struct CriticalGuard<'a> {
    slot: &'a proclist::ProcSlot,
}

impl Drop for CriticalGuard<'_> {
    fn drop(&mut self) {
        self.slot.exit_critical();
    }
}
