//! Integration tests for warden-pluton-api: the clients against a real pluton server, and
//! mutual TLS (rustls, ring) where the client key stays in pluton.

mod client;
mod mutual_tls;
mod support;
