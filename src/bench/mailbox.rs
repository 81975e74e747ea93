//! Mailbox figures: a cross-process call round trip through the inboxes
//! (`call_rtt_us`) against a Unix-socket request/reply between the same two
//! pinned processes (`uds_reqrep_rtt_us`), and casts per second
//! (`cast_mmsgs`).
//!
//! Both round trips are what a user gets by default: the call goes through
//! [`bgw::Endpoint`] (name lookup, liveness check, push, latch set, and a
//! latch wait with its adaptive spin on the way back); the socket pair is a
//! blocking Unix stream pair. The callee is a forked child pinned to
//! the other CPU. Every reply is checked against its request, and the
//! casts are counted by the receiver before a rate is reported.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bgw::Endpoint;
use bgw::shared::{Shared, SharedConfig};
use shmem::{Layout, Segment};

use super::{BenchOpts, Figure, err, fork_pinned, pin_to_cpu, reap};

/// The callee's name.
const ECHO: &str = "bench-echo";
/// A call asking the callee how many casts it has received.
const COUNT: &[u8] = b"count";
/// A cast telling the callee to exit.
const STOP: &[u8] = b"stop";
/// The request that ends the socket child (no round ever sends it: round
/// numbers stay far below it).
const UDS_STOP: [u8; 8] = u64::MAX.to_le_bytes();
/// How long the callee may take to answer anything before the bench
/// gives up (it is never close to this unless something is broken).
const PATIENCE: Duration = Duration::from_secs(10);

/// Runs the mailbox group.
pub fn run(opts: &BenchOpts) -> Result<Vec<Figure>, String> {
    let (calls, casts) = if opts.quick {
        (3_000, 200_000)
    } else {
        (30_000, 2_000_000)
    };
    let (call, cast) = mailbox(calls, casts)?;
    let uds = uds_reqrep(calls)?;
    let call = Figure::new("call_rtt_us", call.as_secs_f64() * 1e6 / calls as f64, "us");
    let uds = Figure::new(
        "uds_reqrep_rtt_us",
        uds.as_secs_f64() * 1e6 / calls as f64,
        "us",
    );
    let cast = Figure::new(
        "cast_mmsgs",
        casts as f64 / cast.as_secs_f64() / 1e6,
        "mmsgs",
    );
    let ratio = Figure::ratio(&call, &uds);
    Ok(vec![call, uds, cast, ratio])
}

fn config() -> SharedConfig {
    SharedConfig {
        max_workers: 1,
        max_backends: 4,
        max_registrations: 1,
        max_names: 4,
        // Room for a burst of casts, so that the sender rarely meets a
        // full inbox (it would back off by sleeping).
        inbox_capacity: 1024,
    }
}

fn layout() -> Result<Layout, String> {
    config().declare(Layout::builder()).build().map_err(err)
}

/// The callee: answers calls with their request (or, for [`COUNT`], the
/// number of casts received) until a [`STOP`] cast.
fn echo(shared: Shared<'_>) -> i32 {
    let Ok(mut endpoint) = Endpoint::attach(shared) else {
        return 4;
    };
    if endpoint.register_name(ECHO).is_err() {
        return 5;
    }
    let mut casts = 0u64;
    loop {
        let message = match endpoint.recv(None) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(_) => return 6,
        };
        match message.reply_to() {
            Some(reply_to) => {
                let answer = if message.payload() == COUNT {
                    casts.to_le_bytes().to_vec()
                } else {
                    message.payload().to_vec()
                };
                if endpoint.reply(reply_to, &answer).is_err() {
                    return 7;
                }
            }
            None if message.payload() == STOP => return 0,
            None => casts += 1,
        }
    }
}

/// Times `calls` round trips and `casts` casts to a pinned callee.
fn mailbox(calls: u64, casts: u64) -> Result<(Duration, Duration), String> {
    let segment = Segment::create(&layout()?).map_err(err)?;
    let shared = Shared::init(&segment, &config()).map_err(err)?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || echo(shared))?;
    let result = drive(shared, calls, casts);
    if result.is_err() {
        let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    }
    let reaped = reap(child);
    let timings = result?;
    reaped?;
    Ok(timings)
}

fn drive(shared: Shared<'_>, calls: u64, casts: u64) -> Result<(Duration, Duration), String> {
    let mut me = Endpoint::attach(shared).map_err(err)?;
    let deadline = Instant::now() + PATIENCE;
    while me.whereis(ECHO).is_none() {
        if Instant::now() > deadline {
            return Err("the callee never registered".into());
        }
        std::thread::yield_now();
    }
    let call = |me: &mut Endpoint<'_>, i: u64| -> Result<(), String> {
        let request = i.to_le_bytes();
        let reply = me.call(ECHO, &request, PATIENCE).map_err(err)?;
        if reply != request {
            return Err(format!("call {i}: reply {reply:?} does not match"));
        }
        Ok(())
    };
    for i in 0..calls / 10 {
        call(&mut me, i)?;
    }
    let started = Instant::now();
    for i in 0..calls {
        call(&mut me, i)?;
    }
    let call_time = started.elapsed();

    let started = Instant::now();
    for i in 0..casts {
        me.cast(ECHO, &i.to_le_bytes()).map_err(err)?;
    }
    // The inbox is FIFO: the answer to this call comes after every cast
    // before it was taken.
    let count = me.call(ECHO, COUNT, PATIENCE).map_err(err)?;
    let cast_time = started.elapsed();
    let received = u64::from_le_bytes(count.try_into().map_err(|_| "bad count reply")?);
    if received != casts {
        return Err(format!("the callee received {received} of {casts} casts"));
    }
    me.cast(ECHO, STOP).map_err(err)?;
    Ok((call_time, cast_time))
}

/// Times `calls` 8-byte request/reply round trips over a Unix stream pair
/// with a pinned child.
fn uds_reqrep(calls: u64) -> Result<Duration, String> {
    let (mut ours, mut theirs) = UnixStream::pair().map_err(err)?;
    pin_to_cpu(0)?;
    let child = fork_pinned(1, || {
        let mut buf = [0u8; 8];
        loop {
            if theirs.read_exact(&mut buf).is_err() {
                return 8;
            }
            if buf == UDS_STOP {
                return 0;
            }
            if theirs.write_all(&buf).is_err() {
                return 9;
            }
        }
    })?;
    drop(theirs);
    let result = uds_drive(&mut ours, calls);
    // The child holds its own copy of our end, so closing ours is no EOF
    // for it: tell it to stop.
    let _ = ours.write_all(&UDS_STOP);
    let reaped = reap(child);
    let time = result?;
    reaped?;
    Ok(time)
}

fn uds_drive(stream: &mut UnixStream, calls: u64) -> Result<Duration, String> {
    let mut round = |i: u64| -> Result<(), String> {
        let request = i.to_le_bytes();
        stream.write_all(&request).map_err(err)?;
        let mut reply = [0u8; 8];
        stream.read_exact(&mut reply).map_err(err)?;
        if reply != request {
            return Err(format!("round {i}: wrong reply"));
        }
        Ok(())
    };
    for i in 0..calls / 10 {
        round(i)?;
    }
    let started = Instant::now();
    for i in 0..calls {
        round(i)?;
    }
    Ok(started.elapsed())
}
