//! The bounded, adaptive spin a waiter may do before it sleeps.
//!
//! # When spinning pays
//!
//! On this machine (a 2-vCPU KVM guest, DESIGN.md) a process asleep on a
//! futex is woken by the other vCPU in ~30 µs, because the hypervisor has to
//! wake a halted vCPU; a store to a cache line that the waiter is polling
//! reaches it in ~150 ns. So when the setter runs on *another* CPU and sets
//! the latch within a few microseconds, polling the word for a few
//! microseconds turns a ~60 µs round trip into a sub-microsecond one.
//!
//! When the setter shares the waiter's CPU, spinning is pure loss: the setter
//! cannot run until the spinner gives the CPU up, so every spin runs to its
//! limit and then sleeps anyway. A waiter cannot cheaply see where its future
//! setter runs, so [`SpinPolicy::Adaptive`] learns from outcomes instead:
//!
//! - it spins the full budget while spins keep seeing the latch set;
//! - after [`MISSES_TO_PAUSE`] spins in a row ran out, it stops spinning;
//! - while paused, one wait in [`PROBE_EVERY`] spins the full budget as a
//!   probe, so a workload that moves to separate CPUs is noticed again; a
//!   probe that hits ends the pause.
//!
//! The budget is all or nothing, not halved on a miss, because of how a
//! ping-pong falls asleep: once one side sleeps, the other's set takes a
//! whole cross-vCPU wake-up (~30 µs) to be answered, so only a spin longer
//! than that can catch the answer and bring both sides back to spinning.
//! [`DEFAULT_MAX_SPIN`] is chosen above that wake-up for the same reason.
//!
//! On one CPU this settles at one probe per [`PROBE_EVERY`] waits (under a
//! quarter of a microsecond per wait on average); across CPUs with a prompt
//! setter every spin hits. The outcome history lives in the latch itself
//! ([`SpinHint`], owner-private), so it survives across waits.
//!
//! # Units
//!
//! Budgets are wall-clock time, checked every [`CLOCK_EVERY`] polls; the
//! pause instruction's latency varies ten-fold between CPU models, so an
//! iteration count would mean nothing. Under `--cfg loom` a spin is at most
//! [`LOOM_SPIN_POLLS`] polls of the word.

use std::time::Duration;

/// The default spin budget: longer than a cross-vCPU futex wake-up on this
/// machine (~30 µs), so that a waiter whose peer was asleep still catches
/// the peer's answer (see the module docs); a spin that runs out costs
/// about as much as the wake-up it tried to avoid.
pub const DEFAULT_MAX_SPIN: Duration = Duration::from_micros(50);

/// Consecutive misses after which [`SpinPolicy::Adaptive`] pauses spinning.
pub const MISSES_TO_PAUSE: u32 = 3;

/// While paused, one wait in this many spins a probe (the full budget).
pub const PROBE_EVERY: u32 = 256;

/// The spin loop reads the clock once per this many polls of the word.
pub const CLOCK_EVERY: u32 = 8;

/// Under loom, a spin polls at most this many times.
pub const LOOM_SPIN_POLLS: u32 = 2;

/// How a waiter spins before it sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpinPolicy {
    /// Never spin: check once, then sleep on the futex.
    Off,
    /// Spin up to this long on every wait that finds the latch unset.
    Fixed(Duration),
    /// Spin up to this long, or not at all while recent spins kept running
    /// out; see the module docs. The default, with
    /// [`DEFAULT_MAX_SPIN`].
    Adaptive(Duration),
}

impl Default for SpinPolicy {
    fn default() -> Self {
        Self::Adaptive(DEFAULT_MAX_SPIN)
    }
}

/// Options for [`Latch::wait_with`](crate::Latch::wait_with).
///
/// ```
/// use std::time::Duration;
/// use latch::{SpinPolicy, WaitOptions};
///
/// let default = WaitOptions::default();
/// assert_eq!(default.spin, SpinPolicy::Adaptive(latch::spin::DEFAULT_MAX_SPIN));
/// let never = WaitOptions::no_spin();
/// let eager = WaitOptions::default().spin(SpinPolicy::Fixed(Duration::from_micros(50)));
/// # let _ = (never, eager);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WaitOptions {
    /// The spin before sleeping.
    pub spin: SpinPolicy,
}

impl WaitOptions {
    /// Options that never spin.
    pub const fn no_spin() -> Self {
        Self {
            spin: SpinPolicy::Off,
        }
    }

    /// These options with `spin` as the spin policy.
    pub const fn spin(mut self, spin: SpinPolicy) -> Self {
        self.spin = spin;
        self
    }
}

/// The adaptive spin's memory, packed into the latch's `spin_hint` word.
///
/// Bits 0..8 hold `misses` (consecutive spins that ran out, saturating at
/// [`MISSES_TO_PAUSE`]); bits 8..32 hold `since_probe` (waits since the last
/// probe while paused, saturating below [`PROBE_EVERY`]). All-zero: no
/// history, full budget. Any bits decode to a usable hint (values are
/// clamped), since shared memory may hold anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpinHint {
    /// Consecutive spins that ran out, `0 ..= MISSES_TO_PAUSE`.
    pub misses: u32,
    /// Waits since the last probe while paused, `0 .. PROBE_EVERY`.
    pub since_probe: u32,
}

impl SpinHint {
    /// Decodes a packed word, clamping out-of-range fields.
    pub fn unpack(word: u32) -> Self {
        Self {
            misses: (word & 0xff).min(MISSES_TO_PAUSE),
            since_probe: (word >> 8).min(PROBE_EVERY - 1),
        }
    }

    /// Encodes for the latch's word.
    pub fn pack(self) -> u32 {
        debug_assert!(self.misses <= MISSES_TO_PAUSE && self.since_probe < PROBE_EVERY);
        self.misses | (self.since_probe << 8)
    }

    /// How long to spin on this wait under an adaptive budget of `max`,
    /// and the hint to store whatever the spin's outcome.
    pub fn plan(self, max: Duration) -> (Duration, Self) {
        if self.misses < MISSES_TO_PAUSE {
            (max, self)
        } else if self.since_probe + 1 >= PROBE_EVERY {
            let probe = Self {
                since_probe: 0,
                ..self
            };
            (max, probe)
        } else {
            let skip = Self {
                since_probe: self.since_probe + 1,
                ..self
            };
            (Duration::ZERO, skip)
        }
    }

    /// The hint after a spin that saw the latch set (`hit`) or ran out.
    pub fn after_spin(self, hit: bool) -> Self {
        if hit {
            Self::default()
        } else {
            Self {
                misses: (self.misses + 1).min(MISSES_TO_PAUSE),
                ..self
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(16);

    #[test]
    fn misses_pause_the_spin_then_probes_resume_it() {
        let mut hint = SpinHint::default();
        for _ in 0..MISSES_TO_PAUSE {
            let (budget, next) = hint.plan(MAX);
            assert_eq!(budget, MAX);
            hint = next.after_spin(false);
        }
        // Paused: no spin until the probe is due.
        for _ in 0..PROBE_EVERY - 1 {
            let (budget, next) = hint.plan(MAX);
            assert_eq!(budget, Duration::ZERO);
            hint = next;
        }
        let (probe, next) = hint.plan(MAX);
        assert_eq!(probe, MAX);
        // A probe that misses stays paused; one that hits ends the pause.
        assert_eq!(next.after_spin(false).plan(MAX).0, Duration::ZERO);
        assert_eq!(next.after_spin(true), SpinHint::default());
    }

    #[test]
    fn a_hit_forgets_earlier_misses() {
        let hint = SpinHint::default().after_spin(false).after_spin(false);
        assert_eq!(hint.misses, 2);
        assert_eq!(hint.after_spin(true), SpinHint::default());
    }

    #[test]
    fn any_word_decodes_to_a_valid_hint() {
        for word in [0, 1, 0xff, 0x100, u32::MAX, 0xdead_beef] {
            let hint = SpinHint::unpack(word);
            assert!(hint.misses <= MISSES_TO_PAUSE);
            assert!(hint.since_probe < PROBE_EVERY);
            assert_eq!(SpinHint::unpack(hint.pack()), hint);
            let _ = hint.plan(MAX);
        }
    }
}
