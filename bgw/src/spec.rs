//! What a worker is: its name, entry point, argument, start time, restart
//! policy and shutdown timeout.
//!
//! A [`WorkerSpec`] is plain private data. Static specs are handed to the
//! postmaster before it runs; dynamic ones travel through a registration
//! slot in shared memory (see [`crate::registry`]), which is why every
//! field is bounded: a name is at most [`MAX_NAME`] bytes and an argument
//! at most [`MAX_ARG`].

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// The longest worker or entry name, in bytes.
pub const MAX_NAME: usize = 63;

/// The longest argument a worker can be given, in bytes.
pub const MAX_ARG: usize = 256;

/// The default time a worker is given to stop before it is killed.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The phase of the embedding application after which a worker may start.
///
/// Phases only move forward: [`PostmasterStart`](Phase::PostmasterStart)
/// when the postmaster runs, then whatever the application announces. A
/// worker registered for a phase that has already been reached starts at
/// once. PostgreSQL calls these `BgWorkerStart_*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// As soon as the postmaster runs.
    #[default]
    PostmasterStart = 0,
    /// Once the application says its shared state is consistent (read-only
    /// work may begin).
    ConsistentState = 1,
    /// Once the application says recovery is finished (normal operation).
    RecoveryFinished = 2,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 3] = [
        Phase::PostmasterStart,
        Phase::ConsistentState,
        Phase::RecoveryFinished,
    ];

    /// The phase with this wire number.
    pub fn from_u8(value: u8) -> Option<Phase> {
        Phase::ALL.get(value as usize).copied()
    }

    /// A short lowercase name, for logs and status output.
    pub fn name(self) -> &'static str {
        match self {
            Phase::PostmasterStart => "postmaster-start",
            Phase::ConsistentState => "consistent-state",
            Phase::RecoveryFinished => "recovery-finished",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the postmaster does when a worker exits or crashes.
///
/// Two vocabularies, one table. PostgreSQL's (`Never`, `After`) treats exit
/// status 0 as "finished"; Erlang/OTP's (`Permanent`, `Transient`,
/// `Temporary`) decides by restart type, with the delay coming from the
/// group's backoff:
///
/// | policy           | exit 0        | exit 1, error, crash | restarted with siblings (one_for_all, rest_for_one) |
/// |------------------|---------------|----------------------|-----------------------------------------------------|
/// | `Never`          | unregistered  | unregistered         | yes (like PostgreSQL: only its own exit ends it)     |
/// | `After(d)`       | unregistered  | restarted after `d`  | yes                                                 |
/// | `Permanent`      | restarted     | restarted            | yes                                                 |
/// | `Transient`      | unregistered  | restarted            | yes                                                 |
/// | `Temporary`      | unregistered  | unregistered         | no: stopped and unregistered                        |
///
/// After a segment reset every worker whose policy restarts it on a crash
/// starts again at once, without its delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    /// PostgreSQL's `BGW_NEVER_RESTART`: never start it again.
    Never,
    /// PostgreSQL's restart interval: start it again this long after an
    /// exit other than 0.
    After(Duration),
    /// OTP's permanent: always restarted, after the group's backoff.
    Permanent,
    /// OTP's transient: restarted after an exit other than 0, after the
    /// group's backoff.
    Transient,
    /// OTP's temporary: never restarted, not even when a sibling's failure
    /// restarts the rest of its group.
    Temporary,
}

impl Restart {
    /// Whether a worker that ended with `finished` (exit 0) or not is
    /// started again.
    pub fn restarts_after(self, finished: bool) -> bool {
        match self {
            Restart::Never | Restart::Temporary => false,
            Restart::After(_) | Restart::Transient => !finished,
            Restart::Permanent => true,
        }
    }
}

/// How a worker is stopped (OTP's shutdown option).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shutdown {
    /// SIGKILL at once.
    Brutal,
    /// SIGTERM, then SIGKILL after this long.
    Timeout(Duration),
    /// SIGTERM, and wait for as long as it takes.
    Infinity,
}

impl Shutdown {
    /// As the timeout stored in a spec: zero for brutal, `Duration::MAX`
    /// for infinity.
    pub fn as_timeout(self) -> Duration {
        match self {
            Shutdown::Brutal => Duration::ZERO,
            Shutdown::Timeout(d) => d,
            Shutdown::Infinity => Duration::MAX,
        }
    }

    /// The inverse of [`as_timeout`](Self::as_timeout).
    pub fn from_timeout(timeout: Duration) -> Self {
        match timeout {
            Duration::ZERO => Shutdown::Brutal,
            Duration::MAX => Shutdown::Infinity,
            d => Shutdown::Timeout(d),
        }
    }
}

/// What a crash of a shared-memory worker costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum OnCrash {
    /// PostgreSQL's rule: any abnormal exit of a shared-memory worker may
    /// have damaged shared state, so every worker is stopped and the
    /// segment reset.
    #[default]
    ResetAll,
    /// Restart this worker alone when its proc slot proves the death clean
    /// (outside every critical section); reset only when it does not.
    Contain,
}

/// A worker's description. Build one with [`WorkerSpec::new`] and the
/// builder methods; [`validate`](WorkerSpec::validate) checks the bounds.
///
/// ```
/// use std::time::Duration;
/// use bgw::spec::{Phase, Restart, WorkerSpec};
///
/// let spec = WorkerSpec::new("counter")
///     .entry("counter_main")
///     .arg(b"interval=100ms")
///     .start(Phase::ConsistentState)
///     .restart(Restart::After(Duration::from_secs(1)))
///     .shmem(true);
/// assert!(spec.validate().is_ok());
/// assert_eq!(spec.entry_name(), "counter_main");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkerSpec {
    name: String,
    entry: String,
    arg: Vec<u8>,
    start: Phase,
    restart: Restart,
    shmem: bool,
    notify: bool,
    shutdown_timeout: Duration,
    on_crash: OnCrash,
    group: Option<String>,
    watchdog: Option<Duration>,
}

impl WorkerSpec {
    /// A spec named `name` whose entry point has the same name; starts at
    /// postmaster start, is never restarted, has shared-memory access, does
    /// not notify its registrant, and gets [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        WorkerSpec {
            entry: name.clone(),
            name,
            arg: Vec::new(),
            start: Phase::PostmasterStart,
            restart: Restart::Never,
            shmem: true,
            notify: false,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            on_crash: OnCrash::ResetAll,
            group: None,
            watchdog: None,
        }
    }

    /// How the worker is stopped; [`shutdown_timeout`](Self::shutdown_timeout)
    /// is the same as `Shutdown::Timeout`.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown_timeout = shutdown.as_timeout();
        self
    }

    /// What a crash of this worker costs (shared-memory workers only).
    pub fn on_crash(mut self, policy: OnCrash) -> Self {
        self.on_crash = policy;
        self
    }

    /// The supervision group the worker belongs to (static workers; a
    /// dynamic worker always joins the root group).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// A watchdog: the worker must call `WorkerContext::heartbeat` at least
    /// this often, or it is killed and handled as crashed.
    pub fn watchdog(mut self, interval: Duration) -> Self {
        self.watchdog = Some(interval);
        self
    }

    /// The crash policy.
    pub fn crash_policy(&self) -> OnCrash {
        self.on_crash
    }

    /// The group's name, if not the root group.
    pub fn group_name(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// The watchdog interval, if any.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// The shutdown option.
    pub fn shutdown_policy(&self) -> Shutdown {
        Shutdown::from_timeout(self.shutdown_timeout)
    }

    /// The entry point to run, by its name in the postmaster's table.
    pub fn entry(mut self, entry: impl Into<String>) -> Self {
        self.entry = entry.into();
        self
    }

    /// The argument bytes the entry point receives (at most [`MAX_ARG`]).
    pub fn arg(mut self, arg: impl Into<Vec<u8>>) -> Self {
        self.arg = arg.into();
        self
    }

    /// The phase after which the worker may start.
    pub fn start(mut self, phase: Phase) -> Self {
        self.start = phase;
        self
    }

    /// The restart policy.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Whether the worker keeps the shared-memory segment mapped. A worker
    /// without access has the segment unmapped right after fork and never
    /// forces a segment reset when it crashes.
    pub fn shmem(mut self, shmem: bool) -> Self {
        self.shmem = shmem;
        self
    }

    /// Whether a dynamic registrant's latch is set when the worker starts
    /// and stops.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// How long the worker has to exit after SIGTERM before SIGKILL.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry point's name.
    pub fn entry_name(&self) -> &str {
        &self.entry
    }

    /// The argument bytes.
    pub fn arg_bytes(&self) -> &[u8] {
        &self.arg
    }

    /// The start phase.
    pub fn start_phase(&self) -> Phase {
        self.start
    }

    /// The restart policy.
    pub fn restart_policy(&self) -> Restart {
        self.restart
    }

    /// Whether the worker has shared-memory access.
    pub fn has_shmem(&self) -> bool {
        self.shmem
    }

    /// Whether the registrant is notified of start and stop.
    pub fn notifies(&self) -> bool {
        self.notify
    }

    /// The shutdown timeout.
    pub fn shutdown_timeout_value(&self) -> Duration {
        self.shutdown_timeout
    }

    /// Checks every bound: names non-empty, at most [`MAX_NAME`] bytes of
    /// `[A-Za-z0-9_.-]`; argument at most [`MAX_ARG`] bytes.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_name("worker", &self.name)?;
        check_name("entry", &self.entry)?;
        if let Some(group) = &self.group {
            check_name("group", group)?;
        }
        if self.arg.len() > MAX_ARG {
            return Err(SpecError::ArgTooLong {
                len: self.arg.len(),
            });
        }
        Ok(())
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), SpecError> {
    if name.is_empty() {
        return Err(SpecError::EmptyName { what });
    }
    if name.len() > MAX_NAME {
        return Err(SpecError::NameTooLong {
            what,
            name: name.to_owned(),
        });
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(SpecError::BadNameChar {
            what,
            name: name.to_owned(),
            bad,
        });
    }
    Ok(())
}

/// A spec that breaks a bound.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// A name is empty.
    #[error("the {what} name is empty")]
    EmptyName {
        /// "worker", "entry" or "group".
        what: &'static str,
    },
    /// A name is longer than [`MAX_NAME`] bytes.
    #[error("the {what} name {name:?} is longer than {MAX_NAME} bytes")]
    NameTooLong {
        /// "worker", "entry" or "group".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A name has a character outside `[A-Za-z0-9_.-]`.
    #[error(
        "the {what} name {name:?} has {bad:?}; use only ASCII letters, digits, '_', '-' and '.'"
    )]
    BadNameChar {
        /// "worker", "entry" or "group".
        what: &'static str,
        /// The name.
        name: String,
        /// The first offending character.
        bad: char,
    },
    /// The argument is longer than [`MAX_ARG`] bytes.
    #[error("the argument is {len} bytes; at most {MAX_ARG} fit in a registration slot")]
    ArgTooLong {
        /// Its length.
        len: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked_with_the_offending_field_named() {
        assert_eq!(
            WorkerSpec::new("").validate(),
            Err(SpecError::EmptyName { what: "worker" })
        );
        let long = "x".repeat(MAX_NAME + 1);
        assert!(matches!(
            WorkerSpec::new("w").entry(long).validate(),
            Err(SpecError::NameTooLong { what: "entry", .. })
        ));
        assert!(matches!(
            WorkerSpec::new("a b").validate(),
            Err(SpecError::BadNameChar { bad: ' ', .. })
        ));
        assert_eq!(
            WorkerSpec::new("w").arg(vec![0; MAX_ARG + 1]).validate(),
            Err(SpecError::ArgTooLong { len: MAX_ARG + 1 })
        );
        assert!(
            WorkerSpec::new("x".repeat(MAX_NAME))
                .arg(vec![7; MAX_ARG])
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn phases_round_trip_through_their_wire_numbers() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_u8(phase as u8), Some(phase));
        }
        assert_eq!(Phase::from_u8(3), None);
    }
}
