//! weave-broker as a library: the parts the daemon binary and the
//! cross-process tests share.

pub mod supervisor;
