//! The `postmaster` command: run the demo, watch and steer a running
//! postmaster, soak it with crashes, and measure.

mod bench;
mod chaos;
mod control;
mod demo;
mod scheduler;
mod status;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postmaster",
    version,
    about = "A supervising process for multi-process servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a postmaster with sample workers and a live status table; stage a
    /// contained crash and a crash that resets shared memory.
    Demo {
        /// Name of the shared-memory segment (/dev/shm/postmaster.NAME).
        #[arg(long, default_value = "demo")]
        name: String,
        /// How long to run, e.g. 5s, 500ms, 1m.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Stage no crashes: run until the duration ends or Ctrl-C, to be
        /// driven by hand from another shell.
        #[arg(long)]
        calm: bool,
    },
    /// Show the workers of a running demo postmaster.
    Status {
        /// Name of its segment.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Print JSON (stable; see the docs of `postmaster status`).
        #[arg(long)]
        json: bool,
        /// Print again every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Start a stopped worker now (or skip its pending restart delay).
    Start {
        /// The worker.
        worker: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Stop a worker and keep it stopped, whatever its restart policy.
    Stop {
        /// The worker.
        worker: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Stop a worker and start it again at once.
    Restart {
        /// The worker.
        worker: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Call a named worker and print its answer.
    Call {
        /// The name the worker registered.
        worker: String,
        /// The request (text).
        message: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Cast a message to a named worker (no answer).
    Cast {
        /// The name the worker registered.
        worker: String,
        /// The message (text).
        message: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Send a signal to a worker (crash injection); SIGKILL by default.
    Kill {
        /// The worker.
        worker: String,
        /// KILL, TERM, SEGV, ABRT, ... or a number.
        #[arg(long, default_value = "KILL")]
        signal: String,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// The scheduler's jobs: list them with their run history, add, remove.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        /// Name of the postmaster's segment.
        #[arg(long, default_value = "demo", global = true)]
        name: String,
    },
    /// Remove a segment left by a postmaster that died.
    Cleanup {
        /// Name of the segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Run a postmaster with a mix of workers and kill them at random,
    /// checking after each recovery that nothing leaked or was lost.
    Chaos {
        /// How many kills.
        #[arg(long, default_value_t = 200)]
        iterations: u64,
        /// Seed of the random choices (printed, so a failure can be replayed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure and print one `name value unit` line per figure.
    Bench {
        /// Short runs: the whole suite in well under a minute.
        #[arg(long)]
        quick: bool,
        /// Print one JSON document of every figure and ratio at the end
        /// (stable; see the docs of `postmaster bench`).
        #[arg(long)]
        json: bool,
        /// Run only the groups whose name contains this (segment, latch, ring,
        /// slots, bgw, mailbox, pingpong; iceoryx2 with `--features peers`).
        filter: Option<String>,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs and their run history.
    List,
    /// Add a job.
    Add {
        /// Its name: letters, digits, '_' or '-'.
        job: String,
        /// A cron expression, seconds first if six fields: "*/5 * * * * *".
        cron: String,
        /// A run that comes due while the last still goes: skip or queue.
        #[arg(long, default_value = "skip")]
        overlap: scheduler::Overlap,
        /// Retries after a failed run (1 s, doubling).
        #[arg(long, default_value_t = 0)]
        retries: u8,
    },
    /// Remove a job.
    Remove {
        /// Its name.
        job: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo {
            name,
            duration,
            calm,
        } => demo::run(&name, duration, calm),
        Command::Start { worker, name } => control::control(&name, "start", &worker),
        Command::Stop { worker, name } => control::control(&name, "stop", &worker),
        Command::Restart { worker, name } => control::control(&name, "restart", &worker),
        Command::Call {
            worker,
            message,
            name,
        } => control::call(&name, &worker, &message, false),
        Command::Cast {
            worker,
            message,
            name,
        } => control::call(&name, &worker, &message, true),
        Command::Kill {
            worker,
            signal,
            name,
        } => control::kill(&name, &worker, &signal),
        Command::Jobs { command, name } => match command {
            JobsCommand::List => control::jobs_list(&name),
            JobsCommand::Add {
                job,
                cron,
                overlap,
                retries,
            } => control::jobs_add(&name, &job, &cron, overlap, retries),
            JobsCommand::Remove { job } => control::jobs_remove(&name, &job),
        },
        Command::Status { name, json, watch } => status::run(&name, json, watch),
        Command::Cleanup { name } => status::cleanup(&name),
        Command::Chaos { iterations, seed } => chaos::run(iterations, seed),
        Command::Bench {
            quick,
            json,
            filter,
        } => bench::run(&bench::BenchOpts { quick, json }, filter.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postmaster: {e}");
            ExitCode::FAILURE
        }
    }
}
