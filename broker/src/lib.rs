#![cfg_attr(test, allow(clippy::unwrap_used))]
//! weave-broker: the only process callers reach. Authenticates callers with
//! `SO_PEERCRED`, validates and admits requests, schedules them onto the
//! sandboxed worker, encodes PNGs and writes the audit trail.

pub mod admission;
pub mod audit;
pub mod auth;
pub mod background_log;
pub mod boundary;
pub mod connections;
pub mod daemon;
pub mod gpu_env;
pub mod job_runner;
pub mod modes;
pub mod output;
pub mod placement;
pub mod proc_status;
pub mod scheduler;
pub mod server;
pub mod settings;
pub mod supervisor;
pub mod syscalls;
pub mod validation;
pub mod worker_setup;
