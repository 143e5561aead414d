//! The few libc calls the worker's start-up makes, each wrapped in a safe
//! function. All FFI of the serve module lives here.

use std::io;
use std::os::fd::RawFd;
use weave_common::syscall::check;

/// `fstat(fd)` → the file type bits (`S_IFMT` part of `st_mode`).
/// `EBADF` when the descriptor is not open.
pub fn file_type(fd: RawFd) -> io::Result<libc::mode_t> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable memory of exactly the size fstat fills; the
    // call takes no ownership of `fd`, which may even be closed (EBADF).
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised the whole struct.
    let st = unsafe { st.assume_init() };
    Ok(st.st_mode & libc::S_IFMT)
}

/// `fcntl(fd, F_GET_SEALS)`.
pub fn seals(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: plain fcntl query on a descriptor number; no memory passed.
    check(unsafe { libc::fcntl(fd, libc::F_GET_SEALS) })
}

/// Closes every descriptor from `first` upwards, so nothing the broker (or
/// whoever started us) leaked survives into the sandbox.
pub fn close_from(first: RawFd) -> io::Result<()> {
    let first =
        libc::c_uint::try_from(first).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: this runs at the very start of main, before anything in this
    // process owns a descriptor >= `first` (Rust's std opens none before
    // main).
    unsafe { weave_common::syscall::close_from(first) }
}

/// `malloc_trim(0)`: gives every whole free page inside glibc's heaps back
/// to the kernel (`MADV_DONTNEED`, in every arena, not only at the top of
/// the heap). A model's weights and a generation's activations are mostly
/// blocks below glibc's (raised) mmap threshold, so after they are freed
/// their pages stay resident until this runs. Returns whether any memory
/// was released.
pub fn release_free_heap() -> bool {
    // SAFETY: malloc_trim takes no pointer; it locks and walks glibc's own
    // arenas, which other threads may use meanwhile.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }

    #[test]
    fn freed_heap_blocks_stay_resident_until_released() {
        // 64 MiB in 64 KiB blocks (below glibc's mmap threshold, so they
        // come from this thread's arena), written so their pages are
        // backed; then every other block is freed. Each freed block lies
        // between two live ones, so free() can neither merge it into the
        // top of the heap nor trim it: its 32 MiB stay resident until
        // released.
        let mut blocks: Vec<Option<Vec<u8>>> = (0..1024)
            .map(|i| Some(vec![i as u8 | 1; 64 * 1024]))
            .collect();
        let filled = resident_kib();
        for block in blocks.iter_mut().skip(1).step_by(2) {
            *block = None;
        }
        let freed = resident_kib();
        assert!(
            release_free_heap(),
            "malloc_trim released nothing (resident {filled} kB filled, {freed} kB freed)"
        );
        let released = resident_kib();
        assert!(
            released + 16 * 1024 <= freed,
            "resident {filled} kB filled, {freed} kB freed, {released} kB released: \
             at least 16 MiB of the 32 freed should have gone back"
        );
        assert!(blocks
            .iter()
            .step_by(2)
            .all(|b| b.as_ref().is_some_and(|v| v[0] & 1 == 1)));
    }
}
