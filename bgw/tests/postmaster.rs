//! The postmaster with real processes: start, shutdown modes, crashes and
//! resets, restart policies, dynamic registration, phases, postmaster
//! death. See `common/mod.rs` for how the harness runs a postmaster.

mod common;

use std::time::{Duration, Instant};

use bgw::registry::HandleStatus;
use bgw::shared::Shared;
use bgw::{Phase, Postmaster, PostmasterError, Restart, WorkerContext, WorkerResult, WorkerSpec};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use shmem::Segment;

fn main() {
    let scenarios: &[Scenario] = &[
        (
            "static_workers_start_and_smart_shutdown_stops_them_in_reverse_order",
            "smart",
            smart_shutdown,
        ),
        (
            "fast_shutdown_stops_every_worker_at_once",
            "fast",
            fast_shutdown,
        ),
        (
            "immediate_shutdown_quits_every_worker",
            "immediate",
            immediate_shutdown,
        ),
        (
            "shmem_crash_resets_the_segment_and_every_worker_returns_at_once",
            "shmem_crash",
            shmem_crash,
        ),
        (
            "non_shmem_crash_restarts_that_worker_alone",
            "non_shmem_crash",
            non_shmem_crash,
        ),
        ("restart_delay_is_honoured", "restart_delay", restart_delay),
        (
            "never_restart_and_exit_zero_are_not_started_again",
            "never_restart",
            never_restart,
        ),
        (
            "dynamic_register_wait_started_terminate_wait_stopped",
            "dynamic",
            dynamic,
        ),
        (
            "phase_announced_by_a_worker_starts_the_workers_waiting_for_it",
            "phase",
            phase,
        ),
        (
            "sigkill_of_the_postmaster_takes_every_worker_down",
            "postmaster_death",
            postmaster_death,
        ),
    ];
    common::main(
        scenarios,
        &[
            ("run_refuses_a_multithreaded_process", multithreaded),
            (
                "unknown_entry_is_rejected_with_the_known_ones_listed",
                unknown_entry,
            ),
        ],
        configure,
    );
}

// ---------------------------------------------------------------------------
// The workers and postmasters of these scenarios.

fn announcer(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    assert!(ctx.announce_phase(Phase::ConsistentState));
    sleeper_loop(ctx)
}

/// Registers `dyn`, waits for it, terminates it, waits for its end, and
/// checks that the stale handle acts on nothing.
fn registrar(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let deadline = Some(Instant::now() + DEADLINE);
    let spec = WorkerSpec::new("dyn")
        .entry("sleeper")
        .restart(Restart::After(Duration::ZERO));
    let handle = ctx.register_dynamic(&spec)?;
    let pid = handle.wait_started(deadline)?;
    record(ctx, "dyn-started", &pid.to_string());
    assert!(handle.terminate(), "a live handle terminates");
    handle.wait_stopped(deadline)?;
    let stale = handle.terminate();
    let status = handle.status();
    record(
        ctx,
        "dyn-stopped",
        &format!(
            "stale_terminate={stale} status={}",
            status == HandleStatus::Stopped
        ),
    );
    // The same name can be registered again once the first is gone.
    let again = ctx.register_dynamic(&spec)?;
    let pid2 = again.wait_started(deadline)?;
    record(ctx, "dyn-again", &pid2.to_string());
    sleeper_loop(ctx)
}

fn configure(scenario: &str, pm: &mut Postmaster) -> Vec<WorkerSpec> {
    pm.entry("registrar", registrar)
        .entry("announcer", announcer);
    let long = Restart::After(Duration::from_secs(600));
    match scenario {
        "smart" | "fast" | "immediate" => vec![
            WorkerSpec::new("w1").entry("sleeper"),
            WorkerSpec::new("w2").entry("sleeper").shmem(false),
            WorkerSpec::new("w3").entry("sleeper"),
        ],
        "shmem_crash" => vec![
            WorkerSpec::new("s1").entry("sleeper").restart(long),
            WorkerSpec::new("s2").entry("sleeper").restart(long),
            WorkerSpec::new("n1")
                .entry("sleeper")
                .shmem(false)
                .restart(long),
            WorkerSpec::new("never").entry("sleeper"),
        ],
        "non_shmem_crash" => vec![
            WorkerSpec::new("s1").entry("sleeper").restart(long),
            WorkerSpec::new("n1")
                .entry("sleeper")
                .shmem(false)
                .restart(Restart::After(Duration::ZERO)),
        ],
        "restart_delay" => vec![
            WorkerSpec::new("e1")
                .entry("exit_one")
                .restart(Restart::After(Duration::from_millis(300))),
        ],
        "never_restart" => vec![
            WorkerSpec::new("e1").entry("exit_one"),
            WorkerSpec::new("z0")
                .entry("exit_zero")
                .restart(Restart::After(Duration::ZERO)),
        ],
        "dynamic" => vec![WorkerSpec::new("registrar")],
        "phase" => vec![
            WorkerSpec::new("late")
                .entry("sleeper")
                .start(Phase::ConsistentState),
            WorkerSpec::new("announcer"),
        ],
        "postmaster_death" => vec![
            WorkerSpec::new("s1").entry("sleeper"),
            WorkerSpec::new("n1").entry("sleeper").shmem(false),
        ],
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

fn three_started(h: &Harness) -> Vec<Line> {
    h.wait_events("three workers to start", |e| {
        ["w1", "w2", "w3"].iter().all(|w| count(e, w, "start") == 1)
    })
}

fn smart_shutdown(h: &Harness) {
    let mut pm = h.start();
    three_started(h);
    // Start order is fork order, which the postmaster logs; the workers'
    // own lines may land in any order, and before the postmaster's.
    for w in ["w1", "w2", "w3"] {
        pm.wait_log(&format!("worker {w} started"));
    }
    let log = pm.log();
    let mut start_order: Vec<String> = ["w1", "w2", "w3"].map(String::from).to_vec();
    start_order.sort_by_key(|w| log.find(&format!("worker {w} started")));
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let stops: Vec<String> = h
        .events()
        .into_iter()
        .filter(|l| l.what == "stop")
        .map(|l| l.worker)
        .collect();
    let mut expected = start_order;
    expected.reverse();
    assert_eq!(
        stops, expected,
        "smart shutdown stops in reverse start order"
    );
    assert!(!segment_exists(&h.segment), "the named segment is removed");
}

fn fast_shutdown(h: &Harness) {
    let mut pm = h.start();
    three_started(h);
    pm.signal(Signal::SIGINT);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    for w in ["w1", "w2", "w3"] {
        assert_eq!(count(&events, w, "stop"), 1, "{w} got SIGTERM and stopped");
    }
    assert!(!segment_exists(&h.segment));
}

fn immediate_shutdown(h: &Harness) {
    let mut pm = h.start();
    let events = three_started(h);
    pm.signal(Signal::SIGQUIT);
    assert_eq!(pm.wait_exit(), 0);
    let pids: Vec<u32> = events.iter().map(|l| l.pid).collect();
    wait_dead(&pids);
    let events = h.events();
    assert!(
        events.iter().all(|l| l.what != "stop"),
        "SIGQUIT leaves without cleanup: {events:#?}"
    );
    assert!(!segment_exists(&h.segment));
}

fn shmem_crash(h: &Harness) {
    let mut pm = h.start();
    let all = ["s1", "s2", "n1", "never"];
    let before = h.wait_events("every worker to start", |e| {
        all.iter().all(|w| count(e, w, "start") == 1)
    });
    let segment = h.attach();
    let generation = segment.generation();
    let s1 = before.iter().find(|l| l.worker == "s1").expect("s1").pid;
    kill(Pid::from_raw(s1 as i32), Signal::SIGKILL).expect("kill s1");
    // Restart delays are ten minutes: only the reset's "at once" rule can
    // bring them back within the deadline. `never` is gone for good.
    let after = h.wait_events("s1, s2 and n1 to start again", |e| {
        ["s1", "s2", "n1"].iter().all(|w| count(e, w, "start") == 2)
    });
    assert!(
        segment.generation() > generation,
        "the reset bumped the generation"
    );
    for l in after
        .iter()
        .filter(|l| l.what == "start" && l.worker.starts_with('s'))
    {
        if l.pid != s1 && before.iter().any(|b| b.pid == l.pid) {
            assert_eq!(l.generation, generation);
        }
    }
    let restarted: Vec<&Line> = after.iter().filter(|l| l.what == "start").skip(4).collect();
    for l in restarted.iter().filter(|l| l.worker != "n1") {
        assert_eq!(
            l.generation,
            segment.generation(),
            "{} restarted after the reset",
            l.worker
        );
    }
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    assert_eq!(shared.control.resets(), 1);
    pm.wait_log("worker never unregistered");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    assert_eq!(count(&h.events(), "never", "start"), 1);
}

fn non_shmem_crash(h: &Harness) {
    let mut pm = h.start();
    let before = h.wait_events("both to start", |e| {
        count(e, "s1", "start") == 1 && count(e, "n1", "start") == 1
    });
    let segment = h.attach();
    let generation = segment.generation();
    let n1 = before.iter().find(|l| l.worker == "n1").expect("n1").pid;
    kill(Pid::from_raw(n1 as i32), Signal::SIGKILL).expect("kill n1");
    let after = h.wait_events("n1 to start again", |e| count(e, "n1", "start") == 2);
    assert_eq!(segment.generation(), generation, "no reset");
    // The published status says the same, from another process.
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let new_pid = after
        .iter()
        .rev()
        .find(|l| l.worker == "n1")
        .expect("n1")
        .pid;
    let deadline = Instant::now() + DEADLINE;
    let row = loop {
        let rows = bgw::status::read_all(shared.status);
        if let Some(row) = rows
            .into_iter()
            .find(|r| r.name == "n1" && r.pid == new_pid)
        {
            break row;
        }
        assert!(
            Instant::now() < deadline,
            "n1's status never showed pid {new_pid}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!((row.starts, row.restarts), (2, 1));
    assert_eq!(row.last_exit, Some(bgw::core::ExitStatus::Signaled(9)));
    assert_eq!(row.group, "root");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(count(&events, "s1", "start"), 1, "s1 was left alone");
    assert!(
        !pm.log().contains("resetting shared memory"),
        "no reset for a worker without shared memory:\n{}",
        pm.log()
    );
}

fn restart_delay(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("e1 to start twice", |e| count(e, "e1", "start") >= 2);
    let starts: Vec<&Line> = events.iter().filter(|l| l.what == "start").collect();
    let gap = starts[1].at_ns - starts[0].at_ns;
    assert!(
        gap >= 300_000_000,
        "restarted after {gap} ns, before its 300 ms delay"
    );
    pm.signal(Signal::SIGINT);
    assert_eq!(pm.wait_exit(), 0);
}

fn never_restart(h: &Harness) {
    let mut pm = h.start();
    pm.wait_log("worker e1 unregistered");
    pm.wait_log("worker z0 unregistered");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(count(&events, "e1", "start"), 1, "restart=never ran once");
    assert_eq!(count(&events, "z0", "start"), 1, "exit 0 ran once");
}

fn dynamic(h: &Harness) {
    let mut pm = h.start();
    // wait_started returns once the worker is forked, which may be before
    // its entry point wrote its line: wait for both.
    let events = h.wait_events("the registrar's round trip", |e| {
        count(e, "registrar", "dyn-again") == 1 && count(e, "dyn", "start") == 2
    });
    let started = events
        .iter()
        .find(|l| l.what == "dyn-started")
        .expect("dyn-started");
    let dyn_starts: Vec<&Line> = events
        .iter()
        .filter(|l| l.worker == "dyn" && l.what == "start")
        .collect();
    assert_eq!(
        started.extra,
        dyn_starts[0].pid.to_string(),
        "wait_started returned its pid"
    );
    assert_eq!(count(&events, "dyn", "stop"), 1, "terminate stopped it");
    let stopped = events
        .iter()
        .find(|l| l.what == "dyn-stopped")
        .expect("dyn-stopped");
    assert_eq!(stopped.extra, "stale_terminate=false status=true");
    assert_eq!(dyn_starts.len(), 2, "registered again under the same name");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn phase(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("late to start", |e| count(e, "late", "start") == 1);
    let announcer = events
        .iter()
        .position(|l| l.worker == "announcer")
        .expect("announcer");
    let late = events
        .iter()
        .position(|l| l.worker == "late")
        .expect("late");
    assert!(announcer < late, "late started only after the announcement");
    assert!(pm.log().contains("phase consistent-state reached"));
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn postmaster_death(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("both to start", |e| {
        count(e, "s1", "start") == 1 && count(e, "n1", "start") == 1
    });
    pm.signal(Signal::SIGKILL);
    let _ = pm.wait_exit();
    let pids: Vec<u32> = events.iter().map(|l| l.pid).collect();
    wait_dead(&pids);
    assert!(
        segment_exists(&h.segment),
        "a killed postmaster leaves its segment"
    );
    match Segment::attach(&h.segment, &layout_for(&test_shared_config())) {
        Err(shmem::AttachError::Stale { .. }) => {}
        other => panic!("expected a stale segment, got {other:?}"),
    }
    Segment::remove_stale(&h.segment).expect("remove the stale segment");
    assert!(!segment_exists(&h.segment));
}

fn multithreaded() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let _ = rx.recv();
    });
    let pm = Postmaster::builder().log(false).build();
    match pm.run() {
        Err(PostmasterError::MultiThreaded { threads }) => assert!(threads >= 2),
        other => panic!("expected MultiThreaded, got {other:?}"),
    }
    drop(tx);
    thread.join().expect("join");
}

fn unknown_entry() {
    let mut pm = Postmaster::builder().log(false).build();
    pm.entry("counter", exit_zero).entry("ticker", exit_zero);
    match pm.register(WorkerSpec::new("w").entry("missing")) {
        Err(PostmasterError::UnknownEntry { entry, known, .. }) => {
            assert_eq!(entry, "missing");
            assert_eq!(known, "counter, ticker");
        }
        other => panic!("expected UnknownEntry, got {other:?}"),
    }
}
