//! Keeps the README's shared-memory example compiling and true.
#![cfg(not(loom))]

#[test]
fn readme_example_runs() -> Result<(), Box<dyn std::error::Error>> {
    use shmem::{
        Layout, Segment,
        sync::{AtomicU64, Ordering},
    };

    let layout = Layout::builder()
        .region::<AtomicU64>("counter")
        .array::<AtomicU64>("per_worker", 8)
        .build()?;
    let name = format!("readme-{}", std::process::id());
    let segment = Segment::create_named(&name, &layout)?;
    segment
        .region::<AtomicU64>("counter")?
        .fetch_add(1, Ordering::Relaxed);

    let attached = Segment::attach(&name, &layout)?;
    assert_eq!(
        attached
            .region::<AtomicU64>("counter")?
            .load(Ordering::Relaxed),
        1
    );
    Ok(())
}
