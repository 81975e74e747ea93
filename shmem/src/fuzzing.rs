//! Entry points for the fuzz targets in `fuzz/`, kept here so that a stable
//! test can replay the committed corpora without nightly or libFuzzer.
//!
//! Each function takes arbitrary bytes, must never panic on them, and
//! asserts the properties that must hold whatever the input.

use crate::header::{HEADER_SIZE, HeaderSnapshot, validate_header};
use crate::layout::Layout;

/// The layout every `segment_header` input is checked against.
pub fn segment_header_layout() -> Layout {
    Layout::builder()
        .region::<u64>("counter")
        .array::<u64>("slots", 16)
        .build()
        .expect("a fixed, valid layout")
}

/// Fuzz target `segment_header`: validates `data` as the start of a segment.
///
/// Properties: no panic; an accepted header describes exactly the input it
/// came from; any input shorter than a header is rejected.
pub fn segment_header(data: &[u8]) {
    let layout = segment_header_layout();
    if let Ok(snapshot) = validate_header(data, &layout) {
        assert!(data.len() >= HEADER_SIZE);
        assert_eq!(snapshot.total_size, data.len() as u64);
        assert_eq!(snapshot.layout_hash, layout.hash());
        assert_eq!(
            snapshot,
            HeaderSnapshot::parse(data).expect("accepted once")
        );
    }
    if data.len() < HEADER_SIZE {
        assert!(validate_header(data, &layout).is_err());
    }
}
