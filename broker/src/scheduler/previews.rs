//! Keeping previews from holding a job back (docs/BROKER.md, "Previews").
//!
//! Events reach a caller through an unbounded channel that the connection
//! thread drains into the socket. A caller that reads slowly blocks that
//! thread in `write`, and every event piles up behind it. Progress events
//! are a few bytes and the images must arrive anyway, but previews are
//! PNGs sent every few steps: the gate lets at most [`PREVIEW_BACKLOG`] of
//! them wait unwritten and drops the rest, counted. The scheduler thread
//! never waits on it, and `Image` and `Finished` never pass through it.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Previews one job may have queued for its connection but not yet
/// written to the socket; a newer one is dropped while this many wait.
pub const PREVIEW_BACKLOG: usize = 2;

/// Shared by the scheduler (which offers previews) and the connection
/// thread (which reports each one written).
#[derive(Debug, Default)]
pub struct PreviewGate {
    waiting: AtomicUsize,
    sent: AtomicU64,
    dropped: AtomicU64,
}

impl PreviewGate {
    /// Whether one more preview may be queued now; `false` counts it as
    /// dropped. A `true` must be followed by queueing it (and the
    /// connection calling [`Self::written`] once it is out).
    pub fn admit(&self) -> bool {
        let taken = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < PREVIEW_BACKLOG).then_some(waiting + 1)
            })
            .is_ok();
        if taken {
            self.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// An admitted preview that could not be queued after all (its PNG
    /// did not encode, or the connection is gone).
    pub fn withdraw(&self) {
        self.written();
        self.sent.fetch_sub(1, Ordering::Relaxed);
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// The connection wrote a preview (or gave up on it).
    pub fn written(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                waiting.checked_sub(1)
            });
    }

    /// Previews queued for the caller so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Previews dropped because the caller had not read the earlier ones.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_reader_loses_previews_beyond_the_backlog_and_they_are_counted() {
        let gate = PreviewGate::default();
        let admitted = (0..5).filter(|_| gate.admit()).count();
        assert_eq!(admitted, PREVIEW_BACKLOG);
        assert_eq!(gate.dropped(), 5 - PREVIEW_BACKLOG as u64);
        // The reader catches up: room again.
        gate.written();
        assert!(gate.admit());
        assert!(!gate.admit());
        assert_eq!(gate.sent(), PREVIEW_BACKLOG as u64 + 1);
    }

    #[test]
    fn a_withdrawn_preview_frees_its_place_and_counts_as_dropped() {
        let gate = PreviewGate::default();
        assert!(gate.admit());
        gate.withdraw();
        assert_eq!((gate.sent(), gate.dropped()), (0, 1));
        // More reports than previews never underflow.
        gate.written();
        assert!(gate.admit() && gate.admit() && !gate.admit());
    }
}
