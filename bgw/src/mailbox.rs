//! Per-worker inboxes in shared memory: casts, calls with replies and
//! deadlines, woken through the receiver's latch. Erlang's mailboxes and
//! `gen_server:call/cast`, between processes that share a segment.
//!
//! # Roles
//!
//! - Every process slot `i` has one inbox, an [`MpscRing`] of fixed-size
//!   message cells. The process holding slot `i` (tenancy `g`) opens it
//!   ([`Mailboxes::inbox`]) and is its only consumer: it receives casts and
//!   calls ([`Inbox::recv`]), [`reply`](Inbox::reply)s to calls, and makes
//!   calls of its own ([`Inbox::call`]), whose replies land in this same
//!   inbox. Its address is `(i, g)` ([`Address`]).
//! - Any attached process sends: [`Mailboxes::cast`] (no slot needed),
//!   [`Mailboxes::send`], or through its own inbox.
//! - The **postmaster**, after reaping a process, frees what the process
//!   held in every ring ([`Mailboxes::recover_sender`]) and, if the process
//!   owned an inbox, empties it before the slot's next tenant opens it
//!   ([`Mailboxes::reset_inbox`]). It never waits on anything to do so.
//!
//! This module does not know the process array's layout: liveness and
//! latches come from a [`Peers`] implementation (one is provided for
//! [`ProcArray`]), and the caller passes its own latch to
//! [`Mailboxes::inbox`].
//!
//! # Messages
//!
//! A cell is the ring's `MpscCell<[u64; 31]>`: an 8-byte ring state word and
//! 248 bytes of message, 256 bytes in all, so cells are cache-line aligned
//! in the segment. [`Cell`] is an array of `u64` (a `Pod` type the ring can
//! hold without this crate depending on `bytemuck`); the message is encoded
//! into it in private memory and decoded out of it after the pop:
//!
//! | word    | bits                                                                 |
//! |---------|----------------------------------------------------------------------|
//! | 0       | `kind` (8) \| `MAGIC` (8) \| payload length (16) \| sender slot (32)   |
//! | 1       | sender generation (32) \| receiver generation (32)                     |
//! | 2       | correlation id (64)                                                  |
//! | 3 to 30 | payload, at most [`MAX_MESSAGE`] = 224 bytes, little-endian           |
//!
//! A message carries the generation of the tenancy it was sent to. The
//! owner drops (and counts, [`InboxStats::stale`]) messages for another
//! generation: whatever a sender pushed for a worker that has since died
//! can never reach its successor in the same slot.
//!
//! # Sending, and why no wake-up is lost
//!
//! A send checks the receiver's slot ([`Peers::peer`]: same generation,
//! running), claims a producer slot of the ring for the calling process
//! (its pid as owner token), pushes, gives the producer slot back, and then
//! sets the receiver's latch. A process holds a producer slot only for the
//! few instructions of one push, so the ring's
//! [`MAX_PRODUCERS`](shmem::ring::MAX_PRODUCERS) bounds
//! concurrent pushes, not senders; a send that finds all of them busy is
//! treated like a full ring.
//!
//! The receiver follows the latch's usage loop: reset its latch, look at
//! the ring, wait. The cell's `Release` publish comes before the setter's
//! `Release` swap of the latch word; the owner's reset is an `Acquire`
//! read-modify-write, and its wait returns at once on a `SET` that came
//! after the reset. So either the reset reads the sender's `SET` (and the
//! look that follows sees the message), or the `SET` comes after the reset
//! (and the wait returns): the latch crate's argument, unchanged. The
//! latch is set on every send, which costs one atomic swap and, only when
//! the owner sleeps, one `FUTEX_WAKE`.
//!
//! A full inbox is an error ([`MailError::Full`]) or a wait until a
//! deadline ([`Wait::Until`]). The receiver does not know who waits for
//! space, so a waiting sender polls, backing off from 20 µs to 1 ms and
//! re-checking the receiver's liveness each time; size inboxes for the
//! bursts you expect and treat a full one as the exception it should be.
//!
//! # Calls
//!
//! [`Inbox::call`] takes the next correlation id (a per-inbox counter,
//! seeded from the clock so that ids do not repeat when an inbox is opened
//! again), sends a call carrying the caller's address, and waits on its
//! own latch for a reply with that id from that address. Everything else
//! that arrives meanwhile (casts, calls from other processes) is kept in a
//! private queue, which [`Inbox::recv`] returns first; replies to other
//! (earlier, timed out) calls are dropped and counted. A call never hangs
//! past its deadline: the caller wakes at least every [`RECHECK`] to check
//! the callee's slot, and returns [`CallError::Died`] as soon as it holds
//! another generation or is no longer running (the postmaster frees a dead
//! worker's slot right after reaping it). A call to an address that is
//! not running fails before anything is sent.
//!
//! Waiting resets the caller's latch, which other parts of the process may
//! use too. So that nothing else is missed, a call that reset a set it
//! cannot account for leaves the latch set when it returns, and the
//! caller's own wait loop comes round once more; the same holds for
//! [`Inbox::recv`], which returns `None` when the latch was set for
//! something other than a message.
//!
//! # Dead processes
//!
//! - A **sender** that dies mid-push leaves its cell claimed: the owner's
//!   receives stop at it (`InFlight`, read as "nothing yet") and nothing
//!   behind it is delivered out of order. The postmaster, once it has
//!   reaped the process, calls [`Mailboxes::recover_sender`] with its pid:
//!   `MpscRing::recover_owner` on every ring turns that process's claims
//!   into poisoned cells and frees its producer slots, and the owners of
//!   the rings where a message was lost have their latch set; their
//!   receives then count the loss ([`InboxStats::lost`]) and go on.
//! - An **owner** that dies leaves its inbox holding the consumer role and
//!   perhaps messages. `recover_sender` frees the role too; then
//!   [`Mailboxes::reset_inbox`] drains the ring through the ordinary
//!   consumer protocol (so it is safe while other processes are pushing),
//!   stopping at a claim still in flight. Anything that arrives later for
//!   the dead tenancy carries its generation and is dropped by the next
//!   owner. Both must run after the process is known dead (the ring's
//!   recovery hands its claims to others), hence `unsafe`; processes that
//!   attached by themselves need the same from whoever reclaims their slot.
//!
//! # What is not trusted
//!
//! A cell is decoded with its magic byte, kind, length and sender checked;
//! anything else is dropped and counted ([`InboxStats::malformed`]). Every
//! loop over the ring is bounded by its capacity; the postmaster's drain
//! makes at most two passes' worth of pops. A ring whose state no correct
//! process could have written gives [`Corrupt`], never a panic or a hang.
//!
//! # Usage
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bgw::mailbox::{Address, Mailboxes, Wait};
//! use proclist::{Kind, ProcArray, ProcArrayConfig};
//! use shmem::{Layout, Segment};
//!
//! let config = ProcArrayConfig { workers: 0, backends: 2 };
//! let builder = ProcArray::declare(Layout::builder(), config);
//! let layout = Mailboxes::declare(builder, 2, 16).build()?;
//! let segment = Segment::create(&layout)?;
//! let procs = ProcArray::init(&segment, config)?;
//! let mailboxes = Mailboxes::from_segment(&segment)?;
//!
//! // Two slots, as two workers would hold them (here: two threads).
//! let (server_slot, client_slot) = (procs.acquire(Kind::Backend)?, procs.acquire(Kind::Backend)?);
//! let server_at = Address::from(server_slot.handle());
//! let deadline = Instant::now() + Duration::from_secs(10);
//! std::thread::scope(|s| {
//!     s.spawn(|| {
//!         let mut inbox = mailboxes.inbox(server_at, server_slot.latch()).unwrap();
//!         let mut served = 0;
//!         while served < 2 && Instant::now() < deadline {
//!             let Some(msg) = inbox.recv(Some(deadline)).unwrap() else { continue };
//!             match msg.reply_to() {
//!                 Some(to) => inbox.reply(&procs, to, b"pong", Wait::NoWait).unwrap(),
//!                 None => assert_eq!(msg.payload(), b"tick"),
//!             }
//!             served += 1;
//!         }
//!     });
//!     let mut inbox = mailboxes
//!         .inbox(Address::from(client_slot.handle()), client_slot.latch())
//!         .unwrap();
//!     inbox.cast(&procs, server_at, b"tick", Wait::NoWait).unwrap();
//!     assert_eq!(inbox.call(&procs, server_at, b"ping", deadline).unwrap(), b"pong");
//! });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use latch::{Latch, LatchError, WaitOptions, Wake};
use proclist::ProcArray;
use shmem::ring::{
    Corrupt, MpscCell, MpscConsumer, MpscPopError, MpscPushError, MpscRing, MpscRingHeader,
    RingError, own_token,
};
use thiserror::Error;

use crate::names::{NameOwner, Names};

/// The name of the inbox headers' region (one per process slot).
pub const REGION: &str = "bgw.mailbox";

/// The name of the inbox cells' region (`capacity` per process slot).
pub const CELLS_REGION: &str = "bgw.mailbox.cells";

/// Words in one message cell (the ring adds its 8-byte state word, making
/// a 256-byte cell).
pub const CELL_WORDS: usize = 31;

/// One message as the ring stores it; see the module docs for the words.
pub type Cell = [u64; CELL_WORDS];

/// Header words at the start of a cell.
const HEADER_WORDS: usize = 3;

/// The largest payload a message may have, in bytes.
pub const MAX_MESSAGE: usize = (CELL_WORDS - HEADER_WORDS) * 8;

/// The longest a caller sleeps between checks that its callee still runs.
pub const RECHECK: Duration = Duration::from_millis(50);

/// Byte 1 of a cell: marks words written by this module's encoder, so that
/// a cell of another format (or garbage) is dropped, not misread.
const MAGIC: u8 = 0xb6;

/// Sender slot of a message from a process without a slot.
const ANONYMOUS: u32 = u32::MAX;

/// The first and the longest pause of a sender waiting for space.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<MpscCell<Cell>>() == 2 * shmem::CACHE_LINE);
    assert!(MAX_MESSAGE <= u16::MAX as usize);
};

// ---------------------------------------------------------------------------
// Addresses and messages
// ---------------------------------------------------------------------------

/// An inbox address: one tenancy of one process slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The process slot, which is also the inbox index.
    pub proc_index: u32,
    /// The slot's generation during the tenancy.
    pub generation: u32,
}

impl From<NameOwner> for Address {
    fn from(owner: NameOwner) -> Self {
        Address {
            proc_index: owner.proc_index,
            generation: owner.proc_generation,
        }
    }
}

impl From<proclist::SlotHandle> for Address {
    fn from(handle: proclist::SlotHandle) -> Self {
        Address {
            proc_index: handle.index,
            generation: handle.generation,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inbox {}/{}", self.proc_index, self.generation)
    }
}

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Fire and forget.
    Cast = 1,
    /// A request the sender waits to have answered ([`Message::reply_to`]).
    Call = 2,
    /// The answer to a call. Only [`Inbox::call`] sees these.
    Reply = 3,
}

impl Kind {
    fn from_u8(value: u8) -> Option<Kind> {
        [Kind::Cast, Kind::Call, Kind::Reply]
            .into_iter()
            .find(|k| *k as u8 == value)
    }
}

/// The addressing part of a message: what it is, who sent it, and the
/// correlation id that pairs a call with its reply (0 for casts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// What the message is.
    pub kind: Kind,
    /// The sender's inbox, if it has one (replies go there).
    pub from: Option<Address>,
    /// Pairs a reply with its call.
    pub correlation: u64,
}

/// Where to send the reply to a call: from [`Message::reply_to`], for
/// [`Inbox::reply`]. Plain data: it may be kept and answered later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    /// The caller's inbox.
    pub to: Address,
    /// The call's correlation id.
    pub correlation: u64,
}

/// A received message, copied into private memory.
#[derive(Clone)]
pub struct Message {
    envelope: Envelope,
    len: u16,
    bytes: [u8; MAX_MESSAGE],
}

impl Message {
    /// What the message is.
    pub fn kind(&self) -> Kind {
        self.envelope.kind
    }

    /// The sender's inbox, if it has one.
    pub fn from(&self) -> Option<Address> {
        self.envelope.from
    }

    /// The correlation id (0 for a cast).
    pub fn correlation(&self) -> u64 {
        self.envelope.correlation
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// For a call, where its reply goes; `None` for anything else.
    pub fn reply_to(&self) -> Option<ReplyTo> {
        match (self.envelope.kind, self.envelope.from) {
            (Kind::Call, Some(to)) => Some(ReplyTo {
                to,
                correlation: self.envelope.correlation,
            }),
            _ => None,
        }
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("kind", &self.envelope.kind)
            .field("from", &self.envelope.from)
            .field("correlation", &self.envelope.correlation)
            .field("payload", &self.payload())
            .finish()
    }
}

/// Encodes a message for the tenancy `to_generation`. The payload length
/// was checked by the caller.
fn encode(envelope: Envelope, to_generation: u32, payload: &[u8]) -> Cell {
    debug_assert!(payload.len() <= MAX_MESSAGE);
    let (from_index, from_generation) = envelope
        .from
        .map_or((ANONYMOUS, 0), |a| (a.proc_index, a.generation));
    let mut cell = [0u64; CELL_WORDS];
    cell[0] = u64::from(envelope.kind as u8)
        | (u64::from(MAGIC) << 8)
        | ((payload.len() as u64) << 16)
        | (u64::from(from_index) << 32);
    cell[1] = u64::from(from_generation) | (u64::from(to_generation) << 32);
    cell[2] = envelope.correlation;
    for (word, chunk) in cell[HEADER_WORDS..].iter_mut().zip(payload.chunks(8)) {
        let mut le = [0u8; 8];
        le[..chunk.len()].copy_from_slice(chunk);
        *word = u64::from_le_bytes(le);
    }
    cell
}

/// Decodes a popped cell: the message and the generation it was sent to,
/// or `None` if the cell is not a message this module wrote.
fn decode(cell: &Cell) -> Option<(Message, u32)> {
    let head = cell[0];
    let kind = Kind::from_u8(head as u8)?;
    if (head >> 8) as u8 != MAGIC {
        return None;
    }
    let len = usize::from((head >> 16) as u16);
    if len > MAX_MESSAGE {
        return None;
    }
    let from_index = (head >> 32) as u32;
    let from_generation = cell[1] as u32;
    let from = match from_index {
        ANONYMOUS if from_generation == 0 => None,
        ANONYMOUS => return None,
        proc_index => Some(Address {
            proc_index,
            generation: from_generation,
        }),
    };
    let to_generation = (cell[1] >> 32) as u32;
    let mut bytes = [0u8; MAX_MESSAGE];
    for (chunk, word) in bytes[..len].chunks_mut(8).zip(&cell[HEADER_WORDS..]) {
        chunk.copy_from_slice(&word.to_le_bytes()[..chunk.len()]);
    }
    let message = Message {
        envelope: Envelope {
            kind,
            from,
            correlation: cell[2],
        },
        len: len as u16,
        bytes,
    };
    Some((message, to_generation))
}

// ---------------------------------------------------------------------------
// Peers: liveness and latches, from whoever knows them
// ---------------------------------------------------------------------------

/// What a sender needs to know about a process slot.
#[derive(Clone, Copy, Debug)]
pub struct Peer<'a> {
    /// The slot's current generation.
    pub generation: u32,
    /// Whether the current tenant is running (may receive): for a
    /// [`ProcArray`], the slot is `ACTIVE`.
    pub running: bool,
    /// The slot's latch, which a send sets.
    pub latch: &'a Latch,
}

/// Where senders and callers learn whether a slot's tenant runs, and find
/// its latch. Implemented for [`ProcArray`]; tests and models implement it
/// over whatever stands in for the process array.
pub trait Peers {
    /// Slot `proc_index`, if it exists.
    fn peer(&self, proc_index: u32) -> Option<Peer<'_>>;
}

impl Peers for ProcArray<'_> {
    fn peer(&self, proc_index: u32) -> Option<Peer<'_>> {
        let slot = self.get(proc_index)?;
        let status = slot.status();
        Some(Peer {
            generation: status.generation,
            running: status.state == proclist::slot::ACTIVE,
            latch: slot.latch(),
        })
    }
}

/// Checks that `to` names the running tenancy of its slot.
fn check_peer<P: Peers + ?Sized>(peers: &P, to: Address) -> Result<Peer<'_>, MailError> {
    let peer = peers
        .peer(to.proc_index)
        .ok_or(MailError::NoSuchSlot { to })?;
    if peer.generation != to.generation {
        return Err(MailError::Stale {
            to,
            generation: peer.generation,
        });
    }
    if !peer.running {
        return Err(MailError::NotRunning { to });
    }
    Ok(peer)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// How long a send may wait for room in a full inbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not at all: a full inbox is [`MailError::Full`].
    NoWait,
    /// Until this instant: an inbox still full then is
    /// [`MailError::Timeout`].
    Until(Instant),
}

/// Why a message was not sent, or an inbox not opened.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum MailError {
    /// The payload is longer than a cell holds.
    #[error(
        "a {len}-byte message does not fit an inbox cell ({MAX_MESSAGE} bytes at most); send \
         larger data through a byte ring or the application's own region"
    )]
    TooLarge {
        /// The payload's length.
        len: usize,
    },
    /// The receiver's inbox is full and the send was not to wait.
    #[error("{to} is full; retry later or send with a deadline")]
    Full {
        /// The receiver.
        to: Address,
    },
    /// The receiver's inbox stayed full until the deadline.
    #[error("{to} stayed full until the deadline")]
    Timeout {
        /// The receiver.
        to: Address,
    },
    /// No process slot (so no inbox) has that index.
    #[error("{to} names no process slot; the address is not from this segment")]
    NoSuchSlot {
        /// The address.
        to: Address,
    },
    /// The slot holds another tenancy: the process the address named has
    /// exited (and the slot may have been taken again).
    #[error("{to} is gone: its slot is at generation {generation} now; look the worker up again")]
    Stale {
        /// The address.
        to: Address,
        /// The slot's generation now.
        generation: u32,
    },
    /// The tenancy exists but is not running: starting, or exiting.
    #[error("{to} is not running (starting, or exiting)")]
    NotRunning {
        /// The address.
        to: Address,
    },
    /// Another live process has this inbox open.
    #[error(
        "inbox {proc_index} is held by owner {owner}; if that process has died, the postmaster \
         (or whoever reclaims its slot) must recover it and reset the inbox first"
    )]
    InboxTaken {
        /// The inbox.
        proc_index: u32,
        /// The owner token (pid) holding it.
        owner: u32,
    },
    /// The inbox regions do not fit together.
    #[error("inbox storage does not fit: {0}")]
    Layout(String),
    /// The inbox's ring is corrupt: the segment needs a reset.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// A ring view or role could not be made.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The inbox regions are missing or of the wrong type.
    #[error(transparent)]
    Region(#[from] shmem::RegionError),
}

/// Why [`Inbox::recv`] failed.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The inbox's ring is corrupt: the segment needs a reset.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
    /// The postmaster died; clean up and exit.
    #[error("the postmaster died")]
    PostmasterDied,
    /// The postmaster reset shared memory since the inbox was opened: the
    /// inbox, its slot and every name are gone (reported by
    /// [`Endpoint`](crate::endpoint::Endpoint), which knows the segment).
    #[error(
        "the postmaster reset shared memory (generation {was} is now {now}); open a new endpoint"
    )]
    Reset {
        /// The segment generation when the inbox was opened.
        was: u64,
        /// The generation now.
        now: u64,
    },
    /// Waiting on the latch failed (it is not this process's).
    #[error(transparent)]
    Latch(#[from] LatchError),
}

/// Why [`Inbox::call`] returned no reply.
#[derive(Debug, Error)]
pub enum CallError {
    /// The request could not be delivered: the callee is gone, not
    /// running, or its inbox stayed full; or the request is too large.
    #[error("the call was not delivered: {0}")]
    Send(#[from] MailError),
    /// The callee stopped (or its slot was taken again) before it replied.
    #[error("{to} stopped before it replied")]
    Died {
        /// The callee.
        to: Address,
    },
    /// No reply came before the deadline.
    #[error("{to} did not reply before the deadline")]
    Timeout {
        /// The callee.
        to: Address,
    },
    /// No process has registered the name.
    #[error("no process has registered the name {name:?}")]
    NotRegistered {
        /// The name.
        name: String,
    },
    /// A process cannot call itself: it would wait for its own reply.
    #[error("{to} is the caller's own inbox; a process cannot call itself")]
    CallToSelf {
        /// The caller's own address.
        to: Address,
    },
    /// Receiving the reply failed.
    #[error(transparent)]
    Recv(#[from] RecvError),
}

// ---------------------------------------------------------------------------
// The table of inboxes
// ---------------------------------------------------------------------------

/// What [`Mailboxes::recover_sender`] cleaned up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderRecovered {
    /// Producer slots (and consumer roles) freed.
    pub roles: usize,
    /// Messages lost with the sender (claimed, never published).
    pub abandoned: usize,
}

/// What [`Mailboxes::reset_inbox`] found in a dead owner's inbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxReset {
    /// Messages drained and dropped.
    pub drained: usize,
    /// Messages lost by senders that died writing them.
    pub abandoned: usize,
    /// Whether the drain stopped at a claim still being written (by a live
    /// sender, or by a dead one not yet recovered); what lies behind it is
    /// dropped by the next owner, which sees it for another generation.
    pub stopped_at_claim: bool,
}

/// A view of every inbox: one ring header per process slot, and
/// `capacity` cells per slot.
#[derive(Clone, Copy)]
pub struct Mailboxes<'a> {
    headers: &'a [MpscRingHeader],
    cells: &'a [MpscCell<Cell>],
    capacity: usize,
}

impl fmt::Debug for Mailboxes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailboxes")
            .field("inboxes", &self.headers.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<'a> Mailboxes<'a> {
    /// Adds the inboxes of `slots` process slots (workers and backends),
    /// each holding `capacity` messages (a power of two), to a layout:
    /// `slots * (512 + 256 * capacity)` bytes.
    #[cfg(not(loom))]
    pub fn declare(
        builder: shmem::LayoutBuilder,
        slots: usize,
        capacity: usize,
    ) -> shmem::LayoutBuilder {
        builder
            .array::<MpscRingHeader>(REGION, slots)
            .array::<MpscCell<Cell>>(CELLS_REGION, slots.saturating_mul(capacity))
    }

    /// The inboxes in `segment`. All-zero is every inbox empty, with no
    /// owner: nobody needs to set them up.
    #[cfg(not(loom))]
    pub fn from_segment(segment: &'a shmem::Segment) -> Result<Self, MailError> {
        Self::from_parts(segment.array(REGION)?, segment.array(CELLS_REGION)?)
    }

    /// A view over storage the caller laid out ([`MailboxStorage`] on the
    /// heap for tests and models): one header per inbox, and the same
    /// power-of-two number of cells for each.
    pub fn from_parts(
        headers: &'a [MpscRingHeader],
        cells: &'a [MpscCell<Cell>],
    ) -> Result<Self, MailError> {
        let slots = headers.len().min(u32::MAX as usize);
        let headers = &headers[..slots];
        let capacity = match slots {
            0 => 0,
            n => cells.len() / n,
        };
        if slots > 0 && (cells.len() != slots * capacity || !capacity.is_power_of_two()) {
            return Err(MailError::Layout(format!(
                "{} cells for {slots} inboxes is not a power of two per inbox",
                cells.len()
            )));
        }
        let mailboxes = Mailboxes {
            headers,
            cells,
            capacity,
        };
        if let Some(first) = headers.first() {
            MpscRing::new(first, &cells[..capacity])?;
        }
        Ok(mailboxes)
    }

    /// The number of inboxes (process slots).
    pub fn len(&self) -> usize {
        self.headers.len()
    }

    /// Whether there are no inboxes at all.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty()
    }

    /// Messages each inbox holds when full.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The ring of inbox `proc_index`.
    pub fn ring(&self, proc_index: u32) -> Option<MpscRing<'a, Cell>> {
        let i = proc_index as usize;
        let header = self.headers.get(i)?;
        let cells = self.cells.get(i * self.capacity..(i + 1) * self.capacity)?;
        // Cannot fail: from_parts checked the capacity.
        MpscRing::new(header, cells).ok()
    }

    /// Opens the inbox of `me` for its owner: the process holding slot
    /// `me.proc_index` in generation `me.generation`, whose latch is
    /// `latch` (owned by the calling process). One consumer at a time; the
    /// role is given back when the [`Inbox`] is dropped, and messages it
    /// had taken but not returned are lost with it.
    pub fn inbox(&self, me: Address, latch: &'a Latch) -> Result<Inbox<'a>, MailError> {
        let ring = self
            .ring(me.proc_index)
            .ok_or(MailError::NoSuchSlot { to: me })?;
        let consumer = ring.consumer(own_token()).map_err(|e| match e {
            RingError::RoleTaken { owner, .. } => MailError::InboxTaken {
                proc_index: me.proc_index,
                owner,
            },
            other => MailError::Ring(other),
        })?;
        Ok(Inbox {
            mailboxes: *self,
            consumer,
            me,
            latch,
            pending: VecDeque::new(),
            next_correlation: correlation_seed(),
            stats: InboxStats::default(),
        })
    }

    /// Sends `payload` to `to` under `envelope`: checks that `to` is the
    /// running tenancy of its slot, pushes, and sets the receiver's latch.
    /// With [`Wait::Until`], a full inbox is retried until the deadline,
    /// re-checking the receiver each time.
    pub fn send<P: Peers + ?Sized>(
        &self,
        peers: &P,
        to: Address,
        envelope: Envelope,
        payload: &[u8],
        wait: Wait,
    ) -> Result<(), MailError> {
        if payload.len() > MAX_MESSAGE {
            return Err(MailError::TooLarge { len: payload.len() });
        }
        let ring = self
            .ring(to.proc_index)
            .ok_or(MailError::NoSuchSlot { to })?;
        let cell = encode(envelope, to.generation, payload);
        let mut pause = FIRST_PAUSE;
        loop {
            let peer = check_peer(peers, to)?;
            if push(ring, &cell)? {
                // After the push (whose Release publish of the cell comes
                // first in program order): see "Sending" in the module docs.
                peer.latch.set();
                return Ok(());
            }
            let Wait::Until(deadline) = wait else {
                return Err(MailError::Full { to });
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(MailError::Timeout { to });
            }
            pause_for(pause.min(deadline - now));
            pause = (pause * 2).min(LONGEST_PAUSE);
        }
    }

    /// Casts `payload` to `to`, from `from` (`None` for a process without
    /// an inbox).
    pub fn cast<P: Peers + ?Sized>(
        &self,
        peers: &P,
        from: Option<Address>,
        to: Address,
        payload: &[u8],
        wait: Wait,
    ) -> Result<(), MailError> {
        let envelope = Envelope {
            kind: Kind::Cast,
            from,
            correlation: 0,
        };
        self.send(peers, to, envelope, payload, wait)
    }

    /// The postmaster's side, after reaping process `pid` (or whoever
    /// reclaims the slot of a process that attached by itself, after
    /// finding it dead): on every inbox, frees the producer slots and the
    /// consumer role `pid` held, turns the messages it was writing into
    /// losses the owner reports, and sets the latch of every owner that
    /// lost one (so it moves past the loss now, not at its next message).
    ///
    /// Bounded: one pass over the rings' role words, and over a ring's
    /// cells for each role `pid` held there.
    ///
    /// # Safety
    ///
    /// The process `pid` must be dead (reaped, or proven dead with its
    /// start time): its claims are handed to other producers, which would
    /// race with a writer that still runs (`MpscRing::recover_owner`).
    pub unsafe fn recover_sender<P: Peers + ?Sized>(&self, pid: u32, peers: &P) -> SenderRecovered {
        let mut total = SenderRecovered::default();
        for index in 0..self.headers.len() as u32 {
            let Some(ring) = self.ring(index) else {
                continue;
            };
            // SAFETY: the caller guarantees that `pid` is dead.
            let recovered = unsafe { ring.recover_owner(pid) };
            total.roles += recovered.producers;
            total.abandoned += recovered.abandoned;
            if recovered.abandoned > 0
                && let Some(peer) = peers.peer(index)
            {
                peer.latch.set();
            }
        }
        total
    }

    /// The postmaster's side, when it releases process slot `proc_index`
    /// whose owner `dead_owner` (a pid) has died: frees the roles the owner
    /// held in its inbox (as [`recover_sender`](Self::recover_sender) does
    /// for that ring), then drains the inbox so that its next tenant starts
    /// empty. Call it before the slot is handed to anyone else.
    ///
    /// The drain is an ordinary consumer (the caller's pid as owner token),
    /// so it is safe while live processes push into the inbox; it stops at
    /// a message still being written, and whatever comes after is addressed
    /// to the dead tenancy, which the next owner drops. Bounded: at most
    /// twice the capacity in pops.
    ///
    /// # Safety
    ///
    /// `dead_owner` must be dead, as for
    /// [`recover_sender`](Self::recover_sender).
    pub unsafe fn reset_inbox(
        &self,
        proc_index: u32,
        dead_owner: u32,
    ) -> Result<InboxReset, MailError> {
        let to = Address {
            proc_index,
            generation: 0,
        };
        let ring = self.ring(proc_index).ok_or(MailError::NoSuchSlot { to })?;
        // SAFETY: the caller guarantees that `dead_owner` is dead.
        unsafe { ring.recover_owner(dead_owner) };
        let mut consumer = ring.consumer(own_token()).map_err(|e| match e {
            RingError::RoleTaken { owner, .. } => MailError::InboxTaken { proc_index, owner },
            other => MailError::Ring(other),
        })?;
        let mut reset = InboxReset::default();
        for _ in 0..2 * self.capacity {
            match consumer.try_pop() {
                Ok(_) => reset.drained += 1,
                Err(MpscPopError::Abandoned { .. }) => reset.abandoned += 1,
                Err(MpscPopError::Empty) => break,
                Err(MpscPopError::InFlight { .. }) => {
                    reset.stopped_at_claim = true;
                    break;
                }
                Err(MpscPopError::Corrupt(c)) => return Err(c.into()),
            }
        }
        Ok(reset)
    }
}

/// Pushes `cell` through a producer slot taken for this push alone.
/// `Ok(false)`: no room (the ring is full, or every producer slot is busy
/// with another push, which lasts a few instructions).
fn push(ring: MpscRing<'_, Cell>, cell: &Cell) -> Result<bool, MailError> {
    let mut producer = match ring.producer(own_token()) {
        Ok(producer) => producer,
        Err(RingError::NoProducerSlot) => return Ok(false),
        Err(other) => return Err(other.into()),
    };
    match producer.try_push(*cell) {
        Ok(()) => Ok(true),
        Err(MpscPushError::Full) => Ok(false),
        Err(MpscPushError::Corrupt(c)) => Err(c.into()),
    }
    // `producer` is dropped here, giving the slot back.
}

/// Sleeps a sender waiting for space (loom: lets another thread run).
fn pause_for(pause: Duration) {
    #[cfg(not(loom))]
    std::thread::sleep(pause);
    #[cfg(loom)]
    {
        let _ = pause;
        shmem::sync::spin_loop();
    }
}

/// The first correlation id of a newly opened inbox: the clock's
/// nanoseconds, so that an inbox opened again (same address) does not
/// reuse the ids of replies still on their way to the previous opening.
fn correlation_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    nanos.max(1)
}

/// How long a caller sleeps before re-checking its callee (loom: until
/// woken, so that a missing wake-up shows as a deadlock rather than being
/// papered over by a timeout).
fn recheck_deadline(deadline: Instant) -> Option<Instant> {
    #[cfg(not(loom))]
    {
        Some(deadline.min(Instant::now() + RECHECK))
    }
    #[cfg(loom)]
    {
        let _ = deadline;
        None
    }
}

/// How inbox waits use the latch: its default adaptive spin before
/// sleeping (production), or no spin under loom, where the latch's own
/// models check the spin and here it would only multiply interleavings
/// without touching the mailbox protocol.
fn wait_options() -> WaitOptions {
    #[cfg(not(loom))]
    {
        WaitOptions::default()
    }
    #[cfg(loom)]
    {
        WaitOptions::no_spin()
    }
}

// ---------------------------------------------------------------------------
// The owner's side
// ---------------------------------------------------------------------------

/// Counters of what an inbox dropped instead of delivering.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Messages lost because their sender died writing them.
    pub lost: u64,
    /// Messages addressed to another tenancy of this slot.
    pub stale: u64,
    /// Cells that were not messages of this format.
    pub malformed: u64,
    /// Replies that matched no call waiting for them (late replies to
    /// calls that timed out).
    pub stray_replies: u64,
}

/// What one pop found.
// A short-lived value on the stack; boxing the message would allocate for
// every one received.
#[allow(clippy::large_enum_variant)]
enum Pop {
    Message(Message),
    /// Nothing ready: empty, or the next message is still being written.
    Nothing,
    /// Consumed something that is not for us (counted); look again.
    Dropped,
}

/// The owner's end of its inbox: receive, call, reply. See the module
/// docs.
pub struct Inbox<'a> {
    mailboxes: Mailboxes<'a>,
    consumer: MpscConsumer<'a, Cell>,
    me: Address,
    latch: &'a Latch,
    /// Messages taken off the ring while a call waited for its reply; the
    /// next receives return them first, in order.
    pending: VecDeque<Message>,
    next_correlation: u64,
    stats: InboxStats,
}

impl fmt::Debug for Inbox<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbox")
            .field("me", &self.me)
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a> Inbox<'a> {
    /// This inbox's address, which senders use.
    pub fn address(&self) -> Address {
        self.me
    }

    /// What the inbox has dropped so far.
    pub fn stats(&self) -> InboxStats {
        self.stats
    }

    /// Messages kept aside during calls, not yet received.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Pops one cell and classifies it.
    fn pop(&mut self) -> Result<Pop, RecvError> {
        match self.consumer.try_pop() {
            Ok(cell) => match decode(&cell) {
                Some((message, generation)) if generation == self.me.generation => {
                    Ok(Pop::Message(message))
                }
                Some(_) => {
                    self.stats.stale += 1;
                    Ok(Pop::Dropped)
                }
                None => {
                    self.stats.malformed += 1;
                    Ok(Pop::Dropped)
                }
            },
            // A claim still being written is "nothing yet": its producer
            // sets our latch once it publishes (or the postmaster, once it
            // recovers a dead one).
            Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => Ok(Pop::Nothing),
            Err(MpscPopError::Abandoned { .. }) => {
                self.stats.lost += 1;
                Ok(Pop::Dropped)
            }
            Err(MpscPopError::Corrupt(c)) => Err(c.into()),
        }
    }

    /// The next cast or call, if one is ready; never waits. Replies that
    /// no call waits for are dropped (and counted).
    pub fn try_recv(&mut self) -> Result<Option<Message>, RecvError> {
        if let Some(message) = self.pending.pop_front() {
            return Ok(Some(message));
        }
        // Bounded, so that a flood of cells to drop cannot hold the owner
        // here; if it runs out, the latch is set, so that the owner's next
        // wait returns at once and it comes back for the rest.
        for _ in 0..=self.mailboxes.capacity {
            match self.pop()? {
                Pop::Message(m) if m.kind() == Kind::Reply => self.stats.stray_replies += 1,
                Pop::Message(m) => return Ok(Some(m)),
                Pop::Nothing => return Ok(None),
                Pop::Dropped => {}
            }
        }
        self.latch.set();
        Ok(None)
    }

    /// Waits for the next cast or call until `deadline` (`None`: no
    /// deadline). Returns `Ok(None)` at the deadline, and also when the
    /// latch was set without a message to show for it: the latch is the
    /// process's, and the set may have been meant for something else
    /// (check your other conditions, then call again).
    pub fn recv(&mut self, deadline: Option<Instant>) -> Result<Option<Message>, RecvError> {
        self.recv_unless(deadline, || false)
    }

    /// As [`recv`](Self::recv), returning `Ok(None)` instead of waiting
    /// when `stop` holds after the latch reset: a flag that is set before
    /// the latch (a SIGTERM handler's stop flag) is then never slept
    /// through.
    pub fn recv_unless(
        &mut self,
        deadline: Option<Instant>,
        stop: impl Fn() -> bool,
    ) -> Result<Option<Message>, RecvError> {
        if let Some(message) = self.try_recv()? {
            return Ok(Some(message));
        }
        // Reset, look, wait: the latch's usage loop.
        self.latch.reset();
        if let Some(message) = self.try_recv()? {
            return Ok(Some(message));
        }
        if stop() {
            return Ok(None);
        }
        match self.latch.wait_with(deadline, &wait_options())? {
            Wake::Set => self.try_recv(),
            Wake::Timeout => Ok(None),
            Wake::PostmasterDied => Err(RecvError::PostmasterDied),
        }
    }

    /// Casts `payload` to `to`, from this inbox.
    pub fn cast<P: Peers + ?Sized>(
        &self,
        peers: &P,
        to: Address,
        payload: &[u8],
        wait: Wait,
    ) -> Result<(), MailError> {
        self.mailboxes.cast(peers, Some(self.me), to, payload, wait)
    }

    /// Replies to a call (its [`Message::reply_to`]). A caller that has
    /// stopped waiting (timed out, or gone) is no error unless its slot is
    /// gone too: the reply lands in its inbox and is dropped there.
    pub fn reply<P: Peers + ?Sized>(
        &self,
        peers: &P,
        reply_to: ReplyTo,
        payload: &[u8],
        wait: Wait,
    ) -> Result<(), MailError> {
        let envelope = Envelope {
            kind: Kind::Reply,
            from: Some(self.me),
            correlation: reply_to.correlation,
        };
        self.mailboxes
            .send(peers, reply_to.to, envelope, payload, wait)
    }

    /// Calls `to` with `request` and waits until `deadline` for its reply.
    /// See "Calls" in the module docs: other messages that arrive
    /// meanwhile are kept for [`recv`](Self::recv); a callee that stops
    /// is noticed within [`RECHECK`] of the postmaster freeing its slot.
    pub fn call<P: Peers + ?Sized>(
        &mut self,
        peers: &P,
        to: Address,
        request: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        self.call_then(peers, to, request, deadline, || {})
    }

    /// As [`call`](Self::call), running `sent` once the request is in the
    /// callee's inbox and before waiting: for a callee that learns of work
    /// by other means than its latch (the postmaster reads its inbox when
    /// signalled).
    pub fn call_then<P: Peers + ?Sized>(
        &mut self,
        peers: &P,
        to: Address,
        request: &[u8],
        deadline: Instant,
        sent: impl FnOnce(),
    ) -> Result<Vec<u8>, CallError> {
        if to == self.me {
            return Err(CallError::CallToSelf { to });
        }
        let correlation = self.next_correlation;
        self.next_correlation = match self.next_correlation.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        // A set already pending may be meant for something else, and so may
        // a wake-up after which we find nothing: leave the latch set when
        // we return if either happened (see "Calls" in the module docs).
        let mut owe_a_set = self.latch.is_set();
        let mut woke = false;
        let envelope = Envelope {
            kind: Kind::Call,
            from: Some(self.me),
            correlation,
        };
        self.mailboxes
            .send(peers, to, envelope, request, Wait::Until(deadline))?;
        sent();
        let result = loop {
            self.latch.reset();
            match self.take_reply(to, correlation) {
                Ok(Some(reply)) => break Ok(reply),
                Ok(None) => owe_a_set |= woke,
                Err(e) => break Err(e.into()),
            }
            match check_peer(peers, to) {
                Ok(_) => {}
                Err(_) => break Err(CallError::Died { to }),
            }
            if Instant::now() >= deadline {
                break Err(CallError::Timeout { to });
            }
            match self
                .latch
                .wait_with(recheck_deadline(deadline), &wait_options())
            {
                Ok(Wake::Set) => woke = true,
                Ok(Wake::Timeout) => woke = false,
                Ok(Wake::PostmasterDied) => break Err(RecvError::PostmasterDied.into()),
                Err(e) => break Err(RecvError::Latch(e).into()),
            }
        };
        if owe_a_set || !self.pending.is_empty() {
            self.latch.set();
        }
        result
    }

    /// Looks through what has arrived for the reply to call `correlation`
    /// to `from`, keeping everything else for `recv`.
    fn take_reply(
        &mut self,
        from: Address,
        correlation: u64,
    ) -> Result<Option<Vec<u8>>, RecvError> {
        for _ in 0..=self.mailboxes.capacity {
            match self.pop()? {
                Pop::Message(m) if m.kind() == Kind::Reply => {
                    if m.correlation() == correlation && m.from() == Some(from) {
                        return Ok(Some(m.payload().to_vec()));
                    }
                    self.stats.stray_replies += 1;
                }
                Pop::Message(m) => self.pending.push_back(m),
                Pop::Nothing => return Ok(None),
                Pop::Dropped => {}
            }
        }
        // More to look at: make sure the wait that follows returns at once.
        self.latch.set();
        Ok(None)
    }

    /// [`call`](Self::call)s the process registered as `name`.
    pub fn call_name<P: Peers + ?Sized>(
        &mut self,
        names: &Names<'_>,
        peers: &P,
        name: &str,
        request: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let owner = names
            .whereis(name)
            .ok_or_else(|| CallError::NotRegistered {
                name: name.to_owned(),
            })?;
        self.call(peers, owner.into(), request, deadline)
    }

    /// [`cast`](Self::cast)s to the process registered as `name`.
    pub fn cast_name<P: Peers + ?Sized>(
        &self,
        names: &Names<'_>,
        peers: &P,
        name: &str,
        payload: &[u8],
        wait: Wait,
    ) -> Result<(), CallError> {
        let owner = names
            .whereis(name)
            .ok_or_else(|| CallError::NotRegistered {
                name: name.to_owned(),
            })?;
        Ok(self.cast(peers, owner.into(), payload, wait)?)
    }
}

// ---------------------------------------------------------------------------
// Heap storage
// ---------------------------------------------------------------------------

/// Inboxes on the heap: for tests, loom models and in-process use.
#[derive(Debug)]
pub struct MailboxStorage {
    headers: Vec<MpscRingHeader>,
    cells: Vec<MpscCell<Cell>>,
}

impl MailboxStorage {
    /// `slots` empty inboxes of `capacity` (a power of two) messages.
    pub fn new(slots: usize, capacity: usize) -> Self {
        MailboxStorage {
            headers: (0..slots).map(|_| MpscRingHeader::new()).collect(),
            cells: (0..slots * capacity).map(|_| MpscCell::default()).collect(),
        }
    }

    /// The view over this storage.
    pub fn mailboxes(&self) -> Result<Mailboxes<'_>, MailError> {
        Mailboxes::from_parts(&self.headers, &self.cells)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use shmem::sync::{AtomicU64, Ordering};

    /// A process slot as the tests see it: `generation << 32 | running`,
    /// and a latch owned by this process (threads stand in for processes).
    struct TestPeer {
        status: AtomicU64,
        latch: Latch,
    }

    struct TestPeers(Vec<TestPeer>);

    impl TestPeers {
        fn new(n: usize) -> Self {
            TestPeers(
                (0..n)
                    .map(|_| {
                        let latch = Latch::new();
                        latch.own().unwrap();
                        TestPeer {
                            status: AtomicU64::new((1 << 32) | 1),
                            latch,
                        }
                    })
                    .collect(),
            )
        }

        fn at(&self, i: u32) -> Address {
            // Relaxed: test setup and checks; the test threads are joined
            // or synchronised through the rings.
            let word = self.0[i as usize].status.load(Ordering::Relaxed);
            Address {
                proc_index: i,
                generation: (word >> 32) as u32,
            }
        }

        fn set(&self, i: u32, generation: u32, running: bool) {
            // Release: pairs with the Acquire in peer().
            self.0[i as usize].status.store(
                (u64::from(generation) << 32) | u64::from(running),
                Ordering::Release,
            );
        }

        fn latch(&self, i: u32) -> &Latch {
            &self.0[i as usize].latch
        }
    }

    impl Peers for TestPeers {
        fn peer(&self, proc_index: u32) -> Option<Peer<'_>> {
            let p = self.0.get(proc_index as usize)?;
            // Acquire: pairs with the Release in set().
            let word = p.status.load(Ordering::Acquire);
            Some(Peer {
                generation: (word >> 32) as u32,
                running: word & 1 != 0,
                latch: &p.latch,
            })
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn cells_round_trip_every_kind_length_and_sender() {
        let payload: Vec<u8> = (0..MAX_MESSAGE as u32).map(|i| (i * 7 + 3) as u8).collect();
        for kind in [Kind::Cast, Kind::Call, Kind::Reply] {
            for from in [
                None,
                Some(Address {
                    proc_index: 5,
                    generation: 9,
                }),
            ] {
                for len in 0..=MAX_MESSAGE {
                    let envelope = Envelope {
                        kind,
                        from,
                        correlation: u64::MAX - len as u64,
                    };
                    let cell = encode(envelope, 77, &payload[..len]);
                    let (m, to_generation) = decode(&cell).unwrap();
                    assert_eq!(to_generation, 77);
                    assert_eq!(m.envelope, envelope);
                    assert_eq!(m.payload(), &payload[..len]);
                }
            }
        }
    }

    #[test]
    fn garbage_cells_decode_to_nothing_or_to_a_valid_message() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut decoded = 0;
        for round in 0..100_000 {
            let mut cell = [0u64; CELL_WORDS];
            for w in &mut cell {
                *w = next();
            }
            if round % 2 == 0 {
                // Plausible kind and magic, so the other checks are reached.
                cell[0] = (cell[0] & !0xffff) | u64::from(MAGIC) << 8 | (next() % 4);
            }
            if let Some((m, _)) = decode(&cell) {
                decoded += 1;
                assert!(m.payload().len() <= MAX_MESSAGE);
                assert!(m.from().is_none_or(|a| a.proc_index != ANONYMOUS));
            }
        }
        // The length check rejects most; some must get through.
        assert!(decoded > 100, "{decoded}");
        assert_eq!(decode(&[0; CELL_WORDS]).map(|(m, _)| m.kind()), None);
    }

    #[test]
    fn casts_arrive_in_order_with_their_sender() {
        let storage = MailboxStorage::new(2, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let mut inbox = mailboxes.inbox(peers.at(1), peers.latch(1)).unwrap();
        assert!(inbox.try_recv().unwrap().is_none());
        for i in 0..3u8 {
            mailboxes
                .cast(
                    &peers,
                    Some(peers.at(0)),
                    peers.at(1),
                    &[i; 5],
                    Wait::NoWait,
                )
                .unwrap();
        }
        mailboxes
            .cast(&peers, None, peers.at(1), b"", Wait::NoWait)
            .unwrap();
        assert!(peers.latch(1).is_set(), "a send sets the receiver's latch");
        for i in 0..3u8 {
            let m = inbox.try_recv().unwrap().unwrap();
            assert_eq!(
                (m.kind(), m.from(), m.payload()),
                (Kind::Cast, Some(peers.at(0)), &[i; 5][..])
            );
            assert_eq!(m.reply_to(), None);
        }
        let anonymous = inbox.try_recv().unwrap().unwrap();
        assert_eq!((anonymous.from(), anonymous.payload()), (None, &b""[..]));
        assert!(inbox.try_recv().unwrap().is_none());
        assert_eq!(inbox.stats(), InboxStats::default());
    }

    #[test]
    fn oversized_full_and_unreachable_sends_are_typed_errors() {
        let storage = MailboxStorage::new(2, 2);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let to = peers.at(1);
        assert_eq!(
            mailboxes.cast(&peers, None, to, &[0; MAX_MESSAGE + 1], Wait::NoWait),
            Err(MailError::TooLarge {
                len: MAX_MESSAGE + 1
            })
        );
        mailboxes
            .cast(&peers, None, to, &[0; MAX_MESSAGE], Wait::NoWait)
            .unwrap();
        mailboxes
            .cast(&peers, None, to, b"2", Wait::NoWait)
            .unwrap();
        assert_eq!(
            mailboxes.cast(&peers, None, to, b"3", Wait::NoWait),
            Err(MailError::Full { to })
        );
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(
            mailboxes.cast(&peers, None, to, b"3", Wait::Until(deadline)),
            Err(MailError::Timeout { to })
        );
        assert!(Instant::now() >= deadline, "gave up before the deadline");

        let nowhere = Address {
            proc_index: 7,
            generation: 1,
        };
        assert_eq!(
            mailboxes.cast(&peers, None, nowhere, b"x", Wait::NoWait),
            Err(MailError::NoSuchSlot { to: nowhere })
        );
        let old = Address {
            proc_index: 0,
            generation: 0,
        };
        assert_eq!(
            mailboxes.cast(&peers, None, old, b"x", Wait::NoWait),
            Err(MailError::Stale {
                to: old,
                generation: 1
            })
        );
        peers.set(0, 1, false);
        assert_eq!(
            mailboxes.cast(&peers, None, peers.at(0), b"x", Wait::NoWait),
            Err(MailError::NotRunning { to: peers.at(0) })
        );
    }

    #[test]
    fn a_sender_waiting_for_room_gets_it_when_the_owner_drains() {
        let storage = MailboxStorage::new(1, 2);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let to = peers.at(0);
        let mut inbox = mailboxes.inbox(to, peers.latch(0)).unwrap();
        for i in 0..2u8 {
            mailboxes
                .cast(&peers, None, to, &[i], Wait::NoWait)
                .unwrap();
        }
        std::thread::scope(|s| {
            let sender = s.spawn(|| mailboxes.cast(&peers, None, to, &[2], Wait::Until(far())));
            // The sender is polling on a full ring; drain it.
            let mut got = Vec::new();
            while got.len() < 3 {
                if let Some(m) = inbox.recv(Some(far())).unwrap() {
                    got.push(m.payload()[0]);
                }
            }
            assert_eq!(got, [0, 1, 2]);
            sender.join().unwrap().unwrap();
        });
    }

    #[test]
    fn messages_for_an_earlier_tenancy_are_dropped_by_the_next() {
        let storage = MailboxStorage::new(1, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let old = peers.at(0);
        mailboxes
            .cast(&peers, None, old, b"for the old one", Wait::NoWait)
            .unwrap();
        // The worker died; the slot is taken again.
        peers.set(0, 2, true);
        let mut inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        mailboxes
            .cast(&peers, None, peers.at(0), b"for the new one", Wait::NoWait)
            .unwrap();
        assert_eq!(
            inbox.try_recv().unwrap().unwrap().payload(),
            b"for the new one"
        );
        assert_eq!(inbox.stats().stale, 1);
        assert_eq!(
            mailboxes.cast(&peers, None, old, b"late", Wait::NoWait),
            Err(MailError::Stale {
                to: old,
                generation: 2
            })
        );
    }

    #[test]
    fn one_inbox_one_owner_until_dropped() {
        let storage = MailboxStorage::new(1, 2);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        assert!(matches!(
            mailboxes.inbox(peers.at(0), peers.latch(0)),
            Err(MailError::InboxTaken { proc_index: 0, .. })
        ));
        drop(inbox);
        mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        assert!(matches!(
            mailboxes.inbox(peers.at(0).with_index(5), peers.latch(0)),
            Err(MailError::NoSuchSlot { .. })
        ));
    }

    impl Address {
        fn with_index(self, proc_index: u32) -> Address {
            Address { proc_index, ..self }
        }
    }

    /// A server thread answers calls from two client threads while a third
    /// casts to one of the clients: every call gets its own reply, and the
    /// casts that arrived during calls come out of `recv` afterwards, in
    /// order.
    #[test]
    fn calls_get_their_own_replies_and_casts_meanwhile_are_kept() {
        const CALLS: u32 = 300;
        const CASTS: u32 = 50;
        let storage = MailboxStorage::new(4, 8);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(4);
        let (server, a, b, caster) = (peers.at(0), peers.at(1), peers.at(2), peers.at(3));
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut inbox = mailboxes.inbox(server, peers.latch(0)).unwrap();
                let mut served = 0;
                while served < 2 * CALLS {
                    let Some(m) = inbox.recv(Some(far())).unwrap() else {
                        continue;
                    };
                    let to = m.reply_to().expect("only calls come here");
                    let mut answer = m.payload().to_vec();
                    answer.extend_from_slice(b"!");
                    inbox
                        .reply(&peers, to, &answer, Wait::Until(far()))
                        .unwrap();
                    served += 1;
                }
            });
            let client = |me: Address, expected_casts: usize| {
                let peers = &peers;
                move || {
                    let mut inbox = mailboxes.inbox(me, peers.latch(me.proc_index)).unwrap();
                    for i in 0..CALLS {
                        let request = format!("{}:{i}", me.proc_index);
                        let reply = inbox
                            .call(peers, server, request.as_bytes(), far())
                            .unwrap();
                        assert_eq!(reply, format!("{request}!").as_bytes());
                    }
                    let mut casts = Vec::new();
                    while casts.len() < expected_casts {
                        if let Some(m) = inbox.recv(Some(far())).unwrap() {
                            casts.push(u32::from_le_bytes(m.payload().try_into().unwrap()));
                        }
                    }
                    (casts, inbox.stats())
                }
            };
            let ta = s.spawn(client(a, CASTS as usize));
            let tb = s.spawn(client(b, 0));
            s.spawn(|| {
                for i in 0..CASTS {
                    mailboxes
                        .cast(
                            &peers,
                            Some(caster),
                            a,
                            &i.to_le_bytes(),
                            Wait::Until(far()),
                        )
                        .unwrap();
                }
            });
            let (casts, stats) = ta.join().unwrap();
            assert_eq!(casts, (0..CASTS).collect::<Vec<_>>());
            assert_eq!(stats, InboxStats::default());
            tb.join().unwrap();
        });
    }

    #[test]
    fn a_call_to_a_worker_that_is_not_running_fails_at_once() {
        let storage = MailboxStorage::new(2, 2);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let mut inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        peers.set(1, 1, false);
        let started = Instant::now();
        assert!(matches!(
            inbox.call(&peers, peers.at(1), b"x", far()),
            Err(CallError::Send(MailError::NotRunning { .. }))
        ));
        assert!(matches!(
            inbox.call(&peers, peers.at(0), b"x", far()),
            Err(CallError::CallToSelf { .. })
        ));
        let names_storage: Vec<_> = (0..2).map(|_| crate::names::NameEntry::new()).collect();
        let names = Names::from_entries(&names_storage);
        assert!(matches!(
            inbox.call_name(&names, &peers, "nobody", b"x", far()),
            Err(CallError::NotRegistered { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// The callee takes the call and dies without replying: the caller
    /// notices within a recheck of the slot being freed, long before its
    /// deadline.
    #[test]
    fn a_call_to_a_worker_that_dies_fails_promptly() {
        let storage = MailboxStorage::new(2, 2);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let (caller, callee) = (peers.at(0), peers.at(1));
        std::thread::scope(|s| {
            let died_at = s.spawn(|| {
                let mut inbox = mailboxes.inbox(callee, peers.latch(1)).unwrap();
                loop {
                    if let Some(m) = inbox.recv(Some(far())).unwrap() {
                        assert_eq!(m.kind(), Kind::Call);
                        break;
                    }
                }
                // "Dies": the postmaster frees the slot.
                peers.set(1, 1, false);
                Instant::now()
            });
            let mut inbox = mailboxes.inbox(caller, peers.latch(0)).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let result = inbox.call(&peers, callee, b"are you there", deadline);
            let returned = Instant::now();
            assert!(
                matches!(result, Err(CallError::Died { to }) if to == callee),
                "{result:?}"
            );
            let died_at = died_at.join().unwrap();
            assert!(
                returned.duration_since(died_at) < RECHECK + Duration::from_secs(2),
                "took {:?}",
                returned.duration_since(died_at)
            );
        });
    }

    #[test]
    fn an_unanswered_call_times_out_at_its_deadline_and_its_late_reply_is_dropped() {
        let storage = MailboxStorage::new(2, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let mut caller = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        let mut callee = mailboxes.inbox(peers.at(1), peers.latch(1)).unwrap();
        let deadline = Instant::now() + Duration::from_millis(30);
        assert!(matches!(
            caller.call(&peers, peers.at(1), b"slow", deadline),
            Err(CallError::Timeout { .. })
        ));
        assert!(Instant::now() >= deadline);
        // The callee answers late; the caller's next call ignores that.
        let late = callee.try_recv().unwrap().unwrap();
        callee
            .reply(&peers, late.reply_to().unwrap(), b"late", Wait::NoWait)
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                let m = loop {
                    if let Some(m) = callee.recv(Some(far())).unwrap() {
                        break m;
                    }
                };
                callee
                    .reply(&peers, m.reply_to().unwrap(), b"on time", Wait::NoWait)
                    .unwrap();
            });
            assert_eq!(
                caller.call(&peers, peers.at(1), b"again", far()).unwrap(),
                b"on time"
            );
        });
        assert_eq!(caller.stats().stray_replies, 1);
        // A reply outside any call is dropped too.
        callee
            .reply(&peers, late.reply_to().unwrap(), b"very late", Wait::NoWait)
            .unwrap();
        assert!(caller.try_recv().unwrap().is_none());
        assert_eq!(caller.stats().stray_replies, 2);
    }

    /// A call whose wait swallowed a set meant for something else leaves
    /// the latch set, so the caller's own loop still sees it.
    #[test]
    fn a_call_leaves_a_foreign_set_in_place() {
        let storage = MailboxStorage::new(2, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(2);
        let mut caller = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        let mut callee = mailboxes.inbox(peers.at(1), peers.latch(1)).unwrap();
        peers.latch(0).set(); // e.g. a shutdown request
        std::thread::scope(|s| {
            s.spawn(|| {
                let m = loop {
                    if let Some(m) = callee.recv(Some(far())).unwrap() {
                        break m;
                    }
                };
                callee
                    .reply(&peers, m.reply_to().unwrap(), b"ok", Wait::NoWait)
                    .unwrap();
            });
            assert_eq!(
                caller.call(&peers, peers.at(1), b"q", far()).unwrap(),
                b"ok"
            );
        });
        assert!(peers.latch(0).is_set());
        // And one that saw no foreign set leaves it as the reply found it.
        peers.latch(0).reset();
        std::thread::scope(|s| {
            s.spawn(|| {
                let m = loop {
                    if let Some(m) = callee.recv(Some(far())).unwrap() {
                        break m;
                    }
                };
                callee
                    .reply(&peers, m.reply_to().unwrap(), b"ok", Wait::NoWait)
                    .unwrap();
            });
            caller.call(&peers, peers.at(1), b"q", far()).unwrap();
        });
        assert_eq!(caller.pending(), 0);
    }

    /// A sender that died holding a claim stalls the inbox at that
    /// position until the postmaster recovers it; then the owner is woken,
    /// counts the loss and receives what came after.
    #[test]
    fn a_dead_senders_claim_is_recovered_and_reported_once() {
        let storage = MailboxStorage::new(1, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let mut inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        let ring = mailboxes.ring(0).unwrap();
        const DEAD: u32 = 999_999;
        let mut dying = ring.producer(DEAD).unwrap();
        std::mem::forget(dying.claim().unwrap());
        std::mem::forget(dying);
        mailboxes
            .cast(&peers, None, peers.at(0), b"after", Wait::NoWait)
            .unwrap();
        assert!(inbox.try_recv().unwrap().is_none(), "stalled at the claim");
        peers.latch(0).reset();
        // SAFETY: the "process" DEAD is the forgotten producer above, never
        // used again.
        let recovered = unsafe { mailboxes.recover_sender(DEAD, &peers) };
        assert_eq!(
            recovered,
            SenderRecovered {
                roles: 1,
                abandoned: 1
            }
        );
        assert!(peers.latch(0).is_set(), "the owner is woken");
        assert_eq!(inbox.try_recv().unwrap().unwrap().payload(), b"after");
        assert_eq!(inbox.stats().lost, 1);
    }

    /// The owner dies with messages queued and the consumer role held; the
    /// postmaster resets the inbox and the next tenant starts empty.
    #[test]
    fn reset_inbox_frees_a_dead_owners_inbox_for_the_next_tenant() {
        let storage = MailboxStorage::new(1, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        for i in 0..3u8 {
            mailboxes
                .cast(&peers, None, peers.at(0), &[i], Wait::NoWait)
                .unwrap();
        }
        std::mem::forget(inbox); // dies holding the role
        assert!(matches!(
            mailboxes.inbox(peers.at(0), peers.latch(0)),
            Err(MailError::InboxTaken { .. })
        ));
        // SAFETY: the forgotten inbox (our own token) is never used again,
        // and this test holds no other role in the ring.
        let reset = unsafe { mailboxes.reset_inbox(0, own_token()) }.unwrap();
        assert_eq!(
            reset,
            InboxReset {
                drained: 3,
                abandoned: 0,
                stopped_at_claim: false
            }
        );
        peers.set(0, 2, true);
        let mut next = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        assert!(next.try_recv().unwrap().is_none());
        assert_eq!(next.stats(), InboxStats::default());
    }

    /// Garbage written over a ring's cells and header: the owner gets
    /// errors or drops, never a panic or a hang, and the postmaster's
    /// reset is bounded.
    #[test]
    fn scribbled_inboxes_give_errors_not_hangs() {
        let storage = MailboxStorage::new(1, 4);
        let mailboxes = storage.mailboxes().unwrap();
        let peers = TestPeers::new(1);
        let mut inbox = mailboxes.inbox(peers.at(0), peers.latch(0)).unwrap();
        for i in 0..4u8 {
            mailboxes
                .cast(&peers, None, peers.at(0), &[i], Wait::NoWait)
                .unwrap();
        }
        // Overwrite the payload words of every cell through the ring's own
        // cell type: pop, then the cells look like whatever a scribbler
        // left. The simplest scribble we can make without unsafe: a
        // message of another format (bad magic) sent as raw words.
        let ring = mailboxes.ring(0).unwrap();
        while inbox.try_recv().unwrap().is_some() {}
        let mut raw = ring.producer(own_token()).unwrap();
        raw.try_push([u64::MAX; CELL_WORDS]).unwrap();
        raw.try_push([0; CELL_WORDS]).unwrap();
        drop(raw);
        mailboxes
            .cast(&peers, None, peers.at(0), b"fine", Wait::NoWait)
            .unwrap();
        assert_eq!(inbox.try_recv().unwrap().unwrap().payload(), b"fine");
        assert_eq!(inbox.stats().malformed, 2);
    }

    #[test]
    fn proc_array_slots_are_peers() {
        let config = proclist::ProcArrayConfig {
            workers: 1,
            backends: 1,
        };
        let layout = ProcArray::declare(shmem::Layout::builder(), config)
            .build()
            .unwrap();
        let segment = shmem::Segment::create(&layout).unwrap();
        let procs = ProcArray::init(&segment, config).unwrap();
        let free = procs.peer(1).unwrap();
        assert!(!free.running);
        let guard = procs.acquire(proclist::Kind::Backend).unwrap();
        let peer = procs.peer(guard.index()).unwrap();
        assert!(peer.running);
        assert_eq!(peer.generation, guard.handle().generation);
        assert!(std::ptr::eq(peer.latch, guard.latch()));
        assert!(procs.peer(2).is_none());
        let at = Address::from(guard.handle());
        drop(guard);
        // Released: parked, which bumps the generation, so the address
        // names a tenancy that is gone.
        assert_eq!(
            check_peer(&procs, at).map(|_| ()),
            Err(MailError::Stale {
                to: at,
                generation: at.generation + 1
            })
        );
        // Released through a view that does not park: free, same
        // generation, not running.
        let procs = procs.without_parking();
        let guard = procs.acquire(proclist::Kind::Backend).unwrap();
        let at = Address::from(guard.handle());
        drop(guard);
        assert!(matches!(
            check_peer(&procs, at),
            Err(MailError::NotRunning { .. })
        ));
    }

    #[test]
    fn storage_that_does_not_fit_is_refused() {
        let headers: Vec<_> = (0..2).map(|_| MpscRingHeader::new()).collect();
        let cells: Vec<_> = (0..6).map(|_| MpscCell::<Cell>::default()).collect();
        assert!(matches!(
            Mailboxes::from_parts(&headers, &cells),
            Err(MailError::Layout(_))
        ));
        assert!(Mailboxes::from_parts(&headers, &cells[..4]).is_ok());
        let layout = Mailboxes::declare(shmem::Layout::builder(), 3, 8)
            .build()
            .unwrap();
        let segment = shmem::Segment::create(&layout).unwrap();
        let mailboxes = Mailboxes::from_segment(&segment).unwrap();
        assert_eq!((mailboxes.len(), mailboxes.capacity()), (3, 8));
    }
}
