//! loom models of the dynamic-registration handoff (`bgw::registry`).
//! Threads stand in for processes, the registry's slots live on the heap
//! over loom's atomics, and the postmaster's private `RegistryOwner` stays
//! on the thread that plays the postmaster.
//!
//! Every role runs on a spawned thread; the main thread only sets up,
//! joins and checks the end state. Two loom 0.7 blind spots make this
//! matter. Its DPOR remembers only the last access to each atomic, so when
//! the main thread loads a word and a spawned thread then loads and CASes
//! it (as `submit` does), the race is hidden and loom explores a single
//! interleaving and passes (tokio-rs/loom#392). Making the main thread
//! yield first restores the interleavings but, as measured here, stops
//! loom from offering stale values to relaxed loads, so a missing
//! release/acquire pair goes unseen. With all roles spawned loom finds
//! both; each model also names the interleavings it must reach and fails
//! if loom never reached one, so a model cannot pass by not exploring.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-loom-reg cargo test -p bgw --release --test loom_registry`
#![cfg(loom)]

use std::time::Duration;

use bgw::registry::{
    HandleStatus, RegHandle, RegSlot, Registrant, Registration, Registry, RegistryError,
    RegistryOwner,
};
use bgw::{Phase, Restart, WorkerSpec};
use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::explore;

fn slots(n: usize) -> Arc<Vec<RegSlot>> {
    Arc::new((0..n).map(|_| RegSlot::new()).collect())
}

/// A spec with every field away from its default, so a torn copy would
/// differ somewhere.
fn spec(name: &str) -> WorkerSpec {
    WorkerSpec::new(name)
        .entry("entry_main")
        .arg(b"some argument bytes")
        .start(Phase::ConsistentState)
        .restart(Restart::After(Duration::from_millis(1500)))
        .shmem(false)
        .notify(true)
        .shutdown_timeout(Duration::from_secs(9))
}

fn registrant(pid: u32) -> Registrant {
    Registrant {
        proc_index: Some(pid % 7),
        pid,
    }
}

/// A registrant submits while the postmaster scans. The scan sees the slot
/// free, being filled, or submitted, and in the last case the spec and
/// registrant exactly as submitted, never a torn or stale image; a scan
/// that missed it finds it after the join.
#[test]
fn submit_racing_scan_sees_nothing_or_the_complete_spec() {
    explore(
        &["scan saw free", "scan saw filling", "scan saw submitted"],
        |reached| {
            let storage = slots(1);
            let mut owner = RegistryOwner::init(&Registry::from_slots(&storage));
            let expected = Registration {
                spec: spec("racer"),
                registrant: registrant(41),
            };

            let theirs = storage.clone();
            let registrant_thread = thread::spawn(move || {
                Registry::from_slots(&theirs)
                    .submit(&spec("racer"), registrant(41))
                    .expect("the only registrant finds the slot free")
            });
            let theirs = storage.clone();
            let (reached_pm, expected_pm) = (reached.clone(), expected.clone());
            let postmaster = thread::spawn(move || {
                let registry = Registry::from_slots(&theirs);
                let scan = owner.scan(&registry).expect("sizes match");
                assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
                reached_pm.note(match (scan.filling.len(), scan.submissions.len()) {
                    (0, 0) => "scan saw free",
                    (1, 0) => "scan saw filling",
                    _ => "scan saw submitted",
                });
                let mut accepted = None;
                for s in scan.submissions {
                    assert_eq!(s.registration.as_ref(), Ok(&expected_pm));
                    owner.accept(&registry, s.handle).expect("accept");
                    accepted = Some(s.handle);
                }
                (owner, accepted)
            });

            let handle = registrant_thread.join().expect("registrant");
            let (mut owner, accepted) = postmaster.join().expect("postmaster");
            let registry = Registry::from_slots(&storage);
            match accepted {
                Some(seen) => assert_eq!(seen, handle),
                None => {
                    let scan = owner.scan(&registry).expect("sizes match");
                    assert_eq!(scan.submissions.len(), 1);
                    assert_eq!(scan.submissions[0].handle, handle);
                    assert_eq!(scan.submissions[0].registration.as_ref(), Ok(&expected));
                    owner.accept(&registry, handle).expect("accept");
                }
            }
            assert_eq!(registry.status(handle), HandleStatus::NotYetStarted);
        },
    );
}

/// Two registrants race for the one free slot while the postmaster scans:
/// exactly one wins, the other is told the table is full, and whatever
/// the scan saw is the winner's complete spec.
#[test]
fn two_registrants_race_for_one_slot_and_one_wins() {
    explore(
        &[
            "racer 1 won",
            "racer 2 won",
            "scan saw submitted",
            "scan saw filling",
        ],
        |reached| {
            let storage = slots(1);
            let owner = RegistryOwner::init(&Registry::from_slots(&storage));
            let racers: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|pid| {
                    let theirs = storage.clone();
                    thread::spawn(move || {
                        let name = format!("racer{pid}");
                        (
                            pid,
                            Registry::from_slots(&theirs).submit(&spec(&name), registrant(pid)),
                        )
                    })
                })
                .collect();
            let theirs = storage.clone();
            let postmaster = thread::spawn(move || {
                let scan = owner
                    .scan(&Registry::from_slots(&theirs))
                    .expect("sizes match");
                assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
                scan
            });

            let results: Vec<_> = racers
                .into_iter()
                .map(|t| t.join().expect("registrant"))
                .collect();
            let scan = postmaster.join().expect("postmaster");
            let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
            assert_eq!(winners.len(), 1, "{results:?}");
            let winner = winners[0].0;
            reached.note(if winner == 1 {
                "racer 1 won"
            } else {
                "racer 2 won"
            });
            for (pid, result) in &results {
                if *pid != winner {
                    assert_eq!(result, &Err(RegistryError::Full { size: 1 }));
                }
            }
            if !scan.filling.is_empty() {
                reached.note("scan saw filling");
            }
            for s in scan.submissions {
                let reg = s.registration.expect("a complete image");
                assert_eq!(reg.registrant, registrant(winner));
                assert_eq!(reg.spec, spec(&format!("racer{winner}")));
                reached.note("scan saw submitted");
            }
        },
    );
}

/// An accepted, running registration is released by the postmaster while
/// its old registrant terminates it and a new registrant submits (possibly
/// into the same slot). The old handle's terminate must never mark the new
/// tenancy, and afterwards the old handle reads Stopped.
#[test]
fn stale_terminate_racing_release_and_reuse_never_marks_the_new_tenancy() {
    explore(
        &[
            "terminate landed, slot reused",
            "terminate too late, slot reused",
            "terminate landed, table full",
        ],
        |reached| {
            let storage = slots(1);
            let registry = Registry::from_slots(&storage);
            let mut owner = RegistryOwner::init(&registry);
            let old = registry
                .submit(&spec("old"), registrant(1))
                .expect("free slot");
            owner.accept(&registry, old).expect("accept");
            owner.set_started(&registry, old, 100).expect("start");

            let theirs = storage.clone();
            let terminator = thread::spawn(move || Registry::from_slots(&theirs).terminate(old));
            let theirs = storage.clone();
            let newcomer = thread::spawn(move || {
                Registry::from_slots(&theirs).submit(&spec("new"), registrant(2))
            });
            let theirs = storage.clone();
            let postmaster = thread::spawn(move || {
                owner
                    .release(&Registry::from_slots(&theirs), old)
                    .expect("release");
                owner
            });

            let terminated = terminator.join().expect("terminator");
            let new = newcomer.join().expect("newcomer");
            let owner = postmaster.join().expect("postmaster");
            let scan = owner.scan(&registry).expect("sizes match");
            assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
            assert!(
                scan.terminate_requests.is_empty(),
                "terminate through {old} (returned {terminated}) marked {:?}",
                scan.terminate_requests
            );
            assert_eq!(registry.status(old), HandleStatus::Stopped);
            assert!(!registry.terminate(old));
            let reused = new.is_ok();
            match new {
                Ok(new) => {
                    assert_eq!(
                        new,
                        RegHandle {
                            slot: 0,
                            generation: old.generation + 1
                        }
                    );
                    assert_eq!(registry.status(new), HandleStatus::Submitted);
                    assert_eq!(scan.submissions.len(), 1);
                    let reg = scan.submissions[0].registration.as_ref().expect("complete");
                    assert_eq!(reg.spec, spec("new"));
                }
                // It looked before the release freed the slot.
                Err(e) => assert_eq!(e, RegistryError::Full { size: 1 }),
            }
            reached.note(match (terminated, reused) {
                (true, true) => "terminate landed, slot reused",
                (false, true) => "terminate too late, slot reused",
                (true, false) => "terminate landed, table full",
                (false, false) => "terminate too late, table full",
            });
        },
    );
}

/// The postmaster resets the segment (the slot is zeroed word by word),
/// restores the generations and reinstalls the surviving registration,
/// while a process holding the pre-reset handle terminates it and reads its
/// status. Whatever mix of old, zeroed and new words it reads, it sees the
/// worker it knew or Stopped (this model once caught a generation-0 handle
/// reading a zeroed status word as "not yet started"); nothing it does
/// touches the reinstalled tenancy, and the old handle ends up Stopped.
#[test]
fn pre_reset_handle_is_fenced_by_restore_after_reset() {
    explore(
        &[
            "terminated, then read started",
            "terminated, then read stopped",
            "too late, read stopped",
        ],
        |reached| {
            let storage = slots(1);
            let registry = Registry::from_slots(&storage);
            let mut owner = RegistryOwner::init(&registry);
            let old = registry
                .submit(&spec("survivor"), registrant(1))
                .expect("free slot");
            owner.accept(&registry, old).expect("accept");
            owner.set_started(&registry, old, 100).expect("start");

            let theirs = storage.clone();
            let holder = thread::spawn(move || {
                let registry = Registry::from_slots(&theirs);
                let terminated = registry.terminate(old);
                (terminated, registry.status(old))
            });
            let theirs = storage.clone();
            let postmaster = thread::spawn(move || {
                let registry = Registry::from_slots(&theirs);
                for slot in theirs.iter() {
                    slot.wipe();
                }
                owner.restore_after_reset(&registry).expect("sizes match");
                let new = owner
                    .reinstall(&registry, &spec("survivor"), registrant(1))
                    .expect("a free slot after the reset");
                (owner, new)
            });

            let (terminated, status) = holder.join().expect("holder");
            let (owner, new) = postmaster.join().expect("postmaster");
            reached.note(match (terminated, status) {
                (true, HandleStatus::Started { pid: 100 }) => "terminated, then read started",
                (true, HandleStatus::Stopped) => "terminated, then read stopped",
                (false, HandleStatus::Stopped) => "too late, read stopped",
                other => panic!("the old handle read {other:?}"),
            });
            assert!(new.generation > old.generation, "{new} after {old}");
            let scan = owner.scan(&registry).expect("sizes match");
            assert!(scan.corrupt.is_empty(), "{:?}", scan.corrupt);
            assert!(
                scan.terminate_requests.is_empty(),
                "the pre-reset handle marked {:?}",
                scan.terminate_requests
            );
            assert_eq!(registry.status(old), HandleStatus::Stopped);
            assert_eq!(registry.status(new), HandleStatus::NotYetStarted);
        },
    );
}
