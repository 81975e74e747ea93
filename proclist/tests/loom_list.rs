//! loom models of the lock, the index-linked list and the condition
//! variable. Threads stand in for processes, the views are built on the
//! heap over loom's atomics, and `latch::futex` is a loom Mutex + Condvar
//! under which a missing wake leaves a thread asleep forever, which loom
//! reports as a deadlock.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p proclist --release --test loom_list`
#![cfg(loom)]

use loom::sync::Arc;
use loom::thread;
use proclist::{ListHead, ListLink, ProcList, ShmLock};
use shmem::sync::UnsafeCell;

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
