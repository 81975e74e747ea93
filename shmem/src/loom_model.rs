//! What every loom model in the workspace runs through (only under
//! `--cfg loom`): loom's exploration, plus a record of which interleaving
//! classes the iterations reached, so that a model also fails when it
//! never reaches the interleavings it exists for.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Interleaving classes reached, gathered across loom's iterations in
/// plain (unmodelled) memory, so loom neither sees nor resets it.
#[derive(Clone, Default)]
pub struct Reached(Arc<Mutex<BTreeSet<&'static str>>>);

impl Reached {
    /// Records that this iteration reached `class`.
    pub fn note(&self, class: &'static str) {
        self.0.lock().expect("not poisoned").insert(class);
    }
}

/// Runs `model` at the bound `LOOM_MAX_PREEMPTIONS` gives, then checks
/// that every class in `expected` was reached by some iteration.
pub fn explore(expected: &[&'static str], model: impl Fn(&Reached) + Sync + Send + 'static) {
    explore_with(loom::model::Builder::new(), expected, model);
}

/// As [`explore`], with at most `bound` preemptions whatever
/// `LOOM_MAX_PREEMPTIONS` says (`None`: as it says): for a model that
/// takes minutes at the CI bound, whose deep twin runs unbounded.
pub fn explore_bounded(
    bound: Option<usize>,
    expected: &[&'static str],
    model: impl Fn(&Reached) + Sync + Send + 'static,
) {
    let mut builder = loom::model::Builder::new();
    if let Some(bound) = bound {
        builder.preemption_bound = Some(builder.preemption_bound.map_or(bound, |n| n.min(bound)));
    }
    explore_with(builder, expected, model);
}

/// As [`explore`], under `builder`.
pub fn explore_with(
    builder: loom::model::Builder,
    expected: &[&'static str],
    model: impl Fn(&Reached) + Sync + Send + 'static,
) {
    let reached = Reached::default();
    let inside = reached.clone();
    let iterations = Arc::new(Mutex::new(0usize));
    let counter = iterations.clone();
    builder.check(move || {
        *counter.lock().expect("not poisoned") += 1;
        model(&inside)
    });
    eprintln!(
        "explored {} interleavings",
        iterations.lock().expect("not poisoned")
    );
    let reached = reached.0.lock().expect("not poisoned");
    for class in expected {
        assert!(
            reached.contains(class),
            "loom never reached `{class}` (only {reached:?}): the model is not exploring"
        );
    }
}
