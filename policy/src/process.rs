//! What the kernel says about this process: `/proc/self/status` and
//! `/proc/self/task`. Verification reads these instead of trusting the
//! return values of the calls that were supposed to change them.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

/// Errors reading the process's own status.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot read {path}: {source}; is /proc mounted?")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("/proc/self/status has no readable `{field}` line; this kernel is too old or /proc is not procfs")]
    MissingField { field: &'static str },
}

/// The confinement-related lines of `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessStatus {
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    /// 0 = off, 1 = strict, 2 = filter.
    pub seccomp_mode: u8,
    /// Number of stacked seccomp filters (0 where the kernel does not say).
    pub seccomp_filters: u32,
}

impl ProcessStatus {
    /// Reads `/proc/self/status` now.
    pub fn current() -> Result<Self, ProcessError> {
        let text =
            std::fs::read_to_string("/proc/self/status").map_err(|source| ProcessError::Read {
                path: "/proc/self/status",
                source,
            })?;
        Self::parse(&text)
    }

    /// Parses the text of a `/proc/<pid>/status` file.
    pub fn parse(text: &str) -> Result<Self, ProcessError> {
        let field = |name: &'static str| -> Result<&str, ProcessError> {
            text.lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    (key == name).then(|| value.trim())
                })
                .ok_or(ProcessError::MissingField { field: name })
        };
        let hex = |name: &'static str| -> Result<u64, ProcessError> {
            u64::from_str_radix(field(name)?, 16)
                .map_err(|_| ProcessError::MissingField { field: name })
        };
        let dec = |name: &'static str| -> Result<u32, ProcessError> {
            field(name)?
                .parse()
                .map_err(|_| ProcessError::MissingField { field: name })
        };
        Ok(Self {
            cap_inheritable: hex("CapInh")?,
            cap_permitted: hex("CapPrm")?,
            cap_effective: hex("CapEff")?,
            cap_bounding: hex("CapBnd")?,
            cap_ambient: hex("CapAmb")?,
            no_new_privs: dec("NoNewPrivs")? == 1,
            seccomp_mode: u8::try_from(dec("Seccomp")?).unwrap_or(u8::MAX),
            seccomp_filters: dec("Seccomp_filters").unwrap_or(0),
        })
    }

    /// True when the four sets a process can use or pass on (effective,
    /// permitted, inheritable, ambient) are empty. The bounding set only
    /// limits what could be gained later, and an unprivileged process
    /// cannot clear it (user mode keeps it).
    pub fn held_capabilities_empty(&self) -> bool {
        self.cap_inheritable == 0
            && self.cap_permitted == 0
            && self.cap_effective == 0
            && self.cap_ambient == 0
    }

    /// True when all five capability sets are empty.
    pub fn capabilities_empty(&self) -> bool {
        self.cap_inheritable == 0
            && self.cap_permitted == 0
            && self.cap_effective == 0
            && self.cap_bounding == 0
            && self.cap_ambient == 0
    }
}

/// Number of threads of this process (entries in `/proc/self/task`).
pub fn thread_count() -> Result<usize, ProcessError> {
    let dir = Path::new("/proc/self/task");
    let entries = std::fs::read_dir(dir).map_err(|source| ProcessError::Read {
        path: "/proc/self/task",
        source,
    })?;
    Ok(entries.filter(|e| e.is_ok()).count())
}

/// The folders of the shared objects this process has mapped executable
/// (`/proc/self/maps`): where the dynamic loader found libtorch and the CUDA
/// libraries, so the libraries they `dlopen` later from the same folders
/// (cuDNN's engine libraries, NVRTC) stay readable under Landlock.
pub fn mapped_library_dirs() -> Result<Vec<PathBuf>, ProcessError> {
    let text = std::fs::read_to_string("/proc/self/maps").map_err(|source| ProcessError::Read {
        path: "/proc/self/maps",
        source,
    })?;
    Ok(parse_mapped_library_dirs(&text))
}

/// [`mapped_library_dirs`] on the text of a `maps` file: executable,
/// file-backed mappings of `*.so*` files; sorted, without duplicates.
pub fn parse_mapped_library_dirs(maps: &str) -> Vec<PathBuf> {
    let mut dirs = BTreeSet::new();
    for line in maps.lines() {
        // address perms offset dev inode [path]; the path may hold spaces.
        let mut fields = line.splitn(6, ' ');
        let perms = fields.nth(1).unwrap_or("");
        let path = fields.nth(3).unwrap_or("").trim_start();
        let file = Path::new(path);
        let is_library = file
            .file_name()
            .is_some_and(|name| name.to_string_lossy().contains(".so"));
        if perms.contains('x') && file.is_absolute() && is_library {
            if let Some(dir) = file.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
    }
    dirs.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n\
CapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\nCapAmb:\t0000000000000000\n\
NoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n";

    #[test]
    fn parses_status_lines() {
        let s = ProcessStatus::parse(SAMPLE).unwrap();
        assert_eq!(s.cap_permitted, 0x1fffeffffff);
        assert_eq!(s.cap_inheritable, 0);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp_mode, 2);
        assert_eq!(s.seccomp_filters, 3);
        assert!(!s.capabilities_empty());
    }

    #[test]
    fn a_user_mode_process_holds_nothing_but_keeps_its_bounding_set() {
        let text = SAMPLE
            .replace("CapPrm:\t000001fffeffffff", "CapPrm:\t0000000000000000")
            .replace("CapEff:\t000001fffeffffff", "CapEff:\t0000000000000000");
        let s = ProcessStatus::parse(&text).unwrap();
        assert!(s.held_capabilities_empty());
        assert!(!s.capabilities_empty());
        assert!(!ProcessStatus::parse(SAMPLE)
            .unwrap()
            .held_capabilities_empty());
    }

    #[test]
    fn missing_field_is_an_error_not_zero() {
        let text = SAMPLE.replace("CapBnd", "Nope");
        assert!(matches!(
            ProcessStatus::parse(&text),
            Err(ProcessError::MissingField { field: "CapBnd" })
        ));
    }

    #[test]
    fn library_dirs_are_those_of_executable_shared_objects() {
        let maps = "\
55d0c0a00000-55d0c0a20000 r-xp 00000000 fd:00 11 /usr/bin/weave-worker
7f0000000000-7f0000100000 r--p 00000000 fd:00 12 /opt/torch/lib/libtorch_cpu.so
7f0000100000-7f0000900000 r-xp 00100000 fd:00 12 /opt/torch/lib/libtorch_cpu.so
7f0000900000-7f0000a00000 r-xp 00000000 fd:00 13 /opt/nvidia/cudnn/lib/libcudnn.so.9
7f0000a00000-7f0000b00000 r-xp 00000000 fd:00 14 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000b00000-7f0000c00000 rw-p 00000000 fd:00 15 /srv/models/unet.so.safetensors
7f0000c00000-7f0000d00000 r-xp 00000000 00:00 0 
7f0000d00000-7f0000e00000 r-xp 00000000 fd:00 16 /opt/with space/libx.so
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            parse_mapped_library_dirs(maps),
            [
                "/opt/nvidia/cudnn/lib",
                "/opt/torch/lib",
                "/opt/with space",
                "/usr/lib/x86_64-linux-gnu"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn own_library_dirs_include_libc() {
        let dirs = mapped_library_dirs().unwrap();
        assert!(
            dirs.iter().any(|d| d.join("libc.so.6").exists()),
            "{dirs:?}"
        );
    }

    #[test]
    fn reads_own_status() {
        let s = ProcessStatus::current().unwrap();
        assert!(s.seccomp_mode <= 2);
        assert!(thread_count().unwrap() >= 1);
    }
}
