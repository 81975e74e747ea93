//! The segment header: its byte layout, a plain snapshot of it, and the
//! validation every attacher runs before trusting anything else.
//!
//! The header is the first [`HEADER_SIZE`] bytes of every segment:
//!
//! | offset | field            | written by                       |
//! |-------:|------------------|----------------------------------|
//! | 0      | magic            | creator, once, before `state`    |
//! | 8      | format version   | creator, once                    |
//! | 12     | header size      | creator, once                    |
//! | 16     | layout hash      | creator, once                    |
//! | 24     | total size       | creator, once                    |
//! | 32     | creator pid      | creator, once                    |
//! | 36     | creator uid      | creator, once                    |
//! | 40     | creator start    | creator, once (clock ticks)      |
//! | 48     | generation       | creator, on every reset          |
//! | 56     | state            | creator: last on create/reset    |
//! | 60     | region count     | creator, once                    |
//!
//! Every field is native-endian (a segment never leaves its machine). The
//! creator fills the fields and publishes them by storing [`STATE_READY`]
//! with release ordering; an attacher loads the state with acquire ordering
//! before reading anything else. Validation works on a [`HeaderSnapshot`],
//! a plain copy, so the same function checks a live header and arbitrary
//! bytes from the fuzzer.

use crate::error::AttachError;
use crate::layout::{FORMAT_VERSION, Layout};

/// Size of the header at the start of every segment; regions start after it.
pub const HEADER_SIZE: usize = 128;

/// The first eight bytes of every segment.
pub const MAGIC: u64 = u64::from_ne_bytes(*b"pmSHMseg");

/// `state`: zero, as a fresh object is; the creator has not finished.
pub const STATE_INITIALIZING: u32 = 0;
/// `state`: header and regions are initialised; attach may proceed.
pub const STATE_READY: u32 = 1;
/// `state`: the creator is zeroing the regions after a crash.
pub const STATE_RESETTING: u32 = 2;

pub(crate) const OFF_MAGIC: usize = 0;
pub(crate) const OFF_VERSION: usize = 8;
pub(crate) const OFF_HEADER_SIZE: usize = 12;
pub(crate) const OFF_LAYOUT_HASH: usize = 16;
pub(crate) const OFF_TOTAL_SIZE: usize = 24;
pub(crate) const OFF_CREATOR_PID: usize = 32;
pub(crate) const OFF_CREATOR_UID: usize = 36;
pub(crate) const OFF_CREATOR_START: usize = 40;
pub(crate) const OFF_GENERATION: usize = 48;
pub(crate) const OFF_STATE: usize = 56;
pub(crate) const OFF_REGION_COUNT: usize = 60;

/// A plain copy of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HeaderSnapshot {
    /// Must equal [`MAGIC`].
    pub magic: u64,
    /// Must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Must equal [`HEADER_SIZE`].
    pub header_size: u32,
    /// Hash of the creator's [`Layout`].
    pub layout_hash: u64,
    /// Size of the whole segment in bytes.
    pub total_size: u64,
    /// The creating process.
    pub creator_pid: u32,
    /// The creating process's effective uid.
    pub creator_uid: u32,
    /// The creator's start time in clock ticks since boot (0 if unknown),
    /// so that a recycled pid is not mistaken for the creator.
    pub creator_start: u64,
    /// Bumped by every reset.
    pub generation: u64,
    /// One of the `STATE_*` constants.
    pub state: u32,
    /// Number of regions in the creator's layout.
    pub region_count: u32,
}

impl HeaderSnapshot {
    /// Reads a snapshot from the first [`HEADER_SIZE`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttachError> {
        let Some(h) = bytes.get(..HEADER_SIZE) else {
            return Err(AttachError::TooSmall {
                size: bytes.len() as u64,
                min: HEADER_SIZE as u64,
            });
        };
        let u32_at = |off: usize| u32::from_ne_bytes(h[off..off + 4].try_into().unwrap());
        let u64_at = |off: usize| u64::from_ne_bytes(h[off..off + 8].try_into().unwrap());
        Ok(Self {
            magic: u64_at(OFF_MAGIC),
            format_version: u32_at(OFF_VERSION),
            header_size: u32_at(OFF_HEADER_SIZE),
            layout_hash: u64_at(OFF_LAYOUT_HASH),
            total_size: u64_at(OFF_TOTAL_SIZE),
            creator_pid: u32_at(OFF_CREATOR_PID),
            creator_uid: u32_at(OFF_CREATOR_UID),
            creator_start: u64_at(OFF_CREATOR_START),
            generation: u64_at(OFF_GENERATION),
            state: u32_at(OFF_STATE),
            region_count: u32_at(OFF_REGION_COUNT),
        })
    }

    /// Writes the snapshot in header format into the first [`HEADER_SIZE`]
    /// bytes of `out` (for tests and for building fuzz seeds).
    pub fn write_to(&self, out: &mut [u8; HEADER_SIZE]) {
        out.fill(0);
        let mut put = |off: usize, bytes: &[u8]| out[off..off + bytes.len()].copy_from_slice(bytes);
        put(OFF_MAGIC, &self.magic.to_ne_bytes());
        put(OFF_VERSION, &self.format_version.to_ne_bytes());
        put(OFF_HEADER_SIZE, &self.header_size.to_ne_bytes());
        put(OFF_LAYOUT_HASH, &self.layout_hash.to_ne_bytes());
        put(OFF_TOTAL_SIZE, &self.total_size.to_ne_bytes());
        put(OFF_CREATOR_PID, &self.creator_pid.to_ne_bytes());
        put(OFF_CREATOR_UID, &self.creator_uid.to_ne_bytes());
        put(OFF_CREATOR_START, &self.creator_start.to_ne_bytes());
        put(OFF_GENERATION, &self.generation.to_ne_bytes());
        put(OFF_STATE, &self.state.to_ne_bytes());
        put(OFF_REGION_COUNT, &self.region_count.to_ne_bytes());
    }

    /// The header a creator writes for `layout`, ready to attach.
    pub fn for_layout(layout: &Layout) -> Self {
        Self {
            magic: MAGIC,
            format_version: FORMAT_VERSION,
            header_size: HEADER_SIZE as u32,
            layout_hash: layout.hash(),
            total_size: layout.size() as u64,
            creator_pid: 0,
            creator_uid: 0,
            creator_start: 0,
            generation: 1,
            state: STATE_READY,
            region_count: layout.regions().len() as u32,
        }
    }

    /// Checks the snapshot against `layout` for a segment of `actual_size`
    /// bytes. Creator liveness and ownership are checked by the caller,
    /// which has the process table and the file's metadata.
    pub fn validate(&self, layout: &Layout, actual_size: u64) -> Result<(), AttachError> {
        if self.magic != MAGIC {
            return Err(AttachError::BadMagic { found: self.magic });
        }
        if self.format_version != FORMAT_VERSION {
            return Err(AttachError::VersionMismatch {
                found: self.format_version,
                expected: FORMAT_VERSION,
            });
        }
        if self.header_size as usize != HEADER_SIZE {
            return Err(AttachError::Corrupt(
                "header size field is wrong for this version",
            ));
        }
        if self.total_size != actual_size {
            return Err(AttachError::SizeMismatch {
                header: self.total_size,
                actual: actual_size,
            });
        }
        if self.layout_hash != layout.hash() {
            return Err(AttachError::LayoutMismatch {
                found: self.layout_hash,
                expected: layout.hash(),
            });
        }
        // The hash covers both, so these only fail on a forged hash; check
        // anyway, because the region offsets we hand out depend on them.
        if self.total_size != layout.size() as u64
            || self.region_count as usize != layout.regions().len()
        {
            return Err(AttachError::Corrupt(
                "size or region count disagrees with the layout hash",
            ));
        }
        if self.state != STATE_READY {
            return Err(AttachError::NotReady { state: self.state });
        }
        Ok(())
    }
}

/// Validates arbitrary bytes, the start of a segment `bytes.len()` long, as
/// a header for `layout`. This is what `attach` runs on a live header (minus
/// the ownership and liveness checks), exposed for the fuzzer and for tools.
///
/// ```
/// use shmem::{AttachError, HeaderSnapshot, Layout, validate_header};
///
/// let layout = Layout::builder().region::<u64>("n").build()?;
/// let mut bytes = vec![0u8; layout.size()];
/// let mut header = [0u8; shmem::HEADER_SIZE];
/// HeaderSnapshot::for_layout(&layout).write_to(&mut header);
/// bytes[..header.len()].copy_from_slice(&header);
/// assert!(validate_header(&bytes, &layout).is_ok());
///
/// bytes[0] ^= 0xff;
/// assert!(matches!(validate_header(&bytes, &layout), Err(AttachError::BadMagic { .. })));
/// # Ok::<(), shmem::LayoutError>(())
/// ```
pub fn validate_header(bytes: &[u8], layout: &Layout) -> Result<HeaderSnapshot, AttachError> {
    let snapshot = HeaderSnapshot::parse(bytes)?;
    snapshot.validate(layout, bytes.len() as u64)?;
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::builder()
            .region::<u64>("a")
            .array::<u32>("b", 10)
            .build()
            .unwrap()
    }

    fn good(layout: &Layout) -> Vec<u8> {
        let mut bytes = vec![0u8; layout.size()];
        let mut h = [0u8; HEADER_SIZE];
        HeaderSnapshot::for_layout(layout).write_to(&mut h);
        bytes[..HEADER_SIZE].copy_from_slice(&h);
        bytes
    }

    #[test]
    fn parse_inverts_write_to() {
        let s = HeaderSnapshot {
            magic: 1,
            format_version: 2,
            header_size: 3,
            layout_hash: 4,
            total_size: 5,
            creator_pid: 6,
            creator_uid: 7,
            creator_start: 8,
            generation: 9,
            state: 10,
            region_count: 11,
        };
        let mut h = [0u8; HEADER_SIZE];
        s.write_to(&mut h);
        assert_eq!(HeaderSnapshot::parse(&h).unwrap(), s);
    }

    #[test]
    fn each_field_is_checked() {
        let l = layout();
        assert!(validate_header(&good(&l), &l).is_ok());
        let patch = |off: usize, bytes: &[u8]| {
            let mut b = good(&l);
            b[off..off + bytes.len()].copy_from_slice(bytes);
            validate_header(&b, &l).unwrap_err()
        };
        assert!(matches!(
            patch(OFF_MAGIC, b"notmagic"),
            AttachError::BadMagic { .. }
        ));
        assert!(matches!(
            patch(OFF_VERSION, &99u32.to_ne_bytes()),
            AttachError::VersionMismatch { found: 99, .. }
        ));
        assert!(matches!(
            patch(OFF_HEADER_SIZE, &64u32.to_ne_bytes()),
            AttachError::Corrupt(_)
        ));
        assert!(matches!(
            patch(OFF_LAYOUT_HASH, &7u64.to_ne_bytes()),
            AttachError::LayoutMismatch { found: 7, .. }
        ));
        assert!(matches!(
            patch(OFF_TOTAL_SIZE, &4096u64.to_ne_bytes()),
            AttachError::SizeMismatch { header: 4096, .. }
        ));
        assert!(matches!(
            patch(OFF_STATE, &STATE_RESETTING.to_ne_bytes()),
            AttachError::NotReady {
                state: STATE_RESETTING
            }
        ));
        assert!(matches!(
            patch(OFF_REGION_COUNT, &9u32.to_ne_bytes()),
            AttachError::Corrupt(_)
        ));
    }

    #[test]
    fn short_input_is_too_small_not_a_panic() {
        let l = layout();
        for len in [0, 1, HEADER_SIZE - 1] {
            assert!(matches!(
                validate_header(&good(&l)[..len], &l),
                Err(AttachError::TooSmall { .. })
            ));
        }
        // A whole header but a truncated segment.
        assert!(matches!(
            validate_header(&good(&l)[..HEADER_SIZE], &l),
            Err(AttachError::SizeMismatch { .. })
        ));
    }
}
