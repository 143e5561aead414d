//! The broker's confinement after setup (socket bound, config read):
//! privilege drop (system mode), empty capability sets, `no_new_privs`, not
//! dumpable. The broker's seccomp allowlist is drafted in
//! [`crate::seccomp::broker_filter`] but not applied yet.
#![forbid(unsafe_code)]

use crate::capabilities::{self, CapabilityError};
use crate::privileges::{self, PrivilegeError, TargetUser};

/// Errors confining the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerConfineError {
    #[error("broker privilege drop: {0}")]
    Privileges(#[from] PrivilegeError),
    #[error("broker capabilities: {0}")]
    Capabilities(#[from] CapabilityError),
}

/// System mode: started as root, becomes `user` for good. In order: the
/// bounding set is cleared while root still has CAP_SETPCAP, then groups,
/// gid and uid are dropped and verified, then the remaining capability sets
/// are cleared and verified empty, then `no_new_privs` and not dumpable.
/// Must be called while single-threaded (before the async runtime starts).
pub fn drop_privileges(user: &str) -> Result<TargetUser, BrokerConfineError> {
    let target = TargetUser::lookup(user)?;
    privileges::require_single_threaded()?;
    capabilities::clear_bounding_set()?;
    privileges::drop_to(&target)?;
    harden()?;
    // All five sets, the bounding set included, must be empty now.
    capabilities::verify_empty()?;
    Ok(target)
}

/// User mode (or after [`drop_privileges`]): empty capability sets (all
/// five where CAP_SETPCAP is still held, else all but the bounding set, see
/// [`capabilities::clear_process_sets`]), `no_new_privs`, not dumpable.
/// Works unprivileged.
pub fn harden() -> Result<(), BrokerConfineError> {
    capabilities::clear_for_current_privileges()?;
    capabilities::set_no_new_privs()?;
    capabilities::set_not_dumpable()?;
    Ok(())
}
