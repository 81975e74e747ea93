//! Steering a running postmaster from any shell of the same user:
//! `postmaster start|stop|restart|call|cast|kill|jobs`.
//!
//! Each command attaches to the named segment, takes a backend proc slot
//! (a [`bgw::Endpoint`]) when it needs an inbox, does one thing, and gives
//! the slot back. Errors say what to do next: start a postmaster, clean up
//! a stale segment, pick one of the known workers.

use std::time::Duration;

use bgw::mailbox::CallError;
use bgw::{Endpoint, Shared};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use shmem::{AttachError, Segment};

use crate::demo;
use crate::scheduler::{self, Overlap, Tables};

/// How long a command waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Attaches to the postmaster's segment `name`, with errors a user can act
/// on.
pub fn attach(name: &str) -> Result<Segment, String> {
    let layout = demo::layout()?;
    Segment::attach(name, &layout).map_err(|e| match e {
        AttachError::NotFound { .. } => format!(
            "no postmaster is running with segment {name:?}; start one with \
             `postmaster demo --name {name}`"
        ),
        AttachError::Stale { pid, .. } => format!(
            "segment {name:?} was left by a postmaster (pid {pid}) that died; remove it with \
             `postmaster cleanup --name {name}`"
        ),
        AttachError::PermissionDenied { .. } | AttachError::ForeignOwner { .. } => format!(
            "permission denied: segment {name:?} belongs to another user; run this as the user \
             who started the postmaster ({e})"
        ),
        other => format!("cannot attach to segment {name:?}: {other}"),
    })
}

/// The postmaster's regions in an attached segment.
pub fn shared(segment: &Segment) -> Result<Shared<'_>, String> {
    Shared::attach(segment, &demo::shared_config()).map_err(|e| e.to_string())
}

fn endpoint<'a>(shared: Shared<'a>) -> Result<Endpoint<'a>, String> {
    Endpoint::attach(shared).map_err(|e| format!("cannot open an inbox: {e}"))
}

/// The names of the registered workers, for error messages.
fn known_workers(shared: &Shared<'_>) -> String {
    let rows = bgw::status::read_all(shared.status);
    let names: Vec<String> = rows.into_iter().map(|r| r.name).collect();
    names.join(", ")
}

/// `start|stop|restart WORKER`.
pub fn control(name: &str, op: &str, worker: &str) -> Result<(), String> {
    let segment = attach(name)?;
    let shared = shared(&segment)?;
    let mut me = endpoint(shared)?;
    let answer = me
        .call_postmaster(&format!("{op} {worker}"), TIMEOUT)
        .map_err(|e| format!("the postmaster did not answer: {e}"))?;
    match answer.strip_prefix("error: ") {
        Some(e) => Err(e.to_owned()),
        None => {
            println!("{op} {worker}: {answer}");
            Ok(())
        }
    }
}

/// `call WORKER MESSAGE` (or `cast` without waiting for an answer).
pub fn call(name: &str, worker: &str, message: &str, cast: bool) -> Result<(), String> {
    let segment = attach(name)?;
    let shared = shared(&segment)?;
    let mut me = endpoint(shared)?;
    let result = if cast {
        me.cast(worker, message.as_bytes()).map(|()| None)
    } else {
        me.call(worker, message.as_bytes(), TIMEOUT).map(Some)
    };
    match result {
        Ok(Some(reply)) => {
            println!("{}", String::from_utf8_lossy(&reply));
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(CallError::NotRegistered { .. }) => {
            let names: Vec<String> = me.registered().into_iter().map(|r| r.name).collect();
            Err(format!(
                "no worker has registered the name {worker:?}; registered names: {}",
                names.join(", ")
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Parses `KILL`, `SIGKILL` or `9`.
fn parse_signal(text: &str) -> Result<Signal, String> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("no signal number {n}"));
    }
    let upper = text.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| format!("no signal named {text:?} (try KILL, TERM, SEGV, ABRT or a number)"))
}

/// `kill WORKER [--signal S]`: crash injection.
pub fn kill(name: &str, worker: &str, signal: &str) -> Result<(), String> {
    let signal = parse_signal(signal)?;
    let segment = attach(name)?;
    let shared = shared(&segment)?;
    let rows = bgw::status::read_all(shared.status);
    let row = rows.iter().find(|r| r.name == worker).ok_or_else(|| {
        format!(
            "no worker named {worker:?}; workers: {}",
            known_workers(&shared)
        )
    })?;
    if row.pid == 0 {
        return Err(format!(
            "{worker} is not running (it is {}); nothing to kill",
            row.state.name()
        ));
    }
    nix::sys::signal::kill(Pid::from_raw(row.pid as i32), signal)
        .map_err(|e| format!("kill {} {}: {e}", signal.as_str(), row.pid))?;
    println!("sent {} to {worker} (pid {})", signal.as_str(), row.pid);
    Ok(())
}

/// `jobs list`: the scheduler's jobs and run history, from shared memory.
pub fn jobs_list(name: &str) -> Result<(), String> {
    let segment = attach(name)?;
    let tables = Tables::attach(&segment).map_err(|e| e.to_string())?;
    let jobs = tables.jobs();
    println!(
        "  {:<16} {:<20} {:<6} {:>7} {:>5} {:>8} {:>7}",
        "job", "cron", "policy", "retries", "runs", "failures", "skipped"
    );
    for j in &jobs {
        println!(
            "  {:<16} {:<20} {:<6} {:>7} {:>5} {:>8} {:>7}",
            j.name,
            j.cron,
            j.overlap.name(),
            j.retries,
            j.runs,
            j.failures,
            j.skipped
        );
    }
    let history = tables.history();
    println!("\nhistory (oldest first, last {}):", history.len());
    println!(
        "  {:>5} {:<16} {:>7} {:<8} {:<12} {:>8} {:>5}  message",
        "run", "job", "attempt", "outcome", "started", "took", "exit"
    );
    for r in &history {
        let started = chrono::DateTime::from_timestamp_millis(r.started_ms as i64)
            .map_or("?".to_owned(), |t| t.format("%H:%M:%S%.3f").to_string());
        let took = if r.ended_ms >= r.started_ms && r.ended_ms != 0 {
            format!("{}ms", r.ended_ms - r.started_ms)
        } else {
            "-".to_owned()
        };
        println!(
            "  {:>5} {:<16} {:>7} {:<8} {:<12} {:>8} {:>5}  {}",
            r.id,
            r.job,
            r.attempt,
            r.outcome.name(),
            started,
            took,
            r.exit.map_or("-".to_owned(), |c| c.to_string()),
            r.message
        );
    }
    Ok(())
}

/// `jobs add NAME CRON [--overlap P] [--retries N]`.
pub fn jobs_add(
    name: &str,
    job: &str,
    cron: &str,
    overlap: Overlap,
    retries: u8,
) -> Result<(), String> {
    scheduler::check_job_name(job)?;
    scheduler::parse_cron(cron)?;
    let segment = attach(name)?;
    let shared = shared(&segment)?;
    let mut me = endpoint(shared)?;
    scheduler::call(
        &mut me,
        &format!("add\t{job}\t{cron}\t{}\t{retries}", overlap.name()),
    )?;
    println!(
        "job {job} added ({cron}, {}, {retries} retries)",
        overlap.name()
    );
    Ok(())
}

/// `jobs remove NAME`.
pub fn jobs_remove(name: &str, job: &str) -> Result<(), String> {
    let segment = attach(name)?;
    let shared = shared(&segment)?;
    let mut me = endpoint(shared)?;
    scheduler::call(&mut me, &format!("remove\t{job}"))?;
    println!("job {job} removed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_short_name_and_number() {
        assert_eq!(parse_signal("KILL"), Ok(Signal::SIGKILL));
        assert_eq!(parse_signal("sigsegv"), Ok(Signal::SIGSEGV));
        assert_eq!(parse_signal("6"), Ok(Signal::SIGABRT));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("999").is_err());
    }
}
