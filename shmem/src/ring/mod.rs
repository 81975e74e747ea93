//! Lock-free rings in shared memory (built in the rings issue).
