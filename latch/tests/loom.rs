//! loom models of the latch protocol (see the crate docs).
//!
//! Threads stand in for processes. Under `--cfg loom` the futex is a loom
//! `Mutex` + `Condvar` (see `latch::futex`), so a wake-up the protocol
//! forgets leaves a modelled thread asleep forever and loom reports a
//! deadlock; a wait with a deadline "times out" right after its
//! compare, so timeouts interleave with every set.
//!
//! The owner and every setter are spawned threads; the main thread only
//! sets up before the first spawn, joins, and checks. In loom 0.7 a main
//! thread that races a spawned one on an atomic may be explored in a
//! single interleaving (tokio-rs/loom#392), so a model whose owner loop
//! ran on the main thread could pass without ever putting the owner to
//! sleep before a set. Each model therefore names the interleavings it must
//! reach and fails if no iteration reached one. Which way a set met the
//! owner is read by the setter just before its `set` with
//! [`Latch::has_sleeper`]: only `set`'s own swap clears an announced
//! `SLEEPING` in these models (their owners leave a wait without a
//! deadline only through a set), so a setter that sees it is the one whose
//! `set` must wake the owner.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p latch --release --test loom`
#![cfg(loom)]

use std::time::{Duration, Instant};

use latch::{Latch, SpinPolicy, WaitOptions, Wake};
use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::{Reached, explore};
use shmem::sync::{AtomicU32, Ordering};

/// The owner found its work at the first check and never waited.
const NO_WAIT: &str = "the owner saw the work without waiting";
/// The owner waited, but the set came before it announced `SLEEPING`.
const SET_BEFORE_SLEEP: &str = "the owner waited and the set came before its announcement";
/// The owner had announced `SLEEPING` when the set came: the set's wake is
/// what got it out.
const SET_FOUND_SLEEPER: &str = "a set found the owner announced asleep";

/// A deadline far enough away that only the model's timeout can reach it.
fn far() -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(3600))
}

struct Scene {
    latch: Latch,
    /// The "work": published by setters, checked by the owner. Accessed
    /// Relaxed on purpose, so the latch's own orderings must carry it.
    work: AtomicU32,
}

fn scene() -> Arc<Scene> {
    let scene = Arc::new(Scene {
        latch: Latch::new(),
        work: AtomicU32::new(0),
    });
    // Before any spawn; modelled threads share one pid, so this makes
    // every one of them the owner.
    scene.latch.own().expect("own");
    scene
}

/// A setter: publish one unit of work, then set. Returns whether the owner
/// had announced `SLEEPING` just before the set.
fn setter(scene: &Arc<Scene>) -> thread::JoinHandle<bool> {
    let scene = scene.clone();
    thread::spawn(move || {
        // Relaxed: published by the Release swap inside set().
        scene.work.fetch_add(1, Ordering::Relaxed);
        let sleeper = scene.latch.has_sleeper();
        scene.latch.set();
        sleeper
    })
}

/// The owner's loop from the crate docs, without a deadline, until it has
/// seen `target` units of work; returns how many times it waited. A lost
/// wake-up is a loom deadlock here.
fn owner_loop(scene: &Scene, target: u32, options: &WaitOptions) -> u32 {
    let mut waits = 0;
    loop {
        scene.latch.reset();
        // Relaxed: the Acquire in reset/wait must be what makes it visible.
        if scene.work.load(Ordering::Relaxed) == target {
            return waits;
        }
        assert_eq!(
            scene.latch.wait_with(None, options).expect("wait"),
            Wake::Set
        );
        waits += 1;
    }
}

/// The owner's loop on its own thread.
fn owner(scene: &Arc<Scene>, target: u32, options: WaitOptions) -> thread::JoinHandle<u32> {
    let scene = scene.clone();
    thread::spawn(move || owner_loop(&scene, target, &options))
}

/// Which of the three ways the owner and the setters met.
fn note_meeting(reached: &Reached, waits: u32, sleepers_seen: &[bool]) {
    reached.note(if sleepers_seen.contains(&true) {
        SET_FOUND_SLEEPER
    } else if waits > 0 {
        SET_BEFORE_SLEEP
    } else {
        NO_WAIT
    });
}

#[test]
fn publish_then_set_vs_reset_check_wait_loses_no_wakeup() {
    explore(&[NO_WAIT, SET_BEFORE_SLEEP, SET_FOUND_SLEEPER], |reached| {
        let scene = scene();
        let setter = setter(&scene);
        let owner = owner(&scene, 1, WaitOptions::no_spin());
        let sleeper = setter.join().expect("setter");
        let waits = owner.join().expect("owner");
        assert!(!scene.latch.has_sleeper());
        note_meeting(reached, waits, &[sleeper]);
    });
}

#[test]
fn two_setters_both_get_their_work_seen() {
    explore(&[NO_WAIT, SET_BEFORE_SLEEP, SET_FOUND_SLEEPER], |reached| {
        let scene = scene();
        let first = setter(&scene);
        let second = setter(&scene);
        let owner = owner(&scene, 2, WaitOptions::no_spin());
        let sleepers = [
            first.join().expect("setter"),
            second.join().expect("setter"),
        ];
        let waits = owner.join().expect("owner");
        assert!(!scene.latch.has_sleeper());
        note_meeting(reached, waits, &sleepers);
    });
}

#[test]
fn a_timeout_racing_a_set_leaves_a_consistent_latch() {
    explore(
        &[
            "the wait reported the set",
            "the wait timed out",
            SET_FOUND_SLEEPER,
        ],
        |reached| {
            let scene = scene();
            let setter = setter(&scene);
            let waiter = {
                let scene = scene.clone();
                thread::spawn(move || {
                    let wake = scene
                        .latch
                        .wait_with(far(), &WaitOptions::no_spin())
                        .expect("wait");
                    // Relaxed: ordered by the Acquire in wait when it
                    // reports Set.
                    let work = scene.work.load(Ordering::Relaxed);
                    match wake {
                        // A set reported by the wait carries its work.
                        Wake::Set => assert_eq!(work, 1),
                        Wake::Timeout => {}
                        Wake::PostmasterDied => panic!("no postmaster in a model"),
                    }
                    wake
                })
            };
            // Here the owner may also withdraw SLEEPING (on timeout), so a
            // sleeper seen by the setter was announced, not necessarily
            // still asleep: exactly the race this model is about.
            let sleeper = setter.join().expect("setter");
            let wake = waiter.join().expect("waiter");
            reached.note(match wake {
                Wake::Set => "the wait reported the set",
                _ => "the wait timed out",
            });
            if sleeper {
                reached.note(SET_FOUND_SLEEPER);
            }
            // Whichever won, the set is not lost and no stale SLEEPING bit
            // would make the next set pay for a futex wake.
            assert!(scene.latch.is_set());
            assert!(!scene.latch.has_sleeper());
            assert_eq!(scene.latch.wait(None).expect("wait"), Wake::Set);
        },
    );
}

#[test]
fn spin_then_sleep_loses_no_wakeup() {
    explore(&[NO_WAIT, SET_BEFORE_SLEEP, SET_FOUND_SLEEPER], |reached| {
        let scene = scene();
        let setter = setter(&scene);
        let spin = WaitOptions::default().spin(SpinPolicy::Fixed(Duration::from_micros(1)));
        let owner = owner(&scene, 1, spin);
        let sleeper = setter.join().expect("setter");
        let waits = owner.join().expect("owner");
        assert!(!scene.latch.has_sleeper());
        note_meeting(reached, waits, &[sleeper]);
    });
}

#[test]
fn adaptive_spin_then_sleep_loses_no_wakeup() {
    explore(&[NO_WAIT, SET_BEFORE_SLEEP, SET_FOUND_SLEEPER], |reached| {
        let scene = scene();
        let setter = setter(&scene);
        let owner = owner(&scene, 1, WaitOptions::default());
        let sleeper = setter.join().expect("setter");
        let waits = owner.join().expect("owner");
        assert!(!scene.latch.has_sleeper());
        note_meeting(reached, waits, &[sleeper]);
    });
}
