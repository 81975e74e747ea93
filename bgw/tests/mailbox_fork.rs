//! Inboxes and names across `fork`, on a memfd segment: a call/reply round
//! trip by name, casts both ways while calls are in flight, and a call to
//! a worker that dies before replying, which must fail promptly once its
//! slot is released, long before the call's deadline.
//!
//! The test process plays the postmaster (it assigns the workers' slots,
//! forks, reaps and releases) and a caller with a slot of its own. The
//! cargo harness is multi-threaded, so this file holds a single test (no
//! other test thread runs while it forks) and a child keeps to shared
//! memory, latches and `_exit`. The one exception: activating a slot
//! reads `/proc/self/stat`, which allocates; glibc's `fork` takes and
//! reinitialises its malloc locks around the fork, so that is safe in the
//! child. A child reports through its exit code, never by panicking.

#![cfg(not(loom))]

use std::time::{Duration, Instant};

use bgw::mailbox::{Address, CallError, Kind, MAX_MESSAGE, Mailboxes, Wait};
use bgw::names::{NameOwner, Names};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use proclist::{ProcArray, ProcArrayConfig, SlotHandle};
use shmem::sync::{AtomicU32, Ordering};
use shmem::{Layout, Segment};

const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 2,
    backends: 1,
};

/// Calls in the round-trip scenario (fewer in unoptimised builds).
const CALLS: u32 = if cfg!(debug_assertions) { 500 } else { 5000 };

/// How long anything may take before the test calls it hung. Generous: the
/// machine is shared and slow; a correct run takes milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

/// Region through which a child says how far it got.
const PROGRESS: &str = "test.progress";

// Child exit codes.
const OK: i32 = 0;
const ATTACH_FAILED: i32 = 10;
const REGISTER_FAILED: i32 = 11;
const INBOX_FAILED: i32 = 12;
const RECV_FAILED: i32 = 13;
const REPLY_FAILED: i32 = 14;
const CAST_FAILED: i32 = 15;
const TIMED_OUT: i32 = 16;
const DIED_ON_PURPOSE: i32 = 17;
const PANICKED: i32 = 101;

fn layout() -> Layout {
    let total = CONFIG.total() as usize;
    let builder = ProcArray::declare(Layout::builder(), CONFIG);
    let builder = Names::declare(builder, total);
    Mailboxes::declare(builder, total, 64)
        .region::<AtomicU32>(PROGRESS)
        .build()
        .expect("layout")
}

/// Forks; the child runs `body` and `_exit`s with its result.
fn fork_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child runs only `body` (shared-memory work, see the module
    // docs) and leaves with _exit, which runs no destructors or atexit
    // handlers of the copied parent state.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(PANICKED);
            // SAFETY: _exit is async-signal-safe and ends the child here.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

/// Reaps `child` and returns its exit code; kills it and panics if it has
/// not exited within [`PATIENCE`].
fn reap(child: Pid) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::StillAlive => {}
            other => panic!("child {child} ended abnormally: {other:?}"),
        }
        if Instant::now() > deadline {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            panic!("child {child} did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `cond` until it holds; panics after [`PATIENCE`] with `what`.
fn wait_until<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = cond() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// What a worker child does with a call.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Replies `re:` + the request; echoes casts back to their sender;
    /// exits cleanly on the cast `stop`.
    Serve,
    /// Exits abruptly (no reply, no clean-up) on its first call.
    DieOnCall,
}

/// A worker: activates its slot, registers `name`, and serves its inbox.
/// Returns an exit code.
fn worker(segment: &Segment, handle: SlotHandle, name: &str, behaviour: Behaviour) -> i32 {
    let deadline = Instant::now() + PATIENCE;
    let Ok(procs) = ProcArray::attach(segment, CONFIG) else {
        return ATTACH_FAILED;
    };
    let Ok(slot) = procs.activate(handle) else {
        return ATTACH_FAILED;
    };
    let (Ok(names), Ok(mailboxes), Ok(progress)) = (
        Names::from_segment(segment),
        Mailboxes::from_segment(segment),
        segment.region::<AtomicU32>(PROGRESS),
    ) else {
        return ATTACH_FAILED;
    };
    let me = Address::from(handle);
    let Ok(mut inbox) = mailboxes.inbox(me, slot.latch()) else {
        return INBOX_FAILED;
    };
    // Registered last: a caller that finds the name finds the inbox open.
    let owner = NameOwner {
        proc_index: handle.index,
        proc_generation: handle.generation,
        pid: std::process::id(),
    };
    if names.register(name, owner).is_err() {
        return REGISTER_FAILED;
    }
    loop {
        if Instant::now() >= deadline {
            return TIMED_OUT;
        }
        let message = match inbox.recv(Some(deadline)) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(_) => return RECV_FAILED,
        };
        match (message.kind(), behaviour) {
            (Kind::Call, Behaviour::DieOnCall) => {
                // Release: pairs with the parent's Acquire load; nothing
                // else is published, it only says the call got here.
                progress.store(1, Ordering::Release);
                return DIED_ON_PURPOSE;
            }
            (Kind::Call, Behaviour::Serve) => {
                let Some(to) = message.reply_to() else {
                    return RECV_FAILED;
                };
                let request = message.payload();
                let mut answer = [0u8; MAX_MESSAGE];
                let len = (request.len() + 3).min(MAX_MESSAGE);
                answer[..3].copy_from_slice(b"re:");
                answer[3..len].copy_from_slice(&request[..len - 3]);
                if inbox
                    .reply(&procs, to, &answer[..len], Wait::Until(deadline))
                    .is_err()
                {
                    return REPLY_FAILED;
                }
            }
            (Kind::Cast, _) if message.payload() == b"stop" => break,
            (Kind::Cast, _) => {
                let Some(from) = message.from() else {
                    return RECV_FAILED;
                };
                if inbox
                    .cast(&procs, from, message.payload(), Wait::Until(deadline))
                    .is_err()
                {
                    return CAST_FAILED;
                }
            }
            (Kind::Reply, _) => return RECV_FAILED,
        }
    }
    // The dead-man switch: clean.
    drop(inbox);
    if procs.mark_exiting(handle).is_err() {
        return ATTACH_FAILED;
    }
    OK
}

/// What the postmaster does after reaping a worker: release its slot, its
/// names and what it held in the inboxes.
fn release_worker(segment: &Segment, handle: SlotHandle, pid: Pid) {
    let procs = ProcArray::attach(segment, CONFIG).expect("procs");
    let names = Names::from_segment(segment).expect("names");
    let mailboxes = Mailboxes::from_segment(segment).expect("mailboxes");
    let pid = pid.as_raw() as u32;
    names.release_owned_by(handle.index, handle.generation);
    // SAFETY: the process was reaped by our caller.
    unsafe {
        mailboxes.recover_sender(pid, &procs);
        mailboxes
            .reset_inbox(handle.index, pid)
            .expect("reset the dead worker's inbox");
    }
    procs.release_assigned(handle).expect("release the slot");
}

#[test]
fn calls_and_casts_between_processes_and_a_call_to_a_worker_that_dies() {
    let segment = Segment::create(&layout()).expect("segment");
    let procs = ProcArray::init(&segment, CONFIG).expect("procs");
    let names = Names::from_segment(&segment).expect("names");
    let mailboxes = Mailboxes::from_segment(&segment).expect("mailboxes");
    let progress = segment.region::<AtomicU32>(PROGRESS).expect("progress");

    // Both workers are forked before any thread of ours exists.
    let echo_slot = procs.assign(proclist::Kind::Worker, 0).expect("slot");
    let echo = fork_child(|| worker(&segment, echo_slot, "echo", Behaviour::Serve));
    let doomed_slot = procs.assign(proclist::Kind::Worker, 0).expect("slot");
    let doomed = fork_child(|| worker(&segment, doomed_slot, "doomed", Behaviour::DieOnCall));

    let me = procs
        .acquire(proclist::Kind::Backend)
        .expect("a slot for us");
    let mut inbox = mailboxes
        .inbox(Address::from(me.handle()), me.latch())
        .expect("our inbox");

    // Round trip by name, with casts both ways while calls are in flight:
    // every tenth call is preceded by a cast the worker echoes back, which
    // arrives while a later call waits and is kept for recv.
    let owner = wait_until("the echo worker's name", || names.whereis("echo"));
    assert_eq!(owner.pid, echo.as_raw() as u32);
    assert_eq!(Address::from(owner), Address::from(echo_slot));
    let mut notes = Vec::new();
    for i in 0..CALLS {
        if i % 10 == 0 {
            let note = format!("note {i}");
            inbox
                .cast_name(&names, &procs, "echo", note.as_bytes(), Wait::Until(far()))
                .expect("cast");
            notes.push(note);
        }
        let request = format!("call {i}");
        let reply = inbox
            .call_name(&names, &procs, "echo", request.as_bytes(), far())
            .expect("a reply");
        assert_eq!(reply, format!("re:{request}").as_bytes());
    }
    let mut echoed = Vec::new();
    while echoed.len() < notes.len() {
        let m = wait_until("the echoed casts", || {
            inbox.recv(Some(far())).expect("recv")
        });
        assert_eq!(m.kind(), Kind::Cast);
        assert_eq!(m.from(), Some(Address::from(echo_slot)));
        echoed.push(String::from_utf8(m.payload().to_vec()).expect("utf-8"));
    }
    assert_eq!(echoed, notes, "casts lost, repeated or reordered");
    assert_eq!(inbox.stats(), Default::default());

    inbox
        .cast_name(&names, &procs, "echo", b"stop", Wait::Until(far()))
        .expect("stop");
    assert_eq!(reap(echo), OK, "echo worker's exit code");
    release_worker(&segment, echo_slot, echo);
    assert_eq!(
        names.whereis("echo"),
        None,
        "the name is released with its worker"
    );

    // A call to a worker that dies before replying: the call fails as soon
    // as the postmaster (a thread here) has reaped the worker and freed its
    // slot, not at the call's deadline.
    wait_until("the doomed worker's name", || names.whereis("doomed"));
    let call_deadline = Instant::now() + PATIENCE;
    let (result, returned, released_at) = std::thread::scope(|s| {
        let postmaster = s.spawn(|| {
            let code = reap(doomed);
            release_worker(&segment, doomed_slot, doomed);
            (code, Instant::now())
        });
        let result = inbox.call_name(&names, &procs, "doomed", b"die", call_deadline);
        let returned = Instant::now();
        let (code, released_at) = postmaster.join().expect("postmaster thread");
        assert_eq!(code, DIED_ON_PURPOSE, "doomed worker's exit code");
        (result, returned, released_at)
    });
    // Acquire: pairs with the child's Release store.
    assert_eq!(progress.load(Ordering::Acquire), 1, "the call reached it");
    match result {
        Err(CallError::Died { to }) => assert_eq!(to, Address::from(doomed_slot)),
        other => panic!("a call to a dying worker returned {other:?}"),
    }
    let late = returned.saturating_duration_since(released_at);
    assert!(
        late < bgw::mailbox::RECHECK + Duration::from_secs(5),
        "the caller noticed {late:?} after the slot was freed"
    );
    assert!(returned < call_deadline);
    assert!(matches!(
        inbox.call_name(&names, &procs, "doomed", b"again", far()),
        Err(CallError::NotRegistered { .. })
    ));
}

fn far() -> Instant {
    Instant::now() + PATIENCE
}
