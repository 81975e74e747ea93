//! Postmaster death, in real process trees made with `fork`.
//!
//! The test process plays no part in the tree's signals: it forks a
//! "postmaster" (middle) process, which forks a worker (grandchild) that
//! arms `pmdeath` with the middle's pid. The test then kills the middle and
//! watches, through shared memory, what the worker's latch wait reports.
//! Every forked process does only async-signal-safe things (see
//! tests/common).
#![cfg(not(loom))]

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, child_wait_until, fork_child, reap, wait_until};
use latch::{Latch, Wake, pmdeath};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};
use shmem::sync::{AtomicU32, Ordering};
use shmem::{Layout, Segment};

/// How long the worker waits before giving up: the bound within which
/// PostmasterDied must arrive.
const WORKER_DEADLINE: Duration = Duration::from_secs(10);

// Report slots.
const READY: usize = 0;
const OUTCOME: usize = 1;
const ALIVE_AFTER: usize = 2;
const WORKER_PID: usize = 3;

// Outcomes (0: not yet).
const DIED: u32 = 1;
const TIMEOUT: u32 = 2;
const SET: u32 = 3;
const ERROR: u32 = 4;
const EARLY_DEATH: u32 = 5;

fn segment() -> Segment {
    let layout = Layout::builder()
        .region::<Latch>("latch")
        .array::<AtomicU32>("report", 4)
        .build()
        .unwrap();
    Segment::create(&layout).unwrap()
}

/// The worker: arm, own, report ready, wait once; async-signal-safe.
/// Without a deadline the futex sleep has no timeout, so the kernel
/// restarts it after the (SA_RESTART) death handler and only the handler's
/// set of the latch can end it; with one, the handler's EINTR also would.
fn worker(latch: &Latch, report: &[AtomicU32], parent: Pid, deadline: Option<Duration>) -> i32 {
    report[WORKER_PID].store(getpid().as_raw() as u32, Ordering::Release);
    if pmdeath::arm(parent.as_raw() as u32).is_err() || latch.own().is_err() {
        report[OUTCOME].store(ERROR, Ordering::Release);
        return 1;
    }
    // Release (all report stores): pair with the test's Acquire loads.
    report[READY].store(1, Ordering::Release);
    let outcome = match latch.wait(deadline.map(|d| Instant::now() + d)) {
        Ok(Wake::PostmasterDied) => DIED,
        Ok(Wake::Timeout) => TIMEOUT,
        Ok(Wake::Set) => SET,
        Err(_) => ERROR,
    };
    report[ALIVE_AFTER].store(u32::from(pmdeath::postmaster_is_alive()), Ordering::Release);
    report[OUTCOME].store(outcome, Ordering::Release);
    0
}

fn outcome_name(code: u32) -> &'static str {
    match code {
        DIED => "PostmasterDied",
        TIMEOUT => "Timeout",
        SET => "Set",
        ERROR => "an error",
        EARLY_DEATH => "death before the wait",
        _ => "nothing",
    }
}

fn kill_and_reap(pid: Pid) {
    kill(pid, Signal::SIGKILL).unwrap();
    match waitpid(pid, None).unwrap() {
        WaitStatus::Signaled(_, Signal::SIGKILL, _) => {}
        other => panic!("middle process ended unexpectedly: {other:?}"),
    }
}

/// Kills the worker if it is still there when the test ends (a failing
/// worker must not outlive the test).
struct KillWorker<'a>(&'a [AtomicU32]);

impl Drop for KillWorker<'_> {
    fn drop(&mut self) {
        let pid = self.0[WORKER_PID].load(Ordering::Acquire);
        if pid != 0 && self.0[OUTCOME].load(Ordering::Acquire) == 0 {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// Forks a middle process that forks the worker and then idles; kills the
/// middle once the worker sleeps; returns what the worker's wait reported.
fn kill_the_parent_of_a_waiting_worker(deadline: Option<Duration>) {
    let segment = segment();
    let latch: &Latch = segment.region("latch").unwrap();
    let report: &[AtomicU32] = segment.array("report").unwrap();
    let _cleanup = KillWorker(report);
    let middle = fork_child(|| {
        let me = getpid();
        let _worker = fork_child(|| worker(latch, report, me, deadline));
        loop {
            nix::unistd::pause();
        }
    });
    wait_until("the worker to sleep on its latch", || {
        report[READY].load(Ordering::Acquire) == 1 && latch.has_sleeper()
    });
    kill_and_reap(middle);
    let killed = Instant::now();
    wait_until("the worker to report", || {
        report[OUTCOME].load(Ordering::Acquire) != 0
    });
    let outcome = report[OUTCOME].load(Ordering::Acquire);
    assert_eq!(
        outcome,
        DIED,
        "the worker's wait returned {} {:?} after its parent was killed",
        outcome_name(outcome),
        killed.elapsed()
    );
    assert_eq!(report[ALIVE_AFTER].load(Ordering::Acquire), 0);
}

#[test]
fn a_workers_endless_wait_returns_postmaster_died_when_its_parent_is_killed() {
    kill_the_parent_of_a_waiting_worker(None);
}

#[test]
fn a_workers_timed_wait_returns_postmaster_died_when_its_parent_is_killed() {
    kill_the_parent_of_a_waiting_worker(Some(WORKER_DEADLINE));
}

#[test]
fn a_parent_that_died_before_arming_is_noticed() {
    let segment = segment();
    let latch: &Latch = segment.region("latch").unwrap();
    let report: &[AtomicU32] = segment.array("report").unwrap();
    let middle = fork_child(|| {
        let me = getpid();
        let _worker = fork_child(|| {
            // Arm only once the parent is certainly gone: the prctl then
            // sends nothing, and only arm()'s getppid() check can tell.
            if !child_wait_until(LIMIT, || getppid() != me) {
                return 1;
            }
            worker(latch, report, me, Some(WORKER_DEADLINE))
        });
        0
    });
    assert_eq!(reap(middle), 0);
    wait_until("the worker to report", || {
        report[OUTCOME].load(Ordering::Acquire) != 0
    });
    let outcome = report[OUTCOME].load(Ordering::Acquire);
    assert_eq!(outcome, DIED, "got {}", outcome_name(outcome));
    assert_eq!(report[ALIVE_AFTER].load(Ordering::Acquire), 0);
}

#[test]
fn a_stray_death_signal_with_the_parent_alive_is_ignored() {
    let segment = segment();
    let latch: &Latch = segment.region("latch").unwrap();
    let report: &[AtomicU32] = segment.array("report").unwrap();
    let parent = getpid();
    let child = fork_child(|| worker(latch, report, parent, Some(Duration::from_millis(500))));
    wait_until("the worker to sleep on its latch", || {
        report[READY].load(Ordering::Acquire) == 1 && latch.has_sleeper()
    });
    // Someone sends the death signal, but the parent (this test) lives.
    kill(child, pmdeath::DEFAULT_SIGNAL).unwrap();
    assert_eq!(reap(child), 0);
    let outcome = report[OUTCOME].load(Ordering::Acquire);
    assert_eq!(outcome, TIMEOUT, "got {}", outcome_name(outcome));
    assert_eq!(report[ALIVE_AFTER].load(Ordering::Acquire), 1);
}

#[test]
fn an_unarmed_process_thinks_its_postmaster_alive() {
    assert!(pmdeath::postmaster_is_alive());
    assert!(!pmdeath::parent_died());
    assert!(matches!(
        pmdeath::arm(0),
        Err(pmdeath::PmDeathError::NoParent)
    ));
}
