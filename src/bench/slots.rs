//! Slot figures: what taking and giving back a process slot costs, alone
//! and with contenders, next to the free lists people would otherwise
//! write: a `Mutex<Vec<u32>>` (in-process only), a spinlock-protected stack
//! in shared memory (PostgreSQL's approach for PGPROC free lists) and a
//! [`ShmLock`] (futex mutex) protected stack in shared memory.
//!
//! # Like for like
//!
//! Taking a slot is more than popping an index: `ProcArray::acquire`
//! writes the owner's pid, start time, kind and tag, hands the latch over
//! and publishes the status word; the release clears the critical-section
//! depth and the latch's owner and pushes the slot, or parks it (see
//! below), which leaves the latch alone. So every baseline figure named
//! `*_freelist_*` does the writes of a pushing release into a slot of the
//! same shape (the index list under its lock, the slot writes outside it,
//! as PostgreSQL does), and a lock-protected list needs no CAS
//! on the status word (its lock already makes the taker the only owner),
//! which the baselines get for free. `freelist_pop_push_ns` and
//! `mutex_bare_*` compare the bare index lists, indices only.
//!
//! # Parking
//!
//! A released slot is parked with its thread, which takes it back with one
//! CAS on the slot's status instead of a pop and a push on a list head
//! (see `proclist::array`'s docs on parking). That is what
//! `slot_acquire_release_ns` and the `slot_contended_*` figures measure,
//! because it is what `acquire` and a guard's drop do. The baselines have
//! no such cache, as PostgreSQL's and the obvious mutex list do not. To
//! show the lists themselves, `slot_unparked_acquire_release_ns` is the
//! same pair through a view made `without_parking` (every release pushed),
//! and the one-list array of the contended figures does not park either.
//!
//! # Uncontended figures
//!
//! The seven single-thread figures are timed in short interleaved rounds
//! ([`UNCONTENDED_ROUND`] each, the budget's worth of them per figure), and
//! each is its fastest round's mean. On a shared host, other tenants and
//! frequency changes only ever add time, and they come in phases: a
//! stretch of tens of milliseconds in which one loop runs half as fast
//! again as in the next. The fastest round is the least disturbed one, and
//! the interleaving gives every figure the same chances of a quiet round,
//! so the ratios between them stay comparable. Rounds must be short beside
//! those phases: with five rounds of 40 ms, about one run in twenty caught
//! every round of one figure in slow phases and none of another's, and
//! read a ratio a third off what the same binary read in the next run.
//!
//! # Contended figures
//!
//! `*_contended_p<N>_mops` are N forked processes taking and releasing
//! slots as fast as they can, pinned round-robin to the CPUs. The slot
//! array gives each process a home free list of its own (see
//! `proclist::array::FREE_LIST_SHARDS`), so processes do not share a cache
//! line while slots last, and parking keeps each process on a slot of its
//! own; `slot_single_list_*` is the same array built with one free list
//! per kind and viewed without parking, so every operation goes through
//! one shared head: the lock-free list under the most contention it can
//! meet. On a machine
//! with fewer CPUs than N the extra processes time-share a CPU: such counts
//! measure how throughput degrades and how fairly it is shared
//! (`*_fairness_x`: the slowest process's share over the fastest's, 1 is
//! perfectly fair), not speed-up. A spinlock whose holder is preempted
//! stalls everyone until the holder runs again; lock-free lists and the
//! futex mutex do not.

use std::time::{Duration, Instant};

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};
use proclist::array::{FreeListHead, LINK_STRIDE};
use proclist::{Kind, ProcArray, ProcArrayConfig, ProcSlot, ShmLock};
use shmem::sync::{AtomicU32, AtomicU64, Ordering, spin_loop};
use shmem::{Layout, Segment, ShmSafe};

use super::{BenchOpts, Figure, mean_ns, pin_to_cpu};

const SLOTS: u32 = 64;
const CONFIG: ProcArrayConfig = ProcArrayConfig {
    workers: 0,
    backends: SLOTS,
};

/// How long one round of an uncontended figure runs (see the module docs):
/// about a quarter of a million pairs, so its mean is not the clock's.
const UNCONTENDED_ROUND: Duration = Duration::from_millis(2);

/// Process counts of the scaling figures.
const PROCESS_COUNTS: [usize; 4] = [1, 2, 4, 8];
const MAX_PROCESSES: usize = 8;

/// The slot a baseline hands out: the fields `ProcArray::acquire` writes,
/// on the same cache lines as in a `ProcSlot` (identity on one, latch on
/// another).
#[repr(C, align(128))]
#[derive(Default)]
struct MirrorSlot {
    status: AtomicU64,
    owner_tag: AtomicU64,
    start_time: AtomicU64,
    pid: AtomicU32,
    kind: AtomicU32,
    crit_depth: AtomicU32,
    latch: MirrorLatch,
}

#[repr(C, align(128))]
#[derive(Default)]
struct MirrorLatch {
    state: AtomicU32,
    owner: AtomicU32,
    spin_hint: AtomicU32,
}

// SAFETY: repr(C) of atomic integers: any bytes valid, no pointers.
unsafe impl ShmSafe for MirrorSlot {}

impl MirrorSlot {
    /// What `ProcArray::acquire` writes, for a slot the caller just took
    /// from a lock-protected list (which makes it the only owner, so the
    /// status needs a store, not a CAS).
    fn take(&self) {
        let pid = latch::pid::current();
        // Relaxed: published by the release store of the status below.
        self.pid.store(pid, Ordering::Relaxed);
        self.start_time
            .store(shmem::liveness::own_start_time_as(pid), Ordering::Relaxed);
        self.kind.store(Kind::Backend as u32, Ordering::Relaxed);
        self.owner_tag.store(0, Ordering::Relaxed);
        self.latch.owner.store(pid, Ordering::Relaxed);
        self.latch.spin_hint.store(0, Ordering::Relaxed);
        // Relaxed: a generation bump by its owner; the store below publishes.
        let generation = (self.status.load(Ordering::Relaxed) >> 32) + 1;
        // Release: what a status reader's acquire would pair with, as in
        // ProcSlot::publish.
        self.status.store((generation << 32) | 2, Ordering::Release);
    }

    /// What dropping a `SlotGuard` writes before the push.
    fn release(&self) {
        // Relaxed: published by the release store of the status below.
        self.latch.owner.store(0, Ordering::Relaxed);
        self.latch.spin_hint.store(0, Ordering::Relaxed);
        self.crit_depth.store(0, Ordering::Relaxed);
        // Relaxed: the owner's own word; the store below publishes.
        let generation = self.status.load(Ordering::Relaxed) >> 32;
        // Release: as in take().
        self.status.store(generation << 32, Ordering::Release);
    }
}

/// A stack of slot indices, behind whatever lock the holder uses.
#[repr(C)]
struct IndexStack {
    len: AtomicU32,
    items: [AtomicU32; SLOTS as usize],
}

impl IndexStack {
    fn fill(&self) {
        for (i, item) in self.items.iter().enumerate() {
            // Relaxed: set up before any other process exists.
            item.store(i as u32, Ordering::Relaxed);
        }
        self.len.store(SLOTS, Ordering::Relaxed);
    }

    /// Only under the owner's lock, which orders everything: hence Relaxed.
    fn pop(&self) -> Option<u32> {
        let len = self.len.load(Ordering::Relaxed);
        (len > 0).then(|| {
            self.len.store(len - 1, Ordering::Relaxed);
            self.items[(len - 1) as usize].load(Ordering::Relaxed)
        })
    }

    /// Only under the owner's lock, which orders everything: hence Relaxed.
    fn push(&self, item: u32) {
        let len = self.len.load(Ordering::Relaxed);
        self.items[len as usize].store(item, Ordering::Relaxed);
        self.len.store(len + 1, Ordering::Relaxed);
    }
}

/// A spinlock-protected stack of slot indices in shared memory: the
/// baseline for "what PostgreSQL does" (a spinlock around a list).
#[repr(C)]
struct SpinFreeList {
    lock: AtomicU32,
    stack: IndexStack,
}

// SAFETY: repr(C) of atomic integers: any bytes valid, no pointers.
unsafe impl ShmSafe for SpinFreeList {}

impl SpinFreeList {
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
        let item = self.stack.pop();
        self.unlock();
        item
    }

    fn push(&self, item: u32) {
        self.lock();
        self.stack.push(item);
        self.unlock();
    }
}

/// A futex-mutex ([`ShmLock`]) protected stack of slot indices in shared
/// memory: a lock that sleeps instead of spinning forever, so it stays
/// usable when processes outnumber CPUs.
#[repr(C)]
struct LockedFreeList {
    lock: ShmLock,
    stack: IndexStack,
}

// SAFETY: repr(C) of a ShmLock (itself ShmSafe) and atomic integers: any
// bytes valid, no pointers.
unsafe impl ShmSafe for LockedFreeList {}

impl LockedFreeList {
    fn pop(&self) -> Result<Option<u32>, ()> {
        let _held = self.lock.lock().map_err(|_| ())?;
        Ok(self.stack.pop())
    }

    fn push(&self, item: u32) -> Result<(), ()> {
        let _held = self.lock.lock().map_err(|_| ())?;
        self.stack.push(item);
        Ok(())
    }
}

/// Shared counters for the contended runs.
#[repr(C)]
struct RunControl {
    stop: AtomicU32,
    ready: AtomicU32,
    errors: AtomicU32,
    ops: [AtomicU64; MAX_PROCESSES],
}

// SAFETY: repr(C) of atomic integers: any bytes valid, no pointers.
unsafe impl ShmSafe for RunControl {}

/// Region names of the one-list array (the sharded one uses the defaults).
const SINGLE_SLOTS: &str = "single.procs";
const SINGLE_LINKS: &str = "single.links";
const SINGLE_HEADS: &str = "single.heads";

fn layout() -> Result<Layout, String> {
    let total = CONFIG.total() as usize;
    ProcArray::declare(Layout::builder(), CONFIG)
        .array::<ProcSlot>(SINGLE_SLOTS, total)
        .array::<AtomicU32>(SINGLE_LINKS, total * LINK_STRIDE as usize)
        .array::<FreeListHead>(SINGLE_HEADS, Kind::ALL.len())
        .array::<MirrorSlot>("mirror_slots", total)
        .region::<SpinFreeList>("spin_list")
        .region::<LockedFreeList>("locked_list")
        .region::<RunControl>("control")
        .build()
        .map_err(|e| e.to_string())
}

/// Takes and releases one slot from the spinlock list, with slot writes.
fn spin_cycle(list: &SpinFreeList, slots: &[MirrorSlot]) -> Result<(), ()> {
    let i = list.pop().ok_or(())?;
    slots[i as usize].take();
    slots[i as usize].release();
    list.push(i);
    Ok(())
}

/// Takes and releases one slot from the futex-mutex list, with slot writes.
fn locked_cycle(list: &LockedFreeList, slots: &[MirrorSlot]) -> Result<(), ()> {
    let i = list.pop()?.ok_or(())?;
    slots[i as usize].take();
    slots[i as usize].release();
    list.push(i)
}

/// Runs the group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let layout = layout()?;
    let seg = Segment::create(&layout).map_err(|e| e.to_string())?;
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let procs = ProcArray::init(&seg, CONFIG).map_err(|e| err(&e))?;
    let single = ProcArray::from_parts(
        seg.array(SINGLE_SLOTS).map_err(|e| err(&e))?,
        seg.array(SINGLE_LINKS).map_err(|e| err(&e))?,
        seg.array(SINGLE_HEADS).map_err(|e| err(&e))?,
        CONFIG,
    )
    .map_err(|e| err(&e))?
    .without_parking();
    single.fill_free_lists();
    let mirror = seg
        .array::<MirrorSlot>("mirror_slots")
        .map_err(|e| err(&e))?;
    let spin = seg
        .region::<SpinFreeList>("spin_list")
        .map_err(|e| err(&e))?;
    spin.stack.fill();
    let locked = seg
        .region::<LockedFreeList>("locked_list")
        .map_err(|e| err(&e))?;
    locked.stack.fill();
    let control = seg.region::<RunControl>("control").map_err(|e| err(&e))?;

    // Correctness first: every slot can be had once, and comes back.
    for array in [procs, single] {
        let all: Vec<_> = (0..SLOTS)
            .map(|_| array.acquire(Kind::Backend))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if array.acquire(Kind::Backend).is_ok() {
            return Err("acquired more slots than exist".into());
        }
        drop(all);
    }

    let budget = opts.budget();
    let mutex_list = std::sync::Mutex::new((0..SLOTS).collect::<Vec<u32>>());
    // The bare lists, indices only.
    let bare_head = AtomicU64::new(0);
    let bare_links: Vec<AtomicU32> = (0..SLOTS).map(|_| AtomicU32::new(0)).collect();
    let free_list = proclist::FreeList::new(&bare_head, &bare_links);
    free_list.fill();

    let ours = || drop(procs.acquire(Kind::Backend).expect("a free slot"));
    let unparked_view = procs.without_parking();
    let unparked = || drop(unparked_view.acquire(Kind::Backend).expect("a free slot"));
    let mutex_pop = || {
        mutex_list
            .lock()
            .expect("unpoisoned")
            .pop()
            .expect("a free slot")
    };
    let mutex_cycle = || {
        let i = mutex_pop();
        mirror[i as usize].take();
        mirror[i as usize].release();
        mutex_list.lock().expect("unpoisoned").push(i);
    };
    let spinlock = || spin_cycle(spin, mirror).expect("a free slot");
    let shmlock = || locked_cycle(locked, mirror).expect("a free slot");
    let bare = || {
        let i = free_list.pop().expect("consistent").expect("a free slot");
        free_list.push(i).expect("in range");
    };
    let mutex_bare = || {
        let i = mutex_pop();
        mutex_list.lock().expect("unpoisoned").push(i);
    };
    // Interleaved rounds, each figure its fastest round: see the module docs.
    let round = UNCONTENDED_ROUND.min(budget);
    let mut fastest = [f64::INFINITY; 7];
    for _ in 0..budget.div_duration_f64(round).ceil() as u32 {
        let times = [
            mean_ns(round, &ours),
            mean_ns(round, &unparked),
            mean_ns(round, &mutex_cycle),
            mean_ns(round, &spinlock),
            mean_ns(round, &shmlock),
            mean_ns(round, &bare),
            mean_ns(round, &mutex_bare),
        ];
        for (best, time) in fastest.iter_mut().zip(times) {
            *best = best.min(time);
        }
    }
    let [ours, unparked, mutex, spinlock, shmlock, bare, mutex_bare] = fastest;
    let ours = Figure::new("slot_acquire_release_ns", ours, "ns");
    let unparked = Figure::new("slot_unparked_acquire_release_ns", unparked, "ns");
    let mutex = Figure::new("mutex_freelist_acquire_release_ns", mutex, "ns");
    let spinlock = Figure::new("spinlock_freelist_acquire_release_ns", spinlock, "ns");
    let shmlock = Figure::new("shmlock_freelist_acquire_release_ns", shmlock, "ns");
    let bare = Figure::new("freelist_pop_push_ns", bare, "ns");
    let mutex_bare = Figure::new("mutex_bare_pop_push_ns", mutex_bare, "ns");

    // Processes: 1, 2, 4 and 8, each variant in turn at each count.
    let mut scaling = Vec::new();
    let mut ratios = Vec::new();
    let mut p2 = None;
    let mut spin_p2 = None;
    for n in PROCESS_COUNTS {
        let (slot_mops, slot_fair) = contended_processes(control, n, budget, || {
            drop(procs.acquire(Kind::Backend).map_err(|_| ())?);
            Ok(())
        })?;
        let (single_mops, _) = contended_processes(control, n, budget, || {
            drop(single.acquire(Kind::Backend).map_err(|_| ())?);
            Ok(())
        })?;
        let (locked_mops, locked_fair) =
            contended_processes(control, n, budget, || locked_cycle(locked, mirror))?;
        let slot = Figure::new(format!("slot_contended_p{n}_mops"), slot_mops, "mops");
        let locked = Figure::new(
            format!("mutex_freelist_contended_p{n}_mops"),
            locked_mops,
            "mops",
        );
        ratios.push(Figure::ratio(&slot, &locked));
        if n == 2 {
            p2 = Some(slot_mops);
            let (spin_mops, _) =
                contended_processes(control, n, budget, || spin_cycle(spin, mirror))?;
            spin_p2 = Some(Figure::new(
                "spinlock_freelist_contended_mops",
                spin_mops,
                "mops",
            ));
        }
        scaling.push(slot);
        scaling.push(Figure::new(
            format!("slot_single_list_contended_p{n}_mops"),
            single_mops,
            "mops",
        ));
        scaling.push(locked);
        if n > 1 {
            scaling.push(Figure::new(
                format!("slot_contended_p{n}_fairness"),
                slot_fair,
                "x",
            ));
            scaling.push(Figure::new(
                format!("mutex_freelist_contended_p{n}_fairness"),
                locked_fair,
                "x",
            ));
        }
    }
    let slot_procs = Figure::new("slot_contended_mops", p2.unwrap_or(0.0), "mops");
    let spin_procs = spin_p2.ok_or("no two-process run")?;

    // Threads last: the process must be single-threaded when it forks.
    let slot_threads = contended_threads(budget, || {
        drop(procs.acquire(Kind::Backend).expect("free slot"))
    });
    let slot_threads = Figure::new("slot_contended_2threads_mops", slot_threads, "mops");
    let mutex_threads = contended_threads(budget, mutex_cycle);
    let mutex_threads = Figure::new("mutex_freelist_contended_mops", mutex_threads, "mops");

    for array in [procs, single] {
        if array
            .count_free_quiescent(Kind::Backend)
            .map_err(|e| e.to_string())?
            != SLOTS
        {
            return Err("slots were lost during the runs".into());
        }
    }
    let mut figures = vec![
        Figure::ratio(&ours, &mutex),
        Figure::ratio(&unparked, &mutex),
        Figure::ratio(&ours, &spinlock),
        Figure::ratio(&ours, &shmlock),
        Figure::ratio(&bare, &mutex_bare),
        Figure::ratio(&slot_procs, &spin_procs),
        Figure::ratio(&slot_threads, &mutex_threads),
    ];
    figures.extend(ratios);
    figures.extend([
        ours,
        unparked,
        mutex,
        spinlock,
        shmlock,
        bare,
        mutex_bare,
        slot_procs,
        spin_procs,
        slot_threads,
        mutex_threads,
    ]);
    figures.extend(scaling);
    Ok(figures)
}

/// `n` forked processes, pinned round-robin to the CPUs, run `op` until
/// told to stop; returns millions of operations per second in total, and
/// the slowest process's count over the fastest's.
fn contended_processes(
    control: &RunControl,
    n: usize,
    budget: Duration,
    op: impl Fn() -> Result<(), ()>,
) -> Result<(f64, f64), String> {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    // Relaxed: reset before the children exist.
    control.stop.store(0, Ordering::Relaxed);
    control.ready.store(0, Ordering::Relaxed);
    control.errors.store(0, Ordering::Relaxed);
    for ops in &control.ops {
        ops.store(0, Ordering::Relaxed);
    }
    let mut children = Vec::new();
    for me in 0..n.min(MAX_PROCESSES) {
        // SAFETY: the CLI process is single-threaded here (thread benches
        // run after every fork), so the child may do anything.
        match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                let _ = pin_to_cpu(me % cpus);
                // Relaxed: a start barrier on one counter; the list under
                // test carries its own ordering.
                control.ready.fetch_add(1, Ordering::Relaxed);
                while control.ready.load(Ordering::Relaxed) < n as u32 {
                    spin_loop();
                }
                let mut count = 0u64;
                // Relaxed: a stop flag; nothing is published with it.
                while control.stop.load(Ordering::Relaxed) == 0 {
                    for _ in 0..64 {
                        if op().is_err() {
                            // Relaxed: read after waitpid, which orders it.
                            control.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    count += 64;
                }
                // Release: pairs with the parent's acquire load after waitpid.
                control.ops[me].store(count, Ordering::Release);
                std::process::exit(0);
            }
            ForkResult::Parent { child } => children.push(child),
        }
    }
    // Relaxed: see the children's barrier.
    while control.ready.load(Ordering::Relaxed) < n as u32 {
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
    let counts: Vec<u64> = control.ops[..n]
        .iter()
        .map(|o| o.load(Ordering::Acquire))
        .collect();
    let total: u64 = counts.iter().sum();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let fairness = if max == 0 {
        0.0
    } else {
        min as f64 / max as f64
    };
    Ok((total as f64 / elapsed / 1e6, fairness))
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
