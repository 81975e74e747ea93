//! Segments across processes: fork visibility, attach from an unrelated
//! process, every way attach can refuse, reset, and who removes a name.
//!
//! The test harness is multi-threaded, so a forked child here does only
//! what is safe after `fork` in such a process (atomics on the segment,
//! glibc's fork-safe malloc at most) and leaves through `_exit`.
#![cfg(not(loom))]

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use nix::libc;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork, geteuid};
use shmem::sync::{AtomicU32, AtomicU64, Ordering};
use shmem::{AttachError, CreateError, HEADER_SIZE, HeaderSnapshot, Layout, RemoveError, Segment};

fn layout() -> Layout {
    Layout::builder()
        .region::<AtomicU64>("value")
        .array::<AtomicU32>("slots", 32)
        .build()
        .unwrap()
}

fn unique(label: &str) -> String {
    format!("t{}-{label}", std::process::id())
}

fn object_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/postmaster.{name}"))
}

/// Reads the header of segment `name` from its file, lets `edit` change it,
/// and writes it back: the way a crafted or damaged segment comes about.
fn edit_header(name: &str, edit: impl FnOnce(&mut HeaderSnapshot)) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(object_file(name))
        .unwrap();
    let mut bytes = [0u8; HEADER_SIZE];
    file.read_exact_at(&mut bytes, 0).unwrap();
    let mut header = HeaderSnapshot::parse(&bytes).unwrap();
    edit(&mut header);
    header.write_to(&mut bytes);
    file.write_all_at(&bytes, 0).unwrap();
}

/// Forks; the child runs `child` and `_exit`s with its return value; the
/// parent waits and returns the child's exit code.
fn in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `child`, which the callers keep to atomics,
    // system calls and glibc's fork-safe malloc, then `_exit`s without
    // running the parent's destructors or unwinding.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            let code = child();
            // SAFETY: _exit is async-signal-safe and never returns.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None).unwrap() {
            WaitStatus::Exited(_, code) => code,
            other => panic!("child did not exit normally: {other:?}"),
        },
    }
}

/// Regression test for the private-mapping trap (DESIGN.md fact 1): with a
/// copy-on-write mapping the parent would still read 0.
#[test]
fn forked_child_write_is_seen_by_parent() {
    let seg = Segment::create(&layout()).unwrap();
    let value = seg.region::<AtomicU64>("value").unwrap();
    let slots = seg.array::<AtomicU32>("slots").unwrap();
    let code = in_child(|| {
        value.store(0xfeed_f00d, Ordering::Release);
        slots[31].store(7, Ordering::Release);
        0
    });
    assert_eq!(code, 0);
    // Acquire: pairs with the child's Release stores (waitpid orders them
    // too; the annotation keeps the test honest if that changes).
    assert_eq!(value.load(Ordering::Acquire), 0xfeed_f00d);
    assert_eq!(slots[31].load(Ordering::Acquire), 7);
}

/// The child half of `unrelated_process_attaches_named_segment`, run in a
/// freshly exec'd copy of this test binary (not a fork). Without the
/// environment variable it is not a test and returns at once.
#[test]
fn child_role_attach_and_reply() {
    let Ok(name) = std::env::var("SHMEM_TEST_ATTACH") else {
        return;
    };
    let seg = Segment::attach(&name, &layout()).expect("child attach");
    let value = seg.region::<AtomicU64>("value").unwrap();
    assert_eq!(
        value.load(Ordering::Acquire),
        4242,
        "child sees the creator's write"
    );
    value.store(4343, Ordering::Release);
}

#[test]
fn unrelated_process_attaches_named_segment() {
    let name = unique("spawn");
    let seg = Segment::create_named(&name, &layout()).unwrap();
    let value = seg.region::<AtomicU64>("value").unwrap();
    value.store(4242, Ordering::Release);
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_role_attach_and_reply",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SHMEM_TEST_ATTACH", &name)
        .status()
        .unwrap();
    assert!(status.success(), "child failed: {status}");
    assert_eq!(
        value.load(Ordering::Acquire),
        4343,
        "creator sees the child's write"
    );
}

#[test]
fn attach_checks_name_existence_and_layout() {
    assert!(matches!(
        Segment::attach("has/slash", &layout()),
        Err(AttachError::InvalidName(_))
    ));
    assert!(matches!(
        Segment::attach(&unique("missing"), &layout()),
        Err(AttachError::NotFound { .. })
    ));
    let name = unique("layout");
    let _seg = Segment::create_named(&name, &layout()).unwrap();
    let other = Layout::builder()
        .region::<AtomicU64>("value")
        .array::<AtomicU32>("slots", 33)
        .build()
        .unwrap();
    match Segment::attach(&name, &other) {
        Err(AttachError::LayoutMismatch { found, expected }) => {
            assert_eq!(found, layout().hash());
            assert_eq!(expected, other.hash());
        }
        other => panic!("expected LayoutMismatch, got {other:?}"),
    }
    assert!(Segment::attach(&name, &layout()).is_ok());
}

#[test]
fn attach_rejects_crafted_headers() {
    let name = unique("crafted");
    let _seg = Segment::create_named(&name, &layout()).unwrap();
    let attach = || Segment::attach(&name, &layout());

    edit_header(&name, |h| h.magic = u64::from_ne_bytes(*b"notours!"));
    assert!(matches!(attach(), Err(AttachError::BadMagic { .. })));
    edit_header(&name, |h| h.magic = shmem::header::MAGIC);

    edit_header(&name, |h| h.format_version = 77);
    assert!(matches!(
        attach(),
        Err(AttachError::VersionMismatch { found: 77, .. })
    ));
    edit_header(&name, |h| h.format_version = shmem::FORMAT_VERSION);

    edit_header(&name, |h| h.state = shmem::header::STATE_RESETTING);
    assert!(matches!(attach(), Err(AttachError::NotReady { .. })));
    edit_header(&name, |h| h.state = shmem::header::STATE_READY);

    // A creator that has exited: a reaped child's pid, and its start time,
    // so that even a recycled pid does not pass for it.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let dead_start = shmem::liveness::start_time(dead_pid).unwrap_or(0);
    dead.wait().unwrap();
    let live = HeaderSnapshot::parse(&std::fs::read(object_file(&name)).unwrap()).unwrap();
    edit_header(&name, |h| {
        h.creator_pid = dead_pid;
        h.creator_start = dead_start;
    });
    assert!(matches!(attach(), Err(AttachError::Stale { pid, .. }) if pid == dead_pid));
    edit_header(&name, |h| {
        h.creator_pid = live.creator_pid;
        h.creator_start = live.creator_start;
    });

    // The object grew behind the header's back.
    let file = OpenOptions::new()
        .write(true)
        .open(object_file(&name))
        .unwrap();
    file.set_len(layout().size() as u64 + 4096).unwrap();
    assert!(matches!(attach(), Err(AttachError::SizeMismatch { .. })));
    file.set_len(layout().size() as u64).unwrap();

    assert!(
        attach().is_ok(),
        "restoring every field makes it attachable again"
    );
}

#[test]
fn attach_rejects_an_object_too_small_for_a_header() {
    let name = unique("small");
    let path = object_file(&name);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        f.set_len(10).unwrap();
    }
    let result = Segment::attach(&name, &layout());
    let removal = Segment::remove_stale(&name);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        result,
        Err(AttachError::TooSmall { size: 10, .. })
    ));
    assert!(
        matches!(removal, Err(RemoveError::Unrecognised { .. })),
        "an unrecognised object is left alone: {removal:?}"
    );
}

#[test]
fn attach_refuses_other_users_segments() {
    if !geteuid().is_root() {
        eprintln!("skipped: crafting another user's segment needs root");
        return;
    }
    let name = unique("foreign");
    let _seg = Segment::create_named(&name, &layout()).unwrap();
    const NOBODY: u32 = 65534;

    // Mode 0600 keeps another user out altogether.
    let code = in_child(|| {
        if nix::unistd::setuid(nix::unistd::Uid::from_raw(NOBODY)).is_err() {
            return 3;
        }
        match Segment::attach(&name, &layout()) {
            Err(AttachError::PermissionDenied { .. }) => 0,
            Ok(_) => 1,
            Err(_) => 2,
        }
    });
    assert_eq!(code, 0, "a different uid is denied by the mode");

    // An object that opens (root can open anything) but belongs to another
    // user is refused by the ownership check.
    std::os::unix::fs::chown(object_file(&name), Some(NOBODY), None).unwrap();
    match Segment::attach(&name, &layout()) {
        Err(AttachError::ForeignOwner { owner, ours, .. }) => {
            assert_eq!(owner, NOBODY);
            assert_eq!(ours, 0);
        }
        other => panic!("expected ForeignOwner, got {other:?}"),
    }
}

#[test]
fn reinit_zeroes_regions_and_bumps_generation() {
    let name = unique("reinit");
    let mut seg = Segment::create_named(&name, &layout()).unwrap();
    seg.region::<AtomicU64>("value")
        .unwrap()
        .store(99, Ordering::Relaxed);
    for s in seg.array::<AtomicU32>("slots").unwrap() {
        s.store(u32::MAX, Ordering::Relaxed);
    }
    let observer = Segment::attach(&name, &layout()).unwrap();
    assert_eq!(seg.generation(), 1);

    seg.reinit();

    assert_eq!(seg.generation(), 2);
    assert_eq!(
        observer.generation(),
        2,
        "other mappings see the new generation"
    );
    assert_eq!(
        observer
            .region::<AtomicU64>("value")
            .unwrap()
            .load(Ordering::Acquire),
        0
    );
    assert!(
        observer
            .array::<AtomicU32>("slots")
            .unwrap()
            .iter()
            .all(|s| s.load(Ordering::Acquire) == 0)
    );
    let header = observer.header_snapshot();
    header
        .validate(&layout(), seg.size() as u64)
        .expect("header rewritten intact");
    assert_eq!(header.creator_pid, std::process::id());
}

#[test]
fn creator_drop_removes_the_name_and_names_are_never_reused() {
    let name = unique("lifecycle");
    let seg = Segment::create_named(&name, &layout()).unwrap();
    assert!(object_file(&name).exists());
    assert!(matches!(
        Segment::create_named(&name, &layout()),
        Err(CreateError::AlreadyExists { .. })
    ));
    // An attacher's drop leaves the name alone.
    drop(Segment::attach(&name, &layout()).unwrap());
    assert!(object_file(&name).exists());
    drop(seg);
    assert!(!object_file(&name).exists());
    assert!(matches!(
        Segment::attach(&name, &layout()),
        Err(AttachError::NotFound { .. })
    ));
}

#[test]
fn a_forked_child_dropping_its_copy_keeps_the_name() {
    let name = unique("forkdrop");
    let seg = Segment::create_named(&name, &layout()).unwrap();
    // SAFETY: the child drops its copy of the segment (getpid, a string
    // format with glibc's fork-safe malloc, and shm_unlink if it were the
    // creator) and `_exit`s.
    match unsafe { fork() }.unwrap() {
        ForkResult::Child => {
            drop(seg);
            // SAFETY: async-signal-safe; does not return.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
        }
    }
    assert!(
        object_file(&name).exists(),
        "only the creating process removes the name"
    );
    assert!(Segment::attach(&name, &layout()).is_ok());
    drop(seg);
    assert!(
        !object_file(&name).exists(),
        "the creating process does remove it"
    );
}

#[test]
fn remove_stale_only_removes_dead_creators_segments() {
    let name = unique("stale");
    assert!(matches!(
        Segment::remove_stale(&name),
        Err(RemoveError::NotFound { .. })
    ));
    let seg = Segment::create_named(&name, &layout()).unwrap();
    assert!(matches!(
        Segment::remove_stale(&name),
        Err(RemoveError::CreatorAlive { pid, .. }) if pid == std::process::id()
    ));
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    edit_header(&name, |h| {
        h.creator_pid = dead_pid;
        h.creator_start = 0;
    });
    Segment::remove_stale(&name).unwrap();
    assert!(!object_file(&name).exists());
    // The creator's own drop now finds the name gone, which is fine.
    drop(seg);
}
