//! Slot figures: what taking and giving back a process slot costs, alone
//! and with two contenders, next to the free lists people would otherwise
//! write: a `Mutex<Vec<u32>>` (in-process only) and a spinlock-protected
//! stack in shared memory (PostgreSQL's approach for PGPROC free lists).

use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use proclist::{Kind, ProcArray, ProcArrayConfig};
use shmem::sync::{AtomicU32, AtomicU64, Ordering, spin_loop};
use shmem::{Layout, Segment, ShmSafe};

use super::{BenchOpts, Figure, mean_ns, pin_to_cpu};

const SLOTS: u32 = 64;
const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 0,
    backends: SLOTS,
};

/// A spinlock-protected stack of slot indices in shared memory: the
/// baseline for "what PostgreSQL does" (a spinlock around a list).
#[repr(C)]
struct SpinFreeList {
    lock: AtomicU32,
    len: AtomicU32,
    items: [AtomicU32; SLOTS as usize],
}

// SAFETY: repr(C) of atomic integers: any bytes valid, no pointers.
unsafe impl ShmSafe for SpinFreeList {}

impl SpinFreeList {
    fn fill(&self) {
        for (i, item) in self.items.iter().enumerate() {
            // Relaxed: set up before any other process exists.
            item.store(i as u32, Ordering::Relaxed);
        }
        self.len.store(SLOTS, Ordering::Relaxed);
    }

    fn lock(&self) {
        // Acquire: pairs with the release store in unlock().
        while self
            .lock
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Relaxed: only a hint to retry the CAS.
            while self.lock.load(Ordering::Relaxed) != 0 {
                spin_loop();
            }
        }
    }

    fn unlock(&self) {
        // Release: pairs with the acquire CAS in lock().
        self.lock.store(0, Ordering::Release);
    }

    fn pop(&self) -> Option<u32> {
        self.lock();
        // Relaxed inside the lock: the lock orders everything.
        let len = self.len.load(Ordering::Relaxed);
        let item = (len > 0).then(|| {
            self.len.store(len - 1, Ordering::Relaxed);
            self.items[(len - 1) as usize].load(Ordering::Relaxed)
        });
        self.unlock();
        item
    }

    fn push(&self, item: u32) {
        self.lock();
        // Relaxed inside the lock: the lock orders everything.
        let len = self.len.load(Ordering::Relaxed);
        self.items[len as usize].store(item, Ordering::Relaxed);
        self.len.store(len + 1, Ordering::Relaxed);
        self.unlock();
    }
}

/// Shared counters for the contended runs.
#[repr(C)]
struct RunControl {
    stop: AtomicU32,
    ready: AtomicU32,
    ops: [AtomicU64; 2],
    errors: AtomicU32,
}

// SAFETY: repr(C) of atomic integers: any bytes valid, no pointers.
unsafe impl ShmSafe for RunControl {}

fn layout() -> Result<Layout, String> {
    ProcArray::declare(Layout::builder(), CONFIG)
        .region::<SpinFreeList>("spin_list")
        .region::<RunControl>("control")
        .build()
        .map_err(|e| e.to_string())
}

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let layout = layout()?;
    let seg = Segment::create(&layout).map_err(|e| e.to_string())?;
    let procs = ProcArray::init(&seg, CONFIG).map_err(|e| e.to_string())?;
    let spin = seg
        .region::<SpinFreeList>("spin_list")
        .map_err(|e| e.to_string())?;
    spin.fill();
    let control = seg
        .region::<RunControl>("control")
        .map_err(|e| e.to_string())?;

    // Correctness first: every slot can be had once, and comes back.
    let all: Vec<_> = (0..SLOTS)
        .map(|_| procs.acquire(Kind::Backend))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if procs.acquire(Kind::Backend).is_ok() {
        return Err("acquired more slots than exist".into());
    }
    drop(all);

    let budget = opts.budget();
    // The bare lock-free list, for a like-for-like comparison with the
    // baselines, which manage indices and nothing else.
    let bare_head = AtomicU64::new(0);
    let bare_links: Vec<AtomicU32> = (0..SLOTS).map(|_| AtomicU32::new(0)).collect();
    let ours = Figure::new(
        "slot_acquire_release_ns",
        mean_ns(budget, || {
            drop(procs.acquire(Kind::Backend).expect("a free slot"))
        }),
        "ns",
    );
    let free_list = proclist::FreeList::new(&bare_head, &bare_links);
    free_list.fill();
    let bare = Figure::new(
        "freelist_pop_push_ns",
        mean_ns(budget, || {
            let i = free_list.pop().expect("consistent").expect("a free slot");
            free_list.push(i).expect("in range");
        }),
        "ns",
    );
    let mutex_list = std::sync::Mutex::new((0..SLOTS).collect::<Vec<u32>>());
    let mutex = Figure::new(
        "mutex_freelist_acquire_release_ns",
        mean_ns(budget, || {
            let i = mutex_list
                .lock()
                .expect("unpoisoned")
                .pop()
                .expect("a free slot");
            mutex_list.lock().expect("unpoisoned").push(i);
        }),
        "ns",
    );
    let spinlock = Figure::new(
        "spinlock_freelist_acquire_release_ns",
        mean_ns(budget, || {
            let i = spin.pop().expect("a free slot");
            spin.push(i);
        }),
        "ns",
    );

    // Two processes, one per CPU, hammering the same list.
    let slot_procs = contended_processes(control, budget, || {
        let g = procs.acquire(Kind::Backend).map_err(|_| ())?;
        drop(g);
        Ok(())
    })?;
    let slot_procs = Figure::new("slot_contended_mops", slot_procs, "mops");
    let spin_procs = contended_processes(control, budget, || {
        let i = spin.pop().ok_or(())?;
        spin.push(i);
        Ok(())
    })?;
    let spin_procs = Figure::new("spinlock_freelist_contended_mops", spin_procs, "mops");

    // Threads last: the process must be single-threaded when it forks.
    let slot_threads = contended_threads(budget, || {
        drop(procs.acquire(Kind::Backend).expect("free slot"))
    });
    let slot_threads = Figure::new("slot_contended_2threads_mops", slot_threads, "mops");
    let mutex_threads = contended_threads(budget, || {
        let i = mutex_list
            .lock()
            .expect("unpoisoned")
            .pop()
            .expect("a free slot");
        mutex_list.lock().expect("unpoisoned").push(i);
    });
    let mutex_threads = Figure::new("mutex_freelist_contended_mops", mutex_threads, "mops");

    if procs
        .count_free_quiescent(Kind::Backend)
        .map_err(|e| e.to_string())?
        != SLOTS
    {
        return Err("slots were lost during the runs".into());
    }
    Ok(vec![
        Figure::ratio(&ours, &mutex),
        Figure::ratio(&ours, &spinlock),
        Figure::ratio(&bare, &mutex),
        Figure::ratio(&bare, &spinlock),
        Figure::ratio(&slot_procs, &spin_procs),
        Figure::ratio(&slot_threads, &mutex_threads),
        ours,
        bare,
        mutex,
        spinlock,
        slot_procs,
        spin_procs,
        slot_threads,
        mutex_threads,
    ])
}

/// Two forked processes pinned to CPUs 0 and 1 run `op` until told to
/// stop; returns millions of operations per second in total.
fn contended_processes(
    control: &RunControl,
    budget: Duration,
    op: impl Fn() -> Result<(), ()>,
) -> Result<f64, String> {
    // Relaxed: reset before the children exist.
    control.stop.store(0, Ordering::Relaxed);
    control.ready.store(0, Ordering::Relaxed);
    control.errors.store(0, Ordering::Relaxed);
    let mut children = Vec::new();
    for cpu in 0..2 {
        // SAFETY: the CLI process is single-threaded here (thread benches
        // run after every fork), so the child may do anything.
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                let _ = pin_to_cpu(cpu);
                // Relaxed: a start barrier on one counter; the list under
                // test carries its own ordering.
                control.ready.fetch_add(1, Ordering::Relaxed);
                while control.ready.load(Ordering::Relaxed) < 2 {
                    spin_loop();
                }
                let mut n = 0u64;
                // Relaxed: a stop flag; nothing is published with it.
                while control.stop.load(Ordering::Relaxed) == 0 {
                    for _ in 0..64 {
                        if op().is_err() {
                            // Relaxed: read after waitpid, which orders it.
                            control.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 64;
                }
                // Release: pairs with the parent's acquire load after waitpid.
                control.ops[cpu].store(n, Ordering::Release);
                std::process::exit(0);
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    // Relaxed: see the children's barrier.
    while control.ready.load(Ordering::Relaxed) < 2 {
        std::thread::yield_now();
    }
    let start = Instant::now();
    std::thread::sleep(budget);
    // Relaxed: see the children's stop loop.
    control.stop.store(1, Ordering::Relaxed);
    for child in children {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => {}
            other => return Err(format!("bench child failed: {other:?}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Relaxed: the children have exited and been reaped (waitpid orders it).
    if control.errors.load(Ordering::Relaxed) != 0 {
        return Err("an operation failed during a contended run".into());
    }
    // Acquire: pairs with each child's release store of its count (waitpid
    // orders it too).
    let total: u64 = control.ops.iter().map(|o| o.load(Ordering::Acquire)).sum();
    Ok(total as f64 / elapsed / 1e6)
}

/// Two threads run `op` for `budget`; returns millions of ops per second.
fn contended_threads(budget: Duration, op: impl Fn() + Sync) -> f64 {
    let stop = AtomicU32::new(0);
    let start = Instant::now();
    let total: u64 = std::thread::scope(|s| {
        let workers: Vec<_> = (0..2)
            .map(|cpu| {
                let (op, stop) = (&op, &stop);
                s.spawn(move || {
                    let _ = pin_to_cpu(cpu);
                    let mut n = 0u64;
                    // Relaxed: a stop flag; nothing is published with it.
                    while stop.load(Ordering::Relaxed) == 0 {
                        for _ in 0..64 {
                            op();
                        }
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        std::thread::sleep(budget);
        stop.store(1, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .sum()
    });
    total as f64 / start.elapsed().as_secs_f64() / 1e6
}
