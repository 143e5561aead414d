//! Who may talk to the broker, decided from `SO_PEERCRED` alone, before a
//! single byte of the connection is read.

use weave_common::accounts;
use weave_common::proto::{Mode, Role};

use crate::syscalls::PeerCredentials;

/// Why the role table could not be built at startup.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot look up group {name:?}: {source}")]
    GroupLookup {
        name: String,
        source: std::io::Error,
    },
}

/// The rules that map credentials to a role.
#[derive(Debug, Clone)]
pub struct Authorizer {
    mode: Mode,
    /// User mode: the only uid allowed in (as admin).
    owner_uid: u32,
    client_gid: Option<u32>,
    admin_gid: Option<u32>,
}

impl Authorizer {
    /// User mode: only `owner_uid` may connect, and it is admin.
    pub fn user_mode(owner_uid: u32) -> Self {
        Self {
            mode: Mode::User,
            owner_uid,
            client_gid: None,
            admin_gid: None,
        }
    }

    /// System mode: root and `admin_group` are admins, `client_group` clients.
    /// A group that does not exist grants nobody anything.
    pub fn system_mode(client_group: &str, admin_group: &str) -> Result<Self, AuthError> {
        let lookup = |name: &str| {
            accounts::group_id_by_name(name).map_err(|source| AuthError::GroupLookup {
                name: name.to_owned(),
                source,
            })
        };
        Ok(Self {
            mode: Mode::System,
            owner_uid: 0,
            client_gid: lookup(client_group)?,
            admin_gid: lookup(admin_group)?,
        })
    }

    /// The role the peer gets, or `None`: close without a byte.
    pub fn role_of(&self, peer: &PeerCredentials) -> Option<Role> {
        match self.mode {
            Mode::User => (peer.uid == self.owner_uid).then_some(Role::Admin),
            Mode::System => {
                if peer.uid == 0 {
                    return Some(Role::Admin);
                }
                let groups = peer_groups(peer);
                let member = |gid: Option<u32>| gid.is_some_and(|gid| groups.contains(&gid));
                if member(self.admin_gid) {
                    Some(Role::Admin)
                } else if member(self.client_gid) {
                    Some(Role::Client)
                } else {
                    None
                }
            }
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }
}

/// The peer's primary gid from the kernel plus the uid's groups from the group
/// database. A uid without a passwd entry gets only its primary gid.
fn peer_groups(peer: &PeerCredentials) -> Vec<u32> {
    let mut groups = vec![peer.gid];
    if let Ok(Some(user)) = accounts::user_by_uid(peer.uid) {
        if let Ok(list) = accounts::groups_of_user(&user.name, user.gid) {
            groups.extend(list);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32) -> PeerCredentials {
        PeerCredentials { pid: 1, uid, gid }
    }

    #[test]
    fn user_mode_admits_only_the_owner() {
        let auth = Authorizer::user_mode(1000);
        assert_eq!(auth.role_of(&peer(1000, 1000)), Some(Role::Admin));
        assert_eq!(auth.role_of(&peer(1001, 1000)), None);
        assert_eq!(auth.role_of(&peer(0, 0)), None);
    }

    #[test]
    fn system_mode_uses_primary_gid_and_root() {
        let auth = Authorizer {
            mode: Mode::System,
            owner_uid: 0,
            client_gid: Some(4242),
            admin_gid: Some(4343),
        };
        // Uids without passwd entries: only the kernel's primary gid counts.
        assert_eq!(auth.role_of(&peer(0, 0)), Some(Role::Admin));
        assert_eq!(auth.role_of(&peer(987_654, 4242)), Some(Role::Client));
        assert_eq!(auth.role_of(&peer(987_654, 4343)), Some(Role::Admin));
        assert_eq!(auth.role_of(&peer(987_654, 1)), None);
    }
}
