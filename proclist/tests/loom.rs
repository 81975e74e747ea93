//! loom models of proclist's protocols. Threads stand in for processes and
//! the views are built on the heap over loom's atomics.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom`
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use proclist::FreeList;
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
        // Relaxed: detection only, as in take().
        self.owner[i as usize].store(0, Ordering::Relaxed);
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
    loom::model(|| {
        let slots = Slots::new(2);
        let handles: Vec<_> = (1..=3)
            .map(|me| {
                let slots = slots.clone();
                thread::spawn(move || {
                    if let Some(i) = slots.take(me) {
                        slots.give_back(i);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        slots.assert_conserved();
    });
}

/// The ABA interleaving: one process reads top 0 (below it 1) and stalls;
/// another pops 0 and 1 and pushes 0 back. The stalled CAS must fail, or
/// slot 1 would get a second owner (caught by `take`).
#[test]
fn freelist_aba_does_not_hand_out_an_owned_slot() {
    loom::model(|| {
        let slots = Slots::new(2);
        let stalled = {
            let slots = slots.clone();
            thread::spawn(move || {
                if let Some(i) = slots.take(1) {
                    slots.give_back(i);
                }
            })
        };
        let a = slots.take(2);
        let b = slots.take(2);
        if let Some(a) = a {
            slots.give_back(a);
        }
        stalled.join().unwrap();
        if let Some(b) = b {
            slots.give_back(b);
        }
        slots.assert_conserved();
    });
}
