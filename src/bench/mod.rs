//! `postmaster bench`: cross-process figures, each printed as one
//! `name value unit` line, with baselines measured in the same run so that
//! ratios (printed as `ratio_<ours>_vs_<peer> value x`) mean something on
//! any machine.
//!
//! Each group lives in its own file and returns its figures; a group may
//! fork (the CLI process is single-threaded), pin processes to CPUs, and
//! must check that what it measured was correct before reporting a time.

mod bgw;
mod latch;
mod mailbox;
mod ring;
mod segment;
mod slots;

use std::time::{Duration, Instant};

/// One measured figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    /// `snake_case`, ending in the unit's family (`_ns`, `_mops`, ...).
    pub name: String,
    /// The value, in `unit`s.
    pub value: f64,
    /// `ns`, `mops`, `mmsgs`, `mbps`, `x` (a ratio), ...
    pub unit: &'static str,
}

impl Figure {
    /// A figure.
    pub fn new(name: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            name: name.into(),
            value,
            unit,
        }
    }

    /// `ratio_<ours>_vs_<peer>`: ours divided by the peer's value.
    pub fn ratio(ours: &Figure, peer: &Figure) -> Self {
        let strip = |n: &str| {
            n.rsplit_once('_')
                .map_or(n.to_owned(), |(stem, _unit)| stem.to_owned())
        };
        Self::new(
            format!("ratio_{}_vs_{}", strip(&ours.name), strip(&peer.name)),
            ours.value / peer.value,
            "x",
        )
    }
}

/// Options shared by every group.
#[derive(Clone, Copy, Debug)]
pub struct BenchOpts {
    /// Short runs (the whole `--quick` suite stays well under a minute).
    pub quick: bool,
}

impl BenchOpts {
    /// How long one measurement should run.
    pub fn budget(&self) -> Duration {
        if self.quick {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(2)
        }
    }
}

/// A group of figures: its name (the filter matches it) and its runner.
type Group = (&'static str, fn(&BenchOpts) -> Result<Vec<Figure>, String>);

const GROUPS: &[Group] = &[
    ("segment", segment::run),
    ("latch", latch::run),
    ("ring", ring::run),
    ("slots", slots::run),
    ("bgw", bgw::run),
    ("mailbox", mailbox::run),
];

/// Runs every group whose name contains `filter` (all if `None`) and
/// prints each figure as it arrives.
pub fn run(opts: &BenchOpts, filter: Option<&str>) -> Result<(), String> {
    let mut ran = false;
    for (name, group) in GROUPS {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran = true;
        for fig in group(opts).map_err(|e| format!("bench group {name}: {e}"))? {
            println!("{} {} {}", fig.name, format_value(fig.value), fig.unit);
        }
    }
    if !ran {
        let names: Vec<_> = GROUPS.iter().map(|(n, _)| *n).collect();
        return Err(format!(
            "no bench group matches {:?}; groups are {}",
            filter.unwrap_or(""),
            names.join(", ")
        ));
    }
    Ok(())
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// Calls `op` repeatedly for about `budget` and returns the mean cost of one
/// call in nanoseconds. `op` runs in batches so the clock is read rarely.
pub fn mean_ns(budget: Duration, mut op: impl FnMut()) -> f64 {
    // Warm up caches, page tables and branch predictors.
    for _ in 0..64 {
        op();
    }
    let mut batch = 1u64;
    let mut calls = 0u64;
    let start = Instant::now();
    loop {
        for _ in 0..batch {
            op();
        }
        calls += batch;
        let elapsed = start.elapsed();
        if elapsed >= budget {
            return elapsed.as_nanos() as f64 / calls as f64;
        }
        batch = (batch * 2).min(1 << 20);
    }
}

/// Pins the calling thread (the whole process, if it has one thread) to
/// `cpu`, so that cross-CPU figures really cross CPUs and same-CPU figures
/// really share one.
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity to cpu {cpu}: {e}"))
}
