//! Attacks on the fleet's MQTT broker and device identity (issue #22 items 1, 6, 7).
