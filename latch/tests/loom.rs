//! loom models of the latch protocol (see the crate docs).
//!
//! Threads stand in for processes. Under `--cfg loom` the futex is a loom
//! `Mutex` + `Condvar` (see `latch::futex`), so a wake-up the protocol
//! forgets leaves a modelled thread asleep forever and loom reports a
//! deadlock; a wait with a deadline "times out" right after its
//! compare, so timeouts interleave with every set.
//!
//! Run with:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p latch --release --test loom`
#![cfg(loom)]

use std::time::{Duration, Instant};

use latch::{Latch, SpinPolicy, WaitOptions, Wake};
use loom::sync::Arc;
use loom::thread;
use shmem::sync::{AtomicU32, Ordering};

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
    scene.latch.own().expect("own");
    scene
}

/// A setter: publish one unit of work, then set.
fn setter(scene: &Arc<Scene>) -> thread::JoinHandle<()> {
    let scene = scene.clone();
    thread::spawn(move || {
        // Relaxed: published by the Release swap inside set().
        scene.work.fetch_add(1, Ordering::Relaxed);
        scene.latch.set();
    })
}

/// The owner's loop from the crate docs, without a deadline, until it has
/// seen `target` units of work. A lost wake-up is a loom deadlock here.
fn owner_loop(scene: &Scene, target: u32, options: &WaitOptions) {
    loop {
        scene.latch.reset();
        // Relaxed: the Acquire in reset/wait must be what makes it visible.
        if scene.work.load(Ordering::Relaxed) == target {
            return;
        }
        assert_eq!(
            scene.latch.wait_with(None, options).expect("wait"),
            Wake::Set
        );
    }
}

#[test]
fn publish_then_set_vs_reset_check_wait_loses_no_wakeup() {
    loom::model(|| {
        let scene = scene();
        let setter = setter(&scene);
        owner_loop(&scene, 1, &WaitOptions::no_spin());
        setter.join().expect("setter");
        assert!(!scene.latch.has_sleeper());
    });
}

#[test]
fn two_setters_both_get_their_work_seen() {
    loom::model(|| {
        let scene = scene();
        let first = setter(&scene);
        let second = setter(&scene);
        owner_loop(&scene, 2, &WaitOptions::no_spin());
        first.join().expect("setter");
        second.join().expect("setter");
        assert!(!scene.latch.has_sleeper());
    });
}

#[test]
fn a_timeout_racing_a_set_leaves_a_consistent_latch() {
    loom::model(|| {
        let scene = scene();
        let setter = setter(&scene);
        let wake = scene
            .latch
            .wait_with(far(), &WaitOptions::no_spin())
            .expect("wait");
        // Relaxed: ordered by the Acquire in wait when it reports Set.
        let work = scene.work.load(Ordering::Relaxed);
        match wake {
            // A set reported by the wait carries its work with it.
            Wake::Set => assert_eq!(work, 1),
            Wake::Timeout => {}
            Wake::PostmasterDied => panic!("no postmaster in a model"),
        }
        setter.join().expect("setter");
        // Whichever won, the set is not lost and no stale SLEEPING bit
        // would make the next set pay for a futex wake.
        assert!(scene.latch.is_set());
        assert!(!scene.latch.has_sleeper());
        assert_eq!(scene.latch.wait(None).expect("wait"), Wake::Set);
    });
}

#[test]
fn spin_then_sleep_loses_no_wakeup() {
    loom::model(|| {
        let scene = scene();
        let setter = setter(&scene);
        let spin = WaitOptions::default().spin(SpinPolicy::Fixed(Duration::from_micros(1)));
        owner_loop(&scene, 1, &spin);
        setter.join().expect("setter");
        assert!(!scene.latch.has_sleeper());
    });
}

#[test]
fn adaptive_spin_then_sleep_loses_no_wakeup() {
    loom::model(|| {
        let scene = scene();
        let setter = setter(&scene);
        owner_loop(&scene, 1, &WaitOptions::default());
        setter.join().expect("setter");
    });
}
