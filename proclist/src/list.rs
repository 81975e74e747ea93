//! Doubly-linked lists of slot indices in shared memory, mutated under a
//! [`ShmLock`].
//!
//! PostgreSQL links its PGPROCs into wait queues by process number rather
//! than by pointer (proclist.h), so the lists mean the same thing in every
//! process whatever address it mapped the segment at. This module does the
//! same for any array of nodes that each carry a [`ListLink`].
//!
//! # Protocol
//!
//! Shared state, all in the segment:
//!
//! - a [`ListHead`]: its [`ShmLock`], and the `head` and `tail` words;
//! - per node, a [`ListLink`]: `prev` and `next` words.
//!
//! Every one of these words is read and written only while the list's lock
//! is held (the one exception, [`ListLink::is_listed`], is a snapshot for
//! diagnostics). The lock's Acquire on taking and Release on releasing order
//! them, so each access is Relaxed (`get` and `put` say so once).
//!
//! A node belongs to at most one list of its "family" at a time, and its
//! link is used by that family only: a `ProcSlot` waiting on a
//! condition variable is linked into that variable's list through a link
//! reserved for condition-variable waits. Operations on a list check that a
//! linked node's neighbours point back at it, which catches a node that is
//! first or last in *another* list, but a node in the middle of another
//! list of the same family looks linked here too; callers must know which
//! list a node is in (a waiter knows which variable it waits on).
//!
//! # Encoding
//!
//! Indices are stored plus one, so that all-zero bytes are an empty list of
//! unlinked nodes:
//!
//! | word                | value              | meaning                       |
//! |---------------------|--------------------|-------------------------------|
//! | `head`, `tail`      | 0                  | the list is empty             |
//! |                     | `i + 1`            | node `i` is first / last      |
//! | `prev`, `next`      | [`NOT_LISTED`] (0) | the node is in no list (both) |
//! |                     | [`END`] (`u32::MAX`) | the node is first / last    |
//! |                     | `i + 1`            | node `i` is the neighbour     |
//!
//! So "in no list" (both links 0) is distinct from "first in a list"
//! (`prev` = [`END`]), which PostgreSQL's proclist_types.h also takes care
//! to separate.
//!
//! # Untrusted memory
//!
//! Every index read from the segment is range-checked and every neighbour
//! is checked to point back; a mismatch is [`ListError::Corrupt`], never an
//! out-of-bounds access or a panic. Walks take at most one step per node,
//! so a cycle is reported rather than followed forever. An operation that
//! finds corruption returns before writing anything.
//!
//! ```
//! use proclist::{ListHead, ListLink, ProcList};
//!
//! let head = ListHead::new();
//! let nodes: Vec<ListLink> = (0..4).map(|_| ListLink::new()).collect();
//! let list = ProcList::new(&head, &nodes);
//! let locked = list.lock()?;
//! locked.push_tail(2)?;
//! locked.push_tail(0)?;
//! locked.push_head(3)?;
//! assert_eq!(locked.iter().collect::<Result<Vec<_>, _>>()?, [3, 2, 0]);
//! assert!(locked.remove(2)?);
//! assert!(!locked.remove(2)?); // no longer listed
//! assert_eq!(locked.pop_head()?, Some(3));
//! assert!(locked.contains(0)?);
//! assert_eq!(locked.verify()?, 1);
//! # Ok::<(), proclist::ListError>(())
//! ```

use std::fmt;
use std::time::Instant;

use shmem::sync::{AtomicU32, Ordering};
use thiserror::Error;

use crate::lock::{LockError, LockGuard, ShmLock};

/// A link word of a node in no list (both of its words hold it).
pub const NOT_LISTED: u32 = 0;

/// A link word of a node that is first (`prev`) or last (`next`) in its
/// list.
pub const END: u32 = u32::MAX;

/// The links of one node: where it sits in the list it is in, if any.
///
/// `#[repr(C)]`, 8 bytes, all-zero is "in no list". See the module docs for
/// the encoding.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ListLink {
    /// [`NOT_LISTED`], [`END`] (first in its list) or the previous node's
    /// index plus one.
    prev: AtomicU32,
    /// [`NOT_LISTED`], [`END`] (last in its list) or the next node's index
    /// plus one.
    next: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ListLink>() == 8);
    assert!(std::mem::align_of::<ListLink>() == 4);
};

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of two AtomicU32: any bits are a valid value (and are
// checked before use), no pointers, all mutation is atomic.
unsafe impl shmem::ShmSafe for ListLink {}

impl ListLink {
    /// A link in no list, like all-zero bytes.
    pub fn new() -> Self {
        Self {
            prev: AtomicU32::new(NOT_LISTED),
            next: AtomicU32::new(NOT_LISTED),
        }
    }

    /// Whether the node is in a list, as a snapshot taken without the lock:
    /// for diagnostics only, stale as soon as it returns. Use
    /// [`LockedList::contains`] for an answer that holds.
    pub fn is_listed(&self) -> bool {
        // Relaxed: a diagnostic snapshot; nothing is read through it.
        self.next.load(Ordering::Relaxed) != NOT_LISTED
    }
}

/// Something that can be linked into a [`ProcList`]: a node exposes its
/// link. A process slot implements it with the link it reserves for one
/// family of lists.
pub trait ListNode {
    /// This node's link.
    fn link(&self) -> &ListLink;
}

impl ListNode for ListLink {
    fn link(&self) -> &ListLink {
        self
    }
}

/// The head of one list: its lock and its two ends.
///
/// `#[repr(C)]`, 16 bytes, all-zero is an empty, unlocked list. The lock is
/// contended by every process using the list: give a busy list its own
/// cache line (a segment region of its own does that).
#[repr(C)]
#[derive(Debug, Default)]
pub struct ListHead {
    /// Protects `head`, `tail` and the links of the nodes in this list.
    lock: ShmLock,
    /// 0 (empty) or the first node's index plus one.
    head: AtomicU32,
    /// 0 (empty) or the last node's index plus one.
    tail: AtomicU32,
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<ListHead>() == 16);
    assert!(std::mem::align_of::<ListHead>() == 4);
};

#[cfg(not(loom))]
// SAFETY: #[repr(C)] of a ShmLock (ShmSafe) and two AtomicU32: any bits are
// a valid value (and are checked before use), no pointers, all mutation is
// atomic.
unsafe impl shmem::ShmSafe for ListHead {}

impl ListHead {
    /// An empty, unlocked list, like all-zero bytes.
    pub fn new() -> Self {
        Self {
            lock: ShmLock::new(),
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
        }
    }

    /// The pid holding this list's lock, if any; see [`ShmLock::holder`].
    pub fn lock_holder(&self) -> Option<u32> {
        self.lock.holder()
    }

    /// Whether this list's lock is held (a snapshot).
    pub fn is_locked(&self) -> bool {
        self.lock.is_locked()
    }
}

/// A word of a [`ListHead`] or [`ListLink`], for error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListField {
    /// The list's `head`.
    Head,
    /// The list's `tail`.
    Tail,
    /// The `prev` link of this node.
    Prev(u32),
    /// The `next` link of this node.
    Next(u32),
}

impl fmt::Display for ListField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Head => f.write_str("the list head"),
            Self::Tail => f.write_str("the list tail"),
            Self::Prev(i) => write!(f, "the prev link of node {i}"),
            Self::Next(i) => write!(f, "the next link of node {i}"),
        }
    }
}

/// Why a list operation failed.
#[derive(Debug, Error)]
pub enum ListError {
    /// The caller named a node the list does not have.
    #[error("node {index} is out of range: the list has {len} nodes")]
    OutOfRange {
        /// The index given.
        index: u32,
        /// The number of nodes.
        len: u32,
    },
    /// The caller tried to insert a node that is already in a list.
    #[error("node {index} is already in a list; remove it first")]
    AlreadyListed {
        /// The node.
        index: u32,
    },
    /// A word of the list holds a value that is out of range or disagrees
    /// with its neighbour, or a walk did not end: shared memory was
    /// overwritten, or a node was used with two lists of one family.
    #[error(
        "list is corrupt: {field} holds {value:#x}, which is out of range or disagrees with its neighbour; the segment needs a reset"
    )]
    Corrupt {
        /// Where the bad value was found.
        field: ListField,
        /// The value found there.
        value: u32,
    },
    /// Taking the list's lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
}

/// Reads a list word.
#[inline(always)]
fn get(word: &AtomicU32) -> u32 {
    // Relaxed: list words are only accessed under the list's lock, whose
    // Acquire (taking) and Release (releasing) in lock.rs order them.
    word.load(Ordering::Relaxed)
}

/// Writes a list word.
#[inline(always)]
fn put(word: &AtomicU32, value: u32) {
    // Relaxed: as in `get`.
    word.store(value, Ordering::Relaxed)
}

/// A view of one list: its head and the nodes it may link.
///
/// Every process builds the same view over the same segment regions; the
/// view itself holds no state.
pub struct ProcList<'a, N> {
    head: &'a ListHead,
    nodes: &'a [N],
}

impl<N> Clone for ProcList<'_, N> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<N> Copy for ProcList<'_, N> {}

impl<'a, N: ListNode> ProcList<'a, N> {
    /// A view of the list at `head` over `nodes`; node `i` is `nodes[i]`.
    ///
    /// # Panics
    ///
    /// If there are `u32::MAX` or more nodes (the encoding needs [`END`]).
    pub fn new(head: &'a ListHead, nodes: &'a [N]) -> Self {
        assert!(
            nodes.len() < u32::MAX as usize,
            "too many nodes for one list"
        );
        Self { head, nodes }
    }

    /// The number of nodes the list may link.
    pub fn capacity(&self) -> u32 {
        self.nodes.len() as u32
    }

    /// The nodes the list may link.
    pub fn nodes(&self) -> &'a [N] {
        self.nodes
    }

    /// Takes the list's lock, sleeping as long as it takes (not for the
    /// postmaster; see [`ShmLock`]).
    pub fn lock(&self) -> Result<LockedList<'a, N>, ListError> {
        let guard = self.head.lock.lock()?;
        Ok(LockedList {
            list: *self,
            _guard: guard,
        })
    }

    /// Takes the list's lock if it is free; `Ok(None)` if it is held.
    pub fn try_lock(&self) -> Result<Option<LockedList<'a, N>>, ListError> {
        Ok(self.head.lock.try_lock()?.map(|guard| LockedList {
            list: *self,
            _guard: guard,
        }))
    }

    /// Takes the list's lock, or fails with [`LockError::TimedOut`] once
    /// `deadline` has passed.
    pub fn lock_until(&self, deadline: Instant) -> Result<LockedList<'a, N>, ListError> {
        let guard = self.head.lock.lock_until(deadline)?;
        Ok(LockedList {
            list: *self,
            _guard: guard,
        })
    }

    fn link(&self, index: u32) -> Result<&'a ListLink, ListError> {
        match self.nodes.get(index as usize) {
            Some(node) => Ok(node.link()),
            None => Err(ListError::OutOfRange {
                index,
                len: self.capacity(),
            }),
        }
    }

    /// Decodes `head` or `tail`: `None` for an empty list.
    fn end_word(&self, field: ListField, value: u32) -> Result<Option<u32>, ListError> {
        match value {
            0 => Ok(None),
            v if v - 1 < self.capacity() => Ok(Some(v - 1)),
            value => Err(ListError::Corrupt { field, value }),
        }
    }

    /// Decodes the `prev` or `next` link of a node known to be listed:
    /// `None` for [`END`].
    fn link_word(&self, field: ListField, value: u32) -> Result<Option<u32>, ListError> {
        match value {
            END => Ok(None),
            v if v != NOT_LISTED && v - 1 < self.capacity() => Ok(Some(v - 1)),
            value => Err(ListError::Corrupt { field, value }),
        }
    }
}

/// A list whose lock is held; every operation goes through one. Dropping it
/// releases the lock.
#[must_use = "the list's lock is released as soon as this is dropped"]
pub struct LockedList<'a, N> {
    list: ProcList<'a, N>,
    _guard: LockGuard<'a>,
}

impl<'a, N: ListNode> LockedList<'a, N> {
    /// Appends node `index`, which must be in no list.
    pub fn push_tail(&self, index: u32) -> Result<(), ListError> {
        let link = self.unlisted(index)?;
        let (first, last) = self.ends()?;
        match last {
            None => {
                put(&link.prev, END);
                put(&link.next, END);
                put(&self.list.head.head, index + 1);
            }
            Some(last) => {
                let last_link = self.list.link(last)?;
                let after_last = get(&last_link.next);
                if after_last != END {
                    return Err(ListError::Corrupt {
                        field: ListField::Next(last),
                        value: after_last,
                    });
                }
                debug_assert!(first.is_some());
                put(&link.prev, last + 1);
                put(&link.next, END);
                put(&last_link.next, index + 1);
            }
        }
        put(&self.list.head.tail, index + 1);
        Ok(())
    }

    /// Prepends node `index`, which must be in no list.
    pub fn push_head(&self, index: u32) -> Result<(), ListError> {
        let link = self.unlisted(index)?;
        let (first, _) = self.ends()?;
        match first {
            None => {
                put(&link.prev, END);
                put(&link.next, END);
                put(&self.list.head.tail, index + 1);
            }
            Some(first) => {
                let first_link = self.list.link(first)?;
                let before_first = get(&first_link.prev);
                if before_first != END {
                    return Err(ListError::Corrupt {
                        field: ListField::Prev(first),
                        value: before_first,
                    });
                }
                put(&link.prev, END);
                put(&link.next, first + 1);
                put(&first_link.prev, index + 1);
            }
        }
        put(&self.list.head.head, index + 1);
        Ok(())
    }

    /// Unlinks node `index`; `Ok(false)` if it was in no list.
    pub fn remove(&self, index: u32) -> Result<bool, ListError> {
        let link = self.list.link(index)?;
        let Some((before, after)) = self.neighbours(index, link)? else {
            return Ok(false);
        };
        // The encoded neighbours are END or index + 1 in both the links and
        // (with 0 for "none") in head/tail, so they are copied across as-is
        // except where an end of the list becomes empty.
        let encode = |n: Option<u32>| n.map_or(END, |i| i + 1);
        match before {
            None => put(&self.list.head.head, after.map_or(0, |i| i + 1)),
            Some(b) => put(&self.list.link(b)?.next, encode(after)),
        }
        match after {
            None => put(&self.list.head.tail, before.map_or(0, |i| i + 1)),
            Some(a) => put(&self.list.link(a)?.prev, encode(before)),
        }
        put(&link.prev, NOT_LISTED);
        put(&link.next, NOT_LISTED);
        Ok(true)
    }

    /// Unlinks and returns the first node, if any.
    pub fn pop_head(&self) -> Result<Option<u32>, ListError> {
        let (first, _) = self.ends()?;
        let Some(first) = first else {
            return Ok(None);
        };
        if self.remove(first)? {
            Ok(Some(first))
        } else {
            // The head names a node whose links say it is in no list.
            Err(ListError::Corrupt {
                field: ListField::Head,
                value: first + 1,
            })
        }
    }

    /// Whether node `index` is in this list (see the module docs for the
    /// one case of another list of the same family it cannot tell apart).
    pub fn contains(&self, index: u32) -> Result<bool, ListError> {
        let link = self.list.link(index)?;
        Ok(self.neighbours(index, link)?.is_some())
    }

    /// The first node, if any.
    pub fn first(&self) -> Result<Option<u32>, ListError> {
        Ok(self.ends()?.0)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool, ListError> {
        Ok(self.ends()?.0.is_none())
    }

    /// The nodes from first to last. Each step checks the node's back link;
    /// a corrupt list yields one `Err` and ends. At most one step per node.
    pub fn iter(&self) -> Iter<'_, 'a, N> {
        let cursor = match self.ends() {
            Ok((Some(first), _)) => Cursor::At {
                node: first,
                prev: END,
            },
            Ok((None, _)) => Cursor::Done,
            Err(e) => Cursor::Failed(e),
        };
        Iter {
            list: &self.list,
            cursor,
            steps: 0,
        }
    }

    /// Walks the list forwards and backwards, checking every link and that
    /// both walks meet the ends and count the same nodes; returns the count.
    pub fn verify(&self) -> Result<u32, ListError> {
        let mut forward = 0;
        for node in self.iter() {
            node?;
            forward += 1;
        }
        let (_, last) = self.ends()?;
        let mut backward = 0;
        let mut cursor = last;
        let mut expect_next = END;
        while let Some(node) = cursor {
            backward += 1;
            if backward > self.list.capacity() {
                return Err(ListError::Corrupt {
                    field: ListField::Prev(node),
                    value: get(&self.list.link(node)?.prev),
                });
            }
            let link = self.list.link(node)?;
            let next = get(&link.next);
            if next != expect_next {
                return Err(ListError::Corrupt {
                    field: ListField::Next(node),
                    value: next,
                });
            }
            cursor = self
                .list
                .link_word(ListField::Prev(node), get(&link.prev))?;
            expect_next = node + 1;
        }
        if forward != backward {
            return Err(ListError::Corrupt {
                field: ListField::Tail,
                value: get(&self.list.head.tail),
            });
        }
        Ok(forward)
    }

    /// The first and last nodes, checked to be both present or both absent.
    fn ends(&self) -> Result<(Option<u32>, Option<u32>), ListError> {
        let head = get(&self.list.head.head);
        let tail = get(&self.list.head.tail);
        let first = self.list.end_word(ListField::Head, head)?;
        let last = self.list.end_word(ListField::Tail, tail)?;
        if first.is_some() != last.is_some() {
            let (field, value) = if first.is_some() {
                (ListField::Head, head)
            } else {
                (ListField::Tail, tail)
            };
            return Err(ListError::Corrupt { field, value });
        }
        Ok((first, last))
    }

    /// The link of node `index`, checked to be in no list.
    fn unlisted(&self, index: u32) -> Result<&'a ListLink, ListError> {
        let link = self.list.link(index)?;
        let prev = get(&link.prev);
        let next = get(&link.next);
        match (prev, next) {
            (NOT_LISTED, NOT_LISTED) => Ok(link),
            (NOT_LISTED, value) => Err(ListError::Corrupt {
                field: ListField::Next(index),
                value,
            }),
            (value, NOT_LISTED) => Err(ListError::Corrupt {
                field: ListField::Prev(index),
                value,
            }),
            _ => Err(ListError::AlreadyListed { index }),
        }
    }

    /// `None` if node `index` is in no list; otherwise its neighbours
    /// (`None` for an end), each checked to point back at it.
    #[allow(clippy::type_complexity)]
    fn neighbours(
        &self,
        index: u32,
        link: &ListLink,
    ) -> Result<Option<(Option<u32>, Option<u32>)>, ListError> {
        let prev = get(&link.prev);
        let next = get(&link.next);
        if prev == NOT_LISTED && next == NOT_LISTED {
            return Ok(None);
        }
        let me = index + 1;
        let before = self.list.link_word(ListField::Prev(index), prev)?;
        let after = self.list.link_word(ListField::Next(index), next)?;
        // A node cannot neighbour itself, and in a list without cycles its
        // two neighbours are different nodes.
        if before == Some(index) || (before.is_some() && before == after) {
            return Err(ListError::Corrupt {
                field: ListField::Prev(index),
                value: prev,
            });
        }
        if after == Some(index) {
            return Err(ListError::Corrupt {
                field: ListField::Next(index),
                value: next,
            });
        }
        let (back_field, back) = match before {
            None => (ListField::Head, get(&self.list.head.head)),
            Some(b) => (ListField::Next(b), get(&self.list.link(b)?.next)),
        };
        if back != me {
            return Err(ListError::Corrupt {
                field: back_field,
                value: back,
            });
        }
        let (back_field, back) = match after {
            None => (ListField::Tail, get(&self.list.head.tail)),
            Some(a) => (ListField::Prev(a), get(&self.list.link(a)?.prev)),
        };
        if back != me {
            return Err(ListError::Corrupt {
                field: back_field,
                value: back,
            });
        }
        Ok(Some((before, after)))
    }
}

enum Cursor {
    /// About to yield `node`, whose `prev` must read `prev`.
    At { node: u32, prev: u32 },
    /// Found corruption; yield it, then stop.
    Failed(ListError),
    /// Finished.
    Done,
}

/// Iterator over a locked list, from [`LockedList::iter`].
pub struct Iter<'l, 'a, N> {
    list: &'l ProcList<'a, N>,
    cursor: Cursor,
    steps: u32,
}

impl<N: ListNode> Iterator for Iter<'_, '_, N> {
    type Item = Result<u32, ListError>;

    fn next(&mut self) -> Option<Self::Item> {
        match std::mem::replace(&mut self.cursor, Cursor::Done) {
            Cursor::Done => None,
            Cursor::Failed(e) => Some(Err(e)),
            Cursor::At { node, prev } => {
                self.steps += 1;
                match self.step(node, prev) {
                    Ok(next) => {
                        self.cursor = next;
                        Some(Ok(node))
                    }
                    Err(e) => Some(Err(e)),
                }
            }
        }
    }
}

impl<N: ListNode> Iter<'_, '_, N> {
    /// Checks `node` and finds the cursor after it.
    fn step(&self, node: u32, expect_prev: u32) -> Result<Cursor, ListError> {
        let link = self.list.link(node)?;
        let prev = get(&link.prev);
        if prev != expect_prev {
            return Err(ListError::Corrupt {
                field: ListField::Prev(node),
                value: prev,
            });
        }
        let next = get(&link.next);
        match self.list.link_word(ListField::Next(node), next)? {
            None => {
                let tail = get(&self.list.head.tail);
                if tail != node + 1 {
                    return Err(ListError::Corrupt {
                        field: ListField::Tail,
                        value: tail,
                    });
                }
                Ok(Cursor::Done)
            }
            // More steps than nodes: the links form a cycle.
            Some(_) if self.steps >= self.list.capacity() => Err(ListError::Corrupt {
                field: ListField::Next(node),
                value: next,
            }),
            Some(after) => Ok(Cursor::At {
                node: after,
                prev: node + 1,
            }),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<ListLink> {
        (0..n).map(|_| ListLink::new()).collect()
    }

    fn contents<N: ListNode>(l: &LockedList<'_, N>) -> Vec<u32> {
        l.iter().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn zeroed_list_is_empty_and_nodes_unlisted() {
        let head = ListHead::new();
        let nodes = nodes(3);
        let list = ProcList::new(&head, &nodes);
        let l = list.lock().unwrap();
        assert!(l.is_empty().unwrap());
        assert_eq!(l.pop_head().unwrap(), None);
        assert_eq!(l.verify().unwrap(), 0);
        for i in 0..3 {
            assert!(!l.contains(i).unwrap());
            assert!(!l.remove(i).unwrap());
        }
    }

    #[test]
    fn pushes_pops_and_removes_keep_order_and_links() {
        let head = ListHead::new();
        let nodes = nodes(5);
        let list = ProcList::new(&head, &nodes);
        let l = list.lock().unwrap();
        l.push_tail(1).unwrap();
        l.push_tail(3).unwrap();
        l.push_head(0).unwrap();
        l.push_tail(4).unwrap();
        assert_eq!(contents(&l), [0, 1, 3, 4]);
        assert_eq!(l.verify().unwrap(), 4);
        // Middle, last, first.
        assert!(l.remove(3).unwrap());
        assert_eq!(contents(&l), [0, 1, 4]);
        assert!(l.remove(4).unwrap());
        assert_eq!(contents(&l), [0, 1]);
        assert_eq!(l.pop_head().unwrap(), Some(0));
        assert_eq!(contents(&l), [1]);
        assert_eq!(l.verify().unwrap(), 1);
        assert!(l.contains(1).unwrap());
        assert!(!l.contains(0).unwrap());
        assert!(nodes[1].is_listed());
        assert!(!nodes[0].is_listed());
        assert!(l.remove(1).unwrap());
        assert!(l.is_empty().unwrap());
        // All words back to zero: the list is as if freshly zeroed.
        for n in &nodes {
            assert_eq!(get(&n.prev), 0);
            assert_eq!(get(&n.next), 0);
        }
        assert_eq!((get(&head.head), get(&head.tail)), (0, 0));
    }

    #[test]
    fn caller_errors_are_typed() {
        let head = ListHead::new();
        let nodes = nodes(2);
        let list = ProcList::new(&head, &nodes);
        let l = list.lock().unwrap();
        assert!(matches!(
            l.push_tail(2),
            Err(ListError::OutOfRange { index: 2, len: 2 })
        ));
        assert!(matches!(l.remove(9), Err(ListError::OutOfRange { .. })));
        l.push_tail(0).unwrap();
        assert!(matches!(
            l.push_tail(0),
            Err(ListError::AlreadyListed { index: 0 })
        ));
        assert!(matches!(
            l.push_head(0),
            Err(ListError::AlreadyListed { index: 0 })
        ));
    }

    #[test]
    fn the_lock_is_held_by_a_locked_list_only() {
        let head = ListHead::new();
        let nodes = nodes(1);
        let list = ProcList::new(&head, &nodes);
        let l = list.lock().unwrap();
        assert!(head.is_locked());
        assert_eq!(head.lock_holder(), Some(std::process::id()));
        assert!(list.try_lock().unwrap().is_none());
        drop(l);
        assert!(list.try_lock().unwrap().is_some());
    }

    /// Every kind of damage a scribbling process could do gives `Corrupt`,
    /// never a panic or an endless walk.
    #[test]
    fn corrupt_words_are_errors_not_panics_or_hangs() {
        let head = ListHead::new();
        let nodes = nodes(3);
        let list = ProcList::new(&head, &nodes);
        let corrupt = |r: Result<_, ListError>| matches!(r, Err(ListError::Corrupt { .. }));

        // Head out of range.
        put(&head.head, 9);
        put(&head.tail, 1);
        {
            let l = list.lock().unwrap();
            assert!(corrupt(l.pop_head().map(|_| ())));
            assert!(corrupt(l.push_tail(1)));
            assert!(corrupt(l.verify().map(|_| ())));
            assert!(l.iter().any(|r| r.is_err()));
        }
        // Head without tail.
        put(&head.head, 1);
        put(&head.tail, 0);
        assert!(corrupt(list.lock().unwrap().is_empty().map(|_| ())));

        // A cycle 0 -> 1 -> 0 with consistent back links.
        put(&head.head, 1);
        put(&head.tail, 2);
        put(&nodes[0].prev, END);
        put(&nodes[0].next, 2);
        put(&nodes[1].prev, 1);
        put(&nodes[1].next, 1);
        {
            let l = list.lock().unwrap();
            let walked: Vec<_> = l.iter().collect();
            assert!(walked.len() <= 3, "walk did not stop: {walked:?}");
            assert!(walked.last().unwrap().is_err());
            assert!(corrupt(l.verify().map(|_| ())));
            // Node 1 names 0 as both neighbours.
            assert!(corrupt(l.remove(1).map(|_| ())));
        }

        // A self-loop.
        put(&nodes[1].prev, 2);
        put(&nodes[1].next, 2);
        assert!(corrupt(list.lock().unwrap().contains(1).map(|_| ())));

        // Half a link.
        put(&nodes[2].prev, 0);
        put(&nodes[2].next, 1);
        {
            let l = list.lock().unwrap();
            assert!(corrupt(l.push_tail(2)));
            assert!(corrupt(l.remove(2).map(|_| ())));
        }

        // A node that claims to be first in a list whose head is another
        // node (e.g. first in another list of the family).
        put(&head.head, 1);
        put(&head.tail, 1);
        put(&nodes[0].prev, END);
        put(&nodes[0].next, END);
        put(&nodes[2].prev, END);
        put(&nodes[2].next, END);
        {
            let l = list.lock().unwrap();
            assert!(corrupt(l.remove(2).map(|_| ())));
            // Nothing was written by the failed remove.
            assert_eq!(contents(&l), [0]);
        }
    }

    /// Threads push and remove their own nodes under the lock; the list is
    /// consistent throughout and empty at the end.
    #[test]
    fn threads_keep_the_list_consistent() {
        use std::sync::Barrier;
        const THREADS: u32 = 4;
        const PER_THREAD: u32 = 4;
        const ROUNDS: u32 = 2_000;
        let head = ListHead::new();
        let nodes = nodes((THREADS * PER_THREAD) as usize);
        let list = ProcList::new(&head, &nodes);
        let barrier = Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let mine = t * PER_THREAD..(t + 1) * PER_THREAD;
                    for round in 0..ROUNDS {
                        let l = list.lock().unwrap();
                        for i in mine.clone() {
                            if (round + i) % 3 == 0 {
                                l.remove(i).unwrap();
                                assert!(!l.contains(i).unwrap());
                            } else if !l.contains(i).unwrap() {
                                if i % 2 == 0 {
                                    l.push_head(i).unwrap();
                                } else {
                                    l.push_tail(i).unwrap();
                                }
                            }
                        }
                        let n = l.verify().unwrap();
                        assert!(n <= THREADS * PER_THREAD);
                    }
                    let l = list.lock().unwrap();
                    for i in mine {
                        l.remove(i).unwrap();
                    }
                });
            }
        });
        let l = list.lock().unwrap();
        assert_eq!(l.verify().unwrap(), 0);
    }
}
