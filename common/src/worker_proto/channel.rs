//! Both ends of the broker ↔ worker channel: [`crate::shm`] rings carrying
//! [`ToWorker`] and [`FromWorker`] messages, plus the key-rotation sequence
//! point both sides agree on.
#![forbid(unsafe_code)]

use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::shm::{
    ChannelKey, ChannelStats, Direction, Doorbell, KeyError, Reader, RingGeometry, SealedSegment,
    SegmentId, Writer,
};

use super::{
    decode_from_worker, decode_to_worker, DirectionKey, FromWorker, KeyBytes, SegmentGeometry,
    ToWorker, WorkerBootstrap, WorkerProtoError,
};

/// How long a sender waits for the peer to free a slot before it treats the
/// peer as stuck. Generous: a busy worker drains its inbox between steps.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors on the channel (transport or message level).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error(transparent)]
    Transport(#[from] crate::shm::ChannelError),
    #[error(transparent)]
    Message(#[from] WorkerProtoError),
    #[error("channel setup failed: {0}")]
    Segment(#[from] crate::shm::SegmentError),
    #[error("channel doorbell failed: {0}")]
    Doorbell(#[from] crate::shm::DoorbellError),
    #[error("could not draw a channel key: {0}")]
    Key(#[from] KeyError),
}

fn ring_geometry(g: &SegmentGeometry) -> RingGeometry {
    RingGeometry {
        slot_count: g.slot_count,
        slot_size: g.slot_size,
    }
}

fn channel_key(k: &DirectionKey) -> ChannelKey {
    ChannelKey::from_bytes(k.key.0, k.generation)
}

fn direction_key(k: &ChannelKey) -> DirectionKey {
    DirectionKey {
        key: KeyBytes(*k.expose_secret()),
        generation: k.generation(),
    }
}

/// Counters of both directions and the current key generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub key_generation: u64,
    pub sent: ChannelStats,
    pub received: ChannelStats,
    pub slots_out: u32,
    pub slot_size_out: u32,
    pub slots_in: u32,
    pub slot_size_in: u32,
    pub next_send_seq: u64,
    pub next_recv_seq: u64,
    /// Messages the peer says it consumed from our outgoing ring (its
    /// counter in shared memory: informational, never trusted).
    pub peer_consumed: u64,
    /// Messages the peer says it published in our incoming ring (same).
    pub peer_published: u64,
}

/// The broker's end: writes `ToWorker`, reads `FromWorker`, holds the keys.
pub struct BrokerEndpoint {
    writer: Writer,
    reader: Reader,
    /// The worker's handle on the worker → broker doorbell (fd 6).
    to_broker_bell: Doorbell,
    to_worker_key: ChannelKey,
    to_broker_key: ChannelKey,
    geometry_out: SegmentGeometry,
    geometry_in: SegmentGeometry,
}

impl std::fmt::Debug for BrokerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerEndpoint")
            .field("to_worker", &self.geometry_out)
            .field("to_broker", &self.geometry_in)
            .field("generation", &self.to_worker_key.generation())
            .finish_non_exhaustive()
    }
}

impl BrokerEndpoint {
    /// Fresh sealed segments, doorbells and OS-random keys (generation
    /// `generation` in both directions) for one worker start.
    pub fn create(
        to_worker: SegmentGeometry,
        to_broker: SegmentGeometry,
        generation: u64,
    ) -> Result<Self, ChannelError> {
        let out_seg = SealedSegment::create(
            SegmentId(to_worker.segment_id),
            Direction::BrokerToWorker,
            ring_geometry(&to_worker),
        )?;
        let in_seg = SealedSegment::create(
            SegmentId(to_broker.segment_id),
            Direction::WorkerToBroker,
            ring_geometry(&to_broker),
        )?;
        let to_worker_key = ChannelKey::generate(generation)?;
        let to_broker_key = ChannelKey::generate(generation)?;
        let writer = Writer::new(out_seg, Doorbell::new()?, &to_worker_key);
        let to_broker_bell = Doorbell::new()?;
        let reader = Reader::new(in_seg, to_broker_bell.try_clone()?, &to_broker_key)?;
        Ok(Self {
            writer,
            reader,
            to_broker_bell,
            to_worker_key,
            to_broker_key,
            geometry_out: to_worker,
            geometry_in: to_broker,
        })
    }

    /// The four descriptors the worker inherits as fds 3, 4, 5, 6.
    pub fn worker_fds(&self) -> [BorrowedFd<'_>; 4] {
        [
            self.writer.segment().fd(),
            self.reader.segment().fd(),
            self.writer.doorbell().fd(),
            self.to_broker_bell.fd(),
        ]
    }

    pub fn to_worker_geometry(&self) -> SegmentGeometry {
        self.geometry_out
    }

    pub fn to_broker_geometry(&self) -> SegmentGeometry {
        self.geometry_in
    }

    /// Copies of the current keys for the bootstrap (zeroized on drop).
    pub fn keys_for_worker(&self) -> (DirectionKey, DirectionKey) {
        (
            direction_key(&self.to_worker_key),
            direction_key(&self.to_broker_key),
        )
    }

    pub fn send(&mut self, msg: &ToWorker) -> Result<(), ChannelError> {
        self.writer.send_postcard(msg.kind(), msg, SEND_TIMEOUT)?;
        Ok(())
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<FromWorker>, ChannelError> {
        match self.reader.recv_timeout(timeout) {
            Ok(m) => Ok(Some(decode_from_worker(m.kind, m.payload)?)),
            Err(crate::shm::ChannelError::Timeout(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends `Rekey` with fresh keys under the current ones, then switches
    /// both directions. The caller must then read `RekeyAck` (the worker's
    /// first message under the new keys) before anything else.
    pub fn rotate_keys(&mut self) -> Result<u64, ChannelError> {
        let next_out = self.to_worker_key.rotate()?;
        let next_in = self.to_broker_key.rotate()?;
        self.send(&ToWorker::Rekey {
            to_worker: direction_key(&next_out),
            to_broker: direction_key(&next_in),
        })?;
        self.writer.rotate(&next_out);
        self.reader.rotate(&next_in);
        self.to_worker_key = next_out;
        self.to_broker_key = next_in;
        Ok(self.to_worker_key.generation())
    }

    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            key_generation: self.to_worker_key.generation(),
            sent: self.writer.stats(),
            received: self.reader.stats(),
            slots_out: self.geometry_out.slot_count,
            slot_size_out: self.geometry_out.slot_size,
            slots_in: self.geometry_in.slot_count,
            slot_size_in: self.geometry_in.slot_size,
            next_send_seq: self.writer.next_seq(),
            next_recv_seq: self.reader.next_seq(),
            peer_consumed: self
                .writer
                .segment()
                .tail()
                .load(std::sync::atomic::Ordering::Relaxed),
            peer_published: self
                .reader
                .segment()
                .head()
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// The worker's end: reads `ToWorker`, writes `FromWorker`.
pub struct WorkerEndpoint {
    reader: Reader,
    writer: Writer,
}

impl WorkerEndpoint {
    /// Adopts the inherited descriptors after checking them against the
    /// bootstrap (memfd size and seals before mapping, eventfd type).
    pub fn from_inherited(
        bootstrap: &WorkerBootstrap,
        to_worker_segment: OwnedFd,
        to_broker_segment: OwnedFd,
        to_worker_doorbell: OwnedFd,
        to_broker_doorbell: OwnedFd,
    ) -> Result<Self, ChannelError> {
        let in_seg = SealedSegment::from_fd(
            to_worker_segment,
            SegmentId(bootstrap.to_worker.segment_id),
            Direction::BrokerToWorker,
            ring_geometry(&bootstrap.to_worker),
        )?;
        let out_seg = SealedSegment::from_fd(
            to_broker_segment,
            SegmentId(bootstrap.to_broker.segment_id),
            Direction::WorkerToBroker,
            ring_geometry(&bootstrap.to_broker),
        )?;
        let reader = Reader::new(
            in_seg,
            Doorbell::from_fd(to_worker_doorbell)?,
            &channel_key(&bootstrap.to_worker_key),
        )?;
        let writer = Writer::new(
            out_seg,
            Doorbell::from_fd(to_broker_doorbell)?,
            &channel_key(&bootstrap.to_broker_key),
        );
        Ok(Self { reader, writer })
    }

    pub fn send(&mut self, msg: &FromWorker) -> Result<(), ChannelError> {
        self.writer.send_postcard(msg.kind(), msg, SEND_TIMEOUT)?;
        Ok(())
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<ToWorker>, ChannelError> {
        match self.reader.recv_timeout(timeout) {
            Ok(m) => Ok(Some(decode_to_worker(m.kind, m.payload)?)),
            Err(crate::shm::ChannelError::Timeout(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// A message if one is already published; never blocks.
    pub fn try_recv(&mut self) -> Result<Option<ToWorker>, ChannelError> {
        match self.reader.try_recv()? {
            Some(m) => Ok(Some(decode_to_worker(m.kind, m.payload)?)),
            None => Ok(None),
        }
    }

    /// Switches both directions to the keys a `Rekey` carried. Call right
    /// after reading the `Rekey`, then send `RekeyAck` under the new key.
    pub fn rekey(
        &mut self,
        to_worker: &DirectionKey,
        to_broker: &DirectionKey,
    ) -> Result<(), ChannelError> {
        self.reader.rotate(&channel_key(to_worker));
        self.writer.rotate(&channel_key(to_broker));
        Ok(())
    }
}
