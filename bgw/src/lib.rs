//! The postmaster: registration, launching, supervision, named workers,
//! mailboxes, state machines and timers. Built in the bgw issues.
