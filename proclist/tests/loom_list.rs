//! loom models of the lock, the index-linked list and the condition
//! variable. Threads stand in for processes, the views are built on the
//! heap over loom's atomics, and `latch::futex` is a loom Mutex + Condvar
//! under which a missing wake leaves a thread asleep forever, which loom
//! reports as a deadlock.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom_list`
#![cfg(loom)]

use std::time::{Duration, Instant};

use latch::Latch;
use loom::sync::Arc;
use loom::thread;
use proclist::{
    ConditionVariable, CvWake, ListHead, ListLink, ListNode, ProcList, ShmLock, WaitNode,
};
use shmem::sync::{AtomicU32, Ordering, UnsafeCell};

/// A list head and its nodes on the heap.
struct Nodes {
    head: ListHead,
    nodes: Vec<ListLink>,
}

impl Nodes {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            head: ListHead::new(),
            nodes: (0..n).map(|_| ListLink::new()).collect(),
        })
    }

    fn list(&self) -> ProcList<'_, ListLink> {
        ProcList::new(&self.head, &self.nodes)
    }

    /// Under the lock: the list is consistent both ways, and holds exactly
    /// the nodes `expect` says, each once.
    fn assert_holds(&self, expect: &[u32]) {
        let l = self.list().lock().expect("lock");
        let n = l.verify().expect("list is consistent");
        let walked: Vec<u32> = l.iter().map(|r| r.expect("walk")).collect();
        assert_eq!(n as usize, walked.len());
        let mut sorted = walked.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            walked.len(),
            "a node is listed twice: {walked:?}"
        );
        let mut want = expect.to_vec();
        want.sort_unstable();
        assert_eq!(sorted, want);
    }
}

/// Two threads each increment a plain (non-atomic) counter under the lock,
/// a third takes the lock too, so one of them sleeps on the futex and must
/// be woken; loom's UnsafeCell reports any overlapping access, and a lost
/// wake-up shows as a deadlock.
#[test]
fn lock_excludes_and_wakes_three_threads() {
    loom::model(|| {
        let lock = Arc::new(ShmLock::new());
        let counter = Arc::new(UnsafeCell::new(0u32));
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                thread::spawn(move || {
                    let _g = lock.lock().expect("lock");
                    // SAFETY: the lock is held, so no other thread accesses
                    // the counter now; loom checks exactly that.
                    counter.with_mut(|c| unsafe { *c += 1 });
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        let _g = lock.lock().expect("lock");
        // SAFETY: every other thread has been joined.
        assert_eq!(counter.with(|c| unsafe { *c }), 3);
        assert!(lock.holder().is_some());
    });
}

/// try_lock never enters while another thread holds the lock.
#[test]
fn try_lock_excludes() {
    loom::model(|| {
        let lock = Arc::new(ShmLock::new());
        let counter = Arc::new(UnsafeCell::new(0u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                thread::spawn(move || {
                    if let Some(_g) = lock.try_lock().expect("lock word is valid") {
                        // SAFETY: the lock is held.
                        counter.with_mut(|c| unsafe { *c += 1 });
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        assert!(!lock.is_locked());
    });
}

/// Three threads each push their node (two at the tail, one at the head),
/// then one removes its node again: the list stays consistent (forward and
/// backward walks agree, each node at most once) and ends up holding the
/// other two.
#[test]
fn list_push_and_remove_by_three_threads() {
    loom::model(|| {
        let nodes = Nodes::new(3);
        let handles: Vec<_> = (0..3u32)
            .map(|me| {
                let nodes = nodes.clone();
                thread::spawn(move || {
                    let list = nodes.list();
                    {
                        let l = list.lock().expect("lock");
                        if me == 1 {
                            l.push_head(me).expect("push");
                        } else {
                            l.push_tail(me).expect("push");
                        }
                    }
                    if me == 2 {
                        let l = list.lock().expect("lock");
                        assert!(l.remove(me).expect("remove"), "my node vanished");
                        assert!(!l.contains(me).expect("contains"));
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        nodes.assert_holds(&[0, 1]);
    });
}

/// One thread pushes two nodes, another pops the head, a third removes a
/// node that may or may not be listed yet: every pop and remove agrees with
/// what is left.
#[test]
fn list_pop_and_remove_race_pushes() {
    loom::model(|| {
        let nodes = Nodes::new(2);
        let pusher = {
            let nodes = nodes.clone();
            thread::spawn(move || {
                let list = nodes.list();
                list.lock().expect("lock").push_tail(0).expect("push");
                list.lock().expect("lock").push_tail(1).expect("push");
            })
        };
        let popper = {
            let nodes = nodes.clone();
            thread::spawn(move || nodes.list().lock().expect("lock").pop_head().expect("pop"))
        };
        let remover = {
            let nodes = nodes.clone();
            thread::spawn(move || {
                nodes
                    .list()
                    .lock()
                    .expect("lock")
                    .remove(1)
                    .expect("remove")
            })
        };
        pusher.join().expect("thread");
        let popped = popper.join().expect("thread");
        let removed = remover.join().expect("thread");
        let mut left = vec![0, 1];
        if let Some(i) = popped {
            left.retain(|&n| n != i);
        }
        if removed {
            assert_ne!(popped, Some(1), "node 1 was taken off twice");
            left.retain(|&n| n != 1);
        }
        nodes.assert_holds(&left);
    });
}

/// A slot as the condition variable sees it: a link and the latch of the
/// process (here: thread) that owns it.
struct Slot {
    link: ListLink,
    latch: Latch,
}

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

/// A condition variable, its slots, and a condition: `tokens`, accessed
/// Relaxed on purpose, so the variable's own orderings must carry it.
struct Scene {
    cv: ConditionVariable,
    slots: Vec<Slot>,
    tokens: AtomicU32,
}

impl Scene {
    fn new(slots: usize) -> Arc<Self> {
        let scene = Arc::new(Self {
            cv: ConditionVariable::new(),
            slots: (0..slots)
                .map(|_| Slot {
                    link: ListLink::new(),
                    latch: Latch::new(),
                })
                .collect(),
            tokens: AtomicU32::new(0),
        });
        for slot in &scene.slots {
            // Modelled threads share one pid, so one own() covers them all.
            slot.latch.own().expect("own");
        }
        scene
    }

    /// Publishes one token, then signals (the signaller's side).
    fn give(&self) -> Option<u32> {
        // Relaxed: the variable's lock and the latch must order it.
        self.tokens.fetch_add(1, Ordering::Relaxed);
        self.cv.signal(&self.slots).expect("signal")
    }

    /// Takes a token if there is one (the condition).
    fn take(&self) -> bool {
        // Relaxed: as in give().
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1))
            .is_ok()
    }

    /// The waiter's loop: prepare, check, sleep, check again, until it has
    /// a token. No deadline: a lost signal is a loom deadlock.
    fn wait_for_token(&self, me: u32) {
        let wait = self.cv.prepare(me, &self.slots).expect("prepare");
        while !self.take() {
            let why = wait.sleep(None).expect("sleep");
            assert!(
                matches!(why, CvWake::Signaled | CvWake::LatchSet),
                "{why:?}"
            );
        }
    }

    fn assert_nobody_waits(&self) {
        for i in 0..self.slots.len() as u32 {
            assert!(!self.cv.is_waiting(i, &self.slots).expect("check"));
        }
        assert_eq!(self.cv.signal(&self.slots).expect("signal"), None);
    }
}

/// A signal after the waiter's prepare is never missed: whichever way the
/// signal and the waiter's check, reset and sleep interleave, the waiter
/// gets its token and leaves (a lost signal would be a loom deadlock).
#[test]
fn cv_signal_after_prepare_is_never_missed() {
    loom::model(|| {
        let scene = Scene::new(1);
        let signaller = {
            let scene = scene.clone();
            thread::spawn(move || scene.give())
        };
        scene.wait_for_token(0);
        signaller.join().expect("thread");
        scene.assert_nobody_waits();
    });
}

/// Two waiters, two tokens, one signal per token: both get a token. A
/// waiter that takes a token while a signal meant for the other takes it
/// off the list must pass that signal on: W1 is signalled and re-enqueues
/// behind W0, W0 takes the first token without sleeping, the second signal
/// takes W0 off, and only W0's cancel can wake W1 again.
///
/// That interleaving needs three preemptions, so this model runs with at
/// least three whatever `LOOM_MAX_PREEMPTIONS` says (about a minute in
/// release mode here); with two, a cancel that drops the signal passes.
#[test]
fn cv_two_waiters_one_signal_each() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(3, |n| n.max(3)));
    builder.check(|| {
        let scene = Scene::new(2);
        let waiter = {
            let scene = scene.clone();
            thread::spawn(move || scene.wait_for_token(1))
        };
        let signaller = {
            let scene = scene.clone();
            thread::spawn(move || {
                scene.give();
                scene.give();
            })
        };
        scene.wait_for_token(0);
        waiter.join().expect("thread");
        signaller.join().expect("thread");
        scene.assert_nobody_waits();
    });
}

/// A waiter whose deadline passes takes itself off the list, unless a
/// signal took it off first, in which case it reports the signal: exactly
/// one of the two, and the list is empty at the end either way.
#[test]
fn cv_timed_out_waiter_leaves_the_list() {
    loom::model(|| {
        let scene = Scene::new(1);
        let signaller = {
            let scene = scene.clone();
            thread::spawn(move || scene.cv.signal(&scene.slots).expect("signal"))
        };
        let why = {
            let wait = scene.cv.prepare(0, &scene.slots).expect("prepare");
            // Under loom a wait with a deadline times out right after its
            // check, so this deadline is only ever reached by the model.
            let far = Instant::now() + Duration::from_secs(3600);
            let why = wait.sleep(Some(far)).expect("sleep");
            let listed = scene.cv.is_waiting(0, &scene.slots).expect("check");
            // Timed out: off the list. Signalled: back on it, until dropped.
            assert_eq!(listed, why == CvWake::Signaled, "{why:?}");
            why
        };
        let signalled = signaller.join().expect("thread");
        match why {
            CvWake::Timeout => assert_eq!(signalled, None),
            CvWake::Signaled => assert_eq!(signalled, Some(0)),
            other => panic!("unexpected {other:?}"),
        }
        scene.assert_nobody_waits();
    });
}
