//! Typed errors for building, creating, attaching to and removing segments.

use thiserror::Error;

use crate::layout::MAX_REGION_NAME;

/// Why [`Segment::create`](crate::Segment::create) or
/// [`Segment::create_named`](crate::Segment::create_named) failed.
#[derive(Debug, Error)]
pub enum CreateError {
    /// The segment name breaks the naming rule.
    #[error(
        "segment name {0:?} is not valid: use 1 to {MAX_REGION_NAME} characters from [A-Za-z0-9._-]"
    )]
    InvalidName(String),
    /// A segment of that name exists already; it is never reused silently.
    #[error(
        "a segment named {name:?} already exists: another postmaster may be using it; if its \
         creator has died, remove it with `Segment::remove_stale` (`postmaster cleanup --name {name}`)"
    )]
    AlreadyExists {
        /// The segment name.
        name: String,
    },
    /// A system call failed.
    #[error("creating the segment failed in {op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Why [`Segment::attach`](crate::Segment::attach) refused a segment, or why
/// [`validate_header`](crate::validate_header) rejected a header.
#[derive(Debug, Error)]
pub enum AttachError {
    /// The segment name breaks the naming rule.
    #[error(
        "segment name {0:?} is not valid: use 1 to {MAX_REGION_NAME} characters from [A-Za-z0-9._-]"
    )]
    InvalidName(String),
    /// No segment of that name exists.
    #[error("no segment named {name:?}: is its postmaster running, under this name?")]
    NotFound {
        /// The segment name.
        name: String,
    },
    /// The system refused to open the segment.
    #[error(
        "permission denied opening segment {name:?}: it belongs to another user; run as that user"
    )]
    PermissionDenied {
        /// The segment name.
        name: String,
    },
    /// The segment opened, but another user owns it.
    #[error(
        "segment {name:?} is owned by uid {owner}, not by this process's uid {ours}: refusing to \
         share memory with another user; run as uid {owner}"
    )]
    ForeignOwner {
        /// The segment name.
        name: String,
        /// The owner's uid.
        owner: u32,
        /// Our effective uid.
        ours: u32,
    },
    /// Fewer bytes than a header: not a segment, or a creator that died
    /// before sizing it.
    #[error(
        "segment is {size} bytes, smaller than the {min}-byte header: not a postmaster segment, \
         or its creator died while creating it; remove it if nothing uses it"
    )]
    TooSmall {
        /// The segment's size.
        size: u64,
        /// The header's size.
        min: u64,
    },
    /// The header's size field disagrees with the segment's real size.
    #[error(
        "the header says the segment is {header} bytes but it is {actual}: it was truncated or \
         overwritten; stop its postmaster and remove it"
    )]
    SizeMismatch {
        /// Size recorded in the header.
        header: u64,
        /// Size of the shared-memory object.
        actual: u64,
    },
    /// The first eight bytes are not the segment magic.
    #[error("bad magic {found:#018x}: this is not a postmaster segment")]
    BadMagic {
        /// The bytes found, as a native-endian integer.
        found: u64,
    },
    /// The segment was written by a build with another format.
    #[error(
        "segment format version {found}, but this build reads version {expected}: attach with a \
         build of the same postmaster version"
    )]
    VersionMismatch {
        /// Version in the header.
        found: u32,
        /// Version this build writes.
        expected: u32,
    },
    /// The regions differ from the caller's layout.
    #[error(
        "segment layout hash {found:#018x} differs from this program's {expected:#018x}: the \
         creator declared other regions, types or counts; attach with the same layout"
    )]
    LayoutMismatch {
        /// Hash in the header.
        found: u64,
        /// Hash of the caller's layout.
        expected: u64,
    },
    /// A header field that cannot be right for this format.
    #[error("segment header is corrupt ({0}); stop its postmaster and remove the segment")]
    Corrupt(&'static str),
    /// The creator has not finished initialising, or is resetting it.
    #[error(
        "segment is not ready (state {state}): its creator is initialising or resetting it; retry shortly"
    )]
    NotReady {
        /// The state word found.
        state: u32,
    },
    /// The creator is dead: nobody will ever reset or serve this segment.
    #[error(
        "segment {name:?} is stale: its creator, pid {pid}, has exited; remove it with \
         `Segment::remove_stale` (`postmaster cleanup --name {name}`)"
    )]
    Stale {
        /// The segment name.
        name: String,
        /// The creator's pid.
        pid: u32,
    },
    /// A system call failed.
    #[error("attaching failed in {op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Why [`Segment::remove_stale`](crate::Segment::remove_stale) did not remove
/// a segment.
#[derive(Debug, Error)]
pub enum RemoveError {
    /// The segment name breaks the naming rule.
    #[error(
        "segment name {0:?} is not valid: use 1 to {MAX_REGION_NAME} characters from [A-Za-z0-9._-]"
    )]
    InvalidName(String),
    /// No segment of that name exists.
    #[error("no segment named {name:?}; nothing to remove")]
    NotFound {
        /// The segment name.
        name: String,
    },
    /// The creator is alive; removing the name would strand its attachers.
    #[error(
        "segment {name:?} is in use: its creator, pid {pid}, is alive; stop it instead of removing its segment"
    )]
    CreatorAlive {
        /// The segment name.
        name: String,
        /// The creator's pid.
        pid: u32,
    },
    /// The object is not a recognisable segment; it is left alone.
    #[error("refusing to remove {name:?}: {reason}")]
    Unrecognised {
        /// The segment name.
        name: String,
        /// Why its header was not accepted.
        #[source]
        reason: AttachError,
    },
    /// A system call failed.
    #[error("removing the segment failed in {op}: {source}")]
    Io {
        /// The operation that failed.
        op: &'static str,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
}

/// Why a typed region could not be handed out.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegionError {
    /// The layout has no region of that name.
    #[error("no region named {0:?} in this segment's layout")]
    Unknown(String),
    /// The region exists but holds another type, or is an array where one
    /// value was asked for (or the reverse).
    #[error("region {name:?} holds {found}, not {wanted}")]
    TypeMismatch {
        /// The region.
        name: String,
        /// What the layout says it holds.
        found: String,
        /// What the caller asked for.
        wanted: String,
    },
}
