//! loom models of the lock, the index-linked list and the condition
//! variable. Threads stand in for processes, the views are built on the
//! heap over loom's atomics, and `latch::futex` is a loom Mutex + Condvar
//! under which a missing wake leaves a thread asleep forever, which loom
//! reports as a deadlock.
//!
//! Every process is a spawned thread; the main thread only sets up before
//! the first spawn, joins, and checks. In loom 0.7 a main thread that
//! races a spawned one on an atomic may be explored in a single
//! interleaving (tokio-rs/loom#392), so a waiter running on the main thread
//! could pass without ever having slept before its signal. Each model also
//! names the interleavings it must reach (a waiter asleep before the
//! signal, a signal passed on by a leaving waiter, ...) and fails if no
//! iteration reached one.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom_list`
//! (add `-- --include-ignored` for the deep two-waiter model, about two
//! minutes of CPU).
#![cfg(loom)]

use std::time::{Duration, Instant};

use latch::Latch;
use loom::sync::Arc;
use loom::thread;
use proclist::{
    ConditionVariable, CvWait, CvWake, ListHead, ListLink, ListNode, ProcList, ShmLock, WaitNode,
};
use shmem::loom_model::{Reached, explore, explore_with};
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

/// Three threads each increment a plain (non-atomic) counter under the
/// lock, so one of them may sleep on the futex and must be woken; loom's
/// UnsafeCell reports any overlapping access, and a lost wake-up shows as
/// a deadlock. The third thread probes with `try_lock` first, so the model
/// can tell that it found the lock held at least once.
#[test]
fn lock_excludes_and_wakes_three_threads() {
    explore(
        &[
            "the prober found the lock held",
            "the prober took the lock at once",
        ],
        |reached| {
            let lock = Arc::new(ShmLock::new());
            let counter = Arc::new(UnsafeCell::new(0u32));
            let handles: Vec<_> = (0..3)
                .map(|me| {
                    let (lock, counter) = (lock.clone(), counter.clone());
                    thread::spawn(move || {
                        let probed = if me == 2 {
                            Some(lock.try_lock().expect("lock word is valid"))
                        } else {
                            None
                        };
                        let held = probed.as_ref().is_some_and(Option::is_none);
                        let _g = match probed {
                            Some(Some(g)) => g,
                            _ => lock.lock().expect("lock"),
                        };
                        // SAFETY: the lock is held, so no other thread
                        // accesses the counter now; loom checks exactly that.
                        counter.with_mut(|c| unsafe { *c += 1 });
                        (me == 2).then_some(held)
                    })
                })
                .collect();
            for h in handles {
                match h.join().expect("thread") {
                    Some(true) => reached.note("the prober found the lock held"),
                    Some(false) => reached.note("the prober took the lock at once"),
                    None => {}
                }
            }
            let _g = lock.lock().expect("lock");
            // SAFETY: every other thread has been joined.
            assert_eq!(counter.with(|c| unsafe { *c }), 3);
            assert!(lock.holder().is_some());
        },
    );
}

/// try_lock never enters while another thread holds the lock.
#[test]
fn try_lock_excludes() {
    explore(
        &["one try found the lock held", "both tries took the lock"],
        |reached| {
            let lock = Arc::new(ShmLock::new());
            let counter = Arc::new(UnsafeCell::new(0u32));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (lock, counter) = (lock.clone(), counter.clone());
                    thread::spawn(move || {
                        if let Some(_g) = lock.try_lock().expect("lock word is valid") {
                            // SAFETY: the lock is held.
                            counter.with_mut(|c| unsafe { *c += 1 });
                            true
                        } else {
                            false
                        }
                    })
                })
                .collect();
            let took = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .filter(|&t| t)
                .count();
            // SAFETY: every other thread has been joined.
            assert_eq!(counter.with(|c| unsafe { *c }), took as u32);
            reached.note(match took {
                2 => "both tries took the lock",
                1 => "one try found the lock held",
                _ => panic!("nobody took a free lock"),
            });
            assert!(!lock.is_locked());
        },
    );
}

/// Three threads each push their node (two at the tail, one at the head),
/// then one removes its node again: the list stays consistent (forward and
/// backward walks agree, each node at most once) and ends up holding the
/// other two.
#[test]
fn list_push_and_remove_by_three_threads() {
    explore(
        &[
            "node 2 was removed from the head",
            "node 2 was removed from the middle",
            "node 2 was removed from the tail",
        ],
        |reached| {
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
                            let walk: Vec<u32> = l.iter().map(|r| r.expect("walk")).collect();
                            assert!(l.remove(me).expect("remove"), "my node vanished");
                            assert!(!l.contains(me).expect("contains"));
                            let at = walk.iter().position(|&n| n == me).expect("listed");
                            Some((at, walk.len()))
                        } else {
                            None
                        }
                    })
                })
                .collect();
            for h in handles {
                if let Some((at, len)) = h.join().expect("thread") {
                    reached.note(if at == 0 {
                        "node 2 was removed from the head"
                    } else if at + 1 == len {
                        "node 2 was removed from the tail"
                    } else {
                        "node 2 was removed from the middle"
                    });
                }
            }
            nodes.assert_holds(&[0, 1]);
        },
    );
}

/// One thread pushes two nodes, another pops the head, a third removes a
/// node that may or may not be listed yet: every pop and remove agrees with
/// what is left.
#[test]
fn list_pop_and_remove_race_pushes() {
    explore(
        &[
            "the pop found the list empty",
            "the pop took node 0",
            "the remove found node 1 unlisted",
            "the remove took node 1",
        ],
        |reached| {
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
            reached.note(match popped {
                None => "the pop found the list empty",
                Some(0) => "the pop took node 0",
                Some(_) => "the pop took node 1",
            });
            reached.note(if removed {
                "the remove took node 1"
            } else {
                "the remove found node 1 unlisted"
            });
        },
    );
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
    /// a token. No deadline: a lost signal is a loom deadlock. Says how the
    /// wait went; the wait is cancelled explicitly (what a drop does) so
    /// that it can say whether it passed a signal on.
    fn wait_for_token(&self, me: u32) -> Waited {
        self.wait_for_token_leaving(me, Leave::Cancel)
    }

    fn wait_for_token_leaving(&self, me: u32, leave: Leave) -> Waited {
        let wait = self.cv.prepare(me, &self.slots).expect("prepare");
        self.finish_waiting(me, wait, leave)
    }

    /// The rest of the waiter's loop, after `prepare`.
    fn finish_waiting(&self, me: u32, wait: CvWait<'_, Slot>, leave: Leave) -> Waited {
        let mut sleeps = 0;
        while !self.take() {
            let why = wait.sleep(None).expect("sleep");
            assert!(
                matches!(why, CvWake::Signaled | CvWake::LatchSet),
                "{why:?}"
            );
            sleeps += 1;
        }
        let passed_on = match leave {
            Leave::Cancel => wait.cancel().expect("cancel"),
            Leave::SwallowingTheSignal => {
                // Off the list if still on it, and no more: a signal that
                // had taken us off is lost.
                self.cv.forget(me, &self.slots).expect("forget");
                std::mem::forget(wait);
                false
            }
        };
        Waited { sleeps, passed_on }
    }

    fn assert_nobody_waits(&self) {
        for i in 0..self.slots.len() as u32 {
            assert!(!self.cv.is_waiting(i, &self.slots).expect("check"));
        }
        assert_eq!(self.cv.signal(&self.slots).expect("signal"), None);
    }
}

/// How a waiter leaves once it has its token.
#[derive(Clone, Copy)]
enum Leave {
    /// `CvWait::cancel`, which passes on a signal that took it off.
    Cancel,
    /// A broken leave that drops such a signal: the model must catch it.
    SwallowingTheSignal,
}

/// How one waiter's [`Scene::wait_for_token`] went.
#[derive(Debug)]
struct Waited {
    /// How many times it slept (0: the token was there at the first check).
    sleeps: u32,
    /// Whether it left off the list with a signal meant for it unused, and
    /// so passed that signal on.
    passed_on: bool,
}

/// A signal after the waiter's prepare is never missed: whichever way the
/// signal and the waiter's check, reset and sleep interleave, the waiter
/// gets its token and leaves (a lost signal would be a loom deadlock).
#[test]
fn cv_signal_after_prepare_is_never_missed() {
    explore(
        &[
            "the waiter slept before the signal",
            "the token was there at the first check",
            "the signal found the waiter listed",
            "the signal found the list empty",
        ],
        |reached| {
            let scene = Scene::new(1);
            let signaller = {
                let scene = scene.clone();
                thread::spawn(move || scene.give())
            };
            let waiter = {
                let scene = scene.clone();
                thread::spawn(move || scene.wait_for_token(0))
            };
            let signalled = signaller.join().expect("thread");
            let waited = waiter.join().expect("thread");
            scene.assert_nobody_waits();
            reached.note(if waited.sleeps > 0 {
                "the waiter slept before the signal"
            } else {
                "the token was there at the first check"
            });
            reached.note(match signalled {
                Some(_) => "the signal found the waiter listed",
                None => "the signal found the list empty",
            });
        },
    );
}

/// Two waiters, two tokens, one signal per token: both get a token. A
/// waiter that takes a token while a signal meant for the other takes it
/// off the list must pass that signal on: W1 is signalled and re-enqueues
/// behind W0, W0 takes the first token without sleeping, the second signal
/// takes W0 off, and only W0's cancel can wake W1 again.
///
/// That interleaving needs three preemptions, so these models run with at
/// least three whatever `LOOM_MAX_PREEMPTIONS` says. At two, the model
/// still reaches a waiter that never slept passing its signal to one that
/// slept twice, but a leave that swallows the signal passes; at three, the
/// twin that swallows it deadlocks as it must.
fn at_least_three_preemptions() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(builder.preemption_bound.map_or(3, |n| n.max(3)));
    builder
}

/// How the two-waiter scene starts.
#[derive(Clone, Copy)]
enum Start {
    /// W0's thread prepares (is on the list) before it spawns W1 and the
    /// signaller: the start of the interleaving above, fixed, which keeps
    /// the model at seconds (CI).
    FirstWaiterListed,
    /// All three start together: some two minutes of CPU (the `_deep` twin).
    Together,
}

const TWO_WAITERS_REACH: [&str; 4] = [
    "both waiters slept",
    "a waiter found its token without sleeping",
    "a leaving waiter passed a signal on",
    "a waiter that never slept passed its signal to one that slept twice",
];

fn spawn_waiter(scene: &Arc<Scene>, me: u32, leave: Leave) -> thread::JoinHandle<Waited> {
    let scene = scene.clone();
    thread::spawn(move || scene.wait_for_token_leaving(me, leave))
}

fn spawn_signaller(scene: &Arc<Scene>) -> thread::JoinHandle<()> {
    let scene = scene.clone();
    thread::spawn(move || {
        scene.give();
        scene.give();
    })
}

fn cv_two_waiters(reached: &Reached, start: Start, leave: Leave) {
    let scene = Scene::new(2);
    let waited: Vec<Waited> = match start {
        Start::Together => {
            let waiters = [
                spawn_waiter(&scene, 0, leave),
                spawn_waiter(&scene, 1, leave),
            ];
            let signaller = spawn_signaller(&scene);
            let waited = waiters.map(|w| w.join().expect("thread"));
            signaller.join().expect("thread");
            waited.into()
        }
        Start::FirstWaiterListed => {
            let first = {
                let scene = scene.clone();
                thread::spawn(move || {
                    let wait = scene.cv.prepare(0, &scene.slots).expect("prepare");
                    let second = spawn_waiter(&scene, 1, leave);
                    let signaller = spawn_signaller(&scene);
                    let first = scene.finish_waiting(0, wait, leave);
                    let second = second.join().expect("thread");
                    signaller.join().expect("thread");
                    vec![first, second]
                })
            };
            first.join().expect("thread")
        }
    };
    scene.assert_nobody_waits();
    if waited.iter().all(|w| w.sleeps > 0) {
        reached.note("both waiters slept");
    }
    if waited.iter().any(|w| w.sleeps == 0) {
        reached.note("a waiter found its token without sleeping");
    }
    if waited.iter().any(|w| w.passed_on) {
        reached.note("a leaving waiter passed a signal on");
    }
    for (me, w) in waited.iter().enumerate() {
        if w.sleeps == 0 && w.passed_on && waited[1 - me].sleeps >= 2 {
            reached.note("a waiter that never slept passed its signal to one that slept twice");
        }
    }
}

#[test]
fn cv_two_waiters_one_signal_each() {
    explore_with(
        at_least_three_preemptions(),
        &TWO_WAITERS_REACH,
        |reached| cv_two_waiters(reached, Start::FirstWaiterListed, Leave::Cancel),
    );
}

/// Run with `RUSTFLAGS="--cfg loom" cargo test -p proclist --release
/// --test loom_list -- --ignored` (about two minutes of CPU).
#[test]
#[ignore = "deep: two minutes; CI runs the twin that lists the first waiter first"]
fn cv_two_waiters_one_signal_each_deep() {
    explore_with(
        at_least_three_preemptions(),
        &TWO_WAITERS_REACH,
        |reached| cv_two_waiters(reached, Start::Together, Leave::Cancel),
    );
}

/// The model above catches a waiter that leaves without passing on the
/// signal that took it off the list: the other waiter sleeps forever. (It
/// stops at the first deadlock, in a second or two.)
#[test]
#[should_panic(expected = "deadlock")]
fn cv_two_waiters_model_catches_a_leave_that_swallows_the_signal() {
    let reached = Reached::default();
    at_least_three_preemptions().check(move || {
        cv_two_waiters(
            &reached,
            Start::FirstWaiterListed,
            Leave::SwallowingTheSignal,
        )
    });
}

/// A waiter whose deadline passes takes itself off the list, unless a
/// signal took it off first, in which case it reports the signal: exactly
/// one of the two, and the list is empty at the end either way.
#[test]
fn cv_timed_out_waiter_leaves_the_list() {
    explore(
        &["the waiter timed out", "the waiter was signalled"],
        |reached| {
            let scene = Scene::new(1);
            let signaller = {
                let scene = scene.clone();
                thread::spawn(move || scene.cv.signal(&scene.slots).expect("signal"))
            };
            let waiter = {
                let scene = scene.clone();
                thread::spawn(move || {
                    let wait = scene.cv.prepare(0, &scene.slots).expect("prepare");
                    // Under loom a wait with a deadline times out right after
                    // its check, so this deadline is only ever reached by the
                    // model.
                    let far = Instant::now() + Duration::from_secs(3600);
                    let why = wait.sleep(Some(far)).expect("sleep");
                    let listed = scene.cv.is_waiting(0, &scene.slots).expect("check");
                    // Timed out: off the list. Signalled: back on it, until
                    // dropped.
                    assert_eq!(listed, why == CvWake::Signaled, "{why:?}");
                    why
                })
            };
            let signalled = signaller.join().expect("thread");
            let why = waiter.join().expect("thread");
            match why {
                CvWake::Timeout => {
                    assert_eq!(signalled, None);
                    reached.note("the waiter timed out");
                }
                CvWake::Signaled => {
                    assert_eq!(signalled, Some(0));
                    reached.note("the waiter was signalled");
                }
                other => panic!("unexpected {other:?}"),
            }
            scene.assert_nobody_waits();
        },
    );
}
