//! Segment figures: what creating and attaching a segment costs.
use shmem::sync::{AtomicU64, Ordering};
use shmem::{Layout, Segment};

use super::{BenchOpts, Figure, mean_ns};

/// A layout of about the size a small postmaster uses: a counter and 64
/// slots' worth of cache lines.
fn layout() -> Result<Layout, String> {
    Layout::builder()
        .region::<AtomicU64>("counter")
        .array::<[AtomicU64; 16]>("slots", 64)
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let layout = layout()?;
    let name = format!("bench-{}", std::process::id());
    let mut failure = None;

    let create = mean_ns(opts.budget(), || {
        if let Err(e) = Segment::create(&layout) {
            failure.get_or_insert(e.to_string());
        }
    });
    let create_named = mean_ns(opts.budget(), || {
        if let Err(e) = Segment::create_named(&name, &layout) {
            failure.get_or_insert(e.to_string());
        }
    });

    let owner = Segment::create_named(&name, &layout).map_err(|e| e.to_string())?;
    owner
        .region::<AtomicU64>("counter")
        .map_err(|e| e.to_string())?
        .store(42, Ordering::Relaxed);
    let attach = mean_ns(opts.budget(), || match Segment::attach(&name, &layout) {
        // Check what was attached before trusting the time it took.
        Ok(seg) => match seg.region::<AtomicU64>("counter") {
            Ok(c) if c.load(Ordering::Relaxed) == 42 => {}
            _ => {
                failure.get_or_insert("attached segment lost the creator's write".into());
            }
        },
        Err(e) => {
            failure.get_or_insert(e.to_string());
        }
    });
    drop(owner);
    if let Some(e) = failure {
        return Err(e);
    }
    let create_named = Figure::new("segment_create_named_ns", create_named, "ns");
    let attach = Figure::new("segment_attach_ns", attach, "ns");
    let ratio = Figure::ratio(&attach, &create_named);
    Ok(vec![
        Figure::new("segment_create_ns", create, "ns"),
        create_named,
        attach,
        ratio,
        Figure::new("segment_size_bytes", layout.size() as f64, "bytes"),
    ])
}
