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
use proclist::freelist::Head;
use proclist::{FreeList, PopHint, Popped};
use shmem::loom_model::{Reached, explore};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};

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

    /// As `take`, predicting the list from `hint`; also returns the head
    /// word the pop left, the guess for the push that gives the slot back.
    fn take_hinted(&self, me: u32, hint: PopHint) -> Option<(u32, u64)> {
        match self.list().pop_hinted(hint).expect("list is consistent") {
            Popped::Slot { index, head } => {
                // Relaxed: as in take().
                let prev = self.owner[index as usize].swap(me, Ordering::Relaxed);
                assert_eq!(prev, 0, "slot {index} given to {me} while {prev} owns it");
                Some((index, head))
            }
            Popped::Empty(_) => None,
        }
    }

    /// As `give_back`, guessing the head to be `guess`; returns the hint
    /// for the next pop.
    fn give_back_hinted(&self, i: u32, guess: u64) -> PopHint {
        // Relaxed: as in give_back().
        self.owner[i as usize].swap(0, Ordering::Relaxed);
        self.list()
            .push_hinted(i, guess)
            .expect("own slot is in range")
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

/// The racer of the ABA scenes: takes two slots, gives the first back,
/// then the second; with `rewind_tag`, puts the tag its first pop saw back
/// into the head between the two (see `aba_scene`). Returns what it took.
fn spawn_racer(
    slots: &Arc<Slots>,
    rewind_tag: bool,
) -> thread::JoinHandle<(Option<u32>, Option<u32>)> {
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
            // Relaxed: the rewind publishes nothing new (the push before it
            // did); a CAS, not a store, so loom orders it correctly against
            // the stalled CAS (tokio-rs/loom#254).
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
    let racer = spawn_racer(&slots, rewind_tag);
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

/// Process 1 of the hinted models: takes a slot, gives it back and takes
/// one again, each step predicted from the one before (the second pop from
/// the push's hint, each push from its pop's head), and gives that back.
/// Joins to the two slots it held, or `None` if a pop found the list empty.
fn spawn_hinted_cycle(slots: &Arc<Slots>) -> thread::JoinHandle<Option<(u32, u32)>> {
    let slots = slots.clone();
    thread::spawn(move || {
        let (first, head) = slots.take_hinted(1, PopHint::NONE)?;
        let hint = slots.give_back_hinted(first, head);
        let (second, head) = slots.take_hinted(1, hint)?;
        slots.give_back_hinted(second, head);
        Some((first, second))
    })
}

/// Hinted pops and pushes (see the free list's docs): process 1 runs
/// [`spawn_hinted_cycle`]; another takes and gives back two. A hint only predicts
/// values that are then compared with shared memory, so whoever changes
/// the list in between must only make the prediction miss: no slot is
/// handed out twice, none is lost.
#[test]
fn freelist_hinted_operations_conserve_slots() {
    explore(
        &[
            "the hinted pop took back the slot just given back",
            "another process moved the list between the push and the hinted pop",
        ],
        |reached| {
            let slots = Slots::new(2);
            let hinted = spawn_hinted_cycle(&slots);
            let other = {
                let slots = slots.clone();
                thread::spawn(move || {
                    let a = slots.take(2);
                    let b = slots.take(2);
                    for i in [a, b].into_iter().flatten() {
                        slots.give_back(i);
                    }
                })
            };
            let got = hinted.join().unwrap();
            other.join().unwrap();
            slots.assert_conserved();
            match got {
                Some((first, second)) if first == second => {
                    reached.note("the hinted pop took back the slot just given back")
                }
                Some(_) => reached
                    .note("another process moved the list between the push and the hinted pop"),
                None => {}
            }
        },
    );
}

/// The ABA scene for a hinted pop: the hinted process gives its slot back
/// (hint: that slot on top, the other below it) and its hinted pop checks
/// head and link, then stalls before the CAS; the racer pops both slots
/// and pushes the first back. The head shows the hinted top again, but
/// with another tag, so the CAS, made with the hint's word, must fail.
/// With `rewind_tag` the racer restores the tag its first pop saw, as in
/// `aba_scene`, and the model must fail.
fn hinted_aba_scene(reached: &Reached, rewind_tag: bool) {
    let slots = Slots::new(2);
    let hinted = spawn_hinted_cycle(&slots);
    let racer = spawn_racer(&slots, rewind_tag);
    let got = hinted.join().unwrap().map(|(_, second)| second);
    let (a, _) = racer.join().unwrap();
    slots.assert_conserved();
    if got.is_some() && got == a {
        reached.note("the hinted process took the slot the racer gave back");
    }
}

#[test]
fn freelist_hinted_aba_does_not_hand_out_an_owned_slot() {
    explore(
        &["the hinted process took the slot the racer gave back"],
        |reached| hinted_aba_scene(reached, false),
    );
}

/// Shows that the hinted model reaches the ABA interleaving: with a tag
/// that wrapped, the hint's word matches again and an owned slot is handed
/// out.
#[test]
#[should_panic(expected = "slot")]
fn freelist_hinted_aba_model_catches_a_head_without_a_working_tag() {
    let reached = Reached::default();
    loom::model(move || hinted_aba_scene(&reached, true));
}
