//! Arbitrary event sequences into the postmaster's core, checked against
//! the model world after every step (see `bgw::fuzzing::core_events`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bgw::fuzzing::core_events(data));
