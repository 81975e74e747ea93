//! Fixed-layout shared-memory segments for multi-process servers.
//!
//! A [`Layout`] lists named, typed regions; their offsets, the total size and
//! a hash are known before any memory exists. A [`Segment`] maps that layout
//! `MAP_SHARED`, either anonymously (inherited across `fork`) or under a name
//! that unrelated processes of the same user can [`attach`](Segment::attach)
//! to after the header (magic, version, size, layout hash, owner, creator
//! liveness) has been checked. Nothing in a segment is a pointer: regions are
//! found by offset, so every process may map it at a different address.
//!
//! [`sync`] is the single source of atomics for the whole workspace, so the
//! loom models of upper crates exercise their production code.
//!
//! ```
//! use shmem::{Layout, Segment, sync::{AtomicU64, Ordering}};
//!
//! let layout = Layout::builder()
//!     .region::<AtomicU64>("counter")
//!     .array::<AtomicU64>("per_worker", 8)
//!     .build()?;
//! let segment = Segment::create(&layout)?;
//! segment.region::<AtomicU64>("counter")?.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(segment.array::<AtomicU64>("per_worker")?.len(), 8);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
#[cfg(not(loom))]
pub mod fuzzing;
pub mod header;
pub mod layout;
pub mod liveness;
#[cfg(loom)]
pub mod loom_model;
pub mod ring;
#[cfg(not(loom))]
pub mod segment;
pub mod sync;

pub use error::{AttachError, CreateError, RegionError, RemoveError};
pub use header::{HEADER_SIZE, HeaderSnapshot, validate_header};
pub use layout::{
    CACHE_LINE, FORMAT_VERSION, Layout, LayoutBuilder, LayoutError, RegionInfo, RegionKind, ShmSafe,
};
#[cfg(not(loom))]
pub use segment::Segment;
