//! The command line, as clap definitions. Completions and the man page are
//! generated from these same definitions (`sshmctl completions`, `sshmctl man`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use weave_common::proto::Scheduler;

/// Drive the weave-compute daemon: generate images, inspect and administer it.
///
/// Exit codes: 0 success; 1 error; 2 usage error; 3 cannot reach the daemon
/// or not allowed to; 4 busy or rate limited (retry later); 5 invalid
/// request; 6 the job failed (worker crashed, timed out); 7 config check
/// found problems; 130 cancelled with Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "sshmctl", version, propagate_version = true)]
pub struct Cli {
    /// Daemon socket. Default: $WEAVE_SOCKET, else the user-mode socket
    /// ($XDG_RUNTIME_DIR/weave/weave.sock) if it exists, else /run/weave/weave.sock.
    #[arg(long, global = true, env = "WEAVE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print machine-readable JSON (one object per line) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Show protocol-level details of errors (off by default).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon version and mode, loaded model, queue, worker and sandbox state.
    Status,
    /// Configured models: ids, kinds, loaded or not, defaults and bounds.
    Models,
    /// Generate images and write them as PNG files.
    Generate(GenerateArgs),
    /// Your jobs (admins: `--all` for everyone's).
    Jobs {
        /// List every user's jobs (admin).
        #[arg(long)]
        all: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id, as printed by `generate` or `jobs`.
        job: u64,
    },
    /// Load a model into the worker (admin).
    Load { model: String },
    /// Unload the current model (admin).
    Unload,
    /// Keep a model loaded past the idle timeout (admin).
    Pin { model: String },
    /// Let a pinned model be unloaded when idle again (admin).
    Unpin { model: String },
    /// Stop admitting new jobs; queued and running ones finish (admin).
    Drain,
    /// Admit new jobs again after `drain` (admin).
    Resume,
    /// Give the broker↔worker channel fresh keys (admin).
    RotateKeys,
    /// The shared-memory channel: segments, slots, sequence numbers, CRC and
    /// tag failures (admin).
    Segments,
    /// Models quarantined after crashing the worker (admin).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Offline checks of a config file (no daemon needed).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or with a folder write it and one page per
    /// subcommand there (`sshmctl.1`, `sshmctl-generate.1`, …).
    Man {
        /// Folder to write every page into.
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum QuarantineAction {
    /// Let a quarantined model be loaded again.
    Clear { model: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Parse the config, apply the daemon's permission checks, check every
    /// model path, and report every problem at once with its fix.
    Check {
        /// Config file. Default: the mode's default path.
        path: Option<PathBuf>,
        /// Check as the system daemon would (/etc/weave/weave.toml rules).
        #[arg(long)]
        system: bool,
    },
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Model id (see `sshmctl models`).
    #[arg(long, short)]
    pub model: String,
    /// What to draw.
    #[arg(long, short)]
    pub prompt: String,
    /// What to avoid.
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Denoising steps (default: the model's).
    #[arg(long)]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale (default: the model's).
    #[arg(long)]
    pub cfg: Option<f32>,
    /// Seed; omitted: random, printed afterwards.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub width: Option<u32>,
    #[arg(long)]
    pub height: Option<u32>,
    #[arg(long, value_enum)]
    pub scheduler: Option<SchedulerArg>,
    /// Images to generate.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// End-user tag recorded with the job.
    #[arg(long)]
    pub tag: Option<String>,
    /// Output file. With --batch > 1, `-N` is inserted before the extension.
    #[arg(long, short, default_value = "weave.png")]
    pub output: PathBuf,
}

/// Scheduler names as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchedulerArg {
    Ddim,
    Euler,
    #[value(name = "euler_a")]
    EulerA,
    #[value(name = "dpmpp_2m")]
    DpmPp2m,
    #[value(name = "dpmpp_2m_karras")]
    DpmPp2mKarras,
}

impl From<SchedulerArg> for Scheduler {
    fn from(arg: SchedulerArg) -> Self {
        match arg {
            SchedulerArg::Ddim => Scheduler::Ddim,
            SchedulerArg::Euler => Scheduler::Euler,
            SchedulerArg::EulerA => Scheduler::EulerAncestral,
            SchedulerArg::DpmPp2m => Scheduler::DpmPp2m,
            SchedulerArg::DpmPp2mKarras => Scheduler::DpmPp2mKarras,
        }
    }
}
