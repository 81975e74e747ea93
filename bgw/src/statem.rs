//! A gen_statem-like behaviour: state machines with state enter calls,
//! event, state and named timeouts, and postponed events, driven by a
//! sans-IO engine that reads no clock.
//!
//! A worker that is a state machine implements [`StateMachine`]: `init`
//! names the first state, and `handle_event(state, event)` answers every
//! event with a [`Transition`] (where to go) carrying [`Action`]s (replies,
//! postpone, timers). A [`Runner`] owns the machine, its current state, the
//! postponed events and the timers, the latter as absolute
//! [`Instant`] deadlines. The runner never reads the clock: every entry
//! point takes `now` from its caller, and the caller learns when to come
//! back from [`Runner::next_deadline`]. That is what lets clock events come
//! from a latch wait's deadline instead of SIGALRM, and what makes every
//! rule below testable with made-up instants.
//!
//! # The worker loop
//!
//! ```text
//! loop {
//!     latch.reset();
//!     while let Some(message) = mailbox.poll() { send(runner.deliver(now, message)) }
//!     send(runner.fire_due(now));
//!     latch.wait(runner.next_deadline());
//! }
//! ```
//!
//! The caller hands the runner [`Message`]s (call, cast, info) only; the
//! other [`Event`]s (state enter, timeouts, inserted events) are the
//! engine's own, so a caller cannot forge them.
//!
//! [`Runner::run`] is that loop, generic over an [`EventSource`] (mailbox,
//! latch and clock); [`ScriptedSource`] is an in-memory one with a virtual
//! clock, for tests and for the example below.
//!
//! # Semantics
//!
//! The rules are OTP's `gen_statem` ones (reference manual, types
//! `transition_option()`, `event_timeout()`, `state_timeout()`,
//! `generic_timeout()` and `postpone()`,
//! <https://www.erlang.org/doc/apps/stdlib/gen_statem.html>). A *state
//! change* is a transition to a state that is not `==` to the current one;
//! [`Transition::next`] to the current state and [`Transition::repeat`] are
//! not state changes.
//!
//! | what | started by | cancelled by |
//! |---|---|---|
//! | event timeout ([`Event::EventTimeout`]) | [`Action::SetEventTimeout`] | **any event**: a message, a timeout of any kind, a retried postponed event, an inserted [`Action::NextEvent`]; also [`Action::CancelEventTimeout`] later in the same action list. A state enter call is not an event and does not cancel it. |
//! | state timeout ([`Event::StateTimeout`]) | [`Action::SetStateTimeout`]; set on a state change it belongs to the *new* state | a state change; [`Action::CancelStateTimeout`]. It survives `keep`, `next` to the same state and `repeat`. |
//! | named timeout ([`Event::Timeout`]) | [`Action::SetTimeout`] | only [`Action::CancelTimeout`] with its name; survives state changes and events |
//!
//! - Setting a timer that is armed replaces it (new deadline, new payload).
//!   A duration too long to add to `now` is OTP's `infinity`: the timer is
//!   not armed, and one that was armed is cancelled.
//! - A **zero** duration does not wait for the clock (OTP's "time-out
//!   zero"): the timeout is delivered before the [`Runner`] call that set it
//!   returns, hence before any message the caller delivers next, but after
//!   every event already queued inside the runner (retried and inserted
//!   events). Until then it is cancelled by the same rules, so a zero event
//!   timeout set while events are queued never fires, and a zero state
//!   timeout is dropped if a queued event changes the state first. Several
//!   zero timeouts fire in the order they were set.
//! - **Postponed** events ([`Action::Postpone`]) are retried after the next
//!   state change, oldest first, before events that were already queued;
//!   events inserted by [`Action::NextEvent`] go before them, in the order
//!   given. Neither `keep`, `next` to the same state nor `repeat` retries
//!   them. An event postponed again waits for the next state change.
//! - **State enter** ([`StateMachine::state_enter`]): after every state
//!   change, and for the initial state (with `old_state` equal to it) and
//!   on `repeat`, the engine calls `handle_event` with [`Event::Enter`]
//!   before anything else happens in the new state. An enter call may
//!   reply, set and cancel timers, `keep`, `repeat` or stop; it may not
//!   postpone, insert events or change the state (OTP forbids them too):
//!   doing so stops the machine with [`StopReason::BadStateEnter`].
//! - The actions of the event's call and of the enter calls that follow
//!   it are applied in order, as one transition: replies are emitted at
//!   once, timer settings after the state change has cancelled what it
//!   cancels, so the last setting of each timer wins.
//! - **Stop** ([`Transition::stop`]) is a [`Target`], not an action, so
//!   that a transition cannot both stop and name a next state. It emits
//!   the replies of the same transition (OTP's `stop_and_reply`), then
//!   [`Output::Stopped`]; the
//!   timers and postponed events are dropped, and every later call on the
//!   runner does nothing. Calls that were postponed get no reply: the
//!   mailbox layer must answer a call to a stopped worker with an error.
//! - **Ties**: when [`Runner::fire_due`] finds several timers due, it fires
//!   the earliest deadline first and, among equal deadlines, the one set
//!   first (re-setting a timer counts as setting it). Each fired timeout
//!   is a full event: it may cancel or re-arm the others before they fire.
//!
//! As in OTP, the engine runs the machine until it has nothing queued, so a
//! machine that re-arms a zero timeout from that timeout's own event, or
//! returns `repeat` from every enter call, never gives control back. Timer
//! updates without a restart (OTP's `{timeout, update, …}`) and
//! absolute-time timers are not provided; both fit the same table.
//!
//! # Example
//!
//! A PGQ-like ticker: while running it ticks every 100 ms on a state
//! timeout and counts batches; it can be paused and answers `status`.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bgw::statem::{
//!     Action, Event, Message, Output, ReplyTo, RunEnd, Runner, ScriptedSource,
//!     StateMachine, StopReason, Transition,
//! };
//!
//! #[derive(Clone, Debug, PartialEq)]
//! enum Phase {
//!     Running,
//!     Paused,
//! }
//!
//! struct Ticker {
//!     period: Duration,
//!     batches: u64,
//! }
//!
//! impl StateMachine for Ticker {
//!     type State = Phase;
//!
//!     fn init(&mut self) -> (Phase, Vec<Action>) {
//!         (Phase::Running, Vec::new())
//!     }
//!
//!     fn state_enter(&self) -> bool {
//!         true
//!     }
//!
//!     fn handle_event(&mut self, state: &Phase, event: &Event<Phase>) -> Transition<Phase> {
//!         match (state, event) {
//!             // Entering Running, the initial state included, arms the first tick;
//!             // leaving it cancels the pending one.
//!             (Phase::Running, Event::Enter { .. }) => {
//!                 Transition::keep().state_timeout(self.period, "tick")
//!             }
//!             (Phase::Running, Event::StateTimeout(_)) => {
//!                 self.batches += 1;
//!                 Transition::keep().state_timeout(self.period, "tick")
//!             }
//!             (_, Event::Call { from, payload }) if payload == b"status" => {
//!                 let status = format!("{state:?} batches={}", self.batches);
//!                 Transition::keep().reply(*from, status)
//!             }
//!             (Phase::Running, Event::Cast(c)) if c == b"pause" => Transition::next(Phase::Paused),
//!             (Phase::Paused, Event::Cast(c)) if c == b"resume" => Transition::next(Phase::Running),
//!             (_, Event::Cast(c)) if c == b"stop" => Transition::stop(StopReason::Normal),
//!             _ => Transition::keep(),
//!         }
//!     }
//! }
//!
//! let t0 = Instant::now();
//! let at = |ms| t0 + Duration::from_millis(ms);
//! let status = |correlation| Message::Call {
//!     from: ReplyTo { caller: 7, correlation },
//!     payload: b"status".to_vec(),
//! };
//! let mut source = ScriptedSource::new(t0);
//! source.push_at(at(350), status(1));
//! source.push_at(at(450), Message::Cast(b"pause".to_vec()));
//! source.push_at(at(900), status(2));
//! source.push_at(at(1000), Message::Cast(b"stop".to_vec()));
//!
//! let ticker = Ticker { period: Duration::from_millis(100), batches: 0 };
//! let (mut runner, started) = Runner::start(ticker, t0);
//! assert!(started.is_empty());
//! assert_eq!(runner.next_deadline(), Some(at(100)));
//!
//! let mut replies = Vec::new();
//! let end = runner.run(&mut source, |output| {
//!     if let Output::Reply { to, payload } = output {
//!         replies.push((to.correlation, String::from_utf8(payload).unwrap()));
//!     }
//! });
//! assert_eq!(end, RunEnd::Stopped(StopReason::Normal));
//! // Ticks at 100..=400 ms; none while paused.
//! assert_eq!(
//!     replies,
//!     [(1, "Running batches=3".to_string()), (2, "Paused batches=4".to_string())]
//! );
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Where a call's reply goes: plain data that the mailbox layer maps to
/// the caller's inbox. The engine only copies it from the call to the
/// reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyTo {
    /// Who called (the mailbox layer's id for the caller's inbox).
    pub caller: u64,
    /// Which of the caller's calls this answers.
    pub correlation: u64,
}

/// What arrives from outside the machine: the mailbox's messages. The
/// engine makes the other [`Event`]s itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// A request that expects a reply to `from`.
    Call {
        /// Where the reply goes.
        from: ReplyTo,
        /// The request.
        payload: Vec<u8>,
    },
    /// A one-way request.
    Cast(Vec<u8>),
    /// Anything else the worker wants to feed its machine.
    Info(Vec<u8>),
}

/// What [`StateMachine::handle_event`] is called with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<S> {
    /// A [`Message::Call`]: answer it with [`Action::Reply`] to `from`, now
    /// or from a later event.
    Call {
        /// Where the reply goes.
        from: ReplyTo,
        /// The request.
        payload: Vec<u8>,
    },
    /// A [`Message::Cast`].
    Cast(Vec<u8>),
    /// A [`Message::Info`].
    Info(Vec<u8>),
    /// Inserted by [`Action::NextEvent`].
    Internal(Vec<u8>),
    /// A state enter call (not an event in OTP's sense: it cancels no
    /// event timeout). `old_state` is the state left, or the current
    /// state for the initial state and after [`Transition::repeat`].
    Enter {
        /// The state the machine came from.
        old_state: S,
    },
    /// The event timeout expired with no event arriving before it.
    EventTimeout(Vec<u8>),
    /// The state timeout expired with the machine still in the state it
    /// was set for.
    StateTimeout(Vec<u8>),
    /// The named timeout `name` expired.
    Timeout {
        /// The name it was set with.
        name: String,
        /// The payload it was set with.
        payload: Vec<u8>,
    },
}

impl<S> From<Message> for Event<S> {
    fn from(message: Message) -> Self {
        match message {
            Message::Call { from, payload } => Event::Call { from, payload },
            Message::Cast(payload) => Event::Cast(payload),
            Message::Info(payload) => Event::Info(payload),
        }
    }
}

/// One thing a transition asks of the engine, applied in list order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this reply (emitted as [`Output::Reply`] at once).
    Reply(ReplyTo, Vec<u8>),
    /// Keep the current event and retry it after the next state change.
    /// Ignored in [`StateMachine::init`]; forbidden in enter calls.
    Postpone,
    /// Handle [`Event::Internal`] with this payload next, before anything
    /// queued. Forbidden in enter calls.
    NextEvent(Vec<u8>),
    /// Arm the event timeout: fires after this long unless an event comes.
    SetEventTimeout(Duration, Vec<u8>),
    /// Arm the state timeout: fires after this long unless the state
    /// changes.
    SetStateTimeout(Duration, Vec<u8>),
    /// Arm the named timeout: fires after this long unless cancelled by
    /// name.
    SetTimeout(String, Duration, Vec<u8>),
    /// Disarm the event timeout (one set earlier in the same transition:
    /// any earlier one was already cancelled by the event being handled).
    CancelEventTimeout,
    /// Disarm the state timeout.
    CancelStateTimeout,
    /// Disarm the named timeout (nothing if it is not armed).
    CancelTimeout(String),
}

/// Where a transition goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target<S> {
    /// Stay in the current state (OTP `keep_state`).
    Keep,
    /// Go to this state (OTP `next_state`); the same state is [`Keep`].
    ///
    /// [`Keep`]: Target::Keep
    Next(S),
    /// Stay, but run the state enter call again (OTP `repeat_state`); no
    /// state change, so no postponed event is retried and the state
    /// timeout stays.
    Repeat,
    /// Stop the machine for this reason (OTP `stop` / `stop_and_reply`).
    Stop(StopReason),
}

/// A [`StateMachine`]'s answer to an event: a [`Target`] and the
/// [`Action`]s to take. Build it with [`keep`](Transition::keep),
/// [`next`](Transition::next), [`repeat`](Transition::repeat) or
/// [`stop`](Transition::stop) and chain actions on it.
#[must_use = "a transition does nothing until returned to the engine"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition<S> {
    /// Where the machine goes.
    pub target: Target<S>,
    /// What it does on the way, in order.
    pub actions: Vec<Action>,
}

impl<S> Transition<S> {
    /// Stay in the current state.
    pub fn keep() -> Self {
        Self::to(Target::Keep)
    }

    /// Go to `state` (a state change unless it is `==` to the current one).
    pub fn next(state: S) -> Self {
        Self::to(Target::Next(state))
    }

    /// Stay, and run the state enter call again.
    pub fn repeat() -> Self {
        Self::to(Target::Repeat)
    }

    /// Stop the machine; the replies among the actions are still sent.
    pub fn stop(reason: StopReason) -> Self {
        Self::to(Target::Stop(reason))
    }

    fn to(target: Target<S>) -> Self {
        Transition {
            target,
            actions: Vec::new(),
        }
    }

    /// Adds any action.
    pub fn with(mut self, action: Action) -> Self {
        self.actions.push(action);
        self
    }

    /// Adds [`Action::Reply`].
    pub fn reply(self, to: ReplyTo, payload: impl Into<Vec<u8>>) -> Self {
        self.with(Action::Reply(to, payload.into()))
    }

    /// Adds [`Action::Postpone`].
    pub fn postpone(self) -> Self {
        self.with(Action::Postpone)
    }

    /// Adds [`Action::NextEvent`].
    pub fn next_event(self, payload: impl Into<Vec<u8>>) -> Self {
        self.with(Action::NextEvent(payload.into()))
    }

    /// Adds [`Action::SetEventTimeout`].
    pub fn event_timeout(self, after: Duration, payload: impl Into<Vec<u8>>) -> Self {
        self.with(Action::SetEventTimeout(after, payload.into()))
    }

    /// Adds [`Action::SetStateTimeout`].
    pub fn state_timeout(self, after: Duration, payload: impl Into<Vec<u8>>) -> Self {
        self.with(Action::SetStateTimeout(after, payload.into()))
    }

    /// Adds [`Action::SetTimeout`].
    pub fn timeout(
        self,
        name: impl Into<String>,
        after: Duration,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        self.with(Action::SetTimeout(name.into(), after, payload.into()))
    }

    /// Adds [`Action::CancelEventTimeout`].
    pub fn cancel_event_timeout(self) -> Self {
        self.with(Action::CancelEventTimeout)
    }

    /// Adds [`Action::CancelStateTimeout`].
    pub fn cancel_state_timeout(self) -> Self {
        self.with(Action::CancelStateTimeout)
    }

    /// Adds [`Action::CancelTimeout`].
    pub fn cancel_timeout(self, name: impl Into<String>) -> Self {
        self.with(Action::CancelTimeout(name.into()))
    }
}

/// Why a machine stopped. A supervisor treats [`Normal`](StopReason::Normal)
/// as a normal exit (a transient worker is not restarted) and anything else
/// as abnormal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The machine finished its work.
    Normal,
    /// The machine gave up; the text is for the log.
    Error(String),
    /// A state enter call returned what is forbidden there (named here):
    /// a bug in the machine, as OTP treats it.
    BadStateEnter(&'static str),
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::Normal => f.write_str("normal"),
            StopReason::Error(text) => write!(f, "error: {text}"),
            StopReason::BadStateEnter(what) => {
                write!(
                    f,
                    "a state enter call tried to {what}, which is not allowed"
                )
            }
        }
    }
}

/// A gen_statem-like behaviour. The machine's data lives in `self`; its
/// state is [`State`](StateMachine::State), compared with `==` to decide
/// what is a state change.
pub trait StateMachine {
    /// The machine's state.
    type State: Clone + PartialEq + fmt::Debug;

    /// The initial state and actions, run once by [`Runner::start`].
    /// [`Action::Postpone`] is ignored here; [`Action::NextEvent`] queues an
    /// event to handle first.
    fn init(&mut self) -> (Self::State, Vec<Action>);

    /// Whether the engine calls `handle_event` with [`Event::Enter`] after
    /// every state change (read once, at start). Off by default.
    fn state_enter(&self) -> bool {
        false
    }

    /// Handles one event in `state`. The event is lent rather than given so
    /// that the engine can keep it when the transition postpones it.
    fn handle_event(
        &mut self,
        state: &Self::State,
        event: &Event<Self::State>,
    ) -> Transition<Self::State>;
}

/// What the caller of a [`Runner`] must carry out, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `payload` to the caller named by `to`.
    Reply {
        /// The call's reply handle.
        to: ReplyTo,
        /// The answer.
        payload: Vec<u8>,
    },
    /// The machine stopped; the runner ignores everything from now on.
    Stopped(StopReason),
}

/// Names one of a machine's timers, for [`Runner::deadline`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// The event timeout.
    Event,
    /// The state timeout.
    State,
    /// A named timeout.
    Named(String),
}

impl Timer {
    fn event<S>(self, payload: Vec<u8>) -> Event<S> {
        match self {
            Timer::Event => Event::EventTimeout(payload),
            Timer::State => Event::StateTimeout(payload),
            Timer::Named(name) => Event::Timeout { name, payload },
        }
    }
}

/// An armed timer.
#[derive(Debug)]
struct Armed {
    deadline: Instant,
    /// Set with a zero duration: delivered by the engine before the call
    /// that set it returns, never left for [`Runner::fire_due`].
    zero: bool,
    /// When it was set, from [`Runner::next_seq`]: breaks ties between
    /// equal deadlines, and orders zero timers.
    seq: u64,
    payload: Vec<u8>,
}

/// A timer setting, applied once the transition it belongs to is complete.
#[derive(Debug)]
enum TimerOp {
    Set(Timer, Duration, Vec<u8>),
    Cancel(Timer),
}

/// What the callbacks of one transition asked for besides replies, in the
/// order they asked.
struct Pending {
    postpone: bool,
    inserted: Vec<Vec<u8>>,
    timer_ops: Vec<TimerOp>,
}

impl Pending {
    fn new() -> Self {
        Pending {
            postpone: false,
            inserted: Vec::new(),
            timer_ops: Vec::new(),
        }
    }
}

/// Runs a [`StateMachine`]: owns it, its current state, its postponed
/// events and its timers. See the [module docs](self) for the rules.
///
/// Between two calls no event is queued inside the runner and no zero
/// timer is armed: every call runs the machine until it has nothing left
/// to do but wait for a message or a deadline.
pub struct Runner<M: StateMachine> {
    machine: M,
    state: M::State,
    /// [`StateMachine::state_enter`], read at start.
    enter_calls: bool,
    /// Postponed events, oldest first.
    postponed: VecDeque<Event<M::State>>,
    /// Events to handle before returning: retried and inserted ones. Empty
    /// between calls.
    queue: VecDeque<Event<M::State>>,
    timers: BTreeMap<Timer, Armed>,
    /// The next [`Armed::seq`].
    next_seq: u64,
    /// Set once the machine stopped; nothing runs after that.
    stopped: Option<StopReason>,
}

impl<M: StateMachine> fmt::Debug for Runner<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("state", &self.state)
            .field("postponed", &self.postponed.len())
            .field("timers", &self.timers)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

impl<M: StateMachine> Runner<M> {
    /// Runs `init`, the initial state enter call (if enabled), any events
    /// `init` inserted and any zero timeouts, as of `now`. The outputs can
    /// hold replies (rare) and a stop.
    pub fn start(mut machine: M, now: Instant) -> (Self, Vec<Output>) {
        let (state, actions) = machine.init();
        let enter_calls = machine.state_enter();
        let mut runner = Runner {
            machine,
            state,
            enter_calls,
            postponed: VecDeque::new(),
            queue: VecDeque::new(),
            timers: BTreeMap::new(),
            next_seq: 0,
            stopped: None,
        };
        let mut out = Vec::new();
        let mut pending = Pending::new();
        // A postpone here has no event to act on: `pending.postpone` is
        // never read.
        for action in actions {
            runner.collect(action, &mut pending, &mut out);
        }
        // OTP makes the initial enter call with the initial state as the old
        // one.
        let enter = runner.enter_calls.then(|| runner.state.clone());
        if runner.run_enter_calls(enter, &mut pending, &mut out) {
            runner.complete(now, false, pending);
            runner.drain(now, &mut out);
        }
        (runner, out)
    }

    /// Handles one message as of `now`, then everything it queued (retried
    /// postponed events, inserted events, zero timeouts). Does nothing once
    /// the machine has stopped. Timers already due are left for
    /// [`fire_due`](Self::fire_due).
    pub fn deliver(&mut self, now: Instant, message: Message) -> Vec<Output> {
        let mut out = Vec::new();
        if self.stopped.is_none() {
            self.handle(now, message.into(), &mut out);
            self.drain(now, &mut out);
        }
        out
    }

    /// Fires every timer whose deadline is at or before `now`, earliest
    /// deadline first, ties in the order the timers were set; each one is an
    /// event, handled with everything it queues before the next timer is
    /// picked (so it may cancel timers that were due too). Timers set along
    /// the way are due after `now` and wait.
    pub fn fire_due(&mut self, now: Instant) -> Vec<Output> {
        let mut out = Vec::new();
        while self.stopped.is_none() {
            let due = self
                .timers
                .iter()
                .filter(|(_, armed)| armed.deadline <= now)
                .min_by_key(|(_, armed)| (armed.deadline, armed.seq))
                .map(|(timer, _)| timer.clone());
            let Some(timer) = due else { break };
            let event = self.take_timer(timer);
            self.handle(now, event, &mut out);
            self.drain(now, &mut out);
        }
        out
    }

    /// The earliest armed deadline: when [`fire_due`](Self::fire_due) next
    /// has something to do. `None` when no timer is armed or the machine
    /// stopped.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.values().map(|armed| armed.deadline).min()
    }

    /// The deadline of one timer, if it is armed.
    pub fn deadline(&self, timer: &Timer) -> Option<Instant> {
        self.timers.get(timer).map(|armed| armed.deadline)
    }

    /// The current state.
    pub fn state(&self) -> &M::State {
        &self.state
    }

    /// The machine (its data).
    pub fn machine(&self) -> &M {
        &self.machine
    }

    /// The machine, mutably (its data; the state stays the runner's).
    pub fn machine_mut(&mut self) -> &mut M {
        &mut self.machine
    }

    /// Gives the machine back.
    pub fn into_machine(self) -> M {
        self.machine
    }

    /// How many events wait for a state change.
    pub fn postponed(&self) -> usize {
        self.postponed.len()
    }

    /// Why the machine stopped, once it has.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// The worker loop: until the machine stops or the source closes,
    /// reset the source's latch, deliver every message it has, fire due
    /// timers, and wait for the next message or deadline. `emit` carries
    /// out each [`Output`], the final [`Output::Stopped`] included.
    ///
    /// Due timers are fired after every message too, so a flood of
    /// messages cannot hold back a timer that is due. Returns at once if
    /// the machine has already stopped (its [`Output::Stopped`] was among
    /// the outputs of the call that stopped it).
    pub fn run<E: EventSource + ?Sized>(
        &mut self,
        source: &mut E,
        mut emit: impl FnMut(Output),
    ) -> RunEnd {
        loop {
            if let Some(reason) = &self.stopped {
                return RunEnd::Stopped(reason.clone());
            }
            // Reset before looking for work: a message pushed after the
            // poll below that comes back empty sets the latch again, and
            // the wait returns at once.
            source.reset();
            while let Some(message) = source.poll() {
                let now = source.now();
                self.deliver(now, message).into_iter().for_each(&mut emit);
                self.fire_due(now).into_iter().for_each(&mut emit);
                if let Some(reason) = &self.stopped {
                    return RunEnd::Stopped(reason.clone());
                }
            }
            let now = source.now();
            self.fire_due(now).into_iter().for_each(&mut emit);
            if let Some(reason) = &self.stopped {
                return RunEnd::Stopped(reason.clone());
            }
            if source.wait(self.next_deadline()) == WaitResult::Closed {
                return RunEnd::SourceClosed;
            }
        }
    }

    /// Handles one event: the callback, the enter calls that a state change
    /// or `repeat` brings, then the postponement, retries, insertions and
    /// timer settings of the whole transition.
    fn handle(&mut self, now: Instant, event: Event<M::State>, out: &mut Vec<Output>) {
        // OTP: "Any event that arrives cancels this time-out", retried and
        // inserted events and other timeouts included.
        self.timers.remove(&Timer::Event);
        let Transition { target, actions } = self.machine.handle_event(&self.state, &event);
        let mut pending = Pending::new();
        for action in actions {
            self.collect(action, &mut pending, out);
        }
        let (changed, enter) = match target {
            Target::Stop(reason) => return self.stop(reason, out),
            Target::Keep => (false, None),
            Target::Next(state) if state == self.state => (false, None),
            Target::Next(state) => {
                let old = std::mem::replace(&mut self.state, state);
                (true, self.enter_calls.then_some(old))
            }
            Target::Repeat => (false, self.enter_calls.then(|| self.state.clone())),
        };
        if !self.run_enter_calls(enter, &mut pending, out) {
            return;
        }
        if pending.postpone {
            self.postponed.push_back(event);
        }
        self.complete(now, changed, pending);
    }

    /// Runs the enter call for `old_state` (if any), and again for each
    /// `repeat` it returns. Returns false if the machine stopped.
    fn run_enter_calls(
        &mut self,
        mut old_state: Option<M::State>,
        pending: &mut Pending,
        out: &mut Vec<Output>,
    ) -> bool {
        while let Some(old) = old_state.take() {
            let enter = Event::Enter { old_state: old };
            let Transition { target, actions } = self.machine.handle_event(&self.state, &enter);
            // Checked before anything is applied, so a rejected callback
            // has no effect but the stop.
            let forbidden = if actions.contains(&Action::Postpone) {
                Some("postpone")
            } else if actions.iter().any(|a| matches!(a, Action::NextEvent(_))) {
                Some("insert an event")
            } else if matches!(&target, Target::Next(state) if *state != self.state) {
                Some("change the state")
            } else {
                None
            };
            if let Some(what) = forbidden {
                self.stop(StopReason::BadStateEnter(what), out);
                return false;
            }
            for action in actions {
                self.collect(action, pending, out);
            }
            match target {
                Target::Keep | Target::Next(_) => {}
                Target::Repeat => old_state = Some(self.state.clone()),
                Target::Stop(reason) => {
                    self.stop(reason, out);
                    return false;
                }
            }
        }
        true
    }

    /// Applies one action: a reply goes out now, the rest waits in
    /// `pending` until the transition is complete.
    fn collect(&mut self, action: Action, pending: &mut Pending, out: &mut Vec<Output>) {
        match action {
            Action::Reply(to, payload) => out.push(Output::Reply { to, payload }),
            Action::Postpone => pending.postpone = true,
            Action::NextEvent(payload) => pending.inserted.push(payload),
            Action::SetEventTimeout(after, payload) => {
                pending
                    .timer_ops
                    .push(TimerOp::Set(Timer::Event, after, payload));
            }
            Action::SetStateTimeout(after, payload) => {
                pending
                    .timer_ops
                    .push(TimerOp::Set(Timer::State, after, payload));
            }
            Action::SetTimeout(name, after, payload) => {
                pending
                    .timer_ops
                    .push(TimerOp::Set(Timer::Named(name), after, payload));
            }
            Action::CancelEventTimeout => pending.timer_ops.push(TimerOp::Cancel(Timer::Event)),
            Action::CancelStateTimeout => pending.timer_ops.push(TimerOp::Cancel(Timer::State)),
            Action::CancelTimeout(name) => {
                pending.timer_ops.push(TimerOp::Cancel(Timer::Named(name)));
            }
        }
    }

    /// The end of a transition (OTP's steps 4 to 6): a state change puts
    /// the postponed events back in front of the queue and cancels the old
    /// state's timeout; inserted events go in front of everything; then the
    /// timer settings are applied in order.
    fn complete(&mut self, now: Instant, changed: bool, pending: Pending) {
        if changed {
            let mut queue = std::mem::take(&mut self.postponed);
            queue.append(&mut self.queue);
            self.queue = queue;
            self.timers.remove(&Timer::State);
        }
        for payload in pending.inserted.into_iter().rev() {
            self.queue.push_front(Event::Internal(payload));
        }
        for op in pending.timer_ops {
            match op {
                TimerOp::Set(timer, after, payload) => match now.checked_add(after) {
                    Some(deadline) => {
                        let seq = self.next_seq;
                        self.next_seq += 1;
                        let armed = Armed {
                            deadline,
                            zero: after.is_zero(),
                            seq,
                            payload,
                        };
                        self.timers.insert(timer, armed);
                    }
                    // Too far to represent: OTP's infinity, which never
                    // fires and replaces what was armed.
                    None => {
                        self.timers.remove(&timer);
                    }
                },
                TimerOp::Cancel(timer) => {
                    self.timers.remove(&timer);
                }
            }
        }
    }

    /// Handles queued events, then zero timeouts, until neither is left.
    fn drain(&mut self, now: Instant, out: &mut Vec<Output>) {
        while self.stopped.is_none() {
            let event = match self.queue.pop_front() {
                Some(event) => event,
                None => {
                    let zero = self
                        .timers
                        .iter()
                        .filter(|(_, armed)| armed.zero)
                        .min_by_key(|(_, armed)| armed.seq)
                        .map(|(timer, _)| timer.clone());
                    match zero {
                        Some(timer) => self.take_timer(timer),
                        None => break,
                    }
                }
            };
            self.handle(now, event, out);
        }
        debug_assert!(self.queue.is_empty());
        debug_assert!(self.timers.values().all(|armed| !armed.zero));
    }

    /// Disarms `timer` (which is armed) and makes its event.
    fn take_timer(&mut self, timer: Timer) -> Event<M::State> {
        let armed = self.timers.remove(&timer);
        debug_assert!(armed.is_some(), "{timer:?} is not armed");
        timer.event(armed.map(|armed| armed.payload).unwrap_or_default())
    }

    fn stop(&mut self, reason: StopReason, out: &mut Vec<Output>) {
        self.postponed.clear();
        self.queue.clear();
        self.timers.clear();
        self.stopped = Some(reason.clone());
        out.push(Output::Stopped(reason));
    }
}

/// Why [`EventSource::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitResult {
    /// Woken (the latch was set): there may be messages.
    Woken,
    /// The deadline passed.
    TimedOut,
    /// Nothing will ever come (the postmaster died, the mailbox was
    /// closed): [`Runner::run`] returns.
    Closed,
}

/// How [`Runner::run`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The machine stopped.
    Stopped(StopReason),
    /// The source reported [`WaitResult::Closed`]; the machine still runs
    /// and its runner can be used further.
    SourceClosed,
}

/// Where a worker's messages, wake-ups and time come from: its mailbox,
/// its latch and the clock.
pub trait EventSource {
    /// The current time, passed to the runner with each step.
    fn now(&mut self) -> Instant;

    /// Resets the wake-up flag (the latch) before the loop looks for
    /// messages; a latch-less source does nothing.
    fn reset(&mut self);

    /// The next message, if one is waiting. Never blocks.
    fn poll(&mut self) -> Option<Message>;

    /// Sleeps until woken or until `deadline` (forever if `None`).
    fn wait(&mut self, deadline: Option<Instant>) -> WaitResult;
}

/// An in-memory [`EventSource`] with a virtual clock: messages are
/// scheduled at instants, and waiting moves the clock to the next arrival
/// or deadline instead of sleeping. For tests and examples.
#[derive(Debug)]
pub struct ScriptedSource {
    now: Instant,
    /// Arrival time order; FIFO among equal times.
    scheduled: VecDeque<(Instant, Message)>,
}

impl ScriptedSource {
    /// A source whose clock reads `start` and which holds no message.
    pub fn new(start: Instant) -> Self {
        ScriptedSource {
            now: start,
            scheduled: VecDeque::new(),
        }
    }

    /// Makes `message` arrive at `at` (at once if `at` is not later than the
    /// clock), after the messages already scheduled at or before `at`.
    pub fn push_at(&mut self, at: Instant, message: Message) {
        let index = self.scheduled.partition_point(|(time, _)| *time <= at);
        self.scheduled.insert(index, (at, message));
    }

    /// Makes `message` arrive now.
    pub fn push(&mut self, message: Message) {
        self.push_at(self.now, message);
    }

    /// The virtual clock.
    pub fn clock(&self) -> Instant {
        self.now
    }

    /// How many messages have not been polled yet.
    pub fn remaining(&self) -> usize {
        self.scheduled.len()
    }
}

impl EventSource for ScriptedSource {
    fn now(&mut self) -> Instant {
        self.now
    }

    fn reset(&mut self) {}

    fn poll(&mut self) -> Option<Message> {
        match self.scheduled.front() {
            Some((at, _)) if *at <= self.now => self.scheduled.pop_front().map(|(_, m)| m),
            _ => None,
        }
    }

    /// Moves the clock to the next arrival or to `deadline`, whichever is
    /// first (never backwards); [`WaitResult::Closed`] once there is
    /// neither, since nothing could ever happen again.
    fn wait(&mut self, deadline: Option<Instant>) -> WaitResult {
        let arrival = self.scheduled.front().map(|(at, _)| *at);
        match (arrival, deadline) {
            (None, None) => WaitResult::Closed,
            (Some(at), deadline) if deadline.is_none_or(|d| at <= d) => {
                self.now = self.now.max(at);
                WaitResult::Woken
            }
            (_, deadline) => {
                // Not None: `None` with an arrival is taken above, and with
                // none is `Closed`.
                self.now = deadline.map_or(self.now, |d| self.now.max(d));
                WaitResult::TimedOut
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rules = &'static [(&'static str, &'static str, &'static str)];

    /// A machine whose reactions are a table of rules `(state, event
    /// label, spec)`, first match wins (`*` ends a label prefix). It records
    /// every `handle_event` call as `"{state} {label}"`.
    ///
    /// Labels: `call:P`, `cast:P`, `info:P`, `internal:P`, `enter:OLD`,
    /// `et:P`, `st:P`, `t:NAME:P`. Spec tokens: `keep`, `next:S`,
    /// `repeat`, `stop`, `stop:WHY`, `postpone`, `insert:P`, `et:MS:P`,
    /// `st:MS:P`, `t:NAME:MS:P` (`MS` may be `max`), `cancel-et`,
    /// `cancel-st`, `cancel:NAME`, `reply:P` (to the call being handled).
    struct Scripted {
        init: &'static str,
        enter: bool,
        rules: Rules,
        seen: Vec<String>,
    }

    fn text(payload: &[u8]) -> String {
        String::from_utf8_lossy(payload).into_owned()
    }

    fn label(event: &Event<&'static str>) -> String {
        match event {
            Event::Call { payload, .. } => format!("call:{}", text(payload)),
            Event::Cast(p) => format!("cast:{}", text(p)),
            Event::Info(p) => format!("info:{}", text(p)),
            Event::Internal(p) => format!("internal:{}", text(p)),
            Event::Enter { old_state } => format!("enter:{old_state}"),
            Event::EventTimeout(p) => format!("et:{}", text(p)),
            Event::StateTimeout(p) => format!("st:{}", text(p)),
            Event::Timeout { name, payload } => format!("t:{name}:{}", text(payload)),
        }
    }

    fn millis(ms: &str) -> Duration {
        if ms == "max" {
            Duration::MAX
        } else {
            Duration::from_millis(ms.parse().expect("a duration in ms"))
        }
    }

    fn transition(spec: &'static str, event: &Event<&'static str>) -> Transition<&'static str> {
        let mut t = Transition::keep();
        for token in spec.split_whitespace() {
            let parts: Vec<&'static str> = token.split(':').collect();
            t = match parts[..] {
                ["keep"] => t,
                ["next", state] => Transition {
                    target: Target::Next(state),
                    ..t
                },
                ["repeat"] => Transition {
                    target: Target::Repeat,
                    ..t
                },
                ["stop"] => Transition {
                    target: Target::Stop(StopReason::Normal),
                    ..t
                },
                ["stop", why] => Transition {
                    target: Target::Stop(StopReason::Error(why.to_string())),
                    ..t
                },
                ["postpone"] => t.postpone(),
                ["insert", p] => t.next_event(p),
                ["et", ms, p] => t.event_timeout(millis(ms), p),
                ["st", ms, p] => t.state_timeout(millis(ms), p),
                ["t", name, ms, p] => t.timeout(name, millis(ms), p),
                ["cancel-et"] => t.cancel_event_timeout(),
                ["cancel-st"] => t.cancel_state_timeout(),
                ["cancel", name] => t.cancel_timeout(name),
                ["reply", p] => match event {
                    Event::Call { from, .. } => t.reply(*from, p),
                    other => panic!("reply in a rule for {other:?}, not a call"),
                },
                _ => panic!("unknown spec token {token:?}"),
            };
        }
        t
    }

    impl StateMachine for Scripted {
        type State = &'static str;

        fn init(&mut self) -> (&'static str, Vec<Action>) {
            let (state, actions) = self.init.split_once(' ').unwrap_or((self.init, ""));
            (state, transition(actions, &Event::Info(Vec::new())).actions)
        }

        fn state_enter(&self) -> bool {
            self.enter
        }

        fn handle_event(
            &mut self,
            state: &&'static str,
            event: &Event<&'static str>,
        ) -> Transition<&'static str> {
            let label = label(event);
            self.seen.push(format!("{state} {label}"));
            let rule = self.rules.iter().find(|(s, pattern, _)| {
                *s == *state
                    && match pattern.strip_suffix('*') {
                        Some(prefix) => label.starts_with(prefix),
                        None => *pattern == label,
                    }
            });
            rule.map_or_else(Transition::keep, |(_, _, spec)| transition(spec, event))
        }
    }

    /// One row of the table: the machine, the inputs as `"MS what"`, and
    /// the log they must produce.
    ///
    /// Inputs: `cast:P`, `info:P`, `call:P` or `call:P@CALLER` (caller 7 by
    /// default; correlations count calls from 1), `fire` ([`Runner::fire_due`]),
    /// `deadline` and `postponed` (log what the runner reports).
    ///
    /// Log: per input, in order, the machine's calls as `"MS state label"`,
    /// then the outputs as `"MS reply CALLER/CORRELATION:P"` or `"MS
    /// stopped:WHY"`. Start is input time 0.
    struct Scenario {
        name: &'static str,
        enter: bool,
        init: &'static str,
        rules: Rules,
        steps: &'static [&'static str],
        expect: &'static [&'static str],
    }

    const SCENARIOS: &[Scenario] = &[
        // Event timeout.
        Scenario {
            name: "event timeout fires when no event arrives",
            enter: false,
            init: "A et:10:e",
            rules: &[],
            steps: &["9 fire", "10 fire", "10 deadline"],
            expect: &["10 A et:e", "10 deadline:none"],
        },
        Scenario {
            name: "event timeout is cancelled by a cast",
            enter: false,
            init: "A et:10:e",
            rules: &[],
            steps: &["5 cast:x", "10 fire", "10 deadline"],
            expect: &["5 A cast:x", "10 deadline:none"],
        },
        Scenario {
            name: "event timeout is cancelled by an info message",
            enter: false,
            init: "A et:10:e",
            rules: &[],
            steps: &["5 info:x", "10 fire"],
            expect: &["5 A info:x"],
        },
        Scenario {
            name: "event timeout is cancelled by a call",
            enter: false,
            init: "A et:10:e",
            rules: &[],
            steps: &["5 call:x", "10 fire"],
            expect: &["5 A call:x"],
        },
        Scenario {
            name: "event timeout is cancelled by another timeout firing",
            enter: false,
            init: "A t:n:5:p et:10:e",
            rules: &[],
            steps: &["20 fire", "20 deadline"],
            expect: &["20 A t:n:p", "20 deadline:none"],
        },
        Scenario {
            name: "event timeout is cancelled by an inserted event",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "et:10:e insert:i")],
            steps: &["1 cast:x", "20 fire"],
            expect: &["1 A cast:x", "1 A internal:i"],
        },
        Scenario {
            name: "event timeout is cancelled by a retried postponed event",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B et:10:e"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["1 cast:x", "2 cast:go", "20 fire"],
            expect: &["1 A cast:x", "2 A cast:go", "2 B cast:x"],
        },
        Scenario {
            name: "event timeout set on a state change fires when nothing was postponed",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B et:10:e"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["2 cast:go", "12 fire"],
            expect: &["2 A cast:go", "12 B et:e"],
        },
        Scenario {
            name: "event timeout is not cancelled by a state enter call",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B et:10:e")],
            steps: &["1 cast:go", "11 fire"],
            expect: &["0 A enter:A", "1 A cast:go", "1 B enter:A", "11 B et:e"],
        },
        Scenario {
            name: "event timeout set by a state enter call",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "enter:*", "et:10:e")],
            steps: &["1 cast:go", "11 fire"],
            expect: &["0 A enter:A", "1 A cast:go", "1 B enter:A", "11 B et:e"],
        },
        Scenario {
            name: "event timeout cancelled later in the same action list",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "et:10:e cancel-et")],
            steps: &["1 cast:x", "1 deadline", "20 fire"],
            expect: &["1 A cast:x", "1 deadline:none"],
        },
        // State timeout.
        Scenario {
            name: "state timeout survives keep_state and other events",
            enter: false,
            init: "A st:10:s",
            rules: &[],
            steps: &["3 cast:x", "6 info:y", "8 call:z", "10 fire"],
            expect: &["3 A cast:x", "6 A info:y", "8 A call:z", "10 A st:s"],
        },
        Scenario {
            name: "state timeout is cancelled by a change of state",
            enter: false,
            init: "A st:10:s",
            rules: &[("A", "cast:go", "next:B")],
            steps: &["5 cast:go", "20 fire", "20 deadline"],
            expect: &["5 A cast:go", "20 deadline:none"],
        },
        Scenario {
            name: "state timeout survives next_state to the same state",
            enter: true,
            init: "A st:10:s",
            rules: &[("A", "cast:same", "next:A")],
            steps: &["5 cast:same", "10 fire"],
            expect: &["0 A enter:A", "5 A cast:same", "10 A st:s"],
        },
        Scenario {
            name: "state timeout survives repeat_state",
            enter: true,
            init: "A st:10:s",
            rules: &[("A", "cast:again", "repeat")],
            steps: &["5 cast:again", "10 fire"],
            expect: &["0 A enter:A", "5 A cast:again", "5 A enter:A", "10 A st:s"],
        },
        Scenario {
            name: "state timeout set with a state change runs in the new state",
            enter: false,
            init: "A st:5:old",
            rules: &[("A", "cast:go", "next:B st:10:s")],
            steps: &["1 cast:go", "5 fire", "11 fire"],
            expect: &["1 A cast:go", "11 B st:s"],
        },
        Scenario {
            name: "state timeout set again replaces the armed one",
            enter: false,
            init: "A st:10:s",
            rules: &[("A", "cast:x", "st:10:s2")],
            steps: &["5 cast:x", "10 fire", "15 fire"],
            expect: &["5 A cast:x", "15 A st:s2"],
        },
        Scenario {
            name: "state timeout is cancelled explicitly",
            enter: false,
            init: "A st:10:s",
            rules: &[("A", "cast:c", "cancel-st")],
            steps: &["5 cast:c", "10 fire", "10 deadline"],
            expect: &["5 A cast:c", "10 deadline:none"],
        },
        Scenario {
            name: "state timeout due with a timer that changes the state first is dropped",
            enter: false,
            init: "A t:n:10:p st:10:s",
            rules: &[("A", "t:n:p", "next:B")],
            steps: &["10 fire"],
            expect: &["10 A t:n:p"],
        },
        // Named timeouts.
        Scenario {
            name: "named timeout survives state changes and other events",
            enter: true,
            init: "A t:n:10:p",
            rules: &[("A", "cast:go", "next:B")],
            steps: &["2 cast:go", "4 cast:x", "10 fire"],
            expect: &[
                "0 A enter:A",
                "2 A cast:go",
                "2 B enter:A",
                "4 B cast:x",
                "10 B t:n:p",
            ],
        },
        Scenario {
            name: "named timeout is cancelled by CancelTimeout with its name only",
            enter: false,
            init: "A t:n:10:p t:m:10:q",
            rules: &[("A", "cast:c", "cancel:n")],
            steps: &["5 cast:c", "10 fire"],
            expect: &["5 A cast:c", "10 A t:m:q"],
        },
        Scenario {
            name: "named timeout is replaced by setting it again",
            enter: false,
            init: "A t:n:10:p",
            rules: &[("A", "cast:x", "t:n:10:p2")],
            steps: &["5 cast:x", "10 fire", "15 fire"],
            expect: &["5 A cast:x", "15 A t:n:p2"],
        },
        Scenario {
            name: "a duration too long to represent is infinity and cancels the timer",
            enter: false,
            init: "A t:n:10:p",
            rules: &[("A", "cast:x", "t:n:max:p2")],
            steps: &["5 cast:x", "5 deadline", "100 fire"],
            expect: &["5 A cast:x", "5 deadline:none"],
        },
        // Postpone.
        Scenario {
            name: "postponed events are retried in order after a state change",
            enter: false,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("A", "cast:*", "postpone")],
            steps: &[
                "1 cast:1",
                "2 cast:2",
                "3 cast:3",
                "3 postponed",
                "4 cast:go",
                "4 postponed",
            ],
            expect: &[
                "1 A cast:1",
                "2 A cast:2",
                "3 A cast:3",
                "3 postponed:3",
                "4 A cast:go",
                "4 B cast:1",
                "4 B cast:2",
                "4 B cast:3",
                "4 postponed:0",
            ],
        },
        Scenario {
            name: "postponed events are not retried after keep_state",
            enter: false,
            init: "A",
            rules: &[("A", "cast:k", "keep"), ("A", "cast:*", "postpone")],
            steps: &["1 cast:1", "2 cast:k", "2 postponed"],
            expect: &["1 A cast:1", "2 A cast:k", "2 postponed:1"],
        },
        Scenario {
            name: "postponed events are not retried after next_state to the same state or repeat_state",
            enter: true,
            init: "A",
            rules: &[
                ("A", "cast:same", "next:A"),
                ("A", "cast:rep", "repeat"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["1 cast:1", "2 cast:same", "3 cast:rep", "3 postponed"],
            expect: &[
                "0 A enter:A",
                "1 A cast:1",
                "2 A cast:same",
                "3 A cast:rep",
                "3 A enter:A",
                "3 postponed:1",
            ],
        },
        Scenario {
            name: "state enter runs before retried events, inserted events before them",
            enter: true,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B insert:i1 insert:i2"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["1 cast:1", "2 cast:go"],
            expect: &[
                "0 A enter:A",
                "1 A cast:1",
                "2 A cast:go",
                "2 B enter:A",
                "2 B internal:i1",
                "2 B internal:i2",
                "2 B cast:1",
            ],
        },
        Scenario {
            name: "retried events go before events already queued",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "insert:i1 insert:i2"),
                ("A", "internal:i1", "next:B"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["1 cast:1", "2 cast:go"],
            expect: &[
                "1 A cast:1",
                "2 A cast:go",
                "2 A internal:i1",
                "2 B cast:1",
                "2 B internal:i2",
            ],
        },
        Scenario {
            name: "an event postponed again waits for the next state change",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B"),
                ("A", "cast:*", "postpone"),
                ("B", "cast:go2", "next:C"),
                ("B", "cast:1", "postpone"),
            ],
            steps: &["1 cast:1", "2 cast:go", "3 cast:go2"],
            expect: &[
                "1 A cast:1",
                "2 A cast:go",
                "2 B cast:1",
                "3 B cast:go2",
                "3 C cast:1",
            ],
        },
        Scenario {
            name: "a postponed timeout is retried after a state change",
            enter: false,
            init: "A t:n:10:p",
            rules: &[("A", "t:n:p", "postpone"), ("A", "cast:go", "next:B")],
            steps: &["10 fire", "11 cast:go"],
            expect: &["10 A t:n:p", "11 A cast:go", "11 B t:n:p"],
        },
        // State enter.
        Scenario {
            name: "state enter is called with the old state after each change, not on keep",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "cast:back", "next:A")],
            steps: &["1 cast:go", "2 cast:k", "3 cast:back"],
            expect: &[
                "0 A enter:A",
                "1 A cast:go",
                "1 B enter:A",
                "2 B cast:k",
                "3 B cast:back",
                "3 A enter:B",
            ],
        },
        Scenario {
            name: "no state enter calls when state_enter is off",
            enter: false,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "cast:back", "next:A")],
            steps: &["1 cast:go", "2 cast:k", "3 cast:back"],
            expect: &["1 A cast:go", "2 B cast:k", "3 B cast:back"],
        },
        Scenario {
            name: "a state enter call may repeat, with the current state as the old one",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "enter:A", "repeat")],
            steps: &["1 cast:go"],
            expect: &["0 A enter:A", "1 A cast:go", "1 B enter:A", "1 B enter:B"],
        },
        Scenario {
            name: "a state enter call may name its own state and set a state timeout",
            enter: true,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B"),
                ("B", "enter:*", "next:B st:10:s"),
            ],
            steps: &["1 cast:go", "11 fire"],
            expect: &["0 A enter:A", "1 A cast:go", "1 B enter:A", "11 B st:s"],
        },
        Scenario {
            name: "a state enter call that changes the state stops the machine",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "enter:*", "next:C")],
            steps: &["1 cast:go", "2 cast:x"],
            expect: &[
                "0 A enter:A",
                "1 A cast:go",
                "1 B enter:A",
                "1 stopped:bad-enter(change the state)",
            ],
        },
        Scenario {
            name: "a state enter call that postpones stops the machine",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "enter:*", "postpone")],
            steps: &["1 cast:go"],
            expect: &[
                "0 A enter:A",
                "1 A cast:go",
                "1 B enter:A",
                "1 stopped:bad-enter(postpone)",
            ],
        },
        Scenario {
            name: "a state enter call that inserts an event stops the machine",
            enter: true,
            init: "A",
            rules: &[("A", "cast:go", "next:B"), ("B", "enter:*", "insert:i")],
            steps: &["1 cast:go"],
            expect: &[
                "0 A enter:A",
                "1 A cast:go",
                "1 B enter:A",
                "1 stopped:bad-enter(insert an event)",
            ],
        },
        // Stop.
        Scenario {
            name: "stop ends the machine and later events are ignored",
            enter: false,
            init: "A t:n:10:p",
            rules: &[("A", "cast:stop", "stop")],
            steps: &[
                "1 cast:stop",
                "2 cast:x",
                "3 call:q",
                "10 fire",
                "10 deadline",
            ],
            expect: &["1 A cast:stop", "1 stopped:normal", "10 deadline:none"],
        },
        Scenario {
            name: "stop sends the replies of its transition first",
            enter: false,
            init: "A",
            rules: &[("A", "call:bye", "reply:ok stop:done")],
            steps: &["1 call:bye"],
            expect: &["1 A call:bye", "1 reply 7/1:ok", "1 stopped:done"],
        },
        Scenario {
            name: "stop from a timeout",
            enter: false,
            init: "A st:5:s",
            rules: &[("A", "st:s", "stop")],
            steps: &["5 fire", "6 cast:x"],
            expect: &["5 A st:s", "5 stopped:normal"],
        },
        Scenario {
            name: "stop from the initial state enter call",
            enter: true,
            init: "A et:0:e",
            rules: &[("A", "enter:*", "stop:early")],
            steps: &["1 cast:x"],
            expect: &["0 A enter:A", "0 stopped:early"],
        },
        // Replies.
        Scenario {
            name: "replies carry the ReplyTo of their call, postponed ones included",
            enter: false,
            init: "A",
            rules: &[
                ("A", "call:now", "reply:now"),
                ("A", "cast:go", "next:B"),
                ("A", "call:*", "postpone"),
                ("B", "call:*", "reply:late"),
            ],
            steps: &["1 call:q@5", "2 call:now@6", "3 call:r@5", "4 cast:go"],
            expect: &[
                "1 A call:q",
                "2 A call:now",
                "2 reply 6/2:now",
                "3 A call:r",
                "4 A cast:go",
                "4 B call:q",
                "4 B call:r",
                "4 reply 5/1:late",
                "4 reply 5/3:late",
            ],
        },
        // Simultaneous deadlines.
        Scenario {
            name: "equal deadlines fire in the order the timers were set",
            enter: false,
            init: "A t:b:10:1 t:a:10:2 st:10:3",
            rules: &[],
            steps: &["10 fire"],
            expect: &["10 A t:b:1", "10 A t:a:2", "10 A st:3"],
        },
        Scenario {
            name: "the earlier deadline fires first whatever the setting order",
            enter: false,
            init: "A t:late:20:x t:early:10:y",
            rules: &[],
            steps: &["30 fire"],
            expect: &["30 A t:early:y", "30 A t:late:x"],
        },
        Scenario {
            name: "setting a timer again puts it behind those set before",
            enter: false,
            init: "A t:a:10:1 t:b:10:2",
            rules: &[("A", "cast:x", "t:a:10:3")],
            steps: &["0 cast:x", "10 fire"],
            expect: &["0 A cast:x", "10 A t:b:2", "10 A t:a:3"],
        },
        Scenario {
            name: "fire_due fires only what is due; deliver fires nothing due",
            enter: false,
            init: "A t:a:10:1 t:b:20:2",
            rules: &[],
            steps: &["15 cast:x", "15 fire", "15 deadline"],
            expect: &["15 A cast:x", "15 A t:a:1", "15 deadline:20"],
        },
        // Zero timeouts.
        Scenario {
            name: "zero timeout fires before the call returns, after queued events",
            enter: false,
            init: "A",
            rules: &[("A", "cast:go", "next:B st:0:z insert:i")],
            steps: &["1 cast:go", "1 deadline"],
            expect: &[
                "1 A cast:go",
                "1 B internal:i",
                "1 B st:z",
                "1 deadline:none",
            ],
        },
        Scenario {
            name: "zero state timeout is dropped when a queued event changes the state first",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B st:0:z insert:i"),
                ("B", "internal:i", "next:C"),
            ],
            steps: &["1 cast:go"],
            expect: &["1 A cast:go", "1 B internal:i"],
        },
        Scenario {
            name: "zero event timeout is dropped while events are queued",
            enter: false,
            init: "A",
            rules: &[
                ("A", "cast:go", "next:B et:0:z"),
                ("A", "cast:*", "postpone"),
            ],
            steps: &["1 cast:1", "2 cast:go"],
            expect: &["1 A cast:1", "2 A cast:go", "2 B cast:1"],
        },
        Scenario {
            name: "zero event timeout fires when nothing is queued",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "et:0:z")],
            steps: &["1 cast:x"],
            expect: &["1 A cast:x", "1 A et:z"],
        },
        Scenario {
            name: "zero timeouts fire in the order set, before the next message",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "t:n:0:a st:0:b")],
            steps: &["1 cast:x", "1 cast:y"],
            expect: &["1 A cast:x", "1 A t:n:a", "1 A st:b", "1 A cast:y"],
        },
        Scenario {
            name: "a zero state timeout set first cancels a zero event timeout",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "st:0:s et:0:e")],
            steps: &["1 cast:x"],
            expect: &["1 A cast:x", "1 A st:s"],
        },
        Scenario {
            name: "a zero event timeout set first fires before a zero state timeout",
            enter: false,
            init: "A",
            rules: &[("A", "cast:x", "et:0:e st:0:s")],
            steps: &["1 cast:x"],
            expect: &["1 A cast:x", "1 A et:e", "1 A st:s"],
        },
        Scenario {
            name: "a zero timeout set by init fires at start",
            enter: false,
            init: "A et:0:e",
            rules: &[],
            steps: &[],
            expect: &["0 A et:e"],
        },
    ];

    fn stop_label(reason: &StopReason) -> String {
        match reason {
            StopReason::Normal => "normal".to_string(),
            StopReason::Error(why) => why.clone(),
            StopReason::BadStateEnter(what) => format!("bad-enter({what})"),
        }
    }

    /// Moves the machine's calls, then the outputs, into the log.
    fn record(log: &mut Vec<String>, ms: u64, runner: &mut Runner<Scripted>, outputs: Vec<Output>) {
        for seen in runner.machine_mut().seen.drain(..) {
            log.push(format!("{ms} {seen}"));
        }
        for output in outputs {
            log.push(match output {
                Output::Reply { to, payload } => format!(
                    "{ms} reply {}/{}:{}",
                    to.caller,
                    to.correlation,
                    text(&payload)
                ),
                Output::Stopped(reason) => format!("{ms} stopped:{}", stop_label(&reason)),
            });
        }
    }

    fn play(scenario: &Scenario) -> Vec<String> {
        let t0 = Instant::now();
        let machine = Scripted {
            init: scenario.init,
            enter: scenario.enter,
            rules: scenario.rules,
            seen: Vec::new(),
        };
        let (mut runner, outputs) = Runner::start(machine, t0);
        let mut log = Vec::new();
        record(&mut log, 0, &mut runner, outputs);
        let mut calls = 0;
        for step in scenario.steps {
            let (ms, input) = step.split_once(' ').expect("\"MS input\"");
            let ms: u64 = ms.parse().expect("a time in ms");
            let now = t0 + Duration::from_millis(ms);
            let outputs = match input {
                "fire" => runner.fire_due(now),
                "deadline" => {
                    let deadline = runner.next_deadline();
                    let shown =
                        deadline.map_or("none".to_string(), |d| (d - t0).as_millis().to_string());
                    log.push(format!("{ms} deadline:{shown}"));
                    Vec::new()
                }
                "postponed" => {
                    log.push(format!("{ms} postponed:{}", runner.postponed()));
                    Vec::new()
                }
                message => {
                    let (kind, payload) = message.split_once(':').expect("\"kind:payload\"");
                    let message = match kind {
                        "cast" => Message::Cast(payload.into()),
                        "info" => Message::Info(payload.into()),
                        "call" => {
                            calls += 1;
                            let (payload, caller) = match payload.split_once('@') {
                                Some((payload, caller)) => (payload, caller.parse().unwrap()),
                                None => (payload, 7),
                            };
                            Message::Call {
                                from: ReplyTo {
                                    caller,
                                    correlation: calls,
                                },
                                payload: payload.into(),
                            }
                        }
                        other => panic!("unknown input {other:?}"),
                    };
                    runner.deliver(now, message)
                }
            };
            record(&mut log, ms, &mut runner, outputs);
        }
        log
    }

    #[test]
    fn every_timeout_cancellation_and_postpone_rule() {
        let mut failures = Vec::new();
        for scenario in SCENARIOS {
            let log = play(scenario);
            if log != scenario.expect {
                failures.push(format!(
                    "{}:\n  expected {:?}\n  got      {:?}",
                    scenario.name, scenario.expect, log
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} scenarios failed:\n{}",
            failures.len(),
            SCENARIOS.len(),
            failures.join("\n")
        );
    }

    #[test]
    fn scenario_names_are_unique() {
        let mut names: Vec<_> = SCENARIOS.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SCENARIOS.len());
    }

    #[test]
    fn init_ignores_postpone() {
        let machine = Scripted {
            init: "A postpone",
            enter: false,
            rules: &[],
            seen: Vec::new(),
        };
        let (runner, outputs) = Runner::start(machine, Instant::now());
        assert!(outputs.is_empty());
        assert_eq!(runner.postponed(), 0);
        assert_eq!(runner.stopped(), None);
    }

    #[test]
    fn deadline_reports_each_timer() {
        let t0 = Instant::now();
        let machine = Scripted {
            init: "A et:5:e st:10:s t:n:20:p",
            enter: false,
            rules: &[],
            seen: Vec::new(),
        };
        let (runner, _) = Runner::start(machine, t0);
        let ms = |n| Some(t0 + Duration::from_millis(n));
        assert_eq!(runner.deadline(&Timer::Event), ms(5));
        assert_eq!(runner.deadline(&Timer::State), ms(10));
        assert_eq!(runner.deadline(&Timer::Named("n".into())), ms(20));
        assert_eq!(runner.deadline(&Timer::Named("m".into())), None);
        assert_eq!(runner.next_deadline(), ms(5));
    }

    #[test]
    fn run_returns_when_the_source_closes_and_the_runner_goes_on() {
        let t0 = Instant::now();
        let machine = Scripted {
            init: "A t:n:50:p",
            enter: false,
            rules: &[("A", "call:q", "reply:a")],
            seen: Vec::new(),
        };
        let (mut runner, _) = Runner::start(machine, t0);
        let mut source = ScriptedSource::new(t0);
        let from = ReplyTo {
            caller: 3,
            correlation: 9,
        };
        source.push_at(
            t0 + Duration::from_millis(20),
            Message::Call {
                from,
                payload: b"q".to_vec(),
            },
        );
        source.push_at(t0 + Duration::from_millis(10), Message::Cast(b"x".to_vec()));
        let mut outputs = Vec::new();
        assert_eq!(
            runner.run(&mut source, |o| outputs.push(o)),
            RunEnd::SourceClosed
        );
        assert_eq!(
            outputs,
            [Output::Reply {
                to: from,
                payload: b"a".to_vec()
            }]
        );
        assert_eq!(
            runner.machine().seen,
            ["A cast:x", "A call:q", "A t:n:p"],
            "messages in arrival order, then the timer at its deadline"
        );
        assert_eq!(source.clock(), t0 + Duration::from_millis(50));
        assert_eq!(source.remaining(), 0);
        // Still running: the runner takes more after the loop.
        assert!(runner.deliver(t0, Message::Cast(b"y".to_vec())).is_empty());
        assert_eq!(runner.stopped(), None);
    }

    /// A source that always has another message and whose clock moves 1 ms
    /// per reading: a timer must still fire when it is due.
    struct Flood {
        now: Instant,
        left: u32,
    }

    impl EventSource for Flood {
        fn now(&mut self) -> Instant {
            self.now += Duration::from_millis(1);
            self.now
        }
        fn reset(&mut self) {}
        fn poll(&mut self) -> Option<Message> {
            self.left = self.left.checked_sub(1)?;
            Some(Message::Cast(b"m".to_vec()))
        }
        fn wait(&mut self, _deadline: Option<Instant>) -> WaitResult {
            WaitResult::Closed
        }
    }

    #[test]
    fn run_fires_a_due_timer_during_a_flood_of_messages() {
        let t0 = Instant::now();
        let machine = Scripted {
            init: "A t:n:10:p",
            enter: false,
            rules: &[],
            seen: Vec::new(),
        };
        let (mut runner, _) = Runner::start(machine, t0);
        let mut source = Flood { now: t0, left: 100 };
        assert_eq!(runner.run(&mut source, |_| {}), RunEnd::SourceClosed);
        let seen = &runner.machine().seen;
        assert_eq!(seen.len(), 101);
        // Message k is delivered at k ms; the timer is due at 10 ms.
        assert_eq!(seen[9], "A cast:m");
        assert_eq!(seen[10], "A t:n:p");
    }

    #[test]
    fn run_stops_with_the_machine_and_leaves_later_messages() {
        let t0 = Instant::now();
        let machine = Scripted {
            init: "A",
            enter: false,
            rules: &[("A", "cast:stop", "stop:bye")],
            seen: Vec::new(),
        };
        let (mut runner, _) = Runner::start(machine, t0);
        let mut source = ScriptedSource::new(t0);
        source.push(Message::Cast(b"stop".to_vec()));
        source.push(Message::Cast(b"after".to_vec()));
        let mut outputs = Vec::new();
        let end = runner.run(&mut source, |o| outputs.push(o));
        let reason = StopReason::Error("bye".into());
        assert_eq!(end, RunEnd::Stopped(reason.clone()));
        assert_eq!(outputs, [Output::Stopped(reason)]);
        assert_eq!(source.remaining(), 1);
        assert_eq!(runner.machine().seen, ["A cast:stop"]);
    }

    #[test]
    fn scripted_source_orders_arrivals_and_moves_its_clock() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut source = ScriptedSource::new(t0);
        source.push_at(at(10), Message::Cast(b"b".to_vec()));
        source.push_at(at(5), Message::Cast(b"a".to_vec()));
        source.push_at(at(10), Message::Cast(b"c".to_vec()));
        assert_eq!(source.poll(), None, "nothing has arrived at t0");
        assert_eq!(source.wait(Some(at(3))), WaitResult::TimedOut);
        assert_eq!(source.clock(), at(3));
        assert_eq!(source.wait(Some(at(7))), WaitResult::Woken);
        assert_eq!(source.clock(), at(5));
        assert_eq!(source.poll(), Some(Message::Cast(b"a".to_vec())));
        assert_eq!(source.wait(None), WaitResult::Woken);
        assert_eq!(source.poll(), Some(Message::Cast(b"b".to_vec())));
        assert_eq!(source.poll(), Some(Message::Cast(b"c".to_vec())));
        assert_eq!(source.poll(), None);
        assert_eq!(source.wait(None), WaitResult::Closed);
        assert_eq!(source.wait(Some(at(1))), WaitResult::TimedOut);
        assert_eq!(source.clock(), at(10), "the clock never goes back");
    }
}
