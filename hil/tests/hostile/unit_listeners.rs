//! Attacks on the unit's own listeners: status page, metrics, control socket, facade (issue #22 items 1, 2, 3, 4, 9).
