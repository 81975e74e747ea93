//! A single-sender single-receiver ring of variable-length byte messages,
//! after PostgreSQL's `shm_mq`, but with indices only (no pointers to the
//! peers' process structures) and whole-message publication.
//!
//! # Protocol
//!
//! | field          | written by                     | read by                  |
//! |----------------|--------------------------------|--------------------------|
//! | `written`      | sender (`Release`)              | receiver (`Acquire`)      |
//! | `read`         | receiver (`Release`)            | sender (`Acquire`)        |
//! | bytes `[written, read + capacity)` | sender        | nobody                    |
//! | bytes `[read, written)`            | nobody        | receiver                  |
//! | sender side    | sender: attach (CAS), detach; supervisor: died | receiver (`Acquire`) |
//! | receiver side  | receiver: attach (CAS), detach; supervisor: died | sender (`Relaxed`) |
//!
//! A message is a *frame*: an 8-byte header (length as a little-endian
//! `u32`, then its bitwise complement as a check) followed by the payload,
//! padded to a multiple of 8. Frames start at multiples of 8 and the
//! capacity is a power of two of at least 16, so a header never wraps; a
//! payload may. The largest message is `capacity - FRAME_HEADER` bytes, and
//! a longer one is refused with [`ByteSendError::TooLarge`] (shm_mq streams
//! longer messages in pieces; this ring does not, which is what lets it
//! publish every message whole).
//!
//! - Send: check the receiver has not detached; if the frame does not fit
//!   in `capacity - (written - cached_read)`, reload `read` (`Acquire`,
//!   pairs with the receiver's `Release` store after it finished with those
//!   bytes); write the frame; store `written + frame` (`Release`, pairs
//!   with the receiver's `Acquire` load: the bytes are visible before the
//!   index).
//! - Receive: if `read == cached_written`, reload `written` (`Acquire`);
//!   if still empty, check the sender's side (`Acquire`, pairs with the
//!   sender's `Release` detach) and, if it has detached, reload `written`
//!   once more: every frame published before the detach is then visible,
//!   so the receiver drains all of them before it reports the detach.
//!   Validate the header (complement, length bound, frame within
//!   `written - read`), and hand out the payload: in place when contiguous,
//!   copied into the receiver's scratch buffer when it wraps. Dropping the
//!   [`Received`] guard stores `read + frame` (`Release`).
//!
//! # Detach and death
//!
//! Either side detaches by dropping its handle (or [`ByteSender::detach`],
//! [`ByteReceiver::detach`]); a detached side stays detached until the
//! segment is reset. A send to a detached receiver fails with
//! [`ByteSendError::Detached`]; a receiver sees [`ByteRecvError::Detached`]
//! only after it has received every message sent before the detach.
//!
//! A sender that dies mid-message has not stored `written` for it, so the
//! partial frame is never seen; the receiver sees the intact messages
//! before it. The supervisor, after reaping the process, calls
//! [`ByteRing::mark_dead`]; the receiver then drains and gets
//! [`ByteRecvError::PeerDied`] instead of waiting forever, so the loss is
//! explicit. The same holds the other way round for a dead receiver.
//!
//! ```
//! use shmem::{Layout, Segment, ring::{ByteRing, ByteRecvError}};
//!
//! let layout = Layout::builder().byte_ring("mq", 4096).build()?;
//! let segment = Segment::create(&layout)?;
//! let ring = ByteRing::from_segment(&segment, "mq")?;
//! let mut tx = ring.sender(1)?;
//! let mut rx = ring.receiver(2)?;
//! tx.try_send(b"hello")?;
//! tx.try_send(b"")?;
//! tx.detach();
//! assert_eq!(&*rx.try_recv()?, b"hello");
//! assert_eq!(&*rx.try_recv()?, b"");
//! assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Detached);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ops::Deref;

use thiserror::Error;

use super::{Corrupt, Line, MAX_OWNER, RingError, check_capacity, check_owner};
use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};

/// Bytes of framing before each payload.
pub const FRAME_HEADER: usize = 8;

/// A side's state: nobody has attached yet.
const SIDE_FREE: u32 = 0;
/// A side's state: it detached; final until the segment is reset.
const SIDE_DETACHED: u32 = u32::MAX;
/// A side's state: the supervisor declared it dead; final until reset.
const SIDE_DIED: u32 = u32::MAX - 1;
// Any other value is the owner token of the attached side.
const _: () = assert!(MAX_OWNER < SIDE_DIED);

const SENDER: usize = 0;
const RECEIVER: usize = 1;

/// The shared header of a [`ByteRing`]; all-zero is an empty ring that
/// neither side has attached to.
#[derive(Debug, Default)]
#[repr(C)]
pub struct ByteRingHeader {
    /// Bytes ever written (always a multiple of 8). Sender only.
    written: Line<AtomicU64>,
    /// Bytes ever consumed (always a multiple of 8). Receiver only.
    read: Line<AtomicU64>,
    /// Sender's and receiver's side states.
    sides: Line<[AtomicU32; 2]>,
}

#[cfg(not(loom))]
const _: () = {
    assert!(size_of::<ByteRingHeader>() == 3 * crate::CACHE_LINE);
    assert!(align_of::<ByteRingHeader>() == crate::CACHE_LINE);
};

// SAFETY: repr(C) of atomics on padded lines; any bytes valid; no pointers.
#[cfg(not(loom))]
unsafe impl crate::ShmSafe for ByteRingHeader {}

impl ByteRingHeader {
    /// An empty ring's header.
    pub fn new() -> Self {
        Self::default()
    }
}

/// One byte of a [`ByteRing`]'s buffer.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct ByteCell(UnsafeCell<u8>);

// SAFETY: bytes are written by the sender only outside [read, written) and
// read by the receiver only inside it, with Release/Acquire index stores
// between (module docs).
unsafe impl Sync for ByteCell {}

// SAFETY: transparent over a u8: any byte valid, no pointers.
#[cfg(not(loom))]
unsafe impl crate::ShmSafe for ByteCell {}

/// Copies `src` into the buffer at `at..at + src.len()`, which the caller
/// owns under the protocol.
fn copy_in(cells: &[ByteCell], at: usize, src: &[u8]) {
    let Some(dst) = cells.get(at..at + src.len()) else {
        debug_assert!(false, "copy_in out of bounds");
        return;
    };
    #[cfg(not(loom))]
    // SAFETY: `dst` is in bounds (checked above) and its bytes sit in
    // UnsafeCells, which allow writes through a shared reference; the
    // protocol gives the sender exclusive use of them (see `write`).
    unsafe {
        std::ptr::copy_nonoverlapping(
            src.as_ptr(),
            dst.as_ptr().cast::<u8>().cast_mut(),
            src.len(),
        )
    };
    #[cfg(loom)]
    for (cell, byte) in dst.iter().zip(src) {
        // SAFETY: as above.
        cell.0.with_mut(|p| unsafe { *p = *byte });
    }
}

/// Copies the buffer's `at..at + dst.len()` into `dst`.
fn copy_out(cells: &[ByteCell], at: usize, dst: &mut [u8]) {
    let Some(src) = cells.get(at..at + dst.len()) else {
        debug_assert!(false, "copy_out out of bounds");
        return;
    };
    #[cfg(not(loom))]
    // SAFETY: `src` is in bounds; the protocol keeps the sender out of
    // [read, written), which the caller is reading.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), dst.as_mut_ptr(), dst.len())
    };
    #[cfg(loom)]
    for (cell, byte) in src.iter().zip(dst) {
        // SAFETY: as above.
        *byte = cell.0.with(|p| unsafe { *p });
    }
}

/// The frame a payload of `len` bytes occupies.
fn frame_len(len: usize) -> usize {
    FRAME_HEADER + len.next_multiple_of(8)
}

/// A view of a byte ring; hands out the sender and the receiver. See the
/// module docs.
#[derive(Clone, Copy, Debug)]
pub struct ByteRing<'a> {
    header: &'a ByteRingHeader,
    cells: &'a [ByteCell],
}

impl<'a> ByteRing<'a> {
    /// A view over `header` and `cells`; `cells.len()` is the capacity and
    /// must be a power of two of at least 16.
    pub fn new(header: &'a ByteRingHeader, cells: &'a [ByteCell]) -> Result<Self, RingError> {
        check_capacity(cells.len(), 2 * FRAME_HEADER)?;
        Ok(Self { header, cells })
    }

    /// The ring reserved as `name` by
    /// [`LayoutBuilder::byte_ring`](crate::LayoutBuilder::byte_ring).
    #[cfg(not(loom))]
    pub fn from_segment(segment: &'a crate::Segment, name: &str) -> Result<Self, RingError> {
        Self::new(
            segment.region(name)?,
            segment.array(&super::cells_region_name(name))?,
        )
    }

    /// The buffer size in bytes.
    pub fn capacity(&self) -> usize {
        self.cells.len()
    }

    /// The longest message this ring carries.
    pub fn max_message(&self) -> usize {
        self.capacity() - FRAME_HEADER
    }

    /// Attaches the sender, for `owner` (normally
    /// [`own_token`](super::own_token)).
    pub fn sender(&self, owner: u32) -> Result<ByteSender<'a>, RingError> {
        self.attach(SENDER, owner)?;
        // Relaxed: only the sender writes `written`; the Acquire of the
        // attach ordered us after everything before it.
        let written = self.header.written.0.load(Ordering::Relaxed);
        // Acquire: pairs with the receiver's Release store of `read`.
        let read = self.header.read.0.load(Ordering::Acquire);
        if let Err(e) = self.check_indices(written, read) {
            self.detach_side(SENDER, owner);
            return Err(e.into());
        }
        Ok(ByteSender {
            ring: *self,
            owner,
            written,
            cached_read: read,
        })
    }

    /// Attaches the receiver, for `owner`.
    pub fn receiver(&self, owner: u32) -> Result<ByteReceiver<'a>, RingError> {
        self.attach(RECEIVER, owner)?;
        // Relaxed: only the receiver writes `read`.
        let read = self.header.read.0.load(Ordering::Relaxed);
        // Acquire: pairs with the sender's Release store of `written`.
        let written = self.header.written.0.load(Ordering::Acquire);
        if let Err(e) = self.check_indices(written, read) {
            self.detach_side(RECEIVER, owner);
            return Err(e.into());
        }
        Ok(ByteReceiver {
            ring: *self,
            owner,
            read,
            cached_written: written,
            scratch: vec![0; self.max_message()].into_boxed_slice(),
        })
    }

    /// For a supervisor that has reaped the process `owner` names: marks
    /// every side it was attached to as died, so the peer drains and then
    /// sees [`ByteRecvError::PeerDied`] / [`ByteSendError::PeerDied`]
    /// instead of waiting. Returns how many sides were marked. Safe: a side
    /// that is in fact alive keeps its role (nobody else can attach), it
    /// only loses its peer.
    pub fn mark_dead(&self, owner: u32) -> usize {
        if check_owner(owner).is_err() {
            return 0;
        }
        self.header
            .sides
            .0
            .iter()
            .filter(|side| {
                // Release: pairs with the peer's Acquire load of the side,
                // as a detach does. Relaxed on failure: nothing to see.
                side.compare_exchange(owner, SIDE_DIED, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            })
            .count()
    }

    /// The sender's and receiver's side words: 0 before attaching, an owner
    /// token while attached, then a reserved value once detached or dead.
    pub fn sides(&self) -> (u32, u32) {
        // Relaxed: informational.
        (
            self.header.sides.0[SENDER].load(Ordering::Relaxed),
            self.header.sides.0[RECEIVER].load(Ordering::Relaxed),
        )
    }

    fn attach(&self, side: usize, owner: u32) -> Result<(), RingError> {
        check_owner(owner)?;
        let role = if side == SENDER { "sender" } else { "receiver" };
        // Acquire: pairs with nothing earlier in a fresh ring, but orders
        // our index loads after the attach. Relaxed on failure.
        match self.header.sides.0[side].compare_exchange(
            SIDE_FREE,
            owner,
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => Ok(()),
            Err(SIDE_DETACHED | SIDE_DIED) => Err(RingError::Detached { role }),
            Err(found) => Err(RingError::RoleTaken { role, owner: found }),
        }
    }

    fn detach_side(&self, side: usize, owner: u32) {
        // Release: pairs with the peer's Acquire load of this side, so the
        // peer sees every index we stored before detaching. Relaxed on
        // failure: the supervisor has marked us dead already.
        let _ = self.header.sides.0[side].compare_exchange(
            owner,
            SIDE_DETACHED,
            Ordering::Release,
            Ordering::Relaxed,
        );
    }

    /// Checks a (`written`, `read`) pair read from shared memory.
    fn check_indices(&self, written: u64, read: u64) -> Result<(), Corrupt> {
        if !written.is_multiple_of(8) || !read.is_multiple_of(8) {
            return Err(Corrupt::new(
                "byte ring index not a multiple of 8",
                read,
                written,
            ));
        }
        if written.wrapping_sub(read) > self.capacity() as u64 {
            return Err(Corrupt::new(
                "written - read exceeds capacity",
                read,
                written,
            ));
        }
        Ok(())
    }

    /// Writes `src` at ring position `position`, wrapping at the end.
    fn write(&self, position: u64, src: &[u8]) {
        let at = (position as usize) & (self.capacity() - 1);
        let first = src.len().min(self.capacity() - at);
        copy_in(self.cells, at, &src[..first]);
        copy_in(self.cells, 0, &src[first..]);
    }

    /// Reads `dst.len()` bytes at ring position `position`, wrapping.
    fn read(&self, position: u64, dst: &mut [u8]) {
        let at = (position as usize) & (self.capacity() - 1);
        let first = dst.len().min(self.capacity() - at);
        let (head, tail) = dst.split_at_mut(first);
        copy_out(self.cells, at, head);
        copy_out(self.cells, 0, tail);
    }
}

/// Why [`ByteSender::try_send`] did not send.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ByteSendError {
    /// Not enough free space for this message now; retry after the
    /// receiver catches up.
    #[error("byte ring has no room for this message yet")]
    Full,
    /// Longer than [`ByteRing::max_message`]; it will never fit.
    #[error(
        "message of {len} bytes exceeds this ring's maximum of {max}; split it or reserve a larger ring"
    )]
    TooLarge {
        /// The message length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The receiver has detached: nobody will read this.
    #[error("the receiver has detached")]
    Detached,
    /// The receiver died (as declared by the supervisor).
    #[error("the receiver died")]
    PeerDied,
    /// The receiver's index is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// Why [`ByteReceiver::try_recv`] returned no message.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ByteRecvError {
    /// No message now; the sender is still attached (or not yet).
    #[error("byte ring is empty")]
    Empty,
    /// The sender detached and every message it sent has been received.
    #[error("the sender has detached and its messages are all received")]
    Detached,
    /// The sender died (as declared by the supervisor); every message it
    /// completed has been received, any it was writing is lost.
    #[error("the sender died; every message it completed has been received")]
    PeerDied,
    /// A frame header or the sender's index is impossible.
    #[error(transparent)]
    Corrupt(#[from] Corrupt),
}

/// The sending end of a [`ByteRing`]; detaches when dropped.
#[derive(Debug)]
pub struct ByteSender<'a> {
    ring: ByteRing<'a>,
    owner: u32,
    /// Our own count of bytes written; the shared `written` mirrors it.
    written: u64,
    /// The receiver's `read` when we last looked.
    cached_read: u64,
}

impl ByteSender<'_> {
    /// Sends `message` whole, or reports why not.
    pub fn try_send(&mut self, message: &[u8]) -> Result<(), ByteSendError> {
        // Relaxed: a hint that stops us writing for nobody; no data is
        // read on the strength of it.
        match self.ring.header.sides.0[RECEIVER].load(Ordering::Relaxed) {
            SIDE_DETACHED => return Err(ByteSendError::Detached),
            SIDE_DIED => return Err(ByteSendError::PeerDied),
            _ => {}
        }
        let max = self.ring.max_message();
        if message.len() > max {
            return Err(ByteSendError::TooLarge {
                len: message.len(),
                max,
            });
        }
        let frame = frame_len(message.len()) as u64;
        if self.free_cached() < frame && self.refresh_read()? < frame {
            return Err(ByteSendError::Full);
        }
        let len = message.len() as u32;
        let mut header = [0u8; FRAME_HEADER];
        header[..4].copy_from_slice(&len.to_le_bytes());
        header[4..].copy_from_slice(&(!len).to_le_bytes());
        // The frame lies in [written, read + capacity) (checked above): the
        // receiver does not look there until we publish.
        self.ring.write(self.written, &header);
        self.ring
            .write(self.written.wrapping_add(FRAME_HEADER as u64), message);
        self.written = self.written.wrapping_add(frame);
        // Release: pairs with the Acquire load of `written` in
        // ByteReceiver::refresh_written: the frame is visible first.
        self.ring
            .header
            .written
            .0
            .store(self.written, Ordering::Release);
        Ok(())
    }

    /// Detaches: the receiver drains what was sent, then sees
    /// [`ByteRecvError::Detached`]. Same as dropping the sender.
    pub fn detach(self) {}

    /// Bytes written so far (frames included).
    pub fn position(&self) -> u64 {
        self.written
    }

    /// The receiver's `read` index, freshly loaded.
    pub fn peer_position(&self) -> u64 {
        // Acquire: pairs with the receiver's Release store of `read`.
        self.ring.header.read.0.load(Ordering::Acquire)
    }

    /// The longest message this ring carries.
    pub fn max_message(&self) -> usize {
        self.ring.max_message()
    }

    fn free_cached(&self) -> u64 {
        self.ring.capacity() as u64 - self.written.wrapping_sub(self.cached_read)
    }

    #[cold]
    fn refresh_read(&mut self) -> Result<u64, Corrupt> {
        // Acquire: pairs with the Release store of `read` when a Received
        // guard drops: the receiver is done with those bytes.
        let read = self.ring.header.read.0.load(Ordering::Acquire);
        self.ring.check_indices(self.written, read)?;
        self.cached_read = read;
        Ok(self.free_cached())
    }
}

impl Drop for ByteSender<'_> {
    fn drop(&mut self) {
        self.ring.detach_side(SENDER, self.owner);
    }
}

/// The receiving end of a [`ByteRing`]; detaches when dropped.
#[derive(Debug)]
pub struct ByteReceiver<'a> {
    ring: ByteRing<'a>,
    owner: u32,
    /// Our own count of bytes consumed; the shared `read` mirrors it.
    read: u64,
    /// The sender's `written` when we last looked.
    cached_written: u64,
    /// Where a wrapped message is reassembled; `max_message` bytes,
    /// allocated once at attach.
    scratch: Box<[u8]>,
}

impl<'a> ByteReceiver<'a> {
    /// Receives the next message: borrowed in place when it is contiguous,
    /// copied into a scratch buffer when it wraps. The message is consumed
    /// when the returned guard drops.
    pub fn try_recv(&mut self) -> Result<Received<'_, 'a>, ByteRecvError> {
        if self.read == self.cached_written && self.refresh_written()? == 0 {
            // Acquire: pairs with the Release of the sender's detach (or the
            // supervisor's mark_dead), so the reload below sees every frame
            // published before it.
            let side = self.ring.header.sides.0[SENDER].load(Ordering::Acquire);
            let gone = match side {
                SIDE_DETACHED => ByteRecvError::Detached,
                SIDE_DIED => ByteRecvError::PeerDied,
                _ => return Err(ByteRecvError::Empty),
            };
            // The sender published its last frames before detaching.
            if self.refresh_written()? == 0 {
                return Err(gone);
            }
        }
        let available = self.cached_written.wrapping_sub(self.read);
        let mut header = [0u8; FRAME_HEADER];
        self.ring.read(self.read, &mut header);
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let check = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let bad = |what| Corrupt::new(what, self.read, u64::from_le_bytes(header));
        if check != !len {
            return Err(bad("frame header check word does not match its length").into());
        }
        let len = len as usize;
        if len > self.ring.max_message() {
            return Err(bad("frame length exceeds the ring's maximum message").into());
        }
        let frame = frame_len(len) as u64;
        if frame > available {
            return Err(bad("frame extends past the published index").into());
        }
        let start = self.read.wrapping_add(FRAME_HEADER as u64);
        let at = (start as usize) & (self.ring.capacity() - 1);
        let contiguous = !cfg!(loom) && at + len <= self.ring.capacity();
        if !contiguous {
            self.ring.read(start, &mut self.scratch[..len]);
        }
        Ok(Received {
            receiver: self,
            at,
            len,
            in_place: contiguous,
            frame,
        })
    }

    /// Detaches: a later send fails with [`ByteSendError::Detached`]. Same
    /// as dropping the receiver.
    pub fn detach(self) {}

    /// Bytes consumed so far (frames included).
    pub fn position(&self) -> u64 {
        self.read
    }

    /// The sender's `written` index, freshly loaded.
    pub fn peer_position(&self) -> u64 {
        // Acquire: pairs with the sender's Release store of `written`.
        self.ring.header.written.0.load(Ordering::Acquire)
    }

    /// The longest message this ring carries.
    pub fn max_message(&self) -> usize {
        self.ring.max_message()
    }

    /// Reloads the sender's index; returns the bytes it makes available.
    #[cold]
    fn refresh_written(&mut self) -> Result<u64, Corrupt> {
        // Acquire: pairs with the Release store of `written` in try_send:
        // the frames are visible before their index.
        let written = self.ring.header.written.0.load(Ordering::Acquire);
        self.ring.check_indices(written, self.read)?;
        self.cached_written = written;
        Ok(written.wrapping_sub(self.read))
    }
}

impl Drop for ByteReceiver<'_> {
    fn drop(&mut self) {
        self.ring.detach_side(RECEIVER, self.owner);
    }
}

/// A received message; derefs to its bytes. Dropping it consumes the
/// message (frees its space for the sender); forgetting it leaves the
/// message to be received again.
#[derive(Debug)]
pub struct Received<'r, 'a> {
    receiver: &'r mut ByteReceiver<'a>,
    /// Ring offset of the payload (when `in_place`; loom builds always copy).
    #[cfg_attr(loom, allow(dead_code))]
    at: usize,
    len: usize,
    in_place: bool,
    frame: u64,
}

impl Received<'_, '_> {
    /// Whether the bytes are read in place in the ring (not copied).
    pub fn is_in_place(&self) -> bool {
        self.in_place
    }
}

impl Deref for Received<'_, '_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if !self.in_place {
            return &self.receiver.scratch[..self.len];
        }
        #[cfg(not(loom))]
        {
            let cells = &self.receiver.ring.cells[self.at..self.at + self.len];
            // SAFETY: the range is in bounds (sliced above) and lies in
            // [read, written), which the sender does not write until our
            // Drop advances `read`; this borrow ends before that Drop.
            unsafe { std::slice::from_raw_parts(cells.as_ptr().cast::<u8>(), self.len) }
        }
        #[cfg(loom)]
        unreachable!("loom builds always copy")
    }
}

impl Drop for Received<'_, '_> {
    fn drop(&mut self) {
        let receiver = &mut *self.receiver;
        receiver.read = receiver.read.wrapping_add(self.frame);
        // Release: pairs with the Acquire load of `read` in
        // ByteSender::refresh_read: we are done with these bytes before the
        // sender may overwrite them.
        receiver
            .ring
            .header
            .read
            .0
            .store(receiver.read, Ordering::Release);
    }
}

/// A [`ByteRing`] on the heap: for tests, loom models and in-process use.
#[derive(Debug)]
pub struct ByteStorage {
    header: ByteRingHeader,
    cells: Box<[ByteCell]>,
}

impl ByteStorage {
    /// An empty ring of `capacity` bytes (a power of two, at least 16).
    pub fn new(capacity: usize) -> Result<Self, RingError> {
        check_capacity(capacity, 2 * FRAME_HEADER)?;
        Ok(Self {
            header: ByteRingHeader::new(),
            cells: (0..capacity).map(|_| ByteCell::default()).collect(),
        })
    }

    /// The view over this storage.
    pub fn ring(&self) -> ByteRing<'_> {
        ByteRing {
            header: &self.header,
            cells: &self.cells,
        }
    }

    /// Overwrites the shared indices, side words and bytes, as a crashed or
    /// hostile process might; for the fuzzer and corruption tests.
    #[cfg(not(loom))]
    pub(crate) fn scribble(&self, written: u64, read: u64, sides: [u32; 2], bytes: &[u8]) {
        // Relaxed: single-threaded test setup.
        self.header.written.0.store(written, Ordering::Relaxed);
        self.header.read.0.store(read, Ordering::Relaxed);
        for (side, value) in self.header.sides.0.iter().zip(sides) {
            side.store(value, Ordering::Relaxed);
        }
        let n = bytes.len().min(self.cells.len());
        copy_in(&self.cells, 0, &bytes[..n]);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn message(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + seed * 7) as u8).collect()
    }

    #[test]
    fn every_length_round_trips_at_every_offset_across_the_wrap() {
        let storage = ByteStorage::new(128).unwrap();
        let ring = storage.ring();
        let mut tx = ring.sender(1).unwrap();
        let mut rx = ring.receiver(2).unwrap();
        let max = ring.max_message();
        let (mut borrowed, mut copied) = (0, 0);
        for len in 0..=max {
            for shift in 0..(128 / 8) {
                // Move the ring's position by `shift` empty frames so this
                // length starts at every frame offset, wrapping at many.
                for _ in 0..shift {
                    tx.try_send(&[]).unwrap();
                    assert!(rx.try_recv().unwrap().is_empty());
                }
                let m = message(len, shift);
                tx.try_send(&m).unwrap();
                let got = rx.try_recv().unwrap();
                assert_eq!(&*got, &m[..], "len {len} shift {shift}");
                if got.is_in_place() {
                    borrowed += 1;
                } else {
                    copied += 1;
                }
                drop(got);
                assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Empty);
            }
        }
        assert!(borrowed > 0 && copied > 0, "{borrowed} {copied}");
    }

    #[test]
    fn too_large_and_full_are_distinct() {
        let storage = ByteStorage::new(64).unwrap();
        let ring = storage.ring();
        let mut tx = ring.sender(1).unwrap();
        let mut rx = ring.receiver(2).unwrap();
        assert_eq!(
            tx.try_send(&[0; 57]),
            Err(ByteSendError::TooLarge { len: 57, max: 56 })
        );
        tx.try_send(&[1; 20]).unwrap(); // 32-byte frame
        tx.try_send(&[2; 24]).unwrap(); // 32-byte frame: ring full
        assert_eq!(tx.try_send(&[]), Err(ByteSendError::Full));
        assert_eq!(&*rx.try_recv().unwrap(), &[1; 20]);
        assert_eq!(tx.try_send(&[3; 25]), Err(ByteSendError::Full)); // 40 > 32
        tx.try_send(&[3; 24]).unwrap();
        assert_eq!(&*rx.try_recv().unwrap(), &[2; 24]);
        assert_eq!(&*rx.try_recv().unwrap(), &[3; 24]);
        assert_eq!(tx.try_send(&[4; 56]), Ok(()));
        assert_eq!(&*rx.try_recv().unwrap(), &[4; 56]);
    }

    #[test]
    fn receiver_drains_everything_sent_before_the_sender_detached() {
        let storage = ByteStorage::new(256).unwrap();
        let ring = storage.ring();
        let mut tx = ring.sender(1).unwrap();
        let mut rx = ring.receiver(2).unwrap();
        for i in 0..5u8 {
            tx.try_send(&[i; 10]).unwrap();
        }
        tx.detach();
        for i in 0..5u8 {
            assert_eq!(&*rx.try_recv().unwrap(), &[i; 10]);
        }
        assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Detached);
        assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Detached);
        assert_eq!(
            ring.sender(1).unwrap_err(),
            RingError::Detached { role: "sender" }
        );
    }

    #[test]
    fn sending_to_a_detached_receiver_fails() {
        let storage = ByteStorage::new(64).unwrap();
        let ring = storage.ring();
        let mut tx = ring.sender(1).unwrap();
        let rx = ring.receiver(2).unwrap();
        tx.try_send(b"before").unwrap();
        drop(rx);
        assert_eq!(tx.try_send(b"after"), Err(ByteSendError::Detached));
    }

    #[test]
    fn a_dead_sender_is_reported_after_its_complete_messages() {
        let storage = ByteStorage::new(64).unwrap();
        let ring = storage.ring();
        let mut tx = ring.sender(42).unwrap();
        let mut rx = ring.receiver(2).unwrap();
        tx.try_send(b"complete").unwrap();
        // A half-written frame: bytes in place, `written` never stored.
        ring.write(
            tx.position(),
            &[5, 0, 0, 0, !5, 0xff, 0xff, 0xff, b'h', b'a'],
        );
        std::mem::forget(tx); // dies without detaching
        assert_eq!(&*rx.try_recv().unwrap(), b"complete");
        assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::Empty);
        assert_eq!(ring.mark_dead(42), 1);
        assert_eq!(rx.try_recv().unwrap_err(), ByteRecvError::PeerDied);
        assert_eq!(ring.mark_dead(42), 0);
    }

    #[test]
    fn corrupt_frames_and_indices_are_errors() {
        let storage = ByteStorage::new(64).unwrap();
        // A frame header whose check word is wrong.
        storage.scribble(16, 0, [0, 0], &[4, 0, 0, 0, 0, 0, 0, 0]);
        let ring = storage.ring();
        let mut rx = ring.receiver(1).unwrap();
        assert!(matches!(rx.try_recv(), Err(ByteRecvError::Corrupt(_))));
        drop(rx);
        // A length beyond the published index.
        let storage = ByteStorage::new(64).unwrap();
        storage.scribble(16, 0, [0, 0], &[40, 0, 0, 0, !40, 0xff, 0xff, 0xff]);
        let mut rx = storage.ring().receiver(1).unwrap();
        assert!(matches!(rx.try_recv(), Err(ByteRecvError::Corrupt(_))));
        // Indices that are unaligned or too far apart.
        let storage = ByteStorage::new(64).unwrap();
        storage.scribble(3, 0, [0, 0], &[]);
        assert!(matches!(
            storage.ring().receiver(1),
            Err(RingError::Corrupt(_))
        ));
        storage.scribble(0, 0, [0, 0], &[]);
        let mut tx = storage.ring().sender(1).unwrap();
        tx.try_send(&[0; 56]).unwrap();
        storage.scribble(64, 1 << 40, [1, 0], &[]);
        assert!(matches!(tx.try_send(&[]), Err(ByteSendError::Corrupt(_))));
    }
}
