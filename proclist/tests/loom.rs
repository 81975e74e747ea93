//! loom models of proclist's free list. Threads stand in for processes and
//! the views are built on the heap over loom's atomics.
//!
//! Every process is a spawned thread; the main thread only sets up before
//! the first spawn, joins, and checks. In loom 0.7 a main thread that
//! races a spawned one on an atomic the spawned thread loads before it
//! CASes (as `pop` does with the head) may be explored in a single
//! interleaving (tokio-rs/loom#392), so an ABA model whose racer ran on the
//! main thread could pass without ever stalling the popper across the
//! pop-pop-push. The ABA model is therefore checked twice: as is (it must
//! pass), and with the tag rewound after the racer's push, as if it had
//! wrapped (it must fail, which proves loom reaches the interleaving in
//! which only the tag saves the stalled CAS). Each model also names the
//! outcomes it must reach.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom`
#![cfg(loom)]

use std::collections::BTreeSet;

use loom::sync::Arc;
use loom::thread;
use proclist::FreeList;
use proclist::freelist::Head;
use shmem::sync::{AtomicU32, AtomicU64, Ordering};

/// Interleaving classes reached, gathered across loom's iterations in
/// plain (unmodelled) memory, so loom neither sees nor resets it.
#[derive(Clone, Default)]
struct Reached(std::sync::Arc<std::sync::Mutex<BTreeSet<&'static str>>>);

impl Reached {
    fn note(&self, class: &'static str) {
        self.0.lock().expect("not poisoned").insert(class);
    }
}

/// Runs `model` under loom, then checks that every class in `expected`
/// was reached by some iteration.
fn explore(expected: &[&'static str], model: impl Fn(&Reached) + Sync + Send + 'static) {
    let reached = Reached::default();
    let inside = reached.clone();
    loom::model(move || model(&inside));
    let reached = reached.0.lock().expect("not poisoned");
    for class in expected {
        assert!(
            reached.contains(class),
            "loom never reached `{class}` (only {reached:?}): the model is not exploring"
        );
    }
}

/// A free list's storage plus, per slot, who holds it (0 = nobody), so a
/// second simultaneous owner is caught the moment it appears.
struct Slots {
    head: AtomicU64,
    links: Vec<AtomicU32>,
    owner: Vec<AtomicU32>,
}

impl Slots {
    fn new(n: usize) -> Arc<Self> {
        let s = Arc::new(Self {
            head: AtomicU64::new(0),
            links: (0..n).map(|_| AtomicU32::new(0)).collect(),
            owner: (0..n).map(|_| AtomicU32::new(0)).collect(),
        });
        s.list().fill();
        s
    }

    fn list(&self) -> FreeList<'_> {
        FreeList::new(&self.head, &self.links)
    }

    fn take(&self, me: u32) -> Option<u32> {
        let i = self.list().pop().expect("list is consistent")?;
        // Relaxed: detection only; ownership is ordered by the list itself.
        let prev = self.owner[i as usize].swap(me, Ordering::Relaxed);
        assert_eq!(prev, 0, "slot {i} given to {me} while {prev} owns it");
        Some(i)
    }

    fn give_back(&self, i: u32) {
        // Relaxed: detection only, as in take(). A swap, not a store: with
        // a broken list (the rewound-tag model below) take()'s swap races
        // this, and loom 0.7 can misplace a plain store that races a
        // read-modify-write (tokio-rs/loom#254).
        self.owner[i as usize].swap(0, Ordering::Relaxed);
        self.list().push(i).expect("own slot is in range");
    }

    /// Every slot is on the list exactly once and nobody owns one.
    fn assert_conserved(&self) {
        let n = self.links.len();
        let mut seen = vec![false; n];
        while let Some(i) = self.list().pop().unwrap() {
            assert!(!seen[i as usize], "slot {i} is on the list twice");
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "a slot was lost: {seen:?}");
    }
}

#[test]
fn freelist_three_processes_conserve_slots() {
    explore(
        &[
            "a process found the list empty",
            "a slot passed from one process to another",
        ],
        |reached| {
            let slots = Slots::new(2);
            let handles: Vec<_> = (1..=3)
                .map(|me| {
                    let slots = slots.clone();
                    thread::spawn(move || {
                        let taken = slots.take(me);
                        if let Some(i) = taken {
                            slots.give_back(i);
                        }
                        taken
                    })
                })
                .collect();
            let taken: Vec<Option<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            if taken.contains(&None) {
                reached.note("a process found the list empty");
            }
            let distinct: BTreeSet<u32> = taken.iter().flatten().copied().collect();
            if distinct.len() < taken.iter().flatten().count() {
                reached.note("a slot passed from one process to another");
            }
            slots.assert_conserved();
        },
    );
}

/// The ABA scene: a *stalled* process takes one slot (and gives it back);
/// a *racer* takes two and gives the first back. The interleaving that
/// matters: the stalled pop reads top 0 (below it 1) and stalls; the racer
/// pops 0 and 1 and pushes 0 back. The head shows top 0 again, but 1 is
/// owned: the stalled CAS must fail, or slot 1 would get a second owner
/// (caught by `take`, or later as a slot listed twice).
///
/// With `rewind_tag`, the racer puts the tag its first pop saw back into
/// the head after its push (a CAS that keeps the top): what a tag that
/// wrapped would look like. The stalled CAS then succeeds, and the model
/// must fail.
fn aba_scene(reached: &Reached, rewind_tag: bool) {
    let slots = Slots::new(2);
    let stalled = {
        let slots = slots.clone();
        thread::spawn(move || {
            let taken = slots.take(1);
            if let Some(i) = taken {
                slots.give_back(i);
            }
            taken
        })
    };
    let racer = {
        let slots = slots.clone();
        thread::spawn(move || {
            // Relaxed: only the tag is used, to rewind it; nothing is read
            // through this value.
            let first = rewind_tag.then(|| Head::decode(slots.head.load(Ordering::Relaxed)));
            let a = slots.take(2);
            let b = slots.take(2);
            if let Some(a) = a {
                slots.give_back(a);
            }
            if let Some(first) = first {
                // Relaxed: the rewind publishes nothing new (the push
                // before it did); a CAS, not a store, so loom orders it
                // correctly against the stalled CAS (tokio-rs/loom#254).
                let now = slots.head.load(Ordering::Relaxed);
                let rewound = Head {
                    tag: first.tag,
                    top: Head::decode(now).top,
                };
                let _ = slots.head.compare_exchange(
                    now,
                    rewound.encode(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            if let Some(b) = b {
                slots.give_back(b);
            }
            (a, b)
        })
    };
    let got = stalled.join().unwrap();
    let (a, b) = racer.join().unwrap();
    slots.assert_conserved();
    reached.note(match (got, a, b) {
        (None, ..) => "the stalled process found the list empty",
        (Some(s), Some(a), _) if s == a => "the stalled process took the slot the racer gave back",
        _ => "the stalled process took its slot before the racer",
    });
}

#[test]
fn freelist_aba_does_not_hand_out_an_owned_slot() {
    explore(
        &[
            "the stalled process found the list empty",
            "the stalled process took the slot the racer gave back",
            "the stalled process took its slot before the racer",
        ],
        |reached| aba_scene(reached, false),
    );
}

/// Shows that the model above reaches the ABA interleaving: without the
/// tag's protection the same scene hands out an owned slot.
#[test]
#[should_panic(expected = "slot 1")]
fn freelist_aba_model_catches_a_head_without_a_working_tag() {
    let reached = Reached::default();
    loom::model(move || aba_scene(&reached, true));
}
