//! loom models of the inboxes (`bgw::mailbox`): calls paired with their
//! replies by correlation id, and casts that arrive while a call waits.
//! Threads stand in for processes; the rings live on the heap over loom's
//! atomics and the latches over the latch crate's futex model, so a lost
//! wake-up shows up as a deadlock. Under loom a caller waits for its reply
//! without the periodic liveness re-check (`bgw::mailbox::RECHECK`), so a
//! timeout cannot paper over a missing wake.
//!
//! As in `loom_registry.rs`, every role runs on a spawned thread and the
//! main thread only sets up, joins and checks (tokio-rs/loom#392), and each
//! model fails if loom never reached the interleavings it names.
//!
//! Run: `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=/work/target-loom-mail cargo test -p bgw --release --test loom_mailbox`
//!
//! Each model takes minutes of CPU at two preemptions, so CI runs it at
//! one (a few seconds, and every named interleaving is still reached); its
//! `_deep` twin, `#[ignore]`d, runs at `LOOM_MAX_PREEMPTIONS`: add
//! `-- --include-ignored` to the command above (about five minutes of CPU).
#![cfg(loom)]

use std::time::{Duration, Instant};

use bgw::mailbox::{Address, Kind, MailboxStorage, Peer, Peers, Wait};
use latch::Latch;
use loom::sync::Arc;
use loom::thread;
use shmem::loom_model::explore_bounded;

/// Process slots that all run, in generation 1: liveness is not what these
/// models check, so it costs no modelled operation.
struct AllRunning(Vec<Latch>);

impl AllRunning {
    fn new(n: usize) -> Arc<Self> {
        let latches: Vec<_> = (0..n).map(|_| Latch::new()).collect();
        for latch in &latches {
            // Threads share the pid, so every thread may wait on any latch;
            // each model waits on each latch from one thread only.
            latch.own().expect("a fresh latch");
        }
        Arc::new(AllRunning(latches))
    }
}

impl Peers for AllRunning {
    fn peer(&self, proc_index: u32) -> Option<Peer<'_>> {
        Some(Peer {
            generation: 1,
            running: true,
            latch: self.0.get(proc_index as usize)?,
        })
    }
}

fn at(proc_index: u32) -> Address {
    Address {
        proc_index,
        generation: 1,
    }
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The preemption bound CI runs these models at; see the module docs.
const CI_BOUND: Option<usize> = Some(1);

/// A server answers two calls, one from each of two callers, echoing the
/// request. Each caller gets the reply to its own call, whichever call the
/// server took first, and nobody sleeps through a message.
#[test]
fn two_callers_each_get_their_own_reply() {
    two_callers(CI_BOUND);
}

#[test]
#[ignore = "deep: minutes at LOOM_MAX_PREEMPTIONS=2; CI runs the bounded twin"]
fn two_callers_each_get_their_own_reply_deep() {
    two_callers(None);
}

fn two_callers(bound: Option<usize>) {
    explore_bounded(
        bound,
        &["caller 1 served first", "caller 2 served first"],
        |reached| {
            let storage = Arc::new(MailboxStorage::new(3, 2));
            let peers = AllRunning::new(3);

            let (s, p) = (storage.clone(), peers.clone());
            let server = thread::spawn(move || {
                let mailboxes = s.mailboxes().expect("fits");
                let mut inbox = mailboxes.inbox(at(0), &p.0[0]).expect("free inbox");
                let mut order = Vec::new();
                while order.len() < 2 {
                    let Some(call) = inbox.recv(None).expect("recv") else {
                        continue;
                    };
                    assert_eq!(call.kind(), Kind::Call);
                    let to = call.reply_to().expect("a call");
                    order.push(to.to.proc_index);
                    inbox
                        .reply(&*p, to, call.payload(), Wait::NoWait)
                        .expect("the caller's inbox has room");
                }
                order
            });
            let callers: Vec<_> = [1u32, 2]
                .into_iter()
                .map(|me| {
                    let (s, p) = (storage.clone(), peers.clone());
                    thread::spawn(move || {
                        let mailboxes = s.mailboxes().expect("fits");
                        let mut inbox = mailboxes
                            .inbox(at(me), &p.0[me as usize])
                            .expect("free inbox");
                        let request = [me as u8; 3];
                        let reply = inbox.call(&*p, at(0), &request, far()).expect("a reply");
                        assert_eq!(reply, request, "caller {me} got another call's reply");
                        assert_eq!(inbox.stats(), Default::default());
                        assert_eq!(inbox.pending(), 0);
                    })
                })
                .collect();

            for caller in callers {
                caller.join().expect("caller");
            }
            let order = server.join().expect("server");
            reached.note(match order[..] {
                [1, 2] => "caller 1 served first",
                [2, 1] => "caller 2 served first",
                _ => panic!("the server saw {order:?}"),
            });
        },
    );
}

/// A caller waits for a reply while another process casts to it: the
/// reply is found whether the cast arrives before or after it, and the
/// cast comes out of `recv` afterwards, once, whether the call kept it
/// aside or left it in the ring.
#[test]
fn a_cast_during_a_call_is_kept_for_recv() {
    cast_during_a_call(CI_BOUND);
}

#[test]
#[ignore = "deep: minutes at LOOM_MAX_PREEMPTIONS=2; CI runs the bounded twin"]
fn a_cast_during_a_call_is_kept_for_recv_deep() {
    cast_during_a_call(None);
}

fn cast_during_a_call(bound: Option<usize>) {
    explore_bounded(
        bound,
        &[
            "the call kept the cast aside",
            "the cast was still in the ring",
        ],
        |reached| {
            let storage = Arc::new(MailboxStorage::new(3, 2));
            let peers = AllRunning::new(3);

            let (s, p) = (storage.clone(), peers.clone());
            let server = thread::spawn(move || {
                let mailboxes = s.mailboxes().expect("fits");
                let mut inbox = mailboxes.inbox(at(0), &p.0[0]).expect("free inbox");
                let call = loop {
                    if let Some(call) = inbox.recv(None).expect("recv") {
                        break call;
                    }
                };
                inbox
                    .reply(&*p, call.reply_to().expect("a call"), b"r", Wait::NoWait)
                    .expect("room");
            });
            let (s, p) = (storage.clone(), peers.clone());
            let caster = thread::spawn(move || {
                s.mailboxes()
                    .expect("fits")
                    .cast(&*p, Some(at(2)), at(1), b"c", Wait::NoWait)
                    .expect("room");
            });
            let (s, p) = (storage.clone(), peers.clone());
            let caller = thread::spawn(move || {
                let mailboxes = s.mailboxes().expect("fits");
                let mut inbox = mailboxes.inbox(at(1), &p.0[1]).expect("free inbox");
                let reply = inbox.call(&*p, at(0), b"q", far()).expect("a reply");
                assert_eq!(reply, b"r");
                let kept = inbox.pending();
                let cast = loop {
                    if let Some(m) = inbox.recv(None).expect("recv") {
                        break m;
                    }
                };
                assert_eq!(
                    (cast.kind(), cast.from(), cast.payload()),
                    (Kind::Cast, Some(at(2)), &b"c"[..])
                );
                assert!(inbox.try_recv().expect("recv").is_none(), "the cast twice");
                assert_eq!(inbox.stats(), Default::default());
                kept
            });

            server.join().expect("server");
            caster.join().expect("caster");
            reached.note(match caller.join().expect("caller") {
                0 => "the cast was still in the ring",
                _ => "the call kept the cast aside",
            });
        },
    );
}
