//! Criterion benches for the ring (filled in by its issue).
fn main() {}
