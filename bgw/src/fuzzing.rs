//! Entry points for the fuzz targets in `fuzz/`, kept here so that a stable
//! test (`bgw/tests/fuzz_corpus.rs`) can replay the committed corpora
//! without nightly or libFuzzer.
//!
//! Each function takes arbitrary bytes, must never panic on them, and
//! asserts the properties that must hold whatever the input:
//!
//! - [`registry_slot`]: arbitrary bytes in registration slots, read the way
//!   the postmaster reads them (scan, then reject, accept or release, and
//!   the accepted specs run through a [`Core`]).
//! - [`core_events`]: arbitrary event sequences into the [`Core`], checked
//!   step by step against the model in [`world`] (the one
//!   `bgw/tests/core_explore.rs` explores exhaustively).
//!
//! Not part of the API: the module is hidden from the docs and may change
//! with the targets.
#![cfg(not(loom))]

pub mod small_map;
pub mod world;

use std::time::Duration;

use crate::core::{
    Action, Control, Core, CoreConfig, Event, ExitStatus, RegisterError, ShutdownMode, Sig,
    SlotReport, WorkerId, WorkerStatus,
};
use crate::registry::{
    HandleStatus, IMAGE_WORDS, RegHandle, RegSlot, Registrant, Registry, RegistryOwner,
    RejectReason, Scan,
};
use crate::spec::{OnCrash, Phase, Restart, WorkerSpec};
use world::{Step, World};

/// Reads fuzz input a byte or a word at a time, yielding zeros once it runs
/// out, so every input decodes to some sequence of operations.
struct Input<'d>(&'d [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u8(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Up to `n` bytes, fewer if the input runs out.
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

// ---------------------------------------------------------------------------
// registry_slot
// ---------------------------------------------------------------------------

// Byte offsets of a `RegSlot`'s fields (`#[repr(C)]`: control, status,
// checksum, registrant process slot, registrant pid, then the image words),
// checked against the registry's own writes by `slot_layout_matches`.
/// Where the control word is in a slot.
pub const CONTROL_AT: usize = 0;
const CHECKSUM_AT: usize = 16;
const PROC_AT: usize = 24;
const PID_AT: usize = 28;
/// Where the spec image starts in a slot.
pub const IMAGE_AT: usize = 32;
/// The bytes of a slot that hold its fields: everything but the trailing
/// padding (which no code reads, and which is not inside an atomic).
pub const SLOT_DATA: usize = IMAGE_AT + 8 * IMAGE_WORDS;

const _: () = assert!(SLOT_DATA <= std::mem::size_of::<RegSlot>());

/// State bits of a control word (`generation << 32 | terminate << 8 |
/// state`), as `registry.rs` documents them.
const SUBMITTED: u64 = 2;
const TERMINATE_BIT: u64 = 1 << 8;

/// Overwrites `bytes.len()` bytes of `slot`'s fields from offset `at`, as a
/// process scribbling over shared memory would.
fn write_slot(slot: &RegSlot, at: usize, bytes: &[u8]) {
    assert!(
        at + bytes.len() <= SLOT_DATA,
        "write past the slot's fields"
    );
    let base = std::ptr::from_ref(slot).cast::<u8>().cast_mut();
    // SAFETY: `RegSlot` is `#[repr(C)]` and its first `SLOT_DATA` bytes are
    // its atomic fields (offsets above, checked by `slot_layout_matches`),
    // so every byte written lies inside an `UnsafeCell` and may be written
    // through a pointer derived from a shared reference; any bytes are a
    // valid value of those atomics (`RegSlot: ShmSafe`). The slots live on
    // this thread's heap and are never shared with another thread, so no
    // access races with this one.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(at), bytes.len()) }
}

/// A copy of `slot`'s fields as bytes.
fn read_slot(slot: &RegSlot) -> [u8; SLOT_DATA] {
    let mut out = [0u8; SLOT_DATA];
    let base = std::ptr::from_ref(slot).cast::<u8>();
    // SAFETY: as in `write_slot`: the first `SLOT_DATA` bytes of a
    // `RegSlot` are its atomic integer fields, initialised (no padding
    // among them), and nothing writes them concurrently.
    unsafe { std::ptr::copy_nonoverlapping(base, out.as_mut_ptr(), SLOT_DATA) }
    out
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

/// The slot checksum as `registry.rs` defines it: 64-bit FNV-1a over the
/// generation, the registrant's process slot and pid (little-endian) and
/// the image bytes. Recomputed here so the fuzzer can get past it and reach
/// the field checks; if the two drift apart, [`slot_layout_matches`] says
/// so.
fn slot_checksum(bytes: &[u8; SLOT_DATA], generation: u32) -> u64 {
    let head = generation
        .to_le_bytes()
        .into_iter()
        .chain(bytes[PROC_AT..IMAGE_AT].iter().copied());
    head.chain(bytes[IMAGE_AT..].iter().copied())
        .fold(0xcbf2_9ce4_8422_2325, |h: u64, byte| {
            (h ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// Makes the checksum of `slot` match its contents, for the generation its
/// control word carries.
fn fix_checksum(slot: &RegSlot) {
    let bytes = read_slot(slot);
    let generation = (le_u64(&bytes, CONTROL_AT) >> 32) as u32;
    let sum = slot_checksum(&bytes, generation);
    write_slot(slot, CHECKSUM_AT, &sum.to_le_bytes());
}

/// Whether the offsets and checksum above agree with what the registry
/// itself writes: a spec submitted to a fresh registry must read back as a
/// `SUBMITTED(1)` control word, the registrant and a matching checksum.
/// The corpus test asserts it, so `registry_slot` cannot silently scribble
/// over the wrong bytes.
pub fn slot_layout_matches() -> bool {
    let slots = [RegSlot::new()];
    let registry = Registry::from_slots(&slots);
    let _owner = RegistryOwner::init(&registry);
    let me = Registrant {
        proc_index: Some(0x0102_0304),
        pid: 0x0a0b_0c0d,
    };
    let Ok(handle) = registry.submit(&WorkerSpec::new("layout").arg(b"probe"), me) else {
        return false;
    };
    let bytes = read_slot(&slots[0]);
    handle.generation == 1
        && le_u64(&bytes, CONTROL_AT) == (1 << 32) | SUBMITTED
        && le_u32(&bytes, PROC_AT) == 0x0102_0304
        && le_u32(&bytes, PID_AT) == 0x0a0b_0c0d
        && le_u64(&bytes, CHECKSUM_AT) == slot_checksum(&bytes, 1)
        && bytes[IMAGE_AT] == b"layout".len() as u8
}

/// The bytes of a slot's fields (`SLOT_DATA` of them) after `registrant`
/// submitted `spec` to a fresh registry (generation 1), or `None` if the
/// spec cannot be submitted. For seed corpora, and for the canonical-image
/// check.
pub fn submitted_slot_bytes(spec: &WorkerSpec, registrant: Registrant) -> Option<Vec<u8>> {
    let slots = [RegSlot::new()];
    let registry = Registry::from_slots(&slots);
    let _owner = RegistryOwner::init(&registry);
    registry.submit(spec, registrant).ok()?;
    Some(read_slot(&slots[0]).to_vec())
}

/// The bytes `spec`, submitted by `registrant`, puts in a slot from the
/// registrant fields on (`PROC_AT..`): what a slot that decodes to this
/// registration must hold there ("only canonical images decode").
fn canonical_tail(spec: &WorkerSpec, registrant: Registrant) -> Option<Vec<u8>> {
    submitted_slot_bytes(spec, registrant).map(|mut bytes| bytes.split_off(PROC_AT))
}

/// What the harness knows a slot holds. Slots it scribbled on are
/// `Unknown` until the postmaster takes them back (release, reset).
#[derive(Clone, Debug, PartialEq)]
enum SlotModel {
    Free,
    Submitted {
        spec: WorkerSpec,
        registrant: Registrant,
        terminate: bool,
    },
    Accepted {
        terminate: bool,
    },
    Rejected {
        reason: RejectReason,
        terminate: bool,
    },
    Unknown,
}

/// What a `registry_slot` run reached, so the corpus test can show that
/// the corpus exercises every answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegistryTally {
    /// Submissions accepted (decoded, validated, taken by the core).
    pub accepted: u64,
    /// Submissions rejected because they did not decode (`InvalidSpec`).
    pub rejected_invalid: u64,
    /// Submissions rejected because their checksum did not match.
    pub rejected_corrupt: u64,
    /// Valid submissions the core refused (duplicate name, no room).
    pub refused_by_core: u64,
    /// Slots whose control word a scan could not believe.
    pub corrupt: u64,
    /// Slots found half-filled.
    pub filling: u64,
    /// Terminate requests served.
    pub terminated: u64,
    /// Children the core started.
    pub forks: u64,
}

impl std::ops::AddAssign for RegistryTally {
    fn add_assign(&mut self, o: RegistryTally) {
        self.accepted += o.accepted;
        self.rejected_invalid += o.rejected_invalid;
        self.rejected_corrupt += o.rejected_corrupt;
        self.refused_by_core += o.refused_by_core;
        self.corrupt += o.corrupt;
        self.filling += o.filling;
        self.terminated += o.terminated;
        self.forks += o.forks;
    }
}

/// The most registration slots a `registry_slot` run has.
const MAX_SLOTS: usize = 4;
/// The core's worker table: smaller than the registry, so that
/// `NoWorkerSlot` rejections happen.
const CORE_WORKERS: u32 = 3;
/// No core reaction queues more actions than this; more means it loops.
const ACTION_LIMIT: usize = 10_000;

/// The postmaster's side of a `registry_slot` run: the registry, its owner,
/// a core for the accepted registrations, and the model of each slot.
struct Postmaster<'s> {
    registry: Registry<'s>,
    owner: RegistryOwner,
    core: Core,
    now: Duration,
    next_pid: u32,
    /// Accepted registrations and the core's id for each.
    dynamic: Vec<(RegHandle, WorkerId)>,
    model: Vec<SlotModel>,
    tally: RegistryTally,
}

impl Postmaster<'_> {
    fn current(&self, slot: usize) -> RegHandle {
        self.owner.current(slot as u32).expect("slot in range")
    }

    /// Releases the tenancy `handle` names, as the postmaster does when a
    /// registration ends; a stale handle changes nothing.
    fn release(&mut self, handle: RegHandle) {
        self.dynamic.retain(|(h, _)| *h != handle);
        if self.owner.release(&self.registry, handle).is_ok() {
            self.model[handle.slot as usize] = SlotModel::Free;
        }
    }

    /// Carries out the core's actions the way the driver does: forks
    /// succeed, signalled children exit at once, resets are done at once,
    /// unregistered workers' slots are released, statuses are published.
    fn pump(&mut self) {
        let mut taken = 0;
        while let Some(action) = self.core.next_action() {
            taken += 1;
            assert!(taken <= ACTION_LIMIT, "the core keeps queueing actions");
            match action {
                Action::Fork { worker } => {
                    assert!(self.core.spec(worker).is_some(), "fork of a stale id");
                    self.tally.forks += 1;
                    let pid = self.next_pid;
                    self.next_pid += 1;
                    self.core.handle(self.now, Event::Forked { worker, pid });
                }
                Action::Signal { pid, signal } => {
                    // The child obeys at once: SIGTERM ends it cleanly.
                    let status = match signal {
                        Sig::Term => ExitStatus::Code(0),
                        Sig::Quit | Sig::Kill => ExitStatus::Signaled(9),
                    };
                    if self.core.worker_by_pid(pid).is_some() {
                        let slot = SlotReport::Clean;
                        let exited = Event::ChildExited { pid, status, slot };
                        self.core.handle(self.now, exited);
                    }
                }
                Action::ResetSegment => {
                    self.owner
                        .restore_after_reset(&self.registry)
                        .expect("sizes match");
                    self.model.fill(SlotModel::Free);
                    // As the postmaster does: the accepted registrations
                    // survive the reset, under new handles.
                    let dynamic = std::mem::take(&mut self.dynamic);
                    for (_, id) in dynamic {
                        let Some(spec) = self.core.spec(id).cloned() else {
                            continue;
                        };
                        let me = Registrant {
                            proc_index: None,
                            pid: 1,
                        };
                        let handle = self
                            .owner
                            .reinstall(&self.registry, &spec, me)
                            .expect("a slot for every survivor");
                        self.model[handle.slot as usize] = SlotModel::Accepted { terminate: false };
                        self.dynamic.push((handle, id));
                    }
                    self.core.handle(self.now, Event::ResetDone);
                }
                Action::Unregistered { worker, .. } => {
                    if let Some(&(handle, _)) = self.dynamic.iter().find(|(_, id)| *id == worker) {
                        self.release(handle);
                    }
                }
                Action::Status { worker, status } => {
                    let Some(&(handle, _)) = self.dynamic.iter().find(|(_, id)| *id == worker)
                    else {
                        continue;
                    };
                    let result = match status {
                        WorkerStatus::Started { pid } => {
                            self.owner.set_started(&self.registry, handle, pid)
                        }
                        WorkerStatus::Stopped => self.owner.set_stopped(&self.registry, handle),
                    };
                    if matches!(self.model[handle.slot as usize], SlotModel::Accepted { .. }) {
                        result.expect("status of an accepted registration");
                        let want = match status {
                            WorkerStatus::Started { pid } => HandleStatus::Started { pid },
                            WorkerStatus::Stopped => HandleStatus::Stopped,
                        };
                        assert_eq!(self.registry.status(handle), want);
                    }
                }
                Action::CrashDetected { .. }
                | Action::Contained { .. }
                | Action::WatchdogExpired { .. }
                | Action::Escalated { .. }
                | Action::Exit { .. } => {}
            }
        }
    }

    /// One tick of the driver loop, then its actions.
    fn tick(&mut self) {
        self.core.tick(self.now);
        self.pump();
        // What the driver asks next: whatever the specs' durations, an
        // answer and no panic.
        let _ = self.core.timeout(self.now);
    }

    /// Checks a scan against the owner's records and the model.
    fn check_scan(&self, scan: &Scan) {
        let mut seen = [false; MAX_SLOTS];
        let listed = scan
            .submissions
            .iter()
            .map(|s| s.handle)
            .chain(scan.filling.iter().copied())
            .chain(scan.corrupt.iter().map(|c| c.handle));
        for handle in listed {
            let slot = handle.slot as usize;
            assert_eq!(Some(handle), self.owner.current(handle.slot));
            assert!(!seen[slot], "slot {slot} listed twice in one scan");
            seen[slot] = true;
        }
        for handle in &scan.terminate_requests {
            assert_eq!(Some(*handle), self.owner.current(handle.slot));
        }
        for submission in &scan.submissions {
            let Ok(reg) = &submission.registration else {
                continue;
            };
            // Never accept a spec that fails validation, and only
            // canonical images decode: the slot holds exactly what
            // submitting this registration writes.
            assert_eq!(reg.spec.validate(), Ok(()), "decoded an invalid spec");
            let slot = self
                .registry
                .slot(submission.handle.slot)
                .expect("in range");
            assert_eq!(
                canonical_tail(&reg.spec, reg.registrant).as_deref(),
                Some(&read_slot(slot)[PROC_AT..]),
                "a non-canonical image decoded"
            );
        }
        for (index, model) in self.model.iter().enumerate() {
            let handle = self.current(index);
            let terminate_listed = scan.terminate_requests.contains(&handle);
            let submitted = scan.submissions.iter().find(|s| s.handle == handle);
            match model {
                SlotModel::Unknown => {}
                SlotModel::Free => {
                    assert!(
                        !seen[index] && !terminate_listed,
                        "free slot {index} listed"
                    );
                }
                SlotModel::Submitted {
                    spec,
                    registrant,
                    terminate,
                } => {
                    let got = submitted.map(|s| s.registration.clone());
                    let got = got.expect("a submitted slot is a submission");
                    let reg = got.expect("a registrant's own submission decodes");
                    assert_eq!((&reg.spec, reg.registrant), (spec, *registrant));
                    assert_eq!(terminate_listed, *terminate);
                }
                SlotModel::Accepted { terminate } | SlotModel::Rejected { terminate, .. } => {
                    assert!(!seen[index], "answered slot {index} listed");
                    assert_eq!(terminate_listed, *terminate);
                }
            }
        }
    }

    /// The postmaster's registry pass (as `Postmaster::serve_registry`
    /// does it), with every answer checked.
    fn serve(&mut self) {
        let scan = self.owner.scan(&self.registry).expect("sizes match");
        self.check_scan(&scan);
        self.tally.corrupt += scan.corrupt.len() as u64;
        self.tally.filling += scan.filling.len() as u64;
        self.tally.terminated += scan.terminate_requests.len() as u64;
        for corrupt in scan.corrupt {
            self.release(corrupt.handle);
            assert_eq!(self.model[corrupt.handle.slot as usize], SlotModel::Free);
        }
        for submission in scan.submissions {
            let handle = submission.handle;
            let slot = handle.slot as usize;
            let terminate = match &self.model[slot] {
                SlotModel::Submitted { terminate, .. } => Some(*terminate),
                _ => None,
            };
            let reason = match submission.registration {
                Err(invalid) => {
                    match invalid.reject_reason() {
                        RejectReason::Corrupt => self.tally.rejected_corrupt += 1,
                        _ => self.tally.rejected_invalid += 1,
                    }
                    Err(invalid.reject_reason())
                }
                Ok(reg) => match self.core.register(reg.spec, true) {
                    Ok(id) => Ok(id),
                    Err(e) => {
                        self.tally.refused_by_core += 1;
                        Err(match e {
                            RegisterError::Full { .. } => RejectReason::NoWorkerSlot,
                            RegisterError::DuplicateName(_) => RejectReason::DuplicateName,
                            RegisterError::ShuttingDown => RejectReason::ShuttingDown,
                            e => panic!("no groups here, yet {e}"),
                        })
                    }
                },
            };
            match reason {
                Ok(id) => {
                    self.tally.accepted += 1;
                    self.owner
                        .accept(&self.registry, handle)
                        .expect("accept a submission just scanned");
                    assert_eq!(self.registry.status(handle), HandleStatus::NotYetStarted);
                    self.dynamic.push((handle, id));
                    self.model[slot] = match terminate {
                        Some(terminate) => SlotModel::Accepted { terminate },
                        None => SlotModel::Unknown,
                    };
                }
                Err(reason) => {
                    self.owner
                        .reject(&self.registry, handle, reason)
                        .expect("reject a submission just scanned");
                    assert_eq!(self.registry.status(handle), HandleStatus::Rejected(reason));
                    self.model[slot] = match terminate {
                        Some(terminate) => SlotModel::Rejected { reason, terminate },
                        None => SlotModel::Unknown,
                    };
                }
            }
        }
        for handle in scan.terminate_requests {
            match self.dynamic.iter().find(|(h, _)| *h == handle) {
                Some(&(_, id)) => self.core.handle(self.now, Event::Terminate(id)),
                None => self.release(handle),
            }
        }
        for handle in scan.filling {
            self.release(handle);
        }
        self.pump();
        // One pass answers everything: nothing is left submitted, filling
        // or corrupt (nobody wrote to the slots since the scan).
        let again = self.owner.scan(&self.registry).expect("sizes match");
        assert!(
            again.submissions.is_empty() && again.filling.is_empty() && again.corrupt.is_empty(),
            "a serve pass left work behind: {again:?}"
        );
    }

    /// A fast shutdown at the end of a run: every child gets SIGTERM (and
    /// exits at once), so the core must reach `Exit` with no child left.
    fn shut_down(&mut self) {
        self.core
            .handle(self.now, Event::Shutdown(ShutdownMode::Fast));
        let mut exited = false;
        for _ in 0..16 {
            self.core.tick(self.now);
            while let Some(action) = self.core.next_action() {
                match action {
                    Action::Exit { .. } => exited = true,
                    Action::Signal { pid, .. } => self.core.handle(
                        self.now,
                        Event::ChildExited {
                            pid,
                            status: ExitStatus::Code(0),
                            slot: SlotReport::Clean,
                        },
                    ),
                    _ => {}
                }
            }
            if exited {
                break;
            }
            self.now += Duration::from_secs(1);
        }
        assert!(exited, "a fast shutdown did not finish");
        assert_eq!(self.core.live_children(), 0);
    }
}

/// A valid spec from fuzz input, using only what a registration carries.
fn spec_from(input: &mut Input<'_>) -> WorkerSpec {
    let b = input.u8();
    let restart = match (b >> 3) % 5 {
        0 => Restart::Never,
        1 => Restart::After(Duration::from_millis(u64::from(input.u16()))),
        2 => Restart::Permanent,
        3 => Restart::Transient,
        _ => Restart::Temporary,
    };
    let arg_len = usize::from(input.u8() % 16);
    let arg = input.bytes(arg_len).to_vec();
    WorkerSpec::new(format!("w{}", b % 6))
        .entry(if b & 0x40 == 0 { "main" } else { "other.main" })
        .arg(arg)
        .start(Phase::ALL[usize::from(b >> 6) % 3])
        .restart(restart)
        .shmem(b & 0x80 != 0)
        .notify(b & 0x20 != 0)
        .on_crash(if b & 0x04 != 0 {
            OnCrash::Contain
        } else {
            OnCrash::ResetAll
        })
        .shutdown_timeout(Duration::from_millis(u64::from(input.u8()) * 10))
}

/// Fuzz target `registry_slot`: arbitrary bytes in registration slots, read
/// the way the postmaster reads them.
///
/// The first byte picks the number of slots (`1 + b % 4`). Each further
/// byte is an operation (`% 12`) with its arguments: a registrant submits
/// a valid spec; bytes are written over a whole slot, or over a run of
/// one; a slot's control word is set to `SUBMITTED` at the generation the
/// postmaster expects (optionally with the terminate bit); a slot's
/// checksum is made to match its contents; the postmaster serves the
/// registry (scan; release corrupt slots; reject what does not decode or
/// what the core refuses; accept the rest into a [`Core`]; release
/// withdrawn and half-filled slots); a registrant terminates; the
/// postmaster releases a slot, ticks the core, crashes a child, resets the
/// segment, or a status is read through an arbitrary handle. At the end
/// the core is shut down.
///
/// Properties: no panic, no unbounded loop; a spec is accepted only if it
/// validates, and only from a canonical image; slots the harness did not
/// scribble on scan exactly as their history says; accept, reject and
/// release of what a scan reported always succeed, and registrants read
/// the answer; one serve pass leaves nothing submitted, filling or
/// corrupt; the core, fed every accepted spec, shuts down.
pub fn registry_slot(data: &[u8]) {
    registry_slot_tally(data);
}

/// [`registry_slot`], telling what the run reached.
pub fn registry_slot_tally(data: &[u8]) -> RegistryTally {
    let mut input = Input(data);
    let Some(first) = input.byte() else {
        return RegistryTally::default();
    };
    let n = 1 + usize::from(first) % MAX_SLOTS;
    let slots: Vec<RegSlot> = (0..n).map(|_| RegSlot::new()).collect();
    let registry = Registry::from_slots(&slots);
    let owner = RegistryOwner::init(&registry);
    let mut pm = Postmaster {
        registry,
        owner,
        core: Core::new(CoreConfig {
            max_workers: CORE_WORKERS,
            // Every phase reached: accepted workers start at the next tick.
            initial_phase: Phase::RecoveryFinished,
            ..CoreConfig::default()
        }),
        now: Duration::ZERO,
        next_pid: 100,
        dynamic: Vec::new(),
        model: vec![SlotModel::Free; n],
        tally: RegistryTally::default(),
    };
    let mut ops = 0;
    while let Some(op) = input.byte() {
        ops += 1;
        if ops > 256 {
            break;
        }
        match op % 12 {
            0 => {
                let spec = spec_from(&mut input);
                let b = input.u8();
                let registrant = Registrant {
                    proc_index: (b & 1 == 1).then_some(u32::from(b >> 1)),
                    pid: input.u32(),
                };
                if let Ok(handle) = registry.submit(&spec, registrant) {
                    let slot = handle.slot as usize;
                    // A scribbled slot that happened to read free is claimed
                    // as well; what the postmaster makes of it stays unknown.
                    if pm.model[slot] == SlotModel::Free
                        && Some(handle) == pm.owner.current(handle.slot)
                    {
                        pm.model[slot] = SlotModel::Submitted {
                            spec,
                            registrant,
                            terminate: false,
                        };
                    } else {
                        pm.model[slot] = SlotModel::Unknown;
                    }
                }
            }
            1 => {
                let slot = usize::from(input.u8()) % n;
                let bytes = input.bytes(SLOT_DATA).to_vec();
                write_slot(&slots[slot], 0, &bytes);
                pm.model[slot] = SlotModel::Unknown;
            }
            2 => {
                let slot = usize::from(input.u8()) % n;
                let at = usize::from(input.u16()) % SLOT_DATA;
                let len = usize::from(input.u8() % 32).min(SLOT_DATA - at);
                let bytes = input.bytes(len).to_vec();
                write_slot(&slots[slot], at, &bytes);
                pm.model[slot] = SlotModel::Unknown;
            }
            3 => {
                let b = input.u8();
                let slot = usize::from(b) % n;
                let generation = u64::from(pm.current(slot).generation);
                let terminate = if b & 0x80 != 0 { TERMINATE_BIT } else { 0 };
                let word = (generation << 32) | SUBMITTED | terminate;
                write_slot(&slots[slot], CONTROL_AT, &word.to_le_bytes());
                pm.model[slot] = SlotModel::Unknown;
            }
            4 => {
                let slot = usize::from(input.u8()) % n;
                fix_checksum(&slots[slot]);
                pm.model[slot] = SlotModel::Unknown;
            }
            5 => pm.serve(),
            6 => {
                let slot = usize::from(input.u8()) % n;
                let handle = pm.current(slot);
                let recorded = registry.terminate(handle);
                match &mut pm.model[slot] {
                    SlotModel::Free => assert!(!recorded, "terminate on a free slot"),
                    SlotModel::Submitted { terminate, .. }
                    | SlotModel::Accepted { terminate }
                    | SlotModel::Rejected { terminate, .. } => {
                        assert!(recorded, "terminate of a live registration");
                        *terminate = true;
                    }
                    SlotModel::Unknown => {}
                }
            }
            7 => {
                let slot = usize::from(input.u8()) % n;
                let handle = pm.current(slot);
                pm.release(handle);
                assert_eq!(pm.model[slot], SlotModel::Free);
                assert_eq!(registry.status(handle), HandleStatus::Stopped);
            }
            8 => {
                pm.now += Duration::from_millis(u64::from(input.u16()));
                pm.tick();
            }
            9 => {
                // A child dies: a crash, or a clean exit of either kind.
                let pid = 100 + u32::from(input.u8()) % (pm.next_pid - 99);
                let status = match input.u8() % 4 {
                    0 => ExitStatus::Code(0),
                    1 => ExitStatus::Code(1),
                    2 => ExitStatus::Signaled(11),
                    _ => ExitStatus::Code(3),
                };
                if pm.core.worker_by_pid(pid).is_some() {
                    pm.core.handle(
                        pm.now,
                        Event::ChildExited {
                            pid,
                            status,
                            slot: SlotReport::Clean,
                        },
                    );
                    pm.pump();
                }
            }
            10 => {
                // A reset as the postmaster does one: zero, restore.
                for slot in &slots {
                    slot.wipe();
                }
                pm.owner
                    .restore_after_reset(&registry)
                    .expect("sizes match");
                pm.model.fill(SlotModel::Free);
                pm.dynamic.clear();
                assert_eq!(pm.owner.scan(&registry), Ok(Scan::default()));
            }
            _ => {
                let handle = RegHandle {
                    slot: u32::from(input.u8() % 8),
                    generation: input.u32(),
                };
                let status = registry.status(handle);
                if let Some(model) = pm.model.get(handle.slot as usize)
                    && Some(handle) == pm.owner.current(handle.slot)
                {
                    match model {
                        SlotModel::Free => assert_eq!(status, HandleStatus::Stopped),
                        SlotModel::Submitted { .. } => {
                            assert_eq!(status, HandleStatus::Submitted)
                        }
                        SlotModel::Rejected { reason, .. } => {
                            assert_eq!(status, HandleStatus::Rejected(*reason))
                        }
                        SlotModel::Accepted { .. } | SlotModel::Unknown => {}
                    }
                } else if pm.owner.current(handle.slot).is_none() {
                    assert_eq!(status, HandleStatus::Stopped);
                }
            }
        }
    }
    pm.serve();
    pm.shut_down();
    pm.tally
}

// ---------------------------------------------------------------------------
// core_events
// ---------------------------------------------------------------------------

/// The most steps one `core_events` input plays (then it quiesces).
pub const CORE_EVENTS_MAX_STEPS: usize = 400;

/// The `core_events` operation byte of an operator command
/// ([`Step::Control`]). Every byte already meant a step when control was
/// added, so it took the one byte of the last operation that the committed
/// corpus never played: it meant `ResetDone`, which 0x0d and the other
/// bytes of that operation still spell. (The committed corpus decodes to
/// the same steps as before; check with [`core_events_steps`].)
pub const CORE_EVENTS_CONTROL_OP: u8 = 0xdf;

/// Decodes one step for `world` from an operation byte and its arguments,
/// or `None` for an operation that does not apply now (a child exit with
/// no child alive, a fork report with none outstanding).
fn core_step(world: &World, op: u8, input: &mut Input<'_>, lagging: bool) -> Option<Step> {
    let step = match op % 16 {
        0..=3 => {
            // Clock advances: mostly small, sometimes past every timer.
            let ms = match op >> 4 {
                0 => 0,
                1..=7 => u64::from(input.u8()) * 10,
                8..=13 => u64::from(input.u16()),
                _ => u64::from(input.u16()) * 1000,
            };
            Step::Tick(Duration::from_millis(ms))
        }
        4..=6 => {
            let live = world.live_pids();
            if live.is_empty() {
                return None;
            }
            let pid = live[usize::from(input.u8()) % live.len()];
            let b = input.u8();
            let status = match b % 8 {
                0 => ExitStatus::Code(0),
                1 | 2 => ExitStatus::Code(1),
                3 => ExitStatus::Code(2),
                4 => ExitStatus::Code(i32::from(input.u8() as i8)),
                5 => ExitStatus::Signaled(9),
                6 => ExitStatus::Signaled(11),
                _ => ExitStatus::Signaled(i32::from(input.u8() % 65)),
            };
            // The driver reports no slot for a worker without shared
            // memory (it never had one to leave dirty).
            let slot = if world.has_shmem_child(pid) {
                [
                    SlotReport::Clean,
                    SlotReport::Abandoned,
                    SlotReport::Dirty,
                    SlotReport::None,
                ][usize::from(b >> 3) % 4]
            } else {
                SlotReport::None
            };
            Step::Exit { pid, status, slot }
        }
        7 if lagging => {
            if !world.fork_outstanding() {
                return None;
            }
            Step::ReportFork { ok: op & 0x10 == 0 }
        }
        7 => Step::FailNextFork,
        8 => Step::Phase(Phase::ALL[usize::from(op >> 4) % 3]),
        9 => {
            let current = world.current_ids();
            if op & 0x10 != 0 || current.is_empty() {
                Step::Terminate(world.stale_id())
            } else {
                Step::Terminate(current[usize::from(input.u8()) % current.len()])
            }
        }
        10 => Step::Register(op >> 4),
        11 => {
            let current = world.current_ids();
            let id = *current.get(usize::from(input.u8()) % current.len().max(1))?;
            let name = world.core.spec(id).map(|s| s.name().to_owned());
            Step::RegisterDuplicate(name.unwrap_or_else(|| "nobody".to_owned()))
        }
        12 => Step::Corrupt,
        13 if op & 0x10 != 0 => Step::StrangerExit,
        13 => Step::ResetDone,
        14 => Step::Shutdown(
            [
                ShutdownMode::Smart,
                ShutdownMode::Fast,
                ShutdownMode::Immediate,
            ][usize::from(op >> 4) % 3],
        ),
        _ if op == CORE_EVENTS_CONTROL_OP => {
            // The next byte picks the command (`% 3`: stop, start,
            // restart) and, with its high bit, a stale id; otherwise one
            // more byte picks the current worker.
            let b = input.u8();
            let op = [Control::Stop, Control::Start, Control::Restart][usize::from(b % 3)];
            let current = world.current_ids();
            let worker = if b & 0x80 != 0 || current.is_empty() {
                world.stale_id()
            } else {
                current[usize::from(input.u8()) % current.len()]
            };
            Step::Control { worker, op }
        }
        _ => {
            if op >> 4 == 0 {
                Step::Quiesce
            } else {
                Step::ResetDone
            }
        }
    };
    Some(step)
}

/// Fuzz target `core_events`: an arbitrary event sequence into the
/// postmaster's [`Core`], played by the model world of
/// `bgw/tests/core_explore.rs` ([`World`]), which checks every action and
/// the core's whole state after every step, then lets the world come to
/// rest and checks that every registration ended up started or stopped.
///
/// The first byte's low bit picks the lagging world (fork outcomes
/// reported as later steps). Each further byte is a step (`% 16`; the high
/// bits and following bytes are its arguments): the clock advances and the
/// core ticks, a live child exits (any code or signal, any slot report),
/// the next fork fails (or, lagging, a fork's outcome is reported), a
/// phase is announced, a current or stale worker is terminated, a dynamic
/// worker is registered (or a duplicate name refused), shared state is
/// found corrupt, a segment reset is reported (owed or not), a stranger is
/// reaped, a shutdown arrives, or the world quiesces; the byte
/// [`CORE_EVENTS_CONTROL_OP`] is an operator's stop, start or restart of a
/// current or stale worker. At most [`CORE_EVENTS_MAX_STEPS`] steps are
/// played.
///
/// Properties: no panic; every check of the model (see [`world`]) holds
/// after every step and at rest.
pub fn core_events(data: &[u8]) {
    if let Err(failure) = core_events_checked(data) {
        panic!("{failure}");
    }
}

/// [`core_events`] without the panic: what the run reached, or the failed
/// check with the trace.
pub fn core_events_checked(data: &[u8]) -> Result<world::Tally, String> {
    core_events_run(data).1
}

/// The steps `data` decodes to, as [`core_events`] plays them (the final
/// quiescing included; a run that fails a check ends with the step that
/// failed). For looking at a corpus file, and for checking that a change
/// of the decoder leaves the committed corpus meaning what it meant.
pub fn core_events_steps(data: &[u8]) -> Vec<Step> {
    core_events_run(data).0
}

fn core_events_run(data: &[u8]) -> (Vec<Step>, Result<world::Tally, String>) {
    let mut input = Input(data);
    let mut trace: Vec<Step> = Vec::new();
    let Some(first) = input.byte() else {
        return (trace, Ok(world::Tally::default()));
    };
    let lagging = first & 1 == 1;
    let mut world = World::new(lagging);
    let fail = |trace: &[Step], message: String, world: &World| {
        let mut text = format!("core_events (lagging={lagging}): {message}\ntrace:\n");
        for (i, step) in trace.iter().enumerate() {
            text.push_str(&format!("  {:>3}. {step:?}\n", i + 1));
        }
        text.push_str(&world.describe());
        text
    };
    while let Some(op) = input.byte() {
        if trace.len() >= CORE_EVENTS_MAX_STEPS {
            break;
        }
        let Some(step) = core_step(&world, op, &mut input, lagging) else {
            continue;
        };
        trace.push(step.clone());
        if let Err(message) = world.apply(&step) {
            let failure = fail(&trace, message, &world);
            return (trace, Err(failure));
        }
    }
    trace.push(Step::Quiesce);
    let result = world
        .apply(&Step::Quiesce)
        .map_err(|message| fail(&trace, message, &world))
        .map(|()| world.tally);
    (trace, result)
}
