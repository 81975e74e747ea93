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

use crate::group::{Escalation, GroupSpec, RestartWindow, Strategy};
use crate::spec::{OnCrash, Phase, Restart, WorkerSpec};

/// How many recent exits a worker remembers for the escalation log line.
const RECENT_EXITS: usize = 5;

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

/// Whether a member of a group that fails (escalates with
/// [`Escalation::StopGroup`]) stays registered, as failed: unless it was
/// asked to go, or would never restart after a crash anyway.
fn kept_when_its_group_fails(w: &WorkerInfo) -> bool {
    !w.terminating && w.spec.restart_policy().restarts_after(false)
}

/// When a wait of `delay` from `now` ends. Saturating: an absurd delay
/// means "not in this life", never the `None` of "due now".
fn not_before(now: Duration, delay: Duration) -> Option<Duration> {
    Some(now.saturating_add(delay))
}

/// Whether `worker` ended with exit 0 and its policy does not start a
/// finished worker again.
fn finished_for_good(worker: Option<&WorkerInfo>, status: ExitStatus) -> bool {
    status.is_finished() && worker.is_none_or(|w| !w.spec.restart_policy().restarts_after(true))
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
    /// The slot was still active (the child died without its cleanup) but
    /// outside every critical section: shared state is consistent, and a
    /// worker whose policy is [`OnCrash::Contain`] can be restarted alone.
    Abandoned,
    /// The slot was inside a critical section, or overwritten: shared state
    /// may be damaged.
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
    /// An operator stops, starts or restarts a worker (`postmaster
    /// stop|start|restart`).
    Control {
        /// The worker.
        worker: WorkerId,
        /// What to do.
        op: Control,
    },
    /// The driver found shared state inconsistent (a corrupt free list, a
    /// garbage registration slot): handled like a crash.
    SharedStateCorrupt,
    /// The driver reset the segment, as [`Action::ResetSegment`] asked.
    ResetDone,
    /// The worker reported that it is ready.
    Ready(WorkerId),
    /// The driver saw the worker's heartbeat advance.
    Heartbeat(WorkerId),
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
    /// A shared-memory worker crashed outside every critical section and
    /// was contained: restarted alone, no reset. The driver releases what
    /// it held (names, inbox, ring ends) like after a clean exit.
    Contained {
        /// The worker.
        worker: WorkerId,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
    /// A worker missed its watchdog heartbeat and is being killed.
    WatchdogExpired {
        /// The worker.
        worker: WorkerId,
        /// Its pid.
        pid: u32,
    },
    /// A group exceeded its restart intensity (for the log).
    Escalated {
        /// The group's name.
        group: String,
        /// The worker whose failure was one too many.
        worker: String,
        /// Its most recent exits, oldest first.
        exits: Vec<ExitStatus>,
        /// What happens now.
        escalation: Escalation,
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
    /// Seed of the generator behind backoff jitter (the core stays
    /// deterministic).
    pub seed: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            max_workers: 64,
            initial_phase: Phase::PostmasterStart,
            crash_kill_timeout: Duration::from_secs(5),
            fork_retry_delay: Duration::from_millis(100),
            seed: 0x5eed,
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
    /// The spec names a group that was never added.
    #[error("no supervision group named {name:?} (groups: {known})")]
    UnknownGroup {
        /// The name.
        name: String,
        /// The groups that exist, comma-separated.
        known: String,
    },
    /// A group with this name exists already.
    #[error("a group named {0:?} already exists")]
    DuplicateGroup(String),
}

/// An operator's request about one worker. Unlike a failure, none of them
/// counts towards restart intensity or backoff, and none restarts the
/// worker's siblings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// Stop it (SIGTERM, then its shutdown policy) and keep it stopped,
    /// whatever its restart type says, until [`Control::Start`].
    Stop,
    /// Start it now: lifts a [`Control::Stop`] and skips a pending
    /// restart delay.
    Start,
    /// Stop it and start it again at once (or start it now if it is not
    /// running).
    Restart,
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
    /// Stopped as part of its group's restart (one for all, rest for one):
    /// waits until every affected sibling is down, then starts again.
    Held,
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
    /// Stopped by an operator ([`Control::Stop`]): not started until
    /// [`Control::Start`].
    pub suspended: bool,
    /// Its group gave up ([`Escalation::StopGroup`]): it stays registered
    /// but is not started until an operator starts it (or any other member
    /// of the group), which starts the whole group afresh.
    pub failed: bool,
    /// The supervision group (index; 0 is the root).
    pub group: u32,
    /// Reported ready since its last start.
    pub ready: bool,
    /// Restarts after failures (not the first start, not reset restarts).
    pub restarts: u64,
    /// Failures in a row (drives the backoff); cleared once it runs for
    /// the backoff's cap.
    pub failures: u32,
    /// Its most recent exits, oldest first.
    pub recent_exits: VecDeque<ExitStatus>,
    /// When its current run began.
    pub started_at: Option<Duration>,
    /// When the watchdog fires unless a heartbeat comes first.
    pub watchdog_due: Option<Duration>,
    /// Position in start order (higher = started later).
    start_seq: u64,
    /// Position in registration order (its group's start order).
    reg_seq: u64,
    /// Being stopped by its group's restart, not failing on its own.
    stopping_for_group: bool,
    /// SIGKILL was sent.
    killed: bool,
    /// An operator asked for a restart: its coming exit starts it again
    /// at once, outside its restart policy.
    restart_asked: bool,
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
    /// Crashes of shared-memory workers contained without a reset.
    pub containments: u64,
    /// Forks asked for.
    pub forks: u64,
    /// Failed forks reported.
    pub fork_failures: u64,
    /// Restarts after failures.
    pub restarts: u64,
    /// Groups that exceeded their restart intensity.
    pub escalations: u64,
    /// Workers killed by their watchdog.
    pub watchdog_kills: u64,
}

/// A supervision group's state.
#[derive(Debug)]
struct Group {
    spec: GroupSpec,
    window: RestartWindow,
    /// Over its intensity: stopping, never restarting.
    escalated: bool,
    /// The delay before held members start, once every affected sibling is
    /// down.
    pending_delay: Option<Duration>,
}

/// OTP's `count_children`, for one group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChildCounts {
    /// Registered workers.
    pub specs: usize,
    /// Workers with a live process.
    pub active: usize,
    /// Workers reported ready.
    pub ready: usize,
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
    next_reg_seq: u64,
    stats: CoreStats,
    groups: Vec<Group>,
    rng: u64,
    exit_code: i32,
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
            rng: config.seed,
            config,
            slots: Vec::new(),
            state: PmState::Running,
            actions: VecDeque::new(),
            next_start_seq: 0,
            next_reg_seq: 0,
            stats: CoreStats::default(),
            groups: vec![Group::new(GroupSpec::root())],
            exit_code: 0,
        }
    }

    /// Adds a supervision group that specs can name.
    pub fn add_group(&mut self, spec: GroupSpec) -> Result<u32, RegisterError> {
        if self.group_index(spec.name()).is_some() {
            return Err(RegisterError::DuplicateGroup(spec.name().to_owned()));
        }
        self.groups.push(Group::new(spec));
        Ok(self.groups.len() as u32 - 1)
    }

    fn group_index(&self, name: &str) -> Option<u32> {
        self.groups
            .iter()
            .position(|g| g.spec.name() == name)
            .map(|i| i as u32)
    }

    /// Every group's settings, root first.
    pub fn groups(&self) -> impl Iterator<Item = &GroupSpec> {
        self.groups.iter().map(|g| &g.spec)
    }

    /// OTP's `which_children`: the group's workers in start order.
    pub fn which_children(&self, group: &str) -> Vec<&WorkerInfo> {
        let Some(g) = self.group_index(group) else {
            return Vec::new();
        };
        let mut children: Vec<&WorkerInfo> = self.workers().filter(|w| w.group == g).collect();
        children.sort_by_key(|w| w.reg_seq);
        children
    }

    /// OTP's `count_children`.
    pub fn count_children(&self, group: &str) -> ChildCounts {
        let children = self.which_children(group);
        ChildCounts {
            specs: children.len(),
            active: children.iter().filter(|w| w.state.pid().is_some()).count(),
            ready: children.iter().filter(|w| w.ready).count(),
        }
    }

    /// A uniform draw from `[0, 1)` (splitmix64), for backoff jitter.
    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
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
        let group = match spec.group_name() {
            None => 0,
            Some(name) => self
                .group_index(name)
                .ok_or_else(|| RegisterError::UnknownGroup {
                    name: name.to_owned(),
                    known: self
                        .groups
                        .iter()
                        .map(|g| g.spec.name())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
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
        self.next_reg_seq += 1;
        slot.worker = Some(WorkerInfo {
            id,
            spec,
            state: RunState::Waiting { not_before: None },
            dynamic,
            starts: 0,
            last_exit: None,
            terminating: false,
            suspended: false,
            failed: false,
            restart_asked: false,
            group,
            ready: false,
            restarts: 0,
            failures: 0,
            recent_exits: VecDeque::new(),
            started_at: None,
            watchdog_due: None,
            start_seq: 0,
            reg_seq: self.next_reg_seq,
            stopping_for_group: false,
            killed: false,
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
                    let retry = now.saturating_add(self.config.fork_retry_delay);
                    let w = self.worker_mut(worker).expect("checked above");
                    w.state = RunState::Waiting {
                        not_before: Some(retry),
                    };
                    // A failed fork is no start: a restart=never worker
                    // still gets its one run (after a reset too).
                    w.starts -= 1;
                    if w.terminating {
                        // Terminated while forking: it will not start now.
                        self.unregister(worker);
                    }
                    if !matches!(self.state, PmState::Running) {
                        self.settle(now);
                    }
                }
            }
            Event::Shutdown(mode) => self.shutdown(now, mode),
            Event::PhaseReached(phase) => self.phase = self.phase.max(phase),
            Event::Terminate(id) => self.terminate(now, id),
            Event::Control { worker, op } => self.control(now, worker, op),
            Event::SharedStateCorrupt => self.crash(now, None, 0, None),
            Event::ResetDone => self.reset_done(),
            Event::Ready(id) => {
                if let Some(w) = self.worker_mut(id)
                    && matches!(w.state, RunState::Running { .. })
                {
                    w.ready = true;
                }
            }
            Event::Heartbeat(id) => {
                if let Some(w) = self.worker_mut(id)
                    && matches!(w.state, RunState::Running { .. })
                    && let Some(interval) = w.spec.watchdog_interval()
                {
                    w.watchdog_due = now.checked_add(interval);
                }
            }
        }
    }

    /// One loop iteration at `now`: fires due timers (SIGKILL deadlines)
    /// and queues at most one fork.
    pub fn tick(&mut self, now: Duration) {
        self.fire_kill_timers(now);
        if self.state != PmState::Running {
            return;
        }
        let next = self
            .workers()
            .filter(|w| self.may_start(w) && w.due(now))
            .min_by_key(|w| (w.reg_seq, w.id))
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
                    if self.state == PmState::Running && self.may_start(w) =>
                {
                    consider(not_before.unwrap_or(now))
                }
                RunState::Running { .. } => {
                    if let Some(at) = w.watchdog_due {
                        consider(at)
                    }
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
        w.started_at = Some(now);
        w.ready = false;
        w.killed = false;
        w.watchdog_due = w.spec.watchdog_interval().and_then(|i| now.checked_add(i));
        let terminating = w.terminating || w.stopping_for_group || w.suspended;
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
        let (shmem, policy, terminating, for_group, ran_for, operator) = {
            let w = self.worker_mut(id).expect("found by pid");
            w.last_exit = Some(status);
            if w.recent_exits.len() == RECENT_EXITS {
                w.recent_exits.pop_front();
            }
            w.recent_exits.push_back(status);
            w.state = RunState::Waiting { not_before: None };
            w.ready = false;
            w.watchdog_due = None;
            let ran_for = w
                .started_at
                .map_or(Duration::ZERO, |t| now.saturating_sub(t));
            (
                w.spec.has_shmem(),
                w.spec.crash_policy(),
                w.terminating,
                std::mem::take(&mut w.stopping_for_group),
                ran_for,
                w.suspended || std::mem::take(&mut w.restart_asked),
            )
        };
        self.actions.push_back(Action::Status {
            worker: id,
            status: WorkerStatus::Stopped,
        });
        let abnormal = !status.is_normal() || report == SlotReport::Abandoned;
        let must_reset =
            report == SlotReport::Dirty || (shmem && abnormal && policy == OnCrash::ResetAll);
        // An exit an operator asked for (stop, restart) is theirs, not the
        // worker's own.
        let for_operator = operator && !terminating;
        // Whether the exit ends the registration when a reset follows or is
        // under way. Exit 0 means finished even with a dirty slot: the reset
        // must not start it again, unless its policy restarts a finished
        // worker too (Permanent; `postmaster chaos` found a permanent worker
        // unregistered for good by an exit 0 inside a critical section), or
        // the exit was an operator's, or its failed group keeps it.
        let ends_at_reset = (finished_for_good(self.worker(id), status) || terminating)
            && !for_operator
            && !self.kept_by_escalation(id);
        match self.state {
            PmState::Running if must_reset => {
                self.crash(now, Some(id), pid, Some(status));
                if ends_at_reset {
                    self.unregister(id);
                }
            }
            PmState::Running => {
                if shmem && abnormal {
                    self.stats.containments += 1;
                    self.actions.push_back(Action::Contained {
                        worker: id,
                        pid,
                        status,
                    });
                }
                if for_operator {
                    // Stopped or restarted by an operator: it waits (or
                    // starts again at once), whatever its policy says.
                    let g = self.worker(id).map_or(0, |w| w.group as usize);
                    if self.groups[g].escalated {
                        self.settle_escalation(g);
                    } else if for_group {
                        self.release_held(g, now);
                    }
                    return;
                }
                self.after_exit(now, id, status, for_group, ran_for);
            }
            PmState::Resetting { .. } => {
                if ends_at_reset {
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

    /// Supervision after an exit that needs no reset: restart per policy,
    /// group strategy, intensity and backoff.
    fn after_exit(
        &mut self,
        now: Duration,
        id: WorkerId,
        status: ExitStatus,
        for_group: bool,
        ran_for: Duration,
    ) {
        let w = self.worker(id).expect("caller checked");
        let g = w.group as usize;
        let policy = w.spec.restart_policy();
        if self.groups[g].escalated {
            // Stopped by its group's escalation (or gone while it stops):
            // kept as failed whatever its exit, as a group restart keeps
            // the siblings it stops, unless it was to go anyway.
            if !kept_when_its_group_fails(w) {
                self.unregister(id);
            } else {
                self.worker_mut(id).expect("checked").state = RunState::Held;
            }
            self.settle_escalation(g);
            return;
        }
        if for_group {
            // Stopped by its group's restart: wait for the others.
            if w.terminating || policy == Restart::Temporary {
                self.unregister(id);
            } else {
                self.worker_mut(id).expect("checked").state = RunState::Held;
            }
            self.release_held(g, now);
            return;
        }
        if w.terminating || !policy.restarts_after(status.is_finished()) {
            self.unregister(id);
            return;
        }
        let spec = self.groups[g].spec.clone();
        let failures = {
            let w = self.worker_mut(id).expect("checked");
            if ran_for >= spec.backoff_value().max && !spec.backoff_value().max.is_zero() {
                w.failures = 0;
            }
            w.failures = w.failures.saturating_add(1);
            w.failures
        };
        if !self.groups[g].window.allow(spec.intensity_value(), now) {
            self.escalate(g, now, id);
            return;
        }
        let random = self.random();
        let delay = match policy {
            Restart::After(delay) => delay,
            _ => spec.backoff_value().delay(failures, random),
        };
        self.stats.restarts += 1;
        let w = self.worker_mut(id).expect("checked");
        w.restarts += 1;
        let reg_seq = w.reg_seq;
        match spec.strategy_value() {
            Strategy::OneForOne => {
                w.state = RunState::Waiting {
                    not_before: not_before(now, delay),
                };
            }
            strategy => {
                w.state = RunState::Held;
                let affected: Vec<WorkerId> = self
                    .workers()
                    .filter(|o| o.group as usize == g && o.id != id)
                    .filter(|o| strategy == Strategy::OneForAll || o.reg_seq > reg_seq)
                    .map(|o| o.id)
                    .collect();
                for other in affected {
                    self.hold_for_group(now, other);
                }
                let group = &mut self.groups[g];
                group.pending_delay = Some(group.pending_delay.map_or(delay, |d| d.max(delay)));
                self.release_held(g, now);
            }
        }
    }

    /// Stops (or holds) a sibling of a failed worker for its group's
    /// restart. Temporary workers are not restarted: they go for good.
    fn hold_for_group(&mut self, now: Duration, id: WorkerId) {
        let Some(w) = self.worker_mut(id) else { return };
        if w.spec.restart_policy() == Restart::Temporary {
            w.terminating = true;
        }
        match w.state {
            RunState::Running { .. } => {
                w.stopping_for_group = true;
                self.signal_stop(now, id, Sig::Term);
            }
            RunState::Stopping { .. } | RunState::Forking => w.stopping_for_group = true,
            RunState::Waiting { .. } if w.terminating => self.unregister(id),
            RunState::Waiting { .. } => w.state = RunState::Held,
            RunState::Held => {}
        }
    }

    /// Starts a group's held workers once none of its members is still
    /// being stopped for the group.
    fn release_held(&mut self, g: usize, now: Duration) {
        let busy = self.workers().any(|w| {
            w.group as usize == g
                && w.stopping_for_group
                && (w.state.pid().is_some() || w.state == RunState::Forking)
        });
        if busy {
            return;
        }
        let delay = self.groups[g].pending_delay.take().unwrap_or_default();
        let held: Vec<WorkerId> = self
            .workers()
            .filter(|w| w.group as usize == g && w.state == RunState::Held)
            .map(|w| w.id)
            .collect();
        for id in held {
            if let Some(w) = self.worker_mut(id) {
                w.state = RunState::Waiting {
                    not_before: not_before(now, delay),
                };
            }
        }
    }

    /// A group failed once too often: stop it, then shut down or leave it
    /// stopped, as its escalation says.
    fn escalate(&mut self, g: usize, now: Duration, id: WorkerId) {
        self.stats.escalations += 1;
        let group = &mut self.groups[g];
        group.escalated = true;
        group.pending_delay = None;
        let escalation = group.spec.escalation_value();
        let group_name = group.spec.name().to_owned();
        let w = self.worker_mut(id).expect("caller checked");
        w.state = RunState::Held;
        let worker = w.spec.name().to_owned();
        let exits = w.recent_exits.iter().copied().collect();
        self.actions.push_back(Action::Escalated {
            group: group_name,
            worker,
            exits,
            escalation,
        });
        match escalation {
            Escalation::Shutdown => {
                self.exit_code = 1;
                self.shutdown(now, ShutdownMode::Fast);
            }
            Escalation::StopGroup => {
                let members: Vec<WorkerId> = self
                    .live_ids_in_reverse_start_order()
                    .into_iter()
                    .filter(|m| self.worker(*m).is_some_and(|w| w.group as usize == g))
                    .collect();
                for m in members {
                    self.signal_stop(now, m, Sig::Term);
                }
                let waiting: Vec<WorkerId> = self
                    .workers()
                    .filter(|w| w.group as usize == g && w.state.pid().is_none())
                    .filter(|w| w.state != RunState::Forking)
                    .map(|w| w.id)
                    .collect();
                for m in waiting {
                    if let Some(w) = self.worker_mut(m) {
                        w.state = RunState::Held;
                    }
                }
                self.settle_escalation(g);
            }
        }
    }

    /// Once every worker of an escalated group is down, the group has
    /// failed: its members stay registered, marked failed, and start again
    /// only when an operator revives the group ([`Core::revive_group`]).
    /// Members that would never restart after a crash go for good.
    fn settle_escalation(&mut self, g: usize) {
        let live = self.workers().any(|w| {
            w.group as usize == g && (w.state.pid().is_some() || w.state == RunState::Forking)
        });
        if live || self.state != PmState::Running {
            return;
        }
        let members: Vec<WorkerId> = self
            .workers()
            .filter(|w| w.group as usize == g)
            .map(|w| w.id)
            .collect();
        for m in members {
            let w = self.worker_mut(m).expect("listed above");
            if !kept_when_its_group_fails(w) {
                self.unregister(m);
            } else {
                w.failed = true;
                w.state = RunState::Held;
            }
        }
    }

    /// Whether `id` belongs to an escalated group that keeps it, whatever
    /// its exit (see [`kept_when_its_group_fails`]).
    fn kept_by_escalation(&self, id: WorkerId) -> bool {
        self.worker(id).is_some_and(|w| {
            self.groups[w.group as usize].escalated && kept_when_its_group_fails(w)
        })
    }

    /// An operator started a member of a failed group: the group starts
    /// afresh, as if just added. Its restart history is forgotten, and
    /// every failed member not stopped by an operator starts at once.
    fn revive_group(&mut self, g: usize) {
        let group = &mut self.groups[g];
        group.escalated = false;
        group.window = RestartWindow::default();
        group.pending_delay = None;
        for slot in &mut self.slots {
            let Some(w) = slot.worker.as_mut() else {
                continue;
            };
            if w.group as usize == g && w.failed {
                w.failed = false;
                w.failures = 0;
                w.state = RunState::Waiting { not_before: None };
            }
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
            RunState::Waiting { .. } | RunState::Held => self.unregister(id),
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

    fn control(&mut self, now: Duration, id: WorkerId, op: Control) {
        let running = self.state == PmState::Running;
        let Some(w) = self.worker_mut(id) else {
            return; // stale: acts on nothing
        };
        if w.terminating {
            return;
        }
        let live = matches!(w.state, RunState::Running { .. });
        match op {
            Control::Stop => {
                w.suspended = true;
                w.restart_asked = false;
                if live && running {
                    self.signal_stop(now, id, Sig::Term);
                }
            }
            Control::Start | Control::Restart => {
                w.suspended = false;
                w.failures = 0;
                if w.failed {
                    let g = w.group as usize;
                    self.revive_group(g);
                    return;
                }
                match w.state {
                    RunState::Waiting { .. } => w.state = RunState::Waiting { not_before: None },
                    RunState::Running { .. } if op == Control::Restart => {
                        w.restart_asked = true;
                        if running {
                            self.signal_stop(now, id, Sig::Term);
                        }
                    }
                    // Still on its way out after a Stop (or being stopped
                    // anyway): its coming exit is the operator's, and it
                    // starts again at once.
                    RunState::Stopping { .. } if running => w.restart_asked = true,
                    _ => {}
                }
            }
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
            .filter(|w| matches!(w.state, RunState::Waiting { .. } | RunState::Held))
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
                    self.actions.push_back(Action::Exit {
                        code: self.exit_code,
                    });
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
            // A worker that never ran keeps waiting for its start; one that
            // ran restarts if its policy restarts it after a crash; one an
            // operator stopped stays, stopped, whatever its policy.
            if w.terminating
                || !w.suspended && w.starts > 0 && !w.spec.restart_policy().restarts_after(false)
            {
                self.unregister(id);
            } else if let Some(w) = self.worker_mut(id) {
                w.state = RunState::Waiting { not_before: None };
                w.stopping_for_group = false;
            }
        }
        for group in &mut self.groups {
            group.pending_delay = None;
        }
        // A group that escalated while the reset was under way could not
        // settle then (nothing settles during a reset): it does now.
        for g in 0..self.groups.len() {
            if self.groups[g].escalated {
                self.settle_escalation(g);
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
        let expired: Vec<(WorkerId, u32)> = self
            .workers()
            .filter(|w| w.watchdog_due.is_some_and(|at| at <= now))
            .filter_map(|w| match w.state {
                RunState::Running { pid } => Some((w.id, pid)),
                _ => None,
            })
            .collect();
        for (id, pid) in expired {
            self.stats.watchdog_kills += 1;
            if let Some(w) = self.worker_mut(id) {
                w.watchdog_due = None;
            }
            self.actions
                .push_back(Action::WatchdogExpired { worker: id, pid });
            self.kill(id);
        }
    }

    fn kill(&mut self, id: WorkerId) {
        let Some(w) = self.worker_mut(id) else { return };
        let Some(pid) = w.state.pid() else { return };
        if w.killed {
            return;
        }
        w.killed = true;
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
        if w.killed {
            // SIGKILL is on its way: nothing milder is worth sending, and no
            // SIGKILL timer may be armed again (kill() would not clear it,
            // and timeout() would stay zero until the child is reaped).
            return;
        }
        let (pid, kill_at) = match w.state {
            RunState::Running { pid } => (pid, None),
            RunState::Stopping { pid, kill_at } if signal == Sig::Quit => (pid, kill_at),
            _ => return,
        };
        let timeout = match signal {
            Sig::Term => w.spec.shutdown_timeout_value(),
            Sig::Quit | Sig::Kill => crash_timeout,
        };
        if timeout.is_zero() {
            // OTP's brutal kill (or a zero crash timeout).
            self.kill(id);
            return;
        }
        // Duration::MAX (OTP's infinity) overflows: no SIGKILL is due.
        let due = now.checked_add(timeout);
        w.state = RunState::Stopping {
            pid,
            kill_at: match (kill_at, due) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
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
    /// Whether its restart delay (or fork retry) has passed.
    fn due(&self, now: Duration) -> bool {
        match self.state {
            RunState::Waiting { not_before } => not_before.is_none_or(|at| at <= now),
            _ => false,
        }
    }
}

impl Group {
    fn new(spec: GroupSpec) -> Self {
        Group {
            spec,
            window: RestartWindow::default(),
            escalated: false,
            pending_delay: None,
        }
    }
}

impl Core {
    /// Whether a waiting worker may start once its delay passes: its phase
    /// is reached, nobody asked it to stop, its group is not escalated, and
    /// in an ordered group every member registered before it is running
    /// and ready.
    fn may_start(&self, w: &WorkerInfo) -> bool {
        if !matches!(w.state, RunState::Waiting { .. })
            || w.terminating
            || w.suspended
            || w.spec.start_phase() > self.phase
        {
            return false;
        }
        let group = &self.groups[w.group as usize];
        if group.escalated {
            return false;
        }
        !group.spec.is_ordered()
            || self.workers().all(|o| {
                o.group != w.group
                    || o.reg_seq >= w.reg_seq
                    || (matches!(o.state, RunState::Running { .. }) && o.ready)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Intensity;

    const SEC: Duration = Duration::from_secs(1);

    /// A core with one group ("g": one for one, one restart a minute,
    /// stop the group on escalation) holding workers `a` and `b`.
    fn core_with_group() -> (Core, WorkerId, WorkerId) {
        let mut core = Core::new(CoreConfig::default());
        core.add_group(
            GroupSpec::new("g")
                .intensity(Intensity {
                    max_restarts: 1,
                    period: Duration::from_secs(60),
                })
                .escalation(Escalation::StopGroup),
        )
        .unwrap();
        let spec = |name| {
            WorkerSpec::new(name)
                .group("g")
                .restart(Restart::After(SEC))
        };
        let a = core.register(spec("a"), false).unwrap();
        let b = core.register(spec("b"), false).unwrap();
        (core, a, b)
    }

    /// Ticks at `now` and answers every fork with pid `next_pid++`;
    /// returns the workers forked.
    fn tick_and_fork(core: &mut Core, now: Duration, next_pid: &mut u32) -> Vec<WorkerId> {
        let mut forked = Vec::new();
        for _ in 0..8 {
            core.tick(now);
            let mut any = false;
            while let Some(action) = core.next_action() {
                if let Action::Fork { worker } = action {
                    core.handle(
                        now,
                        Event::Forked {
                            worker,
                            pid: *next_pid,
                        },
                    );
                    *next_pid += 1;
                    forked.push(worker);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        forked
    }

    /// A worker outside the group, restarted after crashes.
    fn outsider() -> WorkerSpec {
        WorkerSpec::new("other").restart(Restart::After(SEC))
    }

    fn control(core: &mut Core, now: Duration, worker: WorkerId, op: Control) {
        core.handle(now, Event::Control { worker, op });
    }

    fn pid_of(core: &Core, id: WorkerId) -> u32 {
        core.worker(id)
            .and_then(|w| w.state.pid())
            .expect("running")
    }

    fn exit(core: &mut Core, now: Duration, id: WorkerId, status: ExitStatus) {
        let pid = pid_of(core, id);
        core.handle(
            now,
            Event::ChildExited {
                pid,
                status,
                slot: SlotReport::Clean,
            },
        );
    }

    /// Drives `a` over its group's intensity; `b` is stopped with it and
    /// the group is left failed.
    fn fail_the_group(core: &mut Core, a: WorkerId, b: WorkerId, pid: &mut u32) -> Duration {
        assert_eq!(tick_and_fork(core, Duration::ZERO, pid).len(), 2);
        exit(core, SEC, a, ExitStatus::Code(1));
        assert_eq!(
            tick_and_fork(core, 3 * SEC, pid),
            vec![a],
            "one restart allowed"
        );
        exit(core, 4 * SEC, a, ExitStatus::Code(1));
        // Escalated: b gets SIGTERM and nothing starts again.
        assert_eq!(core.stats().escalations, 1);
        assert!(matches!(
            core.worker(b).unwrap().state,
            RunState::Stopping { .. }
        ));
        exit(core, 5 * SEC, b, ExitStatus::Code(0));
        assert!(tick_and_fork(core, 60 * SEC, pid).is_empty());
        60 * SEC
    }

    #[test]
    fn a_restart_delay_too_long_to_add_never_comes_due() {
        let mut core = Core::new(CoreConfig::default());
        let forever = WorkerSpec::new("w").restart(Restart::After(Duration::MAX));
        let w = core.register(forever, false).unwrap();
        let mut pid = 100;
        assert_eq!(tick_and_fork(&mut core, Duration::ZERO, &mut pid), vec![w]);
        exit(&mut core, SEC, w, ExitStatus::Code(1));
        assert!(tick_and_fork(&mut core, 2 * SEC, &mut pid).is_empty());
        assert!(matches!(
            core.worker(w).unwrap().state,
            RunState::Waiting { not_before: Some(at) } if at == Duration::MAX
        ));
    }

    #[test]
    fn a_stopped_group_keeps_its_workers_as_failed() {
        let (mut core, a, b) = core_with_group();
        let mut pid = 100;
        fail_the_group(&mut core, a, b, &mut pid);
        for id in [a, b] {
            let w = core.worker(id).expect("still registered");
            assert!(w.failed, "{} failed", w.spec.name());
            assert_eq!(w.state, RunState::Held);
        }
        assert_eq!(core.stats().restarts, 1);
    }

    #[test]
    fn starting_a_failed_worker_starts_its_whole_group_afresh() {
        let (mut core, a, b) = core_with_group();
        let mut pid = 100;
        let now = fail_the_group(&mut core, a, b, &mut pid);
        control(&mut core, now, b, Control::Start);
        let mut started = tick_and_fork(&mut core, now, &mut pid);
        started.sort_by_key(|id| id.index);
        assert_eq!(started, vec![a, b], "both members start at once");
        assert!(core.workers().all(|w| !w.failed));
        // The restart history is forgotten: one failure is again allowed.
        exit(&mut core, now + SEC, a, ExitStatus::Code(1));
        assert_eq!(tick_and_fork(&mut core, now + 3 * SEC, &mut pid), vec![a]);
        assert_eq!(core.stats().escalations, 1);
    }

    #[test]
    fn a_failed_worker_stopped_by_an_operator_stays_stopped_when_its_group_revives() {
        let (mut core, a, b) = core_with_group();
        let mut pid = 100;
        let now = fail_the_group(&mut core, a, b, &mut pid);
        control(&mut core, now, a, Control::Stop);
        assert!(core.worker(a).unwrap().suspended);
        control(&mut core, now, b, Control::Restart);
        assert_eq!(tick_and_fork(&mut core, now, &mut pid), vec![b]);
        let a_now = core.worker(a).unwrap();
        assert!(a_now.suspended && a_now.state.pid().is_none());
    }

    #[test]
    fn a_reset_leaves_a_failed_group_failed() {
        let (mut core, a, b) = core_with_group();
        let mut pid = 100;
        let now = fail_the_group(&mut core, a, b, &mut pid);
        let other = core.register(outsider(), false).unwrap();
        assert_eq!(tick_and_fork(&mut core, now, &mut pid), vec![other]);
        exit(&mut core, now, other, ExitStatus::Signaled(9));
        while let Some(action) = core.next_action() {
            if action == Action::ResetSegment {
                core.handle(now, Event::ResetDone);
            }
        }
        assert_eq!(core.state(), PmState::Running);
        assert_eq!(tick_and_fork(&mut core, now, &mut pid), vec![other]);
        assert!(core.worker(a).unwrap().failed && core.worker(b).unwrap().failed);
    }

    #[test]
    fn a_group_that_escalates_during_a_reset_fails_once_the_reset_is_done() {
        let (mut core, a, b) = core_with_group();
        let mut pid = 100;
        let other = core.register(outsider(), false).unwrap();
        assert_eq!(tick_and_fork(&mut core, Duration::ZERO, &mut pid).len(), 3);
        exit(&mut core, SEC, a, ExitStatus::Code(1));
        assert_eq!(tick_and_fork(&mut core, 3 * SEC, &mut pid), vec![a]);
        // a's second failure escalates the group; while b is being
        // stopped, a crash elsewhere starts a reset, during which nothing
        // settles.
        exit(&mut core, 4 * SEC, a, ExitStatus::Code(1));
        exit(&mut core, 4 * SEC, other, ExitStatus::Signaled(9));
        exit(&mut core, 4 * SEC, b, ExitStatus::Code(0));
        let mut reset = false;
        while let Some(action) = core.next_action() {
            if action == Action::ResetSegment {
                reset = true;
                core.handle(4 * SEC, Event::ResetDone);
            }
        }
        assert!(reset);
        let started = tick_and_fork(&mut core, 10 * SEC, &mut pid);
        assert_eq!(started, vec![other], "only the worker outside the group");
        let failed = [a, b].map(|id| core.worker(id).is_some_and(|w| w.failed));
        assert_eq!(failed, [true, true]);
    }
}
