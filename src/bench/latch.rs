//! Latch figures (filled in by the latch issue).
use super::{BenchOpts, Figure};

/// Runs the group.
pub fn run(_opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    Ok(Vec::new())
}
