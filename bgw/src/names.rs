//! Globally unique worker names: a table in shared memory that maps a name
//! to the process slot holding it, readable from any attached process
//! without a lock. Erlang's `register/2` and `whereis/1`, for processes that
//! share a segment.
//!
//! # Roles
//!
//! - A **registrant** (any attached process with a process slot)
//!   [`register`](Names::register)s a name for itself and gets a
//!   [`NameHandle`] `(entry, generation)`, with which it
//!   [`unregister`](Names::unregister)s the name again.
//! - A **reader** (any attached process, with or without a slot) asks
//!   [`whereis`](Names::whereis) or [`list`](Names::list)s every name.
//! - The **postmaster**, after reaping a worker and before its process slot
//!   is handed to anyone else, [`release_owned_by`](Names::release_owned_by)s
//!   whatever the worker held, including a registration it died in the
//!   middle of. It never waits for anything to do so.
//!
//! # Why no lock
//!
//! A [`ShmLock`](proclist::ShmLock) around the table would make uniqueness
//! trivial, but a registrant killed while holding it would leave the lock
//! held and the table possibly half-changed: every later registration would
//! hang until the segment is reset, and the postmaster, which must never
//! wait on a lock a child could hold, could not release the dead worker's
//! names without breaking the lock open on a table it cannot trust. So the
//! table is lock-free: every entry changes by compare-and-swap of one
//! control word, a process that dies at any instant leaves only entries
//! tagged with its own process slot (which the postmaster frees), and a
//! reader never waits for a writer.
//!
//! # One entry's life
//!
//! ```text
//!  FREE(g) --claim--> WRITING(g+1) --publish--> CANDIDATE(g+1) --commit--> LIVE(g+1)
//!                     (registrant)   (registrant)      |  (registrant)        |
//!                                                      +--defeat--> DEFEATED  |  (a rival)
//!  CANDIDATE, DEFEATED --retract (registrant)--> FREE(g+1)                    |
//!  LIVE --unregister (the handle's holder)--> FREE(g+1) <---------------------+
//!  any but FREE --release_owned_by / release_if (postmaster)--> FREE(g+1)
//! ```
//!
//! The generation moves on at every claim (skipping 0, so no handle carries
//! the generation of an all-zero entry), and every transition is a CAS of
//! the whole control word, so a handle `(entry, g)` names one tenancy of one
//! entry: one tenancy late, it matches nothing and changes nothing.
//!
//! # Fields, who writes them, and what orders them
//!
//! | field     | written by                                             | read by              |
//! |-----------|--------------------------------------------------------|----------------------|
//! | `control` | `generation << 32 \| proc << 16 \| hash << 8 \| state`, by CAS: | everyone     |
//! |           | registrant (claim, publish, commit, retract, unregister); |                   |
//! |           | a rival registrant (defeat); the postmaster (release)  |                      |
//! | `name`    | the claimer, while `WRITING`: length byte, then bytes  | everyone, seqlock-style |
//! | `owner`   | the claimer, while `WRITING`: `proc_generation << 32 \| pid` | as `name`      |
//!
//! `proc` (the owner's process-slot index, 16 bits) and `hash` (8 bits of
//! the name's FNV-1a hash) sit in the control word itself: the claim CAS
//! tags the entry with its process slot from the first instant, so the
//! postmaster can release an entry whose registrant died before writing a
//! byte of it; and a lookup skips entries whose hash differs after one load.
//!
//! `name` and `owner` are read as a seqlock: load `control` (`Acquire`),
//! load the words (`Relaxed`), `fence(Acquire)`, load `control` again; the
//! copy is good if the generation did not change. The claimer's side is
//! claim CAS, `fence(Release)`, stores: a reader that read any store of a
//! later tenancy has its second load ordered after that tenancy's claim
//! (fence to fence), so it sees the new generation and discards the copy.
//! The claim CAS is `Acquire`, pairing with the `Release` of whatever freed
//! the entry, so the claimer's stores come after everything the previous
//! tenancy published. The words are frozen from publish until the next
//! claim, so a reader that saw `CANDIDATE`, `LIVE` or `DEFEATED` with an
//! `Acquire` load (pairing with the `Release` publish) sees the complete
//! name.
//!
//! # Uniqueness
//!
//! A registrant publishes its entry as `CANDIDATE`, issues a `SeqCst`
//! fence, and only then looks at every other entry for the same name:
//!
//! - a `LIVE` one: the name is taken; retract, report
//!   [`NameError::Taken`];
//! - a `CANDIDATE` at a lower entry index: it has priority; retract and
//!   report `Taken`;
//! - a `CANDIDATE` at a higher index: we have priority; CAS it to
//!   `DEFEATED` (if that CAS finds it `LIVE`, we lost after all);
//! - anything else (`WRITING`, `DEFEATED`, `FREE`, another name): ignore.
//!
//! It then commits with a CAS `CANDIDATE` to `LIVE`, which fails if a rival
//! defeated it meanwhile; a defeated registrant retracts and starts over
//! (the next round finds the rival and reports it, or finds the name free).
//!
//! Why two racers never both commit: their fences are ordered; say A's
//! comes first. B's look at A's entry follows B's fence, so it sees A's
//! publish or something later (fence-to-fence ordering): A as `CANDIDATE`
//! (B defers or defeats it), `LIVE` (B loses), or already out of the race.
//! If B defers, B never commits. If B tries to defeat A, one CAS on A's
//! word decides: B's defeat lands first and A's commit fails, or A's commit
//! lands first and B learns it lost. An entry seen `WRITING` is safe to
//! ignore for the same reason the other way round: its publish comes after
//! our look, so its fence comes after ours and its own look will see us.
//! And why someone wins: among the candidates racing for a name, the one at
//! the lowest index defers to nobody and is defeated by nobody, so it
//! commits unless it finds the name already `LIVE`. All the rules hold for
//! any number of racers; `tests/loom_names.rs` checks two.
//!
//! `Taken` can also be reported for a registration still in flight (a
//! `CANDIDATE` with priority), which normally commits a moment later; if
//! that racer in turn loses to a third one, or unregisters at once, the
//! name may be free again by the time the caller looks. Retrying is always
//! safe.
//!
//! # Reading
//!
//! [`whereis`](Names::whereis) scans the entries: one load for each, a
//! seqlock copy for the `LIVE` ones whose hash matches. It is a snapshot:
//! a name registered or released during the scan may or may not be seen,
//! but the owner returned is always the one registered under that name in
//! one tenancy of one entry, never a mix of two.
//!
//! # What the postmaster does not trust
//!
//! Everything: every loop is bounded by the table's length and
//! [`MAX_CAS_ATTEMPTS`], a control word with an unknown state or stray bits
//! is skipped (and reported by [`Names::entries`]), a length past
//! [`MAX_NAME`] or a name outside the alphabet reads as no name, and a
//! name copied out for a report is decoded with validation. Nothing here
//! can panic on what shared memory holds.
//!
//! # Usage
//!
//! ```
//! use bgw::names::{NameEntry, NameError, NameOwner, Names};
//!
//! let entries: Vec<NameEntry> = (0..8).map(|_| NameEntry::new()).collect(); // or Names::from_segment
//! let names = Names::from_entries(&entries);
//!
//! let me = NameOwner { proc_index: 3, proc_generation: 7, pid: 4242 };
//! let handle = names.register("ticker", me)?;
//! assert_eq!(names.whereis("ticker"), Some(me));
//!
//! let other = NameOwner { proc_index: 4, proc_generation: 1, pid: 4343 };
//! assert!(matches!(
//!     names.register("ticker", other),
//!     Err(NameError::Taken { owner_pid: 4242, .. })
//! ));
//!
//! names.unregister(handle)?;
//! assert_eq!(names.whereis("ticker"), None);
//!
//! // The postmaster, after reaping the worker in slot 4, generation 1:
//! names.register("pooler", other)?;
//! let released = names.release_owned_by(4, 1);
//! assert_eq!(released[0].name.as_deref(), Some("pooler"));
//! assert_eq!(names.whereis("pooler"), None);
//! # Ok::<(), NameError>(())
//! ```

use std::fmt;

use shmem::sync::{AtomicU64, Ordering, fence};
use thiserror::Error;

use crate::spec::MAX_NAME;

/// The name of the table's region in a segment layout.
pub const REGION: &str = "bgw.names";

/// The highest process-slot index a name's owner may have: the index lives
/// in 16 bits of the entry's control word.
pub const MAX_PROC_INDEX: u32 = u16::MAX as u32;

/// The most rounds any CAS loop here makes. A control word changes at most
/// a handful of times per tenancy, so running out means another process
/// keeps rewriting it: treated as corruption, never waited out.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// How many times [`Names::register`] starts over after a rival with
/// priority defeated it. A second round normally finds that rival and
/// reports it; more rounds only happen while several processes keep
/// racing for one name.
pub const MAX_REGISTER_ROUNDS: usize = 4;

/// Words of an entry's name area: a length byte and [`MAX_NAME`] bytes.
const NAME_WORDS: usize = (1 + MAX_NAME).div_ceil(8);

const _: () = assert!(MAX_NAME <= u8::MAX as usize && NAME_WORDS * 8 > MAX_NAME);

// ---------------------------------------------------------------------------
// The control word
// ---------------------------------------------------------------------------

/// What an entry's current tenancy is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EntryState {
    /// Nobody's; a registrant may claim it. All-zero entries are free.
    Free = 0,
    /// Claimed by the process slot in the control word, which is writing
    /// the name and owner. Nobody else reads them yet.
    Writing = 1,
    /// Published; its registrant is checking for rivals. Not yet visible
    /// to [`Names::whereis`].
    Candidate = 2,
    /// Registered: the name belongs to the owner.
    Live = 3,
    /// A rival with priority won; its registrant will retract it.
    Defeated = 4,
}

impl EntryState {
    const ALL: [EntryState; 5] = [
        EntryState::Free,
        EntryState::Writing,
        EntryState::Candidate,
        EntryState::Live,
        EntryState::Defeated,
    ];

    /// The lowercase name, for status displays.
    pub fn name(self) -> &'static str {
        match self {
            EntryState::Free => "free",
            EntryState::Writing => "writing",
            EntryState::Candidate => "candidate",
            EntryState::Live => "live",
            EntryState::Defeated => "defeated",
        }
    }

    /// Whether the entry's name and owner words are published.
    fn is_published(self) -> bool {
        matches!(
            self,
            EntryState::Candidate | EntryState::Live | EntryState::Defeated
        )
    }
}

impl fmt::Display for EntryState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const STATE_MASK: u64 = 0xff;
const HASH_SHIFT: u32 = 8;
const PROC_SHIFT: u32 = 16;
const GENERATION_SHIFT: u32 = 32;

/// A decoded control word: `generation << 32 | proc << 16 | hash << 8 |
/// state`. A `FREE` word has zero `proc` and `hash`; any other word with
/// an unknown state is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    generation: u32,
    proc_index: u16,
    hash: u8,
    state: EntryState,
}

impl Control {
    fn free(generation: u32) -> Self {
        Control {
            generation,
            proc_index: 0,
            hash: 0,
            state: EntryState::Free,
        }
    }

    fn with_state(self, state: EntryState) -> Self {
        Control { state, ..self }
    }

    fn encode(self) -> u64 {
        (u64::from(self.generation) << GENERATION_SHIFT)
            | (u64::from(self.proc_index) << PROC_SHIFT)
            | (u64::from(self.hash) << HASH_SHIFT)
            | self.state as u64
    }

    fn decode(word: u64) -> Option<Control> {
        let state = EntryState::ALL
            .into_iter()
            .find(|s| *s as u64 == word & STATE_MASK)?;
        let control = Control {
            generation: (word >> GENERATION_SHIFT) as u32,
            proc_index: (word >> PROC_SHIFT) as u16,
            hash: (word >> HASH_SHIFT) as u8,
            state,
        };
        if state == EntryState::Free && (control.proc_index != 0 || control.hash != 0) {
            return None;
        }
        Some(control)
    }
}

/// The generation after `generation`, skipping 0 (the generation of an
/// all-zero entry, which no handle carries).
fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        0 => 1,
        next => next,
    }
}

/// 8 bits of the 32-bit FNV-1a hash of `name`, folded: a lookup's filter,
/// so only a match (or one in 256 others) costs a copy of the name.
fn hash8(name: &[u8]) -> u8 {
    const OFFSET_BASIS: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let h = name
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    (h ^ (h >> 8) ^ (h >> 16) ^ (h >> 24)) as u8
}

// ---------------------------------------------------------------------------
// Names in private memory
// ---------------------------------------------------------------------------

/// A validated name as it is stored: length byte first, then the bytes,
/// zero-padded to whole words.
#[derive(PartialEq, Eq)]
struct Key {
    bytes: [u8; NAME_WORDS * 8],
    hash: u8,
}

impl Key {
    fn new(name: &str) -> Result<Key, NameError> {
        validate_name(name)?;
        let mut bytes = [0u8; NAME_WORDS * 8];
        bytes[0] = name.len() as u8; // validated: at most MAX_NAME
        bytes[1..1 + name.len()].copy_from_slice(name.as_bytes());
        Ok(Key {
            bytes,
            hash: hash8(name.as_bytes()),
        })
    }

    fn len(&self) -> usize {
        usize::from(self.bytes[0])
    }

    /// The words that hold the length and the name (the rest stay unread
    /// and unwritten).
    fn words_used(&self) -> usize {
        (1 + self.len()).div_ceil(8)
    }

    fn word(&self, i: usize) -> u64 {
        let mut le = [0u8; 8];
        le.copy_from_slice(&self.bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(le)
    }

    /// The name, if these bytes are one (a copy out of shared memory may
    /// hold anything).
    fn decode(&self) -> Option<String> {
        let len = self.len();
        if len > MAX_NAME {
            return None;
        }
        let name = std::str::from_utf8(&self.bytes[1..1 + len]).ok()?;
        validate_name(name).ok()?;
        Some(name.to_owned())
    }
}

/// Checks that `name` can be registered: 1 to [`MAX_NAME`] bytes from
/// `[A-Za-z0-9_.-]`, the alphabet of worker names, so that a worker can
/// register under its own.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_NAME {
        "it is longer than bgw::spec::MAX_NAME bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        "it has characters outside [A-Za-z0-9_.-]"
    } else {
        return Ok(());
    };
    Err(NameError::InvalidName {
        name: name.chars().take(2 * MAX_NAME).collect(),
        reason,
    })
}

// ---------------------------------------------------------------------------
// The entry
// ---------------------------------------------------------------------------

/// One entry of the name table; see the module docs for who writes which
/// field.
#[repr(C, align(128))]
pub struct NameEntry {
    /// `generation << 32 | proc << 16 | hash << 8 | state`.
    control: AtomicU64,
    /// `proc_generation << 32 | pid` of the owner.
    owner: AtomicU64,
    /// Length byte, then the name's bytes, little-endian in words.
    name: [AtomicU64; NAME_WORDS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::align_of::<NameEntry>() == shmem::CACHE_LINE);
    assert!(std::mem::size_of::<NameEntry>() == shmem::CACHE_LINE);
};

// SAFETY: repr(C) of atomic integers with trailing padding only: any bytes
// are a valid value (an unknown control word is skipped, any name bytes are
// validated before use), all-zero is a free entry, there are no pointers,
// and every mutation is atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for NameEntry {}

/// A consistent copy of an entry's published words.
struct Snapshot {
    /// The control word after the copy (same generation as before it).
    control: Control,
    key: Key,
    owner: u64,
}

impl Snapshot {
    fn owner(&self) -> NameOwner {
        NameOwner {
            proc_index: u32::from(self.control.proc_index),
            proc_generation: (self.owner >> 32) as u32,
            pid: self.owner as u32,
        }
    }

    /// Whether the copy holds exactly `key`'s name.
    fn holds(&self, key: &Key) -> bool {
        let used = 1 + key.len();
        self.key.bytes[..used] == key.bytes[..used]
    }
}

impl NameEntry {
    /// An all-zero (free) entry, as in a new segment; for tables built on
    /// the heap (tests, loom models).
    pub fn new() -> Self {
        NameEntry {
            control: AtomicU64::new(0),
            owner: AtomicU64::new(0),
            name: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The entry's state and generation as its control word says now, or
    /// the raw word if it holds no valid state. For status displays.
    pub fn peek(&self) -> Result<(EntryState, u32), u64> {
        // Relaxed: a snapshot for display; nothing is read on its strength.
        let word = self.control.load(Ordering::Relaxed);
        Control::decode(word)
            .map(|c| (c.state, c.generation))
            .ok_or(word)
    }

    /// Copies the name and owner of the tenancy whose control word was
    /// `first` (loaded with `Acquire` by the caller, and published), or
    /// `None` if the entry moved to another tenancy during the copy.
    fn snapshot(&self, first: Control) -> Option<Snapshot> {
        let mut bytes = [0u8; NAME_WORDS * 8];
        // Relaxed, all of them: the seqlock check below decides whether
        // they belong to `first`'s tenancy; the caller's Acquire load of
        // `first` pairs with the Release publish, so if they do, they are
        // the published ones.
        let head = self.name[0].load(Ordering::Relaxed);
        bytes[..8].copy_from_slice(&head.to_le_bytes());
        // A length past MAX_NAME is garbage (or torn): read every word, the
        // caller's validation rejects it.
        let len = usize::from(bytes[0]).min(NAME_WORDS * 8 - 1);
        for i in 1..(1 + len).div_ceil(8) {
            let word = self.name[i].load(Ordering::Relaxed);
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        let owner = self.owner.load(Ordering::Relaxed);
        // Acquire fence: pairs with the Release fence after a claim. If any
        // word above came from a later tenancy, the claim that began it is
        // visible to the load below, which then sees its generation.
        fence(Ordering::Acquire);
        // Acquire: the state it reports may be acted on (a rival's LIVE).
        let second = Control::decode(self.control.load(Ordering::Acquire))?;
        if second.generation != first.generation || !second.state.is_published() {
            return None;
        }
        Some(Snapshot {
            control: second,
            key: Key {
                bytes,
                hash: first.hash,
            },
            owner,
        })
    }

    /// Moves the entry from `from` to FREE (same generation), if its
    /// control word still is `from`. Returns whether it did.
    fn free(&self, from: Control) -> bool {
        // Release: pairs with the Acquire claim CAS of the entry's next
        // tenant, so its stores follow every read of this tenancy made
        // before the free. Acquire: nothing is read after it; Relaxed on
        // failure, the caller reloads.
        self.control
            .compare_exchange(
                from.encode(),
                Control::free(from.generation).encode(),
                Ordering::Release,
                Ordering::Relaxed,
            )
            .is_ok()
    }
}

impl Default for NameEntry {
    fn default() -> Self {
        NameEntry::new()
    }
}

impl fmt::Debug for NameEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peek() {
            Ok((state, generation)) => f
                .debug_struct("NameEntry")
                .field("state", &state)
                .field("generation", &generation)
                .finish_non_exhaustive(),
            Err(word) => f
                .debug_struct("NameEntry")
                .field("corrupt_control", &format_args!("{word:#018x}"))
                .finish_non_exhaustive(),
        }
    }
}

// ---------------------------------------------------------------------------
// Plain data exchanged with callers
// ---------------------------------------------------------------------------

/// Who holds a name: one tenancy of one process slot, and its pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NameOwner {
    /// The owner's process-slot index (at most [`MAX_PROC_INDEX`]).
    pub proc_index: u32,
    /// The generation of that slot's tenancy: a sender checks that the slot
    /// still carries it before trusting the name.
    pub proc_generation: u32,
    /// The owner's pid, for messages and status displays.
    pub pid: u32,
}

impl fmt::Display for NameOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} in slot {}/{}",
            self.pid, self.proc_index, self.proc_generation
        )
    }
}

/// One registration: the entry and the generation it had then. Plain data;
/// after the name is released it matches nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameHandle {
    /// Index of the entry in the table.
    pub entry: u32,
    /// The entry's generation during this registration.
    pub generation: u32,
}

impl fmt::Display for NameHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "name entry {}/{}", self.entry, self.generation)
    }
}

/// A registered name, as [`Names::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registered {
    /// The name.
    pub name: String,
    /// Who holds it.
    pub owner: NameOwner,
    /// The registration.
    pub handle: NameHandle,
}

/// An entry the postmaster freed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedName {
    /// The registration that ended.
    pub handle: NameHandle,
    /// What the entry was doing (a registration cut short reads
    /// `Writing`, `Candidate` or `Defeated`).
    pub state: EntryState,
    /// The name, if the entry held a readable one.
    pub name: Option<String>,
}

/// What [`Names::entries`] reports about one entry that is not free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// The entry's index.
    pub entry: u32,
    /// Its state and generation, or the raw control word if that holds no
    /// valid state.
    pub state: Result<(EntryState, u32), u64>,
    /// The name and owner, if published and readable.
    pub name: Option<(String, NameOwner)>,
}

/// Why a name operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name cannot be registered; nothing was written.
    #[error("{name:?} cannot be a name: {reason}")]
    InvalidName {
        /// The name (cut short if very long).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The owner's process-slot index does not fit the table.
    #[error(
        "process slot {proc_index} cannot own a name: the table records slots up to {MAX_PROC_INDEX}"
    )]
    InvalidOwner {
        /// The index given.
        proc_index: u32,
    },
    /// Another process holds the name, or is registering it with priority.
    #[error(
        "the name {name:?} is taken by process {owner_pid}; choose another name, or wait for \
         that process to release it"
    )]
    Taken {
        /// The name.
        name: String,
        /// The pid of the process holding it.
        owner_pid: u32,
    },
    /// Every entry is in use.
    #[error(
        "all {size} name entries are in use; raise the entry count given to Names::declare, or \
         release names"
    )]
    Full {
        /// How many entries the table has.
        size: usize,
    },
    /// Rivals kept racing for the name for [`MAX_REGISTER_ROUNDS`] rounds.
    #[error("the name {name:?} is being registered by several processes at once; retry")]
    Contended {
        /// The name.
        name: String,
    },
    /// The entry was taken from this process while it was registering (the
    /// postmaster released it, believing the process dead, or the segment
    /// was reset).
    #[error(
        "name entry {entry} was released while this process was registering in it; register \
         again"
    )]
    Interrupted {
        /// The entry.
        entry: u32,
    },
    /// The registering process's endpoint is from before a reset of
    /// shared memory: its slot, and so its claim to a name, is gone.
    #[error("shared memory was reset since this endpoint was opened; open a new endpoint")]
    Reset,
    /// The handle's registration is over (or never was): nothing changed.
    #[error("{handle} is not registered any more; its name was released")]
    NotRegistered {
        /// The handle.
        handle: NameHandle,
    },
    /// The table's region is missing or has the wrong type.
    #[error(transparent)]
    Region(#[from] shmem::RegionError),
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

/// How a registration round ended.
enum Contest {
    Won,
    /// A rival holds the name or has priority; its pid.
    LostTo(u32),
    /// A rival with priority defeated us after we looked.
    Defeated,
}

/// A view of the name table, usable from any attached process.
#[derive(Clone, Copy)]
pub struct Names<'a> {
    entries: &'a [NameEntry],
}

impl fmt::Debug for Names<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Names")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl<'a> Names<'a> {
    /// Adds the table's region, `entries` entries long, to a layout. One
    /// entry per process slot (workers and backends) lets every process
    /// hold one name; give more if processes register several.
    #[cfg(not(loom))]
    pub fn declare(builder: shmem::LayoutBuilder, entries: usize) -> shmem::LayoutBuilder {
        builder.array::<NameEntry>(REGION, entries)
    }

    /// The table in `segment`. All-zero is an empty table: nobody needs to
    /// set it up.
    #[cfg(not(loom))]
    pub fn from_segment(segment: &'a shmem::Segment) -> Result<Self, NameError> {
        Ok(Self::from_entries(segment.array::<NameEntry>(REGION)?))
    }

    /// A view over entries the caller laid out (tests and loom models build
    /// them on the heap). Only the first `u32::MAX` entries are used.
    pub fn from_entries(entries: &'a [NameEntry]) -> Self {
        let usable = entries.len().min(u32::MAX as usize);
        Names {
            entries: &entries[..usable],
        }
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no entries at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers `name` for `owner` (normally the calling process). Exactly
    /// one of several processes racing for a free name succeeds; see the
    /// module docs for the protocol.
    ///
    /// Bounded: at most [`MAX_REGISTER_ROUNDS`] rounds, each a few passes
    /// over the table.
    pub fn register(&self, name: &str, owner: NameOwner) -> Result<NameHandle, NameError> {
        let key = Key::new(name)?;
        let proc_index = u16::try_from(owner.proc_index).map_err(|_| NameError::InvalidOwner {
            proc_index: owner.proc_index,
        })?;
        let taken = |owner_pid| NameError::Taken {
            name: name.to_owned(),
            owner_pid,
        };
        for _ in 0..MAX_REGISTER_ROUNDS {
            // Cheap and write-free when the name is taken: the common
            // failure. After a defeat, this finds the rival that won (its
            // defeat CAS, which our failed commit read with Acquire, came
            // after its publish).
            if let Some(holder) = self.find(&key, true) {
                return Err(taken(holder.owner().pid));
            }
            let (index, claimed) = self.claim(&key, proc_index, owner)?;
            let entry = &self.entries[index];
            let handle = NameHandle {
                entry: index as u32, // from_entries keeps len <= u32::MAX
                generation: claimed.generation,
            };
            match self.contest(index, claimed, &key) {
                Contest::Won => return Ok(handle),
                Contest::LostTo(pid) => {
                    retract(entry, claimed);
                    return Err(taken(pid));
                }
                Contest::Defeated => retract(entry, claimed),
            }
        }
        Err(NameError::Contended {
            name: name.to_owned(),
        })
    }

    /// Claims a free entry for `key` and `owner`, writes it and publishes
    /// it as CANDIDATE. Returns the entry's index and its CANDIDATE word.
    fn claim(
        &self,
        key: &Key,
        proc_index: u16,
        owner: NameOwner,
    ) -> Result<(usize, Control), NameError> {
        for (index, entry) in self.entries.iter().enumerate() {
            // Relaxed: only a guess at which entry to try; the CAS decides.
            let seen = entry.control.load(Ordering::Relaxed);
            match Control::decode(seen) {
                Some(c) if c.state == EntryState::Free => {}
                _ => continue,
            }
            let writing = Control {
                generation: next_generation((seen >> GENERATION_SHIFT) as u32),
                proc_index,
                hash: key.hash,
                state: EntryState::Writing,
            };
            // Acquire: pairs with the Release of whatever freed the entry,
            // so our stores below come after the previous tenancy's.
            // Relaxed on failure: we move on.
            if entry
                .control
                .compare_exchange(seen, writing.encode(), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue;
            }
            // Release fence: pairs with the Acquire fence in
            // NameEntry::snapshot; a reader that reads any store below sees
            // the claim (and its new generation) on its re-check.
            fence(Ordering::Release);
            // Relaxed: published by the Release CAS to CANDIDATE below.
            for i in 0..key.words_used() {
                entry.name[i].store(key.word(i), Ordering::Relaxed);
            }
            entry.owner.store(
                (u64::from(owner.proc_generation) << 32) | u64::from(owner.pid),
                Ordering::Relaxed,
            );
            let candidate = writing.with_state(EntryState::Candidate);
            // Release: publishes the words; pairs with the Acquire loads of
            // readers and rivals. A CAS, not a store: if the postmaster took
            // the entry back meanwhile, we must not overwrite its word.
            entry
                .control
                .compare_exchange(
                    writing.encode(),
                    candidate.encode(),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .map_err(|_| NameError::Interrupted {
                    entry: index as u32,
                })?;
            return Ok((index, candidate));
        }
        Err(NameError::Full {
            size: self.entries.len(),
        })
    }

    /// Looks for rivals of our CANDIDATE entry `index` and commits it if
    /// none has priority; see "Uniqueness" in the module docs.
    fn contest(&self, index: usize, ours: Control, key: &Key) -> Contest {
        // SeqCst fence: orders our publish before our look at every other
        // entry, against every rival's publish-fence-look (the argument in
        // the module docs). A SeqCst load alone would not do it for the
        // Relaxed-guess scan below, and loom models fences exactly.
        fence(Ordering::SeqCst);
        for (j, rival) in self.entries.iter().enumerate() {
            if j == index {
                continue;
            }
            // Acquire: pairs with the rival's Release publish, so the
            // snapshot below sees its complete name.
            let Some(first) = Control::decode(rival.control.load(Ordering::Acquire)) else {
                continue;
            };
            if !matches!(first.state, EntryState::Candidate | EntryState::Live)
                || first.hash != key.hash
            {
                continue;
            }
            // A rival whose tenancy ended during the copy is out of the
            // race; if the entry's next tenancy registers the same name,
            // its publish came after our fence, and its look will see us.
            let Some(seen) = rival.snapshot(first) else {
                continue;
            };
            if !seen.holds(key) {
                continue;
            }
            match seen.control.state {
                EntryState::Live => return Contest::LostTo(seen.owner().pid),
                EntryState::Candidate if j < index => return Contest::LostTo(seen.owner().pid),
                EntryState::Candidate => {
                    let defeated = seen.control.with_state(EntryState::Defeated);
                    // Release: so that the defeated registrant,
                    // whose commit fails on this word with Acquire, sees
                    // our publish when it looks again and reports us as the
                    // holder. Uniqueness does not need it (a stale look
                    // would only send it into another contest, which the
                    // fence argument covers), but without it the loser
                    // could claim a lower entry and defeat us in turn, and
                    // the two could trade defeats until one runs out of
                    // rounds. Relaxed on failure: nothing is read on it
                    // (the pid we may report was copied with the snapshot).
                    match rival.control.compare_exchange(
                        seen.control.encode(),
                        defeated.encode(),
                        Ordering::Release,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => {}
                        // It committed before our defeat landed: it won.
                        Err(now) if now == seen.control.with_state(EntryState::Live).encode() => {
                            return Contest::LostTo(seen.owner().pid);
                        }
                        // Defeated by someone else, retracted, or released:
                        // out of the race either way.
                        Err(_) => {}
                    }
                }
                EntryState::Free | EntryState::Writing | EntryState::Defeated => {}
            }
        }
        let entry = &self.entries[index];
        // AcqRel: Release publishes nothing new but keeps LIVE a link in the
        // chain from our publish to every later Acquire of the word.
        // Acquire on failure: pairs with the Release of the defeat CAS
        // above, so the next round's first look finds the rival that
        // defeated us (see there for why that matters).
        match entry.control.compare_exchange(
            ours.encode(),
            ours.with_state(EntryState::Live).encode(),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Contest::Won,
            // Defeated, or released under us (then retract finds nothing to
            // do and the next round claims afresh).
            Err(_) => Contest::Defeated,
        }
    }

    /// The published entry holding `key`: a LIVE one, or with
    /// `candidates` also a CANDIDATE one.
    fn find(&self, key: &Key, candidates: bool) -> Option<Snapshot> {
        for entry in self.entries {
            // Acquire: pairs with the Release publish, for the snapshot.
            let Some(first) = Control::decode(entry.control.load(Ordering::Acquire)) else {
                continue;
            };
            let wanted = first.state == EntryState::Live
                || (candidates && first.state == EntryState::Candidate);
            if !wanted || first.hash != key.hash {
                continue;
            }
            let Some(seen) = entry.snapshot(first) else {
                continue;
            };
            let still = seen.control.state == EntryState::Live
                || (candidates && seen.control.state == EntryState::Candidate);
            if still && seen.holds(key) {
                return Some(seen);
            }
        }
        None
    }

    /// Who holds `name` now, if anyone. From any attached process; never
    /// waits, never writes. A name that is not valid is held by nobody.
    pub fn whereis(&self, name: &str) -> Option<NameOwner> {
        let key = Key::new(name).ok()?;
        self.find(&key, false).map(|s| s.owner())
    }

    /// Releases the registration `handle` names. A handle whose name was
    /// released already (by the postmaster, or an earlier call) gets
    /// [`NameError::NotRegistered`] and changes nothing.
    pub fn unregister(&self, handle: NameHandle) -> Result<(), NameError> {
        let not_registered = NameError::NotRegistered { handle };
        let entry = self
            .entries
            .get(handle.entry as usize)
            .ok_or(not_registered.clone())?;
        // Relaxed: a first guess for the CAS, which validates it.
        let word = entry.control.load(Ordering::Relaxed);
        match Control::decode(word) {
            Some(c) if c.generation == handle.generation && c.state == EntryState::Live => {
                // A LIVE word changes only by being freed, so one CAS
                // decides: it fails only if someone else freed it first.
                if entry.free(c) {
                    Ok(())
                } else {
                    Err(not_registered)
                }
            }
            _ => Err(not_registered),
        }
    }

    /// Every registered name, for status displays. A snapshot: names
    /// registered or released during the scan may be missing.
    pub fn list(&self) -> Vec<Registered> {
        let mut names = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            // Acquire: as in find.
            let Some(first) = Control::decode(entry.control.load(Ordering::Acquire)) else {
                continue;
            };
            if first.state != EntryState::Live {
                continue;
            }
            let Some(seen) = entry.snapshot(first) else {
                continue;
            };
            if seen.control.state != EntryState::Live {
                continue;
            }
            if let Some(name) = seen.key.decode() {
                names.push(Registered {
                    name,
                    owner: seen.owner(),
                    handle: NameHandle {
                        entry: index as u32,
                        generation: first.generation,
                    },
                });
            }
        }
        names
    }

    /// Every entry that is not free, whatever its state (or garbage), for
    /// the postmaster's status display: a `Writing` or `Candidate` entry
    /// that stays so belongs to a process that died registering.
    pub fn entries(&self) -> Vec<EntryView> {
        let mut views = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            // Acquire: as in find.
            let word = entry.control.load(Ordering::Acquire);
            let view = match Control::decode(word) {
                None => EntryView {
                    entry: index as u32,
                    state: Err(word),
                    name: None,
                },
                Some(c) if c.state == EntryState::Free => continue,
                Some(c) => EntryView {
                    entry: index as u32,
                    state: Ok((c.state, c.generation)),
                    name: c
                        .state
                        .is_published()
                        .then(|| entry.snapshot(c))
                        .flatten()
                        .and_then(|s| Some((s.key.decode()?, s.owner()))),
                },
            };
            views.push(view);
        }
        views
    }

    /// The postmaster's side, after reaping the process that held slot
    /// `proc_index` in generation `proc_generation`: frees every entry that
    /// process held or was registering, and reports them.
    ///
    /// Call it after the process is known dead and *before* the process
    /// slot gets its next tenant: an entry caught `WRITING` carries only its
    /// slot index (the generation is among the words being written), so it
    /// is released on the index alone, which is right only while no one
    /// else can hold that slot. Published entries are released only if
    /// their owner word names `proc_generation` too.
    ///
    /// Never waits; bounded by the table's length and [`MAX_CAS_ATTEMPTS`].
    pub fn release_owned_by(&self, proc_index: u32, proc_generation: u32) -> Vec<ReleasedName> {
        let Ok(proc_index) = u16::try_from(proc_index) else {
            return Vec::new();
        };
        self.release_where(|control, owner| {
            control.proc_index == proc_index
                && (control.state == EntryState::Writing
                    || owner.is_some_and(|o| o.proc_generation == proc_generation))
        })
    }

    /// Frees every published entry whose owner `dead` says is gone (for
    /// owners nobody reaps, such as processes that attached by themselves:
    /// pass a check of their process slot's generation and state). Entries
    /// being written are left alone: their owner is not known yet.
    pub fn release_if(&self, dead: impl Fn(&NameOwner) -> bool) -> Vec<ReleasedName> {
        self.release_where(|_, owner| owner.is_some_and(|o| dead(&o)))
    }

    /// Frees every entry, not free already, for which `matches(control,
    /// owner)` holds; `owner` is `None` for an entry being written.
    fn release_where(
        &self,
        matches: impl Fn(&Control, Option<NameOwner>) -> bool,
    ) -> Vec<ReleasedName> {
        let mut released = Vec::new();
        for (index, entry) in self.entries.iter().enumerate() {
            for _ in 0..MAX_CAS_ATTEMPTS {
                // Acquire: pairs with the Release publish, for the owner
                // word read through the snapshot.
                let Some(control) = Control::decode(entry.control.load(Ordering::Acquire)) else {
                    break;
                };
                if control.state == EntryState::Free {
                    break;
                }
                let seen = control
                    .state
                    .is_published()
                    .then(|| entry.snapshot(control))
                    .flatten();
                if control.state.is_published() && seen.is_none() {
                    continue; // changed during the copy: look again
                }
                if !matches(&control, seen.as_ref().map(Snapshot::owner)) {
                    break;
                }
                if entry.free(control) {
                    released.push(ReleasedName {
                        handle: NameHandle {
                            entry: index as u32,
                            generation: control.generation,
                        },
                        state: control.state,
                        name: seen.and_then(|s| s.key.decode()),
                    });
                    break;
                }
                // Changed since the load (a rival defeated it): look again.
            }
        }
        released
    }
}

/// Frees our own entry after losing: it is CANDIDATE, or DEFEATED if a
/// rival got to it first. If neither (the postmaster released it), there
/// is nothing left to do.
fn retract(entry: &NameEntry, ours: Control) {
    if !entry.free(ours) {
        entry.free(ours.with_state(EntryState::Defeated));
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn table(n: usize) -> Vec<NameEntry> {
        (0..n).map(|_| NameEntry::new()).collect()
    }

    fn owner(proc_index: u32) -> NameOwner {
        NameOwner {
            proc_index,
            proc_generation: 10 + proc_index,
            pid: 1000 + proc_index,
        }
    }

    #[test]
    fn register_whereis_unregister_round_trip() {
        let storage = table(4);
        let names = Names::from_entries(&storage);
        let h = names.register("ticker", owner(1)).unwrap();
        assert_eq!(names.whereis("ticker"), Some(owner(1)));
        assert_eq!(names.whereis("ticke"), None);
        assert_eq!(names.whereis("tickers"), None);
        assert_eq!(
            names.list(),
            vec![Registered {
                name: "ticker".into(),
                owner: owner(1),
                handle: h
            }]
        );
        names.unregister(h).unwrap();
        assert_eq!(names.whereis("ticker"), None);
        assert_eq!(
            names.unregister(h),
            Err(NameError::NotRegistered { handle: h })
        );
        // The entry is reused with a new generation; the old handle stays
        // dead.
        let again = names.register("ticker", owner(2)).unwrap();
        assert_eq!(again.entry, h.entry);
        assert!(again.generation > h.generation);
        assert_eq!(
            names.unregister(h),
            Err(NameError::NotRegistered { handle: h })
        );
        assert_eq!(names.whereis("ticker"), Some(owner(2)));
    }

    #[test]
    fn a_taken_name_is_a_typed_error_naming_the_holder() {
        let storage = table(4);
        let names = Names::from_entries(&storage);
        names.register("pooler", owner(1)).unwrap();
        let err = names.register("pooler", owner(2)).unwrap_err();
        assert_eq!(
            err,
            NameError::Taken {
                name: "pooler".into(),
                owner_pid: 1001
            }
        );
        assert!(err.to_string().contains("1001"), "{err}");
        // The same process may hold several names.
        names.register("pooler.admin", owner(1)).unwrap();
        assert_eq!(names.list().len(), 2);
    }

    #[test]
    fn names_of_every_length_round_trip_and_do_not_alias() {
        let storage = table(MAX_NAME + 1);
        let names = Names::from_entries(&storage);
        for len in 1..=MAX_NAME {
            let name = "n".repeat(len);
            names.register(&name, owner(len as u32)).unwrap();
        }
        for len in 1..=MAX_NAME {
            assert_eq!(
                names.whereis(&"n".repeat(len)),
                Some(owner(len as u32)),
                "{len}"
            );
        }
        assert_eq!(names.list().len(), MAX_NAME);
    }

    #[test]
    fn invalid_names_and_owners_are_refused_without_writing() {
        let storage = table(2);
        let names = Names::from_entries(&storage);
        for bad in ["", "has space", "ünï", &"x".repeat(MAX_NAME + 1), "a/b"] {
            assert!(
                matches!(
                    names.register(bad, owner(1)),
                    Err(NameError::InvalidName { .. })
                ),
                "{bad:?}"
            );
            assert_eq!(names.whereis(bad), None);
        }
        let too_big = NameOwner {
            proc_index: MAX_PROC_INDEX + 1,
            ..owner(1)
        };
        assert_eq!(
            names.register("ok", too_big),
            Err(NameError::InvalidOwner {
                proc_index: MAX_PROC_INDEX + 1
            })
        );
        assert!(
            storage
                .iter()
                .all(|e| e.peek() == Ok((EntryState::Free, 0)))
        );
    }

    #[test]
    fn a_full_table_says_so_and_recovers() {
        let storage = table(2);
        let names = Names::from_entries(&storage);
        let a = names.register("a", owner(1)).unwrap();
        names.register("b", owner(1)).unwrap();
        assert_eq!(
            names.register("c", owner(1)),
            Err(NameError::Full { size: 2 })
        );
        // A taken name is reported as taken even when the table is full.
        assert!(matches!(
            names.register("a", owner(2)),
            Err(NameError::Taken { .. })
        ));
        names.unregister(a).unwrap();
        names.register("c", owner(1)).unwrap();
    }

    #[test]
    fn release_owned_by_frees_exactly_that_tenancys_names() {
        let storage = table(6);
        let names = Names::from_entries(&storage);
        names.register("w1.a", owner(1)).unwrap();
        names.register("w1.b", owner(1)).unwrap();
        names.register("w2", owner(2)).unwrap();
        // Slot 1's next tenancy (a different generation) keeps its name.
        let next = NameOwner {
            proc_generation: 99,
            ..owner(1)
        };
        names.register("w1.next", next).unwrap();
        let mut released = names.release_owned_by(1, owner(1).proc_generation);
        released.sort_by(|a, b| a.name.cmp(&b.name));
        let released: Vec<_> = released
            .iter()
            .map(|r| (r.name.as_deref(), r.state))
            .collect();
        assert_eq!(
            released,
            vec![
                (Some("w1.a"), EntryState::Live),
                (Some("w1.b"), EntryState::Live)
            ]
        );
        assert_eq!(names.whereis("w1.a"), None);
        assert_eq!(names.whereis("w2"), Some(owner(2)));
        assert_eq!(names.whereis("w1.next"), Some(next));
        assert!(
            names
                .release_owned_by(1, owner(1).proc_generation)
                .is_empty()
        );
        assert!(names.release_owned_by(MAX_PROC_INDEX + 7, 0).is_empty());
    }

    /// A registrant that died at each step of a registration leaves an
    /// entry the postmaster releases, after which the name is free again.
    #[test]
    fn registrations_cut_short_are_released_by_slot() {
        let storage = table(3);
        let names = Names::from_entries(&storage);
        let key = Key::new("half").unwrap();
        // Died right after the claim, before writing a byte: WRITING with
        // stale words from an earlier tenancy.
        names.register("older", owner(4)).unwrap();
        names.release_owned_by(4, owner(4).proc_generation);
        let writing = Control {
            generation: 2,
            proc_index: 5,
            hash: key.hash,
            state: EntryState::Writing,
        };
        storage[0]
            .control
            .store(writing.encode(), Ordering::Relaxed);
        // Died as a CANDIDATE, and as a DEFEATED one.
        let (i, candidate) = names.claim(&key, 6, owner(6)).unwrap();
        assert_eq!(i, 1);
        let (j, defeated) = names.claim(&key, 7, owner(7)).unwrap();
        storage[j].control.store(
            defeated.with_state(EntryState::Defeated).encode(),
            Ordering::Relaxed,
        );
        // A candidate is not registered (and does not block a lookup).
        assert_eq!(names.whereis("half"), None);
        let views = names.entries();
        assert_eq!(views.len(), 3);
        assert_eq!(views[0].state, Ok((EntryState::Writing, 2)));
        assert_eq!(views[1].name, Some(("half".into(), owner(6))));

        let r = names.release_owned_by(5, 12345);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].state, r[0].name.clone()), (EntryState::Writing, None));
        let r = names.release_owned_by(6, owner(6).proc_generation);
        assert_eq!(r[0].state, EntryState::Candidate);
        assert_eq!(r[0].handle.generation, candidate.generation);
        let r = names.release_owned_by(7, owner(7).proc_generation);
        assert_eq!(r[0].state, EntryState::Defeated);
        assert!(names.entries().is_empty());
        names.register("half", owner(8)).unwrap();
    }

    #[test]
    fn release_if_frees_the_names_of_owners_found_dead() {
        let storage = table(4);
        let names = Names::from_entries(&storage);
        names.register("alive", owner(1)).unwrap();
        names.register("dead", owner(2)).unwrap();
        let released = names.release_if(|o| o.proc_index == 2);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].name.as_deref(), Some("dead"));
        assert_eq!(names.whereis("alive"), Some(owner(1)));
        assert_eq!(names.whereis("dead"), None);
    }

    /// A lower-index candidate has priority over a higher one, and a
    /// higher one that looks later is defeated by it.
    #[test]
    fn priority_goes_to_the_lower_entry() {
        let storage = table(3);
        let names = Names::from_entries(&storage);
        let key = Key::new("race").unwrap();
        let (low, low_c) = names.claim(&key, 1, owner(1)).unwrap();
        let (high, high_c) = names.claim(&key, 2, owner(2)).unwrap();
        assert!(low < high);
        // The higher one looks first: it defers.
        assert!(matches!(
            names.contest(high, high_c, &key),
            Contest::LostTo(1001)
        ));
        retract(&storage[high], high_c);
        // Set up the reverse: the lower one looks while the higher one is
        // still a candidate, defeats it, and wins.
        let (high, high_c) = names.claim(&key, 2, owner(2)).unwrap();
        assert!(matches!(names.contest(low, low_c, &key), Contest::Won));
        assert_eq!(
            storage[high].peek(),
            Ok((EntryState::Defeated, high_c.generation))
        );
        assert!(matches!(
            names.contest(high, high_c, &key),
            Contest::LostTo(1001)
        ));
        retract(&storage[high], high_c);
        assert_eq!(storage[high].peek().unwrap().0, EntryState::Free);
        assert_eq!(names.whereis("race"), Some(owner(1)));
    }

    #[test]
    fn hash_collisions_are_told_apart_by_the_name() {
        // Find two names with the same 8-bit hash.
        let mut by_hash = std::collections::HashMap::new();
        let (a, b) = (0..)
            .map(|i| format!("n{i}"))
            .find_map(|n| {
                by_hash
                    .insert(hash8(n.as_bytes()), n.clone())
                    .map(|other| (other, n))
            })
            .unwrap();
        let storage = table(2);
        let names = Names::from_entries(&storage);
        names.register(&a, owner(1)).unwrap();
        names.register(&b, owner(2)).unwrap();
        assert_eq!(names.whereis(&a), Some(owner(1)));
        assert_eq!(names.whereis(&b), Some(owner(2)));
    }

    /// Random words written over the entries: every operation copes,
    /// nothing panics or loops forever, and a name read back is valid.
    #[test]
    fn garbage_entries_are_skipped_not_panicked_on() {
        let storage = table(4);
        let names = Names::from_entries(&storage);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut registered = 0;
        for round in 0..20_000 {
            let entry = &storage[round % 4];
            let mut control = next();
            if round % 3 == 0 {
                // A plausible state, so the words behind it are read.
                control = (control & !0xff) | (next() % 5);
            }
            entry.control.store(control, Ordering::Relaxed);
            entry.owner.store(next(), Ordering::Relaxed);
            for w in &entry.name {
                w.store(
                    if round % 5 == 0 {
                        next() & 0x3f
                    } else {
                        next()
                    },
                    Ordering::Relaxed,
                );
            }
            let _ = names.whereis("abc");
            for r in names.list() {
                assert_eq!(validate_name(&r.name), Ok(()));
            }
            let _ = names.entries();
            let _ = names.release_owned_by((next() % 4) as u32, next() as u32);
            let _ = names.unregister(NameHandle {
                entry: (next() % 5) as u32,
                generation: next() as u32,
            });
            if let Ok(h) = names.register("abc", owner(3)) {
                registered += 1;
                assert_eq!(names.whereis("abc"), Some(owner(3)));
                names.unregister(h).unwrap();
            }
            let _ = names.release_if(|_| true);
        }
        assert!(
            registered > 1000,
            "only {registered} registrations got through"
        );
    }

    #[test]
    fn threads_racing_for_names_get_exactly_one_winner_each() {
        let storage = table(8);
        let names = Names::from_entries(&storage);
        for round in 0..200 {
            let name = format!("race{}", round % 3);
            let winners: Vec<_> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..4u32)
                    .map(|t| {
                        let name = name.clone();
                        s.spawn(move || names.register(&name, owner(t)).ok())
                    })
                    .collect();
                racers
                    .into_iter()
                    .filter_map(|r| r.join().unwrap())
                    .collect()
            });
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let holder = names.whereis(&name).unwrap();
            names.unregister(winners[0]).unwrap();
            assert_eq!(names.whereis(&name), None, "{holder}");
        }
    }

    #[test]
    fn the_table_lives_in_a_segment() {
        let layout = Names::declare(shmem::Layout::builder(), 8).build().unwrap();
        let segment = shmem::Segment::create(&layout).unwrap();
        let names = Names::from_segment(&segment).unwrap();
        assert_eq!(names.len(), 8);
        names.register("seg", owner(1)).unwrap();
        assert_eq!(
            Names::from_segment(&segment).unwrap().whereis("seg"),
            Some(owner(1))
        );
        let other = shmem::Segment::create(
            &shmem::Layout::builder()
                .array::<u64>("x", 1)
                .build()
                .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Names::from_segment(&other),
            Err(NameError::Region(_))
        ));
    }
}
