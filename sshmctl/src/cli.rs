//! The command line, as clap definitions. Completions and the man page are
//! generated from these same definitions (`sshmctl completions`, `sshmctl man`).
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use weave_common::proto::{LoraChoice, Named, Scheduler};

/// Drive the weave-compute daemon: generate images, inspect and administer it.
///
/// Exit codes: 0 success; 1 error; 2 usage error (also: an output file that
/// exists or cannot be created); 3 cannot reach the daemon or not allowed
/// to; 4 busy or rate limited (retry later); 5 invalid request; 6 the job
/// failed (worker crashed, timed out, expired in the queue); 7 config check
/// found problems; 130 cancelled with Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "sshmctl", version, propagate_version = true)]
pub struct Cli {
    /// Daemon socket. Default: $WEAVE_SOCKET, else `daemon.socket` from your
    /// own config (~/.config/weave/weave.toml), else the user-mode socket
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

// Parsed once per run: `Generate`'s size costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Daemon version and mode, loaded model, queue, worker state (admins:
    /// why it last failed to start), its memory, sandbox and device; then
    /// one line per worker of the pool: index, device, state, the model it
    /// holds, the job it runs, restarts, model loads and memory.
    Status,
    /// Configured models: ids, kinds, available or not (admins: why not),
    /// loaded, defaults and bounds.
    Models,
    /// Generate images and write them as PNG files.
    Generate(GenerateArgs),
    /// Your jobs: running (progress, device, the worker it runs on), queued,
    /// and the last 20 that ended with their outcome, run time and worker
    /// (admins: `--all` for everyone's).
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
    /// Load a model into a worker (admin; in a pool, the worker a job of it
    /// would run on).
    Load { model: String },
    /// Unload the models of every worker (admin).
    Unload,
    /// Keep a model loaded past the idle timeout (admin).
    Pin { model: String },
    /// Let a pinned model be unloaded when idle again (admin).
    Unpin { model: String },
    /// Stop admitting new jobs; queued and running ones finish (admin).
    Drain,
    /// Admit new jobs again after `drain` (admin).
    Resume,
    /// Give every worker's broker↔worker channel fresh keys (admin).
    RotateKeys,
    /// The shared-memory channels, one per worker: its key generation, then
    /// its segments' slots, sequence numbers, CRC and tag failures (admin).
    Segments,
    /// Models quarantined after crashing the worker (admin).
    Quarantine {
        #[command(subcommand)]
        action: QuarantineAction,
    },
    /// Print the `sha256` pin of a model file or diffusers folder (no daemon
    /// needed): for a file what `sha256sum` prints, for a folder one digest
    /// over the files the loader reads. Put it in the model's `sha256`.
    Hash {
        /// A `.safetensors` file or a diffusers folder.
        path: PathBuf,
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
    /// The daemon's model ids, one per line (for shell completion; prints
    /// nothing when no daemon answers).
    #[command(name = "__model-ids", hide = true)]
    ModelIds,
}

impl Command {
    /// Verbs the broker runs between jobs (they change the worker), so they
    /// wait for a running job to finish.
    pub fn waits_for_running_job(&self) -> bool {
        match self {
            Command::Load { .. }
            | Command::Unload
            | Command::Pin { .. }
            | Command::RotateKeys
            | Command::Quarantine { .. } => true,
            Command::Status
            | Command::Models
            | Command::Generate(_)
            | Command::Jobs { .. }
            | Command::Cancel { .. }
            | Command::Unpin { .. }
            | Command::Drain
            | Command::Resume
            | Command::Segments
            | Command::Config { .. }
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Hash { .. }
            | Command::ModelIds => false,
        }
    }
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
    /// What to avoid. Default: the model's default negative prompt;
    /// `--negative ""` for none.
    #[arg(long)]
    pub negative: Option<String>,
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
    #[arg(long, value_parser = NameParser::<Scheduler>::new())]
    pub scheduler: Option<Scheduler>,
    /// Images to generate.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// End-user tag recorded with the job.
    #[arg(long)]
    pub tag: Option<String>,
    /// A LoRA to apply, `ID:WEIGHT` (`ID` alone: weight 1); repeatable.
    /// `sshmctl models` lists the LoRAs that fit each model.
    #[arg(long = "lora", value_name = "ID:WEIGHT", value_parser = parse_lora)]
    pub loras: Vec<LoraChoice>,
    /// Output file; `-` writes the PNG to stdout (one image only). With
    /// --batch > 1, `-N` is inserted before the extension. Checked before
    /// the job is sent: an existing file needs --force, and the folder must
    /// be writable.
    #[arg(long, short, default_value = "weave.png")]
    pub output: PathBuf,
    /// Overwrite output files that exist.
    #[arg(long)]
    pub force: bool,
    /// img2img: start from this PNG instead of noise. sshmctl reads the
    /// file and sends its bytes (never the path); without --width and
    /// --height the request takes the PNG's size.
    #[arg(long, value_name = "PATH")]
    pub init_image: Option<PathBuf>,
    /// With --init-image: the share of the steps run on the noised image,
    /// above 0 and at most 1 (default 0.75). Low keeps the image, 1 follows
    /// the prompt; int(steps × strength) steps run.
    #[arg(long, requires = "init_image")]
    pub strength: Option<f32>,
    /// Inpainting, with --init-image: a PNG of the same size, white =
    /// repaint, black = keep (color is read as luma, split at 128).
    #[arg(long, value_name = "PATH", requires = "init_image")]
    pub mask: Option<PathBuf>,
    /// Live preview every K steps: a small approximate PNG next to each
    /// output (`out.png` → `out.preview.png`), replaced at every preview
    /// (point an auto-reloading image viewer at it) and removed once the
    /// image is written. K of at least the daemon's
    /// `limits.min_preview_every`; not with `-o -`.
    #[arg(long, value_name = "K")]
    pub preview: Option<u32>,
}

/// `--lora ID:WEIGHT` (or `ID`, weight 1). The daemon checks the id and
/// the weight's range; here only the form.
fn parse_lora(text: &str) -> Result<LoraChoice, String> {
    let (id, weight) = match text.rsplit_once(':') {
        Some((id, weight)) => {
            let weight: f32 = weight.parse().map_err(|_| {
                format!("the weight in {text:?} is not a number; write ID:WEIGHT, like bold:0.8")
            })?;
            (id, weight)
        }
        None => (text, 1.0),
    };
    if id.is_empty() {
        return Err("the LoRA id is empty; write ID:WEIGHT, like bold:0.8".into());
    }
    if !weight.is_finite() {
        return Err(format!("the weight in {text:?} is not a finite number"));
    }
    Ok(LoraChoice {
        id: id.to_owned(),
        weight,
    })
}

/// Parses a [`Named`] value (`--scheduler euler_a`) with the names the
/// config uses, and lists them for `--help`, completions and the man page.
#[derive(Clone, Copy)]
pub struct NameParser<T>(std::marker::PhantomData<T>);

impl<T> NameParser<T> {
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<T: Named + Send + Sync> TypedValueParser for NameParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<T, clap::Error> {
        let names = PossibleValuesParser::new(T::NAMES.iter().copied());
        let name = names.parse_ref(cmd, arg, value)?;
        T::from_name(&name).ok_or_else(|| clap::Error::new(ErrorKind::InvalidValue).with_cmd(cmd))
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(T::NAMES.iter().copied().map(PossibleValue::new)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn lora_flags_repeat_and_default_to_weight_1() {
        let cli = Cli::try_parse_from([
            "sshmctl", "generate", "-m", "digits", "-p", "7", "--lora", "bold:0.5", "--lora",
            "ink", "--lora", "neg:-1",
        ])
        .unwrap();
        let Command::Generate(args) = cli.command else {
            panic!("not generate")
        };
        let got: Vec<(&str, f32)> = args
            .loras
            .iter()
            .map(|l| (l.id.as_str(), l.weight))
            .collect();
        assert_eq!(got, [("bold", 0.5), ("ink", 1.0), ("neg", -1.0)]);
        for bad in ["bold:x", ":1", "bold:nan"] {
            let error =
                Cli::try_parse_from(["sshmctl", "generate", "-m", "d", "-p", "7", "--lora", bad])
                    .unwrap_err()
                    .to_string();
            assert!(error.contains("--lora"), "{bad}: {error}");
        }
    }

    fn generate(scheduler: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([
            "sshmctl",
            "generate",
            "-m",
            "digits",
            "-p",
            "7",
            "--scheduler",
            scheduler,
        ])
    }

    #[test]
    fn scheduler_flag_takes_the_config_names() {
        for scheduler in Scheduler::ALL {
            let Command::Generate(args) = generate(scheduler.as_str()).unwrap().command else {
                panic!("not generate");
            };
            assert_eq!(args.scheduler, Some(scheduler));
        }
        let error = generate("EulerAncestral").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidValue);
        assert!(error.to_string().contains("euler_a"), "{error}");
    }
}
