//! Arbitrary operation sequences on the SPSC, MPSC and byte rings, checked
//! against a `VecDeque` model (see `shmem::fuzzing::ring_ops`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shmem::fuzzing::ring_ops(data));
