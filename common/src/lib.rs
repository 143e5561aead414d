//! Shared ground of weave-compute: wire protocol, shm channel, config, validation.
//!
//! No heavy dependencies and no I/O policy: what to open, log or allow is
//! decided by the broker and the worker, not here.

pub mod accounts;
pub mod config;
pub mod model_files;
pub mod pin;
pub mod prompt;
pub mod proto;
pub mod shm;
pub mod strength;
pub mod syscall;
pub mod validate;
pub mod worker_proto;
