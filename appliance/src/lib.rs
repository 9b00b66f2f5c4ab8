#![doc = include_str!("../README.md")]

pub mod commands;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod metrics;
pub mod runtime;
pub mod signals;
pub mod status_page;
pub mod twin;
