//! loom models of the name table (`bgw::names`). Threads stand in for
//! processes and the entries live on the heap over loom's atomics.
//!
//! As in `loom_registry.rs`, every role runs on a spawned thread and the
//! main thread only sets up, joins and checks: loom 0.7 may explore a
//! single interleaving when the main thread races a spawned one
//! (tokio-rs/loom#392). Each model names the interleavings it must reach
//! and fails if loom never reached one, so a model cannot pass by not
//! exploring.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-loom-mail cargo test -p bgw --release --test loom_names`
#![cfg(loom)]

use bgw::names::{NameEntry, NameError, NameOwner, Names};
use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::explore;

fn table(n: usize) -> Arc<Vec<NameEntry>> {
    Arc::new((0..n).map(|_| NameEntry::new()).collect())
}

fn owner(proc_index: u32) -> NameOwner {
    NameOwner {
        proc_index,
        proc_generation: 100 + proc_index,
        pid: 1000 + proc_index,
    }
}

/// Two registrants race for one name while a third process looks it up:
/// exactly one wins, the other is told who holds it, and the lookup sees
/// the winner or nothing, never the loser.
#[test]
fn two_registrants_race_for_one_name_and_exactly_one_wins() {
    explore(
        &[
            "racer 1 won",
            "racer 2 won",
            "lookup saw nothing",
            "lookup saw the winner",
        ],
        |reached| {
            let storage = table(2);
            let racers: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|p| {
                    let theirs = storage.clone();
                    thread::spawn(move || (p, Names::from_entries(&theirs).register("x", owner(p))))
                })
                .collect();
            let theirs = storage.clone();
            let reader = thread::spawn(move || Names::from_entries(&theirs).whereis("x"));

            let results: Vec<_> = racers
                .into_iter()
                .map(|t| t.join().expect("registrant"))
                .collect();
            let seen = reader.join().expect("reader");
            let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            let winner = winners[0].0;
            reached.note(if winner == 1 {
                "racer 1 won"
            } else {
                "racer 2 won"
            });
            for (p, result) in &results {
                if *p != winner {
                    assert_eq!(
                        result,
                        &Err(NameError::Taken {
                            name: "x".into(),
                            owner_pid: owner(winner).pid
                        })
                    );
                }
            }
            match seen {
                None => reached.note("lookup saw nothing"),
                Some(o) => {
                    assert_eq!(o, owner(winner), "the lookup saw a loser");
                    reached.note("lookup saw the winner");
                }
            }
            let names = Names::from_entries(&storage);
            assert_eq!(names.whereis("x"), Some(owner(winner)));
            assert_eq!(names.list().len(), 1);
            assert!(
                names.entries().len() == 1,
                "the loser left an entry behind: {:?}",
                names.entries()
            );
        },
    );
}

/// One process registers a name, unregisters it and registers another in
/// the same (only) entry, while another process looks both up and lists
/// the table. Every answer pairs a name with the owner registered under
/// it in one tenancy: a copy torn between tenancies (name of the first,
/// owner of the second) must be discarded, never returned.
#[test]
fn lookups_never_see_a_name_torn_between_tenancies() {
    explore(
        &[
            "lookup saw x",
            "lookup saw nothing for x",
            "lookup saw yy",
            "listed x",
        ],
        |reached| {
            let storage = table(1);
            let theirs = storage.clone();
            let writer = thread::spawn(move || {
                let names = Names::from_entries(&theirs);
                let h = names.register("x", owner(1)).expect("empty table");
                names.unregister(h).expect("still registered");
                names.register("yy", owner(2)).expect("entry free again")
            });
            let theirs = storage.clone();
            let reader = thread::spawn(move || {
                let names = Names::from_entries(&theirs);
                let x = names.whereis("x");
                let listed = names.list();
                let yy = names.whereis("yy");
                (x, listed, yy)
            });

            let h = writer.join().expect("writer");
            let (x, listed, yy) = reader.join().expect("reader");
            match x {
                None => reached.note("lookup saw nothing for x"),
                Some(o) => {
                    assert_eq!(o, owner(1), "x paired with another tenancy's owner");
                    reached.note("lookup saw x");
                }
            }
            if let Some(o) = yy {
                assert_eq!(o, owner(2), "yy paired with another tenancy's owner");
                reached.note("lookup saw yy");
            }
            for r in listed {
                match r.name.as_str() {
                    "x" => {
                        assert_eq!(r.owner, owner(1));
                        reached.note("listed x");
                    }
                    "yy" => assert_eq!(r.owner, owner(2)),
                    other => panic!("listed a name nobody registered: {other:?}"),
                }
            }
            let names = Names::from_entries(&storage);
            assert_eq!(names.whereis("yy"), Some(owner(2)));
            assert_eq!(names.whereis("x"), None);
            assert_eq!(h.generation, 2, "one entry, two tenancies");
        },
    );
}

/// A process registers a name and unregisters it, while another registers
/// the same name and a third looks it up: the second gets it (if the first
/// had let go, or had not got it yet) or is told the first holds it; the
/// lookup only ever sees one of the two; at the end the table agrees.
#[test]
fn register_racing_unregister_and_lookup() {
    explore(
        &[
            "newcomer won",
            "newcomer lost to the holder",
            "lookup saw the holder",
            "lookup saw the newcomer",
            "lookup saw nothing",
        ],
        |reached| {
            let storage = table(2);
            let theirs = storage.clone();
            let holder = thread::spawn(move || {
                let names = Names::from_entries(&theirs);
                match names.register("x", owner(1)) {
                    Ok(h) => {
                        names.unregister(h).expect("nobody else frees it");
                        true
                    }
                    Err(e) => {
                        assert_eq!(
                            e,
                            NameError::Taken {
                                name: "x".into(),
                                owner_pid: owner(2).pid
                            }
                        );
                        false
                    }
                }
            });
            let theirs = storage.clone();
            let newcomer =
                thread::spawn(move || Names::from_entries(&theirs).register("x", owner(2)));
            let theirs = storage.clone();
            let reader = thread::spawn(move || Names::from_entries(&theirs).whereis("x"));

            let holder_got_it = holder.join().expect("holder");
            let new = newcomer.join().expect("newcomer");
            let seen = reader.join().expect("reader");
            let names = Names::from_entries(&storage);
            match &new {
                Ok(_) => {
                    reached.note("newcomer won");
                    assert_eq!(names.whereis("x"), Some(owner(2)));
                }
                Err(e) => {
                    assert!(holder_got_it, "nobody got the name");
                    assert_eq!(
                        e,
                        &NameError::Taken {
                            name: "x".into(),
                            owner_pid: owner(1).pid
                        }
                    );
                    reached.note("newcomer lost to the holder");
                    assert_eq!(names.whereis("x"), None);
                }
            }
            match seen {
                None => reached.note("lookup saw nothing"),
                Some(o) if o == owner(1) => {
                    assert!(holder_got_it);
                    reached.note("lookup saw the holder");
                }
                Some(o) => {
                    assert_eq!(o, owner(2));
                    assert!(new.is_ok());
                    reached.note("lookup saw the newcomer");
                }
            }
        },
    );
}

/// The postmaster releases the names of a worker it has reaped, while a
/// lookup runs and a newcomer registers the same name: the lookup sees the
/// dead worker (not yet released) or the newcomer or nothing; the newcomer
/// gets the name or is told the dead worker holds it; afterwards exactly
/// what the release reported is gone.
#[test]
fn release_owned_by_racing_lookup_and_reregistration() {
    explore(
        &[
            "newcomer won",
            "newcomer lost to the dead owner",
            "lookup saw the dead owner",
            "lookup saw nothing",
        ],
        |reached| {
            let storage = table(2);
            let dead = owner(1);
            Names::from_entries(&storage)
                .register("x", dead)
                .expect("empty table");

            let theirs = storage.clone();
            let postmaster = thread::spawn(move || {
                Names::from_entries(&theirs).release_owned_by(dead.proc_index, dead.proc_generation)
            });
            let theirs = storage.clone();
            let newcomer =
                thread::spawn(move || Names::from_entries(&theirs).register("x", owner(2)));
            let theirs = storage.clone();
            let reader = thread::spawn(move || Names::from_entries(&theirs).whereis("x"));

            let released = postmaster.join().expect("postmaster");
            let new = newcomer.join().expect("newcomer");
            let seen = reader.join().expect("reader");
            assert_eq!(released.len(), 1, "{released:?}");
            assert_eq!(released[0].name.as_deref(), Some("x"));
            let names = Names::from_entries(&storage);
            match new {
                Ok(_) => {
                    reached.note("newcomer won");
                    assert_eq!(names.whereis("x"), Some(owner(2)));
                }
                Err(e) => {
                    assert_eq!(
                        e,
                        NameError::Taken {
                            name: "x".into(),
                            owner_pid: dead.pid
                        }
                    );
                    reached.note("newcomer lost to the dead owner");
                    assert_eq!(names.whereis("x"), None);
                }
            }
            match seen {
                None => reached.note("lookup saw nothing"),
                Some(o) if o == dead => reached.note("lookup saw the dead owner"),
                Some(o) => assert_eq!(o, owner(2)),
            }
            assert!(
                names
                    .release_owned_by(dead.proc_index, dead.proc_generation)
                    .is_empty()
            );
        },
    );
}
