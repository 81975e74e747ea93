//! `postmaster bench`: cross-process figures, each printed as one
//! `name value unit` line, with baselines measured in the same run so that
//! ratios (printed as `ratio_<ours>_vs_<peer> value x`) mean something on
//! any machine.
//!
//! Each group lives in its own file and returns its figures; a group may
//! fork (the CLI process is single-threaded), pin processes to CPUs, and
//! must check that what it measured was correct before reporting a time.
//!
//! # Groups
//!
//! `segment`, `latch`, `ring`, `slots`, `bgw`, `mailbox` and `pingpong`. A filter
//! selects the groups whose name contains it, or that list it as a keyword:
//! `pingpong` answers to `iceoryx2` and `peers` when the crate is built
//! with `--features peers`, which adds iceoryx2 0.10 beside our ping-pongs
//! (see `pingpong.rs`; iceoryx2 0.10 needs Rust 1.89). Without the feature
//! those filters match nothing and the error says which feature to turn on.
//!
//! # Scaling figures on a two-CPU machine
//!
//! `mpsc_xproc_p{1,2,4,8}_mmsgs` (ring) put every producer process on
//! CPU 1 and the consumer on CPU 0; `worker_start_w{16,64,256}_us` (bgw)
//! start a dynamic worker while 16, 64 or 256 other workers are
//! registered and running. With two CPUs, more than one producer (or a few
//! hundred workers) oversubscribes the machine: these figures show how
//! gracefully throughput and latency degrade and how fairly the producers
//! share (`mpsc_xproc_pN_fairness`), not a speed-up.
//!
//! # `--json`
//!
//! With `--json` nothing is printed while groups run; at the end one JSON
//! document goes to stdout. Its shape is stable (fields are only ever
//! added, and `format` changes if one is removed or changes meaning):
//!
//! ```json
//! {
//!   "format": "postmaster-bench/1",
//!   "quick": true,
//!   "filter": null,
//!   "peers": false,
//!   "cpus": 2,
//!   "loadavg_start": [0.59, 1.25, 1.92],
//!   "loadavg_end": [1.10, 1.31, 1.90],
//!   "groups": [{"name": "latch", "seconds": 4.2}],
//!   "figures": [{"group": "latch", "name": "pipe_write_ns", "value": 412.0, "unit": "ns"}],
//!   "ratios": [{"group": "latch", "name": "ratio_latch_set_nowaiter_vs_pipe_write", "value": 0.02, "unit": "x"}]
//! }
//! ```
//!
//! - `figures`: every measured figure in the order printed; `ratios`: every
//!   `ratio_<ours>_vs_<peer>` (unit `x`, ours divided by the peer's, both
//!   measured in this run). Each entry has `group`, `name`, `value` (a
//!   number, or `null` if it was not finite) and `unit`.
//! - A group that measures a peer beside one of our figures measures ours
//!   again next to it (`pingpong` re-measures `latch_pingpong_nospin_rtt_ns`
//!   beside iceoryx2's event), so a name can appear under two groups;
//!   (`group`, `name`) is unique.
//! - `loadavg_*` is `/proc/loadavg` before and after (the machine may be
//!   shared; absolute figures are only comparable at similar load), `cpus`
//!   the CPUs this process may run on, `peers` whether the `peers` feature
//!   was built in, `seconds` each group's wall time.
//!
//! Plain output is one `name value unit` line per figure, as each group
//! finishes.

mod bgw;
mod child;
mod latch;
mod mailbox;
mod pingpong;
mod ring;
mod segment;
mod slots;

pub use child::{err, fork_pinned, pin_to_cpu, reap};

use std::fmt::Write as _;
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
    /// Print one JSON document at the end instead of lines as they come.
    pub json: bool,
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

/// A group of figures.
struct Group {
    /// Its name; a filter contained in it selects the group.
    name: &'static str,
    /// Other filters that select it exactly.
    keywords: &'static [&'static str],
    /// Measures and returns the figures, ratios last.
    run: fn(&BenchOpts) -> Result<Vec<Figure>, String>,
}

impl Group {
    const fn new(name: &'static str, run: fn(&BenchOpts) -> Result<Vec<Figure>, String>) -> Self {
        Self {
            name,
            keywords: &[],
            run,
        }
    }

    fn selected_by(&self, filter: Option<&str>) -> bool {
        filter.is_none_or(|f| self.name.contains(f) || self.keywords.contains(&f))
    }
}

const GROUPS: &[Group] = &[
    Group::new("segment", segment::run),
    Group::new("latch", latch::run),
    Group::new("ring", ring::run),
    Group::new("slots", slots::run),
    Group::new("bgw", bgw::run),
    Group::new("mailbox", mailbox::run),
    Group {
        name: "pingpong",
        keywords: pingpong::KEYWORDS,
        run: pingpong::run,
    },
];

/// Runs every group whose name contains `filter` (all if `None`) and
/// prints each figure as it arrives, or, with `--json`, one document at the
/// end (see the module docs).
pub fn run(opts: &BenchOpts, filter: Option<&str>) -> Result<(), String> {
    let selected: Vec<&Group> = GROUPS.iter().filter(|g| g.selected_by(filter)).collect();
    if selected.is_empty() {
        let names: Vec<_> = GROUPS.iter().map(|g| g.name).collect();
        let hint = if cfg!(feature = "peers") {
            ""
        } else {
            " (iceoryx2 is measured only in a build with `--features peers`)"
        };
        return Err(format!(
            "no bench group matches {:?}; groups are {}{hint}",
            filter.unwrap_or(""),
            names.join(", ")
        ));
    }
    let load_start = loadavg();
    // Each group starts from the CLI's own placement, whatever the one
    // before it pinned.
    let placement = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let mut report = Vec::new();
    for group in selected {
        if let Some(set) = &placement {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set);
        }
        let started = Instant::now();
        let figures = (group.run)(opts).map_err(|e| format!("bench group {}: {e}", group.name))?;
        if !opts.json {
            for fig in &figures {
                println!("{} {} {}", fig.name, format_value(fig.value), fig.unit);
            }
        }
        report.push((group.name, started.elapsed(), figures));
    }
    if let Some(set) = &placement {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), set);
    }
    if opts.json {
        println!(
            "{}",
            json_document(opts, filter, load_start, loadavg(), &report)
        );
    }
    Ok(())
}

/// `/proc/loadavg`'s three averages, if readable.
fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some([fields.next()??, fields.next()??, fields.next()??])
}

/// The `--json` document (shape in the module docs).
fn json_document(
    opts: &BenchOpts,
    filter: Option<&str>,
    load_start: Option<[f64; 3]>,
    load_end: Option<[f64; 3]>,
    report: &[(&str, Duration, Vec<Figure>)],
) -> String {
    let number = |v: f64| {
        if v.is_finite() {
            format!("{v}")
        } else {
            "null".to_owned()
        }
    };
    let load = |l: Option<[f64; 3]>| {
        l.map_or("null".to_owned(), |l| {
            format!("[{}, {}, {}]", number(l[0]), number(l[1]), number(l[2]))
        })
    };
    let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&c| set.is_set(c).unwrap_or(false))
                .count()
        })
        .unwrap_or(0);
    let mut out = String::from("{\n");
    let _ = writeln!(out, "  \"format\": \"postmaster-bench/1\",");
    let _ = writeln!(out, "  \"quick\": {},", opts.quick);
    let _ = writeln!(
        out,
        "  \"filter\": {},",
        filter.map_or("null".to_owned(), json_string)
    );
    let _ = writeln!(out, "  \"peers\": {},", cfg!(feature = "peers"));
    let _ = writeln!(out, "  \"cpus\": {cpus},");
    let _ = writeln!(out, "  \"loadavg_start\": {},", load(load_start));
    let _ = writeln!(out, "  \"loadavg_end\": {},", load(load_end));
    let groups: Vec<String> = report
        .iter()
        .map(|(name, took, _)| {
            format!(
                "    {{\"name\": {}, \"seconds\": {}}}",
                json_string(name),
                number((took.as_secs_f64() * 100.0).round() / 100.0)
            )
        })
        .collect();
    let _ = writeln!(out, "  \"groups\": [\n{}\n  ],", groups.join(",\n"));
    let entries = |ratios: bool| -> String {
        let lines: Vec<String> = report
            .iter()
            .flat_map(|(group, _, figures)| figures.iter().map(move |f| (group, f)))
            .filter(|(_, f)| f.name.starts_with("ratio_") == ratios)
            .map(|(group, f)| {
                format!(
                    "    {{\"group\": {}, \"name\": {}, \"value\": {}, \"unit\": {}}}",
                    json_string(group),
                    json_string(&f.name),
                    number(f.value),
                    json_string(f.unit)
                )
            })
            .collect();
        if lines.is_empty() {
            "[]".to_owned()
        } else {
            format!("[\n{}\n  ]", lines.join(",\n"))
        }
    };
    let _ = writeln!(out, "  \"figures\": {},", entries(false));
    let _ = writeln!(out, "  \"ratios\": {}", entries(true));
    out.push('}');
    out
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
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
