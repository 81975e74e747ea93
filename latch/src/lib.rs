//! A process-shared latch on a shared futex, with postmaster-death
//! wake-ups. Built in the latch issue; this crate exists so the workspace
//! has its final shape from the start.
