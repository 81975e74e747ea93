//! Supervision groups: Erlang/OTP's supervisor flags for a set of workers.
//!
//! A group has a **strategy** (which siblings restart when one fails), a
//! **restart intensity** (at most `max_restarts` restarts within `period`;
//! one more escalates), a **backoff** (the delay before restarting an
//! OTP-style `Permanent` or `Transient` worker grows with its consecutive
//! failures) and optionally **ordered start** (a member starts only once
//! every member registered before it reports ready).
//!
//! Escalation stops the group's workers in reverse start order and then,
//! as a top-level supervisor does in OTP, shuts the postmaster down with a
//! log line that names the worker and its recent exits, unless the group
//! says to just stay stopped (its workers then show as failed until an
//! operator starts one of them). Groups do not nest (yet): every group is a
//! child of the postmaster.
//!
//! Every worker belongs to a group; those that name none belong to the
//! *root* group, whose settings reproduce PostgreSQL's behaviour: one for
//! one, no intensity limit, no backoff, no ordering.

use std::collections::VecDeque;
use std::time::Duration;

/// Which workers restart when one of a group's workers fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Only the worker that failed.
    #[default]
    OneForOne,
    /// Every worker of the group: the others are stopped (reverse start
    /// order), then all start again (registration order).
    OneForAll,
    /// The worker that failed and every worker registered after it.
    RestForOne,
}

/// At most `max_restarts` restarts within any `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Intensity {
    /// Restarts allowed within the period.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

impl Intensity {
    /// No limit (the root group's setting).
    pub const UNLIMITED: Intensity = Intensity {
        max_restarts: u32::MAX,
        period: Duration::ZERO,
    };
}

impl Default for Intensity {
    /// OTP's default: 1 restart in 5 seconds.
    fn default() -> Self {
        Intensity {
            max_restarts: 1,
            period: Duration::from_secs(5),
        }
    }
}

/// The delay before the n-th consecutive restart of a worker:
/// `min(max, initial * 2^(n-1))`, then moved by up to `jitter` of itself
/// either way (so a crowd of workers does not restart in lock step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The cap; a worker that ran this long without failing starts over
    /// from `initial`.
    pub max: Duration,
    /// Fraction in `[0, 1]`.
    pub jitter: f64,
}

impl Backoff {
    /// No delay at all.
    pub const NONE: Backoff = Backoff {
        initial: Duration::ZERO,
        max: Duration::ZERO,
        jitter: 0.0,
    };

    /// The delay before restart number `failures` (1 for the first), with
    /// `random` a uniform draw from `[0, 1)` for the jitter.
    pub fn delay(&self, failures: u32, random: f64) -> Duration {
        if failures == 0 || self.initial.is_zero() {
            return Duration::ZERO;
        }
        let doublings = (failures - 1).min(32);
        let base = self
            .initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max.max(self.initial));
        let jitter = self.jitter.clamp(0.0, 1.0);
        // random in [0, 1) → factor in [1 - jitter, 1 + jitter).
        let factor = 1.0 + jitter * (2.0 * random - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s, ±10%.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: 0.1,
        }
    }
}

/// What escalation does after the group's workers are stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Escalation {
    /// Shut the postmaster down (exit code 1): OTP's top-level supervisor.
    #[default]
    Shutdown,
    /// Leave the group stopped, everything else running. Its workers stay
    /// registered and show as failed; starting any of them (`postmaster
    /// start`) starts the whole group afresh, its restart history
    /// forgotten.
    StopGroup,
}

/// A group's settings.
///
/// ```
/// use std::time::Duration;
/// use bgw::group::{GroupSpec, Intensity, Strategy};
///
/// let pipeline = GroupSpec::new("pipeline")
///     .strategy(Strategy::RestForOne)
///     .intensity(Intensity { max_restarts: 3, period: Duration::from_secs(10) })
///     .ordered(true);
/// assert_eq!(pipeline.name(), "pipeline");
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    name: String,
    strategy: Strategy,
    intensity: Intensity,
    backoff: Backoff,
    ordered: bool,
    escalation: Escalation,
}

/// The root group's name.
pub const ROOT: &str = "root";

impl GroupSpec {
    /// A group with OTP's defaults: one for one, 1 restart in 5 s, the
    /// default backoff, unordered, escalation shuts down.
    pub fn new(name: impl Into<String>) -> Self {
        GroupSpec {
            name: name.into(),
            strategy: Strategy::OneForOne,
            intensity: Intensity::default(),
            backoff: Backoff::default(),
            ordered: false,
            escalation: Escalation::Shutdown,
        }
    }

    /// The root group: PostgreSQL's behaviour.
    pub fn root() -> Self {
        GroupSpec {
            name: ROOT.to_owned(),
            strategy: Strategy::OneForOne,
            intensity: Intensity::UNLIMITED,
            backoff: Backoff::NONE,
            ordered: false,
            escalation: Escalation::Shutdown,
        }
    }

    /// The strategy.
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// The restart intensity.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = intensity;
        self
    }

    /// The backoff for `Permanent` and `Transient` workers.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Start each member only after the previous ones report ready.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// What escalation does.
    pub fn escalation(mut self, escalation: Escalation) -> Self {
        self.escalation = escalation;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The strategy.
    pub fn strategy_value(&self) -> Strategy {
        self.strategy
    }

    /// The intensity.
    pub fn intensity_value(&self) -> Intensity {
        self.intensity
    }

    /// The backoff.
    pub fn backoff_value(&self) -> Backoff {
        self.backoff
    }

    /// Whether start is ordered.
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The escalation.
    pub fn escalation_value(&self) -> Escalation {
        self.escalation
    }
}

/// The restarts a group made within its intensity period.
#[derive(Clone, Debug, Default)]
pub(crate) struct RestartWindow {
    times: VecDeque<Duration>,
}

impl RestartWindow {
    /// Records a restart at `now`; returns `false` if it is one too many
    /// (the group must escalate instead).
    pub(crate) fn allow(&mut self, intensity: Intensity, now: Duration) -> bool {
        if intensity.max_restarts == u32::MAX {
            return true;
        }
        while self
            .times
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= intensity.period)
        {
            self.times.pop_front();
        }
        if self.times.len() >= intensity.max_restarts as usize {
            return false;
        }
        self.times.push_back(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intensity_allows_max_restarts_per_sliding_period() {
        let intensity = Intensity {
            max_restarts: 2,
            period: Duration::from_secs(10),
        };
        let mut w = RestartWindow::default();
        let s = Duration::from_secs;
        assert!(w.allow(intensity, s(0)));
        assert!(w.allow(intensity, s(3)));
        assert!(!w.allow(intensity, s(9)), "a third within 10 s escalates");
        assert!(w.allow(intensity, s(10)), "the first has left the window");
        assert!(!w.allow(intensity, s(12)));
        assert!(w.allow(intensity, s(13)));
    }

    #[test]
    fn zero_restarts_allowed_escalates_on_the_first() {
        let mut w = RestartWindow::default();
        let none = Intensity {
            max_restarts: 0,
            period: Duration::from_secs(1),
        };
        assert!(!w.allow(none, Duration::ZERO));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_stays_in_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: 0.0,
        };
        let ms = |n| b.delay(n, 0.5).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [100, 200, 400, 800, 1000, 1000]
        );
        let j = Backoff { jitter: 0.25, ..b };
        for r in [0.0, 0.3, 0.999] {
            let d = j.delay(2, r).as_millis();
            assert!((150..=250).contains(&d), "{d} ms outside 200 ms ± 25%");
        }
        assert_eq!(j.delay(2, 0.0).as_millis(), 150);
        assert_eq!(Backoff::NONE.delay(7, 0.9), Duration::ZERO);
    }
}
