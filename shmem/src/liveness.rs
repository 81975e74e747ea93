//! Is a process that wrote its pid into shared memory still alive?
//!
//! A pid alone is not an identity: the kernel recycles pids, so a segment
//! whose creator died long ago could name a live, unrelated process. A pid
//! plus the process's start time (field 22 of `/proc/<pid>/stat`, clock
//! ticks since boot) is an identity for as long as the machine is up. A
//! zombie counts as dead: it will never touch shared memory again.

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// The start time of process `pid` in clock ticks since boot, or `None` if
/// it does not exist (or `/proc` is not mounted).
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// The start time of the calling process, or 0 if `/proc` cannot tell.
pub fn own_start_time() -> u64 {
    own_start_time_as(std::process::id())
}

/// The start time of the calling process, whose pid the caller already
/// knows (from a cache, say), without reading `/proc` after the first call.
///
/// The answer is cached with the pid it belongs to, so a forked child,
/// whose pid differs, reads `/proc` once for its own.
#[cfg(not(loom))]
pub fn own_start_time_as(pid: u32) -> u64 {
    use crate::sync::{AtomicU32, AtomicU64, Ordering};
    static CACHED_PID: AtomicU32 = AtomicU32::new(0);
    static CACHED_START: AtomicU64 = AtomicU64::new(0);
    // Acquire: pairs with the release store of CACHED_PID below, so a
    // matching pid comes with the start time written before it.
    if CACHED_PID.load(Ordering::Acquire) == pid {
        // Relaxed: ordered by the acquire load above.
        return CACHED_START.load(Ordering::Relaxed);
    }
    let start = start_time(pid).unwrap_or(0);
    // Relaxed: published by the release store of the pid. Two threads that
    // race here write the same pair.
    CACHED_START.store(start, Ordering::Relaxed);
    CACHED_PID.store(pid, Ordering::Release);
    start
}

/// The start time of the calling process (loom build: no cache).
#[cfg(loom)]
pub fn own_start_time_as(pid: u32) -> u64 {
    start_time(pid).unwrap_or(0)
}

/// Whether the process `pid` that started at `start` (0: unknown) is alive
/// and not a zombie. A live process with a different start time is a
/// recycled pid, so the original is dead.
pub fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match stat(pid) {
        Some((state, started)) => !matches!(state, b'Z' | b'X') && (start == 0 || started == start),
        // No /proc entry: either gone, or /proc is not mounted. Ask the
        // kernel directly; EPERM means it exists but belongs to someone else.
        None => !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH)),
    }
}

/// Parses the state letter and start time out of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the *last* `)`.
fn stat(pid: u32) -> Option<(u8, u64)> {
    let text = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let mut fields = rest.split_ascii_whitespace();
    // After the command: field 3 is the state; the start time is field 22,
    // i.e. 19 fields after the state.
    let state = *fields.next()?.as_bytes().first()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn we_are_alive_with_our_own_start_time() {
        let me = std::process::id();
        let start = own_start_time();
        assert_ne!(start, 0, "/proc should be mounted in the test environment");
        assert!(is_alive(me, start));
        assert!(is_alive(me, 0));
    }

    #[test]
    fn the_cached_start_time_is_per_pid() {
        let me = std::process::id();
        let start = own_start_time_as(me);
        assert_eq!(start, start_time(me).unwrap());
        assert_eq!(own_start_time_as(me), start, "served from the cache");
        // Another pid (as after fork) is looked up, not served from the cache.
        let parent = nix::unistd::getppid().as_raw() as u32;
        assert_eq!(own_start_time_as(parent), start_time(parent).unwrap_or(0));
        assert_eq!(own_start_time_as(me), start);
    }

    #[test]
    fn a_recycled_pid_is_not_the_original() {
        assert!(!is_alive(std::process::id(), own_start_time() + 1));
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap_or(0);
        child.wait().unwrap();
        assert!(!is_alive(pid, start));
        assert!(!is_alive(0, 0));
        assert!(!is_alive(u32::MAX, 0));
    }
}
