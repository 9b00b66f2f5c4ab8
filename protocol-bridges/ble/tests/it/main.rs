//! Integration tests of the BLE bridge: against Bumble (ignored without it) and alone.

mod bumble;
mod emulated_sensor;
mod without_controller;
