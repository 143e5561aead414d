//! Confinement for weave processes: privilege drop, capabilities, landlock, seccomp.
