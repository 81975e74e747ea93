//! Segment benches.
fn main() {}
