//! Reliability with real processes: a worker that scribbles over the
//! postmaster's regions costs a reset, never a dead, hung or confused
//! postmaster; a killed postmaster takes its children with it and leaves a
//! stale segment the next start names; and thousands of worker restarts
//! leave the postmaster's descriptors and memory flat. See `common/mod.rs`
//! for how the harness runs a postmaster.
//!
//! `BGW_RELIABILITY_RESTARTS=10000` runs the resource check over the full
//! 10,000 restarts (the default is 1,000, to keep `cargo test` short).

mod common;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use bgw::shared::Shared;
use bgw::spec::OnCrash;
use bgw::{Endpoint, Postmaster, Restart, WorkerContext, WorkerResult, WorkerSpec};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shmem::Segment;

/// The regions a hostile worker may scribble over, by the scenario that
/// picks each: every region whose name starts with the prefix.
const TARGETS: [(&str, &str); 4] = [
    ("hostile_procs", proclist::array::regions::SLOTS),
    ("hostile_registry", bgw::registry::REGION),
    ("hostile_names", bgw::names::REGION),
    ("hostile_inboxes", bgw::mailbox::REGION),
];

fn main() {
    common::main(
        &[
            (
                "random_bytes_over_the_proc_array_cost_a_reset_not_the_postmaster",
                "hostile_procs",
                scribbled_over,
            ),
            (
                "random_bytes_over_the_registration_slots_cost_a_reset_not_the_postmaster",
                "hostile_registry",
                scribbled_over,
            ),
            (
                "random_bytes_over_the_name_table_cost_a_reset_not_the_postmaster",
                "hostile_names",
                scribbled_over,
            ),
            (
                "random_bytes_over_the_inboxes_cost_a_reset_not_the_postmaster",
                "hostile_inboxes",
                scribbled_over,
            ),
            (
                "a_killed_postmaster_takes_every_child_along_and_the_next_start_names_the_stale_segment",
                "pm_death",
                postmaster_death,
            ),
            (
                "descriptors_and_memory_stay_flat_across_worker_restarts",
                "churn",
                churn,
            ),
        ],
        &[],
        configure,
    );
}

// ---------------------------------------------------------------------------
// Workers.

/// xorshift64*: random enough to be garbage, seeded per process.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// On its first run: writes random bytes over every region whose name
/// starts with its argument (through the segment's file, like any process
/// of the user could), tells the postmaster to look, lets it run over the
/// garbage for three backend sweeps, then crashes (a panic: exit 70)
/// unless the postmaster stopped it first. Later runs just sleep.
fn hostile(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let first = parse_events(&std::fs::read_to_string(events_path()).unwrap_or_default())
        .iter()
        .filter(|l| l.worker == "hostile" && l.what == "start")
        .count()
        == 1;
    if !first {
        return sleeper_loop(ctx);
    }
    let segment = ctx.segment().ok_or("hostile needs shared memory")?;
    let prefix = std::str::from_utf8(ctx.arg())?;
    let name = std::env::var("BGW_TEST_SEGMENT")?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/dev/shm/postmaster.{name}"))?;
    let mut written = 0;
    for region in segment.layout().regions() {
        if region.name().starts_with(prefix) {
            let seed = u64::from(std::process::id()) << 20 ^ region.offset() as u64;
            file.write_all_at(&garbage(seed, region.len()), region.offset() as u64)?;
            written += region.len();
        }
    }
    record(ctx, "scribbled", &written.to_string());
    let _ = kill(Pid::from_raw(ctx.postmaster_pid() as i32), Signal::SIGUSR1);
    let until = Instant::now() + 3 * bgw::postmaster::BACKEND_SWEEP;
    while Instant::now() < until {
        ctx.latch().reset();
        if ctx.should_stop() {
            break;
        }
        if ctx.wait(Some(until)) == latch::Wake::PostmasterDied {
            return Ok(bgw::WorkerExit::Done);
        }
    }
    panic!("hostile: done scribbling; crashing as a scribbler would");
}

/// Ends at once, asking to be restarted.
fn quick(_ctx: &mut WorkerContext<'_>) -> WorkerResult {
    Ok(bgw::WorkerExit::Restart)
}

fn configure(scenario: &str, pm: &mut Postmaster) -> Vec<WorkerSpec> {
    pm.entry("hostile", hostile).entry("quick", quick);
    let sleeper = |name: &str, shmem: bool| {
        WorkerSpec::new(name)
            .entry("sleeper")
            .shmem(shmem)
            .restart(Restart::Permanent)
    };
    if let Some((_, prefix)) = TARGETS.iter().find(|(s, _)| *s == scenario) {
        return vec![
            sleeper("calm", true),
            WorkerSpec::new("hostile")
                .entry("hostile")
                .arg(prefix.as_bytes())
                .restart(Restart::Permanent),
        ];
    }
    match scenario {
        "pm_death" => vec![
            sleeper("a", true),
            sleeper("b", true),
            sleeper("c", false),
            WorkerSpec::new("d")
                .entry("sleeper")
                .on_crash(OnCrash::Contain)
                .restart(Restart::Permanent),
        ],
        "churn" => vec![
            WorkerSpec::new("quick")
                .entry("quick")
                .on_crash(OnCrash::Contain)
                .restart(Restart::After(Duration::ZERO)),
        ],
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

fn starts(events: &[Line], worker: &str) -> Vec<Line> {
    events
        .iter()
        .filter(|l| l.worker == worker && l.what == "start")
        .cloned()
        .collect()
}

fn scribbled_over(h: &Harness) {
    let mut pm = h.start();
    // The garbage may land before calm has even activated its slot: then
    // calm's first run dies unrecorded, taken down by the reset, and the
    // scribble and its reset can be over before the first look. What must
    // hold is that both run again in a generation after the scribble's.
    let scribbled_in = |e: &[Line]| {
        e.iter()
            .find(|l| l.what == "scribbled")
            .map(|l| l.generation)
    };
    let events = h.wait_events("everyone back after the reset", |e| {
        scribbled_in(e).is_some_and(|scribbled| {
            ["calm", "hostile"]
                .iter()
                .all(|w| starts(e, w).iter().any(|l| l.generation > scribbled))
        })
    });
    let scribbled = events
        .iter()
        .find(|l| l.what == "scribbled")
        .expect("hostile wrote its garbage");
    assert!(
        scribbled.extra.parse::<usize>().unwrap_or(0) > 0,
        "{}: the target region exists",
        h.scenario
    );
    let segment = h.attach();
    assert!(
        segment.generation() > scribbled.generation,
        "{}: the segment was reset",
        h.scenario
    );
    // The postmaster answers, and knows only the workers it was given:
    // nothing was registered, let alone forked, from the garbage.
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions after the reset");
    let mut endpoint = Endpoint::attach(shared).expect("a backend slot after the reset");
    let answer = endpoint
        .call_postmaster("workers", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}: the postmaster does not answer: {e}", h.scenario));
    let mut workers: Vec<&str> = answer.split_whitespace().collect();
    workers.sort();
    assert_eq!(workers, ["calm", "hostile"], "{}", h.scenario);
    drop(endpoint);
    let log = pm.log();
    for line in log
        .lines()
        .filter(|l| l.starts_with("postmaster: worker ") && l.contains(" started (pid"))
    {
        assert!(
            line.contains("worker calm ") || line.contains("worker hostile "),
            "{}: started something it was not given: {line}\n{log}",
            h.scenario
        );
    }
    assert!(
        log.contains("resetting shared memory"),
        "{}: {log}",
        h.scenario
    );
    if h.scenario == "hostile_names" {
        // Found by the postmaster's own sweep, not by the scribbler's crash.
        assert!(
            log.contains("the control inbox's name or proc slot was overwritten"),
            "the sweep checks the control name: {log}"
        );
        assert!(
            !log.contains("ended: exit code 70"),
            "reset before the scribbler crashed: {log}"
        );
    }
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0, "{}: {}", h.scenario, pm.log());
}

fn postmaster_death(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("every worker to start", |e| {
        ["a", "b", "c", "d"]
            .iter()
            .all(|w| count(e, w, "start") == 1)
    });
    let pids: Vec<u32> = ["a", "b", "c", "d"]
        .iter()
        .map(|w| starts(&events, w)[0].pid)
        .collect();
    assert!(segment_exists(&h.segment));
    pm.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert_eq!(pm.wait_exit(), -1, "killed by a signal");
    // Poll (every millisecond, up to a generous deadline) for each child
    // to go, noting when it went.
    let mut gone: Vec<Option<Duration>> = vec![None; pids.len()];
    let deadline = killed + Duration::from_secs(5);
    while gone.iter().any(Option::is_none) && Instant::now() < deadline {
        for (pid, at) in pids.iter().zip(gone.iter_mut()) {
            if at.is_none() && !alive(*pid) {
                *at = Some(killed.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("children gone after the postmaster's SIGKILL: {gone:?}");
    for (pid, at) in pids.iter().zip(&gone) {
        let at = at.unwrap_or_else(|| panic!("worker {pid} outlived its postmaster by 5 s"));
        assert!(
            at <= Duration::from_secs(1),
            "worker {pid} outlived its postmaster by {at:?}"
        );
    }
    // The segment stays behind (nobody unlinked it); the next start says
    // it is stale and how to remove it, and touches nothing.
    assert!(
        segment_exists(&h.segment),
        "the killed postmaster's segment"
    );
    let mut again = h.start();
    let code = again.wait_exit();
    let log = again.log();
    assert_ne!(code, 0, "a start over a stale segment fails: {log}");
    assert!(
        log.contains("is stale") && log.contains("postmaster cleanup --name"),
        "the error names the stale segment and the way out: {log}"
    );
    assert!(segment_exists(&h.segment), "left for the operator");
    Segment::remove_stale(&h.segment).expect("remove the stale segment");
    let mut third = h.start();
    h.wait_events("every worker to start again", |e| {
        ["a", "b", "c", "d"]
            .iter()
            .all(|w| count(e, w, "start") == 2)
    });
    third.signal(Signal::SIGTERM);
    assert_eq!(third.wait_exit(), 0, "{}", third.log());
    assert!(!segment_exists(&h.segment));
}

/// Open descriptors and resident memory of `pid`.
fn resources(pid: Pid) -> (usize, u64) {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the postmaster's fd directory")
        .count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    (fds, rss_kb)
}

fn churn(h: &Harness) {
    let restarts: u64 = std::env::var("BGW_RELIABILITY_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut pm = h.start();
    let segment = wait_attach(h);
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let starts = || {
        bgw::status::read_all(shared.status)
            .iter()
            .find(|r| r.name == "quick")
            .map_or(0, |r| r.starts)
    };
    let wait_starts = |n: u64, deadline: Duration| {
        let until = Instant::now() + deadline;
        while starts() < n {
            assert!(
                Instant::now() < until,
                "only {} of {n} starts within {deadline:?}",
                starts()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // Warm-up: the allocator and the postmaster's tables reach their
    // working size.
    let warm = 200;
    wait_starts(warm, DEADLINE);
    let (fds0, rss0) = resources(pm.pid());
    let began = Instant::now();
    wait_starts(warm + restarts, Duration::from_secs(600));
    let took = began.elapsed();
    let (fds1, rss1) = resources(pm.pid());
    println!(
        "{restarts} restarts in {:.1}s: postmaster fds {fds0} -> {fds1}, VmRSS {rss0} kB -> \
         {rss1} kB",
        took.as_secs_f64()
    );
    assert_eq!(fds1, fds0, "the postmaster's open descriptors");
    assert!(
        rss1 <= rss0 + 1024,
        "the postmaster's resident memory grew by {} kB over {restarts} restarts",
        rss1.saturating_sub(rss0)
    );
    let log = pm.log();
    assert!(!log.contains("reset"), "a clean exit resets nothing: {log}");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0, "{}", pm.log());
}

fn wait_attach(h: &Harness) -> Segment {
    let until = Instant::now() + DEADLINE;
    loop {
        if segment_exists(&h.segment)
            && let Ok(segment) = Segment::attach(&h.segment, &layout_for(&test_shared_config()))
        {
            return segment;
        }
        assert!(Instant::now() < until, "the segment never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}
