//! End to end through the binary: a calm demo runs while other
//! invocations of `postmaster` watch and steer it from outside, as a user
//! would from another shell. Every wait is for a condition with a
//! deadline.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_postmaster");
const DEADLINE: Duration = Duration::from_secs(30);

fn postmaster(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run postmaster")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `postmaster ARGS`, which must succeed; returns its stdout.
fn ok(args: &[&str]) -> String {
    let out = postmaster(args);
    assert!(
        out.status.success(),
        "postmaster {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `postmaster ARGS`, which must fail; returns its stderr.
fn fails(args: &[&str]) -> String {
    let out = postmaster(args);
    assert!(
        !out.status.success(),
        "postmaster {args:?} should have failed: {}",
        stdout(&out)
    );
    stderr(&out)
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One worker's object in `status --json` (up to its last field, `inbox`,
/// so that a nested `last_exit` object does not cut it short).
fn worker_json(json: &str, name: &str) -> Option<String> {
    let start = json.find(&format!("{{\"name\":\"{name}\""))?;
    let object = &json[start..];
    let inbox = object.find("\"inbox\":")?;
    let close = object[inbox..].find('}')? + inbox;
    Some(object[..close].to_owned())
}

fn field<'a>(object: &'a str, key: &str) -> Option<&'a str> {
    let at = object.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &object[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn state(name: &str, segment: &str) -> Option<(String, u64)> {
    let out = postmaster(&["status", "--json", "--name", segment]);
    let json = stdout(&out);
    let object = worker_json(&json, name)?;
    Some((
        field(&object, "state")?.to_owned(),
        field(&object, "restarts")?.parse().ok()?,
    ))
}

struct Demo {
    child: Option<Child>,
}

impl Demo {
    fn start(segment: &str) -> Demo {
        let child = Command::new(BIN)
            .args(["demo", "--calm", "--duration", "5m", "--name", segment])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the demo");
        Demo { child: Some(child) }
    }

    /// Ctrl-C, then the demo's exit status and output.
    fn interrupt(mut self) -> Output {
        let child = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("SIGINT");
        child.wait_with_output().expect("wait for the demo")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            let _ = child.wait();
        }
    }
}

fn segment_exists(name: &str) -> bool {
    Path::new(&format!("/dev/shm/postmaster.{name}")).exists()
}

#[test]
fn the_demo_is_watched_and_steered_from_outside_and_interrupting_it_cleans_up() {
    let segment = format!("cli-{}", std::process::id());
    let demo = Demo::start(&segment);
    let samples = ["counter", "ticker", "echo", "scheduler"];
    wait_until("every sample worker to be ready", || {
        samples
            .iter()
            .all(|w| state(w, &segment).is_some_and(|(s, _)| s == "ready"))
    });

    // A named worker answers a call; the ticker answers `status`.
    assert_eq!(
        ok(&["call", "echo", "hello", "--name", &segment]),
        "hello\n"
    );
    assert!(ok(&["call", "ticker", "status", "--name", &segment]).contains("batches="));

    // kill: restarted, and status shows one more restart.
    let (_, before) = state("counter", &segment).expect("counter");
    assert!(ok(&["kill", "counter", "--name", &segment]).contains("SIGKILL"));
    wait_until("counter to come back", || {
        state("counter", &segment).is_some_and(|(s, r)| s == "ready" && r == before + 1)
    });

    // stop / start.
    ok(&["stop", "echo", "--name", &segment]);
    wait_until("echo to show as stopped", || {
        state("echo", &segment).is_some_and(|(s, _)| s == "stopped")
    });
    ok(&["start", "echo", "--name", &segment]);
    wait_until("echo to be ready again", || {
        state("echo", &segment).is_some_and(|(s, _)| s == "ready")
    });

    // A scheduled job runs and shows in the history; jobs can be added and
    // removed.
    wait_until("a tick-job run to succeed", || {
        ok(&["jobs", "list", "--name", &segment])
            .lines()
            .any(|l| l.contains("tick-job") && l.contains(" ok "))
    });
    ok(&["jobs", "add", "extra", "*/2 * * * * *", "--name", &segment]);
    wait_until("the added job to run", || {
        ok(&["jobs", "list", "--name", &segment])
            .lines()
            .any(|l| l.contains("extra") && l.contains(" ok "))
    });
    ok(&["jobs", "remove", "extra", "--name", &segment]);

    // flaky's group gives up after three restarts: failed, until started.
    wait_until("flaky to show as failed", || {
        state("flaky", &segment).is_some_and(|(s, _)| s == "failed")
    });
    let (_, restarts) = state("flaky", &segment).expect("flaky");
    assert_eq!(restarts, 3, "the group's intensity: three restarts");
    ok(&["start", "flaky", "--name", &segment]);
    // Without shared memory it counts as ready as soon as it runs.
    wait_until("flaky to run again", || {
        state("flaky", &segment).is_some_and(|(s, _)| s == "running" || s == "ready")
    });

    // Errors a user can act on, each with a non-zero exit.
    assert!(fails(&["call", "nobody", "x", "--name", &segment]).contains("registered names"));
    assert!(fails(&["kill", "nobody", "--name", &segment]).contains("workers: counter"));
    assert!(fails(&["stop", "nobody", "--name", &segment]).contains("known: counter"));
    assert!(fails(&["kill", "echo", "--signal", "NOPE", "--name", &segment]).contains("no signal"));
    assert!(fails(&["jobs", "add", "j", "bad cron", "--name", &segment]).contains("cron"));
    assert!(
        fails(&["status", "--name", &format!("{segment}-absent")])
            .contains("no postmaster is running")
    );

    // Ctrl-C: exit 0, segment gone.
    let out = demo.interrupt();
    assert!(
        out.status.success(),
        "the demo exits 0 on Ctrl-C: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!segment_exists(&segment), "the segment is removed");
}

#[test]
fn a_segment_left_by_a_dead_postmaster_is_reported_stale_and_cleaned_up() {
    let segment = format!("cli-stale-{}", std::process::id());
    let mut demo = Demo::start(&segment);
    wait_until("the postmaster to publish its pid", || {
        let out = postmaster(&["status", "--json", "--name", &segment]);
        out.status.success()
    });
    let json = ok(&["status", "--json", "--name", &segment]);
    let pid: i32 = field(&json, "pid")
        .and_then(|p| p.parse().ok())
        .expect("pid");
    // The postmaster dies hard (its workers follow it through their death
    // signal); the demo watcher notices and exits with an error.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the postmaster");
    let out = demo
        .child
        .take()
        .expect("running")
        .wait_with_output()
        .expect("wait");
    assert!(
        !out.status.success(),
        "the demo reports its postmaster's death"
    );
    assert!(
        segment_exists(&segment),
        "a dead postmaster leaves its segment"
    );
    assert!(fails(&["status", "--name", &segment]).contains("postmaster cleanup"));
    ok(&["cleanup", "--name", &segment]);
    assert!(!segment_exists(&segment));
    assert!(fails(&["cleanup", "--name", &segment]).contains(&segment));
}
