//! A payload-free wake-up signal between writer and reader (an eventfd).
//!
//! The writer rings after publishing; the reader waits with a deadline. The
//! eventfd counter persists, so a ring that lands before the reader starts
//! waiting is not lost. It carries no data: everything the reader trusts
//! comes from the ring and is verified there.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use thiserror::Error;

use super::syscalls;

/// Errors from the doorbell.
#[derive(Debug, Error)]
pub enum DoorbellError {
    #[error("could not create the doorbell eventfd ({0}); check the process fd limit")]
    Create(std::io::Error),
    #[error("the received doorbell fd is not an eventfd; pass the eventfd the broker created")]
    NotEventfd,
    #[error(
        "could not inspect the received doorbell fd ({0}); adopt inherited fds before sandboxing"
    )]
    Inspect(std::io::Error),
    #[error("could not ring the doorbell ({0}); the peer's end may be gone")]
    Ring(std::io::Error),
    #[error("could not wait on the doorbell ({0})")]
    Wait(std::io::Error),
}

/// One direction's wake-up line.
#[derive(Debug)]
pub struct Doorbell {
    fd: OwnedFd,
}

impl Doorbell {
    /// A new non-blocking, close-on-exec eventfd.
    pub fn new() -> Result<Self, DoorbellError> {
        Ok(Self {
            fd: syscalls::eventfd().map_err(DoorbellError::Create)?,
        })
    }

    /// Adopts an inherited eventfd, checking that it is one.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, DoorbellError> {
        let path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ))
        .map_err(DoorbellError::Inspect)?;
        if path.as_os_str() != "anon_inode:[eventfd]" {
            return Err(DoorbellError::NotEventfd);
        }
        Ok(Self { fd })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Wakes the reader.
    pub fn ring(&self) -> Result<(), DoorbellError> {
        syscalls::eventfd_signal(self.fd.as_fd()).map_err(DoorbellError::Ring)
    }

    /// Waits until rung or `timeout` passes; `Ok(false)` on timeout. Consumes
    /// pending rings.
    pub fn wait(&self, timeout: Duration) -> Result<bool, DoorbellError> {
        if syscalls::eventfd_drain(self.fd.as_fd()).map_err(DoorbellError::Wait)? {
            return Ok(true);
        }
        if !syscalls::poll_readable(self.fd.as_fd(), timeout).map_err(DoorbellError::Wait)? {
            return Ok(false);
        }
        syscalls::eventfd_drain(self.fd.as_fd()).map_err(DoorbellError::Wait)?;
        Ok(true)
    }

    /// A second handle on the same eventfd (for the other end in tests, or
    /// to keep one while passing the other on).
    pub fn try_clone(&self) -> Result<Self, DoorbellError> {
        Ok(Self {
            fd: self.fd.try_clone().map_err(DoorbellError::Create)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn wait_times_out_then_sees_ring() {
        let bell = Doorbell::new().unwrap();
        let start = Instant::now();
        assert!(!bell.wait(Duration::from_millis(20)).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(15));
        bell.ring().unwrap();
        bell.ring().unwrap();
        assert!(bell.wait(Duration::from_millis(1000)).unwrap());
        // Both rings were consumed by one wait.
        assert!(!bell.wait(Duration::from_millis(1)).unwrap());
    }

    #[test]
    fn from_fd_refuses_non_eventfd() {
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let err = Doorbell::from_fd(OwnedFd::from(file)).unwrap_err();
        assert!(matches!(err, DoorbellError::NotEventfd), "{err}");
        let bell = Doorbell::new().unwrap();
        let fd = bell.fd().try_clone_to_owned().unwrap();
        Doorbell::from_fd(fd).unwrap();
    }
}
