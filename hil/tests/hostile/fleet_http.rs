//! Attacks on the fleet's HTTP API (issue #22 items 1, 2, 4, 5, 8, 10).
