//! `postmaster chaos`: a soak test of crash recovery. A postmaster runs a
//! mix of workers; this process kills one of them, N times, at random
//! moments (some aimed inside a critical section or in the middle of a
//! ring write), waits for the recovery, and checks that nothing leaked and
//! nothing acknowledged was lost.
//!
//! The process forks, like `postmaster demo`: the child is the postmaster
//! (single-threaded), the parent is the *driver*, which attaches to the
//! uniquely named segment and reads the published status table, the proc
//! array, the name table, the registration slots, the ring's role words
//! and the workers' own board in the application region `chaos.board`.
//!
//! # The workers
//!
//! | worker       | shmem | on crash | does                                                          |
//! |--------------|-------|----------|---------------------------------------------------------------|
//! | `producer-a` | yes   | contain  | pushes numbered messages into the MPSC ring `chaos.ring`       |
//! | `producer-b` | yes   | contain  | the same, as the second producer                               |
//! | `consumer`   | yes   | contain  | pops them inside a critical section and checks the numbering   |
//! | `echo`       | yes   | contain  | holds the name `echo`; answers calls with the request          |
//! | `caller`     | yes   | reset    | calls and casts `echo`; a wrong answer is a violation          |
//! | `ledger`     | yes   | contain  | a two-step update inside a critical section                    |
//! | `spawner`    | yes   | contain  | registers a dynamic worker `dyn` and waits for it to finish    |
//! | `plain-1/2`  | no    | -        | sleep                                                          |
//!
//! Every static worker is `Permanent`: whatever ends it, it comes back.
//!
//! # Acknowledged messages
//!
//! A producer numbers its messages 1, 2, 3, ... (per segment generation:
//! a reset zeroes the ring and every number). Before it claims a cell it
//! stores the number in `reserved`; once the commit returned, in `acked`.
//! A producer that starts and finds `reserved > acked` knows its previous
//! life died with that number in flight, delivered or not, and records it
//! in its *limbo* list before it sends anything. The consumer then checks,
//! per producer: numbers strictly increase (no duplicate, no reordering),
//! and every number it skipped is in limbo (an acknowledged message is
//! never lost). The pop and the record of the number sit in one critical
//! section, so a consumer killed between them costs a reset, not a
//! duplicate. The application's clean-up hook frees a dead producer's
//! ring claims (`MpscRing::recover_owner`): its half-written cell becomes
//! a loss the consumer is told about, and the ring flows on.
//!
//! # After each kill
//!
//! The driver waits (with a deadline) until every worker runs again under
//! a new pid and has reported itself set up, and until messages and calls
//! flow again; then checks: exactly the expected proc slots, names,
//! registration slots and ring producer roles are taken, each by a live
//! process; the segment generation moved exactly as often as the
//! postmaster's published reset counter; a kill that must reset did, and
//! one that must not did not. Workers report what they see wrong through a
//! pipe the driver reads.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use bgw::spec::OnCrash;
use bgw::{
    Postmaster, Restart, Shared, SharedConfig, WorkerContext, WorkerExit, WorkerResult, WorkerSpec,
};
use bytemuck::{Pod, Zeroable};
use latch::{Latch, Wake};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use shmem::ring::{MpscPopError, MpscPushError, MpscRing};
use shmem::sync::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use shmem::{AttachError, Layout, LayoutBuilder, Segment};

/// Region of the workers' [`Board`].
const BOARD: &str = "chaos.board";
/// The MPSC ring the producers and the consumer share.
const RING: &str = "chaos.ring";
/// Cells of [`RING`].
const RING_CAPACITY: usize = 64;
/// The latch the consumer owns and the producers set after a commit.
const RX_LATCH: &str = "chaos.rx";
/// Numbers a producer remembers as in limbo (one per death mid-send).
const LIMBO: usize = 64;

/// How long one recovery may take before it is a violation.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(15);
/// How long a failed leak check is retried: longer than the postmaster's
/// grace for a half-filled registration slot, whose registrant may have
/// been the victim.
const LEAK_DEADLINE: Duration = Duration::from_secs(7);
/// How long an aimed worker holds its spot waiting to be killed.
const AIM_HOLD: Duration = Duration::from_secs(10);

/// One static worker of the mix.
struct Role {
    name: &'static str,
    entry: &'static str,
    shmem: bool,
    on_crash: OnCrash,
    /// Where the driver can aim a kill at it.
    aim: u32,
}

const ROLES: [Role; 9] = [
    Role {
        name: "producer-a",
        entry: "producer",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_MID_WRITE,
    },
    Role {
        name: "producer-b",
        entry: "producer",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_MID_WRITE,
    },
    Role {
        name: "consumer",
        entry: "consumer",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_CRITICAL,
    },
    Role {
        name: "echo",
        entry: "echo",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_NONE,
    },
    Role {
        name: "caller",
        entry: "caller",
        shmem: true,
        on_crash: OnCrash::ResetAll,
        aim: AIM_NONE,
    },
    Role {
        name: "ledger",
        entry: "ledger",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_CRITICAL,
    },
    Role {
        name: "spawner",
        entry: "spawner",
        shmem: true,
        on_crash: OnCrash::Contain,
        aim: AIM_NONE,
    },
    Role {
        name: "plain-1",
        entry: "plain",
        shmem: false,
        on_crash: OnCrash::Contain,
        aim: AIM_NONE,
    },
    Role {
        name: "plain-2",
        entry: "plain",
        shmem: false,
        on_crash: OnCrash::Contain,
        aim: AIM_NONE,
    },
];

const PRODUCERS: usize = 2;
const CONSUMER: usize = 2;
const ECHO: usize = 3;
const CALLER: usize = 4;
const LEDGER: usize = 5;

/// `aim`: no spot asked for.
const AIM_NONE: u32 = 0;
/// `aim`/`at`: inside a critical section.
const AIM_CRITICAL: u32 = 1;
/// `aim`/`at`: between claiming a ring cell and committing it.
const AIM_MID_WRITE: u32 = 2;

/// What one worker and the driver tell each other; one cache line.
#[repr(C, align(128))]
#[derive(Debug, Default)]
struct RoleBoard {
    /// The pid of the tenant that finished setting up (0: none yet).
    ready_pid: AtomicU32,
    /// Driver → worker: go to this spot ([`AIM_CRITICAL`], ...) and hold.
    aim: AtomicU32,
    /// Worker → driver: the spot it holds now.
    at: AtomicU32,
    /// Driver → worker: 1 + the exit code to end with (0: none).
    exit_code: AtomicU32,
    /// Operations done (messages received, calls answered, ...).
    progress: AtomicU64,
}

/// A producer's numbering; see the module docs.
#[repr(C, align(128))]
#[derive(Debug)]
struct ProducerBoard {
    /// The number being sent (stored before the claim).
    reserved: AtomicU64,
    /// The highest number whose commit returned.
    acked: AtomicU64,
    /// Numbers recorded in limbo so far; entry `i % LIMBO` holds the i-th.
    limbo_len: AtomicU64,
    limbo: [AtomicU64; LIMBO],
}

/// The application region of the chaos segment.
#[repr(C)]
#[derive(Debug)]
struct Board {
    roles: [RoleBoard; ROLES.len()],
    producers: [ProducerBoard; PRODUCERS],
    /// The consumer's record: the highest number received per producer.
    received: [AtomicU64; PRODUCERS],
    /// The ledger's two halves: equal outside its critical section.
    ledger: [AtomicU64; 2],
}

// SAFETY: repr(C) of atomics only (and padding): any bytes are valid, no
// pointers, all mutation atomic.
unsafe impl shmem::ShmSafe for Board {}

/// One ring message.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Msg {
    producer: u32,
    _pad: u32,
    seq: u64,
}

fn add_regions(builder: LayoutBuilder) -> LayoutBuilder {
    builder
        .region::<Board>(BOARD)
        .region::<Latch>(RX_LATCH)
        .mpsc_ring::<Msg>(RING, RING_CAPACITY)
}

fn shared_config() -> SharedConfig {
    SharedConfig {
        max_workers: 16,
        ..SharedConfig::default()
    }
}

// ---------------------------------------------------------------------------
// The workers (run in the postmaster's children).

/// The write end of the violations pipe, inherited from the driver.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);

/// Tells the driver about a broken invariant (one short write to a pipe:
/// lines from different workers never interleave).
fn report(what: std::fmt::Arguments<'_>) {
    // Relaxed: written once before the postmaster forks anyone.
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    let mut line = format!("pid {}: {what}\n", std::process::id());
    line.truncate(500);
    // SAFETY: the descriptor is the pipe's write end, opened by the driver
    // before the fork and never closed in the postmaster or its children.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::unistd::write(fd, line.as_bytes());
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Worker<'c, 'a> {
    ctx: &'c WorkerContext<'a>,
    board: &'static Board,
    me: &'static RoleBoard,
}

/// What an aimed or commanded worker does next.
enum Next {
    Go,
    Return(WorkerResult),
}

impl<'c, 'a> Worker<'c, 'a> {
    fn new(ctx: &'c WorkerContext<'a>) -> Res<Self> {
        let segment = ctx.segment().ok_or("chaos workers need shared memory")?;
        let board = segment.region::<Board>(BOARD)?;
        let index = *ctx.arg().first().ok_or("no role index")? as usize;
        let me = board.roles.get(index).ok_or("bad role index")?;
        // A new tenant: nothing asked of it yet (the driver asks only once
        // `ready_pid` names it).
        me.aim.store(AIM_NONE, Ordering::Relaxed);
        me.at.store(AIM_NONE, Ordering::Relaxed);
        me.exit_code.store(0, Ordering::Relaxed);
        Ok(Worker { ctx, board, me })
    }

    /// Set up: the driver may now aim at this process.
    fn ready(&self) {
        // Release: the driver's Acquire load then sees the resets above.
        self.me
            .ready_pid
            .store(std::process::id(), Ordering::Release);
        self.ctx.ready();
    }

    /// Obeys an exit command given at a random moment (outside every
    /// critical section): 0 and 1 through the entry's return, others by
    /// `_exit` (no clean-up: an abandoned proc slot).
    fn commanded(&self) -> Next {
        // Acquire: pairs with the driver's Release store, which follows
        // its store of `aim` for an aimed exit: that one is obeyed at the
        // spot, in hold().
        let code = self.me.exit_code.load(Ordering::Acquire);
        if code != 0 && self.me.aim.load(Ordering::Relaxed) != AIM_NONE {
            return Next::Go;
        }
        match code {
            0 => Next::Go,
            1 => Next::Return(Ok(WorkerExit::Done)),
            2 => Next::Return(Ok(WorkerExit::Restart)),
            code => hard_exit(code - 1),
        }
    }

    /// Whether the driver aims at `spot`.
    fn aimed(&self, spot: u32) -> bool {
        // Acquire: pairs with the driver's Release store.
        self.me.aim.load(Ordering::Acquire) == spot
    }

    /// At the aimed spot: announces it, then ends there if told to, or
    /// waits to be killed (bounded; false if the postmaster died or asked
    /// it to stop).
    fn hold(&self, spot: u32) -> bool {
        // Release: the driver reads `at` then kills; nothing else travels.
        self.me.at.store(spot, Ordering::Release);
        let until = Instant::now() + AIM_HOLD;
        loop {
            // Acquire: pairs with the driver's Release store.
            let code = self.me.exit_code.load(Ordering::Acquire);
            if code != 0 {
                hard_exit(code - 1);
            }
            self.ctx.latch().reset();
            if self.ctx.should_stop() || Instant::now() >= until {
                break;
            }
            let deadline = (Instant::now() + Duration::from_millis(5)).min(until);
            if self.ctx.wait(Some(deadline)) == Wake::PostmasterDied {
                return false;
            }
        }
        // Relaxed: leaving the spot publishes nothing; the driver only
        // waits for the Release store that announced it (hold()).
        self.me.at.store(AIM_NONE, Ordering::Relaxed);
        !self.ctx.should_stop()
    }

    /// The latch loop's wait: false when the worker must return.
    fn pause(&self, for_: Duration) -> bool {
        self.ctx.latch().reset();
        if self.ctx.should_stop() {
            return false;
        }
        self.ctx.wait(Some(Instant::now() + for_)) != Wake::PostmasterDied
            && !self.ctx.should_stop()
    }

    fn progress(&self) {
        // Relaxed: a counter the driver compares with itself.
        self.me.progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Ends the process with `code` without any clean-up.
fn hard_exit(code: u32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { nix::libc::_exit(code as i32) }
}

fn producer_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    let index = *ctx.arg().first().unwrap_or(&0) as usize;
    let numbers = w
        .board
        .producers
        .get(index)
        .ok_or("a producer's role index is its producer index")?;
    let segment = ctx.segment().ok_or("no segment")?;
    let ring = MpscRing::<Msg>::from_segment(segment, RING)?;
    let rx = segment.region::<Latch>(RX_LATCH)?;
    let mut producer = ring.producer(shmem::ring::own_token())?;
    // Acquire: pairs with the Release stores of the previous life.
    let reserved = numbers.reserved.load(Ordering::Acquire);
    let acked = numbers.acked.load(Ordering::Acquire);
    if reserved > acked {
        // The previous life died sending `reserved`: maybe delivered, maybe
        // not, never acknowledged.
        let n = numbers.limbo_len.load(Ordering::Relaxed);
        numbers.limbo[(n % LIMBO as u64) as usize].store(reserved, Ordering::Relaxed);
        // Release: pairs with the consumer's Acquire load; also ordered
        // before every later commit of ours, which the consumer acquires.
        numbers.limbo_len.store(n + 1, Ordering::Release);
    }
    let mut next = reserved.max(acked) + 1;
    w.ready();
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        for _ in 0..8 {
            // Release: the next life reads it (see above).
            numbers.reserved.store(next, Ordering::Release);
            let claim = match producer.claim() {
                Ok(claim) => claim,
                Err(MpscPushError::Full) => break,
                Err(e) => {
                    report(format_args!("producer {index}: ring: {e}"));
                    return Err(e.into());
                }
            };
            if w.aimed(AIM_MID_WRITE) && !w.hold(AIM_MID_WRITE) {
                // Asked to stop while holding a claim: dropping it poisons
                // the cell (a loss, and `next` is in limbo for the next life).
                return Ok(WorkerExit::Done);
            }
            claim.commit(Msg {
                producer: index as u32,
                _pad: 0,
                seq: next,
            });
            // Release: pairs with the next life's Acquire load.
            numbers.acked.store(next, Ordering::Release);
            next += 1;
            w.progress();
        }
        rx.set();
        if !w.pause(Duration::from_millis(3)) {
            return Ok(WorkerExit::Done);
        }
    }
}

fn consumer_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    let segment = ctx.segment().ok_or("no segment")?;
    let ring = MpscRing::<Msg>::from_segment(segment, RING)?;
    let rx = segment.region::<Latch>(RX_LATCH)?;
    rx.own()?;
    let mut consumer = ring.consumer(shmem::ring::own_token())?;
    w.ready();
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        if w.aimed(AIM_CRITICAL) {
            let _inside = ctx.critical();
            if !w.hold(AIM_CRITICAL) {
                return Ok(WorkerExit::Done);
            }
        }
        rx.reset();
        loop {
            // The pop and its record in one critical section: a death
            // between them would lose (or, before the cell is freed,
            // duplicate) a message, so it must cost a reset.
            let _inside = ctx.critical();
            match consumer.try_pop() {
                Ok(msg) => {
                    check_message(w.board, &msg);
                    w.progress();
                }
                Err(MpscPopError::Empty | MpscPopError::InFlight { .. }) => break,
                // A producer died mid-write; its number is in limbo.
                Err(MpscPopError::Abandoned { .. }) => {}
                Err(MpscPopError::Corrupt(c)) => {
                    report(format_args!("consumer: {c}"));
                    return Err(c.into());
                }
            }
        }
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        match rx.wait(Some(Instant::now() + Duration::from_millis(5))) {
            Ok(Wake::PostmasterDied) => return Ok(WorkerExit::Done),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The consumer's check of one message; see the module docs.
fn check_message(board: &Board, msg: &Msg) {
    let Some(received) = board.received.get(msg.producer as usize) else {
        report(format_args!(
            "consumer: message from unknown producer {msg:?}"
        ));
        return;
    };
    // Relaxed: only the consumer writes it (inside this critical section).
    let last = received.load(Ordering::Relaxed);
    if msg.seq <= last {
        report(format_args!(
            "consumer: producer {} sent {} after {last}: duplicated or reordered",
            msg.producer, msg.seq
        ));
    } else if msg.seq > last + 1 {
        let numbers = &board.producers[msg.producer as usize];
        // Acquire: pairs with the producer's Release store.
        let n = numbers.limbo_len.load(Ordering::Acquire);
        let recent: Vec<u64> = (n.saturating_sub(LIMBO as u64)..n)
            .map(|i| numbers.limbo[(i % LIMBO as u64) as usize].load(Ordering::Relaxed))
            .collect();
        for missing in last + 1..msg.seq {
            if !recent.contains(&missing) {
                report(format_args!(
                    "consumer: producer {} message {missing} lost (got {} after {last}; in \
                     limbo: {recent:?})",
                    msg.producer, msg.seq
                ));
            }
        }
    }
    // Relaxed: the consumer alone reads and writes its high-water mark.
    received.store(msg.seq.max(last), Ordering::Relaxed);
}

fn echo_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    let mut endpoint = ctx.endpoint()?;
    endpoint.register_name("echo")?;
    w.ready();
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        match endpoint.recv(Some(Instant::now() + Duration::from_millis(5))) {
            Ok(Some(message)) => {
                if let Some(reply_to) = message.reply_to() {
                    let _ = endpoint.reply(reply_to, message.payload());
                }
                w.progress();
            }
            Ok(None) => {}
            Err(bgw::mailbox::RecvError::PostmasterDied) => return Ok(WorkerExit::Done),
            Err(e) => return Err(e.into()),
        }
    }
}

fn caller_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    let mut endpoint = ctx.endpoint()?;
    w.ready();
    let mut n: u64 = 0;
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        n += 1;
        let request = format!("call {} {n}", std::process::id());
        // Echo may be dead or restarting: only a wrong answer is wrong.
        if let Ok(answer) = endpoint.call("echo", request.as_bytes(), Duration::from_millis(500)) {
            if answer != request.as_bytes() {
                report(format_args!(
                    "caller: asked {request:?}, echo answered {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
            w.progress();
        }
        let _ = endpoint.cast("echo", b"cast");
        if !w.pause(Duration::from_millis(3)) {
            return Ok(WorkerExit::Done);
        }
    }
}

fn ledger_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    let [a, b] = &w.board.ledger;
    // Relaxed: only the ledger writes them, and a previous life's stores
    // happened before its death, which the postmaster's reap and our fork
    // order before us.
    let (first, second) = (a.load(Ordering::Relaxed), b.load(Ordering::Relaxed));
    if first != second {
        report(format_args!(
            "ledger: a half-done update ({first} != {second}) survived its writer's death \
             without a reset"
        ));
    }
    w.ready();
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        {
            let _inside = ctx.critical();
            // Relaxed (all three): only the ledger writes them; see the
            // loads above for what orders them before its successor.
            a.fetch_add(1, Ordering::Relaxed);
            if w.aimed(AIM_CRITICAL) && !w.hold(AIM_CRITICAL) {
                b.fetch_add(1, Ordering::Relaxed);
                return Ok(WorkerExit::Done);
            }
            b.fetch_add(1, Ordering::Relaxed);
        }
        w.progress();
        if !w.pause(Duration::from_millis(3)) {
            return Ok(WorkerExit::Done);
        }
    }
}

fn spawner_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let w = Worker::new(ctx)?;
    w.ready();
    let spec = WorkerSpec::new("dyn")
        .entry("dyn")
        .restart(Restart::Never)
        .notify(true);
    loop {
        if let Next::Return(r) = w.commanded() {
            return r;
        }
        // A registration the previous spawner left may hold the name for
        // a moment: a rejection is no failure, but its slot is given back.
        if let Ok(handle) = ctx.register_dynamic(&spec) {
            match handle.wait_stopped(Some(Instant::now() + Duration::from_secs(2))) {
                Ok(()) => w.progress(),
                Err(bgw::WaitError::PostmasterDied) => return Ok(WorkerExit::Done),
                Err(_) => {
                    handle.terminate();
                }
            }
        }
        if !w.pause(Duration::from_millis(20)) {
            return Ok(WorkerExit::Done);
        }
    }
}

fn dyn_main(_ctx: &mut WorkerContext<'_>) -> WorkerResult {
    Ok(WorkerExit::Done)
}

fn plain_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    loop {
        ctx.latch().reset();
        if ctx.should_stop() {
            return Ok(WorkerExit::Done);
        }
        if ctx.wait(None) == Wake::PostmasterDied {
            return Ok(WorkerExit::Done);
        }
    }
}

/// The chaos postmaster; runs in the forked child and never returns.
fn run_postmaster(name: &str, report_fd: i32) -> ! {
    // Relaxed: read by the children this process forks later.
    REPORT_FD.store(report_fd, Ordering::Relaxed);
    let mut pm = Postmaster::builder()
        .segment_name(name)
        .max_workers(shared_config().max_workers)
        .regions(add_regions)
        .cleanup(|segment, departed| {
            // A producer that died mid-write: poison its claim so the
            // consumer skips it, and free its producer role (and the
            // consumer role, if it held that).
            if let Ok(ring) = MpscRing::<Msg>::from_segment(segment, RING) {
                // SAFETY: the postmaster runs clean-up steps only for a
                // process it reaped or proved dead.
                unsafe { ring.recover_owner(departed.pid) };
            }
        })
        .crash_kill_timeout(Duration::from_secs(2))
        .log(std::env::var_os("POSTMASTER_CHAOS_LOG").is_some())
        .build();
    pm.entry("producer", producer_main)
        .entry("consumer", consumer_main)
        .entry("echo", echo_main)
        .entry("caller", caller_main)
        .entry("ledger", ledger_main)
        .entry("spawner", spawner_main)
        .entry("dyn", dyn_main)
        .entry("plain", plain_main);
    let code = (|| -> Result<i32, bgw::PostmasterError> {
        for (index, role) in ROLES.iter().enumerate() {
            pm.register(
                WorkerSpec::new(role.name)
                    .entry(role.entry)
                    .arg(vec![index as u8])
                    .shmem(role.shmem)
                    .on_crash(role.on_crash)
                    .restart(Restart::Permanent),
            )?;
        }
        pm.run()
    })();
    std::process::exit(match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postmaster: {e}");
            1
        }
    })
}

// ---------------------------------------------------------------------------
// The driver.

/// SplitMix64: small, seedable, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a victim is ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blow {
    Signal(Signal),
    Exit(u32),
}

impl std::fmt::Display for Blow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blow::Signal(s) => write!(f, "{s}"),
            Blow::Exit(code) => write!(f, "exit {code}"),
        }
    }
}

/// One iteration's choices, all drawn up front (so the sequence of
/// choices depends on the seed alone).
#[derive(Clone, Copy, Debug)]
struct Plan {
    victim: usize,
    blow: Blow,
    aim: u32,
    delay: Duration,
}

const EXIT_CODES: [u32; 6] = [0, 1, 2, 3, 42, 255];

fn plan(rng: &mut Rng) -> Plan {
    let victim = rng.below(ROLES.len() as u64) as usize;
    let kind = rng.below(4);
    let code = EXIT_CODES[rng.below(EXIT_CODES.len() as u64) as usize];
    let aimed = rng.below(2) == 0;
    let delay = Duration::from_micros(rng.below(20_000));
    let role = &ROLES[victim];
    let blow = match kind {
        0 => Blow::Signal(Signal::SIGKILL),
        1 => Blow::Signal(Signal::SIGSEGV),
        2 => Blow::Signal(Signal::SIGABRT),
        // A worker without shared memory has no board to be told on.
        _ if !role.shmem => Blow::Signal(Signal::SIGKILL),
        _ => Blow::Exit(code),
    };
    Plan {
        victim,
        blow,
        aim: if aimed { role.aim } else { AIM_NONE },
        delay,
    }
}

/// What a kill must do to the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Reset,
    NoReset,
    Either,
}

fn expectation(plan: &Plan) -> Expect {
    let role = &ROLES[plan.victim];
    if !role.shmem {
        return Expect::NoReset;
    }
    // An exit through the entry's return is clean wherever it is asked for
    // (the worker checks for it outside its critical sections).
    let clean_exit = matches!(plan.blow, Blow::Exit(0 | 1));
    match plan.aim {
        AIM_CRITICAL => Expect::Reset,
        AIM_MID_WRITE => Expect::NoReset,
        _ if clean_exit => Expect::NoReset,
        _ if role.on_crash == OnCrash::ResetAll => Expect::Reset,
        // A signal at a random moment may land inside a critical section.
        _ if matches!(plan.blow, Blow::Signal(_)) && matches!(plan.victim, CONSUMER | LEDGER) => {
            Expect::Either
        }
        _ => Expect::NoReset,
    }
}

/// What the driver sees of the running postmaster.
struct View<'s> {
    segment: &'s Segment,
    shared: Shared<'s>,
    board: &'s Board,
    ring: MpscRing<'s, Msg>,
    pm: u32,
}

/// The pids the status table shows for the static workers, if every one
/// of them runs and (for shared-memory workers) has finished setting up.
fn all_running(view: &View<'_>) -> Option<[u32; ROLES.len()]> {
    let rows = bgw::status::read_all(view.shared.status);
    let mut pids = [0u32; ROLES.len()];
    for (i, role) in ROLES.iter().enumerate() {
        let row = rows.iter().find(|r| r.name == role.name)?;
        if row.pid == 0 || !alive(row.pid) {
            return None;
        }
        // Acquire: pairs with the worker's Release store in ready().
        if role.shmem && view.board.roles[i].ready_pid.load(Ordering::Acquire) != row.pid {
            return None;
        }
        pids[i] = row.pid;
    }
    // The echo worker's name is part of its set-up.
    let echo = view.shared.names.whereis("echo")?;
    (echo.pid == pids[ECHO]).then_some(pids)
}

fn alive(pid: u32) -> bool {
    // A zombie (dead, not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits for `what` with a deadline; polls every millisecond or two.
fn wait_for<T>(deadline: Duration, mut what: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(found) = what() {
            return Some(found);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until every worker runs again (the victim under a new pid) and
/// messages, calls and ledger updates flow again.
fn recover(view: &View<'_>, victim: Option<(usize, u32)>) -> Result<[u32; ROLES.len()], String> {
    let pids = wait_for(RECOVERY_DEADLINE, || {
        let pids = all_running(view)?;
        match victim {
            Some((i, pid)) if pids[i] == pid || alive(pid) => None,
            _ => Some(pids),
        }
    })
    .ok_or_else(|| {
        let rows = bgw::status::read_all(view.shared.status);
        let shown: Vec<String> = rows
            .iter()
            .map(|r| format!("{}={}:{}", r.name, r.pid, r.state.name()))
            .collect();
        format!(
            "workers did not all come back within {RECOVERY_DEADLINE:?}: {}",
            shown.join(" ")
        )
    })?;
    // Relaxed: counters compared with themselves.
    let progress = |i: usize| view.board.roles[i].progress.load(Ordering::Relaxed);
    let before = [progress(CONSUMER), progress(CALLER), progress(LEDGER)];
    wait_for(RECOVERY_DEADLINE, || {
        let now = [progress(CONSUMER), progress(CALLER), progress(LEDGER)];
        // A counter that dropped was zeroed by a reset: it moved too.
        now.iter().zip(before).all(|(n, b)| *n != b).then_some(())
    })
    .ok_or("messages, calls or ledger updates did not flow again after the recovery")?;
    Ok(pids)
}

/// Checks that exactly what the running workers hold is taken; `None`
/// when everything adds up.
fn leaks(view: &View<'_>, pids: &[u32; ROLES.len()]) -> Option<String> {
    let rows = bgw::status::read_all(view.shared.status);
    let dynamic: Vec<u32> = rows
        .iter()
        .filter(|r| r.name == "dyn" && r.pid != 0)
        .map(|r| r.pid)
        .collect();
    let extra: Vec<&str> = rows
        .iter()
        .filter(|r| r.name != "dyn" && !ROLES.iter().any(|role| role.name == r.name))
        .map(|r| r.name.as_str())
        .collect();
    if !extra.is_empty() || rows.len() > ROLES.len() + 1 {
        return Some(format!("unexpected workers registered: {extra:?}"));
    }
    // Proc slots: one per shared-memory worker, one for a running `dyn`,
    // and the postmaster's control inbox.
    let config = view.shared.procs.config();
    let mut workers = Vec::new();
    let mut backends = Vec::new();
    for (index, slot) in view.shared.procs.iter() {
        if slot.status().is_free() {
            continue;
        }
        match config.kind_of(index) {
            Some(proclist::Kind::Worker) => workers.push(slot.pid()),
            _ => backends.push(slot.pid()),
        }
    }
    let shmem_pids: Vec<u32> = ROLES
        .iter()
        .zip(pids)
        .filter(|(r, _)| r.shmem)
        .map(|(_, p)| *p)
        .collect();
    let owned = |pid: &u32| shmem_pids.contains(pid) || dynamic.contains(pid);
    if workers.len() > shmem_pids.len() + 1
        || !workers.iter().all(owned)
        || !shmem_pids.iter().all(|p| workers.contains(p))
    {
        return Some(format!(
            "worker proc slots held by {workers:?}; expected {shmem_pids:?} and at most one of \
             dyn {dynamic:?}"
        ));
    }
    if backends != [view.pm] {
        return Some(format!(
            "backend proc slots held by {backends:?}; expected only the postmaster's control \
             inbox ({})",
            view.pm
        ));
    }
    // Names: the control inbox and echo, each held by its live owner.
    let mut names: Vec<(String, u32)> = view
        .shared
        .names
        .list()
        .into_iter()
        .map(|r| (r.name, r.owner.pid))
        .collect();
    names.sort();
    let expected = vec![
        ("echo".to_owned(), pids[ECHO]),
        (bgw::postmaster::CONTROL_NAME.to_owned(), view.pm),
    ];
    if names != expected {
        return Some(format!("names {names:?}; expected {expected:?}"));
    }
    // Registration slots: at most the spawner's one in flight.
    let taken = (0..view.shared.registry.len() as u32)
        .filter_map(|i| view.shared.registry.slot(i))
        .filter(|s| !matches!(s.peek(), Ok((bgw::registry::SlotState::Free, _))))
        .count();
    if taken > 1 {
        return Some(format!(
            "{taken} registration slots taken; expected at most 1"
        ));
    }
    // Ring ends: the two live producers' roles, nobody else's.
    let mut producers: Vec<u32> = (0..shmem::ring::MAX_PRODUCERS as u16)
        .map(|id| view.ring.producer_owner(id))
        .filter(|&owner| owner != 0)
        .collect();
    producers.sort();
    let mut expected: Vec<u32> = pids[..PRODUCERS].to_vec();
    expected.sort();
    if producers != expected {
        return Some(format!(
            "ring producer roles held by {producers:?}; expected {expected:?}"
        ));
    }
    None
}

/// The segment generation and the published reset count, read as a pair.
fn generation_and_resets(view: &View<'_>) -> (u64, u64) {
    loop {
        let generation = view.segment.generation();
        let resets = view.shared.control.counters().resets;
        if view.segment.generation() == generation {
            return (generation, resets);
        }
    }
}

/// Reads whatever the workers reported.
fn drain_reports(fd: &OwnedFd, into: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => into.extend(
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .map(|l| format!("worker report: {l}")),
            ),
        }
    }
}

/// Runs the chaos soak.
pub fn run(iterations: u64, seed: Option<u64>) -> Result<(), String> {
    let seed = seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ u64::from(std::process::id()) << 32
    });
    let name = format!("chaos-{}", std::process::id());
    let layout = add_regions(shared_config().declare(Layout::builder()))
        .build()
        .map_err(|e| e.to_string())?;
    if let Err(AttachError::Stale { .. }) = Segment::attach(&name, &layout) {
        Segment::remove_stale(&name).map_err(|e| e.to_string())?;
    }
    // SIGSEGV and SIGABRT would dump core; thousands of them must not.
    let no_core = nix::libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass and keeps no pointer.
    unsafe { nix::libc::setrlimit(nix::libc::RLIMIT_CORE, &no_core) };
    let (reports, report_tx) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    nix::fcntl::fcntl(
        &reports,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .map_err(|e| format!("fcntl: {e}"))?;
    println!("chaos: seed {seed}, {iterations} iterations, segment {name:?}");
    // SAFETY: this process has one thread (the CLI starts none), so the
    // child is a complete copy; it runs only run_postmaster, which never
    // returns.
    let pm = match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            drop(reports);
            let fd = report_tx.as_raw_fd();
            // Kept open for the postmaster's life: its children write to it.
            std::mem::forget(report_tx);
            run_postmaster(&name, fd)
        }
        ForkResult::Parent { child } => child,
    };
    drop(report_tx);
    let outcome = drive(&name, &layout, pm, &reports, iterations, seed);
    // However the soak ended, the postmaster goes too (a fast shutdown).
    let _ = kill(pm, Signal::SIGINT);
    let status = waitpid(pm, None);
    let mut problems = match outcome {
        Ok(problems) => problems,
        Err(e) => vec![e],
    };
    match status {
        Ok(WaitStatus::Exited(_, 0)) => {}
        other => problems.push(format!("the postmaster ended with {other:?}")),
    }
    if Segment::attach(&name, &layout).is_ok() {
        problems.push(format!("segment {name:?} is still there after shutdown"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("chaos: {p}");
    }
    Err(format!(
        "{} problem(s); replay with `postmaster chaos --iterations {iterations} --seed {seed}`",
        problems.len()
    ))
}

/// The soak itself; returns the violations found (empty: none).
fn drive(
    name: &str,
    layout: &Layout,
    pm: Pid,
    reports: &OwnedFd,
    iterations: u64,
    seed: u64,
) -> Result<Vec<String>, String> {
    let start = Instant::now();
    let segment = wait_for(Duration::from_secs(10), || {
        match Segment::attach(name, layout) {
            Ok(segment) => Some(Ok(segment)),
            Err(AttachError::NotFound { .. } | AttachError::NotReady { .. }) => {
                if waitpid(pm, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
                    != Ok(WaitStatus::StillAlive)
                {
                    return Some(Err("the postmaster exited at start".to_owned()));
                }
                None
            }
            Err(e) => Some(Err(format!("attaching to the chaos segment: {e}"))),
        }
    })
    .ok_or("the chaos segment did not appear")??;
    let view = View {
        segment: &segment,
        shared: Shared::attach(&segment, &shared_config()).map_err(|e| e.to_string())?,
        board: segment.region::<Board>(BOARD).map_err(|e| e.to_string())?,
        ring: MpscRing::from_segment(&segment, RING).map_err(|e| e.to_string())?,
        pm: pm.as_raw() as u32,
    };
    let mut pids = recover(&view, None)?;
    let (generation0, resets0) = generation_and_resets(&view);
    let contained0 = view.shared.control.counters().containments;
    let mut rng = Rng(seed);
    let mut violations: Vec<String> = Vec::new();
    let mut leaked = 0u64;
    let mut kills = 0u64;
    let mut done = 0u64;
    let terminal = std::io::stdout().is_terminal();
    let mut last_line = Instant::now();
    let every = (iterations / 10).max(1);
    for i in 0..iterations {
        let plan = plan(&mut rng);
        let role = &ROLES[plan.victim];
        let pid = pids[plan.victim];
        let (_, resets_before) = generation_and_resets(&view);
        let me = &view.board.roles[plan.victim];
        let what = format!(
            "iteration {i}: {} to {} (pid {pid}){}",
            plan.blow,
            role.name,
            match plan.aim {
                AIM_CRITICAL => " inside a critical section",
                AIM_MID_WRITE => " mid ring-write",
                _ => "",
            }
        );
        if plan.aim != AIM_NONE {
            // The aim first: a worker that sees the exit code sees the aim
            // (see Worker::commanded).
            me.aim.store(plan.aim, Ordering::Release);
            if let Blow::Exit(code) = plan.blow {
                // Release: pairs with the worker's Acquire loads.
                me.exit_code.store(code + 1, Ordering::Release);
            }
            let reached = wait_for(RECOVERY_DEADLINE, || {
                // Acquire: pairs with the worker's Release store in hold().
                (me.at.load(Ordering::Acquire) == plan.aim || !alive(pid)).then_some(())
            });
            if reached.is_none() {
                violations.push(format!("{what}: the worker never reached its spot"));
                break;
            }
        } else {
            std::thread::sleep(plan.delay);
            if let Blow::Exit(code) = plan.blow {
                // Release: pairs with the worker's Acquire load in
                // commanded() / hold().
                me.exit_code.store(code + 1, Ordering::Release);
            }
        }
        if let Blow::Signal(signal) = plan.blow {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            if signal == Signal::SIGSEGV {
                // Rust's runtime catches SIGSEGV (to report stack
                // overflows); for a fault it does not recognise it puts the
                // default action back and returns, so a real fault would
                // strike again and kill. A sent one does not strike again:
                // send it once more, as the faulting instruction would.
                let _ = wait_for(Duration::from_millis(20), || (!alive(pid)).then_some(()));
                let _ = kill(Pid::from_raw(pid as i32), signal);
            }
        }
        kills += 1;
        match recover(&view, Some((plan.victim, pid))) {
            Ok(now) => pids = now,
            Err(e) => {
                violations.push(format!("{what}: {e}"));
                break;
            }
        }
        // Leaks: retried while transient (a `dyn` not yet reaped, a
        // half-filled registration within its grace).
        let leak = wait_for(LEAK_DEADLINE, || {
            leaks(&view, &pids).is_none().then_some(())
        });
        if leak.is_none() {
            leaked += 1;
            violations.push(format!(
                "{what}: leak: {}",
                leaks(&view, &pids).unwrap_or_default()
            ));
        }
        let (generation, resets) = generation_and_resets(&view);
        if generation - generation0 != resets - resets0 {
            violations.push(format!(
                "{what}: the generation moved by {} but the postmaster reset {} time(s)",
                generation - generation0,
                resets - resets0
            ));
        }
        let reset = resets - resets_before;
        match (expectation(&plan), reset) {
            (Expect::Reset, 1) | (Expect::NoReset, 0) | (Expect::Either, 0 | 1) => {}
            (expected, n) => violations.push(format!(
                "{what}: expected {expected:?}, the postmaster reset {n} time(s)"
            )),
        }
        drain_reports(reports, &mut violations);
        done = i + 1;
        if !violations.is_empty() {
            break;
        }
        let counters = view.shared.control.counters();
        let line = format!(
            "chaos: {done}/{iterations} resets={} contained={} {:.0}s",
            counters.resets - resets0,
            counters.containments - contained0,
            start.elapsed().as_secs_f64()
        );
        if terminal {
            let width = 30;
            let filled = (done * width / iterations.max(1)) as usize;
            print!(
                "\r[{}{}] {line}",
                "#".repeat(filled),
                ".".repeat(width as usize - filled)
            );
            let _ = std::io::stdout().flush();
        } else if done.is_multiple_of(every) || last_line.elapsed() >= Duration::from_secs(10) {
            println!("{line}");
            last_line = Instant::now();
        }
    }
    if terminal {
        println!();
    }
    drain_reports(reports, &mut violations);
    let counters = view.shared.control.counters();
    println!(
        "iterations={done} kills={kills} resets={} contained={} leaks={leaked} violations={}",
        counters.resets - resets0,
        counters.containments - contained0,
        violations.len() - leaked as usize
    );
    println!("chaos: {:.1}s", start.elapsed().as_secs_f64());
    Ok(violations)
}
