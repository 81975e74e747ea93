//! `postmaster status`: attach read-only to a running demo postmaster's
//! segment and print its workers, as a table or as JSON.
//!
//! The JSON is one object per call, stable across versions (fields are
//! only ever added):
//! `{"pid":N,"generation":N,"resets":N,"containments":N,"restarts":N,
//! "workers":[{"name":S,"group":S,"pid":N,"state":S,"restarts":N,
//! "starts":N,"last_exit":null|{"code":N}|{"signal":N},"uptime_s":N|null,
//! "inbox":N|null}]}`, where `state` is one of waiting, backoff, starting,
//! running, ready, stopping, stopped (by an operator), failed (its group
//! exceeded its restart intensity and was left stopped), and `inbox` is the
//! number of messages waiting for the worker (null when it has no inbox).

use std::time::Duration;

use bgw::Shared;
use bgw::status::WorkerRow;
use shmem::Segment;

use crate::{control, demo};

/// Prints the status once, or every second with `watch` until Ctrl-C.
pub fn run(name: &str, json: bool, watch: bool) -> Result<(), String> {
    let segment = control::attach(name)?;
    let shared = control::shared(&segment)?;
    loop {
        let rows = bgw::status::read_all(shared.status);
        let counters = shared.control.counters();
        if json {
            println!("{}", to_json(&segment, &shared, &rows));
        } else {
            println!(
                "postmaster pid={} generation={} resets={} containments={} restarts={}",
                shared.control.postmaster_pid(),
                segment.generation(),
                counters.resets,
                counters.containments,
                counters.restarts
            );
            print!("{}", demo::table(&shared, &rows));
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Removes a stale segment (its creator is dead).
pub fn cleanup(name: &str) -> Result<(), String> {
    Segment::remove_stale(name).map_err(|e| e.to_string())?;
    println!("removed stale segment {name:?}");
    Ok(())
}

fn to_json(segment: &Segment, shared: &Shared<'_>, rows: &[WorkerRow]) -> String {
    let counters = shared.control.counters();
    let now = bgw::status::monotonic_ns();
    let workers: Vec<String> = rows
        .iter()
        .map(|r| {
            let last_exit = match r.last_exit {
                None => "null".to_owned(),
                Some(bgw::core::ExitStatus::Code(c)) => format!("{{\"code\":{c}}}"),
                Some(bgw::core::ExitStatus::Signaled(s)) => format!("{{\"signal\":{s}}}"),
            };
            let uptime = if r.pid == 0 || r.started_at_ns == 0 {
                "null".to_owned()
            } else {
                format!("{:.3}", now.saturating_sub(r.started_at_ns) as f64 / 1e9)
            };
            let inbox =
                demo::inbox_depth(shared, r.pid).map_or("null".to_owned(), |d| d.to_string());
            // Names are [A-Za-z0-9_.-] (validated), so they need no escaping.
            format!(
                "{{\"name\":\"{}\",\"group\":\"{}\",\"pid\":{},\"state\":\"{}\",\"restarts\":{},\
                 \"starts\":{},\"last_exit\":{last_exit},\"uptime_s\":{uptime},\"inbox\":{inbox}}}",
                r.name,
                r.group,
                r.pid,
                r.state.name(),
                r.restarts,
                r.starts
            )
        })
        .collect();
    format!(
        "{{\"pid\":{},\"generation\":{},\"resets\":{},\"containments\":{},\"restarts\":{},\"workers\":[{}]}}",
        shared.control.postmaster_pid(),
        segment.generation(),
        counters.resets,
        counters.containments,
        counters.restarts,
        workers.join(",")
    )
}
