#![doc = include_str!("../README.md")]

pub mod boot;
pub mod bridge_set;
pub mod commands;
pub mod compartments;
pub mod config;
pub mod control;
#[cfg(feature = "demo")]
pub mod demo;
pub mod failure_reports;
pub mod metrics;
pub mod runtime;
pub mod signals;
pub mod status_page;
pub mod twin;
pub mod updates;
