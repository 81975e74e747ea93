//! Arbitrary bytes as a ring's shared state, then bounded operations on it
//! (see `shmem::fuzzing::ring_decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmem::fuzzing::ring_decode(data));
