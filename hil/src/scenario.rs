//! End-to-end scenarios (filled in below).
