//! What a segment costs to create and attach, next to the anonymous mapping
//! people reach for first (`memmap2::MmapMut::map_anon`, which is private
//! copy-on-write and so useless across `fork`, but is the floor for "get
//! some zeroed memory from the kernel").

use criterion::{Criterion, criterion_group, criterion_main};
use shmem::sync::{AtomicU64, Ordering};
use shmem::{Layout, Segment};

fn layout() -> Layout {
    Layout::builder()
        .region::<AtomicU64>("counter")
        .array::<[AtomicU64; 16]>("slots", 64)
        .build()
        .expect("valid layout")
}

fn create(c: &mut Criterion) {
    let layout = layout();
    // Correctness before timing: a created segment is usable and zeroed.
    let seg = Segment::create(&layout).expect("create");
    assert_eq!(
        seg.region::<AtomicU64>("counter")
            .expect("region")
            .load(Ordering::Relaxed),
        0
    );
    drop(seg);

    let mut group = c.benchmark_group("segment_create");
    group.bench_function("map_anon_baseline", |b| {
        b.iter(|| memmap2::MmapMut::map_anon(layout.size()).expect("map_anon"))
    });
    group.bench_function("memfd", |b| {
        b.iter(|| Segment::create(&layout).expect("create"))
    });
    let name = format!("crit-{}", std::process::id());
    group.bench_function("named", |b| {
        b.iter(|| Segment::create_named(&name, &layout).expect("create_named"))
    });
    group.finish();
}

fn attach(c: &mut Criterion) {
    let layout = layout();
    let name = format!("crit-attach-{}", std::process::id());
    let owner = Segment::create_named(&name, &layout).expect("create_named");
    owner
        .region::<AtomicU64>("counter")
        .expect("region")
        .store(7, Ordering::Relaxed);
    let seen = Segment::attach(&name, &layout).expect("attach");
    assert_eq!(
        seen.region::<AtomicU64>("counter")
            .expect("region")
            .load(Ordering::Relaxed),
        7
    );

    let mut group = c.benchmark_group("segment_attach");
    group.bench_function("named", |b| {
        b.iter(|| Segment::attach(&name, &layout).expect("attach"))
    });
    group.finish();
}

criterion_group!(benches, create, attach);
criterion_main!(benches);
