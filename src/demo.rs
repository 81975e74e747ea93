//! `postmaster demo`: the main job a new user runs first. For now it creates
//! the named segment, shows its layout and keeps it up until the duration
//! ends or the user presses Ctrl-C; later issues add the workers.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use shmem::sync::{AtomicU64, Ordering};
use shmem::{CreateError, Layout, Segment};

/// The demo's layout: a tick counter and a few per-worker cache lines.
fn layout() -> Result<Layout, String> {
    Layout::builder()
        .region::<AtomicU64>("ticks")
        .array::<[AtomicU64; 16]>("worker_lines", 8)
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the demo.
pub fn run(name: &str, duration: Duration) -> Result<(), String> {
    let layout = layout()?;
    // Ctrl-C and SIGTERM arrive through a signalfd, so the segment is
    // dropped (and its name removed) however the demo ends.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| format!("blocking signals: {e}"))?;
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    let segment = create(name, &layout)?;
    print_layout(&segment);
    let ticks = segment
        .region::<AtomicU64>("ticks")
        .map_err(|e| e.to_string())?;

    let start = Instant::now();
    let deadline = start + duration;
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = (deadline - now).min(Duration::from_secs(1));
        let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                // Relaxed: a statistic; nothing is published with it.
                let n = ticks.fetch_add(1, Ordering::Relaxed) + 1;
                println!(
                    "t={:>5.1}s ticks={n} generation={}",
                    start.elapsed().as_secs_f64(),
                    segment.generation()
                );
            }
            Ok(_) => {
                interrupted = true;
                break;
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("poll: {e}")),
        }
    }
    println!(
        "demo {} after {:.1}s; removing segment {name:?}",
        if interrupted {
            "interrupted"
        } else {
            "finished"
        },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates the segment; a leftover from a demo that died is removed first,
/// one that is still in use is reported.
fn create(name: &str, layout: &Layout) -> Result<Segment, String> {
    match Segment::create_named(name, layout) {
        Err(CreateError::AlreadyExists { .. }) => {
            Segment::remove_stale(name).map_err(|e| e.to_string())?;
            println!("removed the stale segment {name:?} left by a demo that died");
            Segment::create_named(name, layout).map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
    }
}

fn print_layout(segment: &Segment) {
    let layout = segment.layout();
    let header = segment.header_snapshot();
    println!(
        "segment /dev/shm/postmaster.{} size={} bytes hash={:#018x} generation={} creator={}",
        segment.name().unwrap_or("(anonymous)"),
        layout.size(),
        layout.hash(),
        header.generation,
        header.creator_pid
    );
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>6}  type",
        "region", "offset", "bytes", "count", "align"
    );
    println!(
        "{:<16} {:>8} {:>8} {:>6} {:>6}  segment header",
        "(header)",
        0,
        shmem::HEADER_SIZE,
        1,
        shmem::CACHE_LINE
    );
    for r in layout.regions() {
        println!(
            "{:<16} {:>8} {:>8} {:>6} {:>6}  {}",
            r.name(),
            r.offset(),
            r.len(),
            r.count(),
            r.align(),
            r.type_name()
        );
    }
}
