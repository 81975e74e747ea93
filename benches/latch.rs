//! Criterion benches for the latch (filled in by its issue).
fn main() {}
