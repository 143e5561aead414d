//! Per-segment channel keys.
#![forbid(unsafe_code)]

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a channel key in bytes (256 bits).
pub const KEY_LEN: usize = 32;

/// Errors creating a key.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("the OS random number generator failed ({0}); check that getrandom(2) or /dev/urandom is available to this process")]
    Rng(getrandom::Error),
}

/// A 256-bit XChaCha20-Poly1305 key for one segment, with the key-generation
/// number it belongs to. Rotation means a fresh key and a higher generation;
/// the generation is bound into every message's AAD, so a message sealed
/// under an old generation never opens under a new one.
///
/// The bytes are wiped on drop and never printed: `Debug` shows
/// `ChannelKey(<redacted>)`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChannelKey {
    bytes: [u8; KEY_LEN],
    #[zeroize(skip)]
    generation: u64,
}

impl ChannelKey {
    /// A fresh key from the OS RNG.
    pub fn generate(generation: u64) -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::getrandom(&mut bytes).map_err(KeyError::Rng)?;
        Ok(Self { bytes, generation })
    }

    /// Rebuilds a key received from the broker (e.g. over the start-up pipe).
    /// The caller should wipe its own copy of `bytes` afterwards.
    pub fn from_bytes(bytes: [u8; KEY_LEN], generation: u64) -> Self {
        Self { bytes, generation }
    }

    /// The next key for rotation: fresh bytes, generation + 1.
    pub fn rotate(&self) -> Result<Self, KeyError> {
        Self::generate(self.generation.wrapping_add(1))
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The raw key, only to hand it to the peer process at start-up. Never
    /// log or persist it.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChannelKey(<redacted>)")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_key_bytes() {
        let key = ChannelKey::from_bytes([0xAB; KEY_LEN], 7);
        let shown = format!("{key:?} {key:#?}");
        assert_eq!(format!("{key:?}"), "ChannelKey(<redacted>)");
        assert!(!shown.to_lowercase().contains("ab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn generated_keys_differ_and_rotation_bumps_generation() {
        let a = ChannelKey::generate(1).unwrap();
        let b = a.rotate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(b.generation(), 2);
    }

    #[test]
    fn zeroize_wipes_bytes() {
        let mut key = ChannelKey::from_bytes([0x5A; KEY_LEN], 1);
        key.zeroize();
        assert_eq!(key.expose_secret(), &[0u8; KEY_LEN]);
    }
}
