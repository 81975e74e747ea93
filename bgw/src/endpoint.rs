//! A process's own end of the names and inboxes: register names, look
//! others up, cast, call and answer, with the postmaster's regions and the
//! process's latch already wired in.
//!
//! [`crate::names`] and [`crate::mailbox`] are the shared-memory
//! protocols; an [`Endpoint`] is what a process uses day to day:
//!
//! - a worker gets one from [`WorkerContext::endpoint`]: its inbox is the
//!   one of its proc slot, and [`recv`](Endpoint::recv) returns early when
//!   the postmaster asks the worker to stop;
//! - any other process of the same user that attached the segment gets one
//!   from [`Endpoint::attach`], which takes a backend proc slot for it (and
//!   gives it back when the endpoint drops). That is how `postmaster call`
//!   talks to a worker from a shell.
//!
//! Whatever a process held when it dies (names, inbox, producer claims) is
//! freed by the postmaster: after reaping a worker, or within
//! [`BACKEND_SWEEP`](crate::postmaster::BACKEND_SWEEP) for a process that
//! attached by itself.
//!
//! ```no_run
//! use std::time::Duration;
//! use bgw::{WorkerContext, WorkerExit, WorkerResult};
//!
//! /// A worker that answers every call with its request, reversed.
//! fn reverser(ctx: &mut WorkerContext<'_>) -> WorkerResult {
//!     let mut endpoint = ctx.endpoint()?;
//!     endpoint.register_name("reverser")?;
//!     ctx.ready();
//!     while !ctx.should_stop() {
//!         let Some(message) = endpoint.recv(None)? else {
//!             continue;
//!         };
//!         if let Some(reply_to) = message.reply_to() {
//!             let mut answer = message.payload().to_vec();
//!             answer.reverse();
//!             endpoint.reply(reply_to, &answer)?;
//!         }
//!     }
//!     Ok(WorkerExit::Done)
//! }
//!
//! /// Elsewhere, in any process that attached the segment:
//! fn ask(shared: bgw::Shared<'_>) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
//!     let mut endpoint = bgw::Endpoint::attach(shared)?;
//!     Ok(endpoint.call("reverser", b"olleh", Duration::from_secs(1))?)
//! }
//! ```
//!
//! [`WorkerContext::endpoint`]: crate::WorkerContext::endpoint

use std::time::{Duration, Instant};

use latch::Latch;
use proclist::{Kind as ProcKind, ProcArrayError, SlotGuard, SlotHandle};
use thiserror::Error;

use crate::mailbox::{
    Address, CallError, Inbox, InboxStats, MailError, Message, RecvError, ReplyTo, Wait,
};
use crate::names::{NameError, NameHandle, NameOwner, Registered};
use crate::shared::Shared;

/// How long a [`reply`](Endpoint::reply) or [`cast`](Endpoint::cast) waits
/// for room in a full inbox before giving up.
pub const SEND_WAIT: Duration = Duration::from_millis(100);

/// Why an endpoint could not be opened.
#[derive(Debug, Error)]
pub enum EndpointError {
    /// The worker runs without shared-memory access (its spec did not ask
    /// for it), so it has no inbox and cannot hold names.
    #[error(
        "this worker has no shared-memory access; give its spec `.shmem(true)` to use names \
         and inboxes"
    )]
    NoSharedMemory,
    /// No backend proc slot was free (or the proc array is damaged).
    #[error("cannot take a proc slot: {0}")]
    Slot(#[from] ProcArrayError),
    /// The inbox could not be opened (e.g. an endpoint for it is open
    /// already).
    #[error("cannot open the inbox: {0}")]
    Inbox(#[from] MailError),
}

/// A process's names and inbox; see the module docs.
pub struct Endpoint<'a> {
    shared: Shared<'a>,
    inbox: Inbox<'a>,
    pid: u32,
    /// The segment generation when the endpoint was opened.
    generation: u64,
    /// Names registered through this endpoint, released when it drops.
    names: Vec<NameHandle>,
    /// Whether the process was asked to stop (a worker's SIGTERM flag).
    interrupted: fn() -> bool,
    /// The backend slot this endpoint took, given back after everything
    /// else (fields drop in order, so it is last).
    backend: Option<SlotGuard<'a>>,
}

impl std::fmt::Debug for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.inbox.address())
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn never() -> bool {
    false
}

impl<'a> Endpoint<'a> {
    /// Takes a backend proc slot for the calling process (one that attached
    /// the segment by itself) and opens its inbox. The slot is given back
    /// when the endpoint drops; if the process dies first, the postmaster
    /// takes it back.
    pub fn attach(shared: Shared<'a>) -> Result<Self, EndpointError> {
        let guard = shared.procs.acquire(ProcKind::Backend)?;
        let slot = guard.handle();
        let latch = guard.slot().latch();
        let mut endpoint = Self::open(shared, slot, latch, never)?;
        endpoint.backend = Some(guard);
        Ok(endpoint)
    }

    /// Opens the inbox of `slot`, which the calling process holds and whose
    /// latch it owns.
    pub(crate) fn open(
        shared: Shared<'a>,
        slot: SlotHandle,
        latch: &'a Latch,
        interrupted: fn() -> bool,
    ) -> Result<Self, EndpointError> {
        let inbox = shared.mail.inbox(Address::from(slot), latch)?;
        Ok(Endpoint {
            shared,
            inbox,
            pid: latch::pid::current(),
            generation: shared.segment.generation(),
            names: Vec::new(),
            interrupted,
            backend: None,
        })
    }

    /// This endpoint's address (its proc slot and tenancy).
    pub fn address(&self) -> Address {
        self.inbox.address()
    }

    /// The postmaster's regions this endpoint works in.
    pub fn shared(&self) -> &Shared<'a> {
        &self.shared
    }

    /// The inbox itself, for what this type does not wrap (sending to an
    /// [`Address`], the statistics).
    pub fn inbox(&mut self) -> &mut Inbox<'a> {
        &mut self.inbox
    }

    /// Registers `name` for this process. It is released when the endpoint
    /// drops, when [`unregister_name`](Self::unregister_name) is called, or
    /// by the postmaster when the process dies. A name another process
    /// holds is [`NameError::Taken`].
    pub fn register_name(&mut self, name: &str) -> Result<NameHandle, NameError> {
        if self.is_stale() {
            return Err(NameError::Reset);
        }
        let me = self.address();
        let handle = self.shared.names.register(
            name,
            NameOwner {
                proc_index: me.proc_index,
                proc_generation: me.generation,
                pid: self.pid,
            },
        )?;
        self.names.push(handle);
        Ok(handle)
    }

    /// Releases a name this endpoint registered.
    pub fn unregister_name(&mut self, handle: NameHandle) -> Result<(), NameError> {
        self.names.retain(|h| *h != handle);
        self.shared.names.unregister(handle)
    }

    /// Who holds `name`, if anyone.
    pub fn whereis(&self, name: &str) -> Option<NameOwner> {
        self.shared.names.whereis(name)
    }

    /// Every registered name.
    pub fn registered(&self) -> Vec<Registered> {
        self.shared.names.list()
    }

    /// Casts `payload` to the process registered as `name`, waiting up to
    /// [`SEND_WAIT`] for room in its inbox.
    pub fn cast(&self, name: &str, payload: &[u8]) -> Result<(), CallError> {
        let wait = Wait::Until(Instant::now() + SEND_WAIT);
        let sent =
            self.inbox
                .cast_name(&self.shared.names, &self.shared.procs, name, payload, wait);
        self.call_result(sent)
    }

    /// Calls the process registered as `name` and waits up to `timeout`
    /// for its reply. A callee that dies, or a name nobody holds, is an
    /// error well before the timeout (see [`CallError`]).
    pub fn call(
        &mut self,
        name: &str,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        if self.is_stale() {
            return Err(CallError::Recv(self.reset_error()));
        }
        let deadline = Instant::now() + timeout;
        let reply = self.inbox.call_name(
            &self.shared.names,
            &self.shared.procs,
            name,
            request,
            deadline,
        );
        self.call_result(reply)
    }

    /// Sends a control command to the postmaster (see
    /// [`crate::postmaster`]'s "Control" docs: `stop NAME`, `start NAME`,
    /// `restart NAME`, `workers`) and returns its answer.
    pub fn call_postmaster(
        &mut self,
        command: &str,
        timeout: Duration,
    ) -> Result<String, CallError> {
        if self.is_stale() {
            return Err(CallError::Recv(self.reset_error()));
        }
        let owner = self
            .shared
            .names
            .whereis(crate::postmaster::CONTROL_NAME)
            .ok_or_else(|| CallError::NotRegistered {
                name: crate::postmaster::CONTROL_NAME.to_owned(),
            })?;
        let postmaster = self.shared.control.postmaster_pid();
        let deadline = Instant::now() + timeout;
        let reply = self.inbox.call_then(
            &self.shared.procs,
            owner.into(),
            command.as_bytes(),
            deadline,
            || crate::child::signal_postmaster(postmaster),
        );
        self.call_result(reply)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Answers a call (see [`Message::reply_to`]), waiting up to
    /// [`SEND_WAIT`] for room in the caller's inbox. A caller that has gone
    /// (exited, or its slot was taken again) is no error: the reply is
    /// dropped, as Erlang drops a message to a process that has exited.
    pub fn reply(&self, reply_to: ReplyTo, payload: &[u8]) -> Result<(), MailError> {
        let wait = Wait::Until(Instant::now() + SEND_WAIT);
        match self
            .inbox
            .reply(&self.shared.procs, reply_to, payload, wait)
        {
            Err(MailError::Stale { .. } | MailError::NotRunning { .. }) => Ok(()),
            other => other,
        }
    }

    /// The next cast or call, if one has arrived; never waits.
    pub fn try_recv(&mut self) -> Result<Option<Message>, RecvError> {
        if self.is_stale() {
            return Err(self.reset_error());
        }
        let received = self.inbox.try_recv();
        self.recv_result(received)
    }

    /// Waits until `deadline` (`None`: no deadline) for the next cast or
    /// call. `Ok(None)` means the deadline passed, the latch was set for
    /// something else, or (for a worker) the postmaster asked it to stop:
    /// check your conditions and call again.
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>, RecvError> {
        let received = self.recv_inner(deadline);
        self.recv_result(received)
    }

    fn recv_inner(&mut self, deadline: Option<Instant>) -> Result<Option<Message>, RecvError> {
        if self.is_stale() {
            return Err(self.reset_error());
        }
        self.inbox.recv_unless(deadline, self.interrupted)
    }

    /// Whether the postmaster reset shared memory since this endpoint was
    /// opened (its inbox, slot and names are gone).
    pub fn is_stale(&self) -> bool {
        self.shared.segment.generation() != self.generation
    }

    /// After a reset, whatever went wrong (a ring that looks corrupt, a
    /// latch nobody owns, a slot of another generation) has one cause: the
    /// endpoint outlived its segment generation. Say so.
    fn recv_result<T>(&self, result: Result<T, RecvError>) -> Result<T, RecvError> {
        match result {
            Err(_) if self.is_stale() => Err(self.reset_error()),
            other => other,
        }
    }

    fn call_result<T>(&self, result: Result<T, CallError>) -> Result<T, CallError> {
        match result {
            Err(CallError::Send(MailError::TooLarge { .. }) | CallError::CallToSelf { .. }) => {
                result
            }
            Err(_) if self.is_stale() => Err(CallError::Recv(self.reset_error())),
            other => other,
        }
    }

    fn reset_error(&self) -> RecvError {
        RecvError::Reset {
            was: self.generation,
            now: self.shared.segment.generation(),
        }
    }

    /// Messages waiting in this endpoint's inbox (approximate while
    /// senders push).
    pub fn pending(&self) -> usize {
        self.inbox.pending()
    }

    /// What the inbox dropped instead of delivering.
    pub fn stats(&self) -> InboxStats {
        self.inbox.stats()
    }
}

impl Drop for Endpoint<'_> {
    fn drop(&mut self) {
        for handle in self.names.drain(..) {
            // Already released (by the postmaster, or a reset): nothing to
            // do.
            let _ = self.shared.names.unregister(handle);
        }
    }
}
