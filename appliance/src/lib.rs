#![doc = include_str!("../README.md")]

pub mod commands;
pub mod config;
pub mod metrics;
#[cfg(feature = "demo")]
pub mod demo;
pub mod runtime;
pub mod signals;
pub mod status_page;
pub mod twin;
