//! A condition variable for processes: a [`ProcList`] of waiting slots, each
//! woken through its own [`Latch`].
//!
//! # Protocol
//!
//! Shared state, all in the segment:
//!
//! - the variable: a [`ListHead`] (lock, head, tail), the list of waiters;
//! - per slot, a [`ListLink`](crate::list::ListLink) reserved for
//!   condition-variable waits (a slot waits on at most one variable at a
//!   time) and the slot's [`Latch`], owned by the process in the slot: the
//!   [`WaitNode`] trait exposes both.
//!
//! Roles. A *waiter* is the process owning slot `me`: it alone puts `me`
//! on a list ([`ConditionVariable::prepare`], and again in
//! [`CvWait::sleep`]) and resets and waits on `me`'s latch. A *signaller*
//! is any process: [`signal`](ConditionVariable::signal) takes the first
//! waiter off the list and then sets its latch;
//! [`broadcast`](ConditionVariable::broadcast) does that for every waiter.
//! A waiter that finds itself off the list knows it was signalled; one that
//! times out takes itself off.
//!
//! The usage loop (PostgreSQL's ConditionVariablePrepareToSleep pattern):
//! enqueue *first*, then check the condition, then sleep, and check again
//! after every return:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use latch::Latch;
//! use proclist::{ConditionVariable, CvWake, ListLink, ListNode, WaitNode};
//! use shmem::sync::{AtomicU32, Ordering};
//!
//! struct Slot { link: ListLink, latch: Latch }
//! impl ListNode for Slot { fn link(&self) -> &ListLink { &self.link } }
//! impl WaitNode for Slot { fn latch(&self) -> &Latch { &self.latch } }
//!
//! let slots: Vec<Slot> =
//!     (0..2).map(|_| Slot { link: ListLink::new(), latch: Latch::new() }).collect();
//! let cv = ConditionVariable::new();
//! let ready = AtomicU32::new(0);
//! let me = 0;
//! slots[me as usize].latch.own()?;
//! std::thread::scope(|s| -> Result<(), proclist::CvError> {
//!     s.spawn(|| {
//!         ready.store(1, Ordering::Release); // change the condition, then signal
//!         cv.broadcast(&slots)
//!     });
//!     let deadline = Instant::now() + Duration::from_secs(10);
//!     let wait = cv.prepare(me, &slots)?;               // 1. enqueue
//!     while ready.load(Ordering::Acquire) == 0 {        // 2. check
//!         match wait.sleep(Some(deadline))? {           // 3. sleep
//!             CvWake::Signaled | CvWake::LatchSet => {} // 4. check again
//!             CvWake::Timeout => panic!("nobody signalled in time"),
//!             CvWake::PostmasterDied => break,
//!         }
//!     }
//!     Ok(()) // `wait` is dropped: off the list
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Why no signal is lost
//!
//! A signaller changes the condition *before* it signals. A waiter is on
//! the list from `prepare` on (and [`CvWait::sleep`] puts it back before it
//! reports a signal), so a signal issued after the waiter's check of the
//! condition finds the waiter on the list, takes it off and sets its latch.
//! The waiter's latch follows the latch protocol (reset, check, wait): it
//! resets the latch only right after a wait returned `Set`, and then checks
//! the list under the lock. If the signaller's removal came before that
//! check, the check sees it; if after, the signaller's `set` comes after
//! the reset (lock order: reset, our unlock, its lock, its unlock, its
//! set), so the next wait returns at once.
//!
//! A waiter that was taken off the list but leaves without having reported
//! [`CvWake::Signaled`] (it found its condition true first, or gave up)
//! would swallow a wake-one signal meant for someone. Dropping or
//! cancelling the wait therefore passes such a signal on to the next
//! waiter. That may wake a waiter needlessly, never leave one asleep.
//!
//! A broadcast takes waiters off in batches of [`BROADCAST_BATCH`] and sets
//! their latches between batches, with the lock released. Waiters
//! re-enqueue at the tail, so everyone who waited when the broadcast began
//! is taken off before anyone who came later; the broadcast stops after as
//! many removals as there are slots, so waiters re-enqueueing in a loop
//! cannot keep it going.
//!
//! Orderings: everything goes through the list's lock (Acquire to take,
//! Release to release) and the latch (Release `set`, Acquire `reset` and
//! wait); this module adds no atomics of its own. Whatever a signaller
//! wrote before `signal` is visible to the waiter once `sleep` returns
//! [`CvWake::Signaled`], because the waiter learned it was signalled under
//! the lock the signaller released after removing it.
//!
//! # The latch is shared
//!
//! A process has one latch and every reason to wake it goes through it
//! (shutdown requests, other wait loops). A sleep that wakes to its latch
//! but is still on the list returns [`CvWake::LatchSet`] after resetting
//! the latch, so the caller can look at its other conditions too. It stays
//! on the list.
//!
//! # Crashes and the postmaster
//!
//! The list lock is a [`ShmLock`](crate::ShmLock): a process dying while it
//! holds it (a few instructions of list surgery) leaves it held, so that
//! death must reset the segment, and the postmaster only knows to if the
//! dead process was inside a critical section. A waiter is: every hold of
//! the lock made for a [`CvWait`] runs inside the waiter node's
//! [`WaitNode::enter_critical`], which a [`ProcSlot`](crate::ProcSlot)
//! turns into its critical-section depth. A signaller is not known to the
//! variable; one whose crash the postmaster may contain (a worker with
//! `OnCrash::Contain`, a process that attached by itself) wraps its
//! [`signal`](ConditionVariable::signal) or
//! [`broadcast`](ConditionVariable::broadcast) in a section of its own
//! ([`SlotGuard::critical`](crate::SlotGuard::critical)). A process dying
//! while merely *on* the list, asleep, is outside every section: its slot
//! stays linked; a
//! signal that removes it sets a latch nobody waits on, which is harmless,
//! and the slot's reclaimer must take it off ([`ConditionVariable::forget`])
//! before the slot is reused. The postmaster never waits on a variable and
//! signals only with deadlines
//! ([`signal_until`](ConditionVariable::signal_until),
//! [`broadcast_until`](ConditionVariable::broadcast_until)).

use std::cell::Cell;
use std::time::Instant;

use latch::{Latch, LatchError, Wake};
use thiserror::Error;

use crate::list::{ListError, ListHead, ListNode, LockedList, ProcList};

/// How many waiters a broadcast takes off the list per lock hold.
pub const BROADCAST_BATCH: usize = 32;

/// A node that can wait on a [`ConditionVariable`]: a list link and the
/// latch of the process that owns the node.
pub trait WaitNode: ListNode {
    /// The latch of the process in this slot.
    fn latch(&self) -> &Latch;

    /// Called by the node's owner, as a waiter, just before it takes the
    /// variable's lock; [`exit_critical`](Self::exit_critical) follows once
    /// the lock is released. A node that keeps its owner's critical-section
    /// depth (a [`ProcSlot`](crate::ProcSlot) does) raises it here, so that
    /// a waiter dying with the lock held is seen as a crash inside a
    /// critical section, which resets the segment, rather than a clean one
    /// that the postmaster may contain (see "Crashes and the postmaster" in
    /// the module docs). The default does nothing.
    fn enter_critical(&self) {}

    /// The end of the stretch [`enter_critical`](Self::enter_critical)
    /// began. The default does nothing.
    fn exit_critical(&self) {}
}

/// A waiter's critical section around one hold of the variable's lock.
/// Entered before the lock is taken, since a death between taking the lock
/// and entering would look clean, and left when dropped, which callers
/// arrange to come after the lock's release (declare it first). Dying
/// while still queued for the lock therefore also counts as dirty: a reset
/// that was not strictly needed, never a stuck lock that was.
struct Holding<'a, N: WaitNode>(Option<&'a N>);

impl<'a, N: WaitNode> Holding<'a, N> {
    fn enter(nodes: &'a [N], me: u32) -> Self {
        let node = nodes.get(me as usize);
        if let Some(node) = node {
            node.enter_critical();
        }
        Self(node)
    }
}

impl<N: WaitNode> Drop for Holding<'_, N> {
    fn drop(&mut self) {
        if let Some(node) = self.0 {
            node.exit_critical();
        }
    }
}

/// Why [`CvWait::sleep`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CvWake {
    /// A [`signal`](ConditionVariable::signal) or
    /// [`broadcast`](ConditionVariable::broadcast) took us off the list. We
    /// are back on it already, so a signal that comes while the caller
    /// checks its condition is not missed.
    Signaled,
    /// Our latch was set for some other reason (it is shared by everything
    /// the process waits for) and has been reset; we are still on the list.
    /// Check the condition, and anything else the latch may announce.
    LatchSet,
    /// The deadline passed without a signal; we took ourselves off the list
    /// (a later `sleep` puts us back).
    Timeout,
    /// The parent process died; we took ourselves off the list.
    PostmasterDied,
}

/// What went wrong with a condition variable.
#[derive(Debug, Error)]
pub enum CvError {
    /// A list operation failed: a bad slot index, a corrupt list, or its
    /// lock (timeout, corruption).
    #[error(transparent)]
    List(#[from] ListError),
    /// Waiting on our latch failed (e.g. the caller does not own the
    /// latch of slot `me`).
    #[error(transparent)]
    Latch(#[from] LatchError),
}

/// A condition variable in shared memory; see the module docs.
///
/// `#[repr(C)]`, 16 bytes, all-zero is a variable nobody waits on.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ConditionVariable {
    /// The waiting slots, in arrival order.
    waiters: ListHead,
}

#[cfg(not(loom))]
const _: () = assert!(std::mem::size_of::<ConditionVariable>() == 16);

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of a ListHead, itself ShmSafe: any bits are valid and
// checked before use, no pointers, all mutation is atomic.
unsafe impl shmem::ShmSafe for ConditionVariable {}

impl ConditionVariable {
    /// A variable nobody waits on, like all-zero bytes.
    pub fn new() -> Self {
        Self {
            waiters: ListHead::new(),
        }
    }

    /// The list of waiters, over `nodes`.
    fn list<'a, N: WaitNode>(&'a self, nodes: &'a [N]) -> ProcList<'a, N> {
        ProcList::new(&self.waiters, nodes)
    }

    /// Puts slot `me` on the list of waiters and returns the wait, which
    /// takes it off again when dropped. The caller must own `me`'s latch
    /// (see [`Latch::own`]), and `me` must not be waiting on another
    /// variable. Check the condition *after* this.
    pub fn prepare<'a, N: WaitNode>(
        &'a self,
        me: u32,
        nodes: &'a [N],
    ) -> Result<CvWait<'a, N>, CvError> {
        let list = self.list(nodes);
        let _held = Holding::enter(nodes, me);
        list.lock()?.push_tail(me)?;
        Ok(CvWait {
            list,
            me,
            listed: Cell::new(true),
        })
    }

    /// Wakes the longest-waiting process, if any, and returns its slot.
    /// Change the condition before calling this.
    pub fn signal<N: WaitNode>(&self, nodes: &[N]) -> Result<Option<u32>, CvError> {
        self.signal_by(nodes, None)
    }

    /// [`signal`](Self::signal), giving up on the list's lock at `deadline`
    /// (for the postmaster, which must not block on a child).
    pub fn signal_until<N: WaitNode>(
        &self,
        nodes: &[N],
        deadline: Instant,
    ) -> Result<Option<u32>, CvError> {
        self.signal_by(nodes, Some(deadline))
    }

    /// Wakes every waiting process and returns how many were taken off the
    /// list. Change the condition before calling this.
    pub fn broadcast<N: WaitNode>(&self, nodes: &[N]) -> Result<u32, CvError> {
        self.broadcast_by(nodes, None)
    }

    /// [`broadcast`](Self::broadcast), giving up on the list's lock at
    /// `deadline` (each batch takes it afresh).
    pub fn broadcast_until<N: WaitNode>(
        &self,
        nodes: &[N],
        deadline: Instant,
    ) -> Result<u32, CvError> {
        self.broadcast_by(nodes, Some(deadline))
    }

    /// Takes slot `index` off the list without waking it, for whoever
    /// reclaims the slot of a process that died while waiting. `Ok(false)`
    /// if it was not on the list.
    pub fn forget<N: WaitNode>(&self, index: u32, nodes: &[N]) -> Result<bool, CvError> {
        Ok(self.list(nodes).lock()?.remove(index)?)
    }

    /// Whether slot `index` is on the list of waiters (under the lock, so
    /// the answer held at that moment).
    pub fn is_waiting<N: WaitNode>(&self, index: u32, nodes: &[N]) -> Result<bool, CvError> {
        Ok(self.list(nodes).lock()?.contains(index)?)
    }

    /// The pid holding the variable's lock, if any (see
    /// [`ShmLock::holder`](crate::ShmLock::holder)).
    pub fn lock_holder(&self) -> Option<u32> {
        self.waiters.lock_holder()
    }

    fn signal_by<N: WaitNode>(
        &self,
        nodes: &[N],
        deadline: Option<Instant>,
    ) -> Result<Option<u32>, CvError> {
        let woken = lock_by(self.list(nodes), deadline)?.pop_head()?;
        // The lock is released here (the temporary above is dropped), so the
        // woken process does not find it held when it checks the list.
        if let Some(node) = woken.and_then(|i| nodes.get(i as usize)) {
            node.latch().set();
        }
        Ok(woken)
    }

    fn broadcast_by<N: WaitNode>(
        &self,
        nodes: &[N],
        deadline: Option<Instant>,
    ) -> Result<u32, CvError> {
        let list = self.list(nodes);
        let limit = list.capacity();
        let mut total = 0u32;
        let mut batch = [0u32; BROADCAST_BATCH];
        while total < limit {
            let mut taken = 0;
            {
                let locked = lock_by(list, deadline)?;
                while taken < BROADCAST_BATCH && total < limit {
                    let Some(i) = locked.pop_head()? else { break };
                    batch[taken] = i;
                    taken += 1;
                    total += 1;
                }
            }
            for &i in &batch[..taken] {
                if let Some(node) = nodes.get(i as usize) {
                    node.latch().set();
                }
            }
            if taken < BROADCAST_BATCH {
                break;
            }
        }
        Ok(total)
    }
}

/// Takes the list's lock until `deadline`, or as long as it takes.
fn lock_by<'a, N: ListNode>(
    list: ProcList<'a, N>,
    deadline: Option<Instant>,
) -> Result<LockedList<'a, N>, ListError> {
    match deadline {
        Some(d) => list.lock_until(d),
        None => list.lock(),
    }
}

/// A prepared wait of slot `me` on one [`ConditionVariable`], from
/// [`ConditionVariable::prepare`]. Dropping it takes the slot off the list
/// (passing on a signal it had received but not reported).
#[must_use = "dropping the wait takes the slot off the list again"]
pub struct CvWait<'a, N: WaitNode> {
    list: ProcList<'a, N>,
    me: u32,
    /// Whether we put `me` on the list and have not seen it taken off (by
    /// us: timeout, cancel). A signaller may have taken it off meanwhile;
    /// only the list, under its lock, knows.
    listed: Cell<bool>,
}

impl<N: WaitNode> CvWait<'_, N> {
    /// Sleeps on our latch until signalled, until `deadline` (`None`:
    /// none), until the latch is set for another reason, or until the
    /// parent process dies; see [`CvWake`]. Any return may come without the
    /// condition having changed: always check it again.
    ///
    /// After [`CvWake::Timeout`] or [`CvWake::PostmasterDied`] we are off
    /// the list; sleeping again puts us back first.
    pub fn sleep(&self, deadline: Option<Instant>) -> Result<CvWake, CvError> {
        if !self.listed.get() {
            let _held = self.holding();
            self.list.lock()?.push_tail(self.me)?;
            self.listed.set(true);
        }
        let latch = self.latch()?;
        match latch.wait(deadline)? {
            Wake::Set => {
                // Reset before checking the list (latch protocol): a signal
                // that removes us after the check sets the latch after this.
                latch.reset();
                let _held = self.holding();
                let locked = self.list.lock()?;
                if locked.contains(self.me)? {
                    Ok(CvWake::LatchSet)
                } else {
                    locked.push_tail(self.me)?;
                    Ok(CvWake::Signaled)
                }
            }
            Wake::Timeout => {
                let _held = self.holding();
                let locked = self.list.lock()?;
                if locked.remove(self.me)? {
                    self.listed.set(false);
                    Ok(CvWake::Timeout)
                } else {
                    // Signalled just as the deadline passed: the signal wins,
                    // and its latch set will show up as a stale wake later.
                    locked.push_tail(self.me)?;
                    Ok(CvWake::Signaled)
                }
            }
            Wake::PostmasterDied => {
                self.withdraw()?;
                Ok(CvWake::PostmasterDied)
            }
        }
    }

    /// Takes us off the list now, reporting errors that dropping the wait
    /// would ignore. `Ok(true)` if a signaller had taken us off already (we
    /// passed its signal on to the next waiter).
    pub fn cancel(self) -> Result<bool, CvError> {
        self.withdraw()
    }

    /// The slot this wait is for.
    pub fn slot(&self) -> u32 {
        self.me
    }

    /// Our critical section for one hold of the lock.
    fn holding(&self) -> Holding<'_, N> {
        Holding::enter(self.list.nodes(), self.me)
    }

    fn latch(&self) -> Result<&Latch, CvError> {
        // `me` was range-checked by the push in `prepare`, but the slice
        // is ours to index, so check again rather than panic.
        let capacity = self.list.capacity();
        self.list
            .nodes()
            .get(self.me as usize)
            .map(WaitNode::latch)
            .ok_or(CvError::List(ListError::OutOfRange {
                index: self.me,
                len: capacity,
            }))
    }

    /// Off the list; if a signaller had taken us off, pass the signal on.
    fn withdraw(&self) -> Result<bool, CvError> {
        if !self.listed.get() {
            return Ok(false);
        }
        let next = {
            let _held = self.holding();
            let locked = self.list.lock()?;
            let removed = locked.remove(self.me)?;
            self.listed.set(false);
            if removed {
                return Ok(false);
            }
            locked.pop_head()?
        };
        if let Some(node) = next.and_then(|i| self.list.nodes().get(i as usize)) {
            node.latch().set();
        }
        Ok(true)
    }
}

impl<N: WaitNode> Drop for CvWait<'_, N> {
    fn drop(&mut self) {
        // Errors here mean a corrupt list or lock, which the next operation
        // on the variable reports too; a drop has nobody to tell.
        let _ = self.withdraw();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::list::ListLink;
    use shmem::sync::{AtomicU32, Ordering};
    use std::time::Duration;

    #[derive(Default)]
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

    fn slots(n: usize) -> Vec<Slot> {
        (0..n).map(|_| Slot::default()).collect()
    }

    fn waiters(cv: &ConditionVariable, nodes: &[Slot]) -> Vec<u32> {
        let list = cv.list(nodes);
        let l = list.lock().unwrap();
        l.iter().collect::<Result<_, _>>().unwrap()
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_millis(2))
    }

    #[test]
    fn prepare_enqueues_and_drop_dequeues() {
        let cv = ConditionVariable::new();
        let nodes = slots(3);
        let a = cv.prepare(2, &nodes).unwrap();
        let b = cv.prepare(0, &nodes).unwrap();
        assert_eq!(waiters(&cv, &nodes), [2, 0]);
        assert!(matches!(
            cv.prepare(2, &nodes),
            Err(CvError::List(ListError::AlreadyListed { index: 2 }))
        ));
        drop(a);
        assert_eq!(waiters(&cv, &nodes), [0]);
        assert!(!b.cancel().unwrap());
        assert!(waiters(&cv, &nodes).is_empty());
    }

    #[test]
    fn signal_before_sleep_is_reported_and_re_enqueues() {
        let cv = ConditionVariable::new();
        let nodes = slots(2);
        nodes[0].latch.own().unwrap();
        let w = cv.prepare(0, &nodes).unwrap();
        assert_eq!(cv.signal(&nodes).unwrap(), Some(0));
        assert!(waiters(&cv, &nodes).is_empty());
        assert_eq!(w.sleep(None).unwrap(), CvWake::Signaled);
        // Back on the list, so the next signal is caught too.
        assert_eq!(waiters(&cv, &nodes), [0]);
        assert_eq!(cv.signal(&nodes).unwrap(), Some(0));
        assert_eq!(w.sleep(None).unwrap(), CvWake::Signaled);
        assert_eq!(cv.signal(&nodes).unwrap(), Some(0));
        assert_eq!(cv.signal(&nodes).unwrap(), None);
    }

    #[test]
    fn timeout_takes_the_waiter_off_and_sleep_puts_it_back() {
        let cv = ConditionVariable::new();
        let nodes = slots(1);
        nodes[0].latch.own().unwrap();
        let w = cv.prepare(0, &nodes).unwrap();
        let deadline = soon();
        assert_eq!(w.sleep(deadline).unwrap(), CvWake::Timeout);
        assert!(Instant::now() >= deadline.unwrap());
        assert!(waiters(&cv, &nodes).is_empty());
        assert_eq!(cv.signal(&nodes).unwrap(), None);
        // Sleeping again enqueues first.
        nodes[0].latch.set();
        assert_eq!(w.sleep(soon()).unwrap(), CvWake::LatchSet);
        assert_eq!(waiters(&cv, &nodes), [0]);
    }

    /// A node that checks the waiter's critical sections: its link is
    /// only touched under the lock, and every such touch must come with
    /// the section open. Its counters are Relaxed throughout: one thread
    /// writes and reads them, so there is nothing to pair with.
    struct Watched<'a> {
        link: ListLink,
        latch: Latch,
        cv: &'a ConditionVariable,
        depth: AtomicU32,
        sections: AtomicU32,
        locked_touches: AtomicU32,
        bare_touches: AtomicU32,
    }

    impl ListNode for Watched<'_> {
        fn link(&self) -> &ListLink {
            if self.cv.lock_holder().is_some() {
                self.locked_touches.fetch_add(1, Ordering::Relaxed);
                if self.depth.load(Ordering::Relaxed) == 0 {
                    self.bare_touches.fetch_add(1, Ordering::Relaxed);
                }
            }
            &self.link
        }
    }

    impl WaitNode for Watched<'_> {
        fn latch(&self) -> &Latch {
            &self.latch
        }

        fn enter_critical(&self) {
            assert!(
                self.cv.lock_holder().is_none(),
                "entered with the lock held"
            );
            self.depth.fetch_add(1, Ordering::Relaxed);
            self.sections.fetch_add(1, Ordering::Relaxed);
        }

        fn exit_critical(&self) {
            assert!(self.cv.lock_holder().is_none(), "left with the lock held");
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Every hold of the lock a wait makes (prepare, each kind of wake,
    /// sleeping again after a timeout, cancel) runs inside the waiter
    /// node's critical section, entered before the lock is taken and left
    /// after it is released, so a waiter that dies holding the lock is a
    /// dirty death.
    #[test]
    fn a_waiter_holds_the_lock_only_inside_its_critical_section() {
        let cv = ConditionVariable::new();
        let node = Watched {
            link: ListLink::new(),
            latch: Latch::new(),
            cv: &cv,
            depth: AtomicU32::new(0),
            sections: AtomicU32::new(0),
            locked_touches: AtomicU32::new(0),
            bare_touches: AtomicU32::new(0),
        };
        let nodes = std::slice::from_ref(&node);
        node.latch.own().unwrap();
        let w = cv.prepare(0, nodes).unwrap();
        // Wake::Set: an unrelated set, then a signal.
        node.latch.set();
        assert_eq!(w.sleep(None).unwrap(), CvWake::LatchSet);
        assert_eq!(cv.signal(nodes).unwrap(), Some(0));
        let signal_touches = node.locked_touches.load(Ordering::Relaxed);
        let signal_bare = node.bare_touches.load(Ordering::Relaxed);
        assert_eq!(w.sleep(None).unwrap(), CvWake::Signaled);
        // Wake::Timeout, then back on the list by the next sleep.
        assert_eq!(w.sleep(soon()).unwrap(), CvWake::Timeout);
        node.latch.set();
        assert_eq!(w.sleep(soon()).unwrap(), CvWake::LatchSet);
        assert!(!w.cancel().unwrap());
        // The signaller's hold is not the waiter's (it is outside every
        // section, as the docs say); every other touch is inside one.
        assert!(signal_bare > 0, "the check sees touches outside sections");
        assert_eq!(node.bare_touches.load(Ordering::Relaxed), signal_bare);
        assert!(node.locked_touches.load(Ordering::Relaxed) > signal_touches + 4);
        // prepare, LatchSet, Signaled, Timeout, sleep again, LatchSet, cancel.
        assert_eq!(node.sections.load(Ordering::Relaxed), 7);
        assert_eq!(node.depth.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_unrelated_latch_set_is_reported_and_keeps_us_listed() {
        let cv = ConditionVariable::new();
        let nodes = slots(1);
        nodes[0].latch.own().unwrap();
        let w = cv.prepare(0, &nodes).unwrap();
        nodes[0].latch.set();
        assert_eq!(w.sleep(None).unwrap(), CvWake::LatchSet);
        assert!(!nodes[0].latch.is_set());
        assert_eq!(waiters(&cv, &nodes), [0]);
    }

    #[test]
    fn a_swallowed_signal_is_passed_on() {
        let cv = ConditionVariable::new();
        let nodes = slots(2);
        let first = cv.prepare(0, &nodes).unwrap();
        let _second = cv.prepare(1, &nodes).unwrap();
        // The signal takes slot 0 off, but slot 0 leaves without sleeping.
        assert_eq!(cv.signal(&nodes).unwrap(), Some(0));
        assert!(nodes[0].latch.is_set());
        assert!(first.cancel().unwrap());
        // Slot 1 got it instead.
        assert!(nodes[1].latch.is_set());
        assert!(waiters(&cv, &nodes).is_empty());
    }

    #[test]
    fn waiting_without_owning_the_latch_is_an_error() {
        let cv = ConditionVariable::new();
        let nodes = slots(1);
        let w = cv.prepare(0, &nodes).unwrap();
        assert!(matches!(
            w.sleep(None),
            Err(CvError::Latch(LatchError::NotOwner { .. }))
        ));
        drop(w);
        assert!(waiters(&cv, &nodes).is_empty());
    }

    #[test]
    fn broadcast_wakes_every_waiter_beyond_one_batch() {
        let cv = ConditionVariable::new();
        let n = BROADCAST_BATCH * 2 + 3;
        let nodes = slots(n);
        let waits: Vec<_> = (0..n as u32)
            .map(|i| cv.prepare(i, &nodes).unwrap())
            .collect();
        assert_eq!(cv.broadcast(&nodes).unwrap(), n as u32);
        assert!(nodes.iter().all(|s| s.latch.is_set()));
        assert!(waiters(&cv, &nodes).is_empty());
        drop(waits);
        assert_eq!(cv.broadcast(&nodes).unwrap(), 0);
    }

    #[test]
    fn signal_until_gives_up_on_a_held_lock() {
        let cv = ConditionVariable::new();
        let nodes = slots(1);
        let list = cv.list(&nodes);
        let _held = list.lock().unwrap();
        let deadline = Instant::now() + Duration::from_millis(2);
        assert!(matches!(
            cv.signal_until(&nodes, deadline),
            Err(CvError::List(ListError::Lock(
                crate::LockError::TimedOut { .. }
            )))
        ));
        assert!(cv.lock_holder().is_some());
    }

    /// Threads wait for tokens, one signal per token: every waiter ends up
    /// with a token, none sleeps through its signal (a lost signal would
    /// leave a thread asleep until the generous deadline and fail).
    #[test]
    fn threads_each_get_a_token_one_signal_per_token() {
        const WAITERS: u32 = 3;
        const ROUNDS: u32 = 300;
        let cv = ConditionVariable::new();
        let nodes = slots(WAITERS as usize + 1);
        let tokens = AtomicU32::new(0);
        let take = || {
            tokens
                // Acquire/Relaxed: pairs with the Release fetch_add below;
                // failures only retry.
                .fetch_update(Ordering::Acquire, Ordering::Relaxed, |t| t.checked_sub(1))
                .is_ok()
        };
        std::thread::scope(|s| {
            for me in 0..WAITERS {
                let (cv, nodes, take) = (&cv, &nodes, &take);
                s.spawn(move || {
                    nodes[me as usize].latch.own().unwrap();
                    let deadline = Instant::now() + Duration::from_secs(30);
                    for _ in 0..ROUNDS {
                        let w = cv.prepare(me, nodes).unwrap();
                        while !take() {
                            let why = w.sleep(Some(deadline)).unwrap();
                            assert_ne!(why, CvWake::Timeout, "slot {me} missed a signal");
                        }
                        // A lost wake-up would end only at the deadline,
                        // where the timeout path finds the signal.
                        assert!(Instant::now() < deadline, "slot {me} missed a signal");
                    }
                });
            }
            for _ in 0..WAITERS * ROUNDS {
                // Release: pairs with the Acquire in take().
                tokens.fetch_add(1, Ordering::Release);
                cv.signal(&nodes).unwrap();
            }
        });
        assert_eq!(tokens.load(Ordering::Relaxed), 0);
        assert!(waiters(&cv, &nodes).is_empty());
    }
}
