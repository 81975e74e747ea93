//! The OS driver: one thread, a signalfd, `waitpid`, `fork`, and the
//! [`Core`] deciding what to do.
//!
//! [`Postmaster::run`] creates the segment, blocks the signals it handles
//! and reads them from a signalfd, then loops (see the core's module docs
//! for the iteration): wait for a signal at most as long as the core asks,
//! reap every exited child, scan the registration slots, let the core tick,
//! and carry out its actions. Shared memory is read as untrusted: a garbage
//! registration is rejected, a corrupt proc array resets the segment, and
//! no loop over shared state is unbounded.
//!
//! Signals: SIGTERM is a smart shutdown, SIGINT fast, SIGQUIT immediate;
//! SIGUSR1 means "look at shared memory" (a registration, a terminate
//! request, a phase announcement, a control command); SIGCHLD means a child
//! exited.
//!
//! # Control
//!
//! The postmaster holds a backend proc slot of its own and registers its
//! inbox as [`CONTROL_NAME`]. Any process of the same user that attached
//! the segment can call it ([`Endpoint::call_postmaster`], which also
//! sends the SIGUSR1) with one text command, and gets one text answer:
//!
//! | command         | effect                                                         |
//! |-----------------|----------------------------------------------------------------|
//! | `stop NAME`     | SIGTERM the worker and keep it stopped, whatever its policy     |
//! | `start NAME`    | lift a stop, or skip a pending restart delay                    |
//! | `restart NAME`  | stop it and start it again at once, outside its restart policy  |
//! | `workers`       | the registered workers' names, space-separated                 |
//!
//! The answer is `ok`, a list, or `error: ...` naming what is wrong (an
//! unknown worker lists the known ones). The postmaster reads its inbox
//! without ever waiting, and answers without waiting for room in the
//! caller's inbox.
//!
//! [`Endpoint::call_postmaster`]: crate::endpoint::Endpoint::call_postmaster
//!
//! ```no_run
//! use std::time::Duration;
//! use bgw::{Postmaster, Restart, WorkerContext, WorkerExit, WorkerResult, WorkerSpec};
//!
//! fn counter(ctx: &mut WorkerContext<'_>) -> WorkerResult {
//!     while !ctx.should_stop() {
//!         ctx.latch().reset();
//!         // ... one round of work ...
//!         ctx.wait(Some(std::time::Instant::now() + Duration::from_millis(100)));
//!     }
//!     Ok(WorkerExit::Done)
//! }
//!
//! let mut pm = Postmaster::builder().segment_name("example").build();
//! pm.entry("counter", counter);
//! pm.register(WorkerSpec::new("counter").restart(Restart::After(Duration::from_secs(1))))?;
//! let code = pm.run()?; // until SIGTERM, SIGINT or SIGQUIT
//! std::process::exit(code);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use proclist::{Kind, ProcArrayError, SlotHandle};
use shmem::{Layout, LayoutBuilder, Segment};
use thiserror::Error;

use crate::child::{ChildStart, Entry, WorkerContext, WorkerResult, run_child};
use crate::core::{
    Action, Control, Core, CoreConfig, Event, ExitStatus, RegisterError, RunState, ShutdownMode,
    Sig, SlotReport, WorkerId, WorkerStatus,
};
use crate::group::{Escalation, GroupSpec};
use crate::mailbox::Wait;
use crate::names::NameOwner;
use crate::registry::{self, RegHandle, RegistryOwner, RejectReason};
use crate::shared::{Counters, Shared, SharedConfig, SharedError};
use crate::spec::{Phase, SpecError, WorkerSpec};
use crate::status::{WorkerRow, monotonic_ns};

/// Why the postmaster could not be set up or could not go on.
#[derive(Debug, Error)]
pub enum PostmasterError {
    /// `run` was called in a process with more than one thread.
    #[error(
        "the postmaster must run in a single-threaded process, but this one has {threads} \
         threads: fork() would copy only the calling thread, leaving locks held by the others \
         locked forever in every worker. Start the postmaster before spawning threads (or run \
         it in its own process)"
    )]
    MultiThreaded {
        /// How many threads /proc/self/status reported.
        threads: usize,
    },
    /// A spec breaks a bound.
    #[error("worker spec: {0}")]
    Spec(#[from] SpecError),
    /// A spec names an entry point nobody added with [`Postmaster::entry`].
    #[error(
        "worker {worker:?} names entry point {entry:?}, which is not in the table (known: {known})"
    )]
    UnknownEntry {
        /// The worker.
        worker: String,
        /// The entry it names.
        entry: String,
        /// The entries that exist, comma-separated.
        known: String,
    },
    /// The core refused the registration.
    #[error(transparent)]
    Register(#[from] RegisterError),
    /// The layout could not be built.
    #[error("layout: {0}")]
    Layout(#[from] shmem::LayoutError),
    /// The segment could not be created.
    #[error(transparent)]
    Create(#[from] shmem::CreateError),
    /// A segment of the same name was left by a postmaster that died (it
    /// never reached its own clean-up, e.g. after SIGKILL).
    #[error("cannot start: {0}; then start again")]
    StaleSegment(shmem::AttachError),
    /// The postmaster's regions could not be set up.
    #[error(transparent)]
    Shared(#[from] SharedError),
    /// The registration slots could not be restored after a reset.
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
    /// A system call the loop depends on failed.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// The error.
        source: Errno,
    },
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> PostmasterError {
    move |source| PostmasterError::Sys { op, source }
}

/// Settings for [`Postmaster::builder`].
pub struct PostmasterBuilder {
    segment_name: Option<String>,
    shared: SharedConfig,
    core: CoreConfig,
    regions: Option<Box<dyn Fn(LayoutBuilder) -> LayoutBuilder>>,
    cleanup: Option<Box<Cleanup>>,
    log: bool,
}

/// An application clean-up step: see [`PostmasterBuilder::cleanup`].
type Cleanup = dyn Fn(&Segment, &Departed);

/// A process that left its proc slot: what a [`PostmasterBuilder::cleanup`]
/// step is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Departed {
    /// Its pid (dead: reaped, or proven dead by pid and start time).
    pub pid: u32,
    /// The proc slot and the tenancy it held.
    pub slot: SlotHandle,
    /// The worker's name; `None` for a process that attached by itself.
    pub worker: Option<String>,
}

impl PostmasterBuilder {
    /// Creates a named segment (`/dev/shm/postmaster.NAME`) that other
    /// processes of the same user can attach to; without a name the segment
    /// is an anonymous memfd only the postmaster's children share.
    pub fn segment_name(mut self, name: impl Into<String>) -> Self {
        self.segment_name = Some(name.into());
        self
    }

    /// The most workers registered at once, and the proc slots for them.
    pub fn max_workers(mut self, n: u32) -> Self {
        self.shared.max_workers = n;
        self.core.max_workers = n;
        self
    }

    /// Proc slots for processes that attach by themselves.
    pub fn max_backends(mut self, n: u32) -> Self {
        self.shared.max_backends = n;
        self
    }

    /// Dynamic registration slots.
    pub fn max_registrations(mut self, n: u32) -> Self {
        self.shared.max_registrations = n;
        self
    }

    /// Entries in the name table (names registered at once).
    pub fn max_names(mut self, n: u32) -> Self {
        self.shared.max_names = n;
        self
    }

    /// Messages each inbox holds; a power of two (`run` refuses others).
    pub fn inbox_capacity(mut self, n: u32) -> Self {
        self.shared.inbox_capacity = n;
        self
    }

    /// Adds a clean-up step the postmaster runs for each process that
    /// leaves a proc slot without a reset to follow (a worker it reaped,
    /// or a self-attached process it found dead), after releasing the
    /// process's names and inbox and before the slot is used again: the
    /// place to free what the process held in the application's own
    /// regions, e.g. `MpscRing::recover_owner(pid)` or
    /// `ByteRing::mark_dead` for its ring ends.
    ///
    /// It runs in the postmaster, so it must be short, must not wait on
    /// workers, and must read shared memory as untrusted. A panic in it
    /// is caught and treated as corrupt shared state (a reset).
    pub fn cleanup(mut self, step: impl Fn(&Segment, &Departed) + 'static) -> Self {
        self.cleanup = Some(Box::new(step));
        self
    }

    /// The phase reached at start and after each reset.
    pub fn initial_phase(mut self, phase: Phase) -> Self {
        self.core.initial_phase = phase;
        self
    }

    /// How long children get after SIGQUIT before SIGKILL.
    pub fn crash_kill_timeout(mut self, timeout: Duration) -> Self {
        self.core.crash_kill_timeout = timeout;
        self
    }

    /// How long after a failed fork a worker is tried again.
    pub fn fork_retry_delay(mut self, delay: Duration) -> Self {
        self.core.fork_retry_delay = delay;
        self
    }

    /// Adds the application's own regions to the segment.
    pub fn regions(mut self, add: impl Fn(LayoutBuilder) -> LayoutBuilder + 'static) -> Self {
        self.regions = Some(Box::new(add));
        self
    }

    /// Whether to log starts, exits, crashes and resets to stderr (on by
    /// default).
    pub fn log(mut self, log: bool) -> Self {
        self.log = log;
        self
    }

    /// The postmaster, ready for entries and registrations.
    pub fn build(self) -> Postmaster {
        Postmaster {
            segment_name: self.segment_name,
            shared: self.shared,
            regions: self.regions,
            cleanup: self.cleanup,
            log: self.log,
            core: Core::new(self.core),
            entries: BTreeMap::new(),
            children: HashMap::new(),
            dynamic: HashMap::new(),
            owner: None,
            filling_since: HashMap::new(),
            started: Instant::now(),
            started_mono_ns: 0,
            published: Vec::new(),
            next_sweep: BACKEND_SWEEP,
            control_port: None,
        }
    }
}

/// A child the postmaster forked and has not reaped.
#[derive(Clone, Copy, Debug)]
struct Child {
    worker: WorkerId,
    slot: Option<SlotHandle>,
    /// The last heartbeat value seen in its proc slot.
    heartbeat: u64,
    /// Whether its readiness was passed on to the core.
    ready_sent: bool,
}

/// What the postmaster remembers about a dynamic registration.
#[derive(Clone, Copy, Debug)]
struct Dynamic {
    handle: registry::RegHandle,
    registrant: registry::Registrant,
    /// Whether the registrant's latch is set on start and stop (kept here:
    /// the core forgets the spec as soon as the worker is unregistered,
    /// before the last status change is published).
    notify: bool,
}

/// The postmaster; see the module docs.
pub struct Postmaster {
    segment_name: Option<String>,
    shared: SharedConfig,
    regions: Option<Box<dyn Fn(LayoutBuilder) -> LayoutBuilder>>,
    cleanup: Option<Box<Cleanup>>,
    log: bool,
    core: Core,
    entries: BTreeMap<String, Box<Entry>>,
    children: HashMap<u32, Child>,
    dynamic: HashMap<WorkerId, Dynamic>,
    /// The postmaster's authority over registration generations; set up
    /// when the segment is.
    owner: Option<RegistryOwner>,
    /// Registration slots seen half-filled, and since when: a registrant
    /// that died mid-fill leaves one, freed after [`FILLING_GRACE`].
    filling_since: HashMap<RegHandle, Duration>,
    started: Instant,
    /// `started` on CLOCK_MONOTONIC, for the published status.
    started_mono_ns: u64,
    /// What the status table holds, so that only changes are written.
    published: Vec<Option<WorkerRow>>,
    /// When self-attached processes are next checked for death.
    next_sweep: Duration,
    /// The proc slot whose inbox is the control inbox, if one was free.
    control_port: Option<SlotHandle>,
}

/// The name under which the postmaster's control inbox is registered.
pub const CONTROL_NAME: &str = "postmaster";

/// Whether proc slot `index` is still in use (active or exiting) by its
/// tenancy `generation`.
fn tenancy_lasts(shared: &Shared<'_>, index: u32, generation: u32) -> bool {
    shared.procs.get(index).is_some_and(|slot| {
        let status = slot.status();
        status.generation == generation
            && matches!(
                status.state,
                proclist::slot::ACTIVE | proclist::slot::EXITING
            )
    })
}

/// Whether the control inbox's proc slot is still the postmaster's
/// tenancy `slot` and [`CONTROL_NAME`] still names it.
fn control_port_intact(shared: &Shared<'_>, slot: SlotHandle) -> bool {
    let named = shared.names.whereis(CONTROL_NAME).is_some_and(|owner| {
        owner.proc_index == slot.index && owner.proc_generation == slot.generation
    });
    named && tenancy_lasts(shared, slot.index, slot.generation)
}

/// How often the postmaster looks for self-attached processes that died
/// holding a proc slot (nobody reaps them, so nothing else would tell).
pub const BACKEND_SWEEP: Duration = Duration::from_secs(1);

/// How long a registration slot may stay half-filled before the postmaster
/// takes it back (its registrant is presumed dead).
pub const FILLING_GRACE: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Postmaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postmaster")
            .field("segment_name", &self.segment_name)
            .field("entries", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The signals the postmaster reads from its signalfd.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGCHLD,
    ] {
        set.add(signal);
    }
    set
}

impl Postmaster {
    /// Settings with defaults: anonymous segment, 64 workers, 16 backends,
    /// 32 registration slots, phase `PostmasterStart`.
    pub fn builder() -> PostmasterBuilder {
        PostmasterBuilder {
            segment_name: None,
            shared: SharedConfig::default(),
            core: CoreConfig::default(),
            regions: None,
            cleanup: None,
            log: true,
        }
    }

    /// The sizes of the postmaster's regions (an attaching process needs
    /// them to rebuild the layout).
    pub fn shared_config(&self) -> SharedConfig {
        self.shared
    }

    /// Adds an entry point that specs can name.
    pub fn entry(
        &mut self,
        name: impl Into<String>,
        entry: impl Fn(&mut WorkerContext<'_>) -> WorkerResult + 'static,
    ) -> &mut Self {
        self.entries.insert(name.into(), Box::new(entry));
        self
    }

    /// Adds a supervision group that static specs can name.
    pub fn group(&mut self, group: GroupSpec) -> Result<&mut Self, PostmasterError> {
        self.core.add_group(group)?;
        Ok(self)
    }

    /// Registers a static worker (before [`run`](Self::run)).
    pub fn register(&mut self, spec: WorkerSpec) -> Result<WorkerId, PostmasterError> {
        spec.validate()?;
        self.check_entry(&spec)?;
        Ok(self.core.register(spec, false)?)
    }

    fn check_entry(&self, spec: &WorkerSpec) -> Result<(), PostmasterError> {
        if self.entries.contains_key(spec.entry_name()) {
            return Ok(());
        }
        Err(PostmasterError::UnknownEntry {
            worker: spec.name().to_owned(),
            entry: spec.entry_name().to_owned(),
            known: self
                .entries
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// The layout the postmaster's segment will have.
    pub fn layout(&self) -> Result<Layout, PostmasterError> {
        let builder = self.shared.declare(Layout::builder());
        let builder = match &self.regions {
            Some(add) => add(builder),
            None => builder,
        };
        Ok(builder.build()?)
    }

    /// Runs the postmaster until it shuts down; returns the exit code the
    /// process should end with. Refuses to run in a multi-threaded process.
    pub fn run(mut self) -> Result<i32, PostmasterError> {
        let threads = thread_count();
        if threads != 1 {
            return Err(PostmasterError::MultiThreaded { threads });
        }
        let layout = self.layout()?;
        let mut segment = match &self.segment_name {
            Some(name) => match Segment::create_named(name, &layout) {
                Ok(segment) => segment,
                // Say whether the owner is alive or the segment stale, so
                // the operator knows whether `postmaster cleanup` is safe.
                Err(shmem::CreateError::AlreadyExists { .. }) => {
                    return Err(match Segment::attach(name, &layout) {
                        Err(stale @ shmem::AttachError::Stale { .. }) => {
                            PostmasterError::StaleSegment(stale)
                        }
                        _ => shmem::CreateError::AlreadyExists { name: name.clone() }.into(),
                    });
                }
                Err(e) => return Err(e.into()),
            },
            None => Segment::create(&layout)?,
        };
        let handled = handled_signals();
        handled.thread_block().map_err(sys("sigprocmask"))?;
        let signals =
            SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(sys("signalfd"))?;
        let pid = getpid().as_raw() as u32;
        {
            let shared = Shared::init(&segment, &self.shared)?;
            shared.control.publish(pid, self.core.phase(), 0);
            self.owner = Some(RegistryOwner::init(&shared.registry));
            self.open_control_port(&shared);
        }
        self.started = Instant::now();
        self.started_mono_ns = monotonic_ns();
        self.log(format_args!(
            "started (pid {pid}, segment {}, {} bytes)",
            self.segment_name.as_deref().unwrap_or("<anonymous>"),
            segment.size()
        ));
        let code = loop {
            let now = self.started.elapsed();
            self.wait_for_signals(&signals, now)?;
            let now = self.started.elapsed();
            self.read_signals(&signals, now);
            self.reap(&segment, now);
            self.serve_shared_requests(&segment, now);
            self.watch_workers(&segment, now);
            if now >= self.next_sweep {
                self.sweep_backends(&segment, now);
                self.next_sweep = now + BACKEND_SWEEP;
            }
            self.core.tick(now);
            let exit = self.apply_actions(&mut segment, &signals, &handled, now)?;
            self.publish_worker_status(&segment, now);
            if let Some(code) = exit {
                break code;
            }
        };
        self.log(format_args!("exiting with code {code}"));
        drop(segment);
        Ok(code)
    }

    fn log(&self, message: std::fmt::Arguments<'_>) {
        if self.log {
            eprintln!("postmaster: {message}");
        }
    }

    fn wait_for_signals(&self, signals: &SignalFd, now: Duration) -> Result<(), PostmasterError> {
        let sweep = self.next_sweep.saturating_sub(now);
        let wait = self.core.timeout(now).map_or(sweep, |t| t.min(sweep));
        // Round up, so a timer is never polled for just before it is due.
        let ms = wait.as_nanos().div_ceil(1_000_000);
        let timeout =
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(PostmasterError::Sys {
                op: "poll",
                source: e,
            }),
        }
    }

    fn read_signals(&mut self, signals: &SignalFd, now: Duration) {
        // Bounded: the signalfd holds at most one instance of each standard
        // signal.
        for _ in 0..64 {
            let Ok(Some(info)) = signals.read_signal() else {
                return;
            };
            let mode = match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGTERM) => ShutdownMode::Smart,
                Ok(Signal::SIGINT) => ShutdownMode::Fast,
                Ok(Signal::SIGQUIT) => ShutdownMode::Immediate,
                // SIGCHLD and SIGUSR1: the loop reaps and scans every
                // iteration anyway; the signal only woke us.
                _ => continue,
            };
            self.log(format_args!("{mode:?} shutdown requested"));
            self.core.handle(now, Event::Shutdown(mode));
        }
    }

    /// Reaps every exited child and tells the core what its proc slot said.
    fn reap(&mut self, segment: &Segment, now: Duration) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    (pid, ExitStatus::Signaled(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            let pid = pid.as_raw() as u32;
            let Some(child) = self.children.remove(&pid) else {
                continue;
            };
            let report = match child.slot {
                None => SlotReport::None,
                Some(handle) => match Shared::attach(segment, &self.shared) {
                    Ok(shared) => match shared.procs.release_assigned(handle) {
                        Ok(released) if released.clean() => SlotReport::Clean,
                        Ok(released)
                            if released.was.state == proclist::slot::ACTIVE
                                && released.crit_depth == 0 =>
                        {
                            SlotReport::Abandoned
                        }
                        _ => SlotReport::Dirty,
                    },
                    Err(_) => SlotReport::Dirty,
                },
            };
            let name = self
                .core
                .spec(child.worker)
                .map_or("?", |s| s.name())
                .to_owned();
            if let Some(handle) = child.slot
                && report != SlotReport::Dirty
            {
                // A dirty death resets the segment, which frees all of it.
                let departed = Departed {
                    pid,
                    slot: handle,
                    worker: Some(name.clone()),
                };
                if !self.release_departed(segment, &departed) {
                    self.core.handle(now, Event::SharedStateCorrupt);
                }
            }
            let dirty = match report {
                SlotReport::Dirty => {
                    ", inside a critical section or with its proc slot overwritten"
                }
                SlotReport::Abandoned => ", without its cleanup",
                SlotReport::None | SlotReport::Clean => "",
            };
            self.log(format_args!(
                "worker {name} (pid {pid}) ended: {status}{dirty}"
            ));
            self.core.handle(
                now,
                Event::ChildExited {
                    pid,
                    status,
                    slot: report,
                },
            );
        }
    }

    /// Frees what a dead process held besides its proc slot: its names,
    /// the producer claims it had in any inbox, its own inbox, and then
    /// whatever the application's clean-up step frees. Runs before the
    /// slot is used again. Returns false if shared state looks damaged
    /// (the caller resets).
    fn release_departed(&self, segment: &Segment, departed: &Departed) -> bool {
        let Ok(shared) = Shared::attach(segment, &self.shared) else {
            return false;
        };
        let who = departed.worker.as_deref().map_or_else(
            || format!("process {}", departed.pid),
            |name| format!("worker {name}"),
        );
        let names = shared
            .names
            .release_owned_by(departed.slot.index, departed.slot.generation);
        for name in names.iter().filter_map(|n| n.name.as_deref()) {
            self.log(format_args!("name {name:?} of {who} released"));
        }
        // SAFETY: `departed.pid` is dead: the caller reaped it with
        // waitpid, or found it gone by pid and start time.
        let recovered = unsafe { shared.mail.recover_sender(departed.pid, &shared.procs) };
        if recovered.abandoned > 0 {
            self.log(format_args!(
                "{who} died writing {} message(s); their receivers were told",
                recovered.abandoned
            ));
        }
        // SAFETY: as above.
        match unsafe { shared.mail.reset_inbox(departed.slot.index, departed.pid) } {
            Ok(reset) if reset.drained > 0 => self.log(format_args!(
                "{} unread message(s) for {who} dropped",
                reset.drained
            )),
            Ok(_) => {}
            // Another process holds the inbox already (a new tenant of a
            // backend slot): what is left is for the dead generation,
            // which the new owner drops.
            Err(crate::mailbox::MailError::InboxTaken { .. }) => {}
            Err(e) => {
                self.log(format_args!("inbox of {who}: {e}"));
                return false;
            }
        }
        match &self.cleanup {
            None => true,
            Some(step) => {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    step(segment, departed)
                }));
                if ran.is_err() {
                    self.log(format_args!(
                        "the application's clean-up step panicked for {who}; resetting \
                         shared memory"
                    ));
                }
                ran.is_ok()
            }
        }
    }

    /// Frees the proc slots of self-attached processes that died without
    /// giving them back, with everything [`release_departed`] frees.
    ///
    /// [`release_departed`]: Self::release_departed
    fn sweep_backends(&mut self, segment: &Segment, now: Duration) {
        let Ok(shared) = Shared::attach(segment, &self.shared) else {
            self.core.handle(now, Event::SharedStateCorrupt);
            return;
        };
        let mut damaged = false;
        // What each dead owner held is freed while its slot still says who
        // it was, before the proc array gives the slot to anyone else.
        let reclaimed = shared.procs.reclaim_dead_with(|dead| {
            let departed = Departed {
                pid: dead.pid,
                slot: SlotHandle {
                    index: dead.index,
                    generation: dead.was.generation,
                },
                worker: None,
            };
            damaged |= !self.release_departed(segment, &departed);
        });
        for released in reclaimed.iter().filter(|r| r.crit_depth > 0) {
            self.log(format_args!(
                "process {} died holding proc slot {} inside a critical section",
                released.pid, released.index
            ));
            damaged = true;
        }
        // Names whose owner's tenancy is over without anyone having said so
        // (e.g. registered through an endpoint that outlived a reset).
        let orphans = shared
            .names
            .release_if(|owner| !tenancy_lasts(&shared, owner.proc_index, owner.proc_generation));
        for name in orphans.iter().filter_map(|n| n.name.as_deref()) {
            self.log(format_args!("name {name:?} had no live owner; released"));
        }
        // The one name and slot only the postmaster writes: if they no
        // longer say what it wrote, someone scribbled over shared memory,
        // and the rest of the name table is no better.
        if let Some(slot) = self.control_port
            && !control_port_intact(&shared, slot)
        {
            self.log(format_args!(
                "the control inbox's name or proc slot was overwritten: \
                 shared memory is damaged"
            ));
            damaged = true;
        }
        if damaged {
            self.core.handle(now, Event::SharedStateCorrupt);
        }
    }

    /// Publishes each worker's status and the counters (only entries that
    /// changed are rewritten).
    fn publish_worker_status(&mut self, segment: &Segment, now: Duration) {
        let Ok(shared) = Shared::attach(segment, &self.shared) else {
            return;
        };
        let stats = self.core.stats();
        shared.control.publish_counters(
            Counters {
                resets: stats.resets,
                containments: stats.containments,
                restarts: stats.restarts,
            },
            self.started_mono_ns,
        );
        let groups: Vec<String> = self.core.groups().map(|g| g.name().to_owned()).collect();
        let mut rows: Vec<Option<WorkerRow>> = vec![None; shared.status.len()];
        for w in self.core.workers() {
            if let Some(row) = rows.get_mut(w.id.index as usize) {
                let started = w
                    .started_at
                    .map_or(0, |t| self.started_mono_ns + t.as_nanos() as u64);
                let group = groups.get(w.group as usize).map_or("?", String::as_str);
                *row = Some(WorkerRow::from_info(w, group, started, now));
            }
        }
        self.published.resize(rows.len(), None);
        for (i, row) in rows.into_iter().enumerate() {
            if self.published[i] != row {
                shared.status[i].write(row.as_ref());
                self.published[i] = row;
            }
        }
    }

    /// Passes on readiness reports and heartbeats from the workers' boards
    /// and proc slots. A worker without shared memory cannot report either:
    /// it counts as ready as soon as it runs.
    fn watch_workers(&mut self, segment: &Segment, now: Duration) {
        let Ok(shared) = Shared::attach(segment, &self.shared) else {
            return;
        };
        let mut events = Vec::new();
        for child in self.children.values_mut() {
            let running = matches!(
                self.core.worker(child.worker).map(|w| w.state),
                Some(RunState::Running { .. })
            );
            if !running {
                continue;
            }
            let Some(handle) = child.slot else {
                if !child.ready_sent {
                    child.ready_sent = true;
                    events.push(Event::Ready(child.worker));
                }
                continue;
            };
            if !child.ready_sent
                && shared
                    .board
                    .get(handle.index as usize)
                    .is_some_and(|b| b.is_ready(handle.generation))
            {
                child.ready_sent = true;
                events.push(Event::Ready(child.worker));
            }
            if let Some(slot) = shared.procs.get(handle.index) {
                let beat = slot.heartbeat();
                if beat != child.heartbeat {
                    child.heartbeat = beat;
                    events.push(Event::Heartbeat(child.worker));
                }
            }
        }
        for event in events {
            self.core.handle(now, event);
        }
    }

    /// Registrations, terminate requests and phase announcements.
    fn serve_shared_requests(&mut self, segment: &Segment, now: Duration) {
        let shared = match Shared::attach(segment, &self.shared) {
            Ok(shared) => shared,
            Err(_) => {
                self.core.handle(now, Event::SharedStateCorrupt);
                return;
            }
        };
        if let Some(phase) = shared.control.requested_phase()
            && phase > self.core.phase()
        {
            self.log(format_args!("phase {phase} reached"));
            self.core.handle(now, Event::PhaseReached(phase));
            shared.control.publish(
                getpid().as_raw() as u32,
                self.core.phase(),
                self.core.stats().resets,
            );
        }
        self.serve_control(&shared, now);
        let Some(mut owner) = self.owner.take() else {
            return;
        };
        self.serve_registry(&shared, &mut owner, now);
        self.owner = Some(owner);
    }

    /// Takes a backend proc slot for the control inbox and registers it
    /// as [`CONTROL_NAME`] (at start and after each reset).
    fn open_control_port(&mut self, shared: &Shared<'_>) {
        self.control_port = None;
        let guard = match shared.procs.acquire(Kind::Backend) {
            Ok(guard) => guard,
            Err(e) => {
                self.log(format_args!(
                    "no control inbox ({e}); control commands are off"
                ));
                return;
            }
        };
        let slot = guard.handle();
        // Held for the postmaster's life (or until a reset zeroes it).
        guard.forget();
        let owner = NameOwner {
            proc_index: slot.index,
            proc_generation: slot.generation,
            pid: getpid().as_raw() as u32,
        };
        if let Err(e) = shared.names.register(CONTROL_NAME, owner) {
            self.log(format_args!("cannot register {CONTROL_NAME:?}: {e}"));
            return;
        }
        self.control_port = Some(slot);
    }

    /// Answers what arrived in the control inbox; never waits.
    fn serve_control(&mut self, shared: &Shared<'_>, now: Duration) {
        let Some(slot) = self.control_port else {
            return;
        };
        let Some(proc) = shared.procs.get(slot.index) else {
            return;
        };
        // Most iterations find nothing: look before taking the consumer
        // role (a corrupt ring goes on, to be reported by the pop).
        if shared
            .mail
            .ring(slot.index)
            .is_some_and(|ring| ring.is_empty() == Ok(true))
        {
            return;
        }
        let Ok(mut inbox) = shared.mail.inbox(slot.into(), proc.latch()) else {
            return;
        };
        // Bounded: at most an inbox's worth per loop iteration (the rest
        // waits for the next, which the inbox's own latch set brings on).
        for _ in 0..shared.mail.capacity() {
            let message = match inbox.try_recv() {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(e) => {
                    self.log(format_args!("control inbox: {e}"));
                    self.core.handle(now, Event::SharedStateCorrupt);
                    return;
                }
            };
            let answer = self.control_command(message.payload(), now);
            if let Some(reply_to) = message.reply_to() {
                let mut answer = answer.into_bytes();
                answer.truncate(crate::mailbox::MAX_MESSAGE);
                // A caller whose inbox is full, or who has gone, misses
                // its answer; the postmaster never waits for room.
                let _ = inbox.reply(&shared.procs, reply_to, &answer, Wait::NoWait);
            }
        }
    }

    /// Carries out one control command; returns the answer.
    fn control_command(&mut self, payload: &[u8], now: Duration) -> String {
        let Ok(text) = std::str::from_utf8(payload) else {
            return "error: a command is text".to_owned();
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let known = || {
            let names: Vec<&str> = self.core.workers().map(|w| w.spec.name()).collect();
            names.join(" ")
        };
        let op = match words.as_slice() {
            ["workers"] => return known(),
            ["stop", _] => Control::Stop,
            ["start", _] => Control::Start,
            ["restart", _] => Control::Restart,
            _ => {
                return format!(
                    "error: unknown command {text:?}; commands are stop NAME, start NAME, \
                     restart NAME, workers"
                );
            }
        };
        let name = words[1];
        let Some(worker) = self
            .core
            .workers()
            .find(|w| w.spec.name() == name)
            .map(|w| w.id)
        else {
            return format!("error: no worker named {name:?}; known: {}", known());
        };
        self.log(format_args!("control: {} {name}", words[0]));
        self.core.handle(now, Event::Control { worker, op });
        "ok".to_owned()
    }

    fn serve_registry(&mut self, shared: &Shared<'_>, owner: &mut RegistryOwner, now: Duration) {
        let registry = &shared.registry;
        let scan = match owner.scan(registry) {
            Ok(scan) => scan,
            Err(e) => {
                self.log(format_args!("registration slots unreadable: {e}"));
                self.core.handle(now, Event::SharedStateCorrupt);
                return;
            }
        };
        for corrupt in scan.corrupt {
            // A scribbled slot costs only itself: take it back.
            self.log(format_args!(
                "registration slot {}: {:?}; freeing it",
                corrupt.handle, corrupt.problem
            ));
            let _ = owner.release(registry, corrupt.handle);
        }
        for submission in scan.submissions {
            let handle = submission.handle;
            let registration = match submission.registration {
                Ok(registration) => registration,
                Err(invalid) => {
                    self.log(format_args!("rejected registration {handle}: {invalid}"));
                    let _ = owner.reject(registry, handle, invalid.reject_reason());
                    continue;
                }
            };
            let registry::Registration { spec, registrant } = registration;
            if let Err(e) = self.check_entry(&spec) {
                self.log(format_args!("rejected dynamic worker: {e}"));
                let _ = owner.reject(registry, handle, RejectReason::UnknownEntry);
                continue;
            }
            match self.core.register(spec.clone(), true) {
                Ok(id) => {
                    if owner.accept(registry, handle).is_ok() {
                        self.dynamic.insert(
                            id,
                            Dynamic {
                                handle,
                                registrant,
                                notify: spec.notifies(),
                            },
                        );
                        self.log(format_args!("registered dynamic worker {}", spec.name()));
                    } else {
                        // Withdrawn between scan and accept: forget it.
                        self.core.handle(now, Event::Terminate(id));
                    }
                }
                Err(e) => {
                    let reason = match e {
                        RegisterError::Full { .. } => RejectReason::NoWorkerSlot,
                        RegisterError::DuplicateName(_) => RejectReason::DuplicateName,
                        RegisterError::ShuttingDown => RejectReason::ShuttingDown,
                        RegisterError::UnknownGroup { .. } | RegisterError::DuplicateGroup(_) => {
                            RejectReason::InvalidSpec
                        }
                    };
                    let _ = owner.reject(registry, handle, reason);
                }
            }
        }
        for handle in scan.terminate_requests {
            let found = self
                .dynamic
                .iter()
                .find(|(_, d)| d.handle == handle)
                .map(|(id, _)| *id);
            match found {
                Some(id) => self.core.handle(now, Event::Terminate(id)),
                // A rejected (or never accepted) registration withdrawn by
                // its registrant: nothing runs, free the slot.
                None => {
                    let _ = owner.release(registry, handle);
                }
            }
        }
        self.filling_since.retain(|h, _| scan.filling.contains(h));
        for handle in scan.filling {
            let since = *self.filling_since.entry(handle).or_insert(now);
            if now.saturating_sub(since) >= FILLING_GRACE {
                self.log(format_args!(
                    "registration slot {handle} stayed half-filled; freeing it"
                ));
                let _ = owner.release(registry, handle);
                self.filling_since.remove(&handle);
            }
        }
    }

    /// Carries out the core's actions; `Some(code)` when it is time to exit.
    fn apply_actions(
        &mut self,
        segment: &mut Segment,
        signals: &SignalFd,
        handled: &SigSet,
        now: Duration,
    ) -> Result<Option<i32>, PostmasterError> {
        while let Some(action) = self.core.next_action() {
            match action {
                Action::Fork { worker } => {
                    let event = self.fork_worker(worker, segment, signals, handled);
                    self.core.handle(now, event);
                }
                Action::Signal { pid, signal } => {
                    let signal = match signal {
                        Sig::Term => Signal::SIGTERM,
                        Sig::Quit => Signal::SIGQUIT,
                        Sig::Kill => Signal::SIGKILL,
                    };
                    // ESRCH: it died already; the reap will tell the core.
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), signal);
                }
                Action::ResetSegment => {
                    self.reset_segment(segment)?;
                    self.core.handle(now, Event::ResetDone);
                }
                Action::Status { worker, status } => self.publish_status(segment, worker, status),
                Action::Unregistered { worker, name } => {
                    self.log(format_args!("worker {name} unregistered"));
                    if let Some(d) = self.dynamic.remove(&worker)
                        && let Ok(shared) = Shared::attach(segment, &self.shared)
                        && let Some(owner) = self.owner.as_mut()
                    {
                        let _ = owner.release(&shared.registry, d.handle);
                    }
                }
                Action::CrashDetected {
                    worker,
                    pid,
                    status,
                } => {
                    let name = worker
                        .and_then(|w| self.core.spec(w))
                        .map_or("shared state".to_owned(), |s| {
                            format!("worker {}", s.name())
                        });
                    let how =
                        status.map_or("found corrupt".to_owned(), |s| format!("ended with {s}"));
                    self.log(format_args!(
                        "{name} (pid {pid}) {how}: stopping every worker and resetting shared memory"
                    ));
                }
                Action::Contained {
                    worker,
                    pid,
                    status,
                } => {
                    let name = self.core.spec(worker).map_or("?", |s| s.name());
                    self.log(format_args!(
                        "worker {name} (pid {pid}) ended with {status} outside any critical \
                         section: contained, no reset"
                    ));
                }
                Action::WatchdogExpired { worker, pid } => {
                    let name = self.core.spec(worker).map_or("?", |s| s.name());
                    self.log(format_args!(
                        "worker {name} (pid {pid}) missed its watchdog heartbeat: killing it"
                    ));
                }
                Action::Escalated {
                    group,
                    worker,
                    exits,
                    escalation,
                } => {
                    let exits: Vec<String> = exits.iter().map(ToString::to_string).collect();
                    let outcome = match escalation {
                        Escalation::Shutdown => "shutting the postmaster down",
                        Escalation::StopGroup => {
                            "stopping the group; its workers stay failed until one of them \
                             is started (postmaster start WORKER)"
                        }
                    };
                    self.log(format_args!(
                        "group {group} exceeded its restart intensity when worker {worker} \
                         failed again (recent exits: {}); {outcome}",
                        exits.join(", ")
                    ));
                }
                Action::Exit { code } => return Ok(Some(code)),
            }
        }
        Ok(None)
    }

    /// Forks `worker` into a fresh proc slot (if it has shared-memory
    /// access). The child never returns from here.
    fn fork_worker(
        &mut self,
        worker: WorkerId,
        segment: &Segment,
        signals: &SignalFd,
        handled: &SigSet,
    ) -> Event {
        let Some(spec) = self.core.spec(worker).cloned() else {
            return Event::ForkFailed { worker };
        };
        let slot = if spec.has_shmem() {
            let assigned = Shared::attach(segment, &self.shared)
                .map_err(|e| e.to_string())
                .and_then(|shared| {
                    match shared.procs.assign(Kind::Worker, u64::from(worker.index)) {
                        // No slot free: retried after the fork retry delay.
                        Err(ProcArrayError::NoFreeSlot { .. }) => Ok(None),
                        Err(corrupt) => Err(corrupt.to_string()),
                        Ok(handle) => Ok(Some(handle)),
                    }
                });
            match assigned {
                Ok(Some(handle)) => Some(handle),
                Ok(None) => return Event::ForkFailed { worker },
                Err(corrupt) => {
                    self.log(format_args!("proc array: {corrupt}"));
                    // Retried after the reset this asks for.
                    self.core
                        .handle(self.started.elapsed(), Event::SharedStateCorrupt);
                    return Event::ForkFailed { worker };
                }
            }
        } else {
            None
        };
        let postmaster_pid = getpid().as_raw() as u32;
        // SAFETY: the postmaster is single-threaded (run() checked), so the
        // child is a complete copy; it runs only run_child, which never
        // returns into the postmaster's loop.
        match unsafe { fork() } {
            Ok(ForkResult::Parent { child }) => {
                let pid = child.as_raw() as u32;
                self.children.insert(
                    pid,
                    Child {
                        worker,
                        slot,
                        heartbeat: 0,
                        ready_sent: false,
                    },
                );
                Event::Forked { worker, pid }
            }
            Ok(ForkResult::Child) => {
                let entry = self
                    .entries
                    .get(spec.entry_name())
                    .expect("entries are checked at registration");
                // SAFETY: run_child never returns, so the postmaster's
                // frames that own `signals` are never resumed in this
                // process and this copy is the only owner. Dropping it
                // closes the child's descriptor: the child must not read
                // the postmaster's signals.
                drop(unsafe { std::ptr::read(signals) });
                // SAFETY: as above, for the segment: the child takes over
                // the mapping, and the postmaster's copy of the value is
                // never used or dropped in this process.
                let child_segment = unsafe { std::ptr::read(segment) };
                run_child(ChildStart {
                    spec,
                    entry: entry.as_ref(),
                    segment: child_segment,
                    config: self.shared,
                    slot,
                    postmaster_pid,
                    handled: *handled,
                })
            }
            Err(e) => {
                self.log(format_args!("fork failed for worker {}: {e}", spec.name()));
                if let Some(handle) = slot
                    && let Ok(shared) = Shared::attach(segment, &self.shared)
                {
                    let _ = shared.procs.release_assigned(handle);
                }
                Event::ForkFailed { worker }
            }
        }
    }

    fn publish_status(&mut self, segment: &Segment, worker: WorkerId, status: WorkerStatus) {
        if let WorkerStatus::Started { pid } = status {
            let name = self.core.spec(worker).map_or("?", |s| s.name());
            self.log(format_args!("worker {name} started (pid {pid})"));
        }
        let Some(d) = self.dynamic.get(&worker).copied() else {
            return;
        };
        let Ok(shared) = Shared::attach(segment, &self.shared) else {
            return;
        };
        // A worker that stopped for good (the core unregistered it in the
        // same step) has its registration released *before* the registrant
        // is woken: a registrant that wakes on "stopped" must already hold
        // a stale handle, or its terminate() would still act.
        let gone = status == WorkerStatus::Stopped && self.core.worker(worker).is_none();
        if let Some(owner) = self.owner.as_mut() {
            let _ = match status {
                WorkerStatus::Started { pid } => owner.set_started(&shared.registry, d.handle, pid),
                WorkerStatus::Stopped if gone => {
                    self.dynamic.remove(&worker);
                    owner.release(&shared.registry, d.handle)
                }
                WorkerStatus::Stopped => owner.set_stopped(&shared.registry, d.handle),
            };
        }
        if d.notify
            && let Some(index) = d.registrant.proc_index
            && let Some(slot) = shared.procs.get(index)
            && slot.pid() == d.registrant.pid
        {
            slot.latch().set();
        }
    }

    /// Every child is gone: zero the segment, rebuild the postmaster's
    /// regions, and put surviving dynamic registrations back with new
    /// generations (so every handle from before the reset is stale).
    fn reset_segment(&mut self, segment: &mut Segment) -> Result<(), PostmasterError> {
        segment.reinit();
        let shared = Shared::init(segment, &self.shared)?;
        let resets = self.core.stats().resets;
        shared.control.publish(
            getpid().as_raw() as u32,
            self.core.config().initial_phase,
            resets,
        );
        let owner = self
            .owner
            .get_or_insert_with(|| RegistryOwner::init(&shared.registry));
        owner.restore_after_reset(&shared.registry)?;
        self.filling_since.clear();
        self.published.clear();
        for (id, d) in self.dynamic.iter_mut() {
            if let Some(spec) = self.core.spec(*id) {
                // Cannot fail for want of room: every slot is free and there
                // are no more dynamic workers than slots.
                if let Ok(handle) = owner.reinstall(&shared.registry, spec, d.registrant) {
                    d.handle = handle;
                }
            }
        }
        self.open_control_port(&shared);
        self.log(format_args!(
            "shared memory reset (generation {}, reset #{resets})",
            segment.generation()
        ));
        Ok(())
    }
}

/// The number of threads of this process, from /proc/self/status.
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regression test: `layout()` used to take the application's region
    /// closure, so a later `run()` built the segment without its regions.
    #[test]
    fn layout_can_be_asked_for_repeatedly_and_keeps_the_application_regions() {
        let pm = Postmaster::builder()
            .regions(|b| b.region::<shmem::sync::AtomicU64>("app.counter"))
            .log(false)
            .build();
        let first = pm.layout().expect("layout");
        let second = pm.layout().expect("layout");
        assert!(first.find("app.counter").is_some());
        assert_eq!(first.hash(), second.hash());
    }
}
