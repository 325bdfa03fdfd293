//! Lease time: when each lease expires, by the leader's clock. Sans-IO: the caller passes
//! the time (milliseconds of a monotonic clock).
//!
//! Only the leader keeps deadlines. When one passes, the leader proposes a revoke through
//! the log ([`crate::MvccCommand::LeaseRevoke`]), so every replica deletes the lease's keys
//! at the same point of its history; no replica decides an expiry by its own clock. A new
//! leader gives every lease its full TTL again from the moment it leads (etcd's
//! `Promote`): leadership moving never makes a lease expire early, only later.

use std::collections::BTreeMap;

use crate::types::LeaseId;

/// Deadlines of the leases a leader tracks.
#[derive(Debug, Default)]
pub struct Lessor {
    /// (TTL in seconds, deadline in ms) per lease; empty unless leading.
    leases: BTreeMap<LeaseId, (i64, u64)>,
    leading: bool,
}

impl Lessor {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    fn deadline(now_ms: u64, ttl: i64) -> u64 {
        now_ms.saturating_add((ttl.max(0) as u64).saturating_mul(1000))
    }

    /// The leases with a deadline.
    pub fn tracked(&self) -> impl Iterator<Item = LeaseId> + '_ {
        self.leases.keys().copied()
    }

    /// This node became leader at `now_ms`; `leases` are the store's (id, granted TTL).
    pub fn promote(&mut self, leases: impl IntoIterator<Item = (LeaseId, i64)>, now_ms: u64) {
        self.leading = true;
        self.leases = leases
            .into_iter()
            .map(|(id, ttl)| (id, (ttl, Self::deadline(now_ms, ttl))))
            .collect();
    }

    /// This node no longer leads: it forgets every deadline.
    pub fn demote(&mut self) {
        self.leading = false;
        self.leases.clear();
    }

    /// A grant was applied (on the leader: its deadline starts now).
    pub fn granted(&mut self, id: LeaseId, ttl: i64, now_ms: u64) {
        if self.leading {
            self.leases.insert(id, (ttl, Self::deadline(now_ms, ttl)));
        }
    }

    /// A revoke was applied.
    pub fn revoked(&mut self, id: LeaseId) {
        self.leases.remove(&id);
    }

    /// A keep-alive: the lease's TTL, its deadline renewed; `None` if this node does not
    /// lead or knows no such lease (then the client tries the leader, or the lease is
    /// gone).
    pub fn keep_alive(&mut self, id: LeaseId, now_ms: u64) -> Option<i64> {
        let (ttl, deadline) = self.leases.get_mut(&id)?;
        if *deadline <= now_ms {
            return None; // expired: its revoke is on the way
        }
        *deadline = Self::deadline(now_ms, *ttl);
        Some(*ttl)
    }

    /// Seconds left (rounded up), or `None` as for [`Lessor::keep_alive`].
    pub fn remaining(&self, id: LeaseId, now_ms: u64) -> Option<i64> {
        let (_, deadline) = self.leases.get(&id)?;
        Some(deadline.saturating_sub(now_ms).div_ceil(1000) as i64)
    }

    /// The leases whose deadline has passed: the leader proposes their revokes.
    pub fn expired(&self, now_ms: u64) -> Vec<LeaseId> {
        self.leases
            .iter()
            .filter(|(_, (_, deadline))| *deadline <= now_ms)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leader_expires_leases_and_a_new_leader_gives_them_their_full_ttl() {
        let mut l = Lessor::new();
        l.granted(1, 5, 0);
        assert!(
            l.expired(1_000_000).is_empty(),
            "a follower expires nothing"
        );
        assert_eq!(l.keep_alive(1, 0), None);
        l.promote([(1, 5), (2, 1)], 10_000);
        assert_eq!(l.remaining(1, 10_000), Some(5));
        assert_eq!(l.expired(10_999), Vec::<LeaseId>::new());
        assert_eq!(l.expired(11_000), vec![2]);
        assert_eq!(
            l.keep_alive(1, 14_000),
            Some(5),
            "renewed at 14 s: until 19 s"
        );
        assert_eq!(l.expired(18_999), vec![2]);
        assert_eq!(l.expired(19_000), vec![1, 2]);
        assert_eq!(l.keep_alive(1, 19_000), None, "too late: expired");
        l.revoked(2);
        assert_eq!(l.expired(19_000), vec![1]);
        l.granted(3, 2, 19_000);
        assert_eq!(l.remaining(3, 19_500), Some(2), "rounded up");
        l.demote();
        assert!(l.expired(u64::MAX).is_empty() && !l.is_leading());
    }
}
