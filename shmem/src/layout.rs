//! The layout of a segment, computed before the segment exists.
//!
//! A [`Layout`] is an ordered list of named, typed regions. Each region starts
//! on its own cache line (or the type's alignment, if larger), so two regions
//! never share a line and a contended structure at the start of a region is
//! not disturbed by its neighbour. Offsets are a pure function of the list,
//! so every process that builds the same layout gets the same offsets and the
//! same [`Layout::hash`], which the segment header records and
//! [`Segment::attach`](crate::Segment::attach) checks.
//!
//! ```
//! use shmem::{Layout, sync::AtomicU64};
//!
//! let layout = Layout::builder()
//!     .region::<AtomicU64>("ticks")
//!     .array::<AtomicU64>("heartbeats", 16)
//!     .build()?;
//! let ticks = layout.find("ticks").unwrap();
//! let beats = layout.find("heartbeats").unwrap();
//! assert_eq!(ticks.offset() % shmem::CACHE_LINE, 0);
//! assert!(beats.offset() >= ticks.offset() + ticks.len());
//! assert_eq!(layout.hash(), Layout::builder()
//!     .region::<AtomicU64>("ticks")
//!     .array::<AtomicU64>("heartbeats", 16)
//!     .build()?.hash());
//! # Ok::<(), shmem::LayoutError>(())
//! ```

use std::mem::{align_of, size_of};

use thiserror::Error;

use crate::header::HEADER_SIZE;

/// Cache-line size used to separate regions and contended fields.
///
/// 128 rather than 64: Intel's adjacent-line prefetcher pulls lines in
/// pairs, so two hot words 64 bytes apart still interfere.
pub const CACHE_LINE: usize = 128;

/// Version of the segment format: the header layout and the rules by which
/// offsets are computed. Part of every layout hash.
pub const FORMAT_VERSION: u32 = 1;

/// The largest alignment a region may ask for: the mapping is page aligned,
/// so any offset aligned to at most a page is aligned in memory too.
pub const MAX_ALIGN: usize = 4096;

/// The longest region name, in bytes.
pub const MAX_REGION_NAME: usize = 64;

/// Marks a type that may live in a shared-memory segment.
///
/// # Safety
///
/// Implementing this trait promises all of the following for `Self`:
///
/// - it is `#[repr(C)]`, `#[repr(transparent)]` or a primitive, so its layout
///   is the same in every process built from the same source;
/// - **every** bit pattern is a valid value (so all-zero is too): another
///   process, possibly a buggy one, may have written any bytes at all;
/// - it holds no pointers, references, file descriptors or heap links, whose
///   meaning is private to one process (cross references are indices or
///   offsets);
/// - everything mutated after initialisation is behind atomics or an
///   `UnsafeCell` whose protocol rules out data races, because other
///   processes mutate it through a shared reference;
/// - it has no `Drop` glue that matters: the segment is unmapped, not
///   dropped.
pub unsafe trait ShmSafe: Sync + 'static {
    /// A name for the type, hashed into the layout so that two regions with
    /// the same size but different types do not match. Override it to keep
    /// the hash stable when the type moves to another module.
    fn type_name() -> &'static str {
        std::any::type_name::<Self>()
    }
}

macro_rules! shm_safe_primitives {
    ($($t:ty),* $(,)?) => {$(
        // SAFETY: a primitive integer or atomic integer: fixed layout, every
        // bit pattern valid, no pointers, interior mutability only through
        // atomic operations.
        unsafe impl ShmSafe for $t {}
    )*};
}

shm_safe_primitives!(u8, u16, u32, u64, i32, i64);

#[cfg(not(loom))]
shm_safe_primitives!(
    crate::sync::AtomicU32,
    crate::sync::AtomicU64,
    crate::sync::AtomicUsize,
    crate::sync::AtomicI32,
    crate::sync::AtomicI64,
);

// SAFETY: an array of `ShmSafe` elements is laid out contiguously with no
// padding beyond the elements' own, and inherits each promise element-wise.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}

/// Whether a region holds one value or an array of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// One value of the region's type.
    Single,
    /// `count` consecutive values.
    Array,
}

/// One region of a [`Layout`]: where it is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    name: String,
    type_name: &'static str,
    kind: RegionKind,
    elem_size: usize,
    align: usize,
    count: usize,
    offset: usize,
}

impl RegionInfo {
    /// The region's name, unique within its layout.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The element type's name as hashed (see [`ShmSafe::type_name`]).
    pub fn type_name(&self) -> &'static str {
        self.type_name
    }
    /// One value or an array.
    pub fn kind(&self) -> RegionKind {
        self.kind
    }
    /// `size_of` the element type.
    pub fn elem_size(&self) -> usize {
        self.elem_size
    }
    /// Alignment of the element type.
    pub fn align(&self) -> usize {
        self.align
    }
    /// Number of elements (1 for a single value).
    pub fn count(&self) -> usize {
        self.count
    }
    /// Offset of the region from the start of the segment.
    pub fn offset(&self) -> usize {
        self.offset
    }
    /// Length of the region in bytes.
    pub fn len(&self) -> usize {
        self.elem_size * self.count
    }
    /// Whether the region has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a layout could not be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LayoutError {
    /// Two regions share a name.
    #[error("region name {0:?} is used twice; give each region its own name")]
    DuplicateName(String),
    /// A name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error(
        "region name {0:?} is not valid: use 1 to {MAX_REGION_NAME} characters from [A-Za-z0-9._-]"
    )]
    InvalidName(String),
    /// The type's alignment exceeds what a page-aligned mapping guarantees.
    #[error(
        "region {name:?} needs alignment {align}, more than the {MAX_ALIGN} a mapping guarantees"
    )]
    AlignTooLarge {
        /// The region.
        name: String,
        /// The alignment it asked for.
        align: usize,
    },
    /// The sizes add up past what an address space can hold.
    #[error("region {0:?} makes the segment larger than the address space; reduce its count")]
    TooLarge(String),
}

/// Builds a [`Layout`]; see the module docs.
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LayoutBuilder {
    regions: Vec<RegionInfo>,
    cursor: usize,
    error: Option<LayoutError>,
}

impl LayoutBuilder {
    /// Adds a region holding one `T`.
    pub fn region<T: ShmSafe>(self, name: &str) -> Self {
        self.push(
            name,
            T::type_name(),
            RegionKind::Single,
            size_of::<T>(),
            align_of::<T>(),
            1,
        )
    }

    /// Adds a region holding `count` consecutive `T`s.
    pub fn array<T: ShmSafe>(self, name: &str, count: usize) -> Self {
        self.push(
            name,
            T::type_name(),
            RegionKind::Array,
            size_of::<T>(),
            align_of::<T>(),
            count,
        )
    }

    fn push(
        mut self,
        name: &str,
        type_name: &'static str,
        kind: RegionKind,
        elem_size: usize,
        align: usize,
        count: usize,
    ) -> Self {
        if self.error.is_some() {
            return self;
        }
        if let Err(e) = self.place(name, type_name, kind, elem_size, align, count) {
            self.error = Some(e);
        }
        self
    }

    fn place(
        &mut self,
        name: &str,
        type_name: &'static str,
        kind: RegionKind,
        elem_size: usize,
        align: usize,
        count: usize,
    ) -> Result<(), LayoutError> {
        if !valid_name(name) {
            return Err(LayoutError::InvalidName(name.to_owned()));
        }
        if self.regions.iter().any(|r| r.name == name) {
            return Err(LayoutError::DuplicateName(name.to_owned()));
        }
        if align > MAX_ALIGN || !align.is_power_of_two() {
            return Err(LayoutError::AlignTooLarge {
                name: name.to_owned(),
                align,
            });
        }
        let too_large = || LayoutError::TooLarge(name.to_owned());
        let offset = align_up(self.cursor, align.max(CACHE_LINE)).ok_or_else(too_large)?;
        let len = elem_size.checked_mul(count).ok_or_else(too_large)?;
        let end = offset.checked_add(len).ok_or_else(too_large)?;
        // Keep the total within isize::MAX so slices over it are sound.
        if end > isize::MAX as usize / 2 {
            return Err(too_large());
        }
        self.cursor = end;
        self.regions.push(RegionInfo {
            name: name.to_owned(),
            type_name,
            kind,
            elem_size,
            align,
            count,
            offset,
        });
        Ok(())
    }

    /// Finishes the layout, or reports the first mistake made while
    /// building it.
    pub fn build(self) -> Result<Layout, LayoutError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        // The segment ends on a cache-line boundary so that the last region's
        // tail is not shared with anything else in a neighbouring mapping.
        let size = align_up(self.cursor, CACHE_LINE).expect("cursor was bounded in place()");
        let hash = layout_hash(&self.regions, size);
        Ok(Layout {
            regions: self.regions,
            size,
            hash,
        })
    }
}

/// The regions of a segment, their offsets, total size and hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    regions: Vec<RegionInfo>,
    size: usize,
    hash: u64,
}

impl Layout {
    /// Starts an empty layout. The header occupies the first
    /// [`HEADER_SIZE`] bytes; regions follow it.
    pub fn builder() -> LayoutBuilder {
        LayoutBuilder {
            regions: Vec::new(),
            cursor: HEADER_SIZE,
            error: None,
        }
    }

    /// Total size of a segment with this layout, header included.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Hash of the format version and every region's name, type, size,
    /// alignment and count. Equal layouts hash equally in every process.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// The regions, in the order they were added (and of increasing offset).
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// The region called `name`, if any.
    pub fn find(&self, name: &str) -> Option<&RegionInfo> {
        self.regions.iter().find(|r| r.name == name)
    }
}

/// Whether `name` is 1 to [`MAX_REGION_NAME`] bytes of `[A-Za-z0-9._-]`, the
/// rule for region and segment names alike.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_REGION_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn align_up(value: usize, align: usize) -> Option<usize> {
    debug_assert!(align.is_power_of_two());
    Some(value.checked_add(align - 1)? & !(align - 1))
}

/// 64-bit FNV-1a: tiny, deterministic across processes and builds (unlike
/// `std`'s randomly keyed hasher), and good enough to tell layouts apart.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    /// Length-prefixed, so ("ab","c") and ("a","bc") hash differently.
    fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.bytes(s.as_bytes());
    }
}

fn layout_hash(regions: &[RegionInfo], size: usize) -> u64 {
    let mut h = Fnv1a(Fnv1a::OFFSET_BASIS);
    h.u64(u64::from(FORMAT_VERSION));
    h.u64(HEADER_SIZE as u64);
    h.u64(size as u64);
    h.u64(regions.len() as u64);
    for r in regions {
        h.str(&r.name);
        h.str(r.type_name);
        h.u64(r.kind as u64);
        h.u64(r.elem_size as u64);
        h.u64(r.align as u64);
        h.u64(r.count as u64);
        h.u64(r.offset as u64);
    }
    h.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    struct Pair {
        a: u32,
        b: u32,
    }
    // SAFETY: two u32s, repr(C), any bits valid, no pointers.
    unsafe impl ShmSafe for Pair {}

    #[repr(C, align(256))]
    struct Wide([u64; 4]);
    // SAFETY: an array of u64 with larger alignment; any bits valid.
    unsafe impl ShmSafe for Wide {}

    #[repr(C, align(8192))]
    struct Huge(u8);
    // SAFETY: one byte with oversized alignment; any bits valid.
    unsafe impl ShmSafe for Huge {}

    fn base() -> LayoutBuilder {
        Layout::builder().region::<u64>("a").array::<Pair>("b", 8)
    }

    #[test]
    fn regions_are_cache_line_aligned_and_disjoint() {
        let l = base().region::<Wide>("c").build().unwrap();
        let mut end = HEADER_SIZE;
        for r in l.regions() {
            assert_eq!(r.offset() % CACHE_LINE, 0, "{r:?}");
            assert_eq!(r.offset() % r.align(), 0, "{r:?}");
            assert!(r.offset() >= end, "{r:?} overlaps the previous region");
            end = r.offset() + r.len();
        }
        assert!(l.size() >= end);
        assert_eq!(l.size() % CACHE_LINE, 0);
        assert_eq!(l.find("c").unwrap().offset() % 256, 0);
    }

    #[test]
    fn same_inputs_give_same_hash() {
        assert_eq!(
            base().build().unwrap().hash(),
            base().build().unwrap().hash()
        );
        assert_eq!(base().build().unwrap(), base().build().unwrap());
    }

    #[test]
    fn hash_changes_with_count_type_size_name_and_order() {
        let h = base().build().unwrap().hash();
        let variants = [
            Layout::builder().region::<u64>("a").array::<Pair>("b", 9),
            Layout::builder().region::<u64>("a").array::<u64>("b", 8),
            Layout::builder().region::<i64>("a").array::<Pair>("b", 8),
            Layout::builder().region::<u32>("a").array::<Pair>("b", 8),
            Layout::builder().region::<u64>("x").array::<Pair>("b", 8),
            Layout::builder().array::<Pair>("b", 8).region::<u64>("a"),
            base().region::<u8>("c"),
            Layout::builder().region::<u64>("a").region::<Pair>("b"),
        ];
        for (i, v) in variants.into_iter().enumerate() {
            assert_ne!(v.build().unwrap().hash(), h, "variant {i} collides");
        }
    }

    #[test]
    fn bad_names_and_duplicates_are_rejected() {
        assert_eq!(
            base().region::<u8>("a").build(),
            Err(LayoutError::DuplicateName("a".into()))
        );
        for bad in ["", "has space", "slash/", &"x".repeat(MAX_REGION_NAME + 1)] {
            assert_eq!(
                Layout::builder().region::<u8>(bad).build(),
                Err(LayoutError::InvalidName(bad.into()))
            );
        }
    }

    #[test]
    fn the_first_error_wins_and_sizes_cannot_overflow() {
        let e = Layout::builder()
            .array::<u64>("huge", usize::MAX / 4)
            .region::<u8>("")
            .build();
        assert_eq!(e, Err(LayoutError::TooLarge("huge".into())));
        let e = Layout::builder().region::<Huge>("r").build();
        assert!(matches!(
            e,
            Err(LayoutError::AlignTooLarge { align: 8192, .. })
        ));
    }
}
