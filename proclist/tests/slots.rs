//! Process slots across threads and processes: exhaustion, release, no
//! double ownership, reclaiming a killed owner's slot, and the postmaster's
//! assign/activate/release path.
//!
//! The harness is multi-threaded, so forked children here stick to atomics,
//! system calls and glibc's fork-safe malloc, and leave through `_exit`.
#![cfg(not(loom))]

use std::time::{Duration, Instant};

use nix::libc;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use proclist::slot::{ACTIVE, ASSIGNED, EXITING, FREE};
use proclist::{
    ConditionVariable, Kind, ListLink, ListNode, ProcArray, ProcArrayConfig, ProcArrayError,
    ProcSlot, WaitNode,
};
use shmem::sync::{AtomicU32, Ordering};
use shmem::{Layout, Segment};

const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 4,
    backends: 4,
};

/// A segment with a process array and, per slot, an "owned by" marker the
/// tests use to catch a second simultaneous owner.
fn segment() -> Segment {
    let layout = ProcArray::declare(Layout::builder(), CONFIG)
        .array::<AtomicU32>("owned_by", CONFIG.total() as usize)
        .region::<AtomicU32>("violations")
        .region::<AtomicU32>("flag")
        .region::<ConditionVariable>("cv")
        .build()
        .unwrap();
    let seg = Segment::create(&layout).unwrap();
    ProcArray::init(&seg, CONFIG).unwrap();
    seg
}

/// Forks a child that runs `body` and `_exit`s with its result.
fn spawn_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child runs `body` (atomics, system calls, glibc's fork-safe
    // malloc) and `_exit`s without unwinding into the harness.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = body();
            // SAFETY: async-signal-safe, does not return.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

fn wait_exit(pid: Pid) -> i32 {
    match waitpid(pid, None).unwrap() {
        WaitStatus::Exited(_, code) => code,
        other => panic!("child ended abnormally: {other:?}"),
    }
}

/// Waits for `child`, which must have died of SIGKILL.
fn wait_killed(child: Pid) {
    assert_eq!(
        waitpid(child, None).unwrap(),
        WaitStatus::Signaled(child, Signal::SIGKILL, false)
    );
}

/// Polls `cond` until it holds or a generous deadline passes.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::yield_now();
    }
}

#[test]
fn exhaustion_names_the_kind_and_release_makes_a_slot_available() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let held: Vec<_> = (0..CONFIG.backends)
        .map(|_| procs.acquire(Kind::Backend).unwrap())
        .collect();
    match procs.acquire(Kind::Backend) {
        Err(ProcArrayError::NoFreeSlot { kind, size }) => {
            assert_eq!(kind, Kind::Backend);
            assert_eq!(size, CONFIG.backends);
        }
        other => panic!("expected NoFreeSlot, got {other:?}"),
    }
    // Another kind's range is unaffected.
    assert!(procs.acquire(Kind::Worker).is_ok());
    let mut indices: Vec<_> = held.iter().map(|g| g.index()).collect();
    indices.dedup();
    assert_eq!(indices.len(), CONFIG.backends as usize);
    assert!(
        indices
            .iter()
            .all(|&i| CONFIG.kind_of(i) == Some(Kind::Backend))
    );

    let freed = held[1].handle();
    drop(held);
    assert_eq!(
        procs.count_free_quiescent(Kind::Backend).unwrap(),
        CONFIG.backends
    );
    let again = procs.acquire(Kind::Backend).unwrap();
    assert_eq!(again.status().state, ACTIVE);
    assert_eq!(again.pid(), std::process::id());
    if again.index() == freed.index {
        assert_ne!(
            again.handle().generation,
            freed.generation,
            "a new tenancy, a new generation"
        );
    }
}

#[test]
fn attach_with_another_configuration_is_refused() {
    let seg = segment();
    let other = ProcArrayConfig {
        workers: 5,
        backends: 3,
    };
    assert!(matches!(
        ProcArray::attach(&seg, other),
        Err(ProcArrayError::ConfigMismatch { .. })
    ));
}

#[test]
fn threads_never_share_a_slot() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let owned_by = seg.array::<AtomicU32>("owned_by").unwrap();
    std::thread::scope(|s| {
        for t in 1..=4u32 {
            s.spawn(move || {
                for _ in 0..20_000 {
                    let Ok(g) = procs.acquire(Kind::Backend) else {
                        continue;
                    };
                    // Relaxed: detection only; the slot protocol orders ownership.
                    let prev = owned_by[g.index() as usize].swap(t, Ordering::Relaxed);
                    assert_eq!(
                        prev,
                        0,
                        "slot {} taken by {t} while {prev} held it",
                        g.index()
                    );
                    owned_by[g.index() as usize].store(0, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(
        procs.count_free_quiescent(Kind::Backend).unwrap(),
        CONFIG.backends
    );
}

#[test]
fn processes_never_share_a_slot() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let owned_by = seg.array::<AtomicU32>("owned_by").unwrap();
    let violations = seg.region::<AtomicU32>("violations").unwrap();
    // More processes than slots, so some acquisitions fail and retry.
    let children: Vec<_> = (0..6)
        .map(|_| {
            spawn_child(|| {
                let me = std::process::id();
                let mut held = 0;
                while held < 5_000 {
                    let Ok(g) = procs.acquire(Kind::Backend) else {
                        continue;
                    };
                    held += 1;
                    // Relaxed: detection only.
                    if owned_by[g.index() as usize].swap(me, Ordering::Relaxed) != 0 {
                        violations.fetch_add(1, Ordering::Relaxed);
                    }
                    owned_by[g.index() as usize].store(0, Ordering::Relaxed);
                }
                0
            })
        })
        .collect();
    for c in children {
        assert_eq!(wait_exit(c), 0);
    }
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "a slot had two owners at once"
    );
    assert_eq!(
        procs.count_free_quiescent(Kind::Backend).unwrap(),
        CONFIG.backends
    );
}

#[test]
fn a_killed_owner_is_reclaimed_but_a_live_one_is_not() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let flag = seg.region::<AtomicU32>("flag").unwrap();
    let child = spawn_child(|| {
        let Ok(guard) = procs.acquire(Kind::Backend) else {
            return 1;
        };
        let _section = guard.critical();
        // Release: pairs with the parent's acquire load; the slot is ours.
        flag.store(1, Ordering::Release);
        loop {
            nix::unistd::pause();
        }
    });
    eventually("the child holds a slot", || {
        flag.load(Ordering::Acquire) == 1
    });
    let (index, slot) = procs
        .find_pid(child.as_raw() as u32)
        .expect("child's slot is found by pid");
    assert_eq!(slot.status().state, ACTIVE);
    assert!(
        procs.reclaim_dead().is_empty(),
        "a live owner keeps its slot"
    );
    assert_eq!(slot.status().state, ACTIVE);

    kill(child, Signal::SIGKILL).unwrap();
    wait_killed(child);
    let reclaimed = procs.reclaim_dead();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].index, index);
    assert_eq!(reclaimed[0].pid, child.as_raw() as u32);
    assert_eq!(
        reclaimed[0].crit_depth, 1,
        "died inside its critical section"
    );
    assert!(
        !reclaimed[0].clean(),
        "a death inside a critical section is not clean"
    );
    assert_eq!(slot.status().state, FREE);
    assert_eq!(
        procs.count_free_quiescent(Kind::Backend).unwrap(),
        CONFIG.backends
    );
    assert!(procs.reclaim_dead().is_empty(), "reclaimed once only");
}

/// A process slot as a condition variable's node that, when armed, kills
/// its own process the moment the variable's list touches its link: a
/// death with the list's lock held.
struct DiesInSurgery<'a> {
    slot: &'a ProcSlot,
    armed: bool,
}

impl ListNode for DiesInSurgery<'_> {
    fn link(&self) -> &ListLink {
        if self.armed {
            let _ = kill(Pid::this(), Signal::SIGKILL);
        }
        self.slot.link()
    }
}

impl WaitNode for DiesInSurgery<'_> {
    fn latch(&self) -> &latch::Latch {
        WaitNode::latch(self.slot)
    }

    fn enter_critical(&self) {
        WaitNode::enter_critical(self.slot);
    }

    fn exit_critical(&self) {
        WaitNode::exit_critical(self.slot);
    }
}

/// A waiter that dies holding a condition variable's lock leaves the lock
/// held, so its slot must say "reset": the wait's critical section does.
/// One killed while asleep on the variable holds nothing and is clean.
#[test]
fn a_waiter_killed_holding_the_condvar_lock_is_dirty_one_killed_asleep_is_not() {
    for armed in [true, false] {
        let seg = segment();
        let procs = ProcArray::attach(&seg, CONFIG).unwrap();
        let cv = seg.region::<ConditionVariable>("cv").unwrap();
        let flag = seg.region::<AtomicU32>("flag").unwrap();
        let nodes: Vec<_> = procs
            .iter()
            .map(|(_, slot)| DiesInSurgery { slot, armed })
            .collect();
        let child = spawn_child(|| {
            let Ok(guard) = procs.acquire(Kind::Backend) else {
                return 1;
            };
            let Ok(wait) = cv.prepare(guard.index(), &nodes) else {
                return 2;
            };
            // Release: pairs with the parent's acquire load.
            flag.store(1, Ordering::Release);
            loop {
                let _ = wait.sleep(None);
            }
        });
        if !armed {
            eventually("the child waits", || flag.load(Ordering::Acquire) == 1);
            kill(child, Signal::SIGKILL).unwrap();
        }
        wait_killed(child);
        let reclaimed = procs.reclaim_dead();
        assert_eq!(reclaimed.len(), 1);
        let pid = child.as_raw() as u32;
        if armed {
            assert_eq!(cv.lock_holder(), Some(pid), "died with the lock held");
            assert_eq!(reclaimed[0].crit_depth, 1, "a stuck lock needs a reset");
        } else {
            // Abandoned outside every section: what a worker with
            // OnCrash::Contain may be restarted alone after.
            assert_eq!(cv.lock_holder(), None);
            assert_eq!(reclaimed[0].was.state, ACTIVE);
            assert_eq!(reclaimed[0].crit_depth, 0, "asleep, it held nothing");
        }
    }
}

#[test]
fn postmaster_path_reports_clean_and_dirty_exits() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let flag = seg.region::<AtomicU32>("flag").unwrap();

    // A child that activates its slot and exits cleanly.
    let handle = procs.assign(Kind::Worker, 42).unwrap();
    assert_eq!(procs.get(handle.index).unwrap().status().state, ASSIGNED);
    let child = spawn_child(|| {
        let Ok(slot) = procs.activate(handle) else {
            return 1;
        };
        if slot.owner_tag() != 42 || slot.pid() != std::process::id() {
            return 2;
        }
        match procs.mark_exiting(handle) {
            Ok(()) => 0,
            Err(_) => 3,
        }
    });
    assert_eq!(wait_exit(child), 0);
    let released = procs.release_assigned(handle).unwrap();
    assert_eq!(released.was.state, EXITING);
    assert!(released.clean());
    assert!(matches!(
        procs.activate(handle),
        Err(ProcArrayError::StaleHandle { .. })
    ));
    assert!(matches!(
        procs.release_assigned(handle),
        Err(ProcArrayError::Corrupt(_))
    ));

    // A child killed while active: the dead-man switch shows it.
    let handle = procs.assign(Kind::Worker, 7).unwrap();
    let child = spawn_child(|| {
        if procs.activate(handle).is_err() {
            return 1;
        }
        // Release: pairs with the parent's acquire load.
        flag.store(2, Ordering::Release);
        loop {
            nix::unistd::pause();
        }
    });
    eventually("the child is active", || flag.load(Ordering::Acquire) == 2);
    kill(child, Signal::SIGKILL).unwrap();
    waitpid(child, None).unwrap();
    assert!(
        procs.reclaim_dead().is_empty(),
        "worker slots are the postmaster's to release"
    );
    let released = procs.release_assigned(handle).unwrap();
    assert_eq!(released.was.state, ACTIVE);
    assert_eq!(released.pid, child.as_raw() as u32);
    assert!(!released.clean(), "died without marking its slot exiting");
    assert_eq!(
        procs.count_free_quiescent(Kind::Worker).unwrap(),
        CONFIG.workers
    );

    // A child that was never forked: the handle still releases cleanly.
    let handle = procs.assign(Kind::Worker, 0).unwrap();
    assert!(procs.release_assigned(handle).unwrap().clean());
}

#[test]
fn a_free_list_that_names_an_owned_slot_is_corruption_not_a_second_owner() {
    let seg = segment();
    let procs = ProcArray::attach(&seg, CONFIG).unwrap();
    let held = procs.acquire(Kind::Backend).unwrap();
    // Scribble: push the held slot's index back onto the free list, as a
    // buggy process writing over the segment might.
    let heads = seg
        .array::<proclist::array::FreeListHead>(proclist::array::regions::HEADS)
        .unwrap();
    let links = seg
        .array::<AtomicU32>(proclist::array::regions::LINKS)
        .unwrap();
    let start = CONFIG.start(Kind::Backend) as usize;
    let end = start + CONFIG.backends as usize;
    let list = proclist::FreeList::new(heads[Kind::Backend as usize].word(), &links[start..end]);
    list.push(held.index() - CONFIG.start(Kind::Backend))
        .unwrap();
    assert!(matches!(
        procs.acquire(Kind::Backend),
        Err(ProcArrayError::Corrupt(_))
    ));
    assert_eq!(held.status().state, ACTIVE, "the owner keeps its slot");
}

#[test]
fn a_guard_that_outlives_a_reset_leaves_the_next_tenant_alone() {
    let layout = ProcArray::declare(Layout::builder(), CONFIG)
        .build()
        .unwrap();
    let name = format!("proclist-reset-{}", std::process::id());
    let mut creator = Segment::create_named(&name, &layout).unwrap();
    ProcArray::init(&creator, CONFIG).unwrap();
    let other = Segment::attach(&name, &layout).unwrap();
    let view = ProcArray::attach(&other, CONFIG).unwrap();
    let old = view.acquire(Kind::Backend).unwrap();
    let old_handle = old.handle();

    // The segment is reset under the guard, and the slot taken again.
    creator.reinit();
    let fresh = ProcArray::init(&creator, CONFIG).unwrap();
    let new = fresh.acquire(Kind::Backend).unwrap();
    assert_eq!(new.index(), old_handle.index, "the same slot, retaken");
    assert_ne!(
        new.handle().generation,
        old_handle.generation,
        "a tenancy after a reset never repeats one from before"
    );
    new.enter_critical();
    drop(old);
    let status = new.status();
    assert_eq!(
        (status.state, status.generation),
        (ACTIVE, new.handle().generation),
        "the stale guard did not free the new tenant's slot"
    );
    assert_eq!(new.crit_depth(), 1, "nor reset its critical section");
    assert_eq!(
        new.latch().owner(),
        Some(std::process::id()),
        "nor took its latch"
    );
    new.exit_critical();
    drop(new);
    drop(other);
    drop(creator);
}
