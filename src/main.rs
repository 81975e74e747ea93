//! The `postmaster` command: run the demo, measure, and (in later issues)
//! watch and steer a running postmaster.

mod bench;
mod demo;
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
    /// Remove a segment left by a postmaster that died.
    Cleanup {
        /// Name of the segment.
        #[arg(long, default_value = "demo")]
        name: String,
    },
    /// Measure and print one `name value unit` line per figure.
    Bench {
        /// Short runs: the whole suite in well under a minute.
        #[arg(long)]
        quick: bool,
        /// Run only the groups whose name contains this (segment, latch, ring,
        /// slots, bgw).
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { name, duration } => demo::run(&name, duration),
        Command::Status { name, json, watch } => status::run(&name, json, watch),
        Command::Cleanup { name } => status::cleanup(&name),
        Command::Bench { quick, filter } => {
            bench::run(&bench::BenchOpts { quick }, filter.as_deref())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postmaster: {e}");
            ExitCode::FAILURE
        }
    }
}
