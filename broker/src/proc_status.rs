//! The worker's memory as the kernel counts it, from `/proc/PID/status`
//! (`VmRSS`: resident now, `VmHWM`: the most it ever had resident), for
//! `status` (like `ollama ps`). Read by the broker, which spawned the
//! worker and shares its uid: nothing the worker says is involved.
#![forbid(unsafe_code)]

use weave_common::proto::WorkerMemory;

/// Largest `/proc/PID/status` read (the file is about 1.5 KiB).
const MAX_STATUS_BYTES: u64 = 16 * 1024;

/// The memory of process `pid`, or `None` when it is gone or the file does
/// not say.
pub fn memory_of(pid: u32) -> Option<WorkerMemory> {
    use std::io::Read;
    let file = std::fs::File::open(format!("/proc/{pid}/status")).ok()?;
    let mut text = String::new();
    file.take(MAX_STATUS_BYTES).read_to_string(&mut text).ok()?;
    parse(&text)
}

/// `VmRSS` and `VmHWM` of a `/proc/PID/status` text, in bytes.
pub fn parse(status: &str) -> Option<WorkerMemory> {
    let kib = |key: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?;
            let number = value.trim().strip_suffix("kB")?.trim();
            number.parse::<u64>().ok()?.checked_mul(1024)
        })
    };
    Some(WorkerMemory {
        resident_bytes: kib("VmRSS")?,
        peak_bytes: kib("VmHWM")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_and_peak_come_from_vmrss_and_vmhwm() {
        let status = "Name:\tweave-worker\nVmPeak:\t  900000 kB\nVmHWM:\t  524288 kB\n\
                      VmRSS:\t  262144 kB\nThreads:\t1\n";
        assert_eq!(
            parse(status),
            Some(WorkerMemory {
                resident_bytes: 256 << 20,
                peak_bytes: 512 << 20,
            })
        );
        // A kernel thread has neither line.
        assert_eq!(parse("Name:\tkthreadd\nThreads:\t1\n"), None);
        assert_eq!(parse("VmRSS:\tlots kB\nVmHWM:\t1 kB\n"), None);
    }

    #[test]
    fn this_process_has_memory() {
        let own = memory_of(std::process::id()).expect("our own /proc status");
        assert!(own.resident_bytes > 0 && own.peak_bytes >= own.resident_bytes);
    }
}
