//! Every libc call the shm channel makes, each wrapped in a safe function.
//!
//! Keeping the FFI in one small file means the rest of the channel is safe
//! Rust over raw pointers it got from here, and an auditor reads the unsafe
//! surface in one sitting.

use crate::syscall::check;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

/// The seals a channel segment must carry: its size is frozen and nobody can
/// add or remove seals. `F_SEAL_WRITE` is deliberately absent: the writer
/// keeps writing through its shared mapping.
pub const REQUIRED_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Seals that would make the segment unusable as a ring (no shared writable
/// mapping possible).
pub const FORBIDDEN_SEALS: libc::c_int = libc::F_SEAL_WRITE | libc::F_SEAL_FUTURE_WRITE;

/// `memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING)`.
pub fn memfd_create_sealable(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the
    // call; the flags are constants the kernel documents.
    let fd = check(unsafe {
        libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: the kernel just returned this descriptor to us and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `ftruncate(fd, len)`.
pub fn set_len(fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: plain syscall on a descriptor we borrow for the call.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(())
}

/// `fcntl(fd, F_ADD_SEALS, seals)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed descriptor; no memory is passed.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
    Ok(())
}

/// `fcntl(fd, F_GET_SEALS)`; `EINVAL` means the file cannot carry seals
/// (not a memfd/shmem file).
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: plain syscall on a borrowed descriptor; no memory is passed.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// File size and type from `fstat`.
pub fn file_size_and_mode(fd: BorrowedFd<'_>) -> io::Result<(u64, libc::mode_t)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` points to writable memory of the size fstat expects.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat returned success, so it filled the whole struct.
    let st = unsafe { st.assume_init() };
    let size = u64::try_from(st.st_size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((size, st.st_mode))
}

/// A shared read-write mapping of a whole file; unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all access goes
// through raw pointers with explicit atomics or opaque copies, so moving the
// owner to another thread is fine.
unsafe impl Send for SharedMapping {}
// SAFETY: `&SharedMapping` only hands out raw pointers; every access through
// them is atomic or an opaque copy (see `copy_from_shared`).
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, 0)`.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: we ask the kernel for a fresh mapping at an address of its
        // choosing, so no existing Rust object is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok(Self { base, len })
    }

    pub fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Sets `[offset, len)` read-only (the reader's view of the peer's slots)
    /// or back to read-write in this process. `offset` must be page-aligned.
    pub fn protect_from(&self, offset: usize, writable: bool) -> io::Result<()> {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        if offset >= self.len {
            return Ok(());
        }
        // SAFETY: the range lies inside our own mapping; no Rust reference
        // into it exists (all access is through raw pointers), and callers
        // never write to it while it is read-only.
        check(unsafe {
            libc::mprotect(
                self.base.as_ptr().add(offset).cast(),
                self.len - offset,
                prot,
            )
        })?;
        Ok(())
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: base/len describe exactly the mapping created in `map`, and
        // the owner is being dropped, so nothing uses it afterwards.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    loop {
        // SAFETY: we pass a pointer to 8 readable bytes, as eventfd requires.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Counter saturated: the reader has plenty of wake-ups pending.
            Some(libc::EAGAIN) => return Ok(()),
            _ => return Err(err),
        }
    }
}

/// Resets an eventfd counter (non-blocking); returns whether it was set.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut value: u64 = 0;
    loop {
        // SAFETY: we pass a pointer to 8 writable bytes, as eventfd requires.
        let n = unsafe { libc::read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
        if n == 8 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// `poll` for readability; `Ok(false)` on timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    // Round sub-millisecond timeouts up so a short wait never becomes a spin.
    let mut millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    if millis == 0 && !timeout.is_zero() {
        millis = 1;
    }
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is one valid pollfd and we pass a count of 1.
        let n = unsafe { libc::poll(&mut pfd, 1, millis) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Duplicates `src` onto descriptor number `dst` without `FD_CLOEXEC`, so it
/// survives `exec`. Only async-signal-safe calls: usable in `pre_exec`.
pub fn dup_inheritable(src: RawFd, dst: RawFd) -> io::Result<()> {
    if src == dst {
        // SAFETY: plain fcntl on a descriptor number; no memory is passed.
        let flags = check(unsafe { libc::fcntl(src, libc::F_GETFD) })?;
        // SAFETY: as above.
        check(unsafe { libc::fcntl(src, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    } else {
        // SAFETY: dup2 only touches the descriptor table; `dst` is chosen by
        // the caller, who owns that number in the child being set up.
        check(unsafe { libc::dup2(src, dst) })?;
    }
    Ok(())
}

/// Copies `len` bytes out of memory another process may be writing at the
/// same time. The copy is opaque to the compiler (like a volatile access):
/// it cannot be split, repeated or assumed stable, and no Rust reference to
/// the shared bytes is ever formed.
///
/// # Safety
/// `src` must be valid for reads of `len` bytes (inside a live mapping) and
/// `dst` valid for writes of `len` bytes, not overlapping `src`.
pub unsafe fn copy_from_shared(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller guarantees both ranges are valid; `rep movsb`
    // copies exactly rcx bytes from rsi to rdi with the direction flag clear
    // (the ABI guarantees DF=0 on entry to asm).
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: the caller guarantees both ranges are valid for `len` bytes.
        unsafe { dst.add(i).write(src.add(i).read_volatile()) };
    }
}

/// Copies `len` bytes into shared memory (the writer's publish step), opaque
/// to the compiler like [`copy_from_shared`].
///
/// # Safety
/// `dst` must be valid for writes of `len` bytes (inside a live writable
/// mapping) and `src` valid for reads of `len` bytes, not overlapping.
pub unsafe fn copy_to_shared(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as in `copy_from_shared`, with the caller's guarantees.
    unsafe {
        std::arch::asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rsi") src => _,
            inout("rdi") dst => _,
            options(nostack, preserves_flags)
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    for i in 0..len {
        // SAFETY: the caller guarantees both ranges are valid for `len` bytes.
        unsafe { dst.add(i).write_volatile(src.add(i).read()) };
    }
}
