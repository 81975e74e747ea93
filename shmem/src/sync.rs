//! The one place atomics, `UnsafeCell`, fences and spin hints come from.
//!
//! Production builds get `std`'s types; `--cfg loom` builds get loom's, so a
//! model test in any crate of the workspace runs the very code that ships.
//! `clippy.toml` forbids the `std` originals everywhere else, which keeps the
//! rule honest without anyone having to remember it.
//!
//! loom's atomics carry their own bookkeeping and cannot be laid over mapped
//! bytes, so a structure that lives in shared memory is written as a view
//! that can be built either in a segment (production) or on the heap (loom).
//!
//! `UnsafeCell` follows loom's interface (`with`/`with_mut` taking closures
//! over raw pointers) in both builds, so call sites are identical.
//!
//! In production builds the atomics are `#[repr(transparent)]` newtypes over
//! `std`'s (same layout, so they can sit in a segment); they exist because
//! clippy sees through re-exports, and a ban on `std::sync::atomic::AtomicU32`
//! would otherwise also ban `shmem::sync::AtomicU32`. `as_std` hands out the
//! underlying `std` atomic where a system call needs one (the futex).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

pub use std::sync::atomic::Ordering;

#[cfg(loom)]
pub use loom::hint::spin_loop;
#[cfg(loom)]
pub use loom::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicU32, AtomicU64, AtomicUsize, fence,
};

/// A memory fence; see [`std::sync::atomic::fence`].
#[cfg(not(loom))]
#[inline(always)]
pub fn fence(order: Ordering) {
    std::sync::atomic::fence(order);
}

/// Tells the CPU it is in a spin-wait loop; see [`std::hint::spin_loop`].
/// Under loom this yields to another modelled thread instead.
#[cfg(not(loom))]
#[inline(always)]
pub fn spin_loop() {
    std::hint::spin_loop();
}

#[cfg(not(loom))]
macro_rules! atomic_int {
    ($(#[$doc:meta])* $name:ident, $std:ident, $int:ty) => {
        $(#[$doc])*
        #[derive(Default)]
        #[repr(transparent)]
        pub struct $name(std::sync::atomic::$std);

        impl $name {
            /// A new atomic holding `value`.
            pub const fn new(value: $int) -> Self {
                Self(std::sync::atomic::$std::new(value))
            }
            /// The `std` atomic underneath, for system calls that take one.
            #[inline(always)]
            pub fn as_std(&self) -> &std::sync::atomic::$std {
                &self.0
            }
            /// See `std`'s `load`.
            #[inline(always)]
            pub fn load(&self, order: Ordering) -> $int {
                self.0.load(order)
            }
            /// See `std`'s `store`.
            #[inline(always)]
            pub fn store(&self, value: $int, order: Ordering) {
                self.0.store(value, order)
            }
            /// See `std`'s `swap`.
            #[inline(always)]
            pub fn swap(&self, value: $int, order: Ordering) -> $int {
                self.0.swap(value, order)
            }
            /// See `std`'s `compare_exchange`.
            #[inline(always)]
            pub fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange(current, new, success, failure)
            }
            /// See `std`'s `compare_exchange_weak`.
            #[inline(always)]
            pub fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                self.0.compare_exchange_weak(current, new, success, failure)
            }
            /// See `std`'s `fetch_add` (wrapping).
            #[inline(always)]
            pub fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_add(value, order)
            }
            /// See `std`'s `fetch_sub` (wrapping).
            #[inline(always)]
            pub fn fetch_sub(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_sub(value, order)
            }
            /// See `std`'s `fetch_and`.
            #[inline(always)]
            pub fn fetch_and(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_and(value, order)
            }
            /// See `std`'s `fetch_or`.
            #[inline(always)]
            pub fn fetch_or(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_or(value, order)
            }
            /// See `std`'s `fetch_xor`.
            #[inline(always)]
            pub fn fetch_xor(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_xor(value, order)
            }
            /// See `std`'s `fetch_max`.
            #[inline(always)]
            pub fn fetch_max(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_max(value, order)
            }
            /// See `std`'s `fetch_min`.
            #[inline(always)]
            pub fn fetch_min(&self, value: $int, order: Ordering) -> $int {
                self.0.fetch_min(value, order)
            }
            /// See `std`'s `fetch_update`.
            #[inline(always)]
            pub fn fetch_update(
                &self,
                set_order: Ordering,
                fetch_order: Ordering,
                f: impl FnMut($int) -> Option<$int>,
            ) -> Result<$int, $int> {
                self.0.fetch_update(set_order, fetch_order, f)
            }
            /// Exclusive access, no synchronisation needed.
            #[inline(always)]
            pub fn get_mut(&mut self) -> &mut $int {
                self.0.get_mut()
            }
            /// Consumes the atomic.
            pub fn into_inner(self) -> $int {
                self.0.into_inner()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Debug::fmt(&self.0, f)
            }
        }

        // SAFETY: an atomic integer is a plain integer in memory; all-zero is 0.
        unsafe impl bytemuck::Zeroable for $name {}
    };
}

#[cfg(not(loom))]
atomic_int!(
    /// An atomic `u32`, layout-identical to `std`'s.
    AtomicU32, AtomicU32, u32
);
#[cfg(not(loom))]
atomic_int!(
    /// An atomic `u64`, layout-identical to `std`'s.
    AtomicU64, AtomicU64, u64
);
#[cfg(not(loom))]
atomic_int!(
    /// An atomic `usize`, layout-identical to `std`'s.
    AtomicUsize, AtomicUsize, usize
);
#[cfg(not(loom))]
atomic_int!(
    /// An atomic `i32`, layout-identical to `std`'s.
    AtomicI32, AtomicI32, i32
);
#[cfg(not(loom))]
atomic_int!(
    /// An atomic `i64`, layout-identical to `std`'s.
    AtomicI64, AtomicI64, i64
);

/// An atomic `bool`, layout-identical to `std`'s. Not [`crate::ShmSafe`]:
/// a byte other than 0 or 1 would be an invalid `bool`, and shared memory
/// may hold any byte. Use an [`AtomicU32`] flag in a segment.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct AtomicBool(std::sync::atomic::AtomicBool);

#[cfg(not(loom))]
impl AtomicBool {
    /// A new atomic holding `value`.
    pub const fn new(value: bool) -> Self {
        Self(std::sync::atomic::AtomicBool::new(value))
    }
    /// See `std`'s `load`.
    #[inline(always)]
    pub fn load(&self, order: Ordering) -> bool {
        self.0.load(order)
    }
    /// See `std`'s `store`.
    #[inline(always)]
    pub fn store(&self, value: bool, order: Ordering) {
        self.0.store(value, order)
    }
    /// See `std`'s `swap`.
    #[inline(always)]
    pub fn swap(&self, value: bool, order: Ordering) -> bool {
        self.0.swap(value, order)
    }
    /// See `std`'s `compare_exchange`.
    #[inline(always)]
    pub fn compare_exchange(
        &self,
        current: bool,
        new: bool,
        success: Ordering,
        failure: Ordering,
    ) -> Result<bool, bool> {
        self.0.compare_exchange(current, new, success, failure)
    }
}

#[cfg(loom)]
pub use loom::cell::UnsafeCell;

/// `std::cell::UnsafeCell` behind loom's closure-based interface.
///
/// `#[repr(transparent)]`, so it has exactly the layout of `T` and can sit in
/// a `#[repr(C)]` structure in shared memory.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub const fn new(value: T) -> Self {
        Self(std::cell::UnsafeCell::new(value))
    }

    /// Unwraps the value.
    pub fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
impl<T: ?Sized> UnsafeCell<T> {
    /// Calls `f` with a shared raw pointer to the contents. The caller's
    /// protocol must rule out a concurrent writer while `f` reads.
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Calls `f` with a mutable raw pointer to the contents. The caller's
    /// protocol must make this the only access while `f` writes.
    #[inline(always)]
    pub fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

// SAFETY: the wrapper adds no state; a zeroed `UnsafeCell<T>` is a zeroed `T`,
// which is valid whenever `T: Zeroable`.
#[cfg(not(loom))]
unsafe impl<T: bytemuck::Zeroable> bytemuck::Zeroable for UnsafeCell<T> {}
