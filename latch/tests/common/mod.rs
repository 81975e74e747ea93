//! Helpers for tests that fork.
//!
//! The cargo test harness is multi-threaded, so a forked child may only do
//! async-signal-safe things: atomics, futex calls, latch operations (which
//! are written to allow it), `getpid`/`getppid`, and `_exit`. No allocation,
//! no printing, no panics: a child reports through shared memory and its
//! exit code. Children given to [`fork_child`] return their exit code.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// How long any test waits for anything before declaring failure. Generous:
/// the machine is shared and slow; a correct run takes milliseconds.
pub const LIMIT: Duration = Duration::from_secs(20);

/// Forks; the child runs `body` and `_exit`s with its result.
pub fn fork_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the child runs only `body`, which by this module's contract
    // does async-signal-safe work, then `_exit`s without unwinding or
    // running destructors and atexit handlers.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = body();
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

/// Reaps `child` and returns its exit code; kills it and panics if it has
/// not exited within [`LIMIT`].
pub fn reap(child: Pid) -> i32 {
    let deadline = Instant::now() + LIMIT;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::Exited(_, code) => return code,
            WaitStatus::StillAlive => {}
            other => panic!("child {child} ended abnormally: {other:?}"),
        }
        if Instant::now() > deadline {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            panic!("child {child} did not exit within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `cond` until it holds; panics after [`LIMIT`] with `what`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// In a child: polls `cond` (async-signal-safe) until it holds or `limit`
/// passes; `false` on timeout.
pub fn child_wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        let _ = nix::sched::sched_yield();
    }
    true
}

/// Whether process `pid` is asleep in the kernel (state `S` in
/// `/proc/<pid>/stat`). Parent side only (allocates).
pub fn is_sleeping(pid: Pid) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
}
