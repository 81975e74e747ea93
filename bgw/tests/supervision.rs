//! Supervision with real processes: strategies, restart types, intensity
//! and escalation, backoff, ordered start on readiness, the watchdog, and
//! crash containment. See `common/mod.rs` for how the harness runs a
//! postmaster.

mod common;

use std::time::{Duration, Instant};

use bgw::group::{Backoff, Escalation, GroupSpec, Intensity, Strategy};
use bgw::shared::Shared;
use bgw::spec::OnCrash;
use bgw::status::ShownState;
use bgw::{Endpoint, Postmaster, Restart, WorkerContext, WorkerExit, WorkerResult, WorkerSpec};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn main() {
    common::main(
        &[
            (
                "one_for_all_restarts_every_sibling_in_registration_order",
                "one_for_all",
                one_for_all,
            ),
            (
                "rest_for_one_restarts_the_failed_worker_and_those_after_it",
                "rest_for_one",
                rest_for_one,
            ),
            (
                "permanent_transient_and_temporary_follow_their_table",
                "types",
                restart_types,
            ),
            (
                "exceeding_the_restart_intensity_escalates_to_shutdown",
                "escalation",
                escalation,
            ),
            (
                "a_stopped_group_shows_failed_until_an_operator_starts_it",
                "stop_group",
                stop_group,
            ),
            ("backoff_doubles_between_restarts", "backoff", backoff),
            (
                "ordered_group_starts_the_next_worker_only_after_ready",
                "ordered",
                ordered,
            ),
            (
                "watchdog_kills_a_worker_that_stops_beating",
                "watchdog",
                watchdog,
            ),
            (
                "crash_outside_a_critical_section_is_contained_inside_one_resets",
                "containment",
                containment,
            ),
        ],
        &[],
        configure,
    );
}

// ---------------------------------------------------------------------------
// Workers.

/// Exits with the code in its argument on its first run, then sleeps.
fn once(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let first = count(&read_events(), ctx.name(), "start") == 1;
    if first {
        return Ok(match ctx.arg() {
            b"0" => WorkerExit::Done,
            _ => WorkerExit::Restart,
        });
    }
    sleeper_loop(ctx)
}

/// Beats once, then goes silent.
fn goes_silent(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    ctx.heartbeat();
    sleeper_loop(ctx)
}

/// Reports ready only after 200 ms.
fn slow_ready(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let until = Instant::now() + Duration::from_millis(200);
    while Instant::now() < until && !ctx.should_stop() {
        ctx.latch().reset();
        ctx.wait(Some(until));
    }
    record(ctx, "ready", "");
    ctx.ready();
    sleeper_loop(ctx)
}

/// Stays inside a critical section until stopped.
fn careless(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    record(ctx, "start", "");
    let _inside = ctx.critical().expect("a shared-memory worker");
    record(ctx, "in-critical", "");
    sleeper_loop(ctx)
}

fn read_events() -> Vec<Line> {
    parse_events(&std::fs::read_to_string(events_path()).unwrap_or_default())
}

fn configure(scenario: &str, pm: &mut Postmaster) -> Vec<WorkerSpec> {
    pm.entry("once", once)
        .entry("goes_silent", goes_silent)
        .entry("slow_ready", slow_ready)
        .entry("careless", careless);
    let roomy = Intensity {
        max_restarts: 10,
        period: Duration::from_secs(60),
    };
    let mut group = |spec: GroupSpec| {
        pm.group(spec.intensity(roomy).backoff(Backoff::NONE))
            .expect("group");
    };
    let sleeper_in = |name: &str, g: &str| {
        WorkerSpec::new(name)
            .entry("sleeper")
            .group(g)
            .shmem(false)
            .restart(Restart::Permanent)
    };
    match scenario {
        "one_for_all" => {
            group(GroupSpec::new("all").strategy(Strategy::OneForAll));
            ["a", "b", "c"].map(|n| sleeper_in(n, "all")).to_vec()
        }
        "rest_for_one" => {
            group(GroupSpec::new("rest").strategy(Strategy::RestForOne));
            ["a", "b", "c"].map(|n| sleeper_in(n, "rest")).to_vec()
        }
        "types" => {
            group(GroupSpec::new("types"));
            let once = |name: &str, code: &str, restart| {
                WorkerSpec::new(name)
                    .entry("once")
                    .arg(code.as_bytes())
                    .group("types")
                    .restart(restart)
            };
            vec![
                once("perm", "0", Restart::Permanent),
                once("trans_ok", "0", Restart::Transient),
                once("trans_fail", "1", Restart::Transient),
                once("temp", "1", Restart::Temporary),
            ]
        }
        "escalation" | "stop_group" => {
            // flaky fails at once every time; its group allows two restarts
            // a minute and shuts the postmaster down, or one and stops.
            let (max_restarts, escalation) = match scenario {
                "escalation" => (2, Escalation::Shutdown),
                _ => (1, Escalation::StopGroup),
            };
            pm.group(
                GroupSpec::new("fragile")
                    .intensity(Intensity {
                        max_restarts,
                        period: Duration::from_secs(60),
                    })
                    .backoff(Backoff::NONE)
                    .escalation(escalation),
            )
            .expect("group");
            let mut workers = vec![
                WorkerSpec::new("flaky")
                    .entry("exit_one")
                    .group("fragile")
                    .restart(Restart::Permanent),
                WorkerSpec::new("bystander").entry("sleeper"),
            ];
            if escalation == Escalation::StopGroup {
                workers.push(sleeper_in("sibling", "fragile"));
            }
            workers
        }
        "backoff" => {
            pm.group(GroupSpec::new("slow").intensity(roomy).backoff(Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
                jitter: 0.0,
            }))
            .expect("group");
            vec![
                WorkerSpec::new("flaky")
                    .entry("exit_one")
                    .group("slow")
                    .restart(Restart::Transient),
            ]
        }
        "ordered" => {
            group(GroupSpec::new("ordered").ordered(true));
            vec![
                WorkerSpec::new("first")
                    .entry("slow_ready")
                    .group("ordered"),
                WorkerSpec::new("second").entry("sleeper").group("ordered"),
            ]
        }
        "watchdog" => vec![
            WorkerSpec::new("silent")
                .entry("goes_silent")
                .watchdog(Duration::from_millis(300))
                .on_crash(OnCrash::Contain)
                .restart(Restart::After(Duration::ZERO)),
            WorkerSpec::new("calm").entry("sleeper"),
        ],
        "containment" => {
            let contained = |name: &str, entry: &str| {
                WorkerSpec::new(name)
                    .entry(entry)
                    .on_crash(OnCrash::Contain)
                    .restart(Restart::After(Duration::ZERO))
            };
            vec![
                contained("calm", "sleeper"),
                contained("victim", "sleeper"),
                contained("careless", "careless"),
            ]
        }
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

fn pid_of(events: &[Line], worker: &str) -> Pid {
    let line = events
        .iter()
        .rev()
        .find(|l| l.worker == worker && l.what == "start")
        .unwrap_or_else(|| panic!("{worker} never started"));
    Pid::from_raw(line.pid as i32)
}

fn one_for_all(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("a, b, c to start", |e| {
        ["a", "b", "c"].iter().all(|w| count(e, w, "start") == 1)
    });
    kill(pid_of(&events, "b"), Signal::SIGKILL).expect("kill b");
    let events = h.wait_events("a, b, c to start again", |e| {
        ["a", "b", "c"].iter().all(|w| count(e, w, "start") == 2)
    });
    assert_eq!(
        count(&events, "a", "stop"),
        1,
        "a was stopped for the restart"
    );
    assert_eq!(
        count(&events, "c", "stop"),
        1,
        "c was stopped for the restart"
    );
    let log = pm.log();
    let second_start = |w: &str| log.rfind(&format!("worker {w} started"));
    assert!(
        second_start("a") < second_start("b") && second_start("b") < second_start("c"),
        "restarted in registration order:\n{log}"
    );
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn rest_for_one(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("a, b, c to start", |e| {
        ["a", "b", "c"].iter().all(|w| count(e, w, "start") == 1)
    });
    kill(pid_of(&events, "b"), Signal::SIGKILL).expect("kill b");
    h.wait_events("b and c to start again", |e| {
        count(e, "b", "start") == 2 && count(e, "c", "start") == 2
    });
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(count(&events, "a", "start"), 1, "a is before b: left alone");
    assert_eq!(
        count(&events, "c", "stop"),
        2,
        "c: once for b, once at shutdown"
    );
}

fn restart_types(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("perm and trans_fail to run again", |e| {
        count(e, "perm", "start") == 2 && count(e, "trans_fail", "start") == 2
    });
    pm.wait_log("worker trans_ok unregistered");
    pm.wait_log("worker temp unregistered");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    let events = h.events();
    assert_eq!(
        count(&events, "perm", "start"),
        2,
        "permanent: restarted after exit 0"
    );
    assert_eq!(
        count(&events, "trans_ok", "start"),
        1,
        "transient: exit 0 ends it"
    );
    assert_eq!(
        count(&events, "trans_fail", "start"),
        2,
        "transient: exit 1 restarts"
    );
    assert_eq!(
        count(&events, "temp", "start"),
        1,
        "temporary: never restarted"
    );
}

fn escalation(h: &Harness) {
    let mut pm = h.start();
    let code = pm.wait_exit();
    let log = pm.log();
    assert_eq!(code, 1, "escalation exits non-zero:\n{log}");
    assert!(
        log.contains("group fragile exceeded its restart intensity when worker flaky failed"),
        "the log names the group and the worker:\n{log}"
    );
    assert!(log.contains("recent exits: exit code 1, exit code 1, exit code 1"));
    let events = h.events();
    assert_eq!(
        count(&events, "flaky", "start"),
        3,
        "first start and two restarts"
    );
    assert_eq!(
        count(&events, "bystander", "stop"),
        1,
        "everyone is shut down"
    );
}

fn stop_group(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("the bystander to start", |e| {
        count(e, "bystander", "start") == 1
    });
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let state_of = |name: &str| {
        bgw::status::read_all(shared.status)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.state)
    };
    let failed = Some(ShownState::Failed);
    wait_until("the group to fail", || {
        state_of("flaky") == failed && state_of("sibling") == failed
    });
    let log = pm.log();
    assert!(log.contains("stopping the group"), "{log}");
    let events = h.events();
    assert_eq!(count(&events, "flaky", "start"), 2, "one restart allowed");
    assert_eq!(
        count(&events, "sibling", "stop"),
        1,
        "stopped with its group"
    );
    assert_eq!(count(&events, "bystander", "start"), 1, "left alone");
    assert!(alive(pm.pid().as_raw() as u32), "the postmaster carries on");

    // Starting any member revives the whole group, history forgotten: flaky
    // again gets one restart before the group fails a second time.
    let mut me = Endpoint::attach(shared).expect("a backend endpoint");
    let answer = me
        .call_postmaster("start sibling", Duration::from_secs(10))
        .expect("answer");
    assert_eq!(answer, "ok");
    h.wait_events("the group to run again", |e| {
        count(e, "flaky", "start") == 4 && count(e, "sibling", "start") == 2
    });
    wait_until("the group to fail again", || {
        state_of("flaky") == failed && state_of("sibling") == failed
    });
    drop(me);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    assert_eq!(count(&h.events(), "bystander", "start"), 1);
}

fn backoff(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("four starts", |e| count(e, "flaky", "start") >= 4);
    pm.signal(Signal::SIGINT);
    assert_eq!(pm.wait_exit(), 0);
    let at: Vec<u128> = events
        .iter()
        .filter(|l| l.worker == "flaky" && l.what == "start")
        .map(|l| l.at_ns)
        .collect();
    for (i, floor_ms) in [100u128, 200, 400].into_iter().enumerate() {
        let gap = at[i + 1] - at[i];
        assert!(
            gap >= floor_ms * 1_000_000,
            "restart {} came after {} ms, before its {floor_ms} ms backoff",
            i + 1,
            gap / 1_000_000
        );
    }
}

fn ordered(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("second to start", |e| count(e, "second", "start") == 1);
    let ready = events
        .iter()
        .find(|l| l.worker == "first" && l.what == "ready")
        .expect("first reported ready");
    let second = events
        .iter()
        .find(|l| l.worker == "second" && l.what == "start")
        .expect("second started");
    assert!(
        second.at_ns >= ready.at_ns,
        "second started {} ns before first was ready",
        ready.at_ns - second.at_ns
    );
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn watchdog(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("silent to be restarted", |e| {
        count(e, "silent", "start") >= 2
    });
    pm.wait_log("worker silent");
    let log = pm.log();
    assert!(log.contains("missed its watchdog heartbeat"), "{log}");
    assert!(log.contains("contained, no reset"), "{log}");
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    assert_eq!(
        shared.control.resets(),
        0,
        "a contained kill resets nothing"
    );
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
    assert_eq!(count(&h.events(), "calm", "start"), 1);
}

fn containment(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("everyone to start", |e| {
        count(e, "calm", "start") == 1
            && count(e, "victim", "start") == 1
            && count(e, "careless", "in-critical") == 1
    });
    let segment = h.attach();
    let generation = segment.generation();
    kill(pid_of(&events, "victim"), Signal::SIGKILL).expect("kill victim");
    h.wait_events("victim to return", |e| count(e, "victim", "start") == 2);
    assert_eq!(segment.generation(), generation, "contained: no reset");
    assert_eq!(
        count(&h.events(), "calm", "start"),
        1,
        "its peers kept running"
    );

    let events = h.events();
    kill(pid_of(&events, "careless"), Signal::SIGKILL).expect("kill careless");
    h.wait_events("everyone to return after the reset", |e| {
        count(e, "calm", "start") == 2 && count(e, "careless", "start") == 2
    });
    assert!(
        segment.generation() > generation,
        "inside a critical section: reset"
    );
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    assert_eq!(shared.control.resets(), 1);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}
