//! The postmaster's published view of its workers, for `postmaster
//! status` and any other attached observer.
//!
//! One [`StatusEntry`] per core worker index. Only the postmaster writes
//! (after each loop iteration in which something changed); any process may
//! read, at any time, without a lock and without ever making the
//! postmaster wait.
//!
//! # Protocol: a sequence lock per entry
//!
//! The writer makes the entry's sequence odd, stores the words, and makes
//! it even again. A reader loads the sequence, copies the words, and loads
//! the sequence again; an odd or changed sequence means it raced a write,
//! so it tries again (at most [`READ_ATTEMPTS`] times, then reports the
//! entry as busy). Orderings:
//!
//! - writer: `seq = odd` (Relaxed) → `fence(Release)` → word stores
//!   (Relaxed) → `seq = even` (Release);
//! - reader: `seq` load (Acquire) → word loads (Relaxed) →
//!   `fence(Acquire)` → `seq` load (Relaxed).
//!
//! The reader's acquire load pairs with the writer's release store of the
//! even value (a reader that sees it sees the words written before it);
//! the reader's acquire fence pairs with the writer's release fence (if any
//! word load saw a store of the next write, the second `seq` load sees the
//! odd value stored before that fence, and the copy is thrown away).
//!
//! Everything read is data, never trusted for control: names are checked
//! for length and UTF-8, and a garbage entry reads as garbage, not as a
//! crash.

use shmem::sync::{AtomicU64, Ordering, fence};

use crate::core::{ExitStatus, RunState, WorkerInfo};
use crate::spec::MAX_NAME;

/// Region name of the status table.
pub const STATUS_REGION: &str = "bgw.status";

/// How often a reader retries an entry that is being written.
pub const READ_ATTEMPTS: usize = 64;

/// Name bytes per entry (a length byte plus [`MAX_NAME`] bytes, rounded to
/// words).
const NAME_WORDS: usize = (1 + MAX_NAME).div_ceil(8);
/// Words of one entry: worker name, group name, then six scalars.
const WORDS: usize = 2 * NAME_WORDS + 6;

/// `N` words behind a sequence lock with one writer; see the module docs.
#[repr(C)]
#[derive(Debug)]
pub struct SeqWords<const N: usize> {
    seq: AtomicU64,
    words: [AtomicU64; N],
}

impl<const N: usize> Default for SeqWords<N> {
    fn default() -> Self {
        SeqWords {
            seq: AtomicU64::new(0),
            words: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// A read that raced writes [`READ_ATTEMPTS`] times in a row (or an entry
/// left mid-write by a writer that died).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

impl<const N: usize> SeqWords<N> {
    /// Publishes `words`. Only one process (the postmaster) may write.
    pub fn write(&self, words: &[u64; N]) {
        // Relaxed: only the writer moves `seq`; the release fence below
        // orders this store before the words.
        let seq = self.seq.load(Ordering::Relaxed);
        let odd = seq.wrapping_add(1) | 1;
        self.seq.store(odd, Ordering::Relaxed);
        // Release: pairs with the reader's acquire fence in read().
        fence(Ordering::Release);
        for (cell, &word) in self.words.iter().zip(words) {
            // Relaxed: ordered by the fence above and the release below.
            cell.store(word, Ordering::Relaxed);
        }
        // Release: pairs with the reader's acquire load of `seq` in read().
        self.seq.store(odd.wrapping_add(1), Ordering::Release);
    }

    /// A consistent copy of the words, unless every attempt raced a write.
    pub fn read(&self) -> Result<[u64; N], Busy> {
        for _ in 0..READ_ATTEMPTS {
            // Acquire: pairs with the writer's final release store.
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                shmem::sync::spin_loop();
                continue;
            }
            let mut words = [0u64; N];
            for (word, cell) in words.iter_mut().zip(&self.words) {
                // Relaxed: validated by the sequence check below.
                *word = cell.load(Ordering::Relaxed);
            }
            // Acquire: pairs with the writer's release fence in write().
            fence(Ordering::Acquire);
            // Relaxed: ordered by the fence above.
            if self.seq.load(Ordering::Relaxed) == before {
                return Ok(words);
            }
        }
        Err(Busy)
    }
}

/// One worker's published status; see the module docs.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct StatusEntry(SeqWords<WORDS>);

// SAFETY: repr(C) of atomics only: any bytes are valid values, no
// pointers, all mutation atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for StatusEntry {}

/// A worker's state as `postmaster status` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShownState {
    /// Registered, waiting for its phase or for a sibling.
    Waiting,
    /// Waiting out a restart delay (backoff).
    Backoff,
    /// Forked, not reported ready yet.
    Starting,
    /// Running (and not using readiness, or not ready yet after start).
    Running,
    /// Running and reported ready.
    Ready,
    /// Asked to stop.
    Stopping,
    /// Stopped by an operator (`postmaster stop`); starts again only when
    /// asked (`postmaster start`).
    Stopped,
    /// Its group exceeded its restart intensity and was left stopped;
    /// starts again only when asked (`postmaster start` on any member
    /// restarts the whole group).
    Failed,
}

impl ShownState {
    const ALL: [ShownState; 8] = [
        ShownState::Waiting,
        ShownState::Backoff,
        ShownState::Starting,
        ShownState::Running,
        ShownState::Ready,
        ShownState::Stopping,
        ShownState::Stopped,
        ShownState::Failed,
    ];

    /// The lowercase name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ShownState::Waiting => "waiting",
            ShownState::Backoff => "backoff",
            ShownState::Starting => "starting",
            ShownState::Running => "running",
            ShownState::Ready => "ready",
            ShownState::Stopping => "stopping",
            ShownState::Stopped => "stopped",
            ShownState::Failed => "failed",
        }
    }
}

/// One worker, as read from the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerRow {
    /// The worker's name.
    pub name: String,
    /// Its supervision group.
    pub group: String,
    /// Its pid, 0 when not running.
    pub pid: u32,
    /// Its state.
    pub state: ShownState,
    /// Whether it was registered dynamically.
    pub dynamic: bool,
    /// Restarts after failures.
    pub restarts: u64,
    /// Times forked.
    pub starts: u64,
    /// How it ended last time.
    pub last_exit: Option<ExitStatus>,
    /// When the current run began, in CLOCK_MONOTONIC nanoseconds (0 when
    /// not running).
    pub started_at_ns: u64,
}

impl WorkerRow {
    /// The row the core's view of a worker gives; `started_at_ns` is the
    /// driver's clock reading for the core's `started_at`.
    pub fn from_info(
        w: &WorkerInfo,
        group: &str,
        started_at_ns: u64,
        now_in_core: std::time::Duration,
    ) -> Self {
        let state = match w.state {
            RunState::Waiting { .. } | RunState::Held if w.suspended => ShownState::Stopped,
            RunState::Waiting { .. } | RunState::Held if w.failed => ShownState::Failed,
            RunState::Waiting {
                not_before: Some(at),
            } if at > now_in_core => ShownState::Backoff,
            RunState::Waiting { .. } | RunState::Held => ShownState::Waiting,
            RunState::Forking => ShownState::Starting,
            RunState::Running { .. } if w.ready => ShownState::Ready,
            RunState::Running { .. } => ShownState::Running,
            RunState::Stopping { .. } => ShownState::Stopping,
        };
        WorkerRow {
            name: w.spec.name().to_owned(),
            group: group.to_owned(),
            pid: w.state.pid().unwrap_or(0),
            state,
            dynamic: w.dynamic,
            restarts: w.restarts,
            starts: w.starts,
            last_exit: w.last_exit,
            started_at_ns: if w.state.pid().is_some() {
                started_at_ns
            } else {
                0
            },
        }
    }

    fn encode(&self) -> [u64; WORDS] {
        let mut words = [0u64; WORDS];
        put_str(&mut words[..NAME_WORDS], &self.name);
        put_str(&mut words[NAME_WORDS..2 * NAME_WORDS], &self.group);
        let s = 2 * NAME_WORDS;
        let state = ShownState::ALL
            .iter()
            .position(|x| *x == self.state)
            .unwrap_or(0) as u64;
        words[s] = u64::from(self.pid) | state << 32 | u64::from(self.dynamic) << 40;
        words[s + 1] = self.restarts;
        words[s + 2] = self.starts;
        words[s + 3] = match self.last_exit {
            None => 0,
            Some(ExitStatus::Code(c)) => 1 << 32 | u64::from(c as u32),
            Some(ExitStatus::Signaled(n)) => 2 << 32 | u64::from(n as u32),
        };
        words[s + 4] = self.started_at_ns;
        words[s + 5] = 1; // in use
        words
    }

    fn decode(words: &[u64; WORDS]) -> Option<WorkerRow> {
        let s = 2 * NAME_WORDS;
        if words[s + 5] != 1 {
            return None;
        }
        let state = *ShownState::ALL.get(((words[s] >> 32) & 0xff) as usize)?;
        let last_exit = match words[s + 3] >> 32 {
            0 => None,
            1 => Some(ExitStatus::Code(words[s + 3] as u32 as i32)),
            2 => Some(ExitStatus::Signaled(words[s + 3] as u32 as i32)),
            _ => return None,
        };
        Some(WorkerRow {
            name: get_str(&words[..NAME_WORDS])?,
            group: get_str(&words[NAME_WORDS..2 * NAME_WORDS])?,
            pid: words[s] as u32,
            state,
            dynamic: (words[s] >> 40) & 1 == 1,
            restarts: words[s + 1],
            starts: words[s + 2],
            last_exit,
            started_at_ns: words[s + 4],
        })
    }
}

/// Packs `text` into `words` for a [`SeqWords`] entry: a length byte, then
/// the bytes, little-endian, cut to what fits (at most 255 bytes, and
/// between characters).
pub fn put_str(words: &mut [u64], text: &str) {
    let mut bytes = vec![0u8; words.len() * 8];
    if let Some((len, rest)) = bytes.split_first_mut() {
        let text = cut_at_char(text, rest.len().min(255));
        *len = text.len() as u8;
        rest[..text.len()].copy_from_slice(text.as_bytes());
    }
    for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
    }
}

/// The longest start of `text` of at most `max` bytes that ends between
/// characters (so, unlike `String::truncate` there, it cannot panic).
pub fn cut_at_char(text: &str, max: usize) -> &str {
    let mut len = text.len().min(max);
    while !text.is_char_boundary(len) {
        len -= 1;
    }
    &text[..len]
}

/// The text [`put_str`] packed, or `None` if `words` hold no valid one
/// (a length past the end, or bytes that are not UTF-8).
pub fn get_str(words: &[u64]) -> Option<String> {
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let len = usize::from(*bytes.first()?);
    String::from_utf8(bytes.get(1..1 + len)?.to_vec()).ok()
}

impl StatusEntry {
    /// The postmaster's side: publishes `row` (or clears the entry).
    pub fn write(&self, row: Option<&WorkerRow>) {
        self.0.write(&row.map_or([0u64; WORDS], WorkerRow::encode));
    }

    /// A consistent copy of the entry: `Ok(None)` for an unused entry (or
    /// one whose contents do not decode).
    pub fn read(&self) -> Result<Option<WorkerRow>, Busy> {
        self.0.read().map(|words| WorkerRow::decode(&words))
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of
/// [`WorkerRow::started_at_ns`] and of worker heartbeats, the one
/// `Instant` uses, readable alike by every process on the machine.
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Reads every entry of a table; entries being written are skipped.
pub fn read_all(table: &[StatusEntry]) -> Vec<WorkerRow> {
    table
        .iter()
        .filter_map(|e| e.read().ok().flatten())
        .collect()
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn row(name: &str) -> WorkerRow {
        WorkerRow {
            name: name.to_owned(),
            group: "root".to_owned(),
            pid: 4242,
            state: ShownState::Ready,
            dynamic: true,
            restarts: 3,
            starts: 4,
            last_exit: Some(ExitStatus::Signaled(9)),
            started_at_ns: 123_456_789,
        }
    }

    #[test]
    fn rows_round_trip_through_an_entry_including_the_longest_name() {
        let entry = StatusEntry::default();
        assert_eq!(entry.read(), Ok(None), "all-zero is an unused entry");
        for r in [row("counter"), row(&"n".repeat(MAX_NAME))] {
            entry.write(Some(&r));
            assert_eq!(entry.read(), Ok(Some(r)));
        }
        entry.write(None);
        assert_eq!(entry.read(), Ok(None));
    }

    /// Text cut to fit is cut between characters, so it reads back: a
    /// cut inside one would leave bytes that are not UTF-8, and the whole
    /// entry unreadable.
    #[test]
    fn text_too_long_for_its_words_is_cut_at_a_character_boundary() {
        let mut words = [0u64; 1];
        // Seven bytes fit after the length byte; "é" is two.
        put_str(&mut words, "éééé");
        assert_eq!(get_str(&words).as_deref(), Some("ééé"));
        put_str(&mut words, "abcdefgh");
        assert_eq!(get_str(&words).as_deref(), Some("abcdefg"));
        put_str(&mut [], "anything");
        assert_eq!(cut_at_char("aé", 2), "a");
        assert_eq!(cut_at_char("aé", 3), "aé");
    }

    #[test]
    fn an_entry_stuck_mid_write_reads_as_busy_not_as_data() {
        let entry = StatusEntry::default();
        entry.write(Some(&row("a")));
        entry.0.seq.store(7, Ordering::Relaxed); // a writer that died mid-write
        assert_eq!(entry.read(), Err(Busy));
    }

    #[test]
    fn garbage_words_never_panic() {
        let entry = StatusEntry::default();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            for cell in &entry.0.words {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                cell.store(x, Ordering::Relaxed);
            }
            let _ = entry.read();
        }
    }
}
