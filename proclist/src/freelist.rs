//! A lock-free free list of slot indices: a Treiber stack whose head word
//! packs an ABA tag with the top index.
//!
//! # Protocol
//!
//! Shared state, all in the segment:
//!
//! - `head`: one `u64`, decoded through [`Head`]: the low 32 bits are the top
//!   of the stack as *index + 1* (0 = empty, so an all-zero list is a valid
//!   empty one), the high 32 bits a tag bumped by every successful change.
//! - `links[i * stride]`: the entry below slot `i` while `i` is on the
//!   stack, in the same +1 encoding (the stride, 1 or a cache line's worth
//!   of cells, keeps slots' links apart; see [`FreeList::strided`]). Written
//!   only by the process pushing `i`, before the push is published.
//!
//! A failed CAS is retried after a short exponential back-off
//! ([`BACKOFF_MAX_SPINS`]).
//!
//! Who may do what: any process may [`pop`](FreeList::pop) (take a slot it
//! then owns) and [`push`](FreeList::push) a slot **it owns** (giving it up).
//! A slot is thus always in exactly one of {on the stack, owned by one
//! process}; pushing a slot you do not own breaks that and is a bug the
//! callers in this crate rule out by construction.
//!
//! Orderings: `push` writes the link, then publishes it with a release CAS
//! on `head`; `pop` loads `head` with acquire (pairing with that release), so
//! the link it reads is the one written before the push, and whatever the
//! previous owner wrote into the slot before giving it up is visible to the
//! next owner.
//!
//! The ABA problem: a popper reads top `a` and its link `b`, then stalls;
//! meanwhile others pop `a`, pop `b`, push `a` back. The head shows top `a`
//! again but `b` is now owned. Without the tag the stalled CAS would succeed
//! and hand `b` to a second owner; with it, the head word differs (the tag
//! moved on three times) and the CAS fails. A 32-bit tag can only be fooled
//! by a popper stalled across exactly 2^32 changes of one list.
//!
//! Shared memory is untrusted: an index read from `head` or `links` is
//! checked against the list's length, and every retry loop is bounded, so a
//! process that scribbles over a list gets [`FreeListError`], never an
//! out-of-bounds access or a hang.
//!
//! # Hinted pops
//!
//! A pop's CAS takes its operands from two loads, the head and then the
//! top's link, and on x86 a locked instruction whose operands come from
//! loads issued after the previous locked instruction waits for them: in
//! a take-and-give-back loop that chain, not the two CASes, is most of the
//! cost. A push knows both values the next pop will need (the head word it
//! installed and the link it wrote), so it returns them as a [`PopHint`].
//! [`pop_hinted`](FreeList::pop_hinted) still loads the head and the link,
//! but only compares them with the hint; the CAS is issued with the hint's
//! values, which are in registers, and the comparisons are branches the
//! CPU predicts. When both match, the CAS has exactly the operands an
//! unhinted pop would have given it, so the algorithm and its ABA argument
//! are unchanged; when either differs (someone else used the list since),
//! the pop goes on as an unhinted one with what it loaded.
//!
//! A hint is not tied to a list: a foreign hint passes both comparisons
//! only where it predicts this list's own head and link, which is all the
//! CAS needs.
//!
//! A push needs no load at all when it can guess the head word (the one
//! the slot's own pop left, if nobody used the list since): it writes the
//! guess's top as its link and issues the CAS on the guess, which checks
//! the guess as it acts (see [`Place::push_guessed`]).
//!
//! The fallbacks (a wrong hint or guess, a lost race) are kept out of line,
//! so that what a caller inlines is the predicted path alone; a caller
//! that must not merge the fallback's result with the hot one (a merge
//! LLVM may route through the stack, where a wide reload of narrow stores
//! stalls on store forwarding) uses [`FreeList::pop_guessed`] and
//! [`Place::push_guessed`], which make one attempt and say whether it
//! worked. A [`Place`] is what such a caller keeps between the two: the
//! slot's link and the list's head, three words where the list view is
//! five.
//!
//! This is R. K. Treiber's stack (IBM RJ 5118, 1986) with the version tag
//! IBM's System/370 documentation gives for the same problem.

use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

/// How many times a `pop` or `push` retries a failed CAS before it gives up
/// with [`FreeListError::Contended`]. Each failure means another process
/// succeeded, so the list as a whole makes progress; the bound only keeps a
/// process that rewrites the head in a loop from stalling us forever.
pub const MAX_ATTEMPTS: u32 = 1 << 20;

/// The decoded head word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// Bumped by every successful push and pop.
    pub tag: u32,
    /// Index of the top slot plus one; 0 means empty.
    pub top: u32,
}

impl Head {
    /// Unpacks a head word.
    #[inline]
    pub fn decode(word: u64) -> Self {
        Self {
            tag: (word >> 32) as u32,
            top: word as u32,
        }
    }

    /// Packs a head word.
    #[inline]
    pub fn encode(self) -> u64 {
        (u64::from(self.tag) << 32) | u64::from(self.top)
    }
}

/// What [`FreeList::pop_observed`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Popped {
    /// The caller now owns slot `index` (index within the list).
    Slot {
        /// The slot.
        index: u32,
        /// The head word the pop left: the guess to give
        /// [`FreeList::push_hinted`] when the slot goes back.
        head: u64,
    },
    /// The list was empty; the head word (tag included) it was read from.
    Empty(u64),
}

/// What a push left on a list: enough for the same thread's next pop there
/// to issue its CAS without waiting for loads (see the module docs). A hint
/// is only ever compared with what is in shared memory, never trusted, so a
/// stale or foreign one costs a missed prediction and nothing else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PopHint {
    /// The head word the push installed.
    word: u64,
    /// The link it wrote under the pushed slot (+1 encoded).
    below: u32,
}

impl PopHint {
    /// No hint: the pop loads everything it needs.
    pub const NONE: Self = Self { word: 0, below: 0 };
}

/// How many pause instructions the first retry after a failed CAS waits;
/// each further failure doubles it, up to [`BACKOFF_MAX_SPINS`].
pub const BACKOFF_FIRST_SPINS: u32 = 1;

/// The most pause instructions one retry waits. A failed CAS means another
/// process just changed the head and probably holds its cache line; letting
/// it finish its next operation costs less than stealing the line back at
/// once (crossbeam's `Backoff::spin` makes the same trade). Kept short: a
/// free-list operation is a few dozen nanoseconds, so a longer wait only
/// idles. There is no blocking stage: the list is lock-free, and a process
/// that is preempted holds nothing anyone waits for.
pub const BACKOFF_MAX_SPINS: u32 = 64;

/// Exponential back-off between CAS retries (see [`BACKOFF_MAX_SPINS`]).
/// Under loom it does nothing: a pause is not an event the model schedules.
struct Backoff {
    spins: u32,
}

impl Backoff {
    #[inline]
    fn new() -> Self {
        Self {
            spins: BACKOFF_FIRST_SPINS,
        }
    }

    #[inline]
    fn spin(&mut self) {
        #[cfg(not(loom))]
        for _ in 0..self.spins {
            shmem::sync::spin_loop();
        }
        self.spins = (self.spins * 2).min(BACKOFF_MAX_SPINS);
    }
}

/// Why a free-list operation failed.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FreeListError {
    /// The list holds an index outside its range: shared memory was
    /// overwritten. Reset the segment.
    #[error("free list is corrupt: it names slot {index} of {len}; the segment needs a reset")]
    Corrupt {
        /// The index found (already decoded, minus one).
        index: u32,
        /// The number of slots the list manages.
        len: u32,
    },
    /// Every attempt lost a race; see [`MAX_ATTEMPTS`].
    #[error(
        "free list stayed contended for {MAX_ATTEMPTS} attempts; another process may be rewriting it"
    )]
    Contended,
}

/// A view of one free list: its head word and one link per slot it manages.
#[derive(Clone, Copy)]
pub struct FreeList<'a> {
    head: &'a AtomicU64,
    /// Slot `i`'s link is `links[i * stride]`; the cells between are
    /// padding that keeps each link on its own cache line.
    links: &'a [AtomicU32],
    stride: u32,
    capacity: u32,
}

impl<'a> FreeList<'a> {
    /// A view over `head` and `links`; slot `i` of the list is `links[i]`.
    /// An all-zero head is an empty list.
    ///
    /// # Panics
    ///
    /// If there are `u32::MAX` or more links (the +1 encoding needs one value).
    #[inline]
    pub fn new(head: &'a AtomicU64, links: &'a [AtomicU32]) -> Self {
        Self::strided(head, links, 1)
    }

    /// A view over `head` and `links` where slot `i`'s link is
    /// `links[i * stride]`, so that with a stride of a cache line no two
    /// slots' links share a line (a process pushing its slot then does not
    /// steal the line from one popping another). The list manages
    /// `links.len() / stride` slots.
    ///
    /// # Panics
    ///
    /// If `stride` is 0, or the list would manage `u32::MAX` or more slots.
    #[inline]
    pub fn strided(head: &'a AtomicU64, links: &'a [AtomicU32], stride: u32) -> Self {
        assert!(stride > 0, "a free list's link stride must be positive");
        let capacity = links.len() / stride as usize;
        assert!(
            capacity < u32::MAX as usize,
            "too many slots for one free list"
        );
        Self {
            head,
            links,
            stride,
            capacity: capacity as u32,
        }
    }

    /// As [`strided`](Self::strided), for a caller that has already checked
    /// that `stride` is positive and that `links` holds `capacity` slots'
    /// links: the slot array, whose constructor checks its storage, and
    /// whose hot path should not repeat the checks on every take.
    #[inline]
    pub(crate) fn strided_checked(
        head: &'a AtomicU64,
        links: &'a [AtomicU32],
        stride: u32,
        capacity: u32,
    ) -> Self {
        debug_assert!(stride > 0 && links.len() / stride as usize == capacity as usize);
        Self {
            head,
            links,
            stride,
            capacity,
        }
    }

    /// The head word.
    #[inline]
    pub(crate) fn head(&self) -> &'a AtomicU64 {
        self.head
    }

    /// Number of slots the list manages (free or not).
    #[inline]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Slot `index`'s link. The caller has checked `index < capacity`, so
    /// `index * stride < links.len()` and the product cannot overflow.
    #[inline]
    fn link(&self, index: u32) -> &'a AtomicU32 {
        debug_assert!(index < self.capacity);
        &self.links[index as usize * self.stride as usize]
    }

    /// Puts every slot on the list, lowest index on top. Only for a list
    /// nobody else is using yet (segment creation or reset).
    pub fn fill(&self) {
        let n = self.capacity();
        for i in 0..n {
            // Entry below slot i is slot i+1, i.e. i+2 in the +1 encoding;
            // the last slot's link is 0, the bottom.
            let below = if i + 1 < n { i + 2 } else { 0 };
            // Relaxed: published by the release store of the head below.
            self.link(i).store(below, Ordering::Relaxed);
        }
        let top = if n > 0 { 1 } else { 0 };
        let tag = Head::decode(self.head.load(Ordering::Relaxed))
            .tag
            .wrapping_add(1);
        // Release: pairs with the acquire head load in pop_observed().
        self.head
            .store(Head { tag, top }.encode(), Ordering::Release);
    }

    /// Takes the top slot, if any. The caller owns the returned index until
    /// it pushes it back.
    #[inline]
    pub fn pop(&self) -> Result<Option<u32>, FreeListError> {
        Ok(match self.pop_observed()? {
            Popped::Slot { index, .. } => Some(index),
            Popped::Empty(_) => None,
        })
    }

    /// As [`pop`](Self::pop), but an empty answer carries the head word it
    /// was read from, tag included. Two reads of an empty head that return
    /// the same word bracket an interval in which the list stayed empty
    /// (every change bumps the tag), which lets a caller that scans several
    /// lists prove they were all empty at one moment (a double collect; see
    /// [`ProcArray::acquire`](crate::ProcArray::acquire)).
    #[inline]
    pub fn pop_observed(&self) -> Result<Popped, FreeListError> {
        // Acquire: as in pop_hinted().
        self.pop_from(self.head.load(Ordering::Acquire))
    }

    /// As [`pop_observed`](Self::pop_observed), predicting the head word and
    /// the top's link from `hint` (see the module docs).
    #[inline(always)]
    pub fn pop_hinted(&self, hint: PopHint) -> Result<Popped, FreeListError> {
        match self.pop_guessed(hint) {
            Some(popped) => Ok(popped),
            None => self.pop_missed(),
        }
    }

    /// The first attempt of [`pop_hinted`](Self::pop_hinted) alone: the
    /// slot, if `hint` predicted the head word and the top's link and the
    /// CAS won; `None` if a prediction was wrong or the CAS lost a race.
    /// The caller then pops with [`pop_observed`](Self::pop_observed),
    /// out of line if it likes (see [`Place::push_guessed`] for why it may
    /// want to).
    #[inline(always)]
    pub fn pop_guessed(&self, hint: PopHint) -> Option<Popped> {
        // Acquire: pairs with the release CAS in push() (and store in fill()),
        // so the link of the top slot is the one its pusher wrote.
        let word = self.head.load(Ordering::Acquire);
        let predicted = Head::decode(hint.word);
        let index = predicted.top.wrapping_sub(1);
        // The range checks are those pop_from() makes, on the hint's values,
        // which equal the loaded ones wherever they are used (`below` is +1
        // encoded: 0, none, up to the capacity).
        // Relaxed: ordered after the acquire head load, as in pop_from().
        if word == hint.word
            && index < self.capacity()
            && hint.below <= self.capacity()
            && self.link(index).load(Ordering::Relaxed) == hint.below
        {
            self.try_pop(predicted, hint.below).ok()
        } else {
            None
        }
    }

    /// [`pop_hinted`](Self::pop_hinted) when the hint was wrong.
    #[cold]
    #[inline(never)]
    fn pop_missed(&self) -> Result<Popped, FreeListError> {
        self.pop_observed()
    }

    /// The unhinted pop, starting from the head word `word`, loaded with
    /// acquire.
    #[inline]
    fn pop_from(&self, mut word: u64) -> Result<Popped, FreeListError> {
        let mut backoff = Backoff::new();
        for _ in 0..MAX_ATTEMPTS {
            let current = Head::decode(word);
            if current.top == 0 {
                return Ok(Popped::Empty(word));
            }
            let index = self.check(current.top)?;
            // Relaxed: ordered after the acquire load that produced `current`.
            // If the slot was popped and pushed again meanwhile, this value
            // may be stale, but then the tag has moved and the CAS fails.
            let below = self.link(index).load(Ordering::Relaxed);
            if below != 0 {
                self.check(below)?;
            }
            match self.try_pop(current, below) {
                Ok(popped) => return Ok(popped),
                Err(seen) => {
                    word = seen;
                    backoff.spin();
                }
            }
        }
        Err(FreeListError::Contended)
    }

    /// One attempt to pop `current.top` (non-zero, in range) with `below`
    /// (its link, in range or 0) becoming the top. On failure, the head word
    /// found instead, loaded with acquire.
    #[inline]
    fn try_pop(&self, current: Head, below: u32) -> Result<Popped, u64> {
        let next = Head {
            tag: current.tag.wrapping_add(1),
            top: below,
        };
        self.head
            .compare_exchange_weak(
                current.encode(),
                next.encode(),
                // Acquire on success: the slot's previous owner released it
                // with the push this head came from; we now see its writes.
                // Release on success too: whoever reads this head word must
                // also see what came before the pop, another list's push
                // say, or an exhaustion check could re-read that list's
                // head stale and take it for still empty (the loom model
                // `loom_a_push_during_the_scan_is_not_missed` in the array
                // finds that). Free on x86: a locked instruction is a full
                // barrier either way.
                // Acquire on failure: the caller retries with the new head
                // and reads its link, which its pusher published with release.
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| Popped::Slot {
                index: current.top - 1,
                head: next.encode(),
            })
    }

    /// Gives slot `index` back. The caller must own it (have popped it and
    /// not pushed it since); anything it wrote to the slot is visible to the
    /// slot's next owner.
    #[inline]
    pub fn push(&self, index: u32) -> Result<(), FreeListError> {
        self.place(index)?.push().map(|_| ())
    }

    /// As [`push`](Self::push), predicting the head word to be `guess`
    /// (typically the one the slot's own pop left, [`Popped::Slot`]'s
    /// `head`), and returning the hint for the calling thread's next
    /// [`pop_hinted`](Self::pop_hinted) on this list.
    #[inline(always)]
    pub fn push_hinted(&self, index: u32, guess: u64) -> Result<PopHint, FreeListError> {
        let place = self.place(index)?;
        match place.push_guessed(guess) {
            Some(hint) => Ok(hint),
            None => place.push_missed(),
        }
    }

    /// Slot `index`'s place on the list: what pushing it needs, worked out
    /// once, e.g. when the slot is taken, for the push that gives it back.
    #[inline]
    pub fn place(&self, index: u32) -> Result<Place<'a>, FreeListError> {
        self.check_owned(index)?;
        Ok(self.place_taken(index))
    }

    /// [`place`](Self::place) for a slot this list's pop just returned,
    /// which is in range.
    #[inline]
    pub(crate) fn place_taken(&self, index: u32) -> Place<'a> {
        Place {
            head: self.head,
            link: self.link(index),
            top: index + 1,
        }
    }

    /// Checks that `index`, a slot the caller says it owns, is one of ours.
    #[inline]
    fn check_owned(&self, index: u32) -> Result<(), FreeListError> {
        if index < self.capacity() {
            Ok(())
        } else {
            Err(FreeListError::Corrupt {
                index,
                len: self.capacity(),
            })
        }
    }

    /// Decodes a +1-encoded index read from shared memory, checking range.
    #[inline]
    fn check(&self, encoded: u32) -> Result<u32, FreeListError> {
        let index = encoded.wrapping_sub(1);
        if index < self.capacity() {
            Ok(index)
        } else {
            Err(FreeListError::Corrupt {
                index,
                len: self.capacity(),
            })
        }
    }

    /// Counts the free slots by walking the list, at most `capacity` steps.
    /// Only meaningful while nobody pushes or pops (tests, status, after a
    /// crash); returns `Corrupt` for an out-of-range index or a cycle.
    pub fn count_quiescent(&self) -> Result<u32, FreeListError> {
        // Acquire: pairs with the Release head CAS of the last push, so the
        // links it published are visible to the walk below (whose Relaxed
        // loads rely on the list being quiescent).
        let mut top = Head::decode(self.head.load(Ordering::Acquire)).top;
        let mut n = 0;
        while top != 0 {
            let index = self.check(top)?;
            n += 1;
            if n > self.capacity() {
                return Err(FreeListError::Corrupt {
                    index,
                    len: self.capacity(),
                });
            }
            top = self.link(index).load(Ordering::Relaxed);
        }
        Ok(n)
    }
}

/// A slot's place on its free list: the list's head word, the slot's link
/// and the slot's +1-encoded index, checked once by [`FreeList::place`].
/// A taker that keeps its slot's place for the give-back carries three
/// words instead of the whole list view, and its push makes no range
/// check.
///
/// The caller must own the slot, as for [`FreeList::push`].
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    head: &'a AtomicU64,
    link: &'a AtomicU32,
    /// The slot's index + 1: what the head word holds with it on top.
    top: u32,
}

impl<'a> Place<'a> {
    /// The head word of the slot's list.
    #[cfg(test)]
    pub(crate) fn head(&self) -> &'a AtomicU64 {
        self.head
    }

    /// Gives the slot back, as [`FreeList::push`] does, returning the hint
    /// for the calling thread's next [`FreeList::pop_hinted`] on the list.
    #[inline]
    pub fn push(&self) -> Result<PopHint, FreeListError> {
        // Relaxed: the CAS validates the value; a stale one just fails.
        let mut seen = self.head.load(Ordering::Relaxed);
        let mut backoff = Backoff::new();
        for _ in 0..MAX_ATTEMPTS {
            match self.try_push(Head::decode(seen)) {
                Ok(hint) => return Ok(hint),
                Err(found) => {
                    seen = found;
                    backoff.spin();
                }
            }
        }
        Err(FreeListError::Contended)
    }

    /// One attempt to give the slot back onto the head word `guess`
    /// (typically the one the slot's own pop left, [`Popped::Slot`]'s
    /// `head`): the hint for the calling thread's next pop, or `None` if the
    /// head word is not `guess` or the CAS lost a race. The caller then
    /// pushes with [`push`](Self::push). Split out so that a hot caller can
    /// keep that retry out of line without merging its result with this
    /// one's through memory (LLVM may route such a merge through the stack,
    /// where a wide reload of narrow stores stalls on store forwarding).
    ///
    /// The CAS is issued on the guess without loading the head first: the
    /// link it writes under the slot is the guess's top, which is right
    /// exactly when the CAS succeeds, and the slot is still the caller's
    /// when it fails, so a wrong link is never published.
    #[inline(always)]
    pub fn push_guessed(&self, guess: u64) -> Option<PopHint> {
        self.try_push(Head::decode(guess)).ok()
    }

    /// [`push_guessed`](Self::push_guessed)'s retry, out of line.
    #[cold]
    #[inline(never)]
    fn push_missed(self) -> Result<PopHint, FreeListError> {
        self.push()
    }

    /// One attempt to push the slot onto `current`. On failure, the head
    /// word found instead.
    #[inline]
    fn try_push(&self, current: Head) -> Result<PopHint, u64> {
        // Relaxed: we own the slot, nobody else writes its link; the
        // release CAS below publishes it.
        self.link.store(current.top, Ordering::Relaxed);
        let next = Head {
            tag: current.tag.wrapping_add(1),
            top: self.top,
        };
        self.head
            .compare_exchange_weak(
                current.encode(),
                next.encode(),
                // Release: pairs with the acquire head loads of pops.
                // Relaxed on failure: the value only feeds the retry.
                Ordering::Release,
                Ordering::Relaxed,
            )
            .map(|_| PopHint {
                word: next.encode(),
                below: current.top,
            })
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn list(n: usize) -> (AtomicU64, Vec<AtomicU32>) {
        (
            AtomicU64::new(0),
            (0..n).map(|_| AtomicU32::new(0)).collect(),
        )
    }

    #[test]
    fn zeroed_list_is_empty_and_fill_makes_all_free() {
        let (head, links) = list(4);
        let fl = FreeList::new(&head, &links);
        assert_eq!(fl.pop(), Ok(None));
        fl.fill();
        assert_eq!(fl.count_quiescent(), Ok(4));
        let popped: Vec<_> = (0..4).map(|_| fl.pop().unwrap().unwrap()).collect();
        assert_eq!(popped, [0, 1, 2, 3]);
        assert_eq!(fl.pop(), Ok(None));
    }

    #[test]
    fn push_makes_a_slot_available_again_lifo() {
        let (head, links) = list(3);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let a = fl.pop().unwrap().unwrap();
        let b = fl.pop().unwrap().unwrap();
        fl.push(a).unwrap();
        assert_eq!(fl.pop(), Ok(Some(a)));
        fl.push(b).unwrap();
        fl.push(a).unwrap();
        assert_eq!(fl.count_quiescent(), Ok(3));
    }

    #[test]
    fn corrupt_heads_and_links_are_errors_not_panics() {
        let (head, links) = list(2);
        let fl = FreeList::new(&head, &links);
        head.store(Head { tag: 0, top: 9 }.encode(), Ordering::Relaxed);
        assert_eq!(fl.pop(), Err(FreeListError::Corrupt { index: 8, len: 2 }));
        head.store(Head { tag: 0, top: 1 }.encode(), Ordering::Relaxed);
        links[0].store(77, Ordering::Relaxed);
        assert!(matches!(fl.pop(), Err(FreeListError::Corrupt { .. })));
        // A cycle: 0 -> 1 -> 0.
        links[0].store(2, Ordering::Relaxed);
        links[1].store(1, Ordering::Relaxed);
        assert!(matches!(
            fl.count_quiescent(),
            Err(FreeListError::Corrupt { .. })
        ));
        assert!(matches!(
            fl.push(5),
            Err(FreeListError::Corrupt { index: 5, .. })
        ));
    }

    #[test]
    fn head_word_round_trips() {
        for h in [
            Head { tag: 0, top: 0 },
            Head {
                tag: u32::MAX,
                top: 1,
            },
            Head {
                tag: 7,
                top: u32::MAX,
            },
        ] {
            assert_eq!(Head::decode(h.encode()), h);
        }
    }

    /// The slots on the list, top first (for a quiescent list). Here and
    /// in the hint tests below, Relaxed loads and stores of the head and
    /// links are one thread's own accesses: nothing to pair with.
    fn contents(fl: &FreeList<'_>) -> Vec<u32> {
        let mut top = Head::decode(fl.head.load(Ordering::Relaxed)).top;
        let mut out = Vec::new();
        while top != 0 {
            out.push(top - 1);
            top = fl.link(top - 1).load(Ordering::Relaxed);
        }
        out
    }

    #[test]
    fn a_push_hint_predicts_the_next_pop_and_a_pop_the_next_push() {
        let (head, links) = list(3);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let Popped::Slot { index, head: left } = fl.pop_hinted(PopHint::NONE).unwrap() else {
            panic!("a full list popped nothing")
        };
        assert_eq!(
            left,
            head.load(Ordering::Relaxed),
            "the pop names the head it left"
        );
        let hint = fl.push_hinted(index, left).unwrap();
        assert_eq!(
            hint,
            PopHint {
                word: head.load(Ordering::Relaxed),
                below: 2,
            }
        );
        assert!(matches!(
            fl.pop_hinted(hint),
            Ok(Popped::Slot { index: 0, .. })
        ));
        assert_eq!(contents(&fl), [1, 2]);
    }

    /// A guessed push does nothing unless the guess is the head word; with
    /// it, it pushes like a plain push.
    #[test]
    fn a_guessed_push_acts_only_on_a_right_guess() {
        let (head, links) = list(3);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let Popped::Slot { index, head: left } = fl.pop_observed().unwrap() else {
            panic!("a full list popped nothing")
        };
        let place = fl.place(index).unwrap();
        assert_eq!(place.push_guessed(left ^ 1), None, "wrong guess");
        assert_eq!(contents(&fl), [1, 2], "not pushed");
        let hint = place.push_guessed(left).expect("right guess");
        assert_eq!(contents(&fl), [0, 1, 2]);
        assert_eq!(
            hint,
            PopHint {
                word: head.load(Ordering::Relaxed),
                below: 2,
            }
        );
    }

    /// A guessed push that missed wrote its guess's top as the slot's link;
    /// the slot was still the caller's, and the push that follows writes
    /// the right link before publishing it.
    #[test]
    fn a_missed_guess_leaves_no_wrong_link_behind() {
        let (head, links) = list(4);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let Popped::Slot {
            index: a,
            head: left,
        } = fl.pop_observed().unwrap()
        else {
            panic!("a full list popped nothing")
        };
        // Someone else pops meanwhile: the guess is now stale.
        let b = fl.pop().unwrap().unwrap();
        let place = fl.place(a).unwrap();
        assert_eq!(place.push_guessed(left), None);
        assert_eq!(contents(&fl), [2, 3], "a missed guess pushes nothing");
        place.push().unwrap();
        assert_eq!(contents(&fl), [a, 2, 3]);
        fl.push(b).unwrap();
        assert_eq!(contents(&fl), [b, a, 2, 3]);
        assert!(matches!(
            fl.place(4),
            Err(FreeListError::Corrupt { index: 4, len: 4 })
        ));
    }

    /// A hint whose head word matches again after a wrapped tag, with the
    /// link under its top changed: the link check sends the pop down the
    /// unhinted path, which takes the link that is really there.
    #[test]
    fn a_hint_whose_word_recurs_is_checked_against_the_link() {
        let (head, links) = list(3);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let a = fl.pop().unwrap().unwrap();
        let hint = fl.push_hinted(a, 0).unwrap();
        // Another process takes a and the slot below it, gives a back...
        assert_eq!(fl.pop(), Ok(Some(a)));
        let b = fl.pop().unwrap().unwrap();
        fl.push(a).unwrap();
        // ...and the tag wraps round to the hinted word.
        head.store(hint.word, Ordering::Relaxed);
        assert!(matches!(fl.pop_hinted(hint), Ok(Popped::Slot { index, .. }) if index == a));
        assert_eq!(
            contents(&fl),
            [2],
            "slot {b} is owned and must not be listed"
        );
    }

    /// Whatever the hints and guesses, hinted operations do what the
    /// unhinted ones do: a random walk of pops and pushes on two lists, one
    /// driven with valid, stale, foreign and forged hints, the other
    /// without, must stay identical.
    #[test]
    fn any_hint_or_guess_gives_what_an_unhinted_list_gives() {
        const N: usize = 5;
        let (head, links) = list(N);
        let (plain_head, plain_links) = list(N);
        let (other_head, other_links) = list(N);
        let (hinted, plain, other) = (
            FreeList::new(&head, &links),
            FreeList::new(&plain_head, &plain_links),
            FreeList::new(&other_head, &other_links),
        );
        hinted.fill();
        plain.fill();
        other.fill();
        let foreign = other.push_hinted(other.pop().unwrap().unwrap(), 0).unwrap();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (mut held, mut last_hint, mut guesses) = (Vec::new(), PopHint::NONE, Vec::new());
        for step in 0..20_000 {
            let r = next();
            if r % 2 == 0 || held.is_empty() {
                let hint = match (r >> 8) % 4 {
                    0 => last_hint,
                    1 => PopHint::NONE,
                    2 => foreign,
                    _ => PopHint {
                        word: if r & 0x10000 != 0 {
                            head.load(Ordering::Relaxed)
                        } else {
                            next()
                        },
                        below: (next() % (N as u64 + 2)) as u32,
                    },
                };
                let got = hinted.pop_hinted(hint).unwrap();
                let want = plain.pop().unwrap();
                match got {
                    Popped::Slot { index, head: left } => {
                        assert_eq!(Some(index), want, "step {step}");
                        held.push(index);
                        guesses.push(left);
                    }
                    Popped::Empty(_) => assert_eq!(want, None, "step {step}"),
                }
            } else {
                let k = (r >> 8) as usize % held.len();
                let index = held.swap_remove(k);
                let own = guesses.swap_remove(k);
                let guess = match (r >> 16) % 3 {
                    0 => own,
                    1 => head.load(Ordering::Relaxed),
                    _ => next(),
                };
                last_hint = hinted.push_hinted(index, guess).unwrap();
                plain.push(index).unwrap();
            }
            assert_eq!(contents(&hinted), contents(&plain), "step {step}");
        }
    }

    #[test]
    fn many_threads_never_share_a_slot() {
        hammer(false);
    }

    #[test]
    fn many_threads_with_hints_never_share_a_slot() {
        hammer(true);
    }

    /// Threads take and give back slots as fast as they can, each with its
    /// own hints if `hinted`; a second simultaneous owner fails the test.
    fn hammer(hinted: bool) {
        use std::sync::Barrier;
        const SLOTS: usize = 8;
        const THREADS: usize = 4;
        const ROUNDS: usize = 20_000;
        let (head, links) = list(SLOTS);
        let fl = FreeList::new(&head, &links);
        fl.fill();
        let owners: Vec<AtomicU32> = (0..SLOTS).map(|_| AtomicU32::new(0)).collect();
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for t in 1..=THREADS as u32 {
                let (fl, owners, barrier) = (fl, &owners, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut hint = PopHint::NONE;
                    for _ in 0..ROUNDS {
                        let (i, left) = match fl.pop_hinted(hint).unwrap() {
                            Popped::Slot { index, head } => (index, head),
                            Popped::Empty(_) => continue,
                        };
                        // Relaxed: the list's acquire/release orders ownership;
                        // this only detects a second simultaneous owner.
                        let prev = owners[i as usize].swap(t, Ordering::Relaxed);
                        assert_eq!(
                            prev, 0,
                            "slot {i} handed to thread {t} while thread {prev} held it"
                        );
                        owners[i as usize].store(0, Ordering::Relaxed);
                        if hinted {
                            hint = fl.push_hinted(i, left).unwrap();
                        } else {
                            fl.push(i).unwrap();
                        }
                    }
                });
            }
        });
        assert_eq!(fl.count_quiescent(), Ok(SLOTS as u32));
    }
}
