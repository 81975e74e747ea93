//! PGPROC-like process slots, lock-free free lists, index-linked lists and a
//! condition variable over latches. Built in the proclist issue.
