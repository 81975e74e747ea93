//! The postmaster's decisions, as a deterministic state machine with no I/O.
//!
//! The [`Core`] never forks, signals, reads a clock or touches shared
//! memory. The driver (see [`crate::postmaster`]) feeds it [`Event`]s with
//! the time they were observed and carries out the [`Action`]s it queues.
//! Everything the postmaster decides is therefore reproducible from an
//! event sequence, which is how the tests explore it: every sequence up to
//! a small depth, and long random ones, with the invariants checked after
//! each step.
//!
//! # One loop iteration
//!
//! ```text
//! wait for a signal, at most core.timeout(now)
//! feed every signal, reaped child and registration change to core.handle
//! core.tick(now)            // due timers fire; at most one Fork is queued
//! apply every core.next_action(); report each fork's outcome at once
//! ```
//!
//! While a start is pending, [`Core::timeout`] is zero, so the driver
//! comes back at once, but serves signals, reaps and registrations before
//! the next fork (PostgreSQL's rule: one start per iteration).
//!
//! # Worker life cycle
//!
//! ```text
//!            register                 tick (phase reached, not before due)
//!   ─────────────────────▶ Waiting ───────────────────────────────▶ Forking
//!                             ▲                                       │ Forked(pid)
//!   restart delay, or reset   │                                       ▼
//!   (at once) ────────────────┤ ◀──── exit 1 / crash ─────────── Running(pid)
//!                             │                                       │ SIGTERM (terminate,
//!                           Done ◀── exit 0, restart=never,           ▼  shutdown)
//!                      (unregistered)  terminate requested       Stopping(pid)
//! ```
//!
//! # Crashes
//!
//! A child's death is a *crash* when it is a shared-memory worker whose
//! exit was abnormal (a signal, or a code other than 0 and 1), or when its
//! proc slot was still active (the dead-man switch: it never finished its
//! cleanup), or when the driver reports shared state as corrupt. The core
//! then SIGQUITs every other child, SIGKILLs them after
//! [`CoreConfig::crash_kill_timeout`], waits until every child is reaped,
//! asks for a segment reset, and when the driver reports it done, starts
//! every worker whose policy allows it at once. A worker without
//! shared-memory access that dies is restarted alone, per its policy.
//!
//! # Shutdown
//!
//! Smart stops workers one at a time in reverse start order, fast sends
//! SIGTERM to all of them at once, immediate sends SIGQUIT; a worker that
//! outlives its shutdown timeout gets SIGKILL. A later, more immediate
//! request overrides an earlier one; a milder one is ignored. The core
//! queues [`Action::Exit`] once every child is reaped.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use crate::spec::{Phase, Restart, WorkerSpec};

/// Names one registration in the core. The generation makes a handle to a
/// worker that has been unregistered stale: it never names the next worker
/// given the same index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId {
    /// Index in the core's table.
    pub index: u32,
    /// Which registration at that index.
    pub generation: u32,
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// How a child ended, as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It called `exit` with this code.
    Code(i32),
    /// A signal killed it.
    Signaled(i32),
}

impl ExitStatus {
    /// Exit 0: the worker finished and is unregistered.
    pub fn is_finished(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Exit 0 or 1, the two exits a worker chooses on purpose; anything
    /// else is a crash.
    pub fn is_normal(self) -> bool {
        matches!(self, ExitStatus::Code(0 | 1))
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signaled(signal) => write!(f, "signal {signal}"),
        }
    }
}

/// The signals the core asks the driver to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sig {
    /// Please stop (shutdown, terminate).
    Term,
    /// Stop now, without cleanup: another process crashed (or immediate
    /// shutdown).
    Quit,
    /// The timeout ran out.
    Kill,
}

/// Shutdown requests, mildest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ShutdownMode {
    /// SIGTERM: stop workers one at a time, in reverse start order.
    Smart,
    /// SIGINT: SIGTERM every worker at once.
    Fast,
    /// SIGQUIT: SIGQUIT every worker, SIGKILL after the crash timeout.
    Immediate,
}

/// What the proc slot said about a child's death (the dead-man switch),
/// as the driver found it when releasing the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotReport {
    /// The child had no proc slot (no shared-memory access, or it died
    /// before taking one).
    None,
    /// The child finished its cleanup, or never started it: shared state is
    /// consistent.
    Clean,
    /// The slot was still active, inside a critical section, or overwritten:
    /// shared state may be damaged.
    Dirty,
}

/// Everything the core reacts to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A child was reaped.
    ChildExited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// What its proc slot said.
        slot: SlotReport,
    },
    /// The driver forked the child a [`Action::Fork`] asked for.
    Forked {
        /// The worker.
        worker: WorkerId,
        /// The child's pid.
        pid: u32,
    },
    /// The driver could not fork (or found no proc slot): retry later.
    ForkFailed {
        /// The worker.
        worker: WorkerId,
    },
    /// A shutdown signal arrived.
    Shutdown(ShutdownMode),
    /// The application (or a worker) announced a phase.
    PhaseReached(Phase),
    /// Someone asked for a worker to stop for good.
    Terminate(WorkerId),
    /// The driver found shared state inconsistent (a corrupt free list, a
    /// garbage registration slot): handled like a crash.
    SharedStateCorrupt,
    /// The driver reset the segment, as [`Action::ResetSegment`] asked.
    ResetDone,
}

/// Whether a worker is running, as reported to its registrant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WorkerStatus {
    /// It runs as this pid.
    Started {
        /// The worker's pid.
        pid: u32,
    },
    /// It is not running (it may start again later, unless it was
    /// unregistered).
    Stopped,
}

/// Everything the core asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fork the worker into a fresh proc slot, then report
    /// [`Event::Forked`] or [`Event::ForkFailed`] before anything else.
    Fork {
        /// The worker; [`Core::spec`] says what to run.
        worker: WorkerId,
    },
    /// Send a signal to a child.
    Signal {
        /// The child.
        pid: u32,
        /// The signal.
        signal: Sig,
    },
    /// Every child is gone: reset the segment, then report
    /// [`Event::ResetDone`].
    ResetSegment,
    /// A worker started or stopped (publish it; notify its registrant).
    Status {
        /// The worker.
        worker: WorkerId,
        /// Its new status.
        status: WorkerStatus,
    },
    /// The worker is gone for good: its id is stale from now on, and a
    /// dynamic registration slot can be released.
    Unregistered {
        /// The worker.
        worker: WorkerId,
        /// Its name, for the log.
        name: String,
    },
    /// A child died in a way that forces a segment reset (for the log).
    CrashDetected {
        /// The worker, if the pid was one.
        worker: Option<WorkerId>,
        /// Its pid (0 for [`Event::SharedStateCorrupt`]).
        pid: u32,
        /// How it ended.
        status: Option<ExitStatus>,
    },
    /// Every child is reaped after a shutdown: exit with this code.
    Exit {
        /// The process exit code.
        code: i32,
    },
}

/// Fixed settings of the core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// The most workers registered at once.
    pub max_workers: u32,
    /// The phase reached when the postmaster starts, and again after each
    /// segment reset.
    pub initial_phase: Phase,
    /// After SIGQUIT (crash, immediate shutdown), how long children get
    /// before SIGKILL.
    pub crash_kill_timeout: Duration,
    /// How long after a failed fork the worker is tried again.
    pub fork_retry_delay: Duration,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_workers: 64,
            initial_phase: Phase::PostmasterStart,
            crash_kill_timeout: Duration::from_secs(5),
            fork_retry_delay: Duration::from_millis(100),
        }
    }
}

/// Why a registration was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// Every worker entry is in use.
    #[error("all {max} worker entries are registered; raise max_workers")]
    Full {
        /// The configured maximum.
        max: u32,
    },
    /// Another registered worker has this name.
    #[error("a worker named {0:?} is already registered")]
    DuplicateName(String),
    /// The postmaster is shutting down and starts nothing new.
    #[error("the postmaster is shutting down")]
    ShuttingDown,
}

/// Where a worker is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Not running; may start once the phase is reached and `not_before`
    /// has passed.
    Waiting {
        /// Earliest start (restart delay, fork retry).
        not_before: Option<Duration>,
    },
    /// A fork was asked for and its outcome is not reported yet.
    Forking,
    /// Running.
    Running {
        /// Its pid.
        pid: u32,
    },
    /// Asked to stop (SIGTERM or SIGQUIT sent); SIGKILL is due at
    /// `kill_at` unless it was already sent.
    Stopping {
        /// Its pid.
        pid: u32,
        /// When SIGKILL is due; `None` once sent.
        kill_at: Option<Duration>,
    },
}

impl RunState {
    /// The pid of the live child, if there is one.
    pub fn pid(self) -> Option<u32> {
        match self {
            RunState::Running { pid } | RunState::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// One registered worker as the core sees it (for status displays).
#[derive(Clone, Debug)]
pub struct WorkerInfo {
    /// Its id.
    pub id: WorkerId,
    /// What to run.
    pub spec: WorkerSpec,
    /// Where it is in its life cycle.
    pub state: RunState,
    /// Static (before run) or dynamic registration.
    pub dynamic: bool,
    /// How many times it was forked.
    pub starts: u64,
    /// How it ended last time.
    pub last_exit: Option<ExitStatus>,
    /// A terminate request was seen: it will not start again.
    pub terminating: bool,
    /// Position in start order (higher = started later).
    start_seq: u64,
}

/// The postmaster's own state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmState {
    /// Launching and restarting workers.
    Running,
    /// A crash was seen: waiting for every child to go before the reset.
    Resetting {
        /// The reset was asked for; waiting for [`Event::ResetDone`].
        reset_requested: bool,
    },
    /// Stopping everything, then exiting.
    ShuttingDown {
        /// The most immediate mode requested so far.
        mode: ShutdownMode,
    },
    /// [`Action::Exit`] was queued.
    Exited,
}

/// Counters for status displays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Segment resets asked for.
    pub resets: u64,
    /// Forks asked for.
    pub forks: u64,
    /// Failed forks reported.
    pub fork_failures: u64,
}

/// The postmaster's state machine; see the module docs.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    slots: Vec<Slot>,
    phase: Phase,
    state: PmState,
    actions: VecDeque<Action>,
    next_start_seq: u64,
    stats: CoreStats,
}

#[derive(Debug)]
struct Slot {
    generation: u32,
    worker: Option<WorkerInfo>,
}

impl Core {
    /// A core with no workers, in phase `config.initial_phase`.
    pub fn new(config: CoreConfig) -> Self {
        Core {
            phase: config.initial_phase,
            config,
            slots: Vec::new(),
            state: PmState::Running,
            actions: VecDeque::new(),
            next_start_seq: 0,
            stats: CoreStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The postmaster's state.
    pub fn state(&self) -> PmState {
        self.state
    }

    /// Counters.
    pub fn stats(&self) -> CoreStats {
        self.stats
    }

    /// Registers a worker (the caller has validated the spec and knows its
    /// entry point). It starts on a later [`tick`](Self::tick).
    pub fn register(&mut self, spec: WorkerSpec, dynamic: bool) -> Result<WorkerId, RegisterError> {
        if !matches!(self.state, PmState::Running | PmState::Resetting { .. }) {
            return Err(RegisterError::ShuttingDown);
        }
        if self.workers().any(|w| w.spec.name() == spec.name()) {
            return Err(RegisterError::DuplicateName(spec.name().to_owned()));
        }
        let index = match self.slots.iter().position(|s| s.worker.is_none()) {
            Some(index) => index,
            None if self.slots.len() < self.config.max_workers as usize => {
                self.slots.push(Slot {
                    generation: 0,
                    worker: None,
                });
                self.slots.len() - 1
            }
            None => {
                return Err(RegisterError::Full {
                    max: self.config.max_workers,
                });
            }
        };
        let slot = &mut self.slots[index];
        slot.generation = slot.generation.wrapping_add(1);
        let id = WorkerId {
            index: index as u32,
            generation: slot.generation,
        };
        slot.worker = Some(WorkerInfo {
            id,
            spec,
            state: RunState::Waiting { not_before: None },
            dynamic,
            starts: 0,
            last_exit: None,
            terminating: false,
            start_seq: 0,
        });
        Ok(id)
    }

    /// The worker `id` names, unless the id is stale.
    pub fn worker(&self, id: WorkerId) -> Option<&WorkerInfo> {
        let slot = self.slots.get(id.index as usize)?;
        slot.worker.as_ref().filter(|w| w.id == id)
    }

    /// The spec of worker `id`, unless the id is stale.
    pub fn spec(&self, id: WorkerId) -> Option<&WorkerSpec> {
        self.worker(id).map(|w| &w.spec)
    }

    /// Every registered worker.
    pub fn workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        self.slots.iter().filter_map(|s| s.worker.as_ref())
    }

    /// The worker whose live child has `pid`.
    pub fn worker_by_pid(&self, pid: u32) -> Option<&WorkerInfo> {
        self.workers().find(|w| w.state.pid() == Some(pid))
    }

    /// How many children are alive or being forked.
    pub fn live_children(&self) -> usize {
        self.workers()
            .filter(|w| w.state.pid().is_some() || w.state == RunState::Forking)
            .count()
    }

    /// The next action to carry out, oldest first.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn worker_mut(&mut self, id: WorkerId) -> Option<&mut WorkerInfo> {
        let slot = self.slots.get_mut(id.index as usize)?;
        slot.worker.as_mut().filter(|w| w.id == id)
    }

    fn id_by_pid(&self, pid: u32) -> Option<WorkerId> {
        self.worker_by_pid(pid).map(|w| w.id)
    }

    /// Reacts to one event observed at `now`.
    pub fn handle(&mut self, now: Duration, event: Event) {
        if self.state == PmState::Exited {
            return;
        }
        match event {
            Event::ChildExited { pid, status, slot } => self.child_exited(now, pid, status, slot),
            Event::Forked { worker, pid } => self.forked(now, worker, pid),
            Event::ForkFailed { worker } => {
                if let Some(w) = self.worker_mut(worker)
                    && w.state == RunState::Forking
                {
                    self.stats.fork_failures += 1;
                    let retry = now + self.config.fork_retry_delay;
                    let w = self.worker_mut(worker).expect("checked above");
                    w.state = RunState::Waiting {
                        not_before: Some(retry),
                    };
                    if !matches!(self.state, PmState::Running) {
                        self.settle(now);
                    }
                }
            }
            Event::Shutdown(mode) => self.shutdown(now, mode),
            Event::PhaseReached(phase) => self.phase = self.phase.max(phase),
            Event::Terminate(id) => self.terminate(now, id),
            Event::SharedStateCorrupt => self.crash(now, None, 0, None),
            Event::ResetDone => self.reset_done(),
        }
    }

    /// One loop iteration at `now`: fires due timers (SIGKILL deadlines)
    /// and queues at most one fork.
    pub fn tick(&mut self, now: Duration) {
        self.fire_kill_timers(now);
        if self.state != PmState::Running {
            return;
        }
        let phase = self.phase;
        let next = self
            .workers()
            .filter(|w| w.ready_to_start(phase, now))
            .min_by_key(|w| w.id)
            .map(|w| w.id);
        if let Some(id) = next {
            self.next_start_seq += 1;
            let seq = self.next_start_seq;
            let w = self.worker_mut(id).expect("found above");
            w.state = RunState::Forking;
            w.starts += 1;
            w.start_seq = seq;
            self.stats.forks += 1;
            self.actions.push_back(Action::Fork { worker: id });
        }
    }

    /// How long the driver may wait for events before the next
    /// [`tick`](Self::tick): zero while a start is due, otherwise until the
    /// earliest timer, or `None` (wait for a signal) when nothing is timed.
    pub fn timeout(&self, now: Duration) -> Option<Duration> {
        if self.state == PmState::Exited {
            return Some(Duration::ZERO);
        }
        let mut earliest: Option<Duration> = None;
        let mut consider = |at: Duration| {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        };
        for w in self.workers() {
            match w.state {
                RunState::Stopping {
                    kill_at: Some(at), ..
                } => consider(at),
                RunState::Waiting { not_before }
                    if self.state == PmState::Running
                        && w.spec.start_phase() <= self.phase
                        && !w.terminating =>
                {
                    consider(not_before.unwrap_or(now))
                }
                _ => {}
            }
        }
        earliest.map(|at| at.saturating_sub(now))
    }

    fn forked(&mut self, now: Duration, id: WorkerId, pid: u32) {
        let state = self.state;
        let Some(w) = self.worker_mut(id) else {
            return;
        };
        if w.state != RunState::Forking {
            return;
        }
        w.state = RunState::Running { pid };
        let terminating = w.terminating;
        self.actions.push_back(Action::Status {
            worker: id,
            status: WorkerStatus::Started { pid },
        });
        // The world may have changed between the fork and its report (in a
        // real driver it cannot, but the core does not rely on that).
        match state {
            PmState::Running if terminating => self.signal_stop(now, id, Sig::Term),
            PmState::Running | PmState::Exited => {}
            PmState::Resetting { .. }
            | PmState::ShuttingDown {
                mode: ShutdownMode::Immediate,
            } => self.signal_stop(now, id, Sig::Quit),
            PmState::ShuttingDown {
                mode: ShutdownMode::Fast,
            } => self.signal_stop(now, id, Sig::Term),
            PmState::ShuttingDown {
                mode: ShutdownMode::Smart,
            } => self.settle(now),
        }
    }

    fn child_exited(&mut self, now: Duration, pid: u32, status: ExitStatus, report: SlotReport) {
        let Some(id) = self.id_by_pid(pid) else {
            // Not ours (or reaped twice): nothing to do.
            return;
        };
        let (shmem, terminating, restart) = {
            let w = self.worker_mut(id).expect("found by pid");
            w.last_exit = Some(status);
            w.state = RunState::Waiting { not_before: None };
            (w.spec.has_shmem(), w.terminating, w.spec.restart_policy())
        };
        self.actions.push_back(Action::Status {
            worker: id,
            status: WorkerStatus::Stopped,
        });
        let crashed = report == SlotReport::Dirty || (shmem && !status.is_normal());
        match self.state {
            PmState::Running if crashed => {
                self.crash(now, Some(id), pid, Some(status));
            }
            PmState::Running => {
                if status.is_finished() || terminating {
                    self.unregister(id);
                } else {
                    match restart {
                        Restart::Never => self.unregister(id),
                        Restart::After(delay) => {
                            let w = self.worker_mut(id).expect("found by pid");
                            w.state = RunState::Waiting {
                                not_before: Some(now + delay),
                            };
                        }
                    }
                }
            }
            PmState::Resetting { .. } => {
                if status.is_finished() || terminating {
                    self.unregister(id);
                }
                self.settle(now);
            }
            PmState::ShuttingDown { .. } => {
                self.settle(now);
            }
            PmState::Exited => {}
        }
    }

    /// A crash (or corruption) seen while running: SIGQUIT every other
    /// child and wait for all of them before the reset.
    fn crash(
        &mut self,
        now: Duration,
        worker: Option<WorkerId>,
        pid: u32,
        status: Option<ExitStatus>,
    ) {
        match self.state {
            PmState::Running => {}
            // Already resetting, or the postmaster is on its way out anyway.
            _ => return,
        }
        self.actions.push_back(Action::CrashDetected {
            worker,
            pid,
            status,
        });
        self.state = PmState::Resetting {
            reset_requested: false,
        };
        for id in self.live_ids_in_reverse_start_order() {
            self.signal_stop(now, id, Sig::Quit);
        }
        self.settle(now);
    }

    fn terminate(&mut self, now: Duration, id: WorkerId) {
        let Some(w) = self.worker_mut(id) else {
            return; // stale: acts on nothing
        };
        w.terminating = true;
        match w.state {
            RunState::Waiting { .. } => self.unregister(id),
            RunState::Running { .. } => {
                if self.state == PmState::Running {
                    self.signal_stop(now, id, Sig::Term);
                }
            }
            // Forking: signalled once the fork is reported (see forked());
            // Stopping: already on its way.
            RunState::Forking | RunState::Stopping { .. } => {}
        }
    }

    fn shutdown(&mut self, now: Duration, mode: ShutdownMode) {
        let previous = match self.state {
            PmState::ShuttingDown { mode: previous } if mode <= previous => return,
            PmState::ShuttingDown { mode: previous } => Some(previous),
            _ => None,
        };
        let was_resetting = matches!(self.state, PmState::Resetting { .. });
        self.state = PmState::ShuttingDown { mode };
        // Nothing waiting will start again.
        let waiting: Vec<WorkerId> = self
            .workers()
            .filter(|w| matches!(w.state, RunState::Waiting { .. }))
            .map(|w| w.id)
            .collect();
        for id in waiting {
            self.unregister(id);
        }
        let quit_sent = was_resetting || previous == Some(ShutdownMode::Immediate);
        match mode {
            ShutdownMode::Smart => {}
            ShutdownMode::Fast if !quit_sent => {
                for id in self.live_ids_in_reverse_start_order() {
                    if matches!(
                        self.worker(id).map(|w| w.state),
                        Some(RunState::Running { .. })
                    ) {
                        self.signal_stop(now, id, Sig::Term);
                    }
                }
            }
            ShutdownMode::Fast => {}
            ShutdownMode::Immediate if was_resetting => {}
            ShutdownMode::Immediate => {
                for id in self.live_ids_in_reverse_start_order() {
                    self.signal_stop(now, id, Sig::Quit);
                }
            }
        }
        self.settle(now);
    }

    /// After a child went or a mode changed: takes the next step of a reset
    /// or a shutdown if every child it waits for is gone.
    fn settle(&mut self, now: Duration) {
        match self.state {
            PmState::Resetting {
                reset_requested: false,
            } if self.live_children() == 0 => {
                self.state = PmState::Resetting {
                    reset_requested: true,
                };
                self.stats.resets += 1;
                self.actions.push_back(Action::ResetSegment);
            }
            PmState::ShuttingDown { mode } => {
                if mode == ShutdownMode::Smart {
                    let stopping = self
                        .workers()
                        .any(|w| matches!(w.state, RunState::Stopping { .. }));
                    if !stopping
                        && let Some(&last) = self.live_ids_in_reverse_start_order().first()
                        && matches!(
                            self.worker(last).map(|w| w.state),
                            Some(RunState::Running { .. })
                        )
                    {
                        self.signal_stop(now, last, Sig::Term);
                    }
                }
                if self.live_children() == 0 {
                    // Whatever is left was never started: it goes too.
                    let left: Vec<WorkerId> = self.workers().map(|w| w.id).collect();
                    for id in left {
                        self.unregister(id);
                    }
                    self.state = PmState::Exited;
                    self.actions.push_back(Action::Exit { code: 0 });
                }
            }
            _ => {}
        }
    }

    fn reset_done(&mut self) {
        let PmState::Resetting {
            reset_requested: true,
            ..
        } = self.state
        else {
            return;
        };
        self.state = PmState::Running;
        self.phase = self.config.initial_phase;
        // Workers that may restart do so at once, not after their delay;
        // those that may not are forgotten.
        let ids: Vec<WorkerId> = self.workers().map(|w| w.id).collect();
        for id in ids {
            let w = self.worker(id).expect("listed above");
            if w.terminating || w.spec.restart_policy() == Restart::Never && w.starts > 0 {
                self.unregister(id);
            } else if let Some(w) = self.worker_mut(id) {
                w.state = RunState::Waiting { not_before: None };
            }
        }
    }

    fn fire_kill_timers(&mut self, now: Duration) {
        let due: Vec<WorkerId> = self
            .workers()
            .filter(
                |w| matches!(w.state, RunState::Stopping { kill_at: Some(at), .. } if at <= now),
            )
            .map(|w| w.id)
            .collect();
        for id in due {
            self.kill(id);
        }
    }

    fn kill(&mut self, id: WorkerId) {
        let Some(w) = self.worker_mut(id) else { return };
        let Some(pid) = w.state.pid() else { return };
        if matches!(w.state, RunState::Stopping { kill_at: None, .. }) {
            return;
        }
        w.state = RunState::Stopping { pid, kill_at: None };
        self.actions.push_back(Action::Signal {
            pid,
            signal: Sig::Kill,
        });
    }

    /// Sends `signal` to a running worker and arms its SIGKILL timer: the
    /// worker's own shutdown timeout after SIGTERM, the crash timeout after
    /// SIGQUIT. A worker already stopping is only escalated from TERM to
    /// QUIT.
    fn signal_stop(&mut self, now: Duration, id: WorkerId, signal: Sig) {
        let crash_timeout = self.config.crash_kill_timeout;
        let Some(w) = self.worker_mut(id) else { return };
        let (pid, kill_at) = match w.state {
            RunState::Running { pid } => (pid, None),
            RunState::Stopping { pid, kill_at } if signal == Sig::Quit => (pid, kill_at),
            _ => return,
        };
        let timeout = match signal {
            Sig::Term => w.spec.shutdown_timeout_value(),
            Sig::Quit | Sig::Kill => crash_timeout,
        };
        let due = now + timeout;
        w.state = RunState::Stopping {
            pid,
            kill_at: Some(kill_at.map_or(due, |at| at.min(due))),
        };
        self.actions.push_back(Action::Signal { pid, signal });
    }

    fn live_ids_in_reverse_start_order(&self) -> Vec<WorkerId> {
        let mut live: Vec<(u64, WorkerId)> = self
            .workers()
            .filter(|w| w.state.pid().is_some())
            .map(|w| (w.start_seq, w.id))
            .collect();
        live.sort_unstable_by(|a, b| b.cmp(a));
        live.into_iter().map(|(_, id)| id).collect()
    }

    fn unregister(&mut self, id: WorkerId) {
        let Some(slot) = self.slots.get_mut(id.index as usize) else {
            return;
        };
        if slot.worker.as_ref().is_some_and(|w| w.id == id) {
            let w = slot.worker.take().expect("checked");
            debug_assert!(w.state.pid().is_none(), "unregistering a live worker");
            self.actions.push_back(Action::Unregistered {
                worker: id,
                name: w.spec.name().to_owned(),
            });
        }
    }
}

impl WorkerInfo {
    fn ready_to_start(&self, phase: Phase, now: Duration) -> bool {
        match self.state {
            RunState::Waiting { not_before } => {
                !self.terminating
                    && self.spec.start_phase() <= phase
                    && not_before.is_none_or(|at| at <= now)
            }
            _ => false,
        }
    }
}
