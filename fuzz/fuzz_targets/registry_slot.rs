//! Arbitrary bytes in registration slots, read the way the postmaster
//! reads them (see `bgw::fuzzing::registry_slot`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bgw::fuzzing::registry_slot(data));
