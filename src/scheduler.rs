//! The demo's `scheduler` worker: pg_cron and pgAgent's job, as a
//! postmaster worker. Cron expressions with seconds (parsed by `croner`),
//! one dynamic worker per due run, a per-job policy for a run that comes
//! due while the last is still going (skip it, or queue one), retries with
//! a doubling delay, and a run history in shared memory.
//!
//! # Where things live
//!
//! | what                          | where                                   | written by       |
//! |-------------------------------|-----------------------------------------|------------------|
//! | jobs (name, cron, policy, counters) | region [`JOBS_REGION`], [`MAX_JOBS`] entries | the scheduler    |
//! | run history, newest last      | region [`HISTORY_REGION`], a ring of [`HISTORY`] runs | the scheduler    |
//! | a run's own result            | a cast `done RUN CODE MESSAGE` to the scheduler | the job worker   |
//!
//! Every entry is a [`SeqWords`] sequence lock (the same protocol as the
//! postmaster's status table, with its loom model), written only by the
//! scheduler and read by anyone (`postmaster jobs list`). The job table is
//! the scheduler's memory: a scheduler that crashes and is restarted
//! (contained) finds its jobs there; a segment reset empties it, and the
//! scheduler starts again from the demo's own job.
//!
//! A job that dies without sending its result is recorded as `crashed`:
//! the scheduler learns of the end from its dynamic worker handle, after
//! draining its inbox (a result cast, sent before the job exits, is always
//! in the inbox by the time the handle says `stopped`).
//!
//! # Commands (calls to the name `scheduler`)
//!
//! `add\tNAME\tCRON\tOVERLAP\tRETRIES` (OVERLAP is `skip` or `queue`) and
//! `remove\tNAME`; the answer is `ok` or `error: ...`.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bgw::status::{SeqWords, cut_at_char, get_str, put_str};
use bgw::{Endpoint, Restart, WorkerContext, WorkerExit, WorkerHandle, WorkerResult, WorkerSpec};
use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use shmem::LayoutBuilder;
use shmem::sync::{AtomicU64, Ordering};

/// Region of the job table.
pub const JOBS_REGION: &str = "sched.jobs";
/// Region of the run history.
pub const HISTORY_REGION: &str = "sched.history";
/// Region of the history's head counter.
pub const HISTORY_HEAD_REGION: &str = "sched.history.head";
/// Jobs at most.
pub const MAX_JOBS: usize = 16;
/// Runs kept in the history.
pub const HISTORY: usize = 64;
/// The scheduler's registered name.
pub const NAME: &str = "scheduler";
/// The entry point of a job run.
pub const JOB_ENTRY: &str = "job";
/// Bytes of a job name.
pub const MAX_JOB_NAME: usize = 24;
/// Bytes of a cron expression.
const MAX_CRON: usize = 64;
/// Bytes of a run's message.
const MAX_MESSAGE: usize = 48;
/// The first retry's delay; each next one doubles, up to [`MAX_RETRY_DELAY`].
const RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How often running jobs are looked at when nothing else wakes the
/// scheduler (their handles' status is also pushed through its latch).
const POLL: Duration = Duration::from_millis(250);

const JOB_WORDS: usize = 1 + 4 + 8 + 4;
const RUN_WORDS: usize = 2 + 4 + 3 + 6;

/// One job-table entry.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct JobEntry(SeqWords<JOB_WORDS>);

/// One run-history entry.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct RunEntry(SeqWords<RUN_WORDS>);

/// How many runs were ever recorded (the history holds the last
/// [`HISTORY`] of them).
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct HistoryHead(AtomicU64);

// SAFETY: repr(C) atomics only (here and in the two below): any bytes are
// valid values, no pointers, every mutation is atomic.
unsafe impl shmem::ShmSafe for JobEntry {}
// SAFETY: as above.
unsafe impl shmem::ShmSafe for RunEntry {}
// SAFETY: as above.
unsafe impl shmem::ShmSafe for HistoryHead {}

/// Adds the scheduler's regions to a layout.
pub fn declare(builder: LayoutBuilder) -> LayoutBuilder {
    builder
        .array::<JobEntry>(JOBS_REGION, MAX_JOBS)
        .array::<RunEntry>(HISTORY_REGION, HISTORY)
        .region::<HistoryHead>(HISTORY_HEAD_REGION)
}

/// What to do when a run comes due while the previous one still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// Skip it (recorded as `skipped`).
    Skip,
    /// Run it as soon as the previous one ends (one at most is queued).
    Queue,
}

impl Overlap {
    /// Its name in commands and tables.
    pub fn name(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
        }
    }
}

/// A job, as the table holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Its name.
    pub name: String,
    /// Its cron expression (seconds optional).
    pub cron: String,
    /// Its overlap policy.
    pub overlap: Overlap,
    /// Retries after a failed run.
    pub retries: u8,
    /// Runs started.
    pub runs: u64,
    /// Runs that failed (after their last retry).
    pub failures: u64,
    /// Runs skipped for overlap.
    pub skipped: u64,
    /// Next due time, Unix milliseconds (0: none).
    pub next_due_ms: u64,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Running,
    /// Exit 0.
    Succeeded,
    /// A non-zero result reported by the job.
    Failed,
    /// Ended without reporting (killed, crashed).
    Crashed,
    /// Not started: the previous run was still going.
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Running,
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Crashed,
        Outcome::Skipped,
    ];

    /// Its name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Running => "running",
            Outcome::Succeeded => "ok",
            Outcome::Failed => "failed",
            Outcome::Crashed => "crashed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// A run, as the history holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    /// Its number (unique per scheduler tenancy of the segment).
    pub id: u64,
    /// The job.
    pub job: String,
    /// 1 for the first attempt, 2 for the first retry, ...
    pub attempt: u32,
    /// How it ended.
    pub outcome: Outcome,
    /// Start, Unix milliseconds.
    pub started_ms: u64,
    /// End, Unix milliseconds (0 while running).
    pub ended_ms: u64,
    /// The exit code the job reported, if it reported one.
    pub exit: Option<i32>,
    /// Its message.
    pub message: String,
}

impl Job {
    fn encode(&self) -> [u64; JOB_WORDS] {
        let mut w = [0u64; JOB_WORDS];
        w[0] = 1 | (self.overlap as u64) << 8 | u64::from(self.retries) << 16;
        put_str(&mut w[1..4], &self.name);
        put_str(&mut w[4..12], &self.cron);
        w[12] = self.runs;
        w[13] = self.failures;
        w[14] = self.skipped;
        w[15] = self.next_due_ms;
        w
    }

    fn decode(w: &[u64; JOB_WORDS]) -> Option<Job> {
        if w[0] & 0xff != 1 {
            return None;
        }
        Some(Job {
            overlap: match (w[0] >> 8) & 0xff {
                0 => Overlap::Skip,
                1 => Overlap::Queue,
                _ => return None,
            },
            retries: (w[0] >> 16) as u8,
            name: get_str(&w[1..4])?,
            cron: get_str(&w[4..12])?,
            runs: w[12],
            failures: w[13],
            skipped: w[14],
            next_due_ms: w[15],
        })
    }
}

impl Run {
    fn encode(&self) -> [u64; RUN_WORDS] {
        let mut w = [0u64; RUN_WORDS];
        w[1] = self.id;
        put_str(&mut w[2..6], &self.job);
        let outcome = Outcome::ALL
            .iter()
            .position(|o| *o == self.outcome)
            .unwrap_or(0) as u64;
        let exit = self.exit.map_or(0, |c| 1 << 32 | u64::from(c as u32));
        w[6] = u64::from(self.attempt) | outcome << 32;
        w[7] = self.started_ms;
        w[8] = self.ended_ms;
        put_str(&mut w[9..15], &self.message);
        // Marker byte, then the exit: a presence bit above 32 code bits.
        w[0] = 1 | exit << 8;
        w
    }

    fn decode(w: &[u64; RUN_WORDS]) -> Option<Run> {
        if w[0] & 0xff != 1 {
            return None;
        }
        let exit = w[0] >> 8;
        Some(Run {
            id: w[1],
            job: get_str(&w[2..6])?,
            attempt: w[6] as u32,
            outcome: *Outcome::ALL.get(((w[6] >> 32) & 0xff) as usize)?,
            started_ms: w[7],
            ended_ms: w[8],
            exit: (exit >> 32 == 1).then_some(exit as u32 as i32),
            message: get_str(&w[9..15])?,
        })
    }
}

/// The scheduler's regions in a segment.
#[derive(Clone, Copy, Debug)]
pub struct Tables<'a> {
    jobs: &'a [JobEntry],
    history: &'a [RunEntry],
    head: &'a HistoryHead,
}

impl<'a> Tables<'a> {
    /// The regions of `segment`.
    pub fn attach(segment: &'a shmem::Segment) -> Result<Self, shmem::RegionError> {
        Ok(Tables {
            jobs: segment.array(JOBS_REGION)?,
            history: segment.array(HISTORY_REGION)?,
            head: segment.region(HISTORY_HEAD_REGION)?,
        })
    }

    /// The jobs (entries being written at this instant are left out).
    pub fn jobs(&self) -> Vec<Job> {
        self.jobs
            .iter()
            .filter_map(|e| e.0.read().ok())
            .filter_map(|w| Job::decode(&w))
            .collect()
    }

    /// The runs kept, oldest first.
    pub fn history(&self) -> Vec<Run> {
        // Relaxed: the entries themselves are read through their locks.
        let head = self.head.0.load(Ordering::Relaxed);
        let first = head.saturating_sub(HISTORY as u64);
        (first..head)
            .filter_map(|n| self.history[(n % HISTORY as u64) as usize].0.read().ok())
            .filter_map(|w| Run::decode(&w))
            .collect()
    }

    fn write_job(&self, index: usize, job: Option<&Job>) {
        let words = job.map_or([0; JOB_WORDS], Job::encode);
        self.jobs[index].0.write(&words);
    }

    /// Appends a run; returns its position for later updates.
    fn append_run(&self, run: &Run) -> u64 {
        // Relaxed: one writer (the scheduler); readers go through the
        // entries' locks and tolerate a head one ahead of its entry.
        let n = self.head.0.load(Ordering::Relaxed);
        self.history[(n % HISTORY as u64) as usize]
            .0
            .write(&run.encode());
        // Relaxed: see above.
        self.head.0.store(n + 1, Ordering::Relaxed);
        n
    }

    fn update_run(&self, position: u64, run: &Run) {
        // Relaxed: see append_run.
        let head = self.head.0.load(Ordering::Relaxed);
        if position + HISTORY as u64 >= head {
            self.history[(position % HISTORY as u64) as usize]
                .0
                .write(&run.encode());
        }
    }
}

/// Parses a cron expression (5 fields, or 6 with seconds first).
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    if expr.len() > MAX_CRON - 1 {
        return Err(format!(
            "a cron expression has at most {} bytes",
            MAX_CRON - 1
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("bad cron expression {expr:?}: {e}"))
}

/// Checks a job name: 1 to [`MAX_JOB_NAME`] bytes of `[A-Za-z0-9_-]`.
pub fn check_job_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > MAX_JOB_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "a job name is 1 to {MAX_JOB_NAME} letters, digits, '_' or '-', not {name:?}"
        ));
    }
    Ok(())
}

fn unix_ms(t: DateTime<Utc>) -> u64 {
    u64::try_from(t.timestamp_millis()).unwrap_or(0)
}

/// A job the scheduler runs, with its private state.
struct Live {
    job: Job,
    cron: Cron,
    next: Option<DateTime<Utc>>,
    running: Option<Going>,
    queued: bool,
    /// A retry due at this instant, with its attempt number.
    retry: Option<(Instant, u32)>,
}

/// A run in progress.
struct Going {
    handle: WorkerHandle<'static>,
    run: Run,
    position: u64,
    /// The job's reported result, once its cast arrived.
    result: Option<(i32, String)>,
}

/// The scheduler's entry point; `seed` is the job it starts with when the
/// table is empty.
pub fn scheduler_main(
    ctx: &mut WorkerContext<'_>,
    seed: &[(&str, &str, Overlap, u8)],
) -> WorkerResult {
    let segment = ctx.segment().ok_or("the scheduler needs shared memory")?;
    let tables = Tables::attach(segment)?;
    let mut endpoint = ctx.endpoint()?;
    endpoint.register_name(NAME)?;
    let mut jobs: Vec<Live> = Vec::new();
    let found = tables.jobs();
    let initial: Vec<Job> = if found.is_empty() {
        seed.iter()
            .map(|(name, cron, overlap, retries)| Job {
                name: (*name).to_owned(),
                cron: (*cron).to_owned(),
                overlap: *overlap,
                retries: *retries,
                runs: 0,
                failures: 0,
                skipped: 0,
                next_due_ms: 0,
            })
            .collect()
    } else {
        found
    };
    for job in initial {
        if let Ok(cron) = parse_cron(&job.cron) {
            jobs.push(Live {
                job,
                cron,
                next: None,
                running: None,
                queued: false,
                retry: None,
            });
        }
    }
    let mut next_run_id = tables.history().last().map_or(1, |r| r.id + 1);
    let mut ids: HashMap<u64, usize> = HashMap::new();
    for live in &mut jobs {
        live.next = live.cron.find_next_occurrence(&Utc::now(), false).ok();
    }
    publish(&tables, &jobs);
    ctx.ready();

    while !ctx.should_stop() {
        // Results first: a job's cast is in the inbox before its handle
        // says it stopped.
        while let Some(message) = endpoint.try_recv()? {
            handle_message(&mut endpoint, &tables, &mut jobs, &mut ids, &message);
        }
        let now = Instant::now();
        let wall = Utc::now();
        let mut changed = false;
        #[allow(clippy::needless_range_loop)] // start_run needs `jobs[i]` and `i`
        for i in 0..jobs.len() {
            changed |= check_run(&tables, &mut jobs[i], now, &mut ids);
            let live = &mut jobs[i];
            let due = live.next.is_some_and(|t| t <= wall);
            if due {
                live.next = live.cron.find_next_occurrence(&wall, false).ok();
                changed = true;
                if live.running.is_some() {
                    match live.job.overlap {
                        Overlap::Skip => {
                            live.job.skipped += 1;
                            let run = Run {
                                id: next_run_id,
                                job: live.job.name.clone(),
                                attempt: 1,
                                outcome: Outcome::Skipped,
                                started_ms: unix_ms(wall),
                                ended_ms: unix_ms(wall),
                                exit: None,
                                message: "the previous run was still going".to_owned(),
                            };
                            next_run_id += 1;
                            tables.append_run(&run);
                        }
                        Overlap::Queue => live.queued = true,
                    }
                    continue;
                }
                start_run(ctx, &tables, &mut jobs[i], 1, &mut next_run_id, &mut ids, i);
                continue;
            }
            let live = &mut jobs[i];
            if live.running.is_none() {
                if let Some((at, attempt)) = live.retry
                    && at <= now
                {
                    live.retry = None;
                    start_run(
                        ctx,
                        &tables,
                        &mut jobs[i],
                        attempt,
                        &mut next_run_id,
                        &mut ids,
                        i,
                    );
                    changed = true;
                } else if live.queued {
                    live.queued = false;
                    start_run(ctx, &tables, &mut jobs[i], 1, &mut next_run_id, &mut ids, i);
                    changed = true;
                }
            }
        }
        if changed {
            publish(&tables, &jobs);
        }
        let mut deadline = Instant::now() + Duration::from_secs(60);
        for live in &jobs {
            if let Some(next) = live.next {
                let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
                deadline = deadline.min(Instant::now() + wait);
            }
            if let Some((at, _)) = live.retry {
                deadline = deadline.min(at);
            }
            if live.running.is_some() {
                deadline = deadline.min(Instant::now() + POLL);
            }
        }
        match endpoint.recv(Some(deadline)) {
            Ok(Some(message)) => {
                handle_message(&mut endpoint, &tables, &mut jobs, &mut ids, &message);
                publish(&tables, &jobs);
            }
            Ok(None) => {}
            Err(bgw::mailbox::RecvError::PostmasterDied) => return Ok(WorkerExit::Restart),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(WorkerExit::Done)
}

fn publish(tables: &Tables<'_>, jobs: &[Live]) {
    for i in 0..MAX_JOBS {
        let job = jobs.get(i).map(|l| {
            let mut job = l.job.clone();
            job.next_due_ms = l.next.map_or(0, unix_ms);
            job
        });
        tables.write_job(i, job.as_ref());
    }
}

#[allow(clippy::too_many_arguments)]
fn start_run(
    ctx: &WorkerContext<'_>,
    tables: &Tables<'_>,
    live: &mut Live,
    attempt: u32,
    next_run_id: &mut u64,
    ids: &mut HashMap<u64, usize>,
    index: usize,
) {
    let id = *next_run_id;
    *next_run_id += 1;
    let mut run = Run {
        id,
        job: live.job.name.clone(),
        attempt,
        outcome: Outcome::Running,
        started_ms: unix_ms(Utc::now()),
        ended_ms: 0,
        exit: None,
        message: String::new(),
    };
    live.job.runs += 1;
    let spec = WorkerSpec::new(format!("job.{}.{id}", live.job.name))
        .entry(JOB_ENTRY)
        .arg(format!("{id} {} {attempt}", live.job.name))
        .restart(Restart::Never)
        .notify(true);
    match ctx.register_dynamic(&spec) {
        Ok(handle) => {
            let position = tables.append_run(&run);
            ids.insert(id, index);
            live.running = Some(Going {
                handle,
                run,
                position,
                result: None,
            });
        }
        Err(e) => {
            run.outcome = Outcome::Failed;
            run.ended_ms = run.started_ms;
            run.message = fit_message(&format!("not started: {e}"));
            tables.append_run(&run);
            schedule_retry(live, attempt, Instant::now());
        }
    }
}

/// `message` cut to what a run's entry holds, between characters (a job's
/// message is its own text, in any script).
fn fit_message(message: &str) -> String {
    cut_at_char(message, MAX_MESSAGE - 1).to_owned()
}

fn schedule_retry(live: &mut Live, attempt: u32, now: Instant) {
    if attempt <= u32::from(live.job.retries) {
        let delay = RETRY_DELAY
            .saturating_mul(1 << (attempt - 1).min(16))
            .min(MAX_RETRY_DELAY);
        live.retry = Some((now + delay, attempt + 1));
    } else {
        live.job.failures += 1;
    }
}

/// Looks at a running job's handle; records the end of a run that ended.
fn check_run(
    tables: &Tables<'_>,
    live: &mut Live,
    now: Instant,
    ids: &mut HashMap<u64, usize>,
) -> bool {
    let Some(going) = &live.running else {
        return false;
    };
    match going.handle.status() {
        bgw::registry::HandleStatus::Stopped | bgw::registry::HandleStatus::Rejected(_) => {}
        _ => return false,
    }
    let mut going = live.running.take().expect("checked");
    ids.remove(&going.run.id);
    let (outcome, exit, message) = match going.result.take() {
        Some((0, message)) => (Outcome::Succeeded, Some(0), message),
        Some((code, message)) => (Outcome::Failed, Some(code), message),
        None => (
            Outcome::Crashed,
            None,
            "ended without reporting (killed or crashed)".to_owned(),
        ),
    };
    going.run.outcome = outcome;
    going.run.exit = exit;
    going.run.ended_ms = unix_ms(Utc::now());
    going.run.message = fit_message(&message);
    tables.update_run(going.position, &going.run);
    if outcome != Outcome::Succeeded {
        schedule_retry(live, going.run.attempt, now);
    }
    true
}

fn handle_message(
    endpoint: &mut Endpoint<'_>,
    tables: &Tables<'_>,
    jobs: &mut Vec<Live>,
    ids: &mut HashMap<u64, usize>,
    message: &bgw::mailbox::Message,
) {
    let text = String::from_utf8_lossy(message.payload()).into_owned();
    let answer = if let Some(rest) = text.strip_prefix("done ") {
        // A job's result: `done RUN CODE MESSAGE`.
        let mut parts = rest.splitn(3, ' ');
        let run = parts.next().and_then(|s| s.parse::<u64>().ok());
        let code = parts.next().and_then(|s| s.parse::<i32>().ok());
        if let (Some(run), Some(code)) = (run, code)
            && let Some(&i) = ids.get(&run)
            && let Some(going) = jobs.get_mut(i).and_then(|l| l.running.as_mut())
            && going.run.id == run
        {
            going.result = Some((code, parts.next().unwrap_or("").to_owned()));
        }
        None
    } else {
        let answer = command(jobs, &text, Some(tables));
        // Positions in `jobs` may have moved.
        ids.clear();
        for (i, live) in jobs.iter().enumerate() {
            if let Some(going) = &live.running {
                ids.insert(going.run.id, i);
            }
        }
        Some(answer)
    };
    if let (Some(answer), Some(reply_to)) = (answer, message.reply_to()) {
        let _ = endpoint.reply(reply_to, answer.as_bytes());
    }
}

fn command(jobs: &mut Vec<Live>, text: &str, tables: Option<&Tables<'_>>) -> String {
    let fields: Vec<&str> = text.split('\t').collect();
    match fields.as_slice() {
        ["add", name, cron, overlap, retries] => {
            if let Err(e) = check_job_name(name) {
                return format!("error: {e}");
            }
            if jobs.iter().any(|l| l.job.name == *name) {
                return format!("error: a job named {name:?} exists; remove it first");
            }
            if jobs.len() >= MAX_JOBS {
                return format!("error: the table holds {MAX_JOBS} jobs; remove one first");
            }
            let parsed = match parse_cron(cron) {
                Ok(c) => c,
                Err(e) => return format!("error: {e}"),
            };
            let overlap = match overlap.parse::<Overlap>() {
                Ok(o) => o,
                Err(e) => return format!("error: {e}"),
            };
            let Ok(retries) = retries.parse::<u8>() else {
                return format!("error: retries is a number from 0 to 255, not {retries:?}");
            };
            let next = parsed.find_next_occurrence(&Utc::now(), false).ok();
            jobs.push(Live {
                job: Job {
                    name: (*name).to_owned(),
                    cron: (*cron).to_owned(),
                    overlap,
                    retries,
                    runs: 0,
                    failures: 0,
                    skipped: 0,
                    next_due_ms: 0,
                },
                cron: parsed,
                next,
                running: None,
                queued: false,
                retry: None,
            });
            "ok".to_owned()
        }
        ["remove", name] => {
            let before = jobs.len();
            // A running run finishes on its own, untracked: say so in the
            // history rather than leave it 'running' for ever.
            for live in jobs.iter_mut().filter(|l| l.job.name == *name) {
                if let (Some(mut going), Some(tables)) = (live.running.take(), tables) {
                    going.run.outcome = Outcome::Crashed;
                    going.run.ended_ms = unix_ms(Utc::now());
                    going.run.message = "job removed while this run went on".to_owned();
                    tables.update_run(going.position, &going.run);
                }
            }
            jobs.retain(|l| l.job.name != *name);
            if jobs.len() == before {
                let known: Vec<&str> = jobs.iter().map(|l| l.job.name.as_str()).collect();
                format!("error: no job named {name:?}; jobs: {}", known.join(" "))
            } else {
                "ok".to_owned()
            }
        }
        _ => "error: commands are add NAME CRON OVERLAP RETRIES and remove NAME".to_owned(),
    }
}

/// The entry point of one run: `arg` is `RUN JOB ATTEMPT`. The demo's job
/// works for a moment and fails now and then (to show retries), then casts
/// its result to the scheduler.
pub fn job_main(ctx: &mut WorkerContext<'_>) -> WorkerResult {
    let arg = String::from_utf8_lossy(ctx.arg()).into_owned();
    let mut parts = arg.split(' ');
    let run: u64 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad job argument")?;
    let job = parts.next().unwrap_or("?").to_owned();
    let attempt: u32 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until && !ctx.should_stop() {
        ctx.latch().reset();
        if ctx.wait(Some(until)) == latch::Wake::PostmasterDied {
            return Ok(WorkerExit::Done);
        }
    }
    // One first attempt in four fails; retries succeed.
    let failed = attempt == 1 && run % 4 == 3;
    let (code, message) = if failed {
        (1, format!("{job}: simulated failure"))
    } else {
        (0, format!("{job}: done in attempt {attempt}"))
    };
    let endpoint = ctx.endpoint()?;
    endpoint.cast(NAME, format!("done {run} {code} {message}").as_bytes())?;
    if failed {
        Err(message.into())
    } else {
        Ok(WorkerExit::Done)
    }
}

/// Sends a command to the scheduler from any attached process.
pub fn call(endpoint: &mut Endpoint<'_>, command: &str) -> Result<String, String> {
    let answer = endpoint
        .call(NAME, command.as_bytes(), Duration::from_secs(5))
        .map_err(|e| format!("the scheduler did not answer: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    match answer.strip_prefix("error: ") {
        Some(e) => Err(e.to_owned()),
        None => Ok(answer),
    }
}

impl FromStr for Overlap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip" => Ok(Overlap::Skip),
            "queue" => Ok(Overlap::Queue),
            _ => Err(format!("overlap is skip or queue, not {s:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_and_runs_survive_their_encoding() {
        let job = Job {
            name: "nightly-vacuum".into(),
            cron: "*/5 * * * * *".into(),
            overlap: Overlap::Queue,
            retries: 3,
            runs: 7,
            failures: 2,
            skipped: 1,
            next_due_ms: 1_700_000_000_123,
        };
        assert_eq!(Job::decode(&job.encode()), Some(job));
        for (exit, outcome) in [
            (Some(-3), Outcome::Failed),
            (None, Outcome::Crashed),
            (Some(0), Outcome::Succeeded),
        ] {
            let run = Run {
                id: 42,
                job: "j".into(),
                attempt: 2,
                outcome,
                started_ms: 5,
                ended_ms: 9,
                exit,
                message: "a message".into(),
            };
            assert_eq!(Run::decode(&run.encode()), Some(run));
        }
        assert_eq!(
            Job::decode(&[0; JOB_WORDS]),
            None,
            "an empty entry is no job"
        );
    }

    /// A job's message in any script is cut between characters (a cut
    /// inside one panicked the scheduler) and reads back as it was cut.
    #[test]
    fn a_long_message_in_any_script_fits_its_run_entry() {
        for text in ["ü".repeat(40), "x".repeat(60), "日本".repeat(20)] {
            let message = fit_message(&text);
            assert!(message.len() < MAX_MESSAGE && text.starts_with(&message));
            let run = Run {
                id: 1,
                job: "j".into(),
                attempt: 1,
                outcome: Outcome::Failed,
                started_ms: 5,
                ended_ms: 9,
                exit: Some(1),
                message,
            };
            assert_eq!(Run::decode(&run.encode()), Some(run));
        }
    }

    #[test]
    fn cron_expressions_with_and_without_seconds_parse_and_bad_ones_do_not() {
        let every3 = parse_cron("*/3 * * * * *").expect("seconds");
        let t = DateTime::parse_from_rfc3339("2026-11-21T10:00:01Z")
            .expect("time")
            .with_timezone(&Utc);
        let next = every3.find_next_occurrence(&t, false).expect("next");
        assert_eq!(next.to_rfc3339(), "2026-11-21T10:00:03+00:00");
        assert!(parse_cron("0 3 * * *").is_ok(), "five fields");
        assert!(parse_cron("61 * * * * *").is_err());
        assert!(parse_cron("every day").is_err());
        assert!(check_job_name("ok_name-1").is_ok());
        assert!(check_job_name("no spaces").is_err());
        assert!(check_job_name("").is_err());
    }

    #[test]
    fn commands_add_and_remove_jobs_with_typed_errors() {
        let mut jobs = Vec::new();
        assert_eq!(
            command(&mut jobs, "add\tj1\t*/2 * * * * *\tskip\t1", None),
            "ok"
        );
        assert!(command(&mut jobs, "add\tj1\t*/2 * * * * *\tskip\t1", None).contains("exists"));
        assert!(command(&mut jobs, "add\tj2\tnonsense\tskip\t1", None).contains("bad cron"));
        assert!(
            command(&mut jobs, "add\tj2\t* * * * *\tsometimes\t1", None).contains("skip or queue")
        );
        assert!(command(&mut jobs, "remove\tnope", None).contains("jobs: j1"));
        assert_eq!(command(&mut jobs, "remove\tj1", None), "ok");
        assert!(jobs.is_empty());
    }
}
