//! Process helpers shared by the bench groups (and, through `#[path]`,
//! by the criterion benches that reuse them): pinning, a pinned forked
//! child, reaping it.

/// Pins the calling thread (the whole process, if it has one thread) to
/// `cpu`, so that cross-CPU figures really cross CPUs and same-CPU figures
/// really share one.
pub fn pin_to_cpu(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| format!("cpu {cpu}: {e}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("sched_setaffinity to cpu {cpu}: {e}"))
}

/// Forks a child pinned to `cpu` that runs `body` and exits with its
/// result (90 if it could not be pinned). The caller is the
/// single-threaded CLI process.
pub fn fork_pinned(cpu: usize, body: impl FnOnce() -> i32) -> Result<nix::unistd::Pid, String> {
    use nix::unistd::{ForkResult, fork};
    // SAFETY: the CLI process is single-threaded, so the child inherits no
    // lock held by another thread; it runs only `body` and leaves through
    // `_exit`.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = if pin_to_cpu(cpu).is_ok() { body() } else { 90 };
            // SAFETY: `_exit` takes no pointers; it ends the child without
            // running the parent's destructors or atexit handlers twice.
            unsafe { nix::libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// Waits for `child`; an error unless it exited 0.
pub fn reap(child: nix::unistd::Pid) -> Result<(), String> {
    use nix::sys::wait::{WaitStatus, waitpid};
    match waitpid(child, None).map_err(|e| format!("waitpid: {e}"))? {
        WaitStatus::Exited(_, 0) => Ok(()),
        other => Err(format!("child {child} failed: {other:?}")),
    }
}

/// An error's text, for `map_err`.
pub fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}
