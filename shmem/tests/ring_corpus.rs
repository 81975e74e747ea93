//! Replays the committed `ring_ops` and `ring_decode` fuzz corpora through
//! their entry points, so CI exercises them on stable without libFuzzer,
//! plus a few thousand pseudo-random inputs of each.
//!
//! The seed files were written by `write_seed_corpus` below (ignored; run it
//! with `cargo test -p shmem --test ring_corpus -- --ignored` to regenerate
//! them); `cargo fuzz run ring_ops` grows the corpus from there.
#![cfg(not(loom))]

use shmem::fuzzing::{corpus_dir, replay, ring_decode, ring_ops};

#[test]
fn ring_ops_corpus_replays_cleanly() {
    assert!(replay("ring_ops", ring_ops).unwrap().len() >= 12);
}

#[test]
fn ring_decode_corpus_replays_cleanly() {
    assert!(replay("ring_decode", ring_decode).unwrap().len() >= 12);
}

/// xorshift64*: deterministic inputs without a dependency.
fn pseudo_random_inputs(seed: u64, count: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    (0..count).map(move |_| {
        let len = (next() % 300) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}

#[test]
fn pseudo_random_inputs_never_break_the_entry_points() {
    for data in pseudo_random_inputs(0x5eed_0001, 3000) {
        ring_ops(&data);
    }
    for data in pseudo_random_inputs(0x5eed_0002, 3000) {
        ring_decode(&data);
    }
}

/// The selector byte of an input: ring kind (`% 3`) and capacity shift
/// (`(b >> 2) % 5`), as `shmem::fuzzing` decodes it.
fn selector(kind: u8, shift: u8) -> u8 {
    (0..=255u8)
        .find(|b| b % 3 == kind && (b >> 2) % 5 == shift)
        .expect("every combination is reachable")
}

const SPSC: u8 = 0;
const MPSC: u8 = 1;
const BYTES: u8 = 2;

fn mpsc_state(lap: u64, kind: u64, producer: u64) -> u64 {
    lap << 18 | producer << 2 | kind
}

fn seeds_ring_ops() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut with = |name, kind, shift, ops: Vec<u8>| {
        let mut data = vec![selector(kind, shift)];
        data.extend(ops);
        seeds.push((name, data));
    };
    // SPSC ops: 0 push, 1 pop, 2 n push_slice, 3 n pop_slice, 4/5 hand over.
    with(
        "spsc_fill_overflow_drain",
        SPSC,
        2,
        [[0; 5], [1; 5]].concat().repeat(3),
    );
    with("spsc_wrap_one_by_one", SPSC, 1, [0, 1].repeat(9));
    with(
        "spsc_batches",
        SPSC,
        3,
        vec![2, 5, 3, 2, 2, 11, 3, 11, 2, 8, 3, 3, 3, 9],
    );
    with(
        "spsc_role_handover",
        SPSC,
        2,
        vec![0, 4, 0, 5, 1, 4, 5, 0, 0, 1, 1, 1],
    );
    // MPSC ops: producer k = (op >> 4) % 3; op % 6: 0/1 push, 2 pop,
    // 3 n pop_slice, 4 claim (bit 3 set: the producer dies holding it),
    // 5 the supervisor recovers a dead producer.
    let op = |k: u8, kind: u8, bit3: bool| {
        (k * 16..k * 16 + 16)
            .find(|o| o % 6 == kind && (o & 8 != 0) == bit3)
            .expect("encodable")
    };
    let push = |k| op(k, 0, false);
    let (pop, pop_slice) = (2, 3);
    let claim_drop = |k| op(k, 4, false);
    let claim_die = |k| op(k, 4, true);
    let recover = |k| op(k, 5, false);
    with(
        "mpsc_three_producers_full",
        MPSC,
        2,
        vec![
            push(0),
            push(1),
            push(2),
            push(0),
            push(1),
            push(2),
            pop,
            pop,
            push(0),
            pop,
            pop,
            pop,
            pop,
        ],
    );
    with(
        "mpsc_batch_pop",
        MPSC,
        3,
        vec![
            push(0),
            push(1),
            push(2),
            push(0),
            push(1),
            pop_slice,
            3,
            push(0),
            pop_slice,
            10,
            pop,
        ],
    );
    with(
        "mpsc_dropped_claim_poisons",
        MPSC,
        2,
        vec![push(0), claim_drop(1), push(2), pop, pop, pop, pop],
    );
    with(
        "mpsc_dead_claim_recovered",
        MPSC,
        2,
        vec![
            push(0),
            claim_die(1),
            push(2),
            pop,
            pop,
            pop,
            recover(1),
            pop,
            pop,
            push(1),
            pop,
        ],
    );
    with(
        "mpsc_dead_claims_two_producers_wrap",
        MPSC,
        1,
        vec![
            claim_die(0),
            claim_die(2),
            pop,
            push(1),
            recover(2),
            pop_slice,
            4,
            recover(0),
            pop,
            pop,
            push(0),
            push(2),
            pop_slice,
            2,
        ],
    );
    // Byte ops: 0-3 send (next byte = length), 4-6 receive (bit 6:
    // forget the guard), 7 detach (bit 7: the receiver, else the sender).
    with(
        "bytes_lengths_across_wrap",
        BYTES,
        1,
        (0..40u32)
            .flat_map(|i| [0, (i * 7 % 30) as u8, 4])
            .collect(),
    );
    with(
        "bytes_too_large_and_full",
        BYTES,
        0,
        vec![0, 9, 0, 8, 0, 0, 0, 1, 4, 4, 4, 0, 8, 4],
    );
    with(
        "bytes_forgotten_guard_redelivers",
        BYTES,
        2,
        vec![0, 20, 68, 4, 68, 68, 4, 4],
    );
    with(
        "bytes_sender_detach_drain",
        BYTES,
        2,
        vec![0, 10, 1, 0, 2, 33, 7, 4, 4, 4, 4],
    );
    with("bytes_receiver_detach", BYTES, 2, vec![0, 3, 135, 0, 5, 4]);
    seeds
}

fn seeds_ring_decode() -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    let u64s = |words: &[u64]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let mut with = |name, kind, shift, body: Vec<u8>| {
        let mut data = vec![selector(kind, shift)];
        data.extend(body);
        seeds.push((name, data));
    };
    // SPSC: written, read.
    with("spsc_consistent_half_full", SPSC, 2, u64s(&[6, 4]));
    with("spsc_written_beyond_capacity", SPSC, 2, u64s(&[100, 0]));
    with("spsc_read_ahead_of_written", SPSC, 1, u64s(&[3, 9]));
    with(
        "spsc_indices_near_wrap",
        SPSC,
        3,
        u64s(&[u64::MAX, u64::MAX - 5]),
    );
    // MPSC (capacity 4): tail, head, then a state word per cell.
    with(
        "mpsc_consistent_two_full",
        MPSC,
        2,
        u64s(&[2, 0, mpsc_state(0, 2, 0), mpsc_state(0, 2, 1), 0, 0]),
    );
    with(
        "mpsc_claimed_and_poisoned",
        MPSC,
        2,
        u64s(&[
            3,
            0,
            mpsc_state(0, 3, 2),
            mpsc_state(0, 1, 0),
            mpsc_state(0, 2, 3),
            0,
        ]),
    );
    with(
        "mpsc_states_from_far_laps",
        MPSC,
        2,
        u64s(&[
            5,
            4,
            mpsc_state(7, 2, 0),
            mpsc_state(9, 0, 0),
            mpsc_state(1 << 40, 1, 5),
            !0,
        ]),
    );
    with(
        "mpsc_tail_far_behind_head",
        MPSC,
        1,
        u64s(&[0, 1 << 50, 0, 0]),
    );
    // Bytes (capacity 32 with shift 1): written, read, two side bytes, then
    // the buffer.
    let frame = |len: u32, payload: &[u8]| -> Vec<u8> {
        let mut f = len.to_le_bytes().to_vec();
        f.extend((!len).to_le_bytes());
        f.extend(payload);
        f.resize(8 + (len as usize).next_multiple_of(8), 0);
        f
    };
    let bytes_seed = |written: u64, read: u64, sides: [u8; 2], buffer: Vec<u8>| {
        let mut body = u64s(&[written, read]);
        body.extend(sides);
        body.extend(buffer);
        body
    };
    with(
        "bytes_two_valid_frames",
        BYTES,
        1,
        bytes_seed(24, 0, [0, 0], [frame(3, b"abc"), frame(0, b"")].concat()),
    );
    with(
        "bytes_bad_check_word",
        BYTES,
        1,
        bytes_seed(16, 0, [0, 0], vec![4, 0, 0, 0, 0, 0, 0, 0]),
    );
    with(
        "bytes_length_beyond_max",
        BYTES,
        1,
        bytes_seed(32, 0, [0, 0], frame(200, &[])),
    );
    with(
        "bytes_unaligned_indices",
        BYTES,
        1,
        bytes_seed(13, 5, [0, 0], vec![]),
    );
    with(
        "bytes_sender_detached_with_data",
        BYTES,
        1,
        bytes_seed(16, 0, [0xf0, 0], frame(5, b"hello")),
    );
    with(
        "bytes_receiver_died",
        BYTES,
        1,
        bytes_seed(0, 0, [0, 0xf1], vec![]),
    );
    seeds
}

/// Writes the seed corpora. Ignored: run it to regenerate them.
#[test]
#[ignore = "writes files; run by hand to regenerate the seed corpus"]
fn write_seed_corpus() {
    for (target, seeds) in [
        ("ring_ops", seeds_ring_ops()),
        ("ring_decode", seeds_ring_decode()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed_{name}")), data).unwrap();
        }
    }
}

#[test]
fn seeds_run_cleanly_before_they_are_written() {
    for (_, data) in seeds_ring_ops() {
        ring_ops(&data);
    }
    for (_, data) in seeds_ring_decode() {
        ring_decode(&data);
    }
}
