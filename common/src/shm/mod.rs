//! The broker↔worker channel: encrypted, CRC-fenced messages in sealed
//! shared memory (DESIGN.md invariant 8).
//!
//! One [`SealedSegment`] per direction, created by the broker as a sealed
//! memfd and passed to the worker by fd; the worker checks size and seals
//! ([`SealedSegment::from_fd`]) before mapping. Each segment holds a
//! single-producer single-consumer ring of fixed-size slots ([`Writer`],
//! [`Reader`]); a message never spans slots, so the slot size bounds the
//! largest message (up to 32 MiB, see [`RingGeometry`]). Every message is
//! sealed with XChaCha20-Poly1305 under a fresh random nonce and the
//! segment's [`ChannelKey`]; the slot header is fenced by a seqlock version
//! and a CRC32C ([`slot`] documents the byte layout and the AAD). An eventfd
//! [`Doorbell`] wakes the reader; it carries no data.
//!
//! Typical set-up in the broker:
//!
//! ```no_run
//! use std::time::Duration;
//! use weave_common::shm::*;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let geometry = RingGeometry::default();
//! let key = ChannelKey::generate(1)?;
//! let segment = SealedSegment::create(SegmentId(1), Direction::BrokerToWorker, geometry)?;
//! let bell = Doorbell::new()?;
//! // ... dup segment.fd() and bell.fd() onto fixed numbers in the worker,
//! // send key.expose_secret(), the id and the geometry over the start-up pipe ...
//! let mut to_worker = Writer::new(segment, bell, &key);
//! to_worker.send(1, b"hello", Duration::from_secs(1))?;
//! # Ok(()) }
//! ```
//!
//! Encryption does not replace validation: the worker holds its own key, so
//! whatever the broker decodes from it is still untrusted input.

mod doorbell;
mod key;
mod ring;
mod segment;
pub mod slot;
mod syscalls;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

pub use doorbell::{Doorbell, DoorbellError};
pub use key::{ChannelKey, KeyError, KEY_LEN};
pub use ring::{ChannelError, ChannelStats, EndpointInfo, EndpointRole, Message, Reader, Writer};
pub use segment::{
    Direction, RingGeometry, SealedSegment, SegmentError, SegmentId, CONTROL_PAGE_LEN,
    MAX_SLOT_COUNT, MAX_SLOT_SIZE, MIN_SLOT_SIZE,
};

/// Makes `fd` appear as descriptor number `target` in a child after `exec`
/// (without close-on-exec). Only async-signal-safe calls, so it is meant for
/// `std::os::unix::process::CommandExt::pre_exec` in the broker's spawn.
pub fn inherit_fd_as(fd: std::os::fd::RawFd, target: std::os::fd::RawFd) -> std::io::Result<()> {
    syscalls::dup_inheritable(fd, target)
}
