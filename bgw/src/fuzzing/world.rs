//! The outside world the core believes in, played by the tests
//! (`bgw/tests/core_explore.rs`) and the `core_events` fuzz target: a fake
//! clock, the children the harness believes alive and what each was sent,
//! the registrations it made, and whether a segment reset is owed.
//!
//! [`World::apply`] plays one [`Step`] the way the driver would: it feeds
//! the event (or advances the clock and ticks), then drains every queued
//! action, answering each `Fork` at once with `Forked` or `ForkFailed` (the
//! driver's contract) unless the world is *lagging*, in which case the
//! outcome is a later step of its own (the core claims not to rely on the
//! contract, so the lagging world holds it to that). Every action is
//! checked against the model as it is drained ([`World::observe`]), and
//! the core's whole state against the model after every step.
//!
//! The model is written from the design (DESIGN.md, "The postmaster";
//! issue 6) and the rules `core.rs` documents, not from its code; where it
//! predicts a transition (a crash is reported or contained, a worker is
//! unregistered, a start is due) a comment says why. Two documented
//! choices of the core are modelled as they stand: a crash during a
//! shutdown is not reported and SIGQUITs nobody ("on its way out anyway";
//! PostgreSQL would SIGQUIT the others), and a phase announced while a
//! reset is under way is forgotten when the reset completes.
//!
//! # Operator commands
//!
//! [`Step::Control`] plays an operator's stop, start or restart
//! (`core::Control`). From the core's documentation: a stale id acts on
//! nothing, and a worker asked to terminate ignores the operator. Stop
//! SIGTERMs a running child (SIGKILL after its shutdown timeout) and keeps
//! the worker stopped (`WorkerInfo::suspended`), whatever its restart
//! type, until Start: it is never forked, and whatever its exit (exit 0,
//! a crash, during a reset) its registration does not end; while the
//! launcher runs, an exit that is not a crash is no failure: no restart
//! counted (`CoreStats::restarts`), no restart delay. Start lifts the stop
//! and makes a waiting worker due at once (a restart delay or fork retry
//! is skipped; a restart=never worker that ran gets another run); of a
//! child still on its way out after a Stop, it asks for a restart.
//! Restart of a running child SIGTERMs it and, after its exit (no failure
//! either), forks it again at once; of a waiting worker it is a Start. At
//! rest a stopped worker is neither running nor due. A crash of a stopped
//! worker is a crash: the reset decides, and a reset starts no stopped
//! worker and keeps it, restart=never included.
//!
//! One choice the documentation leaves open is modelled as the core makes
//! it: while a reset or a shutdown is under way a command sends no signal
//! (the reset's SIGQUIT or the shutdown's order stands) but still takes (a
//! worker stopped during a reset is not started by it).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use crate::core::{
    Action, Control, Core, CoreConfig, CoreStats, Event, ExitStatus, PmState, RegisterError,
    RunState, ShutdownMode, Sig, SlotReport, WorkerId, WorkerStatus,
};
use crate::spec::{OnCrash, Phase, Restart, WorkerSpec};

use super::small_map::SmallMap;

/// SIGQUIT → SIGKILL, for crashes and immediate shutdown.
pub const CRASH_KILL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed fork waits before its retry.
pub const FORK_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Three static workers and room for one dynamic one: a second dynamic
/// registration is refused as `Full`.
pub const MAX_WORKERS: u32 = 4;
/// The first pid the world hands out; pids below it are never ours.
const FIRST_PID: u32 = 1000;
/// A pid the core never heard of (a stranger reaped, or one reaped twice).
pub const STRANGER_PID: u32 = 7;
/// Quiescing gives up (and fails) after this many steps.
const QUIESCE_LIMIT: usize = 400;

/// The core's configuration in every exploration.
pub fn core_config() -> CoreConfig {
    CoreConfig {
        max_workers: MAX_WORKERS,
        initial_phase: Phase::PostmasterStart,
        crash_kill_timeout: CRASH_KILL_TIMEOUT,
        fork_retry_delay: FORK_RETRY_DELAY,
        ..CoreConfig::default()
    }
}

/// The static workers: a shared-memory one restarted after 1 s, one
/// without shared memory restarted at once, and a shared-memory one that is
/// never restarted and waits for the last phase.
pub fn static_specs() -> Vec<WorkerSpec> {
    vec![
        WorkerSpec::new("alpha")
            .shmem(true)
            .restart(Restart::After(Duration::from_secs(1)))
            .start(Phase::PostmasterStart)
            .shutdown_timeout(Duration::from_secs(3)),
        WorkerSpec::new("beta")
            .shmem(false)
            .restart(Restart::After(Duration::ZERO))
            .start(Phase::ConsistentState),
        WorkerSpec::new("gamma")
            .shmem(true)
            .restart(Restart::Never)
            .start(Phase::RecoveryFinished)
            .shutdown_timeout(Duration::from_secs(1)),
    ]
}

/// The workers [`World::choices`] offers operator commands for.
const CONTROLLED: &[&str] = &["alpha", "gamma"];

/// Dynamic registrations take the first of these names not in use.
const DYNAMIC_NAMES: [&str; 3] = ["dyn-a", "dyn-b", "dyn-c"];

/// The spec of a dynamic registration: variant 0 is a shared-memory worker
/// whose clean crashes are contained (restarted alone, no reset) and which
/// restarts after a quarter second; variant 1 has no shared memory, waits
/// for a consistent state and restarts after half a second; variant 2 is a
/// shared-memory worker that is never restarted.
pub fn dynamic_spec(variant: u8, name: &str) -> WorkerSpec {
    match variant % 3 {
        0 => WorkerSpec::new(name)
            .shmem(true)
            .on_crash(OnCrash::Contain)
            .restart(Restart::After(Duration::from_millis(250)))
            .notify(true)
            .shutdown_timeout(Duration::from_millis(1500)),
        1 => WorkerSpec::new(name)
            .shmem(false)
            .restart(Restart::After(Duration::from_millis(500)))
            .start(Phase::ConsistentState)
            .notify(true),
        _ => WorkerSpec::new(name)
            .shmem(true)
            .restart(Restart::Never)
            .notify(true),
    }
}

/// Whether a worker that ran and exited (`finished`: with 0) or crashed
/// starts again: never for restart=never, after its delay unless it
/// finished for restart=after.
fn restarts(spec: &WorkerSpec, finished: bool) -> bool {
    spec.restart_policy().restarts_after(finished)
}

/// Whether the worker may run at most once.
fn runs_once(spec: &WorkerSpec) -> bool {
    !spec.restart_policy().restarts_after(false)
}

/// One thing the world does to the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Advance the clock, then `tick`.
    Tick(Duration),
    /// A live child is reaped.
    Exit {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// What its proc slot said.
        slot: SlotReport,
    },
    /// A pid that is not ours is reaped.
    StrangerExit,
    /// The next fork fails.
    FailNextFork,
    /// Lagging world only: report the oldest outstanding fork's outcome.
    ReportFork {
        /// Forked, or ForkFailed.
        ok: bool,
    },
    /// A shutdown signal.
    Shutdown(ShutdownMode),
    /// The application announces a phase.
    Phase(Phase),
    /// Terminate a worker (current or stale: the world knows which).
    Terminate(WorkerId),
    /// The driver finds shared state corrupt.
    Corrupt,
    /// The driver says the segment reset is done (owed or not).
    ResetDone,
    /// Register a dynamic worker of this variant.
    Register(u8),
    /// Register a second worker under a name in use.
    RegisterDuplicate(String),
    /// Let the world come to rest and check that every registration ended
    /// started, or stopped with its registrant notified.
    Quiesce,
    /// An operator stops, starts or restarts a worker (current or stale:
    /// the world knows which).
    Control {
        /// The worker.
        worker: WorkerId,
        /// What the operator asks.
        op: Control,
    },
}

/// A child the world believes alive.
#[derive(Clone, Debug)]
struct Child {
    worker: WorkerId,
    /// Start order (the Fork's position), for smart shutdown.
    start_seq: u64,
    /// SIGTERM, SIGQUIT or SIGKILL was sent.
    signalled: bool,
    /// Lagging world only: forked before a crash, reported after the
    /// crash and a shutdown. The core no longer knows of the crash then
    /// and stops it as the shutdown mode says, SIGTERM included (a real
    /// driver reports every fork before anything else, so this cannot
    /// happen there).
    late_after_crash: bool,
    /// SIGQUIT was sent.
    quit: bool,
    /// SIGKILL was sent.
    killed: bool,
    /// The earliest moment a SIGKILL is allowed: each stop signal sent at
    /// `t` allows it from `t + its timeout`.
    kill_at: Option<Duration>,
}

/// A registration the world made, for its whole life.
#[derive(Clone, Debug)]
struct Reg {
    spec: WorkerSpec,
    forks_ok: u32,
    forks_failed: u32,
    terminated: bool,
    unregistered: bool,
    /// No start is allowed before this (restart delay, fork retry).
    earliest: Duration,
    /// `Status::Started` seen.
    started: u32,
    /// `Status::Stopped` seen.
    stopped: u32,
    exits: u32,
    /// It exited with status 0 (finished), and that exit was its own
    /// (not the answer to an operator's stop or restart).
    finished: bool,
    /// Registration order: among workers due at once, the core starts the
    /// earliest registered.
    reg_seq: u64,
    /// Stopped by an operator ([`Control::Stop`]) and not started since:
    /// never forked, and its exit while the launcher runs is no failure.
    suspended: bool,
    /// Restarted by an operator ([`Control::Restart`]) while it ran: its
    /// exit is no failure, and it is due again at once.
    restart_asked: bool,
    /// Successful forks since it was registered or an operator last
    /// started it: a restart=never worker runs once per such start.
    forks_since_start: u32,
    /// Restarts after failures (the core's `WorkerInfo::restarts`).
    restarts: u64,
}

/// What a run did, to show that random runs reach the interesting states.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Children forked.
    pub forks: u64,
    /// Forks that failed.
    pub fork_failures: u64,
    /// Crashes the core reported.
    pub crashes: u64,
    /// Crashes contained without a reset.
    pub contained: u64,
    /// Segment resets completed.
    pub resets: u64,
    /// SIGKILLs sent.
    pub kills: u64,
    /// Registrations ended.
    pub unregistered: u64,
    /// Runs that ended in Exit.
    pub exits: u64,
    /// Operator commands played on a current worker that does not ignore
    /// them.
    pub controls: u64,
    /// Exits that answered an operator's stop or restart (no failure).
    pub operator_exits: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.forks += other.forks;
        self.fork_failures += other.fork_failures;
        self.crashes += other.crashes;
        self.contained += other.contained;
        self.resets += other.resets;
        self.kills += other.kills;
        self.unregistered += other.unregistered;
        self.exits += other.exits;
        self.controls += other.controls;
        self.operator_exits += other.operator_exits;
    }
}

/// The world: the core plus the harness's model of everything around it.
pub struct World {
    /// The core under test.
    pub core: Core,
    /// The fake clock.
    pub now: Duration,
    /// Steps applied so far (quiescing's included).
    pub steps_applied: u64,
    /// What happened so far.
    pub tally: Tally,
    /// Check the core's whole state against the model after each step
    /// (replays of a prefix already checked turn it off). The actions are
    /// always checked: they update the model.
    pub check_whole_state: bool,
    lagging: bool,
    next_pid: u32,
    fail_next_fork: bool,
    /// Lagging world: forks asked for whose outcome is not reported yet.
    pending_forks: VecDeque<(WorkerId, u64)>,
    live: SmallMap<u32, Child>,
    regs: SmallMap<WorkerId, Reg>,
    last_unregistered: Option<WorkerId>,
    phase: Phase,
    /// A crash was reported while running; cleared by ResetDone.
    crash_pending: bool,
    /// ResetSegment was asked for and ResetDone not yet delivered.
    reset_owed: bool,
    resets_asked: u64,
    /// Segment generation: ResetDone deliveries the core asked for.
    generation: u64,
    /// The most immediate shutdown so far.
    shutdown: Option<ShutdownMode>,
    exited: bool,
    next_start_seq: u64,
    /// Per drain: forks seen.
    forks_this_drain: u32,
    /// Per step: the event is a crash the core must report.
    crash_expected: bool,
    crash_reported: bool,
    /// Per step: the worker whose crash the core must contain.
    contain_expected: Option<WorkerId>,
    unregistered_this_step: Vec<WorkerId>,
    actions_this_step: usize,
    /// Restarts after failures, all registrations together (the core's
    /// `CoreStats::restarts`).
    restarts: u64,
    /// An operator command acted on a current worker: from then on
    /// [`World::choices`] offers more of them.
    operator: bool,
}

impl World {
    /// A core with the static workers registered, at time zero. A lagging
    /// world reports fork outcomes as separate, later steps.
    pub fn new(lagging: bool) -> World {
        let mut core = Core::new(core_config());
        let mut regs = SmallMap::new();
        for (seq, spec) in static_specs().into_iter().enumerate() {
            let id = core
                .register(spec.clone(), false)
                .expect("static registration");
            regs.insert(id, Reg::new(spec, seq as u64));
        }
        World {
            core,
            now: Duration::ZERO,
            steps_applied: 0,
            tally: Tally::default(),
            check_whole_state: true,
            lagging,
            next_pid: FIRST_PID,
            fail_next_fork: false,
            pending_forks: VecDeque::new(),
            live: SmallMap::new(),
            regs,
            last_unregistered: None,
            phase: Phase::PostmasterStart,
            crash_pending: false,
            reset_owed: false,
            resets_asked: 0,
            generation: 0,
            shutdown: None,
            exited: false,
            next_start_seq: 0,
            forks_this_drain: 0,
            crash_expected: false,
            crash_reported: false,
            contain_expected: None,
            unregistered_this_step: Vec::new(),
            actions_this_step: 0,
            restarts: 0,
            operator: false,
        }
    }

    /// Whether the core has exited.
    pub fn exited(&self) -> bool {
        self.exited
    }

    /// Pids the world believes alive.
    pub fn live_pids(&self) -> Vec<u32> {
        self.live.keys().copied().collect()
    }

    /// Whether `pid` is a live child of a worker with shared-memory access.
    pub fn has_shmem_child(&self, pid: u32) -> bool {
        self.live
            .get(&pid)
            .is_some_and(|c| self.reg(c.worker).spec.has_shmem())
    }

    /// Lagging world: whether a fork's outcome is still to be reported.
    pub fn fork_outstanding(&self) -> bool {
        !self.pending_forks.is_empty()
    }

    /// Whether the launcher is neither resetting nor shutting down.
    fn running(&self) -> bool {
        !self.exited && self.shutdown.is_none() && !self.crash_pending
    }

    fn reg(&self, id: WorkerId) -> &Reg {
        &self.regs[&id]
    }

    fn child_of(&self, id: WorkerId) -> Option<(u32, &Child)> {
        self.live
            .iter()
            .find(|(_, c)| c.worker == id)
            .map(|(pid, c)| (*pid, c))
    }

    fn has_child_or_fork(&self, id: WorkerId) -> bool {
        self.child_of(id).is_some() || self.pending_forks.iter().any(|(w, _)| *w == id)
    }

    /// Registrations that are neither unregistered nor stale.
    pub fn current_ids(&self) -> Vec<WorkerId> {
        self.regs
            .iter()
            .filter(|(_, r)| !r.unregistered)
            .map(|(id, _)| *id)
            .collect()
    }

    /// An id that names nothing: the last one unregistered, or one with a
    /// generation never handed out.
    pub fn stale_id(&self) -> WorkerId {
        self.last_unregistered.unwrap_or(WorkerId {
            index: 0,
            generation: 0,
        })
    }

    fn is_stale(&self, id: WorkerId) -> bool {
        self.regs.get(&id).is_none_or(|r| r.unregistered)
    }

    /// The workers the model says the launcher must start now (it starts
    /// one per tick).
    fn ready(&self) -> Vec<WorkerId> {
        if !self.running() {
            return Vec::new();
        }
        self.regs
            .iter()
            .filter(|(id, r)| self.startable(**id, r) && r.earliest <= self.now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether the model lets a registration start, its delay aside: not
    /// unregistered nor terminated nor stopped by an operator, not
    /// running, its phase reached, and not a worker that runs once and ran
    /// (since it was registered, or an operator last started it).
    fn startable(&self, id: WorkerId, r: &Reg) -> bool {
        !r.unregistered
            && !r.terminated
            && !r.suspended
            && !self.has_child_or_fork(id)
            && r.spec.start_phase() <= self.phase
            && (r.forks_since_start == 0 || !runs_once(&r.spec))
    }

    /// A readable line per child and registration, for failure messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "now={:?} core={:?} phase={:?} shutdown={:?} crash_pending={} reset_owed={} exited={}\n",
            self.now,
            self.core.state(),
            self.core.phase(),
            self.shutdown,
            self.crash_pending,
            self.reset_owed,
            self.exited
        );
        for (pid, c) in self.live.iter() {
            let _ = writeln!(s, "  pid {pid}: {c:?}");
        }
        for (id, r) in self.regs.iter() {
            let core_state = self.core.worker(*id).map(|w| w.state);
            let _ = writeln!(
                s,
                "  {id} {}: forks_ok={} failed={} terminated={} unregistered={} exits={} suspended={} restart_asked={} core={core_state:?}",
                r.spec.name(),
                r.forks_ok,
                r.forks_failed,
                r.terminated,
                r.unregistered,
                r.exits,
                r.suspended,
                r.restart_asked
            );
        }
        s
    }

    /// Plays one step, then checks the core against the model.
    pub fn apply(&mut self, step: &Step) -> Result<(), String> {
        self.steps_applied += 1;
        self.crash_expected = false;
        self.crash_reported = false;
        self.contain_expected = None;
        self.unregistered_this_step.clear();
        self.actions_this_step = 0;
        match step {
            Step::Tick(dt) => self.tick(*dt)?,
            Step::Exit { pid, status, slot } => self.child_exit(*pid, *status, *slot)?,
            Step::StrangerExit => self.no_op(Event::ChildExited {
                pid: STRANGER_PID,
                status: ExitStatus::Code(1),
                slot: SlotReport::Dirty,
            })?,
            Step::FailNextFork => self.fail_next_fork = true,
            Step::ReportFork { ok } => {
                let (worker, seq) = self
                    .pending_forks
                    .pop_front()
                    .ok_or("harness: no fork outstanding")?;
                self.report_fork(worker, seq, *ok);
                self.drain(false)?;
            }
            Step::Shutdown(mode) => self.shutdown(*mode)?,
            Step::Phase(phase) => {
                if self.exited || *phase <= self.phase {
                    self.no_op(Event::PhaseReached(*phase))?;
                } else {
                    self.phase = *phase;
                    self.core.handle(self.now, Event::PhaseReached(*phase));
                    self.drain(false)?;
                    if self.actions_this_step != 0 {
                        return Err("announcing a phase queued actions".into());
                    }
                }
            }
            Step::Terminate(id) => self.terminate(*id)?,
            Step::Corrupt => {
                self.crash_expected = self.crash_must_be_reported();
                self.core.handle(self.now, Event::SharedStateCorrupt);
                self.drain(false)?;
                self.check_crash_reported()?;
            }
            Step::ResetDone => self.reset_done()?,
            Step::Register(variant) => self.register(*variant)?,
            Step::RegisterDuplicate(name) => self.register_duplicate(name)?,
            Step::Control { worker, op } => self.control(*worker, *op)?,
            Step::Quiesce => return self.quiesce(),
        }
        if self.check_whole_state {
            self.check_state()
        } else {
            Ok(())
        }
    }

    /// Whether the model says `step` changes nothing at all (the core
    /// must ignore it; [`World::apply`] checks that it does).
    pub fn predicts_no_change(&self, step: &Step) -> bool {
        match step {
            Step::StrangerExit | Step::RegisterDuplicate(_) => true,
            Step::Phase(phase) => self.exited || *phase <= self.phase,
            Step::Shutdown(mode) => self.exited || self.shutdown.is_some_and(|m| *mode <= m),
            Step::Terminate(id) => self.exited || self.is_stale(*id),
            Step::ResetDone => !(self.reset_owed && self.shutdown.is_none() && !self.exited),
            Step::Control { worker, op } => {
                if self.exited || self.is_stale(*worker) || self.reg(*worker).terminated {
                    return true;
                }
                let r = self.reg(*worker);
                let busy = self.has_child_or_fork(*worker);
                // The first command that acts changes `operator`.
                self.operator
                    && match op {
                        // Already stopped: its child (if any) was signalled.
                        Control::Stop => r.suspended,
                        // Not stopped, and running or being started already.
                        Control::Start => !r.suspended && busy,
                        Control::Restart => {
                            !r.suspended
                                && self.pending_forks.iter().any(|(w, _)| w == worker)
                                && self.child_of(*worker).is_none()
                        }
                    }
            }
            _ => false,
        }
    }

    /// An event the core must ignore entirely: no action, no change.
    pub fn no_op(&mut self, event: Event) -> Result<(), String> {
        let before = self.snapshot();
        self.core.handle(self.now, event.clone());
        self.drain(false)?;
        if self.actions_this_step != 0 {
            return Err(format!("{event:?} should be ignored but queued actions"));
        }
        let after = self.snapshot();
        if before != after {
            return Err(format!(
                "{event:?} should be ignored but changed the core:\nbefore {before:?}\nafter  {after:?}"
            ));
        }
        Ok(())
    }

    fn tick(&mut self, dt: Duration) -> Result<(), String> {
        self.now += dt;
        let ready = self.ready();
        self.core.tick(self.now);
        self.drain(true)?;
        // The launcher never stalls: a worker that may start is started
        // (one per tick; which one is the core's choice).
        if !ready.is_empty() && std::mem::take(&mut self.forks_this_drain) == 0 {
            return Err(format!("tick forked nothing though {ready:?} may start"));
        }
        self.forks_this_drain = 0;
        // SIGKILL is never late: a tick after a stop timeout sends it.
        for (pid, c) in self.live.iter() {
            if let Some(at) = c.kill_at
                && at <= self.now
                && !c.killed
            {
                return Err(format!(
                    "pid {pid} was due SIGKILL at {at:?}, not sent at {:?}",
                    self.now
                ));
            }
        }
        Ok(())
    }

    /// Whether a crash seen now must be reported: only while running. While
    /// resetting every child already got SIGQUIT; while shutting down the
    /// core lets the shutdown run its course ("the postmaster is on its way
    /// out anyway"; PostgreSQL would SIGQUIT the others here).
    fn crash_must_be_reported(&self) -> bool {
        self.running()
    }

    fn check_crash_reported(&self) -> Result<(), String> {
        if self.crash_expected && !self.crash_reported {
            return Err("a crash was not reported (no CrashDetected)".into());
        }
        Ok(())
    }

    fn child_exit(&mut self, pid: u32, status: ExitStatus, slot: SlotReport) -> Result<(), String> {
        let child = self
            .live
            .remove(&pid)
            .ok_or("harness: exit of a dead pid")?;
        let id = child.worker;
        let running = self.running();
        let now = self.now;
        let reg = self.regs.get_mut(&id).expect("child of a registration");
        reg.exits += 1;
        // A shared-memory worker's abnormal end (a signal, a code other
        // than 0 and 1, or a proc slot left active) forces a reset, unless
        // its policy contains it and the slot proves the death clean; a
        // slot found inside a critical section always does.
        let shmem = reg.spec.has_shmem();
        let abnormal = !status.is_normal() || slot == SlotReport::Abandoned;
        let crash = slot == SlotReport::Dirty
            || (shmem && abnormal && reg.spec.crash_policy() == OnCrash::ResetAll);
        let contained = running && !crash && shmem && abnormal;
        // An exit that answers an operator's stop or restart is no failure
        // (`Control`: none of them counts towards restart intensity or
        // backoff), whatever its status and the worker's restart type: a
        // stopped worker stays registered and waits for `Control::Start`,
        // a restarted one is due again at once. A terminate request wins
        // (a terminated worker ignores the operator). A crash is a crash:
        // the reset decides (see `reset_done`), and the restart asked for
        // is served by the reset's start at once.
        //
        // Whatever the exit, crash or reset included, it never ends the
        // registration of a worker the operator stopped or restarted.
        let kept = !reg.terminated && (reg.suspended || reg.restart_asked);
        let operator = running && !crash && kept;
        reg.restart_asked = false;
        reg.finished |= status.is_finished() && !kept;
        if running && !crash {
            if operator {
                reg.earliest = now;
            } else if let Restart::After(delay) = reg.spec.restart_policy() {
                reg.earliest = now + delay;
            }
        }
        let gone_for_good =
            reg.terminated || (!operator && !restarts(&reg.spec, status.is_finished()));
        if running && !crash && !gone_for_good && !operator {
            // Restarted per its policy after a failure: counted.
            reg.restarts += 1;
            self.restarts += 1;
        }
        if operator {
            self.tally.operator_exits += 1;
        }
        self.crash_expected = crash && self.crash_must_be_reported();
        self.contain_expected = contained.then_some(id);
        self.core
            .handle(self.now, Event::ChildExited { pid, status, slot });
        self.drain(false)?;
        self.check_crash_reported()?;
        if !crash && self.crash_reported {
            return Err(format!("{status} with slot {slot:?} reported as a crash"));
        }
        if self.contain_expected.is_some() {
            return Err(format!("{id}'s {status} (slot {slot:?}) was not contained"));
        }
        // Running, no reset: exit 0, a terminate request, or restart=never
        // end the registration; otherwise it waits for its restart delay.
        let unregistered = self.unregistered_this_step.contains(&id);
        if running && !crash && gone_for_good != unregistered {
            return Err(format!(
                "{id} exited ({status}); unregistered should be {gone_for_good}"
            ));
        }
        // Exit 0 means finished, crash or not (PostgreSQL forgets such a
        // worker after a crash reset too), unless it answered an operator.
        // While shutting down the core may keep it until it exits.
        if status.is_finished() && !kept && !self.exited && self.shutdown.is_none() && !unregistered
        {
            return Err(format!(
                "{id} finished (exit 0, slot {slot:?}) but stays registered"
            ));
        }
        Ok(())
    }

    fn shutdown(&mut self, mode: ShutdownMode) -> Result<(), String> {
        if self.exited || self.shutdown.is_some_and(|m| mode <= m) {
            // A milder (or equal) request than one already in force changes
            // nothing.
            return self.no_op(Event::Shutdown(mode));
        }
        let first = self.shutdown.is_none();
        self.shutdown = Some(mode);
        self.core.handle(self.now, Event::Shutdown(mode));
        self.drain(false)?;
        if first {
            // Nothing that is not running will start again.
            for (id, r) in self.regs.iter() {
                if !r.unregistered && !self.has_child_or_fork(*id) {
                    return Err(format!(
                        "{id} is not running but stayed registered at shutdown"
                    ));
                }
            }
        }
        Ok(())
    }

    fn terminate(&mut self, id: WorkerId) -> Result<(), String> {
        if self.exited || self.is_stale(id) {
            // A stale handle acts on nothing.
            return self.no_op(Event::Terminate(id));
        }
        let running = self.running();
        self.regs.get_mut(&id).expect("current").terminated = true;
        self.core.handle(self.now, Event::Terminate(id));
        self.drain(false)?;
        let unregistered = self.unregistered_this_step.contains(&id);
        match self.child_of(id) {
            None if !self.has_child_or_fork(id) && !unregistered => {
                Err(format!("terminated {id} has no child but stays registered"))
            }
            Some((pid, c)) if running && !c.signalled => Err(format!(
                "terminated {id} runs as pid {pid} but was not signalled"
            )),
            _ => Ok(()),
        }
    }

    /// An operator's command (`Control`): what the core documents, step
    /// by step.
    fn control(&mut self, id: WorkerId, op: Control) -> Result<(), String> {
        let event = Event::Control { worker: id, op };
        if self.exited || self.is_stale(id) || self.reg(id).terminated {
            // A stale id acts on nothing; a worker asked to go for good
            // ignores the operator.
            return self.no_op(event);
        }
        // Only a running launcher signals: while a reset is under way
        // every child already got SIGQUIT, and a shutdown stops each child
        // its own way (smart: one at a time). The command still takes: a
        // worker stopped during a reset is not started by it, one started
        // is.
        let running = self.running();
        let unsignalled = self
            .child_of(id)
            .filter(|(_, c)| running && !c.signalled)
            .map(|(pid, _)| pid);
        let idle = !self.has_child_or_fork(id);
        let signalled = self.child_of(id).is_some_and(|(_, c)| c.signalled);
        let reg = self.regs.get_mut(&id).expect("current");
        let mut term = None;
        match op {
            Control::Stop => {
                // SIGTERM (then SIGKILL after its shutdown timeout) if it
                // runs; kept stopped, whatever its restart type, until
                // Start. A restart asked for before is called off.
                reg.suspended = true;
                reg.restart_asked = false;
                term = unsignalled;
            }
            Control::Start | Control::Restart => {
                reg.suspended = false;
                if idle {
                    // Start it now: a pending restart delay (or fork
                    // retry) is skipped, and a restart=never worker that
                    // ran (and was stopped) gets another run.
                    reg.earliest = Duration::ZERO;
                    reg.forks_since_start = 0;
                } else if op == Control::Restart && unsignalled.is_some() {
                    // Stop it, and start it again at once once it exits.
                    reg.restart_asked = true;
                    reg.forks_since_start = 0;
                    term = unsignalled;
                } else if running && signalled {
                    // Still on its way out (after a Stop): its exit is the
                    // operator's, and it starts again at once.
                    reg.restart_asked = true;
                    reg.forks_since_start = 0;
                }
                // Running and not restarted, or being started: nothing to
                // do.
            }
        }
        self.tally.controls += 1;
        self.operator = true;
        self.core.handle(self.now, event);
        self.drain(false)?;
        let want = usize::from(term.is_some());
        if self.actions_this_step != want {
            return Err(format!(
                "{op:?} of {id} queued {} actions, expected {want}",
                self.actions_this_step
            ));
        }
        if let Some(pid) = term
            && !self.live.get(&pid).is_some_and(|c| c.signalled)
        {
            return Err(format!("{op:?} of {id}: pid {pid} was not signalled"));
        }
        Ok(())
    }

    fn reset_done(&mut self) -> Result<(), String> {
        let owed = self.reset_owed && self.shutdown.is_none() && !self.exited;
        if !owed {
            // At the wrong moment, the core must ignore it.
            return self.no_op(Event::ResetDone);
        }
        self.reset_owed = false;
        self.crash_pending = false;
        self.generation += 1;
        self.tally.resets += 1;
        self.phase = core_config().initial_phase;
        // Restartable workers start at once, not after their delay; the
        // others are forgotten.
        let mut must_go = Vec::new();
        for (id, r) in self.regs.iter_mut() {
            r.earliest = Duration::ZERO;
            // A worker an operator stopped stays, stopped, whatever its
            // restart type.
            let ran_once = runs_once(&r.spec) && r.forks_ok > 0 && !r.suspended;
            if !r.unregistered && (r.terminated || ran_once) {
                must_go.push(*id);
            }
        }
        self.core.handle(self.now, Event::ResetDone);
        self.drain(false)?;
        let mut gone = self.unregistered_this_step.clone();
        gone.sort();
        if gone != must_go {
            return Err(format!(
                "after the reset, unregistered {gone:?}; expected {must_go:?}"
            ));
        }
        Ok(())
    }

    fn free_name(&self) -> Option<&'static str> {
        DYNAMIC_NAMES.iter().copied().find(|name| {
            !self
                .regs
                .values()
                .any(|r| !r.unregistered && r.spec.name() == *name)
        })
    }

    fn register(&mut self, variant: u8) -> Result<(), String> {
        let Some(name) = self.free_name() else {
            return Ok(());
        };
        let spec = dynamic_spec(variant, name);
        let current = self.current_ids().len();
        let before = self.snapshot();
        let result = self.core.register(spec.clone(), true);
        let refused = |result: &Result<WorkerId, RegisterError>, want: RegisterError| match result {
            Err(e) if *e == want => Ok(()),
            other => Err(format!(
                "registering {name}: {other:?}, expected Err({want:?})"
            )),
        };
        if self.exited || self.shutdown.is_some() {
            refused(&result, RegisterError::ShuttingDown)?;
        } else if current == MAX_WORKERS as usize {
            refused(&result, RegisterError::Full { max: MAX_WORKERS })?;
        } else {
            let id = result
                .clone()
                .map_err(|e| format!("registering {name}: {e}"))?;
            if self.regs.contains_key(&id) {
                return Err(format!("registration reused the id {id}"));
            }
            let reg_seq = self.regs.values().map(|r| r.reg_seq + 1).max().unwrap_or(0);
            self.regs.insert(id, Reg::new(spec, reg_seq));
        }
        if result.is_err() && before != self.snapshot() {
            return Err("a refused registration changed the core".into());
        }
        self.drain(false)?;
        if self.actions_this_step != 0 {
            return Err("registering queued actions".into());
        }
        Ok(())
    }

    fn register_duplicate(&mut self, name: &str) -> Result<(), String> {
        let before = self.snapshot();
        let result = self.core.register(dynamic_spec(0, name), true);
        let want = if self.exited || self.shutdown.is_some() {
            RegisterError::ShuttingDown
        } else {
            RegisterError::DuplicateName(name.to_owned())
        };
        if result != Err(want.clone()) {
            return Err(format!("duplicate {name}: {result:?}, expected {want:?}"));
        }
        if before != self.snapshot() {
            return Err("a refused registration changed the core".into());
        }
        Ok(())
    }

    /// Reports a fork's outcome to the core and the model.
    fn report_fork(&mut self, worker: WorkerId, start_seq: u64, ok: bool) {
        let reg = self.regs.get_mut(&worker).expect("forked a registration");
        if ok {
            let pid = self.next_pid;
            self.next_pid += 1;
            reg.forks_ok += 1;
            reg.forks_since_start += 1;
            self.tally.forks += 1;
            self.live.insert(
                pid,
                Child {
                    worker,
                    start_seq,
                    late_after_crash: self.crash_pending && self.shutdown.is_some(),
                    signalled: false,
                    quit: false,
                    killed: false,
                    kill_at: None,
                },
            );
            self.core.handle(self.now, Event::Forked { worker, pid });
        } else {
            reg.forks_failed += 1;
            self.tally.fork_failures += 1;
            reg.earliest = self.now + FORK_RETRY_DELAY;
            self.core.handle(self.now, Event::ForkFailed { worker });
        }
    }

    /// Applies every queued action, checking each.
    fn drain(&mut self, in_tick: bool) -> Result<(), String> {
        self.forks_this_drain = 0;
        while let Some(action) = self.core.next_action() {
            self.actions_this_step += 1;
            self.observe(&action, in_tick)
                .map_err(|e| format!("{e}\n  (action {action:?})"))?;
        }
        Ok(())
    }

    /// Checks one action against the model and applies it to the model
    /// (and, for a fork in a prompt world, reports its outcome at once).
    pub fn observe(&mut self, action: &Action, in_tick: bool) -> Result<(), String> {
        if self.exited {
            return Err("an action after Exit".into());
        }
        match action {
            Action::Fork { worker } => {
                let worker = *worker;
                if !in_tick {
                    return Err("a fork outside tick".into());
                }
                self.forks_this_drain += 1;
                if self.forks_this_drain > 1 {
                    return Err("two forks in one tick".into());
                }
                if self.crash_pending {
                    return Err("a fork while resetting".into());
                }
                if self.shutdown.is_some() {
                    return Err("a fork while shutting down".into());
                }
                let Some(reg) = self.regs.get(&worker) else {
                    return Err(format!("fork of {worker}, never registered"));
                };
                if reg.unregistered {
                    return Err(format!("fork of stale {worker}"));
                }
                if reg.terminated {
                    return Err(format!("fork of terminated {worker}"));
                }
                if reg.suspended {
                    return Err(format!("fork of {worker}, stopped by an operator"));
                }
                // restart=never: at most one *successful* fork (per
                // operator start). A failed fork is no start (the core
                // retries it; issue 6: "a failed fork is retried later,
                // never lost").
                if runs_once(&reg.spec) && reg.forks_since_start > 0 {
                    return Err(format!("restart=never worker {worker} forked twice"));
                }
                if self.has_child_or_fork(worker) {
                    return Err(format!("fork of {worker}, which is running"));
                }
                if reg.spec.start_phase() > self.phase {
                    return Err(format!(
                        "fork of {worker} (starts at {}) in phase {}",
                        reg.spec.start_phase(),
                        self.phase
                    ));
                }
                if self.now < reg.earliest {
                    return Err(format!(
                        "fork of {worker} at {:?}, before its restart delay or retry ({:?})",
                        self.now, reg.earliest
                    ));
                }
                let seq = self.next_start_seq;
                self.next_start_seq += 1;
                if self.lagging {
                    self.pending_forks.push_back((worker, seq));
                } else {
                    let ok = !std::mem::take(&mut self.fail_next_fork);
                    self.report_fork(worker, seq, ok);
                }
            }
            Action::Signal { pid, signal } => {
                let crash_pending = self.crash_pending;
                let shutdown = self.shutdown;
                let smart_order = self.smart_order_violation(*pid);
                let Some(child) = self.live.get(pid) else {
                    return Err(format!("{signal:?} to pid {pid}, not alive"));
                };
                if child.killed {
                    return Err(format!("{signal:?} to pid {pid} after its SIGKILL"));
                }
                let reg = self.reg(child.worker);
                let timeout = match signal {
                    Sig::Term => {
                        let quit_all = crash_pending && !child.late_after_crash;
                        if quit_all || shutdown == Some(ShutdownMode::Immediate) {
                            return Err("SIGTERM where every child gets SIGQUIT".into());
                        }
                        // Outside a shutdown only a terminate request or an
                        // operator's stop or restart asks for one.
                        if shutdown.is_none()
                            && !reg.terminated
                            && !reg.suspended
                            && !reg.restart_asked
                        {
                            return Err(format!(
                                "SIGTERM to {}, never terminated nor stopped by an operator",
                                child.worker
                            ));
                        }
                        if shutdown == Some(ShutdownMode::Smart)
                            && let Some(why) = smart_order
                        {
                            return Err(why);
                        }
                        Some(reg.spec.shutdown_timeout_value())
                    }
                    Sig::Quit => {
                        if !crash_pending && shutdown != Some(ShutdownMode::Immediate) {
                            return Err("SIGQUIT with no crash nor immediate shutdown".into());
                        }
                        Some(CRASH_KILL_TIMEOUT)
                    }
                    Sig::Kill => match child.kill_at {
                        None => return Err("SIGKILL to a child never asked to stop".into()),
                        Some(at) if self.now < at => {
                            return Err(format!(
                                "SIGKILL at {:?}, before its timeout ran out at {at:?}",
                                self.now
                            ));
                        }
                        Some(_) => None,
                    },
                };
                let now = self.now;
                let child = self.live.get_mut(pid).expect("checked");
                child.signalled = true;
                match signal {
                    Sig::Quit => child.quit = true,
                    Sig::Kill => {
                        child.killed = true;
                        self.tally.kills += 1;
                    }
                    Sig::Term => {}
                }
                if let Some(timeout) = timeout {
                    let due = now + timeout;
                    child.kill_at = Some(child.kill_at.map_or(due, |at| at.min(due)));
                }
            }
            Action::ResetSegment => {
                if self.shutdown.is_some() {
                    return Err("a segment reset while shutting down".into());
                }
                if !self.crash_pending {
                    return Err("a segment reset with no crash".into());
                }
                if self.reset_owed {
                    return Err("a second segment reset for one crash".into());
                }
                if !self.live.is_empty() || !self.pending_forks.is_empty() {
                    return Err(format!(
                        "a segment reset while children live: {:?}",
                        self.live_pids()
                    ));
                }
                self.reset_owed = true;
                self.resets_asked += 1;
            }
            Action::Status { worker, status } => {
                let Some(reg) = self.regs.get(worker) else {
                    return Err(format!("status of {worker}, never registered"));
                };
                if reg.unregistered {
                    return Err(format!("status of stale {worker}"));
                }
                match status {
                    WorkerStatus::Started { pid } => {
                        if self.live.get(pid).map(|c| c.worker) != Some(*worker) {
                            return Err(format!("{worker} started as pid {pid}, not its child"));
                        }
                        self.regs.get_mut(worker).expect("checked").started += 1;
                    }
                    WorkerStatus::Stopped => {
                        if let Some((pid, _)) = self.child_of(*worker) {
                            return Err(format!("{worker} stopped, but pid {pid} lives"));
                        }
                        self.regs.get_mut(worker).expect("checked").stopped += 1;
                    }
                }
            }
            Action::Unregistered { worker, name } => {
                let Some(reg) = self.regs.get(worker) else {
                    return Err(format!("unregistered {worker}, never registered"));
                };
                if reg.unregistered {
                    return Err(format!("{worker} unregistered twice"));
                }
                if reg.spec.name() != name {
                    return Err(format!("{worker} unregistered as {name:?}"));
                }
                if self.has_child_or_fork(*worker) {
                    return Err(format!("{worker} unregistered while its child lives"));
                }
                // Why a registration may end: it finished (exit 0), ran once
                // under restart=never, was terminated, or the postmaster is
                // shutting down. Never because a fork failed.
                let justified = reg.terminated
                    || self.shutdown.is_some()
                    || reg.finished
                    || (runs_once(&reg.spec) && reg.exits > 0);
                if !justified {
                    return Err(format!(
                        "{worker} unregistered without reason (forks ok {}, failed {}, exits {})",
                        reg.forks_ok, reg.forks_failed, reg.exits
                    ));
                }
                self.regs.get_mut(worker).expect("checked").unregistered = true;
                self.last_unregistered = Some(*worker);
                self.tally.unregistered += 1;
                self.unregistered_this_step.push(*worker);
            }
            Action::CrashDetected { .. } => {
                if !self.crash_expected || self.crash_reported {
                    return Err("CrashDetected with no crash to report".into());
                }
                self.crash_reported = true;
                self.crash_pending = true;
                self.tally.crashes += 1;
            }
            Action::Contained { worker, pid, .. } => {
                if self.contain_expected != Some(*worker) {
                    return Err(format!("{worker} (pid {pid}) contained unasked"));
                }
                self.contain_expected = None;
                self.tally.contained += 1;
            }
            Action::WatchdogExpired { .. } | Action::Escalated { .. } => {
                // No worker here has a watchdog, and the root group has no
                // restart intensity.
                return Err("a watchdog or escalation with neither configured".into());
            }
            Action::Exit { code } => {
                if self.shutdown.is_none() {
                    return Err("Exit with no shutdown".into());
                }
                if !self.live.is_empty() || !self.pending_forks.is_empty() {
                    return Err(format!("Exit while children live: {:?}", self.live_pids()));
                }
                if *code != 0 {
                    return Err(format!("Exit with code {code}"));
                }
                self.exited = true;
                self.tally.exits += 1;
            }
        }
        Ok(())
    }

    /// Smart shutdown stops one worker at a time, the latest started first:
    /// a SIGTERM to `pid` is wrong if another child is already stopping or
    /// `pid` is not the latest started.
    fn smart_order_violation(&self, pid: u32) -> Option<String> {
        let target = self.live.get(&pid)?;
        for (other, c) in self.live.iter() {
            if *other == pid {
                continue;
            }
            if c.signalled {
                return Some(format!(
                    "smart shutdown stops pid {pid} while pid {other} is still stopping"
                ));
            }
            if c.start_seq > target.start_seq {
                return Some(format!(
                    "smart shutdown stops pid {pid} before the later started pid {other}"
                ));
            }
        }
        None
    }

    /// The core's whole state against the model, after every step.
    pub fn check_state(&self) -> Result<(), String> {
        for (id, r) in self.regs.iter() {
            if r.started != r.forks_ok {
                return Err(format!(
                    "{id}: {} forks reported, {} Started statuses",
                    r.forks_ok, r.started
                ));
            }
            if r.stopped != r.exits {
                return Err(format!(
                    "{id}: {} exits reaped, {} Stopped statuses",
                    r.exits, r.stopped
                ));
            }
            if runs_once(&r.spec) && r.forks_since_start > 1 {
                return Err(format!(
                    "restart=never {id} ran {} times since it was last started",
                    r.forks_since_start
                ));
            }
        }
        // Restarts after failures, and only those, are counted: not an
        // exit that answered an operator, not a reset's start.
        if self.core.stats().restarts != self.restarts {
            return Err(format!(
                "the core counted {} restarts, the model {}",
                self.core.stats().restarts,
                self.restarts
            ));
        }
        if self.exited {
            if self.core.state() != PmState::Exited {
                return Err("Exit queued, core not Exited".into());
            }
            if let Some(id) = self.current_ids().first() {
                return Err(format!("exited with {id} still registered"));
            }
            return Ok(());
        }
        let want = match (self.shutdown, self.crash_pending) {
            (Some(mode), _) => PmState::ShuttingDown { mode },
            (None, true) => PmState::Resetting {
                reset_requested: self.reset_owed,
            },
            (None, false) => PmState::Running,
        };
        if self.core.state() != want {
            return Err(format!(
                "core is {:?}, expected {want:?}",
                self.core.state()
            ));
        }
        if self.core.phase() != self.phase {
            return Err(format!(
                "core in phase {}, expected {}",
                self.core.phase(),
                self.phase
            ));
        }
        // Registrations: the core has exactly the current ones.
        for (id, r) in self.regs.iter() {
            match (self.core.worker(*id), r.unregistered) {
                (Some(_), true) => return Err(format!("stale {id} still names a worker")),
                (None, false) => {
                    return Err(format!("{id} vanished without Unregistered"));
                }
                (Some(w), false) if w.spec != r.spec => {
                    return Err(format!("{id} has another spec"));
                }
                (Some(w), false) if w.suspended != r.suspended => {
                    return Err(format!(
                        "{id} suspended={}, expected {}",
                        w.suspended, r.suspended
                    ));
                }
                (Some(w), false) if w.restarts != r.restarts => {
                    return Err(format!(
                        "{id} counts {} restarts, expected {}",
                        w.restarts, r.restarts
                    ));
                }
                _ => {}
            }
        }
        if self.core.workers().count() != self.current_ids().len() {
            return Err("the core has workers the world never registered".into());
        }
        // Children: the core knows exactly the live ones.
        for (pid, c) in self.live.iter() {
            if self.core.worker_by_pid(*pid).map(|w| w.id) != Some(c.worker) {
                return Err(format!("pid {pid} of {} unknown to the core", c.worker));
            }
        }
        let with_pid = self
            .core
            .workers()
            .filter(|w| w.state.pid().is_some())
            .count();
        if with_pid != self.live.len() {
            return Err(format!(
                "the core tracks {with_pid} children, the world {}",
                self.live.len()
            ));
        }
        if self.core.live_children() != self.live.len() + self.pending_forks.len() {
            return Err("live_children disagrees with the world".into());
        }
        // Stop signals: a crash or an immediate shutdown SIGQUITs every
        // child; a fast shutdown signals every child; a smart one always
        // has one stopping.
        for (pid, c) in self.live.iter() {
            let quit_all = self.crash_pending && !c.late_after_crash;
            if (quit_all || self.shutdown == Some(ShutdownMode::Immediate)) && !(c.quit || c.killed)
            {
                return Err(format!("pid {pid} was not sent SIGQUIT"));
            }
            if self.shutdown == Some(ShutdownMode::Fast) && !c.signalled {
                return Err(format!("fast shutdown, but pid {pid} was not signalled"));
            }
            // While running, a child asked to stop (terminated, stopped or
            // restarted by an operator) was signalled, however it came to
            // be (a late fork report included).
            let r = self.reg(c.worker);
            if self.running() && (r.terminated || r.suspended || r.restart_asked) && !c.signalled {
                return Err(format!(
                    "pid {pid} of {} was asked to stop (terminated={}, stopped={}, restarting={}) but not signalled",
                    c.worker, r.terminated, r.suspended, r.restart_asked
                ));
            }
        }
        if self.shutdown == Some(ShutdownMode::Smart)
            && !self.live.is_empty()
            && !self.live.values().any(|c| c.signalled)
        {
            return Err("smart shutdown stalled: no child is stopping".into());
        }
        // Progress: with every child gone, the reset is asked for, and a
        // shutdown exits.
        let no_children = self.live.is_empty() && self.pending_forks.is_empty();
        if self.shutdown.is_none() && self.crash_pending && no_children && !self.reset_owed {
            return Err("every child is gone, but no segment reset was asked for".into());
        }
        if self.shutdown.is_some() && no_children {
            return Err("shutting down with every child gone, but no Exit".into());
        }
        if self.core.stats().resets != self.resets_asked || self.generation > self.resets_asked {
            return Err(format!(
                "resets: core counted {}, asked {}, done {}",
                self.core.stats().resets,
                self.resets_asked,
                self.generation
            ));
        }
        // The driver never sleeps past something due.
        let mut due: Option<Duration> = None;
        let mut consider = |at: Duration| due = Some(due.map_or(at, |d: Duration| d.min(at)));
        if self.running() {
            for (id, r) in self.regs.iter() {
                if self.startable(*id, r) {
                    consider(r.earliest.max(self.now));
                }
            }
        }
        for c in self.live.values() {
            if let Some(at) = c.kill_at
                && !c.killed
            {
                consider(at.max(self.now));
            }
        }
        let timeout = self.core.timeout(self.now);
        if timeout == Some(Duration::ZERO) && due.is_none_or(|due| due > self.now) {
            return Err(format!(
                "timeout is zero with nothing due before {due:?}: the driver would spin"
            ));
        }
        if let Some(due) = due {
            match timeout {
                Some(wait) if self.now + wait <= due => {}
                other => {
                    return Err(format!(
                        "timeout {other:?} at {:?} sleeps past {due:?}",
                        self.now
                    ));
                }
            }
        }
        Ok(())
    }

    /// Lets the world come to rest: delivers the reset the core asked for
    /// and the outcome of forks, advances the clock to every timer and
    /// ticks, reaps every child that was asked to stop; then checks that
    /// every registration is running, waiting for a phase not reached, or
    /// was unregistered (its registrant notified).
    fn quiesce(&mut self) -> Result<(), String> {
        for _ in 0..QUIESCE_LIMIT {
            if self.exited {
                return Ok(());
            }
            let step = if self.reset_owed && self.shutdown.is_none() {
                Step::ResetDone
            } else if !self.pending_forks.is_empty() {
                Step::ReportFork { ok: true }
            } else if let Some(wait) = self.core.timeout(self.now) {
                Step::Tick(wait)
            } else if let Some((pid, c)) = self.live.iter().find(|(_, c)| c.signalled) {
                let shmem = self.reg(c.worker).spec.has_shmem();
                Step::Exit {
                    pid: *pid,
                    status: if c.killed {
                        ExitStatus::Signaled(9)
                    } else if c.quit {
                        ExitStatus::Signaled(3)
                    } else {
                        ExitStatus::Code(1)
                    },
                    slot: if shmem {
                        SlotReport::Clean
                    } else {
                        SlotReport::None
                    },
                }
            } else {
                return self.check_at_rest();
            };
            self.apply(&step)
                .map_err(|e| format!("while quiescing, {step:?}: {e}"))?;
        }
        Err(format!(
            "did not come to rest in {QUIESCE_LIMIT} steps:\n{}",
            self.describe()
        ))
    }

    fn check_at_rest(&self) -> Result<(), String> {
        if self.crash_pending {
            return Err("at rest, but the crash reset never finished".into());
        }
        for (id, r) in self.regs.iter() {
            if r.unregistered {
                continue;
            }
            let w = self.core.worker(*id).expect("checked by check_state");
            match w.state {
                // Stopped by an operator: neither running nor due, until
                // Start.
                RunState::Running { .. } if w.suspended => {
                    return Err(format!("at rest, {id} runs though stopped by an operator"));
                }
                RunState::Waiting { .. } if w.suspended => {}
                RunState::Running { .. } => {}
                RunState::Waiting { .. } if w.spec.start_phase() > self.core.phase() => {}
                other => {
                    return Err(format!(
                        "at rest, {id} is {other:?}: neither started, stopped by an operator, nor stopped with its registrant notified"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every step worth exploring from here (a small alphabet; each live
    /// child can die four ways if it has shared memory, three if not).
    pub fn choices(&self) -> Vec<Step> {
        let mut steps = vec![
            Step::Tick(Duration::ZERO),
            Step::Tick(Duration::from_secs(1)),
            Step::Tick(Duration::from_secs(10)),
        ];
        if self.exited {
            // Everything is ignored now; two probes suffice.
            steps.truncate(1);
            steps.push(Step::Terminate(self.stale_id()));
            return steps;
        }
        // Each live child dies in every way the core tells apart (random
        // runs add the rest: other codes and signals, abandoned slots).
        for (pid, c) in self.live.iter() {
            let pid = *pid;
            let spec = &self.reg(c.worker).spec;
            let mut ways = vec![(ExitStatus::Code(0), SlotReport::None)];
            if spec.has_shmem() {
                ways = vec![
                    (ExitStatus::Code(0), SlotReport::Clean),
                    (ExitStatus::Code(1), SlotReport::Clean),
                    (ExitStatus::Signaled(11), SlotReport::Clean),
                    // Finished, but its slot inside a critical section: a
                    // crash all the same.
                    (ExitStatus::Code(0), SlotReport::Dirty),
                ];
                if spec.crash_policy() == OnCrash::Contain {
                    // A dirty slot overrides containment.
                    ways.push((ExitStatus::Code(1), SlotReport::Dirty));
                }
            } else {
                // Exit 1 and a signal are the same to a worker without
                // shared memory: restarted per its policy, no reset.
                ways.push((ExitStatus::Signaled(11), SlotReport::None));
            }
            for (status, slot) in ways {
                steps.push(Step::Exit { pid, status, slot });
            }
        }
        if self.lagging && !self.pending_forks.is_empty() {
            steps.push(Step::ReportFork { ok: true });
            steps.push(Step::ReportFork { ok: false });
        }
        if !self.lagging && !self.fail_next_fork {
            steps.push(Step::FailNextFork);
        }
        for mode in [
            ShutdownMode::Smart,
            ShutdownMode::Fast,
            ShutdownMode::Immediate,
        ] {
            steps.push(Step::Shutdown(mode));
        }
        steps.push(Step::Phase(Phase::ConsistentState));
        steps.push(Step::Phase(Phase::RecoveryFinished));
        for id in self.current_ids() {
            steps.push(Step::Terminate(id));
        }
        steps.push(Step::Terminate(self.stale_id()));
        steps.push(Step::Corrupt);
        steps.push(Step::ResetDone);
        if self.free_name().is_some() {
            steps.push(Step::Register(0));
        }
        for (id, r) in self.regs.iter() {
            if !self.operator || r.unregistered || !CONTROLLED.contains(&r.spec.name()) {
                continue;
            }
            steps.push(Step::Control {
                worker: *id,
                op: Control::Stop,
            });
            steps.push(Step::Control {
                worker: *id,
                op: Control::Start,
            });
            // A restart differs from a start only for a child not asked to
            // stop yet: otherwise both lift a stop and make an idle worker
            // due at once (random runs and the fuzz target play both
            // everywhere).
            if self.child_of(*id).is_some_and(|(_, c)| !c.signalled) {
                steps.push(Step::Control {
                    worker: *id,
                    op: Control::Restart,
                });
            }
        }
        if self.operator {
            steps.push(Step::Control {
                worker: self.stale_id(),
                op: Control::Start,
            });
        }
        steps
    }

    /// A fingerprint of everything that decides what happens next, in the
    /// core and in the model: pids are replaced by start rank (the core
    /// only compares them), times by how far ahead of now they lie (the
    /// core only compares and adds them; a time already past stays past),
    /// and counters the future does not read are left out.
    pub fn fingerprint(&self) -> u128 {
        let mut seqs: Vec<u64> = self
            .live
            .values()
            .map(|c| c.start_seq)
            .chain(self.pending_forks.iter().map(|(_, s)| *s))
            .collect();
        seqs.sort_unstable();
        let rank = |seq: u64| seqs.iter().position(|s| *s == seq).unwrap_or(usize::MAX);
        let pid_tag = |pid: u32| match self.live.get(&pid) {
            Some(c) => rank(c.start_seq) as u64,
            None => 1 << 40 | u64::from(pid),
        };
        let rel = |t: Option<Duration>| t.map(|t| t.saturating_sub(self.now));
        let mut fp = Fingerprint::new();
        fp.put(match self.core.state() {
            PmState::Running => 0,
            PmState::Resetting { reset_requested } => 1 + u8::from(reset_requested),
            PmState::ShuttingDown { mode } => 3 + mode as u8,
            PmState::Exited => 7,
        });
        fp.put(self.core.phase());
        for w in self.core.workers() {
            fp.put((
                w.id,
                w.spec.name(),
                w.terminating,
                w.suspended,
                w.starts.min(2),
            ));
            match w.state {
                RunState::Waiting { not_before } => fp.put((0, rel(not_before))),
                RunState::Forking => fp.put(1),
                RunState::Held => fp.put(4),
                RunState::Running { pid } => fp.put((2, pid_tag(pid))),
                RunState::Stopping { pid, kill_at } => fp.put((3, pid_tag(pid), rel(kill_at))),
            }
        }
        fp.put((
            self.shutdown,
            self.phase,
            self.crash_pending,
            self.reset_owed,
            self.exited,
            self.fail_next_fork,
            self.last_unregistered,
            self.operator,
        ));
        for c in self.live.values() {
            fp.put((
                c.worker,
                rank(c.start_seq),
                c.signalled,
                c.quit,
                c.killed,
                rel(c.kill_at),
            ));
        }
        for (w, seq) in &self.pending_forks {
            fp.put((w, rank(*seq)));
        }
        // Registration order decides which of two due workers starts first.
        let mut by_registration: Vec<(u64, WorkerId)> = self
            .regs
            .iter()
            .filter(|(_, r)| !r.unregistered)
            .map(|(id, r)| (r.reg_seq, *id))
            .collect();
        by_registration.sort_unstable();
        for (_, id) in by_registration {
            fp.put(id);
        }
        for (id, r) in self.regs.iter() {
            fp.put((
                id,
                r.forks_ok.min(2),
                r.terminated,
                r.unregistered,
                rel(Some(r.earliest)),
                r.finished,
                r.exits.min(1),
                r.suspended,
                r.restart_asked,
                r.forks_since_start.min(2),
            ));
        }
        fp.finish()
    }

    /// What the core shows through its public API: equal before and after
    /// an event means the event changed nothing.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.core.state(),
            phase: self.core.phase(),
            stats: self.core.stats(),
            live_children: self.core.live_children(),
            timeout: self.core.timeout(self.now),
            workers: self
                .core
                .workers()
                .map(|w| WorkerView {
                    id: w.id,
                    state: w.state,
                    terminating: w.terminating,
                    suspended: w.suspended,
                    starts: w.starts,
                    last_exit: w.last_exit,
                    dynamic: w.dynamic,
                })
                .collect(),
        }
    }
}

/// See [`World::snapshot`].
#[derive(Debug, PartialEq)]
struct Snapshot {
    state: PmState,
    phase: Phase,
    stats: CoreStats,
    live_children: usize,
    timeout: Option<Duration>,
    workers: Vec<WorkerView>,
}

/// What a [`Snapshot`] shows of one worker.
#[derive(Debug, PartialEq)]
struct WorkerView {
    id: WorkerId,
    state: RunState,
    terminating: bool,
    suspended: bool,
    starts: u64,
    last_exit: Option<ExitStatus>,
    dynamic: bool,
}

/// Two independently mixed 64-bit lanes over the same words: 128 bits make
/// a collision (which would prune a state unexplored) negligible. Not
/// SipHash: this runs once per visited state and SipHash's many small
/// writes dominated the exploration's time in a debug build.
struct Fingerprint(Lanes);

impl Fingerprint {
    fn new() -> Self {
        Fingerprint(Lanes(0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344))
    }

    fn put<T: Hash>(&mut self, value: T) {
        value.hash(&mut self.0);
    }

    fn finish(&self) -> u128 {
        let Lanes(a, b) = self.0;
        (u128::from(mix(a)) << 64) | u128::from(mix(b ^ 0x9e37_79b9_7f4a_7c15))
    }
}

struct Lanes(u64, u64);

impl Hasher for Lanes {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
        self.1 = (self.1.rotate_left(17) ^ word).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    fn finish(&self) -> u64 {
        mix(self.0)
    }
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Reg {
    fn new(spec: WorkerSpec, reg_seq: u64) -> Reg {
        Reg {
            reg_seq,
            spec,
            forks_ok: 0,
            forks_failed: 0,
            terminated: false,
            unregistered: false,
            earliest: Duration::ZERO,
            started: 0,
            stopped: 0,
            exits: 0,
            finished: false,
            suspended: false,
            restart_asked: false,
            forks_since_start: 0,
            restarts: 0,
        }
    }
}
