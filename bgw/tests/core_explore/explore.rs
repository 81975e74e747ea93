//! Two ways to choose step sequences for a [`World`]: every sequence up to
//! a depth (with states already explored at least as deep pruned), and
//! long seeded random ones.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use bgw::core::{ExitStatus, ShutdownMode, SlotReport};
use bgw::spec::Phase;

use bgw::fuzzing::world::{Step, Tally, World};

/// A failed check, with the steps that led to it.
#[derive(Debug)]
pub struct Failure {
    /// What the world was started as, and with which seed.
    pub origin: String,
    /// The steps, the last of which failed.
    pub trace: Vec<Step>,
    /// The check that failed.
    pub message: String,
    /// The world when it failed.
    pub state: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: step {} failed", self.origin, self.trace.len())?;
        writeln!(f, "{}", self.message)?;
        writeln!(f, "trace:")?;
        for (i, step) in self.trace.iter().enumerate() {
            writeln!(f, "  {:>3}. {step:?}", i + 1)?;
        }
        write!(f, "world:\n{}", self.state)
    }
}

/// Plays `steps` on a fresh world. The whole-state check runs after the
/// last `fresh` steps only: the caller vouches that the earlier ones were
/// checked before, on a world that got to the same state the same way.
pub fn replay(lagging: bool, steps: &[Step], fresh: usize, origin: &str) -> Result<World, Failure> {
    let mut world = World::new(lagging);
    for (i, step) in steps.iter().enumerate() {
        world.check_whole_state = i + fresh >= steps.len();
        if let Err(message) = world.apply(step) {
            return Err(Failure {
                origin: origin.to_owned(),
                trace: steps[..=i].to_vec(),
                message,
                state: world.describe(),
            });
        }
    }
    world.check_whole_state = true;
    Ok(world)
}

/// What an exhaustive exploration covered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Coverage {
    /// Distinct (state, depth left) nodes expanded.
    pub nodes: u64,
    /// Nodes cut because the same state was already explored as deep.
    pub pruned: u64,
    /// Steps applied, replays and quiescing included.
    pub steps: u64,
}

/// Every step sequence of length up to `depth` after `root`, on a world
/// that is `lagging` or not. After every step the world checks itself; at
/// every node it also quiesces (on a replayed copy, since `Core` does not
/// clone) and checks the end state.
///
/// Pruning: a node whose fingerprint (the core's and the model's whole
/// state, pids and times normalised; see [`World::fingerprint`]) was
/// already expanded with at least as many steps left is not expanded
/// again: every check depends only on that state and what follows, so the
/// sequences below it were already checked.
pub fn explore(lagging: bool, root: &[Step], depth: usize) -> Result<Coverage, Failure> {
    let mut explorer = Explorer {
        lagging,
        origin: format!("exhaustive (lagging={lagging}, depth {depth}, root {root:?})"),
        seen: HashMap::new(),
        coverage: Coverage::default(),
        root_len: root.len(),
    };
    let mut prefix = root.to_vec();
    explorer.visit(&mut prefix, depth)?;
    Ok(explorer.coverage)
}

struct Explorer {
    lagging: bool,
    origin: String,
    seen: HashMap<u128, usize>,
    coverage: Coverage,
    root_len: usize,
}

impl Explorer {
    fn visit(&mut self, prefix: &mut Vec<Step>, left: usize) -> Result<(), Failure> {
        // Every shorter prefix was visited (and checked) on the way here;
        // the root's steps are checked on its own visit.
        let fresh = if prefix.len() == self.root_len {
            prefix.len()
        } else {
            1
        };
        let world = replay(self.lagging, prefix, fresh, &self.origin)?;
        let key = world.fingerprint();
        if self.seen.get(&key).is_some_and(|seen| *seen >= left) {
            self.coverage.pruned += 1;
            self.coverage.steps += world.steps_applied;
            return Ok(());
        }
        self.seen.insert(key, left);
        self.coverage.nodes += 1;
        let (no_change, choices): (Vec<Step>, Vec<Step>) = world
            .choices()
            .into_iter()
            .partition(|step| world.predicts_no_change(step));

        // Steps that change nothing lead back to this very state, which
        // would be pruned; play them here instead of replaying for each.
        let mut world = world;
        for step in no_change {
            let result = world.apply(&step).and_then(|()| {
                if world.fingerprint() == key {
                    Ok(())
                } else {
                    Err("a step that should change nothing changed the world".to_owned())
                }
            });
            if let Err(message) = result {
                let mut trace = prefix.clone();
                trace.push(step);
                return Err(Failure {
                    origin: self.origin.clone(),
                    trace,
                    message,
                    state: world.describe(),
                });
            }
        }

        let mut rest = world;
        if let Err(message) = rest.apply(&Step::Quiesce) {
            let mut trace = prefix.clone();
            trace.push(Step::Quiesce);
            return Err(Failure {
                origin: self.origin.clone(),
                trace,
                message,
                state: rest.describe(),
            });
        }
        self.coverage.steps += rest.steps_applied;
        if left == 0 {
            return Ok(());
        }
        for step in choices {
            prefix.push(step);
            self.visit(prefix, left - 1)?;
            prefix.pop();
        }
        Ok(())
    }
}

/// SplitMix64 (Steele, Lea and Flood, 2014): small, fast, and good enough
/// to pick test steps; every sequence is reproducible from its seed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the tiny modulo bias does not matter here).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// The clock advances of random ticks: often none, often less than a
/// restart delay or a kill timeout, sometimes past everything.
const TICKS_MS: [u64; 10] = [0, 0, 0, 50, 100, 300, 500, 1000, 2000, 10_000];

/// A random step, weighted so that a run of 200 starts, crashes, resets
/// and restarts workers many times, and shuts down in about half the runs.
fn random_step(world: &World, rng: &mut SplitMix64, lagging: bool) -> Step {
    let live = world.live_pids();
    let current = world.current_ids();
    loop {
        let roll = rng.below(1000);
        let step = match roll {
            0..=299 => Step::Tick(Duration::from_millis(rng.pick(&TICKS_MS))),
            300..=459 if !live.is_empty() => {
                let pid = rng.pick(&live);
                Step::Exit {
                    pid,
                    status: rng.pick(&[
                        ExitStatus::Code(0),
                        ExitStatus::Code(1),
                        ExitStatus::Code(1),
                        ExitStatus::Code(2),
                        ExitStatus::Signaled(9),
                        ExitStatus::Signaled(11),
                    ]),
                    // The driver reports no slot for a worker without
                    // shared memory (it never had one to leave dirty).
                    slot: if world.has_shmem_child(pid) {
                        rng.pick(&[
                            SlotReport::Clean,
                            SlotReport::Clean,
                            SlotReport::Abandoned,
                            SlotReport::Dirty,
                            SlotReport::None,
                        ])
                    } else {
                        SlotReport::None
                    },
                }
            }
            460..=659 if lagging => Step::ReportFork {
                ok: rng.below(4) != 0,
            },
            460..=519 if !lagging => Step::FailNextFork,
            660..=719 => Step::Phase(rng.pick(&Phase::ALL)),
            720..=769 if !current.is_empty() => Step::Terminate(rng.pick(&current)),
            770..=789 => Step::Terminate(world.stale_id()),
            790..=839 => Step::Register(rng.below(3) as u8),
            840..=849 if !current.is_empty() => {
                let id = rng.pick(&current);
                Step::RegisterDuplicate(
                    world
                        .core
                        .spec(id)
                        .map_or_else(|| "nobody".to_owned(), |spec| spec.name().to_owned()),
                )
            }
            850..=864 => Step::Corrupt,
            865..=944 => Step::ResetDone,
            945..=954 => Step::StrangerExit,
            955..=964 => Step::Quiesce,
            965..=967 => Step::Shutdown(rng.pick(&[
                ShutdownMode::Smart,
                ShutdownMode::Fast,
                ShutdownMode::Immediate,
            ])),
            _ => continue,
        };
        // A fork outcome with no fork outstanding is no step.
        if matches!(step, Step::ReportFork { .. }) && !world.fork_outstanding() {
            continue;
        }
        return step;
    }
}

/// One random run of `len` steps from `seed`, then quiescing.
pub fn random_run(seed: u64, len: usize, lagging: bool) -> Result<Tally, Failure> {
    random_run_with(seed, len, lagging, random_step)
}

/// As [`random_run`], with the steps chosen by `choose`.
pub fn random_run_with(
    seed: u64,
    len: usize,
    lagging: bool,
    choose: fn(&World, &mut SplitMix64, bool) -> Step,
) -> Result<Tally, Failure> {
    let origin = format!("random (seed {seed:#018x}, lagging={lagging}, length {len})");
    let mut rng = SplitMix64::new(seed);
    let mut world = World::new(lagging);
    let mut trace = Vec::with_capacity(len + 1);
    for i in 0..=len {
        let step = if i == len {
            Step::Quiesce
        } else {
            choose(&world, &mut rng, lagging)
        };
        trace.push(step.clone());
        if let Err(message) = world.apply(&step) {
            return Err(Failure {
                origin,
                trace,
                message,
                state: world.describe(),
            });
        }
    }
    Ok(world.tally)
}
