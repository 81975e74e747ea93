//! Replays the committed fuzz corpora of the `registry_slot` and
//! `core_events` targets through the same entry points the cargo-fuzz
//! targets call (`bgw::fuzzing`), so CI exercises them on stable without
//! libFuzzer. Files named `seed_*` are the generated seeds below; `cov_*`
//! are inputs from nightly `cargo fuzz` runs that reached code the seeds
//! did not (a set-cover merge by edge coverage); a crash the fuzzer finds
//! is committed as `crash_*` with its fix, so each stays a regression test.
//!
//! The seed files were written by `write_seed_corpora` below (ignored; run
//! it with `cargo test -p bgw --test fuzz_corpus -- --ignored` to
//! regenerate them). Everything in it is deterministic.
#![cfg(not(loom))]

use std::time::Duration;

use bgw::fuzzing::{self, IMAGE_AT, SLOT_DATA};
use bgw::registry::Registrant;
use bgw::spec::{Restart, WorkerSpec};
use shmem::fuzzing::corpus_dir;

/// Runs `target` on every file of its corpus; a panic fails the test and
/// names the file.
fn replay(target: &str, run: fn(&[u8])) -> Vec<(String, Vec<u8>)> {
    shmem::fuzzing::replay(target, run).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn registry_slot_corpus_replays_cleanly() {
    // The target scribbles at fixed offsets and recomputes the checksum:
    // both must still agree with the registry, or the corpus tests nothing.
    assert!(
        fuzzing::slot_layout_matches(),
        "slot layout or checksum drifted"
    );
    let files = replay("registry_slot", fuzzing::registry_slot);
    assert!(files.len() >= 30, "the seed corpus has gone missing");
    // The corpus reaches every answer the postmaster gives.
    let mut total = fuzzing::RegistryTally::default();
    for (_, bytes) in &files {
        total += fuzzing::registry_slot_tally(bytes);
    }
    eprintln!("registry_slot corpus: {total:?}");
    assert!(total.accepted > 0 && total.rejected_invalid > 0 && total.rejected_corrupt > 0);
    assert!(total.refused_by_core > 0 && total.corrupt > 0 && total.filling > 0);
    assert!(total.terminated > 0 && total.forks > 0);
}

#[test]
fn core_events_corpus_replays_cleanly() {
    let files = replay("core_events", fuzzing::core_events);
    assert!(files.len() >= 20, "the seed corpus has gone missing");
    let mut total = bgw::fuzzing::world::Tally::default();
    for (_, bytes) in &files {
        total += fuzzing::core_events_checked(bytes).expect("replayed above");
    }
    eprintln!("core_events corpus: {total:?}");
    assert!(total.forks > 0 && total.fork_failures > 0 && total.crashes > 0);
    assert!(total.contained > 0 && total.resets > 0 && total.kills > 0);
    assert!(total.unregistered > 0 && total.exits > 0);
    assert!(total.controls > 0 && total.operator_exits > 0);
}

/// The entry points do check: a slot forged with a valid image is
/// accepted, the same slot with a byte changed (checksum fixed) is not,
/// and a core_events input whose model check fails is reported.
#[test]
fn the_targets_tell_good_from_bad() {
    let spec = WorkerSpec::new("w0").entry("main");
    let me = Registrant {
        proc_index: None,
        pid: 4242,
    };
    let bytes = fuzzing::submitted_slot_bytes(&spec, me).expect("valid");
    assert_eq!(bytes.len(), SLOT_DATA);
    let forge = |image: &[u8]| {
        // One slot; write it whole, mark it submitted, fix the checksum, serve.
        let mut input = vec![0, 1, 0];
        input.extend_from_slice(image);
        input.extend_from_slice(&[3, 0, 4, 0, 5]);
        fuzzing::registry_slot_tally(&input)
    };
    assert_eq!(forge(&bytes).accepted, 1);
    let mut bad = bytes.clone();
    bad[IMAGE_AT + 1] = b' '; // not in the name alphabet
    let tally = forge(&bad);
    assert_eq!((tally.accepted, tally.rejected_invalid), (0, 1));
    // Phase 2 announced: quiescing starts all three static workers.
    let tally = fuzzing::core_events_checked(&[0, 0x08 | (2 << 4)]).expect("passes");
    assert_eq!(tally.forks, 3);
}

// ---------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------

/// SplitMix64: deterministic filler for the pseudo-random seeds.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `registry_slot` operations, encoded as the target decodes them.
mod reg {
    /// Submit: spec byte (name `w{b % 6}`, restart kind `(b >> 3) % 5`,
    /// kind 1 takes a u16 of milliseconds), arg length and bytes, shutdown
    /// byte, registrant byte, pid.
    pub fn submit(spec_byte: u8, arg: &[u8], pid: u32) -> Vec<u8> {
        let mut v = vec![0, spec_byte];
        if (spec_byte >> 3) % 5 == 1 {
            v.extend_from_slice(&250u16.to_le_bytes());
        }
        v.push(arg.len() as u8);
        v.extend_from_slice(arg);
        v.push(20); // 200 ms shutdown timeout
        v.push(7); // process slot 3
        v.extend_from_slice(&pid.to_le_bytes());
        v
    }
    pub fn whole(slot: u8, bytes: &[u8]) -> Vec<u8> {
        [&[1, slot][..], bytes].concat()
    }
    pub fn run(slot: u8, at: u16, bytes: &[u8]) -> Vec<u8> {
        let at = at.to_le_bytes();
        [&[2, slot, at[0], at[1], bytes.len() as u8][..], bytes].concat()
    }
    pub fn make_submitted(slot: u8, terminate: bool) -> Vec<u8> {
        vec![3, slot | if terminate { 0x80 } else { 0 }]
    }
    pub fn fix_checksum(slot: u8) -> Vec<u8> {
        vec![4, slot]
    }
    pub const SERVE: u8 = 5;
    pub fn terminate(slot: u8) -> Vec<u8> {
        vec![6, slot]
    }
    pub fn release(slot: u8) -> Vec<u8> {
        vec![7, slot]
    }
    pub fn tick(ms: u16) -> Vec<u8> {
        let ms = ms.to_le_bytes();
        vec![8, ms[0], ms[1]]
    }
    pub fn child_exit(pid_index: u8, how: u8) -> Vec<u8> {
        vec![9, pid_index, how]
    }
    pub const RESET: u8 = 10;
    pub fn status(slot: u8, generation: u32) -> Vec<u8> {
        [&[11, slot][..], &generation.to_le_bytes()].concat()
    }
}

fn seeds_registry_slot() -> Vec<(String, Vec<u8>)> {
    use reg::*;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, parts: Vec<Vec<u8>>| seeds.push((name.to_owned(), parts.concat()));
    // Spec bytes: 0x80 shmem, 0x40 other entry, 0x20 notify, 0x04
    // contain, (b >> 3) % 5 the restart kind, b % 6 the name.
    let after = 0x80 | (1 << 3); // w4, shared memory, restart after 250 ms
    add("empty", vec![]);
    add("one_slot_serve", vec![vec![0, SERVE]]);
    add(
        "submit_serve",
        vec![vec![3], submit(0x80, b"", 1), vec![SERVE]],
    );
    add(
        "submit_serve_run_crash_restart",
        vec![
            vec![3],
            submit(after, b"x=1", 1),
            vec![SERVE],
            tick(0),
            child_exit(0, 2),
            tick(300),
            tick(0),
        ],
    );
    add(
        "four_submissions_duplicate_and_full",
        vec![
            vec![3],
            submit(0x80, b"", 1),
            submit(0x81, b"", 2),
            submit(0x80, b"", 3), // duplicate name w0
            submit(0x82, b"", 4),
            vec![SERVE],
            submit(0x83, b"", 5), // core full
            vec![SERVE],
        ],
    );
    add(
        "terminate_before_accept",
        vec![vec![1], submit(0x20, b"arg", 9), terminate(0), vec![SERVE]],
    );
    add(
        "terminate_running",
        vec![
            vec![1],
            submit(0x20 | (2 << 3), b"", 9),
            vec![SERVE],
            tick(0),
            terminate(0),
            vec![SERVE],
            status(0, 2),
        ],
    );
    add(
        "release_and_resubmit",
        vec![
            vec![0],
            submit(0, b"", 1),
            release(0),
            submit(1, b"", 1),
            vec![SERVE],
            status(0, 2),
        ],
    );
    add(
        "reset_with_survivors",
        vec![
            vec![2],
            submit(0x80 | (2 << 3), b"", 1),
            submit(0x81 | (3 << 3), b"", 2),
            vec![SERVE],
            tick(0),
            tick(0),
            child_exit(0, 2), // a shared-memory crash: reset, reinstall
            tick(0),
            vec![SERVE],
        ],
    );
    add(
        "reset_by_hand",
        vec![vec![3], submit(0, b"", 1), vec![RESET], vec![SERVE]],
    );
    add(
        "checksum_mismatch",
        vec![
            vec![0],
            submit(0, b"abc", 1),
            run(0, IMAGE_AT as u16 + 1, b"v"),
            vec![SERVE],
        ],
    );
    add(
        "forged_submission_of_zeros",
        vec![
            vec![0],
            make_submitted(0, false),
            fix_checksum(0),
            vec![SERVE],
        ],
    );
    add(
        "forged_submission_with_terminate",
        vec![vec![1], make_submitted(1, true), vec![SERVE]],
    );
    add(
        "garbage_control_word",
        vec![vec![0], run(0, 0, &[0xff; 8]), vec![SERVE], status(0, 1)],
    );
    add(
        "half_filled",
        vec![vec![0], run(0, 0, &[1, 0, 0, 0, 1, 0, 0, 0]), vec![SERVE]],
    );
    add(
        "stale_and_foreign_status",
        vec![vec![3], status(7, 1), status(0, 0), status(2, u32::MAX)],
    );

    // A real submission's bytes written over another slot by hand, under
    // the owner's generation: accepted like the real thing.
    let valid = fuzzing::submitted_slot_bytes(
        &WorkerSpec::new("w5")
            .entry("main")
            .arg(b"hand")
            .restart(Restart::After(Duration::from_millis(40))),
        Registrant {
            proc_index: None,
            pid: 77,
        },
    )
    .expect("a valid spec");
    add(
        "handwritten_valid_image",
        vec![
            vec![1],
            whole(1, &valid),
            make_submitted(1, false),
            fix_checksum(1),
            vec![SERVE],
            tick(0),
        ],
    );
    // The same image with one byte wrong, at every 8th offset of the
    // image (every field: lengths, padding, phase, restart kind, flags,
    // reserved byte, durations), the checksum fixed so the field checks
    // see it; and the same with eight 0xff bytes (huge durations).
    for at in (IMAGE_AT..SLOT_DATA).step_by(8) {
        let mut one = valid.clone();
        one[at] ^= 0x41;
        add(
            &format!("image_byte_{:03}", at - IMAGE_AT),
            vec![
                vec![0],
                whole(0, &one),
                make_submitted(0, false),
                fix_checksum(0),
                vec![SERVE],
            ],
        );
    }
    for at in (IMAGE_AT + 384..SLOT_DATA).step_by(8) {
        add(
            &format!("image_ones_{:03}", at - IMAGE_AT),
            vec![
                vec![0],
                submit(after, b"", 5),
                run(0, at as u16, &[0xff; 8]),
                fix_checksum(0),
                vec![SERVE],
                tick(0),
                child_exit(0, 1),
                tick(u16::MAX),
            ],
        );
    }
    for i in 0..8u64 {
        let noise = pseudo_random(0x7265_6769_7374_7279 + i, SLOT_DATA);
        // Half of them keep the random words; half get a believable
        // control word and checksum.
        let mut parts = vec![vec![(i % 4) as u8], whole(0, &noise)];
        if i % 2 == 1 {
            parts.push(make_submitted(0, i % 4 == 3));
            parts.push(fix_checksum(0));
        }
        parts.push(vec![SERVE]);
        add(&format!("random_slot_{i}"), parts);
    }
    for i in 0..6u64 {
        let len = 32 << (i % 4);
        add(
            &format!("random_ops_{i}"),
            vec![pseudo_random(0x6f70_7300 + i, len)],
        );
    }
    seeds
}

/// `core_events` steps, encoded as the target decodes them.
mod ev {
    pub const TICK0: u8 = 0x00;
    /// Tick by `10 ms * b`.
    pub fn tick10(b: u8) -> Vec<u8> {
        vec![0x10, b]
    }
    /// Tick by `s` seconds.
    pub fn tick_s(s: u16) -> Vec<u8> {
        let s = s.to_le_bytes();
        vec![0xe0, s[0], s[1]]
    }
    /// Live child `index` exits; `how % 8` picks the status, `how >> 3`
    /// the slot report.
    pub fn exit(index: u8, how: u8) -> Vec<u8> {
        vec![0x04, index, how]
    }
    pub const FORK_OK_OR_FAIL_NEXT: u8 = 0x07;
    pub const FORK_FAILED: u8 = 0x17;
    pub fn phase(p: u8) -> u8 {
        0x08 | (p << 4)
    }
    pub fn terminate(index: u8) -> Vec<u8> {
        vec![0x09, index]
    }
    pub const TERMINATE_STALE: u8 = 0x19;
    pub fn register(variant: u8) -> u8 {
        0x0a | (variant << 4)
    }
    pub fn duplicate(index: u8) -> Vec<u8> {
        vec![0x0b, index]
    }
    pub const CORRUPT: u8 = 0x0c;
    pub const RESET_DONE: u8 = 0x0d;
    pub const STRANGER: u8 = 0x1d;
    pub fn shutdown(mode: u8) -> u8 {
        0x0e | (mode << 4)
    }
    pub const QUIESCE: u8 = 0x0f;
    /// An operator command on current worker `index`; `op % 3` picks stop,
    /// start or restart.
    pub fn control(op: u8, index: u8) -> Vec<u8> {
        vec![bgw::fuzzing::CORE_EVENTS_CONTROL_OP, op % 3, index]
    }
    /// An operator command on a stale id.
    pub fn control_stale(op: u8) -> Vec<u8> {
        vec![bgw::fuzzing::CORE_EVENTS_CONTROL_OP, 0x80 | (op % 3)]
    }
    pub const STOP: u8 = 0;
    pub const START: u8 = 1;
    pub const RESTART: u8 = 2;
}

fn seeds_core_events() -> Vec<(String, Vec<u8>)> {
    use ev::*;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, parts: Vec<Vec<u8>>| seeds.push((name.to_owned(), parts.concat()));
    let all_running = |lagging: bool| {
        let mut v = vec![vec![u8::from(lagging)], vec![phase(2)]];
        for _ in 0..3 {
            v.push(vec![TICK0]);
            if lagging {
                v.push(vec![FORK_OK_OR_FAIL_NEXT]);
            }
        }
        v
    };
    let with = |mut prefix: Vec<Vec<u8>>, more: Vec<Vec<u8>>| {
        prefix.extend(more);
        prefix
    };
    add("fresh", vec![vec![0]]);
    add("fresh_lagging", vec![vec![1]]);
    for lagging in [false, true] {
        let l = if lagging { "_lagging" } else { "" };
        add(&format!("all_running{l}"), all_running(lagging));
        add(
            &format!("alpha_crashes{l}"),
            with(
                all_running(lagging),
                vec![exit(0, 6), tick10(10), vec![RESET_DONE], vec![TICK0]],
            ),
        );
        for mode in 0..3 {
            add(
                &format!("shutdown_{mode}{l}"),
                with(
                    all_running(lagging),
                    vec![vec![shutdown(mode)], tick_s(5), exit(0, 0), tick_s(5)],
                ),
            );
        }
        add(
            &format!("register_until_full{l}"),
            with(
                all_running(lagging),
                vec![
                    vec![register(0), TICK0, register(1), register(2)],
                    duplicate(0),
                    vec![TICK0],
                ],
            ),
        );
        add(
            &format!("contained_crash{l}"),
            with(
                all_running(lagging),
                vec![
                    vec![register(0), TICK0, FORK_OK_OR_FAIL_NEXT],
                    exit(3, 6 | (1 << 3)),
                    tick10(30),
                ],
            ),
        );
        add(
            &format!("dirty_slot_and_corrupt{l}"),
            with(
                all_running(lagging),
                vec![
                    exit(2, 2 << 3),
                    vec![CORRUPT, RESET_DONE, RESET_DONE, TICK0],
                ],
            ),
        );
        add(
            &format!("operator_stop_start{l}"),
            with(
                all_running(lagging),
                vec![
                    control(STOP, 0),
                    tick_s(1),
                    exit(0, 0),
                    vec![TICK0],
                    control(START, 0),
                    vec![TICK0],
                ],
            ),
        );
        add(
            &format!("operator_restart{l}"),
            with(
                all_running(lagging),
                vec![
                    control(RESTART, 2),
                    exit(2, 0),
                    vec![TICK0],
                    control_stale(RESTART),
                    control(STOP, 1),
                    vec![shutdown(1)],
                    tick_s(5),
                ],
            ),
        );
        add(
            &format!("terminate_and_stale{l}"),
            with(
                all_running(lagging),
                vec![terminate(0), vec![TERMINATE_STALE], tick_s(4), exit(0, 0)],
            ),
        );
    }
    add(
        "failed_forks",
        vec![
            vec![0, FORK_OK_OR_FAIL_NEXT, TICK0],
            tick10(20),
            vec![FORK_OK_OR_FAIL_NEXT, phase(2), TICK0, TICK0],
        ],
    );
    add(
        "lagging_fork_failures",
        vec![
            vec![1, TICK0, FORK_FAILED, phase(1)],
            tick10(20),
            vec![FORK_FAILED],
        ],
    );
    add(
        "stranger_and_quiesce",
        vec![vec![0, STRANGER, QUIESCE, phase(2), QUIESCE]],
    );
    for i in 0..12u64 {
        let len = 24 << (i % 4);
        let mut bytes = pseudo_random(0x636f_7265_0000 + i, len);
        bytes[0] = (i % 2) as u8;
        add(&format!("random_{i:02}"), vec![bytes]);
    }
    seeds
}

/// Writes the seed corpora. Ignored: run it to regenerate them (it leaves
/// every other file, such as `crash_*` regressions, alone).
#[test]
#[ignore = "regenerates committed files; run by hand"]
fn write_seed_corpora() {
    for (target, seeds) in [
        ("registry_slot", seeds_registry_slot()),
        ("core_events", seeds_core_events()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(format!("seed_{name}")), bytes).unwrap();
        }
    }
}

/// The seeds are what the generator makes and every one passes; run in CI
/// so a seed that starts failing is noticed even before it is rewritten.
#[test]
fn seeds_pass_their_targets() {
    for (name, bytes) in seeds_registry_slot() {
        let outcome = std::panic::catch_unwind(|| fuzzing::registry_slot(&bytes));
        assert!(outcome.is_ok(), "registry_slot seed {name} fails");
    }
    for (name, bytes) in seeds_core_events() {
        if let Err(failure) = fuzzing::core_events_checked(&bytes) {
            panic!("core_events seed {name} fails:\n{failure}");
        }
    }
}
