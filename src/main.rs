//! The `postmaster` command.
fn main() {}
