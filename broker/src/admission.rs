//! Bounded admission: global and per-owner queue depth, a per-uid token
//! bucket, queue deadlines and fair round-robin order across owners.
//!
//! Pure data structures driven by the scheduler under its lock; no threads,
//! no I/O, so every rule is unit-tested here.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Who a job belongs to: the caller's uid plus the optional end-user tag the
/// web app sent. Fairness rotates across owners.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub uid: u32,
    pub tag: Option<String>,
}

/// Why a job was not admitted; nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("the global queue is full")]
    QueueFull,
    #[error("this owner's queue is full")]
    OwnerQueueFull,
}

/// A queued item with its bookkeeping.
#[derive(Debug)]
pub struct Queued<T> {
    pub id: u64,
    pub owner: Owner,
    pub enqueued_at: Instant,
    /// The position last reported to the caller.
    pub reported_position: u32,
    pub item: T,
}

/// Queue with round-robin service across owners.
#[derive(Debug)]
pub struct AdmissionQueue<T> {
    max_total: usize,
    max_per_owner: usize,
    /// Owners with at least one queued item, in service order.
    rotation: VecDeque<Owner>,
    per_owner: HashMap<Owner, VecDeque<Queued<T>>>,
    total: usize,
}

impl<T> AdmissionQueue<T> {
    pub fn new(max_total: u32, max_per_owner: u32) -> Self {
        Self {
            max_total: max_total as usize,
            max_per_owner: max_per_owner as usize,
            rotation: VecDeque::new(),
            per_owner: HashMap::new(),
            total: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Checks whether one more job from `uid` would be admitted. Both limits
    /// count queued jobs plus the running ones (`running`: the owner's uid
    /// of each job a worker runs).
    pub fn check_room(&self, uid: u32, running: &[u32]) -> Result<(), AdmissionError> {
        if self.total + running.len() >= self.max_total {
            return Err(AdmissionError::QueueFull);
        }
        let queued: usize = self
            .per_owner
            .iter()
            .filter(|(owner, _)| owner.uid == uid)
            .map(|(_, queue)| queue.len())
            .sum();
        let running_own = running.iter().filter(|&&owner| owner == uid).count();
        if queued + running_own >= self.max_per_owner {
            return Err(AdmissionError::OwnerQueueFull);
        }
        Ok(())
    }

    /// Queues an item (after [`Self::check_room`]); returns its position
    /// (0 = next to run).
    pub fn push(&mut self, id: u64, owner: Owner, now: Instant, item: T) -> u32 {
        let queue = self.per_owner.entry(owner.clone()).or_default();
        if queue.is_empty() {
            self.rotation.push_back(owner.clone());
        }
        queue.push_back(Queued {
            id,
            owner,
            enqueued_at: now,
            reported_position: 0,
            item,
        });
        self.total += 1;
        let position = self.position_of(id).unwrap_or(0);
        if let Some(entry) = self.find_mut(id) {
            entry.reported_position = position;
        }
        position
    }

    /// Takes the next item in round-robin order.
    pub fn pop(&mut self) -> Option<Queued<T>> {
        let owner = self.rotation.pop_front()?;
        let queue = self.per_owner.get_mut(&owner)?;
        let entry = queue.pop_front();
        if queue.is_empty() {
            self.per_owner.remove(&owner);
        } else {
            self.rotation.push_back(owner);
        }
        if entry.is_some() {
            self.total -= 1;
        }
        entry
    }

    /// Takes one item by id to serve it out of turn (a worker pool runs
    /// the first job it can place, not always the head): like [`Self::pop`],
    /// its owner moves to the back of the rotation, so serving an owner
    /// early costs it its turn.
    pub fn take(&mut self, id: u64) -> Option<Queued<T>> {
        let entry = self.remove(id)?;
        if self.per_owner.contains_key(&entry.owner) {
            self.rotation.retain(|owner| *owner != entry.owner);
            self.rotation.push_back(entry.owner.clone());
        }
        Some(entry)
    }

    /// Removes one item by id.
    pub fn remove(&mut self, id: u64) -> Option<Queued<T>> {
        let owner = self
            .per_owner
            .iter()
            .find(|(_, queue)| queue.iter().any(|entry| entry.id == id))
            .map(|(owner, _)| owner.clone())?;
        let queue = self.per_owner.get_mut(&owner)?;
        let index = queue.iter().position(|entry| entry.id == id)?;
        let entry = queue.remove(index);
        if queue.is_empty() {
            self.per_owner.remove(&owner);
            self.rotation.retain(|queued_owner| *queued_owner != owner);
        }
        if entry.is_some() {
            self.total -= 1;
        }
        entry
    }

    /// Removes every item queued at or before `now - deadline`.
    pub fn expire(&mut self, now: Instant, deadline: Duration) -> Vec<Queued<T>> {
        let expired: Vec<u64> = self
            .iter()
            .filter(|entry| now.saturating_duration_since(entry.enqueued_at) >= deadline)
            .map(|entry| entry.id)
            .collect();
        expired
            .into_iter()
            .filter_map(|id| self.remove(id))
            .collect()
    }

    /// Removes everything (shutdown).
    pub fn drain_all(&mut self) -> Vec<Queued<T>> {
        let mut all = Vec::with_capacity(self.total);
        while let Some(entry) = self.pop() {
            all.push(entry);
        }
        all
    }

    /// The earliest enqueue time, for deadline wake-ups.
    pub fn oldest(&self) -> Option<Instant> {
        self.iter().map(|entry| entry.enqueued_at).min()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queued<T>> {
        self.per_owner.values().flat_map(|queue| queue.iter())
    }

    pub fn find_mut(&mut self, id: u64) -> Option<&mut Queued<T>> {
        self.per_owner
            .values_mut()
            .flat_map(|queue| queue.iter_mut())
            .find(|entry| entry.id == id)
    }

    /// Ids in the order they will be served.
    pub fn service_order(&self) -> Vec<u64> {
        let mut order = Vec::with_capacity(self.total);
        let mut round = 0;
        while order.len() < self.total {
            for owner in &self.rotation {
                if let Some(entry) = self.per_owner.get(owner).and_then(|queue| queue.get(round)) {
                    order.push(entry.id);
                }
            }
            round += 1;
        }
        order
    }

    pub fn position_of(&self, id: u64) -> Option<u32> {
        self.service_order()
            .iter()
            .position(|queued| *queued == id)
            .map(|index| u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// Items whose position changed since last reported, with the new
    /// position; marks them reported.
    pub fn take_position_changes(&mut self) -> Vec<(u64, u32)> {
        let order = self.service_order();
        let mut changes = Vec::new();
        for (index, id) in order.into_iter().enumerate() {
            let position = u32::try_from(index).unwrap_or(u32::MAX);
            if let Some(entry) = self.find_mut(id) {
                if entry.reported_position != position {
                    entry.reported_position = position;
                    changes.push((id, position));
                }
            }
        }
        changes
    }
}

/// Per-uid token buckets: `burst` tokens, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    burst: u32,
    buckets: HashMap<u32, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            buckets: HashMap::new(),
        }
    }

    fn refill_per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// Takes one token for `uid`, or says in how many ms one will be there.
    pub fn try_take(&mut self, uid: u32, now: Instant) -> Result<(), u32> {
        let rate = self.refill_per_second();
        let burst = f64::from(self.burst);
        let bucket = self.buckets.entry(uid).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_s = (1.0 - bucket.tokens) / rate;
        Err((wait_s * 1000.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32)
    }

    /// Forgets buckets that are full again, so idle uids cost no memory.
    pub fn forget_full(&mut self, now: Instant) {
        let rate = self.refill_per_second();
        let burst = f64::from(self.burst);
        self.buckets.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn owner(uid: u32, tag: &str) -> Owner {
        Owner {
            uid,
            tag: (!tag.is_empty()).then(|| tag.to_owned()),
        }
    }

    #[test]
    fn round_robin_interleaves_owners() {
        let now = Instant::now();
        let mut queue = AdmissionQueue::new(100, 100);
        for i in 0..3 {
            queue.push(i, owner(1, "a"), now, ());
        }
        for i in 10..13 {
            queue.push(i, owner(1, "b"), now, ());
        }
        queue.push(20, owner(2, ""), now, ());
        assert_eq!(queue.service_order(), vec![0, 10, 20, 1, 11, 2, 12]);
        assert_eq!(queue.position_of(20), Some(2));
        let popped: Vec<u64> = std::iter::from_fn(|| queue.pop().map(|e| e.id)).collect();
        assert_eq!(popped, vec![0, 10, 20, 1, 11, 2, 12]);
        assert!(queue.is_empty());
    }

    #[test]
    fn taking_out_of_turn_costs_the_owner_its_turn() {
        let now = Instant::now();
        let mut queue = AdmissionQueue::new(100, 100);
        for i in 0..2 {
            queue.push(i, owner(1, ""), now, ());
            queue.push(10 + i, owner(2, ""), now, ());
            queue.push(20 + i, owner(3, ""), now, ());
        }
        assert_eq!(queue.service_order(), vec![0, 10, 20, 1, 11, 21]);
        // Owner 3's job is served first: owner 3 goes to the back.
        assert_eq!(queue.take(20).map(|e| e.id), Some(20));
        assert_eq!(queue.service_order(), vec![0, 10, 21, 1, 11]);
        assert_eq!(queue.take(0).map(|e| e.id), Some(0));
        assert_eq!(queue.service_order(), vec![10, 21, 1, 11]);
        assert!(queue.take(99).is_none());
        // An owner whose last job is taken leaves the rotation.
        assert_eq!(queue.take(21).map(|e| e.id), Some(21));
        assert_eq!(queue.service_order(), vec![10, 1, 11]);
        assert_eq!(queue.len(), 3);
    }

    #[test]
    fn depth_limits_count_queued_and_running_per_uid() {
        let now = Instant::now();
        let mut queue = AdmissionQueue::new(5, 2);
        queue.push(1, owner(1, "a"), now, ());
        // Tags of one uid share its limit.
        assert_eq!(queue.check_room(1, &[]), Ok(()));
        queue.push(2, owner(1, "b"), now, ());
        assert_eq!(
            queue.check_room(1, &[]),
            Err(AdmissionError::OwnerQueueFull)
        );
        assert_eq!(queue.check_room(2, &[2]), Ok(()));
        queue.push(3, owner(2, ""), now, ());
        assert_eq!(
            queue.check_room(2, &[2]),
            Err(AdmissionError::OwnerQueueFull)
        );
        assert_eq!(queue.check_room(3, &[2]), Ok(()));
        queue.push(4, owner(3, ""), now, ());
        assert_eq!(queue.check_room(4, &[2]), Err(AdmissionError::QueueFull));
        assert_eq!(queue.check_room(4, &[]), Ok(()));
    }

    #[test]
    fn remove_and_positions_update() {
        let now = Instant::now();
        let mut queue = AdmissionQueue::new(10, 10);
        queue.push(1, owner(1, ""), now, ());
        queue.push(2, owner(1, ""), now, ());
        queue.push(3, owner(1, ""), now, ());
        assert!(queue.take_position_changes().is_empty());
        assert_eq!(queue.remove(1).unwrap().id, 1);
        assert_eq!(queue.take_position_changes(), vec![(2, 0), (3, 1)]);
        assert!(queue.remove(99).is_none());
        queue.remove(2);
        queue.remove(3);
        assert!(queue.rotation.is_empty() && queue.is_empty());
    }

    #[test]
    fn deadline_expires_old_items() {
        let start = Instant::now();
        let mut queue = AdmissionQueue::new(10, 10);
        queue.push(1, owner(1, ""), start, ());
        queue.push(2, owner(2, ""), start + Duration::from_secs(5), ());
        let expired = queue.expire(start + Duration::from_secs(10), Duration::from_secs(10));
        assert_eq!(expired.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn token_bucket_allows_burst_then_limits_then_refills() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(60, 3);
        for _ in 0..3 {
            limiter.try_take(7, start).unwrap();
        }
        let wait = limiter.try_take(7, start).unwrap_err();
        assert!((900..=1000).contains(&wait), "{wait}");
        // Another uid has its own bucket.
        limiter.try_take(8, start).unwrap();
        limiter.try_take(7, start + Duration::from_secs(1)).unwrap();
        assert!(limiter.try_take(7, start + Duration::from_secs(1)).is_err());
        limiter.forget_full(start + Duration::from_secs(100));
        assert!(limiter.buckets.is_empty());
    }
}
