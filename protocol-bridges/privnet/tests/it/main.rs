//! Integration tests of the private network port.

mod equipment;
mod in_process;
mod network_namespaces;
