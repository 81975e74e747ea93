//! Replays the committed fuzz corpora through the same entry points the
//! cargo-fuzz targets call, so CI exercises them on stable without libFuzzer.
#![cfg(not(loom))]

use shmem::fuzzing::{corpus_dir, replay};
use shmem::{HEADER_SIZE, HeaderSnapshot};

#[test]
fn segment_header_corpus_replays_cleanly() {
    // A panic (a property check of the target) fails it, naming the file.
    let files = replay("segment_header", shmem::fuzzing::segment_header).unwrap();
    assert!(files.len() >= 8, "the seed corpus has gone missing");
    let layout = shmem::fuzzing::segment_header_layout();
    let accepted = files
        .iter()
        .filter(|(_, bytes)| shmem::validate_header(bytes, &layout).is_ok())
        .count();
    assert!(accepted >= 1, "no corpus input reaches the accepting path");
}

/// Writes the seed corpus for `segment_header`: one valid segment prefix and
/// one variant per header field, so the fuzzer starts at every branch.
/// Run with `cargo test -p shmem --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "regenerates committed files; run by hand"]
fn write_segment_header_seeds() {
    let layout = shmem::fuzzing::segment_header_layout();
    let good = HeaderSnapshot {
        creator_pid: 1,
        creator_uid: 1000,
        creator_start: 12345,
        ..HeaderSnapshot::for_layout(&layout)
    };
    let encode = |h: HeaderSnapshot, len: usize| {
        let mut header = [0u8; HEADER_SIZE];
        h.write_to(&mut header);
        let mut bytes = vec![0u8; len];
        let n = len.min(HEADER_SIZE);
        bytes[..n].copy_from_slice(&header[..n]);
        bytes
    };
    let size = layout.size();
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("valid", encode(good, size)),
        ("empty", Vec::new()),
        ("short_header", encode(good, HEADER_SIZE - 1)),
        ("header_only", encode(good, HEADER_SIZE)),
        (
            "bad_magic",
            encode(HeaderSnapshot { magic: 0, ..good }, size),
        ),
        (
            "bad_version",
            encode(
                HeaderSnapshot {
                    format_version: 9,
                    ..good
                },
                size,
            ),
        ),
        (
            "bad_header_size",
            encode(
                HeaderSnapshot {
                    header_size: 64,
                    ..good
                },
                size,
            ),
        ),
        (
            "bad_hash",
            encode(
                HeaderSnapshot {
                    layout_hash: 1,
                    ..good
                },
                size,
            ),
        ),
        (
            "bad_total",
            encode(
                HeaderSnapshot {
                    total_size: 1 << 40,
                    ..good
                },
                size,
            ),
        ),
        (
            "initializing",
            encode(HeaderSnapshot { state: 0, ..good }, size),
        ),
        (
            "resetting",
            encode(HeaderSnapshot { state: 2, ..good }, size),
        ),
        (
            "bad_region_count",
            encode(
                HeaderSnapshot {
                    region_count: 99,
                    ..good
                },
                size,
            ),
        ),
        ("long_tail", encode(good, size + 4096)),
    ];
    let dir = corpus_dir("segment_header");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in seeds {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
