//! Dynamic worker registration: a table of slots in shared memory through
//! which any attached process hands a [`WorkerSpec`] to the postmaster, and
//! then follows what became of it. PostgreSQL's `BackgroundWorkerSlot`,
//! without its lock, with the postmaster's distrust of shared memory made
//! explicit.
//!
//! # Roles
//!
//! - A **registrant** (any attached process) holds a [`Registry`] view. It
//!   [`submit`](Registry::submit)s a spec and gets a [`RegHandle`] `(slot,
//!   generation)`; with the handle it reads the registration's
//!   [`status`](Registry::status) and asks for it to be
//!   [`terminate`](Registry::terminate)d. After submitting it signals the
//!   postmaster (not this module's business).
//! - The **postmaster** holds the same view plus a [`RegistryOwner`] in its
//!   private memory. It [`scan`](RegistryOwner::scan)s, then
//!   [`accept`](RegistryOwner::accept)s or
//!   [`reject`](RegistryOwner::reject)s each submission, records
//!   [`set_started`](RegistryOwner::set_started) /
//!   [`set_stopped`](RegistryOwner::set_stopped), and
//!   [`release`](RegistryOwner::release)s a registration when it ends.
//!   The owner is the authority on generations: it remembers the one it left
//!   in every slot, so a slot whose control word disagrees is reported, never
//!   believed, and after a segment reset it
//!   [`restore_after_reset`](RegistryOwner::restore_after_reset) moves every
//!   slot past every generation it ever handed out.
//!
//! # One slot's life
//!
//! ```text
//!  all-zero (FREE(0)) --init / restore_after_reset--> FREE(g), g >= 1
//!  FREE(g) --claim--> FILLING(g) --publish--> SUBMITTED(g) --accept--> ACCEPTED(g)
//!   (registrant CAS)     (registrant CAS)          |
//!                                                  +------reject----> REJECTED(g)
//!  any state of generation g --release / restore_after_reset--> FREE(g + 1)
//!  SUBMITTED, ACCEPTED, REJECTED --terminate (anyone holding the handle)--> same + TERMINATE
//!  FREE(g) --reinstall (postmaster, after a reset)--> ACCEPTED(g)
//! ```
//!
//! Only the postmaster changes a generation, and only by moving a slot to
//! `FREE(g + 1)`; a registrant claims a free slot *with* the generation the
//! postmaster left there. A handle `(slot, g)` therefore names one tenancy
//! of one slot: every operation compares the whole `(generation, state)`
//! word, so a handle one tenancy late reads [`HandleStatus::Stopped`] and
//! its `terminate` changes nothing.
//!
//! Generation 0 means "not set up by the postmaster": a new segment, or one
//! between the reset's memset and
//! [`restore_after_reset`](RegistryOwner::restore_after_reset). No
//! registrant claims such a slot ([`RegistryError::NotReady`]) and no handle
//! ever carries generation 0 (the count skips it when it wraps), so a zeroed
//! word, control or status, never reads as any tenancy's. The postmaster
//! sets a new registry up with [`RegistryOwner::init`].
//!
//! # Fields, who writes them, and what orders them
//!
//! | field          | written by                                          | read by                                |
//! |----------------|-----------------------------------------------------|----------------------------------------|
//! | `control`      | registrant: claim, publish, terminate bit (CAS);    | everyone                               |
//! |                | postmaster: accept, reject, release, restore        |                                        |
//! | `status`       | postmaster only: `generation << 32 \| detail`       | registrants, after `control`           |
//! | `image`        | the claimer, while the slot is `FILLING`            | postmaster, after acquiring SUBMITTED  |
//! | `registrant_*` | as `image`                                          | as `image`                             |
//! | `checksum`     | as `image`: FNV-1a over generation, registrant and image | as `image`                        |
//!
//! The image words are written and read with `Relaxed` accesses; what
//! orders them is the control word: the registrant's publish is a release
//! CAS and the postmaster's scan an acquire load of the same word, so a
//! scan that sees `SUBMITTED(g)` sees every word written before it. In the
//! other direction, the postmaster frees a slot with a release swap and a
//! registrant claims it with an acquire CAS, so the next tenant's writes
//! come after the postmaster's reads of the last image. Publish fails (the
//! registrant gets [`RegistryError::Interrupted`]) rather than overwrite a
//! slot the postmaster took back meanwhile. The `status` word carries its
//! generation in its top half, so a reader can never take the pid (or
//! reject reason) of one tenancy for another's; the postmaster's accept and
//! reject write it before their release CAS on `control`.
//!
//! # Rejected registrations
//!
//! A rejected registration stays `REJECTED` so that its registrant can read
//! why. It ends when the registrant withdraws it with `terminate` (the
//! postmaster sees the request in its next scan and answers with
//! `release`), or when the postmaster decides nobody will look (the
//! registrant's pid is gone, or a grace period passed) and releases it.
//! Either way the handle then reads `Stopped`.
//!
//! # What the postmaster does not trust
//!
//! Everything. A scan is one bounded pass; every CAS loop has at most
//! [`MAX_CAS_ATTEMPTS`] rounds; a control word with an unknown state, stray
//! bits or a generation the owner never issued is reported as a
//! [`CorruptSlot`] (release it, or reset the segment); an image is copied
//! into private memory and decoded there with every length, enum value,
//! padding byte and the checksum checked, so garbage becomes an [`Invalid`]
//! and never a panic. A process that claims a slot and dies before
//! publishing leaves it `FILLING`: scans list such slots so the postmaster
//! can release the ones that stay that way too long (filling takes
//! microseconds).
//!
//! # Usage
//!
//! ```
//! use bgw::registry::{HandleStatus, RegSlot, Registrant, Registry, RegistryOwner};
//! use bgw::WorkerSpec;
//!
//! let slots: Vec<RegSlot> = (0..4).map(|_| RegSlot::new()).collect(); // or Registry::from_segment
//! let registry = Registry::from_slots(&slots);
//! let mut owner = RegistryOwner::init(&registry); // in the postmaster, once
//!
//! // Registrant: submit, then signal the postmaster.
//! let me = Registrant { proc_index: Some(3), pid: 4242 };
//! let handle = registry.submit(&WorkerSpec::new("ticker").arg(b"every=1s"), me)?;
//! assert_eq!(registry.status(handle), HandleStatus::Submitted);
//!
//! // Postmaster, on the signal: scan, validate, decide.
//! let scan = owner.scan(&registry)?;
//! for submission in scan.submissions {
//!     match submission.registration {
//!         Ok(reg) => {
//!             assert_eq!(reg.spec.name(), "ticker");
//!             owner.accept(&registry, submission.handle)?;
//!             // ... fork the worker, then:
//!             owner.set_started(&registry, submission.handle, 5000)?;
//!         }
//!         Err(invalid) => owner.reject(&registry, submission.handle, invalid.reject_reason())?,
//!     }
//! }
//! assert_eq!(registry.status(handle), HandleStatus::Started { pid: 5000 });
//!
//! // Registrant: withdraw. Postmaster: stop the worker, then release.
//! assert!(registry.terminate(handle));
//! assert_eq!(owner.scan(&registry)?.terminate_requests, vec![handle]);
//! owner.release(&registry, handle)?;
//! assert_eq!(registry.status(handle), HandleStatus::Stopped);
//! assert!(!registry.terminate(handle)); // stale: changes nothing
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::time::Duration;

use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use thiserror::Error;

use crate::spec::{MAX_ARG, MAX_NAME, OnCrash, Phase, Restart, SpecError, WorkerSpec};

/// The most rounds any CAS loop here makes. Every legitimate change of a
/// control word moves its tenancy forward (at most a handful per
/// generation), so running out means another process keeps rewriting the
/// word: it is treated as corruption, never waited out.
pub const MAX_CAS_ATTEMPTS: usize = 64;

/// The name of the registry's region in a segment layout.
pub const REGION: &str = "bgw.registry";

// ---------------------------------------------------------------------------
// The control word
// ---------------------------------------------------------------------------

/// The state half of a control word: what the slot's tenancy is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SlotState {
    /// Nobody's. A registrant may claim it (CAS to `Filling`, same
    /// generation). All-zero slots are free.
    Free = 0,
    /// Claimed by a registrant that is writing the spec. Only that
    /// registrant writes the image; only it moves the slot on (to
    /// `Submitted`), unless the postmaster reclaims the slot.
    Filling = 1,
    /// Published; waiting for the postmaster to accept or reject it. The
    /// image is frozen. Registrants may set the terminate bit.
    Submitted = 2,
    /// The postmaster accepted it; `status` says whether the worker runs.
    Accepted = 3,
    /// The postmaster refused it; `status` holds the [`RejectReason`].
    Rejected = 4,
}

impl SlotState {
    const ALL: [SlotState; 5] = [
        SlotState::Free,
        SlotState::Filling,
        SlotState::Submitted,
        SlotState::Accepted,
        SlotState::Rejected,
    ];

    /// The lowercase name, for messages and status displays.
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Filling => "filling",
            SlotState::Submitted => "submitted",
            SlotState::Accepted => "accepted",
            SlotState::Rejected => "rejected",
        }
    }

    /// Whether the state belongs to a registration someone holds a handle
    /// for, and so may carry the terminate bit.
    fn is_live(self) -> bool {
        matches!(
            self,
            SlotState::Submitted | SlotState::Accepted | SlotState::Rejected
        )
    }
}

impl fmt::Display for SlotState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Bits 0-7 of the low half: the [`SlotState`].
const STATE_MASK: u32 = 0xff;
/// Bit 8 of the low half: someone holding the handle asked for the
/// registration to end. Only on live states.
const TERMINATE_BIT: u32 = 1 << 8;

/// The generation of a slot the postmaster has not set up (all-zero
/// memory). Never part of a handle.
const UNSET_GENERATION: u32 = 0;

/// The generation after `generation`, skipping [`UNSET_GENERATION`] when
/// the count wraps.
fn next_generation(generation: u32) -> u32 {
    match generation.wrapping_add(1) {
        UNSET_GENERATION => 1,
        next => next,
    }
}

/// A decoded control word: `generation << 32 | terminate << 8 | state`.
/// Bits 9-31 are always zero; a word with any of them set, an unknown
/// state, or the terminate bit on a free or filling slot, is corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    generation: u32,
    state: SlotState,
    terminate: bool,
}

impl Control {
    fn new(generation: u32, state: SlotState) -> Self {
        Control {
            generation,
            state,
            terminate: false,
        }
    }

    fn encode(self) -> u64 {
        let low = self.state as u32 | if self.terminate { TERMINATE_BIT } else { 0 };
        (u64::from(self.generation) << 32) | u64::from(low)
    }

    fn decode(word: u64) -> Result<Control, Corruption> {
        let low = word as u32;
        let terminate = low & TERMINATE_BIT != 0;
        let state = SlotState::ALL
            .into_iter()
            .find(|s| *s as u32 == low & STATE_MASK);
        match state {
            Some(state)
                if low & !(STATE_MASK | TERMINATE_BIT) == 0 && (!terminate || state.is_live()) =>
            {
                Ok(Control {
                    generation: (word >> 32) as u32,
                    state,
                    terminate,
                })
            }
            _ => Err(Corruption::UnknownState { word }),
        }
    }
}

// ---------------------------------------------------------------------------
// The status word
// ---------------------------------------------------------------------------

/// `status` detail of an accepted registration whose worker has not been
/// started yet. Every accept writes it.
const NOT_STARTED: u32 = 0;
/// `status` detail of an accepted registration whose worker stopped (and
/// may be started again by its restart policy).
const STOPPED: u32 = u32::MAX;

/// A decoded status word: `generation << 32 | detail`. The detail is a pid
/// (or [`NOT_STARTED`] / [`STOPPED`]) while the slot is accepted, and a
/// [`RejectReason`] code while it is rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusWord {
    generation: u32,
    detail: u32,
}

impl StatusWord {
    fn encode(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.detail)
    }

    fn decode(word: u64) -> Self {
        StatusWord {
            generation: (word >> 32) as u32,
            detail: word as u32,
        }
    }
}

// ---------------------------------------------------------------------------
// The spec image
// ---------------------------------------------------------------------------

// Byte offsets into the image. Lengths are stored in front of fixed-size
// areas; bytes past a length are zero. Multi-byte numbers are little-endian.
/// Worker name: length (1 byte), then [`MAX_NAME`] bytes.
const NAME_AT: usize = 0;
/// Entry name: length (1 byte), then [`MAX_NAME`] bytes.
const ENTRY_AT: usize = NAME_AT + 1 + MAX_NAME;
/// Argument: length (2 bytes), then [`MAX_ARG`] bytes.
const ARG_AT: usize = ENTRY_AT + 1 + MAX_NAME;
/// Start phase: [`Phase`] as `u8`.
const PHASE_AT: usize = ARG_AT + 2 + MAX_ARG;
/// Restart kind: 0 never, 1 after the delay below, 2 permanent, 3
/// transient, 4 temporary.
const RESTART_KIND_AT: usize = PHASE_AT + 1;
/// Shared-memory access: 0 or 1.
const SHMEM_AT: usize = RESTART_KIND_AT + 1;
/// Notify the registrant: 0 or 1.
const NOTIFY_AT: usize = SHMEM_AT + 1;
/// Crash policy: 0 reset all, 1 contain.
const ON_CRASH_AT: usize = NOTIFY_AT + 1;
/// One zero byte, so the numbers below are aligned.
const RESERVED_AT: usize = ON_CRASH_AT + 1;
/// Restart delay, whole seconds (`u64`); zero unless the kind is 1.
const RESTART_SECS_AT: usize = RESERVED_AT + 1;
/// Restart delay, nanoseconds below a second (`u32`).
const RESTART_NANOS_AT: usize = RESTART_SECS_AT + 8;
/// Shutdown timeout, nanoseconds below a second (`u32`).
const SHUTDOWN_NANOS_AT: usize = RESTART_NANOS_AT + 4;
/// Shutdown timeout, whole seconds (`u64`).
const SHUTDOWN_SECS_AT: usize = SHUTDOWN_NANOS_AT + 4;
/// The image's size in bytes.
const IMAGE_BYTES: usize = SHUTDOWN_SECS_AT + 8;
/// The image's size in 64-bit words.
pub const IMAGE_WORDS: usize = IMAGE_BYTES / 8;

const _: () = {
    assert!(IMAGE_BYTES.is_multiple_of(8));
    assert!(RESTART_SECS_AT.is_multiple_of(8) && SHUTDOWN_SECS_AT.is_multiple_of(8));
    assert!(MAX_NAME <= u8::MAX as usize && MAX_ARG <= u16::MAX as usize);
};

/// `registrant_proc` value for a registrant without a process slot.
const NO_PROC: u32 = u32::MAX;

/// A spec as bytes, laid out as the `*_AT` constants say. Private memory:
/// built by the registrant before it writes the words, and by the
/// postmaster from the words it copied out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Image([u8; IMAGE_BYTES]);

impl Image {
    /// Encodes a spec that passed [`WorkerSpec::validate`].
    fn encode(spec: &WorkerSpec) -> Image {
        let mut b = [0u8; IMAGE_BYTES];
        for (at, text) in [(NAME_AT, spec.name()), (ENTRY_AT, spec.entry_name())] {
            let bytes = text.as_bytes();
            debug_assert!(bytes.len() <= MAX_NAME, "validated by submit");
            b[at] = bytes.len() as u8;
            b[at + 1..at + 1 + bytes.len()].copy_from_slice(bytes);
        }
        let arg = spec.arg_bytes();
        debug_assert!(arg.len() <= MAX_ARG, "validated by submit");
        b[ARG_AT..ARG_AT + 2].copy_from_slice(&(arg.len() as u16).to_le_bytes());
        b[ARG_AT + 2..ARG_AT + 2 + arg.len()].copy_from_slice(arg);
        b[PHASE_AT] = spec.start_phase() as u8;
        b[RESTART_KIND_AT] = match spec.restart_policy() {
            Restart::Never => 0,
            Restart::After(delay) => {
                put_duration(&mut b, RESTART_SECS_AT, RESTART_NANOS_AT, delay);
                1
            }
            Restart::Permanent => 2,
            Restart::Transient => 3,
            Restart::Temporary => 4,
        };
        b[ON_CRASH_AT] = match spec.crash_policy() {
            OnCrash::ResetAll => 0,
            OnCrash::Contain => 1,
        };
        b[SHMEM_AT] = u8::from(spec.has_shmem());
        b[NOTIFY_AT] = u8::from(spec.notifies());
        put_duration(
            &mut b,
            SHUTDOWN_SECS_AT,
            SHUTDOWN_NANOS_AT,
            spec.shutdown_timeout_value(),
        );
        Image(b)
    }

    /// Decodes and validates. Total: every byte pattern gives a spec or an
    /// [`Invalid`]. Only canonical images decode (unused bytes zero), so
    /// `encode(decode(x)) == x` whenever `decode(x)` succeeds.
    fn decode(&self) -> Result<WorkerSpec, Invalid> {
        let b = &self.0;
        let name = self.text(NAME_AT, "worker name")?;
        let entry = self.text(ENTRY_AT, "entry name")?;
        let arg_len = usize::from(u16::from_le_bytes([b[ARG_AT], b[ARG_AT + 1]]));
        if arg_len > MAX_ARG {
            return Err(Invalid::Length {
                field: "argument",
                len: arg_len,
                max: MAX_ARG,
            });
        }
        let arg_area = &b[ARG_AT + 2..ARG_AT + 2 + MAX_ARG];
        if arg_area[arg_len..].iter().any(|&x| x != 0) {
            return Err(Invalid::Padding { field: "argument" });
        }
        let phase = Phase::from_u8(b[PHASE_AT]).ok_or(Invalid::Phase(b[PHASE_AT]))?;
        let kind = b[RESTART_KIND_AT];
        if kind != 1
            && b[RESTART_SECS_AT..RESTART_NANOS_AT + 4]
                .iter()
                .any(|&x| x != 0)
        {
            return Err(Invalid::Padding {
                field: "restart policy",
            });
        }
        let restart = match kind {
            0 => Restart::Never,
            1 => Restart::After(get_duration(
                b,
                RESTART_SECS_AT,
                RESTART_NANOS_AT,
                "restart delay",
            )?),
            2 => Restart::Permanent,
            3 => Restart::Transient,
            4 => Restart::Temporary,
            kind => return Err(Invalid::RestartKind(kind)),
        };
        let on_crash = match flag(b[ON_CRASH_AT], "on_crash")? {
            false => OnCrash::ResetAll,
            true => OnCrash::Contain,
        };
        let shmem = flag(b[SHMEM_AT], "shmem")?;
        let notify = flag(b[NOTIFY_AT], "notify")?;
        if b[RESERVED_AT] != 0 {
            return Err(Invalid::Padding { field: "flags" });
        }
        let shutdown = get_duration(b, SHUTDOWN_SECS_AT, SHUTDOWN_NANOS_AT, "shutdown timeout")?;
        let spec = WorkerSpec::new(name)
            .entry(entry)
            .arg(&arg_area[..arg_len])
            .start(phase)
            .restart(restart)
            .shmem(shmem)
            .notify(notify)
            .on_crash(on_crash)
            .shutdown_timeout(shutdown);
        // Catches what the byte checks cannot: characters outside the
        // name alphabet, and empty names.
        spec.validate().map_err(Invalid::Spec)?;
        Ok(spec)
    }

    /// A length-prefixed name at `at`.
    fn text(&self, at: usize, field: &'static str) -> Result<String, Invalid> {
        let len = usize::from(self.0[at]);
        if len > MAX_NAME {
            return Err(Invalid::Length {
                field,
                len,
                max: MAX_NAME,
            });
        }
        let area = &self.0[at + 1..at + 1 + MAX_NAME];
        if area[len..].iter().any(|&x| x != 0) {
            return Err(Invalid::Padding { field });
        }
        String::from_utf8(area[..len].to_vec()).map_err(|_| Invalid::NotUtf8 { field })
    }

    fn to_words(&self) -> [u64; IMAGE_WORDS] {
        let mut words = [0u64; IMAGE_WORDS];
        for (w, chunk) in words.iter_mut().zip(self.0.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *w = u64::from_le_bytes(le);
        }
        words
    }

    fn from_words(words: &[u64; IMAGE_WORDS]) -> Image {
        let mut b = [0u8; IMAGE_BYTES];
        for (chunk, w) in b.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        Image(b)
    }
}

fn put_duration(b: &mut [u8; IMAGE_BYTES], secs_at: usize, nanos_at: usize, d: Duration) {
    b[secs_at..secs_at + 8].copy_from_slice(&d.as_secs().to_le_bytes());
    b[nanos_at..nanos_at + 4].copy_from_slice(&d.subsec_nanos().to_le_bytes());
}

fn get_duration(
    b: &[u8; IMAGE_BYTES],
    secs_at: usize,
    nanos_at: usize,
    field: &'static str,
) -> Result<Duration, Invalid> {
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&b[secs_at..secs_at + 8]);
    let mut nanos = [0u8; 4];
    nanos.copy_from_slice(&b[nanos_at..nanos_at + 4]);
    let nanos = u32::from_le_bytes(nanos);
    // Checked first: Duration::new panics if the nanoseconds carry into a
    // full u64 of seconds.
    if nanos >= 1_000_000_000 {
        return Err(Invalid::Nanos { field, nanos });
    }
    Ok(Duration::new(u64::from_le_bytes(secs), nanos))
}

fn flag(value: u8, field: &'static str) -> Result<bool, Invalid> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(Invalid::Flag { field, value }),
    }
}

/// 64-bit FNV-1a over the generation, the registrant and the image: small,
/// deterministic in every process, and enough to tell a torn or scribbled
/// slot from one its registrant wrote. Not a defence against a malicious
/// writer, which could simply write a valid spec.
fn checksum(generation: u32, proc_word: u32, pid: u32, image: &Image) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let head = generation
        .to_le_bytes()
        .into_iter()
        .chain(proc_word.to_le_bytes())
        .chain(pid.to_le_bytes());
    head.chain(image.0.iter().copied())
        .fold(OFFSET_BASIS, |h, byte| {
            (h ^ u64::from(byte)).wrapping_mul(PRIME)
        })
}

// ---------------------------------------------------------------------------
// The slot
// ---------------------------------------------------------------------------

/// One registration slot; see the module docs for who writes which field.
#[repr(C, align(128))]
pub struct RegSlot {
    /// `generation << 32 | terminate << 8 | state`; see [`SlotState`].
    control: AtomicU64,
    /// `generation << 32 | detail`, written by the postmaster only.
    status: AtomicU64,
    /// FNV-1a of generation, registrant and image, by the image's writer.
    checksum: AtomicU64,
    /// The registrant's process-slot index, or `NO_PROC`.
    registrant_proc: AtomicU32,
    /// The registrant's pid.
    registrant_pid: AtomicU32,
    /// The spec, as an `Image` in little-endian words.
    image: [AtomicU64; IMAGE_WORDS],
}

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::align_of::<RegSlot>() == shmem::CACHE_LINE);
    assert!(std::mem::size_of::<RegSlot>() == 4 * shmem::CACHE_LINE);
};

// SAFETY: repr(C) of atomic integers (and an array of them) with trailing
// padding only: any bytes are a valid value, all-zero is a slot not set up
// yet (generation 0), there are no pointers, and every mutation is atomic.
#[cfg(not(loom))]
unsafe impl shmem::ShmSafe for RegSlot {}

impl RegSlot {
    /// An all-zero slot, as in a new segment (not set up yet: see
    /// [`RegistryOwner::init`]); for registries built on the heap (tests,
    /// loom models).
    pub fn new() -> Self {
        RegSlot {
            control: AtomicU64::new(0),
            status: AtomicU64::new(0),
            checksum: AtomicU64::new(0),
            registrant_proc: AtomicU32::new(0),
            registrant_pid: AtomicU32::new(0),
            image: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Stores zero in every word, as a segment reset's memset does. Only for
    /// registries on the heap, to model a reset; a segment's
    /// [`reinit`](shmem::Segment::reinit) zeroes the real thing.
    pub fn wipe(&self) {
        // Relaxed: a reset happens while no other process uses the
        // registry, and is published by whatever restarts them (the
        // postmaster's restore_after_reset, then the forks).
        //
        // Swaps rather than stores: every other process sees the same
        // thing (a 0 in each word's modification order), and loom mishandles
        // a plain store racing with an RMW on the same word, letting later
        // reads go back past the store (tokio-rs/loom#254, #389); the
        // protocol itself only ever writes `control` by RMW.
        for word in [&self.control, &self.status, &self.checksum]
            .into_iter()
            .chain(&self.image)
        {
            word.swap(0, Ordering::Relaxed);
        }
        self.registrant_proc.swap(0, Ordering::Relaxed);
        self.registrant_pid.swap(0, Ordering::Relaxed);
    }

    /// The slot's state and generation as its control word says now, or
    /// the raw word if it holds no valid state. For status displays; the
    /// protocol never acts on this.
    pub fn peek(&self) -> Result<(SlotState, u32), u64> {
        // Relaxed: a snapshot for display; nothing is read on its strength.
        let word = self.control.load(Ordering::Relaxed);
        Control::decode(word)
            .map(|c| (c.state, c.generation))
            .map_err(|_| word)
    }

    /// Writes the registrant's part of a slot the caller has claimed
    /// (`FILLING`, generation `generation`).
    fn write_image(&self, generation: u32, registrant: Registrant, image: &Image) {
        let proc_word = registrant.proc_index.unwrap_or(NO_PROC);
        // Relaxed, all of them: the slot is the caller's alone while it is
        // FILLING, and the release CAS that publishes SUBMITTED (or, in
        // reinstall, ACCEPTED) orders these stores before it.
        for (cell, word) in self.image.iter().zip(image.to_words()) {
            cell.store(word, Ordering::Relaxed);
        }
        self.registrant_proc.store(proc_word, Ordering::Relaxed);
        self.registrant_pid.store(registrant.pid, Ordering::Relaxed);
        self.checksum.store(
            checksum(generation, proc_word, registrant.pid, image),
            Ordering::Relaxed,
        );
    }

    /// Copies the registrant's part out and decodes it. Call only after an
    /// acquire load of `control` returned SUBMITTED(`generation`).
    fn read_image(&self, generation: u32) -> Result<Registration, Invalid> {
        // Relaxed, all of them: ordered after the registrant's stores by
        // the caller's acquire load of `control`, which pairs with the
        // release CAS in Registry::submit.
        let mut words = [0u64; IMAGE_WORDS];
        for (w, cell) in words.iter_mut().zip(&self.image) {
            *w = cell.load(Ordering::Relaxed);
        }
        let proc_word = self.registrant_proc.load(Ordering::Relaxed);
        let pid = self.registrant_pid.load(Ordering::Relaxed);
        let stored = self.checksum.load(Ordering::Relaxed);
        let image = Image::from_words(&words);
        let computed = checksum(generation, proc_word, pid, &image);
        if stored != computed {
            return Err(Invalid::Checksum { stored, computed });
        }
        let spec = image.decode()?;
        Ok(Registration {
            spec,
            registrant: Registrant {
                proc_index: (proc_word != NO_PROC).then_some(proc_word),
                pid,
            },
        })
    }
}

impl Default for RegSlot {
    fn default() -> Self {
        RegSlot::new()
    }
}

impl fmt::Debug for RegSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peek() {
            Ok((state, generation)) => f
                .debug_struct("RegSlot")
                .field("state", &state)
                .field("generation", &generation)
                .finish_non_exhaustive(),
            Err(word) => f
                .debug_struct("RegSlot")
                .field("corrupt_control", &format_args!("{word:#018x}"))
                .finish_non_exhaustive(),
        }
    }
}

// ---------------------------------------------------------------------------
// Plain data exchanged with callers
// ---------------------------------------------------------------------------

/// One tenancy of one registration slot. Plain data: copy it, send it to
/// another process, keep it after the registration ended (it then reads
/// [`HandleStatus::Stopped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegHandle {
    /// Index of the slot in the registry.
    pub slot: u32,
    /// The generation the slot had during this tenancy.
    pub generation: u32,
}

impl fmt::Display for RegHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "registration {}/{}", self.slot, self.generation)
    }
}

/// Who submitted a registration: the postmaster notifies it of start and
/// stop (if the spec asks) and may judge a rejected registration abandoned
/// when it is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Registrant {
    /// The registrant's process slot, if it has one. Read back from shared
    /// memory, so the postmaster must range-check it against its process
    /// array before use. `Some(u32::MAX)` cannot be submitted.
    pub proc_index: Option<u32>,
    /// The registrant's pid (as the registrant claims; unverified).
    pub pid: u32,
}

/// A registration the postmaster decoded from a slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The worker to run.
    pub spec: WorkerSpec,
    /// Who asked for it.
    pub registrant: Registrant,
}

/// What a registrant can learn through its handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandleStatus {
    /// Published; the postmaster has not accepted or rejected it yet.
    Submitted,
    /// Accepted; the worker has not been started yet (its start phase may
    /// not have been reached).
    NotYetStarted,
    /// The worker runs as `pid`.
    Started {
        /// The worker's pid.
        pid: u32,
    },
    /// The worker stopped, or the registration is gone (released, or the
    /// handle is from an earlier tenancy, or the slot is unreadable).
    Stopped,
    /// The postmaster refused the registration.
    Rejected(RejectReason),
}

/// Why the postmaster refused a registration. The code travels through the
/// slot's status word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
#[repr(u32)]
pub enum RejectReason {
    /// No entry point of that name is known.
    #[error(
        "the postmaster has no entry point of that name; add it to the entry table before the \
         postmaster starts"
    )]
    UnknownEntry = 1,
    /// The spec's values are not acceptable to the postmaster.
    #[error("the postmaster refused the spec's values; check them against its limits")]
    InvalidSpec = 2,
    /// A worker of the same name is registered already.
    #[error(
        "a worker of that name is already registered; choose another name or terminate that one \
         first"
    )]
    DuplicateName = 3,
    /// The postmaster is shutting down and starts nothing new.
    #[error("the postmaster is shutting down and starts no new workers")]
    ShuttingDown = 4,
    /// Every worker process slot is taken.
    #[error("no process slot is free for another worker; raise the worker count or retry later")]
    NoWorkerSlot = 5,
    /// The slot's contents failed validation (torn or overwritten).
    #[error("the registration slot was damaged before the postmaster read it; submit again")]
    Corrupt = 6,
}

impl RejectReason {
    /// Every reason, in code order.
    pub const ALL: [RejectReason; 6] = [
        RejectReason::UnknownEntry,
        RejectReason::InvalidSpec,
        RejectReason::DuplicateName,
        RejectReason::ShuttingDown,
        RejectReason::NoWorkerSlot,
        RejectReason::Corrupt,
    ];

    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The reason with this wire code.
    pub fn from_code(code: u32) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.code() == code)
    }
}

/// Why a submitted slot's contents cannot be a registration. Produced by
/// the postmaster's decoder; a well-behaved registrant never causes one.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Invalid {
    /// The checksum does not cover what is there.
    #[error(
        "checksum {stored:#018x} does not match the contents ({computed:#018x}): the slot was \
         torn or overwritten"
    )]
    Checksum {
        /// The checksum in the slot.
        stored: u64,
        /// The checksum of what the slot holds.
        computed: u64,
    },
    /// A length is past its field's maximum.
    #[error("the {field} is {len} bytes, more than the {max} it may have")]
    Length {
        /// The field.
        field: &'static str,
        /// The stored length.
        len: usize,
        /// The field's maximum.
        max: usize,
    },
    /// Bytes that must be zero are not.
    #[error("the unused bytes of the {field} are not zero")]
    Padding {
        /// The field.
        field: &'static str,
    },
    /// A name is not UTF-8.
    #[error("the {field} is not UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// An unknown start phase.
    #[error("start phase {0} is not a known phase")]
    Phase(u8),
    /// An unknown restart kind.
    #[error(
        "restart kind {0} is not one of 0 (never), 1 (after a delay), 2 (permanent), 3 (transient), 4 (temporary)"
    )]
    RestartKind(u8),
    /// A flag other than 0 or 1.
    #[error("the {field} flag is {value}, not 0 or 1")]
    Flag {
        /// The flag.
        field: &'static str,
        /// Its byte.
        value: u8,
    },
    /// A duration with a second or more in its nanoseconds.
    #[error("the {field} has {nanos} nanoseconds past the second, which is not below 10^9")]
    Nanos {
        /// The duration.
        field: &'static str,
        /// Its nanoseconds.
        nanos: u32,
    },
    /// The decoded spec breaks a bound of [`WorkerSpec::validate`].
    #[error(transparent)]
    Spec(SpecError),
}

impl Invalid {
    /// The reason to give the registrant: a checksum mismatch means the
    /// slot was damaged, anything else that the spec itself is wrong.
    pub fn reject_reason(&self) -> RejectReason {
        match self {
            Invalid::Checksum { .. } => RejectReason::Corrupt,
            _ => RejectReason::InvalidSpec,
        }
    }
}

/// What is wrong with a slot's control word, from the postmaster's view.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Corruption {
    /// Unknown state, stray bits, or a terminate bit on a free slot.
    #[error("control word {word:#018x} holds no valid state")]
    UnknownState {
        /// The raw word.
        word: u64,
    },
    /// A generation the postmaster never put there.
    #[error("the slot carries generation {found}, but the postmaster issued generation {expected}")]
    Generation {
        /// The generation in the slot.
        found: u32,
        /// The generation the postmaster recorded.
        expected: u32,
    },
    /// A state the postmaster's records rule out.
    #[error("the slot is {found}, but the postmaster recorded it as {expected}")]
    State {
        /// The state in the slot.
        found: SlotState,
        /// What the postmaster's records allow.
        expected: &'static str,
    },
    /// The word kept changing for [`MAX_CAS_ATTEMPTS`] attempts.
    #[error("its control word changed {MAX_CAS_ATTEMPTS} times in a row while being updated")]
    Unsettled,
}

/// A slot whose control word the postmaster cannot believe. Release it with
/// [`RegistryOwner::release`] (the handle is the owner's record), or reset
/// the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorruptSlot {
    /// The slot with the generation the postmaster issued.
    pub handle: RegHandle,
    /// What is wrong.
    pub problem: Corruption,
}

/// One submitted registration, copied out and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submission {
    /// Accept or reject it through this handle.
    pub handle: RegHandle,
    /// The registration, or why the slot does not hold one (reject it with
    /// [`Invalid::reject_reason`]).
    pub registration: Result<Registration, Invalid>,
}

/// What one [`RegistryOwner::scan`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Slots in `SUBMITTED`: accept or reject each. A submission not
    /// answered is found again by the next scan.
    pub submissions: Vec<Submission>,
    /// Live registrations whose terminate bit is set: stop the worker (if
    /// any) and release them. Found again by every scan until released.
    pub terminate_requests: Vec<RegHandle>,
    /// Slots being filled by a registrant. Release one that stays filling
    /// for long: its registrant died between claim and publish.
    pub filling: Vec<RegHandle>,
    /// Slots whose control word cannot be believed.
    pub corrupt: Vec<CorruptSlot>,
}

/// Why a registry operation failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    /// The spec breaks a bound; nothing was written.
    #[error("the worker spec cannot be registered: {0}")]
    Spec(#[from] SpecError),
    /// `Some(u32::MAX)` is not a process-slot index.
    #[error("process-slot index {0} is out of range; pass None if the registrant has no slot")]
    InvalidProcIndex(u32),
    /// Every registration slot is in use.
    #[error(
        "all {size} registration slots are in use; raise the slot count given to \
         Registry::declare, or wait for a registration to end"
    )]
    Full {
        /// How many slots the registry has.
        size: usize,
    },
    /// The postmaster has not set the registry up yet, or is resetting it.
    #[error(
        "the registry is not set up: the postmaster has not started, or is resetting shared \
         memory; retry once it runs"
    )]
    NotReady,
    /// The slot was taken back while this process was filling it (the
    /// segment was reset, or the postmaster judged it abandoned).
    #[error(
        "registration slot {slot} was taken back while this process was filling it (segment \
         reset, or filling took too long); submit again"
    )]
    Interrupted {
        /// The slot.
        slot: u32,
    },
    /// The handle names a slot the registry does not have.
    #[error("{handle} names a slot past the registry's {len}")]
    NoSuchSlot {
        /// The handle.
        handle: RegHandle,
        /// The registry's size.
        len: usize,
    },
    /// The handle's tenancy is over: nothing was changed.
    #[error("{handle} is stale: the slot is at generation {current} now")]
    Stale {
        /// The handle.
        handle: RegHandle,
        /// The generation the postmaster recorded for the slot.
        current: u32,
    },
    /// The postmaster asked for a transition its own records rule out.
    #[error("{handle} is {found}; this operation needs it {needed}")]
    WrongState {
        /// The handle.
        handle: RegHandle,
        /// What the operation needs.
        needed: &'static str,
        /// What the postmaster recorded.
        found: &'static str,
    },
    /// A pid that cannot be told apart from the status sentinels.
    #[error("pid {0} cannot be recorded as a worker's pid")]
    InvalidPid(u32),
    /// Shared memory disagrees with the postmaster's records.
    #[error(
        "registration slot {slot} is corrupt: {problem}; release it or reset the segment",
        slot = .0.handle.slot,
        problem = .0.problem
    )]
    Corrupt(CorruptSlot),
    /// The owner was built for a registry of another size.
    #[error("the registry has {found} slots but its owner was built for {expected}")]
    SizeMismatch {
        /// The registry's size.
        found: usize,
        /// The owner's.
        expected: usize,
    },
    /// The registry's region is missing or has the wrong type.
    #[error(transparent)]
    Region(#[from] shmem::RegionError),
}

// ---------------------------------------------------------------------------
// The registrant's view
// ---------------------------------------------------------------------------

/// A view of the registration slots, usable from any attached process.
#[derive(Clone, Copy)]
pub struct Registry<'a> {
    slots: &'a [RegSlot],
}

impl fmt::Debug for Registry<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl<'a> Registry<'a> {
    /// Adds the registry's region, `slots` slots long, to a layout.
    #[cfg(not(loom))]
    pub fn declare(builder: shmem::LayoutBuilder, slots: usize) -> shmem::LayoutBuilder {
        builder.array::<RegSlot>(REGION, slots)
    }

    /// A view of the registry in `segment`. In a new segment the postmaster
    /// sets it up with [`RegistryOwner::init`]; until then (and during a
    /// reset) submissions get [`RegistryError::NotReady`].
    #[cfg(not(loom))]
    pub fn from_segment(segment: &'a shmem::Segment) -> Result<Self, RegistryError> {
        Ok(Self::from_slots(segment.array::<RegSlot>(REGION)?))
    }

    /// A view over slots the caller laid out (tests and loom models build
    /// them on the heap). Only the first `u32::MAX` slots are used.
    pub fn from_slots(slots: &'a [RegSlot]) -> Self {
        let usable = slots.len().min(u32::MAX as usize);
        Registry {
            slots: &slots[..usable],
        }
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the registry has no slots at all.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The slot `index`, for status displays.
    pub fn slot(&self, index: u32) -> Option<&'a RegSlot> {
        self.slots.get(index as usize)
    }

    /// Submits `spec` for the postmaster to start; signal the postmaster
    /// afterwards. The spec is validated first; nothing is written if it
    /// breaks a bound.
    ///
    /// One pass over the slots: a free slot is claimed by a CAS that keeps
    /// its generation, written, and published. A slot freed behind the pass
    /// is not seen, so `Full` can be reported while one has just become
    /// free; retry after waiting for a registration to end.
    pub fn submit(
        &self,
        spec: &WorkerSpec,
        registrant: Registrant,
    ) -> Result<RegHandle, RegistryError> {
        spec.validate()?;
        if registrant.proc_index == Some(NO_PROC) {
            return Err(RegistryError::InvalidProcIndex(NO_PROC));
        }
        let image = Image::encode(spec);
        let mut unset = false;
        for (index, slot) in self.slots.iter().enumerate() {
            // Relaxed: only a guess at which slot to try; the CAS decides.
            let seen = slot.control.load(Ordering::Relaxed);
            let Ok(free) = Control::decode(seen) else {
                continue;
            };
            if free.state != SlotState::Free {
                continue;
            }
            if free.generation == UNSET_GENERATION {
                unset = true;
                continue;
            }
            let filling = Control::new(free.generation, SlotState::Filling);
            // Acquire: pairs with the release in RegistryOwner::release and
            // restore_after_reset, so our image stores come after the
            // postmaster's reads of the previous tenancy's image.
            if slot
                .control
                .compare_exchange(seen, filling.encode(), Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                continue; // another registrant won it; try the next
            }
            slot.write_image(free.generation, registrant, &image);
            let submitted = Control::new(free.generation, SlotState::Submitted);
            let index = index as u32; // from_slots keeps len <= u32::MAX
            // Release: publishes the image; pairs with the acquire load in
            // RegistryOwner::scan. A CAS, not a store: if the postmaster
            // took the slot back meanwhile, we must not overwrite its word.
            slot.control
                .compare_exchange(
                    filling.encode(),
                    submitted.encode(),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .map_err(|_| RegistryError::Interrupted { slot: index })?;
            return Ok(RegHandle {
                slot: index,
                generation: free.generation,
            });
        }
        if unset {
            return Err(RegistryError::NotReady);
        }
        Err(RegistryError::Full {
            size: self.slots.len(),
        })
    }

    /// What became of the registration `handle` names. Never fails: a
    /// handle from an earlier tenancy, or one that names no slot, reads
    /// [`HandleStatus::Stopped`] (the registration is gone).
    pub fn status(&self, handle: RegHandle) -> HandleStatus {
        let Some(slot) = self.slots.get(handle.slot as usize) else {
            return HandleStatus::Stopped;
        };
        // Acquire: pairs with the release CASes in accept, reject and
        // reinstall, so the status word read below is at least the one they
        // wrote for this generation.
        let Ok(control) = Control::decode(slot.control.load(Ordering::Acquire)) else {
            return HandleStatus::Stopped;
        };
        if control.generation != handle.generation {
            return HandleStatus::Stopped;
        }
        match control.state {
            SlotState::Free | SlotState::Filling => HandleStatus::Stopped,
            SlotState::Submitted => HandleStatus::Submitted,
            SlotState::Accepted | SlotState::Rejected => {
                // Relaxed: ordered after the acquire above; the word carries
                // its own generation, so no other ordering is needed.
                let status = StatusWord::decode(slot.status.load(Ordering::Relaxed));
                if status.generation != handle.generation {
                    // Written for a later tenancy: ours was released since.
                    return HandleStatus::Stopped;
                }
                match (control.state, status.detail) {
                    (SlotState::Accepted, NOT_STARTED) => HandleStatus::NotYetStarted,
                    (SlotState::Accepted, STOPPED) => HandleStatus::Stopped,
                    (SlotState::Accepted, pid) => HandleStatus::Started { pid },
                    (_, code) => {
                        // An unknown code can only be scribbled: say so.
                        HandleStatus::Rejected(
                            RejectReason::from_code(code).unwrap_or(RejectReason::Corrupt),
                        )
                    }
                }
            }
        }
    }

    /// Asks the postmaster to end the registration `handle` names: a running
    /// worker is stopped, a pending one never starts, a rejected one's slot
    /// is freed. Signal the postmaster afterwards.
    ///
    /// Returns whether the request is recorded (now or before). A stale
    /// handle, or one whose registration is not live, returns `false` and
    /// changes nothing: the CAS compares the whole `(generation, state)`
    /// word, so it can never mark a later tenancy.
    pub fn terminate(&self, handle: RegHandle) -> bool {
        let Some(slot) = self.slots.get(handle.slot as usize) else {
            return false;
        };
        // Relaxed: a first guess for the CAS, which validates it.
        let mut seen = slot.control.load(Ordering::Relaxed);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Ok(control) = Control::decode(seen) else {
                return false;
            };
            if control.generation != handle.generation || !control.state.is_live() {
                return false;
            }
            if control.terminate {
                return true;
            }
            let marked = Control {
                terminate: true,
                ..control
            };
            // AcqRel: the bit publishes nothing, but making the CAS a link
            // in the chain from the postmaster's release (accept/reject) to
            // a later acquire of the marked word (status(), scan()) does not
            // lean on release sequences through a relaxed RMW.
            match slot.control.compare_exchange(
                seen,
                marked.encode(),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
        // Only another process rewriting the word without pause gets here.
        false
    }
}

// ---------------------------------------------------------------------------
// The postmaster's side
// ---------------------------------------------------------------------------

/// What the postmaster has done with one slot's current generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tenancy {
    /// Not accepted or rejected yet: free, or in a registrant's hands.
    Open,
    /// Accepted (by a scan, or reinstalled).
    Accepted,
    /// Rejected.
    Rejected,
}

impl Tenancy {
    fn name(self) -> &'static str {
        match self {
            Tenancy::Open => "free, filling or submitted",
            Tenancy::Accepted => "accepted",
            Tenancy::Rejected => "rejected",
        }
    }

    fn allows(self, state: SlotState) -> bool {
        match self {
            Tenancy::Open => matches!(
                state,
                SlotState::Free | SlotState::Filling | SlotState::Submitted
            ),
            Tenancy::Accepted => state == SlotState::Accepted,
            Tenancy::Rejected => state == SlotState::Rejected,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Owned {
    generation: u32,
    tenancy: Tenancy,
}

/// The postmaster's private record of the registry: for every slot, the
/// generation it left there and what it did with that tenancy. It is the
/// authority shared memory is checked against, and it survives a segment
/// reset (it lives in the postmaster's own memory), which is what lets
/// [`restore_after_reset`](Self::restore_after_reset) fence every handle
/// issued before.
///
/// Its methods take the [`Registry`] view as an argument, so the owner
/// outlives the views (a reset needs `&mut Segment`, which ends them).
#[derive(Clone, Debug)]
pub struct RegistryOwner {
    slots: Vec<Owned>,
}

impl RegistryOwner {
    /// Sets up a new registry (a new segment's, all-zero): every slot
    /// becomes free at generation 1, which registrants may claim. Call it
    /// once, before any registrant can attach; after a reset call
    /// [`restore_after_reset`](Self::restore_after_reset) on the owner you
    /// have instead.
    pub fn init(registry: &Registry<'_>) -> Self {
        let mut owner = RegistryOwner {
            slots: vec![
                Owned {
                    generation: UNSET_GENERATION,
                    tenancy: Tenancy::Open,
                };
                registry.len()
            ],
        };
        for (slot, owned) in registry.slots.iter().zip(&mut owner.slots) {
            owned.generation = next_generation(owned.generation);
            free_slot(slot, owned.generation);
        }
        owner
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the registry has no slots.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The handle of slot `index`'s current tenancy, as the owner records
    /// it.
    pub fn current(&self, index: u32) -> Option<RegHandle> {
        self.slots.get(index as usize).map(|o| RegHandle {
            slot: index,
            generation: o.generation,
        })
    }

    fn check_size(&self, registry: &Registry<'_>) -> Result<(), RegistryError> {
        if registry.len() != self.slots.len() {
            return Err(RegistryError::SizeMismatch {
                found: registry.len(),
                expected: self.slots.len(),
            });
        }
        Ok(())
    }

    /// The slot and record of `handle`, if it is the current tenancy.
    fn tenancy<'r>(
        &self,
        registry: &Registry<'r>,
        handle: RegHandle,
    ) -> Result<(&'r RegSlot, Owned), RegistryError> {
        self.check_size(registry)?;
        let (Some(slot), Some(owned)) = (
            registry.slots.get(handle.slot as usize),
            self.slots.get(handle.slot as usize),
        ) else {
            return Err(RegistryError::NoSuchSlot {
                handle,
                len: self.slots.len(),
            });
        };
        if owned.generation != handle.generation {
            return Err(RegistryError::Stale {
                handle,
                current: owned.generation,
            });
        }
        Ok((slot, *owned))
    }

    /// One bounded pass over every slot: submissions copied out and
    /// decoded, terminate requests, slots being filled, and slots whose
    /// control word disagrees with the owner's records.
    pub fn scan(&self, registry: &Registry<'_>) -> Result<Scan, RegistryError> {
        self.check_size(registry)?;
        let mut scan = Scan::default();
        for (index, (slot, owned)) in registry.slots.iter().zip(&self.slots).enumerate() {
            let handle = RegHandle {
                slot: index as u32, // from_slots keeps len <= u32::MAX
                generation: owned.generation,
            };
            // Acquire: pairs with the release CAS in Registry::submit, so a
            // SUBMITTED word comes with the image written before it.
            let word = slot.control.load(Ordering::Acquire);
            let control = match check_control(word, *owned) {
                Ok(control) => control,
                Err(problem) => {
                    scan.corrupt.push(CorruptSlot { handle, problem });
                    continue;
                }
            };
            match control.state {
                SlotState::Filling => scan.filling.push(handle),
                SlotState::Submitted => scan.submissions.push(Submission {
                    handle,
                    registration: slot.read_image(owned.generation),
                }),
                SlotState::Free | SlotState::Accepted | SlotState::Rejected => {}
            }
            if control.terminate {
                scan.terminate_requests.push(handle);
            }
        }
        Ok(scan)
    }

    /// Accepts a submission: its registrant now reads
    /// [`HandleStatus::NotYetStarted`].
    pub fn accept(
        &mut self,
        registry: &Registry<'_>,
        handle: RegHandle,
    ) -> Result<(), RegistryError> {
        self.answer(registry, handle, SlotState::Accepted, NOT_STARTED)
    }

    /// Rejects a submission: its registrant reads
    /// [`HandleStatus::Rejected`] until the registration is released (see
    /// the module docs on when).
    pub fn reject(
        &mut self,
        registry: &Registry<'_>,
        handle: RegHandle,
        reason: RejectReason,
    ) -> Result<(), RegistryError> {
        self.answer(registry, handle, SlotState::Rejected, reason.code())
    }

    /// Moves a SUBMITTED slot to `to`, with `detail` in its status word,
    /// keeping the terminate bit a registrant may have set.
    fn answer(
        &mut self,
        registry: &Registry<'_>,
        handle: RegHandle,
        to: SlotState,
        detail: u32,
    ) -> Result<(), RegistryError> {
        let (slot, owned) = self.tenancy(registry, handle)?;
        if owned.tenancy != Tenancy::Open {
            return Err(RegistryError::WrongState {
                handle,
                needed: "submitted",
                found: owned.tenancy.name(),
            });
        }
        let corrupt = |problem| RegistryError::Corrupt(CorruptSlot { handle, problem });
        // Relaxed: published by the release CAS below, which pairs with the
        // acquire load in Registry::status.
        slot.status.store(
            StatusWord {
                generation: handle.generation,
                detail,
            }
            .encode(),
            Ordering::Relaxed,
        );
        // Relaxed: a first guess for the CAS.
        let mut seen = slot.control.load(Ordering::Relaxed);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let control = check_control(seen, owned).map_err(corrupt)?;
            if control.state != SlotState::Submitted {
                // Free or filling: consistent with the records, so the caller
                // answered a handle that was never submitted.
                return Err(RegistryError::WrongState {
                    handle,
                    needed: "submitted",
                    found: control.state.name(),
                });
            }
            // Release: publishes the status word; pairs with the acquire
            // load in Registry::status.
            match slot.control.compare_exchange(
                seen,
                Control {
                    state: to,
                    ..control
                }
                .encode(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.slots[handle.slot as usize].tenancy = match to {
                        SlotState::Rejected => Tenancy::Rejected,
                        _ => Tenancy::Accepted,
                    };
                    return Ok(());
                }
                Err(now) => seen = now,
            }
        }
        Err(corrupt(Corruption::Unsettled))
    }

    /// Records that the accepted registration's worker runs as `pid`.
    pub fn set_started(
        &self,
        registry: &Registry<'_>,
        handle: RegHandle,
        pid: u32,
    ) -> Result<(), RegistryError> {
        if pid == NOT_STARTED || pid == STOPPED {
            return Err(RegistryError::InvalidPid(pid));
        }
        self.set_detail(registry, handle, pid)
    }

    /// Records that the accepted registration's worker stopped. The
    /// registration stays (the worker may be restarted); release it when
    /// it ends for good.
    pub fn set_stopped(
        &self,
        registry: &Registry<'_>,
        handle: RegHandle,
    ) -> Result<(), RegistryError> {
        self.set_detail(registry, handle, STOPPED)
    }

    fn set_detail(
        &self,
        registry: &Registry<'_>,
        handle: RegHandle,
        detail: u32,
    ) -> Result<(), RegistryError> {
        let (slot, owned) = self.tenancy(registry, handle)?;
        if owned.tenancy != Tenancy::Accepted {
            return Err(RegistryError::WrongState {
                handle,
                needed: "accepted",
                found: owned.tenancy.name(),
            });
        }
        // Relaxed: a check, not a synchronisation; only the postmaster
        // changes an accepted slot's state.
        let word = slot.control.load(Ordering::Relaxed);
        check_control(word, owned)
            .map_err(|problem| RegistryError::Corrupt(CorruptSlot { handle, problem }))?;
        // Relaxed: the word is self-contained (generation and pid) and
        // publishes nothing else; a registrant woken by the notification
        // that follows is ordered by the latch's own release/acquire.
        slot.status.store(
            StatusWord {
                generation: handle.generation,
                detail,
            }
            .encode(),
            Ordering::Relaxed,
        );
        Ok(())
    }

    /// Ends the tenancy `handle` names, whatever its state (a finished or
    /// withdrawn registration, a rejected one, a slot stuck filling, a
    /// corrupt slot): the slot becomes free at the next generation, so every
    /// handle to it is stale from now on.
    pub fn release(
        &mut self,
        registry: &Registry<'_>,
        handle: RegHandle,
    ) -> Result<(), RegistryError> {
        let (slot, owned) = self.tenancy(registry, handle)?;
        let next = next_generation(owned.generation);
        free_slot(slot, next);
        self.slots[handle.slot as usize] = Owned {
            generation: next,
            tenancy: Tenancy::Open,
        };
        Ok(())
    }

    /// After a segment reset (the registry is zeroed, so every slot reads
    /// "not set up", and registrants get [`RegistryError::NotReady`]):
    /// moves every slot to a generation past any this owner ever handed
    /// out, so every handle issued before the reset is stale, and opens the
    /// slots to registrants again. Call it after the reset, before
    /// [`reinstall`](Self::reinstall)ing the registrations that survive. It
    /// overwrites whatever the slots hold, so it also serves a registry that
    /// was not zeroed; a registrant caught filling a slot then gets
    /// [`RegistryError::Interrupted`].
    pub fn restore_after_reset(&mut self, registry: &Registry<'_>) -> Result<(), RegistryError> {
        self.check_size(registry)?;
        for (slot, owned) in registry.slots.iter().zip(&mut self.slots) {
            owned.generation = next_generation(owned.generation);
            owned.tenancy = Tenancy::Open;
            free_slot(slot, owned.generation);
        }
        Ok(())
    }

    /// Puts a registration that survives a reset back into a free slot as
    /// accepted (not yet started), under a new generation. Returns the new
    /// handle; the registrant's old one is stale.
    pub fn reinstall(
        &mut self,
        registry: &Registry<'_>,
        spec: &WorkerSpec,
        registrant: Registrant,
    ) -> Result<RegHandle, RegistryError> {
        self.check_size(registry)?;
        spec.validate()?;
        if registrant.proc_index == Some(NO_PROC) {
            return Err(RegistryError::InvalidProcIndex(NO_PROC));
        }
        let image = Image::encode(spec);
        for (index, (slot, owned)) in registry.slots.iter().zip(&mut self.slots).enumerate() {
            if owned.tenancy != Tenancy::Open {
                continue;
            }
            let handle = RegHandle {
                slot: index as u32, // from_slots keeps len <= u32::MAX
                generation: owned.generation,
            };
            let filling = Control::new(owned.generation, SlotState::Filling);
            // Claimed like a registrant does, because registrants compete
            // for the same free slots. Acquire: as in Registry::submit.
            if slot
                .control
                .compare_exchange(
                    Control::new(owned.generation, SlotState::Free).encode(),
                    filling.encode(),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                )
                .is_err()
            {
                continue;
            }
            slot.write_image(owned.generation, registrant, &image);
            // Relaxed: published by the release CAS below.
            slot.status.store(
                StatusWord {
                    generation: owned.generation,
                    detail: NOT_STARTED,
                }
                .encode(),
                Ordering::Relaxed,
            );
            // Release: publishes image and status; pairs with the acquire
            // loads in Registry::status and scan.
            slot.control
                .compare_exchange(
                    filling.encode(),
                    Control::new(owned.generation, SlotState::Accepted).encode(),
                    Ordering::Release,
                    Ordering::Relaxed,
                )
                .map_err(|found| {
                    // Nobody but the claimer moves a FILLING slot.
                    RegistryError::Corrupt(CorruptSlot {
                        handle,
                        problem: Control::decode(found)
                            .map(|c| Corruption::State {
                                found: c.state,
                                expected: "filling",
                            })
                            .unwrap_or_else(|e| e),
                    })
                })?;
            owned.tenancy = Tenancy::Accepted;
            return Ok(handle);
        }
        Err(RegistryError::Full {
            size: registry.len(),
        })
    }
}

/// Decodes `word` and checks it against the owner's record.
fn check_control(word: u64, owned: Owned) -> Result<Control, Corruption> {
    let control = Control::decode(word)?;
    if control.generation != owned.generation {
        return Err(Corruption::Generation {
            found: control.generation,
            expected: owned.generation,
        });
    }
    if !owned.tenancy.allows(control.state) {
        return Err(Corruption::State {
            found: control.state,
            expected: owned.tenancy.name(),
        });
    }
    Ok(control)
}

/// Makes `slot` free at `generation`, whatever it held.
fn free_slot(slot: &RegSlot, generation: u32) {
    // Relaxed: no registrant reads the status word of a FREE slot, and the
    // next accept rewrites it before publishing; the generation inside
    // keeps a late reader of the old tenancy from misreading it.
    slot.status.store(
        StatusWord {
            generation,
            detail: NOT_STARTED,
        }
        .encode(),
        Ordering::Relaxed,
    );
    // Release: pairs with the acquire CAS that claims the slot (submit,
    // reinstall), so the next tenant's image stores come after our reads of
    // this tenancy's image. (That is a load-buffering outcome, which loom
    // does not model: this pairing is argued here, not model-checked.) A
    // swap, not a CAS: the postmaster frees the slot whatever a registrant
    // (or garbage) left in it.
    slot.control.swap(
        Control::new(generation, SlotState::Free).encode(),
        Ordering::Release,
    );
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn slots(n: usize) -> Vec<RegSlot> {
        (0..n).map(|_| RegSlot::new()).collect()
    }

    fn me() -> Registrant {
        Registrant {
            proc_index: Some(7),
            pid: 1234,
        }
    }

    /// Small, deterministic, and good enough to scatter bytes (Marsaglia's
    /// xorshift64).
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn control_word_round_trips_and_rejects_stray_bits() {
        assert_eq!(
            Control::decode(0),
            Ok(Control::new(UNSET_GENERATION, SlotState::Free)),
            "all-zero is a free slot the postmaster has not set up"
        );
        assert_eq!(next_generation(u32::MAX), 1, "0 is skipped");
        assert_eq!(next_generation(1), 2);
        for state in SlotState::ALL {
            for generation in [0, 1, u32::MAX] {
                let c = Control::new(generation, state);
                assert_eq!(Control::decode(c.encode()), Ok(c));
                let t = Control {
                    terminate: true,
                    ..c
                };
                assert_eq!(Control::decode(t.encode()).is_ok(), state.is_live());
            }
        }
        for word in [5, 0xff, 1 << 9, 1 << 31, (7 << 32) | 2 | (1 << 20)] {
            assert_eq!(
                Control::decode(word),
                Err(Corruption::UnknownState { word })
            );
        }
    }

    #[test]
    fn image_layout_fits_the_slot() {
        assert_eq!(IMAGE_BYTES, 416);
        assert_eq!(std::mem::size_of::<RegSlot>(), 512);
        assert_eq!(ARG_AT + 2 + MAX_ARG, PHASE_AT);
    }

    /// Every field at its bounds survives submit → scan, with the
    /// registrant.
    #[test]
    fn every_field_round_trips_at_its_bounds() {
        let storage = slots(2);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let long = "n".repeat(MAX_NAME);
        let all_bytes: Vec<u8> = (0..MAX_ARG).map(|i| (i * 37 + 1) as u8).collect();
        let mut specs = Vec::new();
        for phase in Phase::ALL {
            for (shmem, notify) in [(false, false), (true, false), (false, true), (true, true)] {
                specs.push(
                    WorkerSpec::new(long.clone())
                        .entry("e".repeat(MAX_NAME))
                        .arg(all_bytes.clone())
                        .start(phase)
                        .shmem(shmem)
                        .notify(notify),
                );
            }
        }
        for restart in [
            Restart::Never,
            Restart::Permanent,
            Restart::Transient,
            Restart::Temporary,
            Restart::After(Duration::ZERO),
            Restart::After(Duration::from_millis(1500)),
            Restart::After(Duration::new(u64::MAX, 999_999_999)),
        ] {
            for timeout in [
                Duration::ZERO,
                Duration::from_nanos(1),
                Duration::new(u64::MAX, 999_999_999),
            ] {
                specs.push(
                    WorkerSpec::new("a")
                        .entry("Z.9_-")
                        .restart(restart)
                        .shutdown_timeout(timeout),
                );
            }
        }
        specs.push(WorkerSpec::new("empty-arg").arg(Vec::new()));
        specs.push(WorkerSpec::new("one-byte").arg(vec![0]));
        let registrants = [
            Registrant {
                proc_index: None,
                pid: 0,
            },
            Registrant {
                proc_index: Some(0),
                pid: u32::MAX,
            },
            Registrant {
                proc_index: Some(u32::MAX - 1),
                pid: 1,
            },
        ];
        for (i, spec) in specs.iter().enumerate() {
            let registrant = registrants[i % registrants.len()];
            let handle = registry.submit(spec, registrant).unwrap();
            let scan = owner.scan(&registry).unwrap();
            assert_eq!(
                scan.submissions,
                vec![Submission {
                    handle,
                    registration: Ok(Registration {
                        spec: spec.clone(),
                        registrant,
                    }),
                }],
                "spec {i}"
            );
            assert!(scan.corrupt.is_empty() && scan.terminate_requests.is_empty());
            owner.release(&registry, handle).unwrap();
        }
    }

    #[test]
    fn invalid_specs_and_registrants_write_nothing() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        assert!(matches!(
            registry.submit(&WorkerSpec::new("w").arg(vec![0; MAX_ARG + 1]), me()),
            Err(RegistryError::Spec(SpecError::ArgTooLong { .. }))
        ));
        assert!(matches!(
            registry.submit(&WorkerSpec::new("bad name"), me()),
            Err(RegistryError::Spec(SpecError::BadNameChar { .. }))
        ));
        assert_eq!(
            registry.submit(
                &WorkerSpec::new("w"),
                Registrant {
                    proc_index: Some(u32::MAX),
                    pid: 1
                }
            ),
            Err(RegistryError::InvalidProcIndex(u32::MAX))
        );
        assert_eq!(storage[0].peek(), Ok((SlotState::Free, 0)));
    }

    #[test]
    fn a_full_table_says_how_big_it_is_and_how_to_grow_it() {
        let storage = slots(3);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let handles: Vec<_> = (0..3)
            .map(|i| {
                registry
                    .submit(&WorkerSpec::new(format!("w{i}")), me())
                    .unwrap()
            })
            .collect();
        let slots_used: Vec<u32> = handles.iter().map(|h| h.slot).collect();
        assert_eq!(slots_used, vec![0, 1, 2]);
        let err = registry.submit(&WorkerSpec::new("w3"), me()).unwrap_err();
        assert_eq!(err, RegistryError::Full { size: 3 });
        assert!(err.to_string().contains("raise the slot count"), "{err}");
        assert_eq!(
            owner.reinstall(&registry, &WorkerSpec::new("r"), me()),
            Err(RegistryError::Full { size: 3 })
        );
        owner.release(&registry, handles[1]).unwrap();
        let again = registry.submit(&WorkerSpec::new("w3"), me()).unwrap();
        assert_eq!(
            again,
            RegHandle {
                slot: 1,
                generation: 2
            }
        );
    }

    #[test]
    fn a_registration_reads_its_whole_life_through_its_handle() {
        let storage = slots(2);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let h = registry.submit(&WorkerSpec::new("w"), me()).unwrap();
        assert_eq!(registry.status(h), HandleStatus::Submitted);
        let never_submitted = owner.current(1).unwrap();
        assert!(matches!(
            owner.accept(&registry, never_submitted),
            Err(RegistryError::WrongState { found: "free", .. })
        ));
        owner.accept(&registry, h).unwrap();
        assert_eq!(registry.status(h), HandleStatus::NotYetStarted);
        owner.set_started(&registry, h, 99).unwrap();
        assert_eq!(registry.status(h), HandleStatus::Started { pid: 99 });
        owner.set_stopped(&registry, h).unwrap();
        assert_eq!(registry.status(h), HandleStatus::Stopped);
        owner.set_started(&registry, h, 100).unwrap();
        assert_eq!(registry.status(h), HandleStatus::Started { pid: 100 });
        assert_eq!(
            owner.set_started(&registry, h, STOPPED),
            Err(RegistryError::InvalidPid(STOPPED))
        );
        assert!(matches!(
            owner.accept(&registry, h),
            Err(RegistryError::WrongState { .. })
        ));
        owner.release(&registry, h).unwrap();
        assert_eq!(registry.status(h), HandleStatus::Stopped);

        // Rejected: readable until withdrawn, then released.
        let r = registry.submit(&WorkerSpec::new("r"), me()).unwrap();
        owner
            .reject(&registry, r, RejectReason::DuplicateName)
            .unwrap();
        assert_eq!(
            registry.status(r),
            HandleStatus::Rejected(RejectReason::DuplicateName)
        );
        assert!(matches!(
            owner.set_started(&registry, r, 5),
            Err(RegistryError::WrongState { .. })
        ));
        assert!(owner.scan(&registry).unwrap().terminate_requests.is_empty());
        assert!(registry.terminate(r), "withdrawing a rejection");
        assert!(registry.terminate(r), "idempotent");
        assert_eq!(
            registry.status(r),
            HandleStatus::Rejected(RejectReason::DuplicateName)
        );
        assert_eq!(owner.scan(&registry).unwrap().terminate_requests, vec![r]);
        owner.release(&registry, r).unwrap();
        assert_eq!(registry.status(r), HandleStatus::Stopped);
    }

    #[test]
    fn terminate_before_acceptance_survives_the_accept() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let h = registry.submit(&WorkerSpec::new("w"), me()).unwrap();
        assert!(registry.terminate(h));
        let scan = owner.scan(&registry).unwrap();
        assert_eq!(scan.submissions.len(), 1);
        assert_eq!(scan.terminate_requests, vec![h]);
        owner.accept(&registry, h).unwrap();
        assert_eq!(owner.scan(&registry).unwrap().terminate_requests, vec![h]);
        assert_eq!(registry.status(h), HandleStatus::NotYetStarted);
    }

    #[test]
    fn a_stale_handle_after_release_changes_nothing() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let old = registry.submit(&WorkerSpec::new("old"), me()).unwrap();
        owner.accept(&registry, old).unwrap();
        owner.set_started(&registry, old, 10).unwrap();
        owner.release(&registry, old).unwrap();

        let new = registry.submit(&WorkerSpec::new("new"), me()).unwrap();
        assert_eq!((new.slot, new.generation), (old.slot, old.generation + 1));
        owner.accept(&registry, new).unwrap();
        owner.set_started(&registry, new, 20).unwrap();

        assert!(!registry.terminate(old));
        assert_eq!(registry.status(old), HandleStatus::Stopped);
        assert_eq!(registry.status(new), HandleStatus::Started { pid: 20 });
        assert!(owner.scan(&registry).unwrap().terminate_requests.is_empty());
        for result in [
            owner.release(&registry, old),
            owner.set_stopped(&registry, old),
            owner.accept(&registry, old),
        ] {
            assert_eq!(
                result,
                Err(RegistryError::Stale {
                    handle: old,
                    current: new.generation
                })
            );
        }
        assert_eq!(registry.status(new), HandleStatus::Started { pid: 20 });
        let nowhere = RegHandle {
            slot: 5,
            generation: 0,
        };
        assert!(!registry.terminate(nowhere));
        assert_eq!(registry.status(nowhere), HandleStatus::Stopped);
        assert!(matches!(
            owner.release(&registry, nowhere),
            Err(RegistryError::NoSuchSlot { .. })
        ));
    }

    #[test]
    fn a_reset_fences_every_earlier_handle_and_reinstalls_survivors() {
        let storage = slots(3);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let mut before = Vec::new();
        for i in 0..3 {
            let h = registry
                .submit(&WorkerSpec::new(format!("w{i}")), me())
                .unwrap();
            owner.accept(&registry, h).unwrap();
            before.push(h);
        }
        // Churn one slot so generations differ between slots.
        owner.release(&registry, before[1]).unwrap();
        let h = registry.submit(&WorkerSpec::new("w1b"), me()).unwrap();
        owner.accept(&registry, h).unwrap();
        before.push(h);

        for slot in &storage {
            slot.wipe();
        }
        // Between the wipe and the restore, nothing can be claimed, and the
        // old handles already read Stopped.
        assert_eq!(
            registry.submit(&WorkerSpec::new("early"), me()),
            Err(RegistryError::NotReady)
        );
        for old in &before {
            assert!(!registry.terminate(*old));
            assert_eq!(registry.status(*old), HandleStatus::Stopped);
        }
        owner.restore_after_reset(&registry).unwrap();
        let survivor = WorkerSpec::new("survivor").arg(b"x");
        let after = owner.reinstall(&registry, &survivor, me()).unwrap();
        assert_eq!(registry.status(after), HandleStatus::NotYetStarted);
        for old in &before {
            assert_eq!(registry.status(*old), HandleStatus::Stopped, "{old}");
            assert!(!registry.terminate(*old), "{old}");
            assert!(matches!(
                owner.release(&registry, *old),
                Err(RegistryError::Stale { .. })
            ));
            if old.slot == after.slot {
                assert!(after.generation > old.generation);
            }
        }
        let scan = owner.scan(&registry).unwrap();
        assert_eq!(scan, Scan::default(), "reinstalled slot is consistent");
        assert_eq!(
            storage[after.slot as usize].peek().unwrap().0,
            SlotState::Accepted
        );
        // The reinstalled spec is readable back, as any accepted slot's is.
        assert_eq!(
            storage[after.slot as usize].read_image(after.generation),
            Ok(Registration {
                spec: survivor,
                registrant: me()
            })
        );
    }

    #[test]
    fn garbage_control_words_are_reported_and_can_be_released() {
        let storage = slots(4);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let accepted = registry.submit(&WorkerSpec::new("a"), me()).unwrap();
        owner.accept(&registry, accepted).unwrap();
        // Relaxed: single-threaded test.
        storage[1].control.store(9, Ordering::Relaxed);
        storage[2]
            .control
            .store(Control::new(5, SlotState::Free).encode(), Ordering::Relaxed);
        storage[3].control.store(
            Control::new(1, SlotState::Filling).encode(),
            Ordering::Relaxed,
        );
        storage[0].control.store(
            Control::new(1, SlotState::Submitted).encode(),
            Ordering::Relaxed,
        );

        let scan = owner.scan(&registry).unwrap();
        let problems: Vec<_> = scan.corrupt.iter().map(|c| c.problem.clone()).collect();
        assert_eq!(
            problems,
            vec![
                Corruption::State {
                    found: SlotState::Submitted,
                    expected: "accepted"
                },
                Corruption::UnknownState { word: 9 },
                Corruption::Generation {
                    found: 5,
                    expected: 1
                },
            ]
        );
        assert_eq!(
            scan.filling,
            vec![RegHandle {
                slot: 3,
                generation: 1
            }]
        );
        assert!(matches!(
            owner.set_started(&registry, accepted, 5),
            Err(RegistryError::Corrupt(_))
        ));
        for bad in scan.corrupt.iter().map(|c| c.handle).chain(scan.filling) {
            owner.release(&registry, bad).unwrap();
        }
        assert_eq!(owner.scan(&registry).unwrap(), Scan::default());
        for h in 0..4 {
            registry
                .submit(&WorkerSpec::new(format!("x{h}")), me())
                .unwrap();
        }
    }

    /// Writes `words` over a slot through its atomics (control, status,
    /// checksum, registrant, image, in that order, cycling if short).
    fn scribble(slot: &RegSlot, rng: &mut XorShift) {
        // Relaxed: single-threaded test.
        slot.control.store(rng.next(), Ordering::Relaxed);
        slot.status.store(rng.next(), Ordering::Relaxed);
        slot.checksum.store(rng.next(), Ordering::Relaxed);
        slot.registrant_proc
            .store(rng.next() as u32, Ordering::Relaxed);
        slot.registrant_pid
            .store(rng.next() as u32, Ordering::Relaxed);
        for w in &slot.image {
            w.store(rng.next(), Ordering::Relaxed);
        }
    }

    fn image_of(slot: &RegSlot) -> Image {
        let mut words = [0u64; IMAGE_WORDS];
        for (w, cell) in words.iter_mut().zip(&slot.image) {
            *w = cell.load(Ordering::Relaxed);
        }
        Image::from_words(&words)
    }

    fn store_image(slot: &RegSlot, image: &Image) {
        for (cell, w) in slot.image.iter().zip(image.to_words()) {
            cell.store(w, Ordering::Relaxed);
        }
    }

    /// Makes the slot's checksum match its contents, so the decoder's
    /// field checks (not just the checksum) see the garbage.
    fn fix_checksum(slot: &RegSlot) {
        let sum = checksum(
            Control::decode(slot.control.load(Ordering::Relaxed))
                .map(|c| c.generation)
                .unwrap_or(0),
            slot.registrant_proc.load(Ordering::Relaxed),
            slot.registrant_pid.load(Ordering::Relaxed),
            &image_of(slot),
        );
        slot.checksum.store(sum, Ordering::Relaxed);
    }

    /// Every operation, on whatever the slot holds; checks what can be
    /// checked. Returns the decode outcome of a submission, if one was seen.
    fn poke(
        registry: &Registry<'_>,
        owner: &mut RegistryOwner,
        rng: &mut XorShift,
    ) -> Option<Result<Registration, Invalid>> {
        let handle = RegHandle {
            slot: 0,
            generation: if rng.below(2) == 0 {
                0
            } else {
                rng.next() as u32
            },
        };
        let _ = registry.status(handle);
        let _ = registry.terminate(handle);
        let _ = registry.submit(&WorkerSpec::new("probe"), me());
        let scan = owner.scan(registry).unwrap();
        let mut seen = None;
        for s in scan.submissions {
            if let Ok(reg) = &s.registration {
                // Only canonical images decode.
                assert_eq!(Image::encode(&reg.spec), image_of(&registry.slots[0]));
                assert_eq!(reg.spec.validate(), Ok(()));
            }
            let _ = owner.accept(registry, s.handle);
            seen = Some(s.registration);
        }
        let _ = owner.set_started(registry, handle, 77);
        // Whatever happened, the owner can always take the slot back.
        let current = owner.current(0).unwrap();
        owner.release(registry, current).unwrap();
        assert_eq!(owner.scan(registry).unwrap(), Scan::default());
        seen
    }

    /// 10,000 random slot contents, written through the atomics: every
    /// operation copes and nothing panics; scans either reject the
    /// contents or decode a spec that re-encodes to exactly those bytes.
    #[test]
    fn random_slot_contents_are_rejected_not_panicked_on() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for round in 0..10_000 {
            scribble(&storage[0], &mut rng);
            // A third of the rounds keep the random control word. The rest
            // get a plausible one for the owner's generation, so the image
            // is decoded: half of those with the random checksum, half with
            // one that matches, so that the field checks stand guard.
            if round % 3 != 0 {
                let generation = owner.current(0).unwrap().generation;
                storage[0].control.store(
                    Control::new(generation, SlotState::Submitted).encode(),
                    Ordering::Relaxed,
                );
            }
            if round % 3 == 2 {
                fix_checksum(&storage[0]);
            }
            if let Some(outcome) = poke(&registry, &mut owner, &mut rng) {
                let key = match outcome {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => format!("{e:?}")
                        .split([' ', '(', '{'])
                        .next()
                        .unwrap()
                        .to_owned(),
                };
                *outcomes.entry(key).or_default() += 1;
            }
        }
        // The test can only fail usefully if the decoder was reached.
        let count = |key: &str| outcomes.get(key).copied().unwrap_or(0);
        assert!(count("Checksum") > 3000, "{outcomes:?}");
        assert!(
            count("Length") > 2000 && count("Padding") > 500,
            "{outcomes:?}"
        );
    }

    /// Valid images with one byte changed (checksum fixed up): each
    /// decodes to a spec that re-encodes identically, or is rejected.
    #[test]
    fn single_byte_changes_to_valid_images_are_caught() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let mut rng = XorShift(42);
        let base = [
            WorkerSpec::new("w".repeat(MAX_NAME))
                .arg(vec![1; MAX_ARG])
                .restart(Restart::After(Duration::from_millis(250))),
            WorkerSpec::new("a").entry("b"),
        ];
        let mut kinds = std::collections::HashSet::new();
        for round in 0..10_000 {
            let spec = &base[round % base.len()];
            let handle = registry.submit(spec, me()).unwrap();
            let slot = &storage[handle.slot as usize];
            let mut image = image_of(slot);
            let at = rng.below(IMAGE_BYTES as u64) as usize;
            image.0[at] = rng.next() as u8;
            store_image(slot, &image);
            fix_checksum(slot);
            let scan = owner.scan(&registry).unwrap();
            assert_eq!(scan.submissions.len(), 1);
            match &scan.submissions[0].registration {
                Ok(reg) => assert_eq!(Image::encode(&reg.spec), image),
                Err(e) => {
                    kinds.insert(std::mem::discriminant(e));
                    owner.reject(&registry, handle, e.reject_reason()).unwrap();
                }
            }
            owner.release(&registry, handle).unwrap();
        }
        // Lengths, padding, UTF-8/charset, phase, restart kind, flags, nanos.
        assert!(kinds.len() >= 7, "only {} kinds of rejection", kinds.len());
    }

    #[test]
    fn a_torn_image_fails_its_checksum() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let owner = RegistryOwner::init(&registry);
        registry
            .submit(&WorkerSpec::new("w").arg(b"abc"), me())
            .unwrap();
        storage[0].image[20].fetch_xor(1 << 9, Ordering::Relaxed);
        let scan = owner.scan(&registry).unwrap();
        let invalid = scan.submissions[0].registration.clone().unwrap_err();
        assert!(matches!(invalid, Invalid::Checksum { .. }));
        assert_eq!(invalid.reject_reason(), RejectReason::Corrupt);
    }

    /// Reproduces what the loom model of a reset found while generation 0
    /// was still handed out: a reader that saw the control word before the
    /// memset and the status word after it took the zeroed status word for
    /// "not yet started" of its own (generation 0) tenancy.
    #[test]
    fn a_zeroed_status_word_never_reads_as_a_live_tenancy() {
        let storage = slots(1);
        let registry = Registry::from_slots(&storage);
        let mut owner = RegistryOwner::init(&registry);
        let h = registry.submit(&WorkerSpec::new("w"), me()).unwrap();
        owner.accept(&registry, h).unwrap();
        owner.set_started(&registry, h, 31).unwrap();
        // Half a memset: the status word is zero, the control word not yet.
        storage[0].status.store(0, Ordering::Relaxed);
        assert_eq!(registry.status(h), HandleStatus::Stopped);
        storage[0].wipe();
        assert_eq!(registry.status(h), HandleStatus::Stopped);
        assert!(!registry.terminate(h));
        assert!(!registry.terminate(RegHandle {
            slot: 0,
            generation: UNSET_GENERATION
        }));
        assert_eq!(
            registry.submit(&WorkerSpec::new("w"), me()),
            Err(RegistryError::NotReady)
        );
    }

    #[test]
    fn reject_reasons_round_trip_their_codes() {
        for r in RejectReason::ALL {
            assert_eq!(RejectReason::from_code(r.code()), Some(r));
            assert!(!r.to_string().is_empty());
        }
        assert_eq!(RejectReason::from_code(0), None);
        assert_eq!(RejectReason::from_code(NOT_STARTED), None);
    }

    #[test]
    fn the_registry_lives_in_a_segment() {
        let layout = Registry::declare(shmem::Layout::builder(), 8)
            .build()
            .unwrap();
        let segment = shmem::Segment::create(&layout).unwrap();
        let registry = Registry::from_segment(&segment).unwrap();
        assert_eq!(registry.len(), 8);
        assert_eq!(
            registry.submit(&WorkerSpec::new("early"), me()),
            Err(RegistryError::NotReady)
        );
        let mut owner = RegistryOwner::init(&registry);
        let h = registry.submit(&WorkerSpec::new("seg"), me()).unwrap();
        let scan = owner.scan(&registry).unwrap();
        assert_eq!(scan.submissions[0].handle, h);
        owner.accept(&registry, h).unwrap();
        assert_eq!(registry.status(h), HandleStatus::NotYetStarted);
        let other = shmem::Segment::create(
            &shmem::Layout::builder()
                .array::<u64>("x", 1)
                .build()
                .unwrap(),
        )
        .unwrap();
        assert!(matches!(
            Registry::from_segment(&other),
            Err(RegistryError::Region(_))
        ));
        let small = slots(2);
        assert_eq!(
            owner.scan(&Registry::from_slots(&small)),
            Err(RegistryError::SizeMismatch {
                found: 2,
                expected: 8
            })
        );
    }
}
