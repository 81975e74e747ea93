//! The condition variable across processes: a memfd segment shared over
//! `fork`, one process waiting, the other signalling, in both directions.
//!
//! The test harness is multi-threaded, so a forked child here does only
//! async-signal-safe things: atomics and futex calls on the segment,
//! `getpid`, `clock_gettime`; no allocation, printing or unwinding. It
//! reports through its exit code and leaves through `_exit`.
#![cfg(not(loom))]

use std::time::{Duration, Instant};

use latch::Latch;
use nix::libc;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use proclist::{ConditionVariable, CvWake, ListLink, ListNode, WaitNode};
use shmem::sync::{AtomicU32, Ordering};
use shmem::{Layout, Segment, ShmSafe};

/// A slot as the condition variable needs it, laid out in the segment.
#[repr(C)]
struct Slot {
    link: ListLink,
    latch: Latch,
}

// SAFETY: #[repr(C)] of a ListLink and a Latch, both ShmSafe: any bits are
// valid, no pointers, all mutation is atomic.
unsafe impl ShmSafe for Slot {}

impl ListNode for Slot {
    fn link(&self) -> &ListLink {
        &self.link
    }
}

impl WaitNode for Slot {
    fn latch(&self) -> &Latch {
        &self.latch
    }
}

/// The parent's slot and the child's.
const PARENT: u32 = 0;
const CHILD: u32 = 1;

/// Child exit codes.
const OK: i32 = 0;
const FAILED_PREPARE: i32 = 10;
const FAILED_SLEEP: i32 = 11;
const TIMED_OUT: i32 = 12;
const PARENT_DIED: i32 = 13;
const FAILED_OWN: i32 = 14;
const NOBODY_SIGNALLED: i32 = 15;
/// The condition was seen only once the deadline had passed: the wake-up
/// was lost and the timeout path found the signal.
const WOKE_AT_DEADLINE: i32 = 16;

/// Far enough that only a lost signal reaches it.
const GENEROUS: Duration = Duration::from_secs(20);

struct Shared<'s> {
    cv: &'s ConditionVariable,
    slots: &'s [Slot],
    /// The condition: 0 until the signaller sets it.
    ready: &'s AtomicU32,
}

fn segment() -> Segment {
    let layout = Layout::builder()
        .region::<ConditionVariable>("cv")
        .array::<Slot>("slots", 2)
        .region::<AtomicU32>("ready")
        .build()
        .expect("layout");
    Segment::create(&layout).expect("segment")
}

fn shared(seg: &Segment) -> Shared<'_> {
    Shared {
        cv: seg.region("cv").expect("cv"),
        slots: seg.array("slots").expect("slots"),
        ready: seg.region("ready").expect("ready"),
    }
}

/// Forks; the child runs `child` and `_exit`s with its result.
fn spawn(child: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child only runs `child`, which the callers keep
    // async-signal-safe (see the module docs), then `_exit`s without
    // running destructors or unwinding.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = child();
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

fn exit_code(pid: Pid) -> i32 {
    match waitpid(pid, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child did not exit normally: {other:?}"),
    }
}

/// The waiter's loop, async-signal-safe, as an exit code.
fn wait_until_ready(s: &Shared<'_>, me: u32) -> i32 {
    if s.slots[me as usize].latch.own().is_err() {
        return FAILED_OWN;
    }
    let deadline = Instant::now() + GENEROUS;
    let Ok(wait) = s.cv.prepare(me, s.slots) else {
        return FAILED_PREPARE;
    };
    // Acquire: pairs with the signaller's Release store.
    while s.ready.load(Ordering::Acquire) == 0 {
        match wait.sleep(Some(deadline)) {
            Ok(CvWake::Signaled | CvWake::LatchSet) => {}
            Ok(CvWake::Timeout) => return TIMED_OUT,
            Ok(CvWake::PostmasterDied) => return PARENT_DIED,
            Err(_) => return FAILED_SLEEP,
        }
    }
    if Instant::now() >= deadline {
        return WOKE_AT_DEADLINE;
    }
    OK
}

/// Polls `cond` until it holds or a generous deadline passes.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let give_up = Instant::now() + GENEROUS;
    while !cond() {
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The child sleeps on the variable; the parent, in another process, sets
/// the condition and signals. Regression test for a private futex too: the
/// parent waits until the child is asleep on its latch's futex, so the
/// child can only return through a shared-futex wake.
#[test]
fn parent_signals_a_child_asleep_on_the_variable() {
    let seg = segment();
    let s = shared(&seg);
    let child = spawn(|| wait_until_ready(&shared(&seg), CHILD));
    eventually("the child is on the list", || {
        s.cv.is_waiting(CHILD, s.slots).expect("list")
    });
    eventually("the child sleeps on its latch", || {
        s.slots[CHILD as usize].latch.has_sleeper()
    });
    // Release: pairs with the waiter's Acquire load.
    s.ready.store(1, Ordering::Release);
    assert_eq!(s.cv.signal(s.slots).expect("signal"), Some(CHILD));
    assert_eq!(exit_code(child), OK);
    assert!(!s.cv.is_waiting(CHILD, s.slots).expect("list"));
}

/// The reverse: the parent prepares before forking, the child signals.
#[test]
fn child_signals_the_parent() {
    let seg = segment();
    let s = shared(&seg);
    s.slots[PARENT as usize].latch.own().expect("own");
    let wait = s.cv.prepare(PARENT, s.slots).expect("prepare");
    let child = spawn(|| {
        let s = shared(&seg);
        // Release: pairs with the waiter's Acquire load.
        s.ready.store(1, Ordering::Release);
        match s.cv.signal(s.slots) {
            Ok(Some(PARENT)) => OK,
            _ => NOBODY_SIGNALLED,
        }
    });
    let deadline = Instant::now() + GENEROUS;
    // Acquire: pairs with the child's Release store.
    while s.ready.load(Ordering::Acquire) == 0 {
        let why = wait.sleep(Some(deadline)).expect("sleep");
        assert!(
            matches!(why, CvWake::Signaled | CvWake::LatchSet),
            "woke with {why:?}"
        );
    }
    assert!(
        Instant::now() < deadline,
        "woke only at the deadline: the wake-up was lost"
    );
    drop(wait);
    assert_eq!(exit_code(child), OK);
    assert!(!s.cv.is_waiting(PARENT, s.slots).expect("list"));
}

/// A broadcast from the parent wakes a child in another process and
/// leaves nobody on the list.
#[test]
fn broadcast_reaches_another_process() {
    let seg = segment();
    let s = shared(&seg);
    let child = spawn(|| wait_until_ready(&shared(&seg), CHILD));
    eventually("the child is on the list", || {
        s.cv.is_waiting(CHILD, s.slots).expect("list")
    });
    // Release: pairs with the waiter's Acquire load.
    s.ready.store(1, Ordering::Release);
    assert!(s.cv.broadcast(s.slots).expect("broadcast") >= 1);
    assert_eq!(exit_code(child), OK);
    assert!(!s.cv.is_waiting(CHILD, s.slots).expect("list"));
}
