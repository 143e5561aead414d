//! Connection shares (DESIGN.md invariant 13): every uid gets its own share
//! of the connections the broker serves at once, and room is kept for
//! admins, so one client — a compromised web app opening connections and
//! never saying Hello — cannot shut out the others.
//!
//! Pure bookkeeping: [`ConnectionShares::admit`] decides, the returned
//! [`ConnectionSlot`] gives the place back when dropped.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use weave_common::config::Limits;
use weave_common::proto::Role;

/// Why a connection is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// This uid already holds `max_connections_per_uid` connections.
    UidShare,
    /// Every place open to clients is taken (the rest is kept for admins).
    ClientPlaces,
    /// Every place is taken, the admins' reserve included.
    Full,
}

impl Refusal {
    /// The audit word.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UidShare => "uid_share",
            Refusal::ClientPlaces => "client_places",
            Refusal::Full => "full",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

/// The shares, from `[limits]`.
#[derive(Debug, Clone)]
pub struct ConnectionShares {
    max_total: usize,
    per_uid: usize,
    admin_reserved: usize,
    counts: Arc<Mutex<Counts>>,
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    // Every update is a pair of plain integer stores; a poisoned lock still
    // holds consistent counts.
    counts.lock().unwrap_or_else(|p| p.into_inner())
}

impl ConnectionShares {
    pub fn new(limits: &Limits) -> Self {
        Self {
            max_total: limits.max_connections as usize,
            per_uid: limits.max_connections_per_uid as usize,
            admin_reserved: limits.admin_reserved_connections as usize,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// A place for a connection of `uid` with `role`, or why not. Admins
    /// may use every place (the reserve is theirs) and have no per-uid
    /// share: there are few of them and they are trusted; clients share
    /// `max_total - admin_reserved` places, at most `per_uid` each.
    pub fn admit(&self, uid: u32, role: Role) -> Result<ConnectionSlot, Refusal> {
        let mut counts = lock(&self.counts);
        let held = counts.per_uid.get(&uid).copied().unwrap_or(0);
        match role {
            Role::Admin => {
                if counts.total >= self.max_total {
                    return Err(Refusal::Full);
                }
            }
            Role::Client => {
                if held >= self.per_uid {
                    return Err(Refusal::UidShare);
                }
                if counts.total >= self.max_total.saturating_sub(self.admin_reserved) {
                    return Err(if counts.total >= self.max_total {
                        Refusal::Full
                    } else {
                        Refusal::ClientPlaces
                    });
                }
            }
        }
        counts.total += 1;
        *counts.per_uid.entry(uid).or_insert(0) += 1;
        Ok(ConnectionSlot {
            uid,
            counts: Arc::clone(&self.counts),
        })
    }

    /// Connections served now (all uids).
    pub fn total(&self) -> usize {
        lock(&self.counts).total
    }
}

/// One admitted connection; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    uid: u32,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.per_uid.get_mut(&self.uid) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.per_uid.remove(&self.uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(total: u32, per_uid: u32, reserved: u32) -> ConnectionShares {
        ConnectionShares::new(&Limits {
            max_connections: total,
            max_connections_per_uid: per_uid,
            admin_reserved_connections: reserved,
            ..Limits::default()
        })
    }

    #[test]
    fn one_uid_cannot_take_more_than_its_share() {
        let s = shares(10, 3, 2);
        let held: Vec<_> = (0..3)
            .map(|_| s.admit(1000, Role::Client).unwrap())
            .collect();
        assert_eq!(s.admit(1000, Role::Client).unwrap_err(), Refusal::UidShare);
        // Another client still gets in.
        let other = s.admit(1001, Role::Client).unwrap();
        drop(held);
        assert_eq!(s.total(), 1);
        // Places came back.
        let _again = s.admit(1000, Role::Client).unwrap();
        drop(other);
        assert_eq!(s.total(), 1);
    }

    #[test]
    fn the_reserve_is_kept_for_admins() {
        let s = shares(4, 4, 2);
        let _a = s.admit(1, Role::Client).unwrap();
        let _b = s.admit(2, Role::Client).unwrap();
        assert_eq!(s.admit(3, Role::Client).unwrap_err(), Refusal::ClientPlaces);
        let _admin1 = s.admit(0, Role::Admin).unwrap();
        let _admin2 = s.admit(0, Role::Admin).unwrap();
        assert_eq!(s.admit(0, Role::Admin).unwrap_err(), Refusal::Full);
        assert_eq!(s.admit(3, Role::Client).unwrap_err(), Refusal::Full);
    }

    #[test]
    fn defaults_leave_room_for_many_uids_and_the_admins() {
        let limits = Limits::default();
        let s = ConnectionShares::new(&limits);
        let mut held = Vec::new();
        while let Ok(slot) = s.admit(1000, Role::Client) {
            held.push(slot);
        }
        assert_eq!(held.len(), limits.max_connections_per_uid as usize);
        assert!(s.admit(1001, Role::Client).is_ok());
        assert!(s.admit(0, Role::Admin).is_ok());
    }
}
