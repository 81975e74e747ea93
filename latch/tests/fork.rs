//! Latches across `fork`, on a memfd segment.
//!
//! These are the regression tests for the private-futex trap (DESIGN.md,
//! "Facts verified", 2): with `FUTEX_PRIVATE_FLAG`, a wake from one process
//! never reaches a sleeper in another, so the sleeping side below would run
//! into its deadline and the test would fail with a timeout code.
#![cfg(not(loom))]

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, child_wait_until, fork_child, is_sleeping, reap, wait_until};
use latch::{Latch, SpinPolicy, WaitOptions, Wake};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use shmem::{Layout, Segment};

// Child exit codes.
const OK: i32 = 0;
const WAIT_ERROR: i32 = 10;
const TIMED_OUT: i32 = 11;
const WRONG_WAKE: i32 = 12;
const NOT_READY: i32 = 13;
const OWN_FAILED: i32 = 14;
const WRONG_COUNT: i32 = 15;

struct Shared {
    segment: Segment,
}

impl Shared {
    fn new() -> Self {
        let layout = Layout::builder()
            .region::<Latch>("a")
            .region::<Latch>("b")
            .region::<AtomicU64>("work")
            .region::<AtomicU32>("ready")
            .build()
            .unwrap();
        Self {
            segment: Segment::create(&layout).unwrap(),
        }
    }
    fn a(&self) -> &Latch {
        self.segment.region("a").unwrap()
    }
    fn b(&self) -> &Latch {
        self.segment.region("b").unwrap()
    }
    fn work(&self) -> &AtomicU64 {
        self.segment.region("work").unwrap()
    }
    fn ready(&self) -> &AtomicU32 {
        self.segment.region("ready").unwrap()
    }
}

/// The owner's loop from the crate docs, until `work` reaches `target`.
/// Async-signal-safe; returns a child exit code.
fn wait_for_work(latch: &Latch, work: &AtomicU64, target: u64, options: &WaitOptions) -> i32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        latch.reset();
        // Acquire: pairs with the setters' Release fetch_add.
        let seen = work.load(Ordering::Acquire);
        if seen == target {
            return OK;
        }
        if seen > target {
            return WRONG_COUNT;
        }
        match latch.wait_with(Some(deadline), options) {
            // A set that only became visible when the deadline woke us
            // (the timeout path reports a set it finds) is a lost wake-up.
            Ok(Wake::Set) if Instant::now() >= deadline => return TIMED_OUT,
            Ok(Wake::Set) => {}
            Ok(Wake::Timeout) => return TIMED_OUT,
            Ok(Wake::PostmasterDied) => return WRONG_WAKE,
            Err(_) => return WAIT_ERROR,
        }
    }
}

#[test]
fn child_asleep_on_a_latch_is_woken_by_its_parent() {
    // Regression test for the private-futex trap (see the module docs).
    let shared = Shared::new();
    let (latch, work) = (shared.a(), shared.work());
    let child = fork_child(|| {
        if latch.own().is_err() {
            return OWN_FAILED;
        }
        // Release: pairs with the parent's Acquire load of `ready`.
        shared.ready().store(1, Ordering::Release);
        wait_for_work(latch, work, 1, &WaitOptions::no_spin())
    });
    // Make sure the child is really asleep in FUTEX_WAIT, not about to be.
    wait_until("the child to sleep on the latch", || {
        shared.ready().load(Ordering::Acquire) == 1 && latch.has_sleeper() && is_sleeping(child)
    });
    // Release: pairs with the child's Acquire load in wait_for_work.
    work.fetch_add(1, Ordering::Release);
    latch.set();
    assert_eq!(
        reap(child),
        OK,
        "the child was not woken by the parent's set"
    );
}

#[test]
fn parent_asleep_on_a_latch_is_woken_by_a_child() {
    let shared = Shared::new();
    let (latch, work) = (shared.a(), shared.work());
    latch.own().unwrap();
    let child = fork_child(|| {
        // Wait until the parent announces its sleep, then set.
        if !child_wait_until(LIMIT, || latch.has_sleeper()) {
            return NOT_READY;
        }
        // Release: pairs with the parent's Acquire load in wait_for_work.
        work.fetch_add(1, Ordering::Release);
        latch.set();
        OK
    });
    let outcome = wait_for_work(latch, work, 1, &WaitOptions::no_spin());
    assert_eq!(reap(child), OK);
    assert_eq!(outcome, OK, "the parent was not woken by the child's set");
}

#[test]
fn a_set_from_another_process_before_the_wait_returns_at_once() {
    let shared = Shared::new();
    let latch = shared.a();
    latch.own().unwrap();
    let child = fork_child(|| {
        latch.set();
        OK
    });
    assert_eq!(reap(child), OK);
    // A huge deadline: if the set were lost this would time out the test
    // harness rather than pass by accident; the bound keeps it finite.
    let start = Instant::now();
    let wake = latch
        .wait_with(Some(start + LIMIT), &WaitOptions::no_spin())
        .unwrap();
    assert_eq!(wake, Wake::Set);
}

#[test]
fn many_setter_processes_and_one_waiter_lose_nothing() {
    const SETTERS: u64 = 4;
    const SETS: u64 = 2_000;
    for options in [WaitOptions::no_spin(), WaitOptions::default()] {
        let shared = Shared::new();
        let (latch, work) = (shared.a(), shared.work());
        latch.own().unwrap();
        let children: Vec<_> = (0..SETTERS)
            .map(|i| {
                fork_child(|| {
                    for n in 0..SETS {
                        // Release: pairs with the waiter's Acquire load.
                        work.fetch_add(1, Ordering::Release);
                        latch.set();
                        if (n + i) % 64 == 0 {
                            // Let the waiter fall asleep now and then, so
                            // both the spinning and the futex paths run.
                            let _ = nix::sched::sched_yield();
                        }
                    }
                    OK
                })
            })
            .collect();
        let outcome = wait_for_work(latch, work, SETTERS * SETS, &options);
        for child in children {
            assert_eq!(reap(child), OK);
        }
        assert_eq!(outcome, OK, "waiter missed work with {options:?}");
    }
}

#[test]
fn two_processes_ping_pong_without_losing_a_round() {
    const ROUNDS: u64 = 2_000;
    for options in [
        WaitOptions::no_spin(),
        WaitOptions::default(),
        WaitOptions::default().spin(SpinPolicy::Fixed(Duration::from_micros(20))),
    ] {
        let shared = Shared::new();
        let (ping, pong, ball) = (shared.a(), shared.b(), shared.work());
        ping.own().unwrap();
        let child = fork_child(|| {
            if pong.own().is_err() {
                return OWN_FAILED;
            }
            // Release: pairs with the parent's Acquire load of `ready`.
            shared.ready().store(1, Ordering::Release);
            for round in 0..ROUNDS {
                // Odd values are the parent's serves, even the child's returns.
                let code = wait_for_work(pong, ball, 2 * round + 1, &options);
                if code != OK {
                    return code;
                }
                // Release: pairs with the parent's Acquire load.
                ball.fetch_add(1, Ordering::Release);
                ping.set();
            }
            OK
        });
        wait_until("the child to own its latch", || {
            shared.ready().load(Ordering::Acquire) == 1
        });
        for round in 0..ROUNDS {
            // Release: pairs with the child's Acquire load.
            ball.fetch_add(1, Ordering::Release);
            pong.set();
            let code = wait_for_work(ping, ball, 2 * round + 2, &options);
            assert_eq!(code, OK, "round {round} with {options:?}");
        }
        assert_eq!(reap(child), OK);
        assert_eq!(ball.load(Ordering::Acquire), 2 * ROUNDS);
    }
}

#[test]
fn a_child_may_not_wait_on_its_parents_latch() {
    let shared = Shared::new();
    let latch = shared.a();
    latch.own().unwrap();
    let parent = std::process::id();
    let child = fork_child(|| match latch.wait(None) {
        Err(latch::LatchError::NotOwner {
            owner: Some(owner),
            caller,
        }) if owner == parent && caller != parent => OK,
        _ => WRONG_WAKE,
    });
    assert_eq!(reap(child), OK);
}
