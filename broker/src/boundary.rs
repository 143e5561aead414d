//! The broker's initialization-complete boundary (the seed's "clear
//! initialization complete code boundary"): everything that needs a
//! syscall the steady state does not — binding the socket, the privilege
//! drop, forking the worker spawner, loading name-service modules — is
//! done before [`initialization_complete`]; after it the broker runs under
//! `weave_policy::broker::broker_filter` on every thread.
#![forbid(unsafe_code)]

use weave_common::accounts;
use weave_policy::broker::BrokerConfineError;
use weave_policy::SeccompMode;

/// Why the boundary could not be crossed (the broker does not start).
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot install the broker's seccomp allowlist: {0}; the kernel needs CONFIG_SECCOMP_FILTER"
)]
pub struct BoundaryError(#[from] BrokerConfineError);

/// Loads what later lookups of a caller's groups need, then locks the
/// broker's syscalls (kill on anything outside the allowlist).
pub fn initialization_complete() -> Result<(), BoundaryError> {
    warm_name_service();
    weave_policy::broker::lock_syscalls(SeccompMode::Enforce)?;
    Ok(())
}

/// glibc loads the NSS modules of `passwd` and `group` (`files systemd`,
/// `sss`, ...) with dlopen at their first lookup: an executable mapping,
/// which the allowlist refuses. One lookup of each kind here loads them
/// while that is still allowed; the results do not matter.
fn warm_name_service() {
    let _ = accounts::user_by_uid(0);
    let _ = accounts::group_name_by_gid(0);
    let _ = accounts::groups_of_user("root", 0);
}
