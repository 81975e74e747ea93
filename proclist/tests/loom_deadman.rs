//! loom models of the dead-man switch: what the postmaster learns from a
//! worker's proc slot after reaping it.
//!
//! The protocol (see `proclist::array`): the postmaster `assign`s a slot
//! before forking and keeps the handle privately; the child `activate`s it
//! (from here on its death counts as dirty), changes shared state inside
//! critical sections, and `mark_exiting`s after all its cleanup; the
//! postmaster, after `waitpid`, calls `release_assigned` with its own copy
//! of the handle. [`Released::clean`] must say "shared state is
//! consistent" exactly when the child never started, or finished its
//! cleanup outside every critical section; and the slot must go back to
//! the free list exactly once, whatever the child did.
//!
//! Threads stand in for processes, `join` for `waitpid`, and a child
//! "dies" by returning early: a *killer* thread raises a flag that the
//! child looks at before each step, so the point of death is an
//! interleaving that loom chooses, not a parameter. Every role is its own
//! spawned thread and the main thread only joins (in loom 0.7 a main thread
//! racing a spawned one on an atomic may be explored in one interleaving
//! only, tokio-rs/loom#392), and each test checks afterwards that every
//! point of death was actually reached.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom_deadman`
#![cfg(loom)]

use std::collections::BTreeSet;
use std::sync::Mutex;

use loom::sync::Arc;
use loom::thread;
use proclist::array::FreeListHead;
use proclist::{Kind, ProcArray, ProcArrayConfig, ProcArrayError, ProcSlot, Released};
use shmem::sync::{AtomicU32, Ordering};

/// Two worker slots, so that a slot pushed twice, or lost, shows up when
/// the free list is drained; one backend slot that nobody uses.
const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 2,
    backends: 1,
};

/// How far the child got. It stores each value after finishing the step,
/// so the last value stored is where it stopped.
mod progress {
    /// Killed before `activate`: the slot is still only assigned.
    pub const NOT_ACTIVATED: u32 = 0;
    /// Activated, and did some work outside any critical section.
    pub const WORKING: u32 = 1;
    /// Entered a critical section, changed nothing yet.
    pub const IN_CRITICAL: u32 = 2;
    /// Inside the critical section, half of a two-part change made.
    pub const HALF_CHANGED: u32 = 3;
    /// Both parts changed and the critical section left.
    pub const LEFT_CRITICAL: u32 = 4;
    /// `mark_exiting` done: the whole script ran.
    pub const EXITED: u32 = 5;
    /// Every value, for the reachability check.
    pub const ALL: [u32; 6] = [
        NOT_ACTIVATED,
        WORKING,
        IN_CRITICAL,
        HALF_CHANGED,
        LEFT_CRITICAL,
        EXITED,
    ];
}

/// The proc array on the heap, the shared state the child changes, and the
/// kill flag.
struct World {
    slots: Vec<ProcSlot>,
    links: Vec<AtomicU32>,
    heads: Vec<FreeListHead>,
    /// The two halves of one logical change: equal whenever shared state
    /// is consistent. Only the child writes them, inside its critical
    /// section.
    half_a: AtomicU32,
    half_b: AtomicU32,
    /// A one-step change that needs no critical section.
    tally: AtomicU32,
    /// 1 once the killer struck; the child stops at its next look.
    killed: AtomicU32,
    /// See [`progress`].
    progress: AtomicU32,
}

impl World {
    fn new() -> Arc<Self> {
        let total = CONFIG.total() as usize;
        let world = Arc::new(World {
            slots: (0..total).map(|_| ProcSlot::default()).collect(),
            links: (0..total).map(|_| AtomicU32::new(0)).collect(),
            heads: Kind::ALL.iter().map(|_| FreeListHead::default()).collect(),
            half_a: AtomicU32::new(0),
            half_b: AtomicU32::new(0),
            tally: AtomicU32::new(0),
            killed: AtomicU32::new(0),
            progress: AtomicU32::new(progress::NOT_ACTIVATED),
        });
        world.procs().fill_free_lists();
        world
    }

    fn procs(&self) -> ProcArray<'_> {
        ProcArray::from_parts(&self.slots, &self.links, &self.heads, CONFIG).expect("storage fits")
    }

    /// The child's check before each step: has the killer struck?
    fn dead(&self) -> bool {
        // Relaxed: a kill needs no ordering; dying "a little later" is
        // just another interleaving.
        self.killed.load(Ordering::Relaxed) != 0
    }

    fn reached(&self, step: u32) {
        // Relaxed: read by the postmaster after join, which orders it.
        self.progress.store(step, Ordering::Relaxed);
    }

    /// Drains the worker free list by assigning until none is left: every
    /// worker slot must come out exactly once.
    fn assert_every_worker_slot_free_once(&self) {
        let procs = self.procs();
        let mut seen = BTreeSet::new();
        for _ in 0..=CONFIG.workers {
            match procs.assign(Kind::Worker, 0) {
                Ok(handle) => assert!(
                    seen.insert(handle.index),
                    "slot {} came off the free list twice",
                    handle.index
                ),
                Err(ProcArrayError::NoFreeSlot { .. }) => break,
                Err(e) => panic!("free list corrupt: {e}"),
            }
        }
        let all: BTreeSet<u32> = (0..CONFIG.workers).collect();
        assert_eq!(seen, all, "a worker slot was lost");
    }
}

/// The child's script: activate, work, a two-part change inside a critical
/// section, then `mark_exiting` — after leaving the critical section, or,
/// with `exit_inside_critical`, while still in it (a worker that exits
/// holding a critical section it forgot to leave). It stops at the first
/// look that finds the kill flag raised.
fn child(world: &World, handle: proclist::SlotHandle, exit_inside_critical: bool) {
    let procs = world.procs();
    if world.dead() {
        return;
    }
    let slot = procs.activate(handle).expect("the assigned slot is ours");
    // Work that needs no critical section: one atomic step.
    // Relaxed: the postmaster reads shared state after join.
    world.tally.fetch_add(1, Ordering::Relaxed);
    world.reached(progress::WORKING);
    if world.dead() {
        return;
    }
    slot.enter_critical();
    world.reached(progress::IN_CRITICAL);
    if world.dead() {
        return;
    }
    // Relaxed: as above; the critical section, not the ordering, is what
    // tells the postmaster whether both halves happened.
    world.half_a.fetch_add(1, Ordering::Relaxed);
    world.reached(progress::HALF_CHANGED);
    if world.dead() {
        return;
    }
    // Relaxed: as above.
    world.half_b.fetch_add(1, Ordering::Relaxed);
    if exit_inside_critical {
        procs.mark_exiting(handle).expect("our slot");
        world.reached(progress::EXITED);
        return;
    }
    slot.exit_critical();
    world.reached(progress::LEFT_CRITICAL);
    if world.dead() {
        return;
    }
    procs.mark_exiting(handle).expect("our slot");
    world.reached(progress::EXITED);
}

/// The postmaster's view of one outcome, checked after reaping.
fn check_release(world: &World, released: &Released, step: u32, exit_inside_critical: bool) {
    let finished_clean = step == progress::EXITED && !exit_inside_critical;
    let expect_clean = step == progress::NOT_ACTIVATED || finished_clean;
    assert_eq!(
        released.clean(),
        expect_clean,
        "the child stopped at step {step} (exit inside critical: {exit_inside_critical}); \
         the slot said {released:?}"
    );
    // Relaxed: after join. The model itself: work was done iff the child
    // got that far (an unprotected one-step change leaves nothing half
    // made, yet its death is still a crash: the slot was active).
    let tally = world.tally.load(Ordering::Relaxed);
    assert_eq!(tally, u32::from(step >= progress::WORKING));
    if released.clean() {
        // Relaxed: after join.
        let (a, b) = (
            world.half_a.load(Ordering::Relaxed),
            world.half_b.load(Ordering::Relaxed),
        );
        assert_eq!(a, b, "a clean death left a half-made change");
    }
}

/// Runs the scenario once per loom interleaving; returns the set of
/// (step reached, clean) outcomes seen across all of them.
fn explore(exit_inside_critical: bool) -> BTreeSet<(u32, bool)> {
    // Outside the model (a std Mutex that loom does not see), so it keeps
    // what every interleaving added; each test has its own.
    let outcomes = std::sync::Arc::new(Mutex::new(BTreeSet::new()));
    let record = outcomes.clone();
    loom::model(move || {
        let record = record.clone();
        let world = World::new();
        let postmaster = {
            let world = world.clone();
            thread::spawn(move || {
                let handle = world
                    .procs()
                    .assign(Kind::Worker, 7)
                    .expect("a free worker slot");
                // fork
                let forked = {
                    let world = world.clone();
                    thread::spawn(move || child(&world, handle, exit_inside_critical))
                };
                // waitpid
                forked.join().expect("the child thread");
                // Relaxed: after join.
                let step = world.progress.load(Ordering::Relaxed);
                let released = world
                    .procs()
                    .release_assigned(handle)
                    .expect("the postmaster's own handle releases");
                check_release(&world, &released, step, exit_inside_critical);
                // Released once: a second release through the same handle
                // finds the slot free and refuses.
                assert!(
                    world.procs().release_assigned(handle).is_err(),
                    "a slot was released twice"
                );
                world.assert_every_worker_slot_free_once();
                record
                    .lock()
                    .expect("unpoisoned")
                    .insert((step, released.clean()));
            })
        };
        let killer = {
            let world = world.clone();
            thread::spawn(move || {
                // Relaxed: see World::dead.
                world.killed.store(1, Ordering::Relaxed);
            })
        };
        killer.join().expect("the killer thread");
        postmaster.join().expect("the postmaster thread");
    });
    outcomes.lock().expect("unpoisoned").clone()
}

#[test]
fn deadman_release_is_clean_iff_the_child_never_started_or_exited_outside_critical() {
    let outcomes = explore(false);
    let steps: BTreeSet<u32> = outcomes.iter().map(|&(s, _)| s).collect();
    // The script ends at EXITED; killed, it stops anywhere before.
    assert_eq!(
        steps,
        progress::ALL.into_iter().collect(),
        "loom did not reach every point of death: {outcomes:?}"
    );
    assert!(outcomes.contains(&(progress::EXITED, true)));
    assert!(outcomes.contains(&(progress::HALF_CHANGED, false)));
}

#[test]
fn deadman_exit_inside_a_critical_section_is_never_clean() {
    let outcomes = explore(true);
    let steps: BTreeSet<u32> = outcomes.iter().map(|&(s, _)| s).collect();
    // This script never reaches LEFT_CRITICAL.
    let expected: BTreeSet<u32> = progress::ALL
        .into_iter()
        .filter(|&s| s != progress::LEFT_CRITICAL)
        .collect();
    assert_eq!(
        steps, expected,
        "loom did not reach every point of death: {outcomes:?}"
    );
    assert!(outcomes.contains(&(progress::EXITED, false)));
    assert!(outcomes.contains(&(progress::NOT_ACTIVATED, true)));
}
