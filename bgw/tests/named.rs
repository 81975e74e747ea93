//! Named workers and their inboxes with real processes: a taken name is a
//! typed error, names are released when their holder dies (a worker the
//! postmaster reaps, or a process that attached by itself), calls and casts
//! cross processes, and a call to a worker that dies returns an error
//! before its deadline. See `common/mod.rs` for how the harness runs a
//! postmaster.

mod common;

use std::time::{Duration, Instant};

use bgw::mailbox::CallError;
use bgw::names::NameError;
use bgw::shared::Shared;
use bgw::spec::OnCrash;
use bgw::{Endpoint, Postmaster, Restart, WorkerContext, WorkerExit, WorkerResult, WorkerSpec};
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

fn main() {
    common::main(
        &[
            (
                "names_are_unique_and_released_when_their_worker_dies",
                "names",
                names,
            ),
            (
                "call_and_cast_cross_processes_and_a_dying_callee_errors_early",
                "calls",
                calls,
            ),
            (
                "stop_start_and_restart_through_the_control_inbox",
                "control",
                control,
            ),
            ("an_endpoint_that_outlives_a_reset_says_so", "reset", reset),
            (
                "a_self_attached_process_that_dies_loses_its_names_and_slot",
                "backend",
                backend_death,
            ),
        ],
        &[],
        configure,
    );
}

// ---------------------------------------------------------------------------
// Workers.

/// Registers "echo", then answers calls with `echo:<request>` and records
/// casts. A call `die` makes it exit without replying.
fn echo(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let mut endpoint = ctx.endpoint()?;
    endpoint.register_name("echo")?;
    record(ctx, "registered", "");
    ctx.ready();
    while !ctx.should_stop() {
        let Some(message) = endpoint.recv(None)? else {
            continue;
        };
        let payload = String::from_utf8_lossy(message.payload()).into_owned();
        match message.reply_to() {
            Some(_) if payload == "die" => {
                record(ctx, "dying", "");
                // No reply, no clean-up: as if it crashed.
                std::process::exit(1);
            }
            Some(reply_to) => endpoint.reply(reply_to, format!("echo:{payload}").as_bytes())?,
            None => record(ctx, "cast", &payload),
        }
    }
    record(ctx, "stop", "");
    Ok(WorkerExit::Done)
}

/// Tries to take the name "echo" and records what happened.
fn rival(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let mut endpoint = ctx.endpoint()?;
    // Wait until echo holds it, so the attempt really is a conflict.
    let deadline = Instant::now() + DEADLINE;
    while endpoint.whereis("echo").is_none() && Instant::now() < deadline {
        ctx.latch().reset();
        ctx.wait(Some(Instant::now() + Duration::from_millis(5)));
    }
    match endpoint.register_name("echo") {
        Err(NameError::Taken { owner_pid, .. }) => record(ctx, "taken", &owner_pid.to_string()),
        Ok(_) => record(ctx, "won", ""),
        Err(e) => record(ctx, "error", &e.to_string()),
    }
    drop(endpoint);
    sleeper_loop(ctx)
}

fn configure(scenario: &str, pm: &mut Postmaster) -> Vec<WorkerSpec> {
    pm.entry("echo", echo).entry("rival", rival);
    // Contained: its death frees its name and inbox without a reset.
    let echo = WorkerSpec::new("echo")
        .entry("echo")
        .on_crash(OnCrash::Contain)
        .restart(Restart::After(Duration::ZERO));
    match scenario {
        "names" => vec![
            echo,
            WorkerSpec::new("rival")
                .entry("rival")
                .restart(Restart::Never),
        ],
        "calls" | "backend" | "control" => vec![echo],
        // The default policy: a crash of a shared-memory worker resets.
        "reset" => vec![
            WorkerSpec::new("echo")
                .entry("echo")
                .restart(Restart::After(Duration::ZERO)),
        ],
        other => panic!("unknown scenario {other}"),
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

fn pid_of(events: &[Line], worker: &str, what: &str) -> u32 {
    events
        .iter()
        .rev()
        .find(|l| l.worker == worker && l.what == what)
        .map(|l| l.pid)
        .unwrap_or_else(|| panic!("no {worker} {what} in {events:#?}"))
}

fn names(h: &Harness) {
    let mut pm = h.start();
    let events = h.wait_events("echo to register and rival to try", |e| {
        count(e, "echo", "registered") == 1
            && e.iter().any(|l| l.worker == "rival" && l.what != "start")
    });
    let echo_pid = pid_of(&events, "echo", "registered");
    let rival = events
        .iter()
        .find(|l| l.worker == "rival")
        .expect("rival's attempt");
    assert_eq!(
        (rival.what.as_str(), rival.extra.as_str()),
        ("taken", echo_pid.to_string().as_str()),
        "the second registration is a typed error naming the holder"
    );

    // whereis from a process that is not the postmaster's child.
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let owner = shared.names.whereis("echo").expect("echo is registered");
    assert_eq!(owner.pid, echo_pid);

    // The holder dies: the name is released and taken by its successor.
    let generation = segment.generation();
    kill(Pid::from_raw(echo_pid as i32), Signal::SIGKILL).expect("kill echo");
    h.wait_events("echo to return", |e| count(e, "echo", "registered") == 2);
    let successor = pid_of(&h.events(), "echo", "registered");
    assert_ne!(successor, echo_pid);
    let owner = shared.names.whereis("echo").expect("registered again");
    assert_eq!(owner.pid, successor);
    let echoes = shared
        .names
        .list()
        .into_iter()
        .filter(|r| r.name == "echo")
        .count();
    assert_eq!(
        echoes, 1,
        "the dead holder's entry was released, not left beside the new one"
    );
    assert_eq!(segment.generation(), generation, "contained: no reset");
    pm.wait_log("name \"echo\" of worker echo released");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn calls(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("echo to register", |e| count(e, "echo", "registered") == 1);
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let mut me = Endpoint::attach(shared).expect("a backend endpoint");

    let reply = me
        .call("echo", b"hello", Duration::from_secs(10))
        .expect("call");
    assert_eq!(reply, b"echo:hello");
    for i in 0..100 {
        let reply = me
            .call("echo", format!("n{i}").as_bytes(), Duration::from_secs(10))
            .expect("call");
        assert_eq!(
            reply,
            format!("echo:n{i}").as_bytes(),
            "replies match calls"
        );
    }
    me.cast("echo", b"note").expect("cast");
    h.wait_events("the cast to arrive", |e| {
        e.iter()
            .any(|l| l.worker == "echo" && l.what == "cast" && l.extra == "note")
    });

    match me.call("nobody", b"x", Duration::from_secs(10)) {
        Err(CallError::NotRegistered { name }) => assert_eq!(name, "nobody"),
        other => panic!("a call to an unregistered name: {other:?}"),
    }

    // The callee dies before it replies: the call fails long before its
    // deadline.
    let timeout = Duration::from_secs(15);
    let started = Instant::now();
    match me.call("echo", b"die", timeout) {
        Err(CallError::Died { .. }) => {}
        other => panic!("a call to a worker that died: {other:?}"),
    }
    assert!(
        started.elapsed() < timeout / 2,
        "the caller noticed the death early ({:?})",
        started.elapsed()
    );
    h.wait_events("echo to return", |e| count(e, "echo", "registered") == 2);
    let reply = me
        .call("echo", b"again", Duration::from_secs(10))
        .expect("the successor answers");
    assert_eq!(reply, b"echo:again");
    drop(me);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn control(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("echo to register", |e| count(e, "echo", "registered") == 1);
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let mut me = Endpoint::attach(shared).expect("a backend endpoint");
    let state_of = |name: &str| {
        bgw::status::read_all(shared.status)
            .into_iter()
            .find(|r| r.name == name)
            .map(|r| r.state)
    };
    let timeout = Duration::from_secs(10);

    let answer = me.call_postmaster("stop nobody", timeout).expect("answer");
    assert!(
        answer.starts_with("error: no worker named \"nobody\"") && answer.contains("echo"),
        "an unknown worker is an error listing the known ones: {answer}"
    );
    assert!(
        me.call_postmaster("frobnicate", timeout)
            .expect("answer")
            .starts_with("error:")
    );
    assert_eq!(
        me.call_postmaster("workers", timeout).expect("answer"),
        "echo"
    );

    // Stop: it exits (0, which would normally unregister it) and stays
    // down, registered, shown as stopped.
    assert_eq!(
        me.call_postmaster("stop echo", timeout).expect("answer"),
        "ok"
    );
    h.wait_events("echo to stop", |e| count(e, "echo", "stop") == 1);
    wait_until("echo to show as stopped", || {
        state_of("echo") == Some(bgw::status::ShownState::Stopped)
    });
    wait_until("its name to go", || shared.names.whereis("echo").is_none());
    assert_eq!(count(&h.events(), "echo", "registered"), 1, "not restarted");

    assert_eq!(
        me.call_postmaster("start echo", timeout).expect("answer"),
        "ok"
    );
    h.wait_events("echo to start again", |e| {
        count(e, "echo", "registered") == 2
    });

    // Restart: stopped and started again at once, outside its policy, and
    // not counted as a failure.
    assert_eq!(
        me.call_postmaster("restart echo", timeout).expect("answer"),
        "ok"
    );
    h.wait_events("echo to restart", |e| {
        count(e, "echo", "stop") == 2 && count(e, "echo", "registered") == 3
    });
    let row = bgw::status::read_all(shared.status)
        .into_iter()
        .find(|r| r.name == "echo")
        .expect("echo's row");
    assert_eq!(row.restarts, 0, "operator restarts are not failures");
    assert_eq!(
        me.call("echo", b"back", timeout).expect("call"),
        b"echo:back"
    );
    drop(me);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn reset(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("echo to register", |e| count(e, "echo", "registered") == 1);
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let mut me = Endpoint::attach(shared).expect("a backend endpoint");
    let generation = segment.generation();
    // Whether this call sees the death or the reset first is a race; both
    // are errors.
    assert!(me.call("echo", b"die", Duration::from_secs(10)).is_err());
    h.wait_events("echo to return", |e| count(e, "echo", "registered") == 2);
    assert!(segment.generation() > generation, "the crash reset");
    assert!(me.is_stale());
    match me.call("echo", b"x", Duration::from_secs(10)) {
        Err(CallError::Recv(bgw::mailbox::RecvError::Reset { was, now })) => {
            assert_eq!((was, now), (generation, segment.generation()));
        }
        other => panic!("a call through an endpoint from before the reset: {other:?}"),
    }
    drop(me);
    let mut fresh = Endpoint::attach(shared).expect("a new endpoint");
    assert_eq!(
        fresh
            .call("echo", b"x", Duration::from_secs(10))
            .expect("call"),
        b"echo:x"
    );
    drop(fresh);
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}

fn backend_death(h: &Harness) {
    let mut pm = h.start();
    h.wait_events("echo to register", |e| count(e, "echo", "registered") == 1);
    let segment = h.attach();
    let shared = Shared::attach(&segment, &test_shared_config()).expect("regions");
    let backends_in_use = || {
        let config = shared.procs.config();
        let start = config.start(proclist::Kind::Backend);
        (start..start + config.size(proclist::Kind::Backend))
            .filter(|&i| !shared.procs.get(i).expect("slot").status().is_free())
            .count()
    };
    // The postmaster holds one for its control inbox.
    let baseline = backends_in_use();
    let generation = segment.generation();

    // SAFETY: this process is single-threaded (the harness spawns no
    // threads); the child only attaches, registers and exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = match Endpoint::attach(shared) {
                Ok(mut endpoint) => match endpoint.register_name("squatter") {
                    // Exit without dropping the endpoint: as if killed.
                    Ok(_) => {
                        std::mem::forget(endpoint);
                        0
                    }
                    Err(_) => 2,
                },
                Err(_) => 3,
            };
            // SAFETY: `_exit` takes no pointers; it skips every destructor,
            // which is the point.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            let status = waitpid(child, None).expect("waitpid");
            assert_eq!(status, WaitStatus::Exited(child, 0), "the squatter ran");
        }
    }
    // Exit status 0 says it registered; now it is dead, nobody reaps it,
    // and only the postmaster's sweep can free what it held.
    wait_until("the postmaster to sweep the dead process", || {
        shared.names.whereis("squatter").is_none() && backends_in_use() == baseline
    });
    assert_eq!(segment.generation(), generation, "no reset");
    pm.wait_log("name \"squatter\" of process");
    pm.signal(Signal::SIGTERM);
    assert_eq!(pm.wait_exit(), 0);
}
