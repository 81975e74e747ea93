//! A shared-memory segment: one `MAP_SHARED` mapping with a header and the
//! regions of a [`Layout`].
//!
//! Two kinds of segment exist:
//!
//! - **anonymous** ([`Segment::create`]): a memfd, inherited by children
//!   across `fork`. `memmap2`'s `map_anon` is *not* an option: it is a
//!   private copy-on-write mapping, so a forked child's writes would never
//!   reach its parent;
//! - **named** ([`Segment::create_named`]): a POSIX shared-memory object
//!   (`/dev/shm/postmaster.<name>`), created exclusively with mode 0600, that
//!   unrelated processes of the same user [`attach`](Segment::attach) to. The
//!   creating process removes the name when it drops the segment.
//!
//! Creation writes the header last-field-first: every other field, then the
//! state word with release ordering. An attacher checks the object's owner
//! and size, maps it, loads the state with acquire ordering and validates
//! every header field against its own layout before it hands out a region.
//! Region offsets and alignment are checked once, when the `Segment` value
//! is built, so [`Segment::region`] and [`Segment::array`] only look up a
//! name and compare types.
//!
//! ```
//! use shmem::{Layout, Segment, sync::{AtomicU64, Ordering}};
//!
//! let layout = Layout::builder().region::<AtomicU64>("hits").build()?;
//! let segment = Segment::create(&layout)?;
//! let hits: &AtomicU64 = segment.region("hits")?;
//! hits.fetch_add(1, Ordering::Relaxed);
//! assert_eq!(hits.load(Ordering::Relaxed), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Shared memory outlives the Rust objects that map it and is written by
//! other processes, so the region types are restricted to [`ShmSafe`] ones:
//! any bytes are a valid value, and mutation goes through atomics.

use std::fs::File;
use std::mem::{align_of, offset_of, size_of};
use std::os::unix::fs::MetadataExt;

use memmap2::MmapMut;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, geteuid, getpid};

use crate::error::{AttachError, CreateError, RegionError, RemoveError};
use crate::header::{self, HEADER_SIZE, HeaderSnapshot, STATE_READY, STATE_RESETTING};
use crate::layout::{Layout, RegionInfo, RegionKind, ShmSafe, valid_name};
use crate::liveness;
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// The header as it sits in the segment. Field order and offsets are those
/// of the table in [`crate::header`]; the assertions below keep them so.
#[repr(C, align(128))]
struct SegmentHeader {
    magic: AtomicU64,
    format_version: AtomicU32,
    header_size: AtomicU32,
    layout_hash: AtomicU64,
    total_size: AtomicU64,
    creator_pid: AtomicU32,
    creator_uid: AtomicU32,
    creator_start: AtomicU64,
    generation: AtomicU64,
    state: AtomicU32,
    region_count: AtomicU32,
}

const _: () = {
    assert!(size_of::<SegmentHeader>() == HEADER_SIZE);
    assert!(offset_of!(SegmentHeader, magic) == header::OFF_MAGIC);
    assert!(offset_of!(SegmentHeader, format_version) == header::OFF_VERSION);
    assert!(offset_of!(SegmentHeader, header_size) == header::OFF_HEADER_SIZE);
    assert!(offset_of!(SegmentHeader, layout_hash) == header::OFF_LAYOUT_HASH);
    assert!(offset_of!(SegmentHeader, total_size) == header::OFF_TOTAL_SIZE);
    assert!(offset_of!(SegmentHeader, creator_pid) == header::OFF_CREATOR_PID);
    assert!(offset_of!(SegmentHeader, creator_uid) == header::OFF_CREATOR_UID);
    assert!(offset_of!(SegmentHeader, creator_start) == header::OFF_CREATOR_START);
    assert!(offset_of!(SegmentHeader, generation) == header::OFF_GENERATION);
    assert!(offset_of!(SegmentHeader, state) == header::OFF_STATE);
    assert!(offset_of!(SegmentHeader, region_count) == header::OFF_REGION_COUNT);
};

impl SegmentHeader {
    /// Copies the header field by field. The acquire load of `state` comes
    /// first and pairs with the release store in [`Segment::publish`], so a
    /// snapshot that says READY holds the fields the creator wrote before.
    fn snapshot(&self) -> HeaderSnapshot {
        let state = self.state.load(Ordering::Acquire);
        // Relaxed: ordered after the acquire load above; nothing else to pair.
        HeaderSnapshot {
            magic: self.magic.load(Ordering::Relaxed),
            format_version: self.format_version.load(Ordering::Relaxed),
            header_size: self.header_size.load(Ordering::Relaxed),
            layout_hash: self.layout_hash.load(Ordering::Relaxed),
            total_size: self.total_size.load(Ordering::Relaxed),
            creator_pid: self.creator_pid.load(Ordering::Relaxed),
            creator_uid: self.creator_uid.load(Ordering::Relaxed),
            creator_start: self.creator_start.load(Ordering::Relaxed),
            generation: self.generation.load(Ordering::Relaxed),
            state,
            region_count: self.region_count.load(Ordering::Relaxed),
        }
    }
}

/// A mapped segment; see the module docs.
#[derive(Debug)]
pub struct Segment {
    map: MmapMut,
    layout: Layout,
    /// The name, for a named segment.
    name: Option<String>,
    /// The process that created the named object and removes it on drop. A
    /// forked child inherits this value but is not that process, so a child
    /// that drops its copy leaves the name in place.
    remover: Option<Pid>,
}

impl Segment {
    /// Creates an anonymous segment backed by a memfd and mapped shared, so
    /// children forked after this call see the same bytes as the creator.
    pub fn create(layout: &Layout) -> Result<Self, CreateError> {
        let fd = memfd_create(c"postmaster", MFdFlags::MFD_CLOEXEC)
            .map_err(create_io("memfd_create"))?;
        let file = File::from(fd);
        file.set_len(layout.size() as u64)
            .map_err(|source| CreateError::Io {
                op: "ftruncate",
                source,
            })?;
        // SAFETY: the memfd was created just now and no other process holds
        // it, so nothing can truncate it under the mapping.
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|source| CreateError::Io { op: "mmap", source })?;
        Ok(Self::publish(map, layout, None))
    }

    /// Creates the named segment `/dev/shm/postmaster.<name>`, exclusively
    /// (`O_CREAT | O_EXCL | O_NOFOLLOW`) and readable only by this user.
    /// The name is removed when this process drops the segment.
    pub fn create_named(name: &str, layout: &Layout) -> Result<Self, CreateError> {
        if !valid_name(name) {
            return Err(CreateError::InvalidName(name.to_owned()));
        }
        let path = object_path(name);
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match shm_open(path.as_str(), flags, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(fd) => fd,
            Err(Errno::EEXIST) => {
                return Err(CreateError::AlreadyExists {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(create_io("shm_open")(e)),
        };
        let file = File::from(fd);
        let sized = file
            .set_len(layout.size() as u64)
            .map_err(|source| CreateError::Io {
                op: "ftruncate",
                source,
            });
        let mapped = sized.and_then(|()| {
            // SAFETY: we created the object exclusively a moment ago with
            // mode 0600; only this user could truncate it, and segments are
            // sized once, by their creator, before they are published.
            unsafe { MmapMut::map_mut(&file) }
                .map_err(|source| CreateError::Io { op: "mmap", source })
        });
        match mapped {
            Ok(map) => Ok(Self::publish(map, layout, Some(name.to_owned()))),
            Err(e) => {
                // Do not leave a half-made object behind to be mistaken for a
                // live segment.
                let _ = shm_unlink(path.as_str());
                Err(e)
            }
        }
    }

    /// Attaches to the named segment created by another process with the same
    /// `layout`. Checks, in order: the name, the object's owner (must be our
    /// effective uid), that it holds a header, magic, format version, size,
    /// layout hash, readiness, and that its creator is still alive. Nothing
    /// past the header is read before all of them pass.
    pub fn attach(name: &str, layout: &Layout) -> Result<Self, AttachError> {
        if !valid_name(name) {
            return Err(AttachError::InvalidName(name.to_owned()));
        }
        let flags = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match shm_open(object_path(name).as_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(AttachError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(Errno::EACCES | Errno::EPERM) => {
                return Err(AttachError::PermissionDenied {
                    name: name.to_owned(),
                });
            }
            Err(e) => return Err(attach_io("shm_open")(e)),
        };
        let file = File::from(fd);
        let meta = file.metadata().map_err(|source| AttachError::Io {
            op: "fstat",
            source,
        })?;
        let ours = geteuid().as_raw();
        if meta.uid() != ours {
            return Err(AttachError::ForeignOwner {
                name: name.to_owned(),
                owner: meta.uid(),
                ours,
            });
        }
        let size = meta.len();
        if size < HEADER_SIZE as u64 {
            return Err(AttachError::TooSmall {
                size,
                min: HEADER_SIZE as u64,
            });
        }
        // SAFETY: the object belongs to our uid and has at least a header.
        // Segments are sized once by their creator and never truncated; a
        // same-user process that truncates one anyway makes accesses past
        // the new end fault (SIGBUS), which is not memory unsafety.
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|source| AttachError::Io { op: "mmap", source })?;
        // The mapping covers `size >= HEADER_SIZE` bytes, so the header is in
        // bounds; the rest is not looked at until the header checks pass.
        let snapshot = header_of(&map).snapshot();
        snapshot.validate(layout, size)?;
        if !liveness::is_alive(snapshot.creator_pid, snapshot.creator_start) {
            return Err(AttachError::Stale {
                name: name.to_owned(),
                pid: snapshot.creator_pid,
            });
        }
        Self::with_checked_regions(map, layout, Some(name.to_owned()), None)
    }

    /// Removes the named segment if its creator is dead. Refuses if the
    /// creator is alive, and leaves alone an object whose header it does not
    /// recognise (magic or version).
    pub fn remove_stale(name: &str) -> Result<(), RemoveError> {
        if !valid_name(name) {
            return Err(RemoveError::InvalidName(name.to_owned()));
        }
        let path = object_path(name);
        let fd = match shm_open(
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                return Err(RemoveError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(e) => {
                return Err(RemoveError::Io {
                    op: "shm_open",
                    source: e.into(),
                });
            }
        };
        // Read the header with read(2) rather than a mapping: the object may
        // be shorter than a header, and a read cannot fault.
        let mut bytes = [0u8; HEADER_SIZE];
        let got = read_prefix(&File::from(fd), &mut bytes)
            .map_err(|source| RemoveError::Io { op: "read", source })?;
        let unrecognised = |reason| RemoveError::Unrecognised {
            name: name.to_owned(),
            reason,
        };
        let snapshot = HeaderSnapshot::parse(&bytes[..got]).map_err(unrecognised)?;
        if snapshot.magic != header::MAGIC {
            return Err(unrecognised(AttachError::BadMagic {
                found: snapshot.magic,
            }));
        }
        if snapshot.format_version != crate::FORMAT_VERSION {
            return Err(unrecognised(AttachError::VersionMismatch {
                found: snapshot.format_version,
                expected: crate::FORMAT_VERSION,
            }));
        }
        if liveness::is_alive(snapshot.creator_pid, snapshot.creator_start) {
            return Err(RemoveError::CreatorAlive {
                name: name.to_owned(),
                pid: snapshot.creator_pid,
            });
        }
        match shm_unlink(path.as_str()) {
            // Someone else removed it between our open and now: same outcome.
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(RemoveError::Io {
                op: "shm_unlink",
                source: e.into(),
            }),
        }
    }

    /// Writes the header of a freshly created (all-zero) mapping and
    /// publishes it with the state word.
    fn publish(map: MmapMut, layout: &Layout, name: Option<String>) -> Self {
        let remover = name.as_ref().map(|_| getpid());
        let segment = Self::with_checked_regions(map, layout, name, remover)
            .expect("a layout maps its own regions in bounds");
        let h = segment.header();
        let snapshot = HeaderSnapshot::for_layout(layout);
        // Relaxed: published by the release store of `state` below.
        h.magic.store(snapshot.magic, Ordering::Relaxed);
        h.format_version
            .store(snapshot.format_version, Ordering::Relaxed);
        h.header_size.store(snapshot.header_size, Ordering::Relaxed);
        h.layout_hash.store(snapshot.layout_hash, Ordering::Relaxed);
        h.total_size.store(snapshot.total_size, Ordering::Relaxed);
        h.creator_pid.store(std::process::id(), Ordering::Relaxed);
        h.creator_uid.store(geteuid().as_raw(), Ordering::Relaxed);
        h.creator_start
            .store(liveness::own_start_time(), Ordering::Relaxed);
        h.generation.store(snapshot.generation, Ordering::Relaxed);
        h.region_count
            .store(snapshot.region_count, Ordering::Relaxed);
        // Release: pairs with the acquire load in SegmentHeader::snapshot.
        h.state.store(STATE_READY, Ordering::Release);
        segment
    }

    /// Builds the value after checking, once, that every region of `layout`
    /// lies inside the mapping at an offset that suits its type.
    fn with_checked_regions(
        map: MmapMut,
        layout: &Layout,
        name: Option<String>,
        remover: Option<Pid>,
    ) -> Result<Self, AttachError> {
        if map.len() != layout.size() {
            return Err(AttachError::SizeMismatch {
                header: layout.size() as u64,
                actual: map.len() as u64,
            });
        }
        // The mapping is page aligned, and layouts never ask for more than a
        // page of alignment, so an aligned offset is an aligned address.
        debug_assert_eq!(map.as_ptr() as usize % crate::layout::MAX_ALIGN, 0);
        for r in layout.regions() {
            let in_bounds = r.offset() >= HEADER_SIZE
                && r.offset()
                    .checked_add(r.len())
                    .is_some_and(|end| end <= map.len());
            if !in_bounds || r.offset() % r.align() != 0 {
                return Err(AttachError::Corrupt("a region lies outside the segment"));
            }
        }
        Ok(Self {
            map,
            layout: layout.clone(),
            name,
            remover,
        })
    }

    fn header(&self) -> &SegmentHeader {
        header_of(&self.map)
    }

    /// The layout this segment was created or attached with.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The name, for a named segment.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Total size in bytes, header included.
    pub fn size(&self) -> usize {
        self.map.len()
    }

    /// A copy of the header as it is now.
    pub fn header_snapshot(&self) -> HeaderSnapshot {
        self.header().snapshot()
    }

    /// The reset generation: 1 after creation, bumped by every [`reinit`].
    ///
    /// [`reinit`]: Segment::reinit
    pub fn generation(&self) -> u64 {
        // Acquire: pairs with the release store in reinit, so a caller that
        // sees the new generation also sees the zeroed regions.
        self.header().generation.load(Ordering::Acquire)
    }

    /// The region `name`, which must hold exactly one `T`.
    pub fn region<T: ShmSafe>(&self, name: &str) -> Result<&T, RegionError> {
        let r = self.typed_region::<T>(name, RegionKind::Single)?;
        // SAFETY: with_checked_regions proved the region lies in the mapping
        // at an offset aligned for T (its align was recorded from T, which
        // typed_region just matched); T: ShmSafe makes any bytes a valid T
        // and confines mutation to atomics; the reference borrows self, so
        // the mapping outlives it.
        Ok(unsafe { &*self.map.as_ptr().add(r.offset()).cast::<T>() })
    }

    /// The region `name`, which must hold an array of `T`.
    pub fn array<T: ShmSafe>(&self, name: &str) -> Result<&[T], RegionError> {
        let r = self.typed_region::<T>(name, RegionKind::Array)?;
        // SAFETY: as in `region`, for `count` consecutive Ts whose total
        // length was bounds-checked at construction.
        Ok(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(r.offset()).cast::<T>(), r.count())
        })
    }

    fn typed_region<T: ShmSafe>(
        &self,
        name: &str,
        kind: RegionKind,
    ) -> Result<&RegionInfo, RegionError> {
        let r = self
            .layout
            .find(name)
            .ok_or_else(|| RegionError::Unknown(name.to_owned()))?;
        if r.kind() != kind
            || r.type_name() != T::type_name()
            || r.elem_size() != size_of::<T>()
            || r.align() != align_of::<T>()
        {
            let describe = |kind: RegionKind, ty: &str| match kind {
                RegionKind::Single => ty.to_owned(),
                RegionKind::Array => format!("an array of {ty}"),
            };
            return Err(RegionError::TypeMismatch {
                name: name.to_owned(),
                found: describe(r.kind(), r.type_name()),
                wanted: describe(kind, T::type_name()),
            });
        }
        Ok(r)
    }

    /// Resets the segment after a crash: marks it resetting, zeroes every
    /// region, bumps the generation and marks it ready again.
    ///
    /// Taking `&mut self` guarantees no region reference from this process
    /// is alive. Other processes must have stopped using the segment (the
    /// postmaster kills them first); one that has not sees the generation
    /// change and must treat everything it held as gone.
    pub fn reinit(&mut self) {
        let next = self.generation().wrapping_add(1);
        // Relaxed: advisory, for attachers arriving mid-reset; the release
        // store of READY below is what publishes the result.
        self.header()
            .state
            .store(STATE_RESETTING, Ordering::Relaxed);
        let len = self.map.len() - HEADER_SIZE;
        // SAFETY: `&mut self` means no reference into the mapping exists in
        // this process; the range [HEADER_SIZE, len) is inside the mapping;
        // all-zero bytes are a valid value of every ShmSafe region type.
        unsafe { self.map.as_mut_ptr().add(HEADER_SIZE).write_bytes(0, len) };
        let h = self.header();
        // Release: pairs with the acquire load in generation().
        h.generation.store(next, Ordering::Release);
        // Release: pairs with the acquire load in SegmentHeader::snapshot.
        h.state.store(STATE_READY, Ordering::Release);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if let (Some(name), Some(remover)) = (&self.name, self.remover)
            && remover == getpid()
        {
            // Nothing useful to do on failure: the name may already be gone.
            let _ = shm_unlink(object_path(name).as_str());
        }
    }
}

/// The POSIX shared-memory object name for segment `name`.
fn object_path(name: &str) -> String {
    format!("/postmaster.{name}")
}

fn header_of(map: &MmapMut) -> &SegmentHeader {
    assert!(map.len() >= HEADER_SIZE);
    // SAFETY: the mapping is page aligned and at least HEADER_SIZE bytes (the
    // assertion); every field is an atomic integer, for which any bytes are
    // valid; the reference borrows the mapping.
    unsafe { &*map.as_ptr().cast::<SegmentHeader>() }
}

fn read_prefix(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut file = file;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn create_io(op: &'static str) -> impl Fn(Errno) -> CreateError {
    move |e| CreateError::Io {
        op,
        source: e.into(),
    }
}

fn attach_io(op: &'static str) -> impl Fn(Errno) -> AttachError {
    move |e| AttachError::Io {
        op,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_publishes_a_valid_header() {
        let layout = Layout::builder()
            .array::<AtomicU64>("x", 3)
            .build()
            .unwrap();
        let seg = Segment::create(&layout).unwrap();
        let s = seg.header_snapshot();
        s.validate(&layout, seg.size() as u64).unwrap();
        assert_eq!(s.creator_pid, std::process::id());
        assert_eq!(seg.generation(), 1);
    }

    #[test]
    fn regions_are_typed() {
        let layout = Layout::builder()
            .region::<AtomicU64>("one")
            .array::<AtomicU32>("many", 4)
            .build()
            .unwrap();
        let seg = Segment::create(&layout).unwrap();
        assert_eq!(seg.array::<AtomicU32>("many").unwrap().len(), 4);
        assert!(seg.region::<AtomicU64>("one").is_ok());
        assert_eq!(
            seg.region::<AtomicU64>("none").unwrap_err(),
            RegionError::Unknown("none".into())
        );
        assert!(matches!(
            seg.region::<AtomicU32>("one"),
            Err(RegionError::TypeMismatch { .. })
        ));
        assert!(matches!(
            seg.region::<AtomicU32>("many"),
            Err(RegionError::TypeMismatch { .. })
        ));
        assert!(matches!(
            seg.array::<AtomicU64>("one"),
            Err(RegionError::TypeMismatch { .. })
        ));
    }
}
