//! Entry points for the fuzz targets in `fuzz/`, kept here so that a stable
//! test can replay the committed corpora without nightly or libFuzzer.
//!
//! Each function takes arbitrary bytes, must never panic on them, and
//! asserts the properties that must hold whatever the input.

use crate::header::{HEADER_SIZE, HeaderSnapshot, validate_header};
use crate::layout::Layout;

/// The layout every `segment_header` input is checked against.
pub fn segment_header_layout() -> Layout {
    Layout::builder()
        .region::<u64>("counter")
        .array::<u64>("slots", 16)
        .build()
        .expect("a fixed, valid layout")
}

/// Fuzz target `segment_header`: validates `data` as the start of a segment.
///
/// Properties: no panic; an accepted header describes exactly the input it
/// came from; any input shorter than a header is rejected.
pub fn segment_header(data: &[u8]) {
    let layout = segment_header_layout();
    if let Ok(snapshot) = validate_header(data, &layout) {
        assert!(data.len() >= HEADER_SIZE);
        assert_eq!(snapshot.total_size, data.len() as u64);
        assert_eq!(snapshot.layout_hash, layout.hash());
        assert_eq!(
            snapshot,
            HeaderSnapshot::parse(data).expect("accepted once")
        );
    }
    if data.len() < HEADER_SIZE {
        assert!(validate_header(data, &layout).is_err());
    }
}

#[cfg(not(loom))]
/// Reads fuzz input a byte or a word at a time, yielding zeros once it runs
/// out, so every input decodes to some sequence of operations.
struct Input<'d>(&'d [u8]);

#[cfg(not(loom))]
impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        for b in &mut word {
            *b = self.byte().unwrap_or(0);
        }
        u64::from_le_bytes(word)
    }
}

#[cfg(not(loom))]
/// Fuzz target `ring_ops`: an arbitrary sequence of operations on one of
/// the three rings, checked step by step against a `VecDeque` model
/// (single-threaded, so every outcome is determined).
///
/// The first byte picks the ring (`% 3`: SPSC, MPSC, bytes) and its
/// capacity (`>> 2`); each further byte is an operation and may consume an
/// argument byte. Properties: no panic; every push, pop, batch, claim,
/// abandonment, recovery, detach and drain agrees with the model.
pub fn ring_ops(data: &[u8]) {
    let mut input = Input(data);
    let Some(selector) = input.byte() else {
        return;
    };
    let shift = usize::from(selector >> 2) % 5;
    match selector % 3 {
        0 => spsc_ops(&mut input, 1 << shift),
        1 => mpsc_ops(&mut input, 1 << shift),
        _ => byte_ops(&mut input, 16 << shift),
    }
}

#[cfg(not(loom))]
fn spsc_ops(input: &mut Input<'_>, capacity: usize) {
    use crate::ring::{SpscPopError, SpscPushError, SpscStorage};
    use std::collections::VecDeque;

    let storage = SpscStorage::<u64>::new(capacity).expect("power of two");
    let ring = storage.ring();
    let mut tx = Some(ring.producer(1).expect("free"));
    let mut rx = Some(ring.consumer(2).expect("free"));
    let mut model = VecDeque::new();
    let mut next = 0u64;
    while let Some(op) = input.byte() {
        match op % 6 {
            0 => {
                let tx = tx.get_or_insert_with(|| ring.producer(1).expect("released"));
                let got = tx.try_push(next);
                if model.len() < capacity {
                    assert_eq!(got, Ok(()));
                    model.push_back(next);
                    next += 1;
                } else {
                    assert_eq!(got, Err(SpscPushError::Full));
                }
            }
            1 => {
                let rx = rx.get_or_insert_with(|| ring.consumer(2).expect("released"));
                match model.pop_front() {
                    Some(v) => assert_eq!(rx.try_pop(), Ok(v)),
                    None => assert_eq!(rx.try_pop(), Err(SpscPopError::Empty)),
                }
            }
            2 => {
                let n = usize::from(input.byte().unwrap_or(0) % 12);
                let values: Vec<u64> = (next..next + n as u64).collect();
                let tx = tx.get_or_insert_with(|| ring.producer(1).expect("released"));
                let pushed = tx.push_slice(&values).expect("consistent");
                assert_eq!(pushed, n.min(capacity - model.len()));
                model.extend(&values[..pushed]);
                next += pushed as u64;
            }
            3 => {
                let n = usize::from(input.byte().unwrap_or(0) % 12);
                let mut out = vec![0u64; n];
                let rx = rx.get_or_insert_with(|| ring.consumer(2).expect("released"));
                let popped = rx.pop_slice(&mut out).expect("consistent");
                assert_eq!(popped, n.min(model.len()));
                for v in &out[..popped] {
                    assert_eq!(Some(*v), model.pop_front());
                }
            }
            // Hand a role over to a new handle: it must resume exactly.
            4 => tx = None,
            _ => rx = None,
        }
        assert_eq!(ring.len(), Ok(model.len()));
    }
}

#[cfg(not(loom))]
fn mpsc_ops(input: &mut Input<'_>, capacity: usize) {
    use crate::ring::{MpscPopError, MpscProducer, MpscPushError, MpscStorage};
    use std::collections::VecDeque;

    /// What the model holds at each claimed position.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Entry {
        Value(u64),
        /// Claimed by the producer slot, never committed; its owner lives.
        Stuck(u16),
        /// Claimed by the producer slot, then abandoned.
        Lost(u16),
    }

    const PRODUCERS: usize = 3;
    let storage = MpscStorage::<u64>::new(capacity).expect("power of two");
    let ring = storage.ring();
    let owner = |k: usize| 10 + k as u32;
    let mut producers: Vec<Option<MpscProducer<'_, u64>>> = (0..PRODUCERS)
        .map(|k| Some(ring.producer(owner(k)).expect("free slot")))
        .collect();
    // Producers whose handle "died" holding a claim: recovered later.
    let mut dead = [false; PRODUCERS];
    let mut rx = ring.consumer(1).expect("free");
    let mut model: VecDeque<Entry> = VecDeque::new();
    let mut next = 0u64;
    let check_pop = |got: Result<u64, MpscPopError>, model: &mut VecDeque<Entry>| match model
        .front()
        .copied()
    {
        None => assert_eq!(got, Err(MpscPopError::Empty)),
        Some(Entry::Value(v)) => {
            assert_eq!(got, Ok(v));
            model.pop_front();
        }
        Some(Entry::Stuck(id)) => {
            assert!(
                matches!(got, Err(MpscPopError::InFlight { producer, .. }) if producer == id),
                "{got:?}"
            );
        }
        Some(Entry::Lost(id)) => {
            assert!(
                matches!(got, Err(MpscPopError::Abandoned { producer, .. }) if producer == id),
                "{got:?}"
            );
            model.pop_front();
        }
    };
    while let Some(op) = input.byte() {
        let k = usize::from(op >> 4) % PRODUCERS;
        match op % 6 {
            0 | 1 => {
                let Some(tx) = producers[k].as_mut() else {
                    continue;
                };
                let got = tx.try_push(next);
                if model.len() < capacity {
                    assert_eq!(got, Ok(()));
                    model.push_back(Entry::Value(next));
                    next += 1;
                } else {
                    assert_eq!(got, Err(MpscPushError::Full));
                }
            }
            2 => {
                let got = rx.try_pop();
                check_pop(got, &mut model);
            }
            3 => {
                let n = usize::from(input.byte().unwrap_or(0) % 12);
                let mut out = vec![0u64; n];
                match rx.pop_slice(&mut out) {
                    Ok(popped) => {
                        for v in &out[..popped] {
                            assert_eq!(model.pop_front(), Some(Entry::Value(*v)));
                        }
                        assert!(popped == n || !matches!(model.front(), Some(Entry::Value(_))));
                    }
                    Err(e) => {
                        assert!(n > 0);
                        check_pop(Err(e), &mut model);
                    }
                }
            }
            // A producer claims and then either drops the claim (a panic:
            // the cell is poisoned at once) or dies holding it.
            4 => {
                let Some(tx) = producers[k].as_mut() else {
                    continue;
                };
                let id = tx.id();
                let dies = op & 8 != 0;
                match tx.claim() {
                    Ok(claim) if dies => {
                        std::mem::forget(claim);
                        model.push_back(Entry::Stuck(id));
                    }
                    Ok(claim) => {
                        drop(claim);
                        model.push_back(Entry::Lost(id));
                        continue;
                    }
                    Err(e) => {
                        assert_eq!(e, MpscPushError::Full);
                        assert_eq!(model.len(), capacity);
                        continue;
                    }
                }
                std::mem::forget(producers[k].take());
                dead[k] = true;
            }
            // The supervisor recovers a dead producer; a new one replaces it.
            _ => {
                if !dead[k] {
                    continue;
                }
                // SAFETY: the dead producer's handle and claim were
                // forgotten and are never used again.
                let recovered = unsafe { ring.recover_owner(owner(k)) };
                assert_eq!(recovered.producers, 1);
                let mut abandoned = 0;
                for entry in model.iter_mut() {
                    if let Entry::Stuck(id) = *entry
                        && usize::from(id) < crate::ring::MAX_PRODUCERS
                        && ring.producer_owner(id) == 0
                    {
                        *entry = Entry::Lost(id);
                        abandoned += 1;
                    }
                }
                assert_eq!(recovered.abandoned, abandoned);
                dead[k] = false;
                producers[k] = Some(ring.producer(owner(k)).expect("slot freed"));
            }
        }
    }
}

#[cfg(not(loom))]
fn byte_ops(input: &mut Input<'_>, capacity: usize) {
    use crate::ring::{ByteRecvError, ByteSendError, ByteStorage, FRAME_HEADER};
    use std::collections::VecDeque;

    let storage = ByteStorage::new(capacity).expect("power of two");
    let ring = storage.ring();
    let max = ring.max_message();
    let mut tx = Some(ring.sender(1).expect("free"));
    let mut rx = Some(ring.receiver(2).expect("free"));
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut used = 0usize;
    let frame = |len: usize| FRAME_HEADER + len.next_multiple_of(8);
    let mut seed = 0u8;
    while let Some(op) = input.byte() {
        match op % 8 {
            0..=3 => {
                let Some(sender) = tx.as_mut() else {
                    continue;
                };
                let len = usize::from(input.byte().unwrap_or(0)) % (max + 9);
                seed = seed.wrapping_add(1);
                let message: Vec<u8> = (0..len).map(|i| seed ^ i as u8).collect();
                let got = sender.try_send(&message);
                if rx.is_none() {
                    assert_eq!(got, Err(ByteSendError::Detached));
                } else if len > max {
                    assert_eq!(got, Err(ByteSendError::TooLarge { len, max }));
                } else if used + frame(len) > capacity {
                    assert_eq!(got, Err(ByteSendError::Full));
                } else {
                    assert_eq!(got, Ok(()));
                    used += frame(len);
                    model.push_back(message);
                }
            }
            4..=6 => {
                let Some(receiver) = rx.as_mut() else {
                    continue;
                };
                match (receiver.try_recv(), model.pop_front()) {
                    (Ok(got), Some(want)) => {
                        assert_eq!(&*got, &want[..]);
                        used -= frame(want.len());
                        // Forgetting the guard leaves the message in place.
                        if op & 64 != 0 {
                            std::mem::forget(got);
                            model.push_front(want);
                            used += frame(model[0].len());
                        }
                    }
                    (Err(ByteRecvError::Empty), None) => assert!(tx.is_some()),
                    (Err(ByteRecvError::Detached), None) => assert!(tx.is_none()),
                    (got, want) => panic!("got {got:?}, model {want:?}"),
                }
            }
            // Detach one side (op's high bit picks which).
            _ => {
                if op & 128 == 0 {
                    tx = None;
                } else {
                    rx = None;
                }
            }
        }
    }
}

#[cfg(not(loom))]
/// Fuzz target `ring_decode`: arbitrary bytes as a ring's shared state
/// (indices, role words, cell states and contents), then a bounded number
/// of operations on it.
///
/// Properties: no panic, no out-of-bounds access, no endless loop; whatever
/// a ring hands out is within its limits (at most `capacity` values
/// popped, each received message at most `max_message` bytes).
pub fn ring_decode(data: &[u8]) {
    use crate::ring::{ByteStorage, MpscStorage, SpscStorage};

    let mut input = Input(data);
    let Some(selector) = input.byte() else {
        return;
    };
    let shift = usize::from(selector >> 2) % 4;
    match selector % 3 {
        0 => {
            let capacity = 1 << shift;
            let storage = SpscStorage::<u64>::new(capacity).expect("power of two");
            storage.scribble(input.u64(), input.u64());
            let ring = storage.ring();
            let _ = ring.len();
            if let Ok(mut rx) = ring.consumer(1) {
                let popped = (0..capacity + 2).filter(|_| rx.try_pop().is_ok()).count();
                assert!(popped <= capacity);
                let mut out = vec![0u64; capacity + 2];
                if let Ok(n) = rx.pop_slice(&mut out) {
                    assert!(n <= capacity);
                }
            }
            if let Ok(mut tx) = ring.producer(2) {
                let pushed = (0..capacity + 2).filter(|_| tx.try_push(7).is_ok()).count();
                assert!(pushed <= capacity);
            }
        }
        1 => {
            let capacity = 1 << shift;
            let storage = MpscStorage::<u64>::new(capacity).expect("power of two");
            let (tail, head) = (input.u64(), input.u64());
            let states: Vec<u64> = (0..capacity).map(|_| input.u64()).collect();
            storage.scribble(tail, head, states.into_iter());
            let ring = storage.ring();
            let _ = ring.len();
            if let Ok(mut rx) = ring.consumer(1) {
                // Abandoned cells are consumed too, so allow two laps.
                for _ in 0..2 * capacity + 2 {
                    let _ = rx.try_pop();
                }
                let mut out = vec![0u64; capacity + 2];
                let _ = rx.pop_slice(&mut out);
            }
            if let Ok(mut tx) = ring.producer(2) {
                for _ in 0..capacity + 2 {
                    let _ = tx.try_push(7);
                }
            }
            // SAFETY: the handles above were dropped; nothing runs under
            // owner 3, which holds nothing.
            let _ = unsafe { ring.recover_owner(3) };
        }
        _ => {
            let capacity = 16 << shift;
            let storage = ByteStorage::new(capacity).expect("power of two");
            let (written, read) = (input.u64(), input.u64());
            let sides = [input.byte().unwrap_or(0), input.byte().unwrap_or(0)].map(|b| {
                if b >= 0xf0 {
                    u32::MAX - u32::from(b & 1)
                } else {
                    0
                }
            });
            storage.scribble(written, read, sides, input.0);
            let ring = storage.ring();
            if let Ok(mut rx) = ring.receiver(1) {
                for _ in 0..capacity / 8 + 2 {
                    match rx.try_recv() {
                        Ok(message) => assert!(message.len() <= ring.max_message()),
                        Err(_) => break,
                    }
                }
            }
            if let Ok(mut tx) = ring.sender(2) {
                for len in [0, 1, 9, capacity] {
                    let _ = tx.try_send(&vec![0; len.min(capacity)]);
                }
            }
        }
    }
}

/// The workspace's committed corpus of fuzz target `target`
/// (`fuzz/corpus/<target>`), for the tests that replay it.
pub fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// The files of `target`'s committed corpus, sorted by name, with their
/// contents.
pub fn corpus(target: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(corpus_dir(target))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        files.push((name, std::fs::read(&path)?));
    }
    files.sort();
    Ok(files)
}

/// Why a corpus did not replay cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The corpus could not be read.
    #[error("corpus {target}: {source}")]
    Read {
        /// The fuzz target.
        target: String,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The target panicked on a file: a property failed.
    #[error("corpus file {file} fails the {target} target")]
    Fails {
        /// The fuzz target.
        target: String,
        /// The file's name.
        file: String,
    },
}

/// Runs fuzz target `run` on every file of `target`'s committed corpus, as
/// `cargo fuzz` would but on stable, and returns the files. The first file
/// the target panics on is an error naming it.
///
/// ```
/// let files = shmem::fuzzing::replay("segment_header", shmem::fuzzing::segment_header)?;
/// assert!(!files.is_empty());
/// # Ok::<(), shmem::fuzzing::ReplayError>(())
/// ```
pub fn replay(target: &str, run: fn(&[u8])) -> Result<Vec<(String, Vec<u8>)>, ReplayError> {
    let files = corpus(target).map_err(|source| ReplayError::Read {
        target: target.to_owned(),
        source,
    })?;
    for (file, bytes) in &files {
        if std::panic::catch_unwind(|| run(bytes)).is_err() {
            return Err(ReplayError::Fails {
                target: target.to_owned(),
                file: file.clone(),
            });
        }
    }
    Ok(files)
}
