#![allow(clippy::unwrap_used)]
//! Every error path of the config with the message the user sees, the
//! shipped examples, and the permission rules on real files.
#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use std::time::Duration;

use super::*;
use crate::proto::{GenerationDefaults, Scheduler};

const SYSTEM_PATH: &str = "/etc/weave/weave.toml";
const MODEL: &str = "[[model]]\nid = \"digits\"\nkind = \"sd1\"\npath = \"/models/digits\"\n";
const SYSTEM_DAEMON: &str =
    "[daemon]\nclient_group = \"weave-clients\"\nadmin_group = \"weave-admins\"\n";

fn parse(text: &str, mode: Mode) -> Result<Config, ConfigErrors> {
    Config::from_toml_str(text, Path::new(SYSTEM_PATH), mode)
}

/// The messages of every problem in `text`, which must have some.
fn problems(text: &str, mode: Mode) -> Vec<String> {
    match parse(text, mode) {
        Ok(config) => panic!("expected problems, got {config:#?}"),
        Err(errors) => errors.problems.iter().map(ToString::to_string).collect(),
    }
}

fn only_problem(text: &str, mode: Mode) -> String {
    let mut all = problems(text, mode);
    assert_eq!(all.len(), 1, "{all:#?}");
    all.remove(0)
}

fn assert_has(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "missing {needle:?} in:\n{message}"
        );
    }
}

// ---- the shipped examples ------------------------------------------------

#[test]
fn system_example_parses_in_system_mode() {
    let text = include_str!("../../../packaging/weave.toml.example");
    let config = parse(text, Mode::System).unwrap();
    assert_eq!(config.mode, Mode::System);
    assert_eq!(config.daemon.client_group.as_deref(), Some("weave-clients"));
    assert_eq!(config.daemon.admin_group.as_deref(), Some("weave-admins"));
    assert_eq!(config.daemon_user(), "weave");
    assert_eq!(
        config.socket_path(&EnvPaths::default()).unwrap(),
        PathBuf::from(SYSTEM_SOCKET_PATH)
    );
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.bounds.max_steps, 100);
    assert_eq!(config.audit, AuditConfig::default());
    assert!(!config.worker.allow_degraded_sandbox);
    let digits = config.model("digits").unwrap();
    assert_eq!(digits.kind, ModelKind::Sd1);
    assert_eq!(digits.path, PathBuf::from("/usr/share/weave/models/digits"));
    assert_eq!(digits.defaults().scheduler, Scheduler::Ddim);
    assert_eq!(digits.defaults().width, 32);
    let bold = config.lora("digits-bold").unwrap();
    assert_eq!(
        bold.path,
        PathBuf::from("/usr/share/weave/models/loras/digits-bold.safetensors")
    );
    assert!(bold.fits("digits"));
    assert_eq!((bold.min_weight, bold.max_weight), (0.0, 1.5));
}

#[test]
fn the_user_examples_commented_pool_lines_parse() {
    let text = include_str!("../../../docs/weave.example.toml");
    let source = Path::new("/home/me/.config/weave/weave.toml");
    let counted = text.replace("\n# count = 2\n", "\ncount = 2\n");
    assert_ne!(counted, text, "the example lost `# count = 2`");
    let config = Config::from_toml_str(&counted, source, Mode::User).unwrap();
    assert_eq!(config.worker.count, Some(2));
    // `devices` replaces `device`.
    let listed = text.replace("\ndevice = \"auto\"\n", "\n").replace(
        "\n# devices = [\"cuda:0\", \"cuda:1\"]\n",
        "\ndevices = [\"cuda:0\", \"cuda:1\"]\n",
    );
    let config = Config::from_toml_str(&listed, source, Mode::User).unwrap();
    assert_eq!(
        config.worker.devices,
        Some(vec![Device::Cuda(0), Device::Cuda(1)])
    );
}

#[test]
fn user_example_parses_in_user_mode_with_paths_from_its_directory() {
    let text = include_str!("../../../docs/weave.example.toml");
    let source = Path::new("/home/me/.config/weave/weave.toml");
    let config = Config::from_toml_str(text, source, Mode::User).unwrap();
    assert_eq!(config.source, source);
    // As copied: the digits model alone, at its 32x32 training size.
    assert_eq!(config.models.len(), 1);
    assert_eq!(
        config.models[0].path,
        PathBuf::from("/home/me/.config/weave/models/digits")
    );
    // No size in [model.defaults]: the folder's native size decides.
    assert_eq!(config.models[0].defaults.width, None);
    // Where the README copies it to, models/digits is next to the config;
    // here, the checkout's own.
    let in_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../weave.toml");
    let mut copied = Config::from_toml_str(text, &in_checkout, Mode::User).unwrap();
    copied.read_native_sizes();
    let digits = copied.models[0].defaults();
    assert_eq!((digits.width, digits.height), (32, 32));
    assert_eq!(config.limits.queue_depth, 8);
    // The commented-out sd15 placeholder is a valid model once uncommented.
    let uncommented: String = text
        .lines()
        .map(|line| {
            line.strip_prefix("# ")
                .filter(|rest| rest.starts_with('[') || rest.contains(" = "))
                .unwrap_or(line)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_toml_str(&uncommented, source, Mode::User).unwrap();
    assert_eq!(config.models.len(), 2);
    assert!(config.models[1].is_single_file());
    let sd15 = config.model("sd15").unwrap();
    let defaults = sd15.defaults();
    assert_eq!(
        (defaults.width, defaults.steps, defaults.guidance),
        (512, 30, 7.5)
    );
    assert_eq!(sd15.default_negative_prompt(), "blurry, low quality");
}

#[test]
fn a_model_alone_gets_the_documented_defaults() {
    let config = parse(MODEL, Mode::User).unwrap();
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.bounds, ParamBounds::default());
    assert_eq!(config.audit.sink, PathBuf::from("/dev/log"));
    assert_eq!(config.audit.facility.code(), libc::LOG_DAEMON);
    assert!(!config.audit.log_prompts);
    assert_eq!(config.worker, WorkerConfig::default());
    assert_eq!(config.worker.device, Device::Auto);
    assert!(config.output.png_parameters);
    assert_eq!(config.limits.job_timeout(), Duration::from_secs(600));
    let defaults = config.models[0].defaults();
    assert_eq!(
        defaults,
        GenerationDefaults {
            steps: 30,
            guidance: 7.5,
            width: 512,
            height: 512,
            scheduler: Scheduler::Euler,
        }
    );
    assert_eq!(config.models[0].default_negative_prompt(), "");
}

#[test]
fn modes_parse_and_print_as_written() {
    for mode in [Mode::User, Mode::System] {
        assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
    }
    assert!("root".parse::<Mode>().is_err());
}

#[test]
fn the_flag_mode_wins_over_the_file() {
    let text = format!("mode = \"system\"\n{MODEL}");
    assert_eq!(parse(&text, Mode::User).unwrap().mode, Mode::User);
    // and the system rules apply when the flag says system
    let message = problems(&text, Mode::System).join("\n");
    assert_has(
        &message,
        &["`daemon.client_group` is required in system mode"],
    );
}

// ---- syntax, unknown keys, types -----------------------------------------

#[test]
fn unknown_key_names_line_column_key_and_the_likely_spelling() {
    let text = format!("{MODEL}\n[limits]\nqueue_depth = 8\nqueue_dpeth = 4\n");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml:8:1: unknown key `limits.queue_dpeth`",
            "valid keys here: queue_depth, per_client_queue_depth,",
            "fix: did you mean `queue_depth`?",
            "remove `queue_dpeth` from [limits]",
        ],
    );
}

#[test]
fn unknown_top_level_table_is_reported_at_its_header() {
    let text = "[[models]]\nid = \"x\"\n";
    let all = problems(text, Mode::User);
    assert_has(
        &all[0],
        &[
            "/etc/weave/weave.toml:1:3: unknown key `models`",
            "did you mean `model`?",
            "the top level of the file",
        ],
    );
    // and with it gone, there is no model at all
    assert_has(&all[1], &["`model` is missing: no [[model]] is defined"]);
    assert_eq!(all.len(), 2);
}

#[test]
fn unknown_key_without_a_near_miss_says_to_remove_it() {
    let text = format!("{MODEL}[model.defaults]\ncolour = \"red\"\n");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[
            ":6:1: unknown key `model[0].defaults.colour`",
            "fix: remove `colour` from [model[0].defaults]",
        ],
    );
}

#[test]
fn unknown_key_in_bounds_comes_from_param_bounds() {
    let text = format!("{MODEL}[bounds]\nmax_widht = 512\n");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[":6:1: unknown key `bounds.max_widht`", "`max_width`"],
    );
}

#[test]
fn wrong_type_names_key_position_and_what_to_write() {
    let text = format!("{MODEL}[limits]\nqueue_depth = \"many\"\n");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml:6:1: `limits.queue_depth` has the wrong type or value: \
             found string \"many\", expected u32",
            "fix: write a whole number from 0 to 4294967295, without quotes",
        ],
    );
    let negative = only_problem(&format!("{MODEL}[limits]\nrate_burst = -1\n"), Mode::User);
    assert_has(
        &negative,
        &["`limits.rate_burst` has the wrong type or value: found integer `-1`"],
    );
    let flag = only_problem(
        &format!("{MODEL}[audit]\nlog_prompts = \"no\"\n"),
        Mode::User,
    );
    assert_has(
        &flag,
        &["`audit.log_prompts`", "true or false, without quotes"],
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let message = only_problem("[limits\nqueue_depth = 3\n", Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml:1:8: TOML syntax error:",
            "fix: correct the TOML",
        ],
    );
    let duplicate = only_problem("[limits]\nqueue_depth = 3\nqueue_depth = 4\n", Mode::User);
    assert_has(
        &duplicate,
        &["weave.toml:3:1: TOML syntax error:", "duplicate key"],
    );
}

#[test]
fn bad_enum_values_list_the_choices() {
    let text = format!("{MODEL}[model.defaults]\nscheduler = \"dpmpp_2m_karas\"\n");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[
            ":6:1: `model[0].defaults.scheduler` is \"dpmpp_2m_karas\", which is not one of",
            "did you mean \"dpmpp_2m_karras\"? Use one of: \"ddim\", \"euler\", \"euler_a\", \
             \"dpmpp_2m\", \"dpmpp_2m_karras\"",
        ],
    );
    let kind = only_problem(&MODEL.replace("sd1", "sd3"), Mode::User);
    assert_has(
        &kind,
        &["`model[0].kind` is \"sd3\"", "\"sd1\", \"sd2\", \"sdxl\""],
    );
    let mode = only_problem(&format!("mode = \"root\"\n{MODEL}"), Mode::User);
    assert_has(&mode, &[":1:1: `mode` is \"root\"", "\"user\", \"system\""]);
}

#[test]
fn devices_are_auto_cpu_cuda_or_cuda_n() {
    assert_eq!("auto".parse::<Device>(), Ok(Device::Auto));
    assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
    assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
    assert_eq!("cuda:3".parse::<Device>(), Ok(Device::Cuda(3)));
    for bad in [
        "gpu",
        "cuda:",
        "cuda:+1",
        "cuda:x",
        "CPU",
        "cuda:99999999999",
    ] {
        assert!(bad.parse::<Device>().is_err(), "{bad}");
    }
    assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    let message = only_problem(&format!("{MODEL}[worker]\ndevice = \"gpu\"\n"), Mode::User);
    assert_has(
        &message,
        &[
            ":6:1: `worker.device` is \"gpu\", which is not a device",
            "fix: write \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"",
        ],
    );
}

#[test]
fn a_model_missing_a_required_key_is_reported_at_its_table() {
    let text = "[[model]]\nid = \"a\"\nkind = \"sd1\"\n";
    let message = only_problem(text, Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml:1:1: `model[0].path` is required but missing",
            "fix: add `path = ...` to the [[model]] table `model[0]`",
        ],
    );
}

#[test]
fn every_bad_key_is_reported_at_once_at_its_own_position() {
    let text = "\
[limits]
queue_dpeth = 3
job_timeout_s = \"long\"

[worker]
device = \"tpu\"

[[model]]
id = \"broken\"
kind = \"sd1\"

[[model]]
id = \"ok\"
kind = \"sd1\"
path = \"/m/ok\"

[[model]]
id = \"ok\"
kind = \"sdxl\"
path = \"/m/other\"
scheduler = \"ddim\"
";
    let all = problems(text, Mode::User);
    assert_eq!(all.len(), 6, "{all:#?}");
    assert_has(&all[0], &[":2:1: unknown key `limits.queue_dpeth`"]);
    assert_has(
        &all[1],
        &[":3:1: `limits.job_timeout_s` has the wrong type"],
    );
    assert_has(&all[2], &[":6:1: `worker.device` is \"tpu\""]);
    assert_has(&all[3], &[":8:1: `model[0].path` is required but missing"]);
    // model[0] was dropped; the indices still refer to the file
    assert_has(
        &all[4],
        &[
            ":21:1: unknown key `model[2].scheduler`",
            "the [[model]] table `model[2]`",
        ],
    );
    assert_has(
        &all[5],
        &[
            ":18:1: `model[2].id` is \"ok\", the same id as model[1] at line 13",
            "rename one",
        ],
    );
}

// ---- values --------------------------------------------------------------

#[test]
fn duplicate_model_ids_are_refused() {
    let text = format!("{MODEL}{MODEL}");
    let message = only_problem(&text, Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml:6:1: `model[1].id` is \"digits\", the same id as model[0] at \
             line 2; clients choose models by id, so ids must be unique",
            "fix: rename one of them",
        ],
    );
}

#[test]
fn bad_model_ids_are_refused() {
    let message = only_problem(&MODEL.replace("\"digits\"", "\"Digits/../x\""), Mode::User);
    assert_has(
        &message,
        &[
            ":2:1: `model[0].id` is \"Digits/../x\", which is not a valid model id",
            "a-z 0-9",
        ],
    );
}

#[test]
fn no_model_at_all_is_an_error() {
    let message = only_problem("[limits]\nqueue_depth = 8\n", Mode::User);
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml: `model` is missing: no [[model]] is defined",
            "fix: add a [[model]] table with id, kind and path",
        ],
    );
}

#[test]
fn bounds_must_be_ordered_multiples_of_eight() {
    let text = format!(
        "{MODEL}[bounds]\nmin_width = 100\nmax_width = 64\nmin_height = 0\nmax_guidance = -1.0\n\
         max_steps = 0\n"
    );
    let all = problems(&text, Mode::User);
    let joined = all.join("\n");
    assert_has(
        &joined,
        &[
            ":6:1: `bounds.min_width` is 100; image sizes must be positive multiples of 8",
            "fix: use a multiple of 8, like 96 or 104",
            ":8:1: `bounds.min_height` is 0; image sizes must be positive multiples of 8",
            ":6:1: `bounds.min_width` is 100, larger than bounds.max_width (64)",
            ":10:1: `bounds.max_steps` is 0, which would refuse every request",
            ":9:1: `bounds.max_guidance` is -1; guidance must be a finite number of 0 or more",
            // the model's sd1 defaults no longer fit either
            "`model[0].defaults.width` is 512 (the default for kind \"sd1\"), outside the bounds \
             100..=64",
        ],
    );
    let guidance = format!("{MODEL}[bounds]\nmin_guidance = 9.0\nmax_guidance = 8.0\n");
    let joined = problems(&guidance, Mode::User).join("\n");
    assert_has(
        &joined,
        &[":6:1: `bounds.min_guidance` is 9, larger than bounds.max_guidance (8)"],
    );
}

#[test]
fn model_defaults_must_lie_inside_the_bounds() {
    let text = "[bounds]\nmax_width = 512\nmax_height = 512\n\n[[model]]\nid = \"sd2\"\n\
                kind = \"sd2\"\npath = \"/m/sd2\"\n\n[model.defaults]\nwidth = 512\nsteps = 500\n\
                guidance = 50.0\nnegative_prompt = \"xx\"\n";
    let all = problems(text, Mode::User);
    assert_eq!(all.len(), 3, "{all:#?}");
    let joined = all.join("\n");
    assert_has(
        &joined,
        &[
            // height was not given: the kind's default is at fault, at the table
            ":10:1: `model[0].defaults.height` is 768 (the default for kind \"sd2\"), outside \
             the bounds 32..=512",
            "fix: add [model.defaults] with `height = ...` in 32..=512 (a multiple of 8)",
            ":12:1: `model[0].defaults.steps` is 500, outside 1..=150 (bounds.max_steps)",
            "fix: choose a value in 1..=150, or widen [bounds]",
            ":13:1: `model[0].defaults.guidance` is 50, outside the bounds 0..=30",
        ],
    );
    let long = format!(
        "[bounds]\nmax_negative_prompt_len = 1\n{MODEL}[model.defaults]\nnegative_prompt = \"xx\"\n"
    );
    assert_has(
        &only_problem(&long, Mode::User),
        &[
            "`model[0].defaults.negative_prompt` is 2 bytes long, more than \
           bounds.max_negative_prompt_len (1)",
        ],
    );
    let bad_syntax = format!("{MODEL}[model.defaults]\nnegative_prompt = \"(blurry:1.2.3)\"\n");
    assert_has(
        &only_problem(&bad_syntax, Mode::User),
        &[
            "`model[0].defaults.negative_prompt` is not valid A1111 prompt syntax: the weight `1.2.3`",
            "fix: fix the weight",
        ],
    );
}

#[test]
fn connection_shares_must_leave_room_for_clients_and_other_uids() {
    let config = parse(MODEL, Mode::User).unwrap();
    assert_eq!(
        (
            config.limits.max_connections,
            config.limits.max_connections_per_uid,
            config.limits.admin_reserved_connections,
            config.limits.hello_timeout_s
        ),
        (512, 64, 16, 5)
    );
    let reserve_all = only_problem(
        &format!("{MODEL}[limits]\nmax_connections = 8\nadmin_reserved_connections = 8\n"),
        Mode::User,
    );
    assert_has(
        &reserve_all,
        &["`limits.admin_reserved_connections` is 8, not below limits.max_connections (8)"],
    );
    let greedy = only_problem(
        &format!(
            "{MODEL}[limits]\nmax_connections = 8\nadmin_reserved_connections = 2\n\
             max_connections_per_uid = 7\n"
        ),
        Mode::User,
    );
    assert_has(
        &greedy,
        &[
            "`limits.max_connections_per_uid` is 7, more than the 6 places",
            "at most 6",
        ],
    );
    let zero = only_problem(
        &format!("{MODEL}[limits]\nhello_timeout_s = 0\n"),
        Mode::User,
    );
    assert_has(&zero, &["`limits.hello_timeout_s` is 0"]);
}

#[test]
fn limits_must_be_positive_and_consistent() {
    let text = format!(
        "{MODEL}[limits]\nqueue_depth = 2\nper_client_queue_depth = 3\nrate_burst = 0\n\
         max_response_frame = 1048576\n"
    );
    let all = problems(&text, Mode::User);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_has(
        &all[0],
        &[
            ":8:1: `limits.rate_burst` is 0; it must be at least 1",
            "fix: set `rate_burst`",
        ],
    );
    assert_has(
        &all[1],
        &[":7:1: `limits.per_client_queue_depth` is 3, larger than limits.queue_depth (2)"],
    );
    assert_has(
        &all[2],
        &[
            ":9:1: `limits.max_response_frame` is 1048576 bytes, too small for the largest \
             image the bounds allow (1024x1024",
            "fix: raise it to at least",
        ],
    );
}

#[test]
fn preview_limits_are_read_and_checked() {
    let config = parse(
        &format!("{MODEL}[limits]\nmin_preview_every = 3\npreview_max_size = 64\n"),
        Mode::User,
    )
    .unwrap();
    assert_eq!(
        (
            config.limits.min_preview_every,
            config.limits.preview_max_size
        ),
        (3, 64)
    );
    let defaults = Limits::default();
    assert_eq!(
        (defaults.min_preview_every, defaults.preview_max_size),
        (1, 256)
    );
    let zero = problems(
        &format!("{MODEL}[limits]\nmin_preview_every = 0\npreview_max_size = 0\n"),
        Mode::User,
    );
    assert_eq!(zero.len(), 2, "{zero:#?}");
    assert_has(
        &zero[0],
        &["`limits.min_preview_every` is 0; it must be at least 1"],
    );
    assert_has(
        &zero[1],
        &["`limits.preview_max_size` is 0; it must be at least 1"],
    );
    let large = problems(
        &format!("{MODEL}[limits]\npreview_max_size = 1025\n"),
        Mode::User,
    );
    assert_eq!(large.len(), 1, "{large:#?}");
    assert_has(
        &large[0],
        &[
            "`limits.preview_max_size` is 1025, more than 1024",
            "fix: set it to at most 1024",
        ],
    );
}

#[test]
fn system_mode_needs_two_distinct_groups_and_an_unprivileged_user() {
    let message = problems(MODEL, Mode::System).join("\n");
    assert_has(
        &message,
        &[
            "/etc/weave/weave.toml: `daemon.client_group` is required in system mode",
            "fix: add `client_group = \"weave-clients\"` under [daemon]",
            "`daemon.admin_group` is required in system mode",
        ],
    );
    let same = format!(
        "[daemon]\nclient_group = \"weave\"\nadmin_group = \"weave\"\nuser = \"root\"\n{MODEL}"
    );
    let all = problems(&same, Mode::System);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_has(
        &all[0],
        &[":3:1: `daemon.admin_group` is the same group as daemon.client_group"],
    );
    assert_has(
        &all[1],
        &[":4:1: `daemon.user` is \"root\"", "useradd --system"],
    );
    let bad_name = format!("{SYSTEM_DAEMON}user = \"12\"\n{MODEL}");
    assert_has(
        &only_problem(&bad_name, Mode::System),
        &[":4:1: `daemon.user` is \"12\", which is not a valid account name"],
    );
    assert!(parse(&format!("{SYSTEM_DAEMON}{MODEL}"), Mode::System).is_ok());
}

#[test]
fn user_mode_refuses_system_only_keys() {
    let text = format!("{SYSTEM_DAEMON}user = \"weave\"\n{MODEL}");
    let all = problems(&text, Mode::User);
    assert_eq!(all.len(), 3, "{all:#?}");
    assert_has(
        &all[0],
        &[
            ":2:1: `daemon.client_group` applies only in system mode",
            "fix: remove `client_group` from [daemon], or run the daemon with --system",
        ],
    );
}

#[test]
fn seccomp_debug_is_refused_in_system_mode_only() {
    let text = format!("{SYSTEM_DAEMON}[worker]\nseccomp_debug = true\n{MODEL}");
    assert_has(
        &only_problem(&text, Mode::System),
        &[
            ":5:1: `worker.seccomp_debug` is true in system mode",
            "seccomp_debug = false",
        ],
    );
    let user = format!("[worker]\nseccomp_debug = true\n{MODEL}");
    assert!(parse(&user, Mode::User).unwrap().worker.seccomp_debug);
}

#[test]
fn torch_threads_and_exec_mappings_parse_and_default_off() {
    let config = parse(MODEL, Mode::User).unwrap();
    assert_eq!(config.worker.torch_threads, None);
    assert!(!config.worker.seccomp_exec_mappings);
    let text = format!("[worker]\ntorch_threads = 3\nseccomp_exec_mappings = true\n{MODEL}");
    for mode in [Mode::User, Mode::System] {
        let text = match mode {
            Mode::User => text.clone(),
            Mode::System => format!("{SYSTEM_DAEMON}{text}"),
        };
        let config = parse(&text, mode).unwrap();
        assert_eq!(config.worker.torch_threads, Some(3));
        assert!(config.worker.seccomp_exec_mappings);
    }
}

#[test]
fn torch_threads_must_be_between_1_and_the_maximum() {
    for bad in ["0", "1025"] {
        let text = format!("[worker]\ntorch_threads = {bad}\n{MODEL}");
        assert_has(
            &only_problem(&text, Mode::User),
            &[
                &format!(":2:1: `worker.torch_threads` is {bad}; libtorch needs 1 to 1024 threads"),
                "fix: set `torch_threads` to the number of CPUs",
            ],
        );
    }
    let text = format!("[worker]\ntorch_threads = -1\n{MODEL}");
    assert!(parse(&text, Mode::User).is_err());
}

#[test]
fn socket_paths_must_be_absolute_and_fit_sun_path() {
    let text = format!(
        "[daemon]\nsocket = \"weave.sock\"\n[audit]\nsink = \"/{}\"\n{MODEL}",
        "x".repeat(120)
    );
    let all = problems(&text, Mode::User);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_has(
        &all[0],
        &[":2:1: `daemon.socket` is \"weave.sock\", which is not an absolute path"],
    );
    assert_has(
        &all[1],
        &[":4:1: `audit.sink` is 121 bytes long; a Unix socket path holds at most 107"],
    );
}

#[test]
fn sha256_pins_files_and_folders_and_must_be_a_digest() {
    // A folder pin is the digest over the files the loader reads
    // (weave_common::pin), enforced by the worker.
    let folder = format!("{MODEL}sha256 = \"{}\"\n", "a".repeat(64));
    assert_eq!(
        parse(&folder, Mode::User).unwrap().models[0]
            .sha256
            .as_deref(),
        Some("a".repeat(64).as_str())
    );
    let file =
        "[[model]]\nid = \"m\"\nkind = \"sd1\"\npath = \"m.safetensors\"\nsha256 = \"XYZ\"\n";
    assert_has(
        &only_problem(file, Mode::User),
        &[":5:1: `model[0].sha256` is not a SHA-256 digest (64 hexadecimal digits)"],
    );
    let upper = file.replace("XYZ", &"AB".repeat(32));
    let config = parse(&upper, Mode::User).unwrap();
    assert_eq!(
        config.models[0].sha256.as_deref(),
        Some("ab".repeat(32).as_str())
    );
    assert_eq!(
        config.models[0].path,
        PathBuf::from("/etc/weave/m.safetensors")
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let text = MODEL.replace("/models/digits", "/models/v1-5.ckpt");
    assert_has(
        &only_problem(&text, Mode::User),
        &[
            ":4:1: `model[0].path` names a .ckpt file; pickle-based checkpoints",
            "convert",
        ],
    );
}

#[test]
fn errors_are_listed_together_with_a_count() {
    let errors = parse("[limits]\nqueue_depth = 0\n", Mode::User).unwrap_err();
    let text = errors.to_string();
    assert!(
        text.starts_with("config /etc/weave/weave.toml has 2 problems:\n1. "),
        "{text}"
    );
    assert!(text.contains("\n2. /etc/weave/weave.toml"), "{text}");
}

// ---- default paths -------------------------------------------------------

#[test]
fn default_paths_follow_xdg_and_the_mode() {
    let env = EnvPaths {
        home: Some("/home/ann".into()),
        xdg_config_home: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
    };
    assert_eq!(
        Config::default_path(Mode::User, &env).unwrap(),
        PathBuf::from("/home/ann/.config/weave/weave.toml")
    );
    let xdg = EnvPaths {
        xdg_config_home: Some("/cfg".into()),
        ..env.clone()
    };
    assert_eq!(
        Config::default_path(Mode::User, &xdg).unwrap(),
        PathBuf::from("/cfg/weave/weave.toml")
    );
    // relative XDG values are ignored, as the XDG spec says
    let relative = EnvPaths {
        xdg_config_home: Some("cfg".into()),
        ..env.clone()
    };
    assert_eq!(
        Config::default_path(Mode::User, &relative).unwrap(),
        PathBuf::from("/home/ann/.config/weave/weave.toml")
    );
    assert_eq!(
        Config::default_path(Mode::System, &EnvPaths::default()).unwrap(),
        PathBuf::from("/etc/weave/weave.toml")
    );
    let nothing = Config::default_path(Mode::User, &EnvPaths::default()).unwrap_err();
    assert_has(&nothing.to_string(), &["HOME", "--config"]);

    assert_eq!(
        default_socket_path(Mode::User, &env).unwrap(),
        PathBuf::from("/run/user/1000/weave/weave.sock")
    );
    assert_eq!(
        default_socket_path(Mode::System, &EnvPaths::default()).unwrap(),
        PathBuf::from("/run/weave/weave.sock")
    );
    let missing = default_socket_path(Mode::User, &EnvPaths::default()).unwrap_err();
    assert_has(
        &missing.to_string(),
        &[
            "environment variable XDG_RUNTIME_DIR is not set",
            "socket = ",
        ],
    );
    let config = parse(
        &format!("[daemon]\nsocket = \"/tmp/w.sock\"\n{MODEL}"),
        Mode::User,
    )
    .unwrap();
    assert_eq!(
        config.socket_path(&EnvPaths::default()).unwrap(),
        PathBuf::from("/tmp/w.sock")
    );
}

// ---- real files: permissions, loading, model paths -----------------------

/// A directory under the system temp dir (normally `/tmp`, root-owned and
/// sticky, so it passes the checks above it), removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "weave-config-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap();
        chmod(&path, 0o755);
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn write(path: &Path, text: &str, mode: u32) {
    fs::write(path, text).unwrap();
    chmod(path, mode);
}

/// The uid this test runs as (the owner of what it creates).
fn my_uid(dir: &TempDir) -> u32 {
    fs::metadata(&dir.0).unwrap().uid()
}

fn permission_messages(path: &Path, mode: Mode, allowed: &[u32]) -> Vec<String> {
    check_permissions(path, mode, allowed)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_private_file_in_private_directories_passes_and_loads() {
    let dir = TempDir::new("ok");
    let config = dir.join("weave.toml");
    write(
        &config,
        "[[model]]\nid = \"m\"\nkind = \"sd1\"\npath = \"models/m\"\n",
        0o644,
    );
    let me = my_uid(&dir);
    assert_eq!(
        permission_messages(&config, Mode::User, &[me]),
        Vec::<String>::new()
    );
    let loaded = Config::load(&config, Mode::User, &[me]).unwrap();
    assert_eq!(loaded.source, config);
    assert_eq!(loaded.models[0].path, dir.join("models/m"));
    // 0600 is as good as 0644
    chmod(&config, 0o600);
    assert!(Config::load(&config, Mode::User, &[me]).is_ok());
}

#[test]
fn a_group_writable_config_is_refused_with_the_chmod_that_fixes_it() {
    let dir = TempDir::new("groupw");
    let config = dir.join("weave.toml");
    write(&config, MODEL, 0o664);
    let me = my_uid(&dir);
    let all = permission_messages(&config, Mode::User, &[me]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_has(
        &all[0],
        &[
            &format!(
                "{}: the config file is group-writable (mode 0664)",
                config.display()
            ),
            &format!("fix: `chmod go-w {}`", config.display()),
        ],
    );
    let errors = Config::load(&config, Mode::User, &[me]).unwrap_err();
    assert_eq!(errors.problems.len(), 1);
    chmod(&config, 0o646);
    assert_has(
        &permission_messages(&config, Mode::User, &[me])[0],
        &["the config file is world-writable (mode 0646)"],
    );
}

#[test]
fn a_world_writable_directory_is_refused_unless_sticky() {
    let dir = TempDir::new("worldw");
    let etc = dir.join("etc weave");
    fs::create_dir(&etc).unwrap();
    chmod(&etc, 0o777);
    let config = etc.join("weave.toml");
    write(&config, MODEL, 0o644);
    let me = my_uid(&dir);
    let all = permission_messages(&config, Mode::System, &[me]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_has(
        &all[0],
        &[
            &format!(
                "{}: a directory above the config file is group- and world-writable (mode 0777)",
                etc.display()
            ),
            &format!("(config file {})", config.display()),
            &format!("fix: `chmod go-w '{}'`", etc.display()),
        ],
    );
    chmod(&etc, 0o1777);
    assert_eq!(
        permission_messages(&config, Mode::System, &[me]),
        Vec::<String>::new()
    );
}

#[test]
fn an_owner_not_allowed_is_refused_with_the_chown_that_fixes_it() {
    let dir = TempDir::new("owner");
    let config = dir.join("weave.toml");
    write(&config, MODEL, 0o644);
    let me = my_uid(&dir);
    let stranger = me + 4242;
    let all = permission_messages(&config, Mode::User, &[stranger]);
    // the file, and the test directory (owned by me, not root)
    let file_message = all.iter().find(|m| m.contains("the config file")).unwrap();
    assert_has(
        file_message,
        &[
            &format!(
                "the config file is owned by uid {me}; in user mode it must be owned by uid \
                 {stranger}"
            ),
            &format!("fix: as root: `chown {stranger} {}`", config.display()),
        ],
    );
}

#[test]
fn missing_and_non_regular_configs_are_refused_without_hanging() {
    let dir = TempDir::new("kinds");
    let me = my_uid(&dir);
    let missing = dir.join("absent.toml");
    let errors = Config::load(&missing, Mode::User, &[me]).unwrap_err();
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert_has(
        &errors.to_string(),
        &[
            "cannot read the config file",
            "fix: create",
            "docs/weave.example.toml",
        ],
    );
    let fifo = dir.join("fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    chmod(&fifo, 0o644);
    let text = Config::load(&fifo, Mode::User, &[me])
        .unwrap_err()
        .to_string();
    assert_has(&text, &["the config file is not a regular file"]);
    let text = Config::load(&dir.0, Mode::User, &[me])
        .unwrap_err()
        .to_string();
    assert_has(&text, &["the config file is a directory, not a file"]);
}

#[test]
fn symlinks_are_followed_and_both_sides_checked() {
    let dir = TempDir::new("links");
    let me = my_uid(&dir);
    let real_dir = dir.join("real");
    fs::create_dir(&real_dir).unwrap();
    chmod(&real_dir, 0o755);
    let real = real_dir.join("weave.toml");
    write(&real, MODEL, 0o644);
    let link = dir.join("weave.toml");
    symlink(&real, &link).unwrap();
    assert_eq!(
        permission_messages(&link, Mode::User, &[me]),
        Vec::<String>::new()
    );
    assert!(Config::load(&link, Mode::User, &[me]).is_ok());

    // the target's directory opened to everyone: found through the link
    chmod(&real_dir, 0o777);
    let all = permission_messages(&link, Mode::User, &[me]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_has(
        &all[0],
        &[&format!(
            "{}: a directory above the config file is group- and world-writable",
            real_dir.display()
        )],
    );
    chmod(&real_dir, 0o755);

    let dangling = dir.join("dangling.toml");
    symlink(dir.join("nowhere"), &dangling).unwrap();
    let all = permission_messages(&dangling, Mode::User, &[me]);
    assert_has(
        &all.join("\n"),
        &["goes through a symbolic link that cannot be resolved"],
    );
}

#[test]
fn every_problem_is_reported_together_permissions_syntax_values() {
    let dir = TempDir::new("all");
    let config = dir.join("weave.toml");
    write(
        &config,
        "[limits]\nqueue_dpeth = 1\nrate_burst = 0\n[[model]]\nid = \"m\"\nkind = \"sd1\"\npath = \"nowhere\"\n",
        0o666,
    );
    let me = my_uid(&dir);
    let errors = Config::check(&config, Mode::User, &[me]).unwrap_err();
    let all: Vec<String> = errors.problems.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 4, "{all:#?}");
    assert_has(&all[0], &["group- and world-writable (mode 0666)"]);
    assert_has(&all[1], &[":2:1: unknown key `limits.queue_dpeth`"]);
    assert_has(&all[2], &[":3:1: `limits.rate_burst` is 0"]);
    assert_has(
        &all[3],
        &[
            &format!(
                "model `m`: path {} does not exist",
                dir.join("nowhere").display()
            ),
            &format!("a relative path is taken from {}", dir.0.display()),
        ],
    );
    // load does not look at model paths
    assert_eq!(
        Config::load(&config, Mode::User, &[me])
            .unwrap_err()
            .problems
            .len(),
        3
    );
}

#[test]
fn model_paths_must_exist_and_match_their_kind() {
    let dir = TempDir::new("models");
    let me = my_uid(&dir);
    for &(relative, required) in crate::pin::FOLDER_FILES {
        if required {
            let file = dir.join("folder").join(relative);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            write(&file, "{}", 0o644);
        }
    }
    fs::create_dir(dir.join("dir.safetensors")).unwrap();
    // A safetensors start: header length 2, then `{}`.
    write(
        &dir.join("single.safetensors"),
        "\u{2}\0\0\0\0\0\0\0{}",
        0o644,
    );
    write(&dir.join("weights.bin2"), "x", 0o644);
    fs::create_dir_all(dir.join("half/unet")).unwrap();
    write(&dir.join("half/model_index.json"), "{}", 0o644);
    write(
        &dir.join("pickle.safetensors"),
        "PK\u{3}\u{4} not safetensors",
        0o644,
    );
    let config = dir.join("weave.toml");
    let model = |id: &str, path: &str| {
        format!("[[model]]\nid = \"{id}\"\nkind = \"sd1\"\npath = \"{path}\"\n")
    };
    let text = [
        model("folder", "folder"),
        model("single", "single.safetensors"),
        model("dirsingle", "dir.safetensors"),
        model("file", "weights.bin2"),
        model("gone", "/nonexistent/weave/model"),
        model("half", "half"),
        model("pickle", "pickle.safetensors"),
    ]
    .concat();
    write(&config, &text, 0o644);
    let loaded = Config::load(&config, Mode::User, &[me]).unwrap();
    let all: Vec<String> = loaded
        .check_model_paths()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(all.len(), 5, "{all:#?}");
    assert_has(
        &all[0],
        &[
            "model `dirsingle`",
            "ends in .safetensors but is not a regular file",
        ],
    );
    assert_has(
        &all[1],
        &[
            "model `file`",
            "is a file; a single-file checkpoint must be a .safetensors file",
        ],
    );
    assert_has(
        &all[2],
        &["model `gone`: path /nonexistent/weave/model does not exist"],
    );
    assert_has(
        &all[3],
        &[
            "model `half`",
            "is not a complete diffusers folder: text_encoder/config.json is missing",
        ],
    );
    assert_has(
        &all[4],
        &["model `pickle`", "is not a safetensors checkpoint"],
    );
}

// ---- ownership by another account (needs root) ---------------------------

const TEST_ACCOUNT: &str = "weave-cfgtest";

/// The uid of a real system account made for these tests, or `None` when
/// not root (a failure instead under CI=true, where root is promised).
fn test_account_uid() -> Option<u32> {
    static UID: OnceLock<Option<u32>> = OnceLock::new();
    *UID.get_or_init(|| {
        let probe = TempDir::new("whoami");
        if my_uid(&probe) != 0 {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "ownership tests need root (chown) and CI=true promises it"
            );
            eprintln!("not root: skipping the chown-based ownership tests");
            return None;
        }
        let lookup = || {
            Command::new("id")
                .args(["-u", TEST_ACCOUNT])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
        };
        for _attempt in 0..10 {
            if let Some(uid) = lookup() {
                return Some(uid);
            }
            // Other test binaries may hold the passwd lock; try again.
            let _ = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(TEST_ACCOUNT)
                .status();
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        panic!("could not create the test account {TEST_ACCOUNT} with useradd");
    })
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), None).unwrap();
}

#[test]
fn system_mode_accepts_root_or_the_daemon_account_and_no_one_else() {
    let Some(daemon_uid) = test_account_uid() else {
        return;
    };
    let dir = TempDir::new("sysowner");
    let etc = dir.join("etc");
    fs::create_dir(&etc).unwrap();
    chmod(&etc, 0o755);
    let config = etc.join("weave.toml");
    write(&config, &format!("{SYSTEM_DAEMON}{MODEL}"), 0o644);

    // root-owned: fine
    assert_eq!(
        permission_messages(&config, Mode::System, &[0, daemon_uid]),
        Vec::<String>::new()
    );
    // owned by the daemon account: fine when that uid is allowed...
    chown(&config, daemon_uid);
    chown(&etc, daemon_uid);
    assert_eq!(
        permission_messages(&config, Mode::System, &[0, daemon_uid]),
        Vec::<String>::new()
    );
    assert!(Config::load(&config, Mode::System, &[0, daemon_uid]).is_ok());
    // ...and refused, file and directory, when only root is
    let all = permission_messages(&config, Mode::System, &[0]);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_has(
        &all[0],
        &[
            &format!(
                "{}: the config file is owned by uid {daemon_uid}; in system mode it must be \
                 owned by root (uid 0)",
                config.display()
            ),
            &format!("fix: as root: `chown root:root {}`", config.display()),
        ],
    );
    assert_has(
        &all[1],
        &[
            &format!(
                "{}: a directory above the config file is owned by uid {daemon_uid}",
                etc.display()
            ),
            &format!("`chown root:root {}`", etc.display()),
        ],
    );
    let errors = Config::load(&config, Mode::System, &[0]).unwrap_err();
    assert_eq!(errors.problems.len(), 2, "{errors}");
}

#[test]
fn user_mode_refuses_a_file_owned_by_another_user() {
    let Some(other) = test_account_uid() else {
        return;
    };
    let dir = TempDir::new("userowner");
    let config = dir.join("weave.toml");
    write(&config, MODEL, 0o644);
    chown(&config, other);
    // root plays the user here: only uid 0 may own the file
    let all = permission_messages(&config, Mode::User, &[0]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_has(
        &all[0],
        &[&format!("the config file is owned by uid {other}; in user mode it must be owned by root (uid 0)")],
    );
    // a link owned by someone else is refused too
    chown(&config, 0);
    let link = dir.join("link.toml");
    symlink(&config, &link).unwrap();
    chown(&link, other);
    let all = permission_messages(&link, Mode::User, &[0]);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_has(
        &all[0],
        &[
            "a symbolic link on the config path is owned by uid",
            "chown -h root:root",
        ],
    );
}

#[test]
fn a_flood_of_errors_is_cut_off_with_a_note() {
    let keys: String = (0..60).map(|n| format!("bogus{n} = 1\n")).collect();
    let all = problems(&format!("{MODEL}[limits]\n{keys}"), Mode::User);
    assert_eq!(all.len(), 51, "{all:#?}");
    assert_has(&all[0], &[":6:1: unknown key `limits.bogus0`"]);
    assert_has(&all[50], &["has more than 50 errors; checking stopped"]);
}

#[test]
fn inline_tables_are_located_like_sections() {
    let text = "model = [\n  { id = \"a\", kind = \"sd1\", path = \"/a\" },\n  { id = \"b\", kind = \"sd1\", path = \"/b\", bogus = 1 },\n]\nlimits = { queue_depth = \"x\" }\n";
    let all = problems(text, Mode::User);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_has(&all[0], &[":3:42: unknown key `model[1].bogus`"]);
    assert_has(&all[1], &[":5:12: `limits.queue_depth` has the wrong type"]);
}

#[test]
fn every_key_is_documented_in_config_md() {
    let doc = include_str!("../../../docs/CONFIG.md");
    let daemon = DaemonConfig {
        socket: Some("/s".into()),
        client_group: Some("c".into()),
        admin_group: Some("a".into()),
        user: Some("u".into()),
    };
    let model = ModelConfig {
        id: "m".into(),
        kind: ModelKind::Sd1,
        path: "/m".into(),
        sha256: Some("0".repeat(64)),
        defaults: ModelDefaults {
            steps: Some(1),
            guidance: Some(1.0),
            width: Some(8),
            height: Some(8),
            scheduler: Some(Scheduler::Ddim),
            negative_prompt: Some(String::new()),
        },
        native_size: None,
        // Optional keys are only serialized when set: every one is set here,
        // so each must be in the document.
        max_workers: Some(2),
        bounds: ModelBounds {
            min_width: Some(8),
            max_width: Some(8),
            min_height: Some(8),
            max_height: Some(8),
        },
    };
    let sections = [
        toml::Value::try_from(&daemon).unwrap(),
        toml::Value::try_from(Limits::default()).unwrap(),
        toml::Value::try_from(ParamBounds::default()).unwrap(),
        toml::Value::try_from(AuditConfig::default()).unwrap(),
        toml::Value::try_from(WorkerConfig {
            torch_threads: Some(1),
            count: Some(2),
            devices: Some(vec![Device::Cuda(0), Device::Cuda(1)]),
            ..WorkerConfig::default()
        })
        .unwrap(),
        toml::Value::try_from(OutputConfig::default()).unwrap(),
        toml::Value::try_from(&model).unwrap(),
        toml::Value::try_from(&model.defaults).unwrap(),
        toml::Value::try_from(&model.bounds).unwrap(),
        toml::Value::try_from(LoraConfig {
            id: "l".into(),
            path: "/l.safetensors".into(),
            sha256: Some("0".repeat(64)),
            models: vec!["m".into()],
            min_weight: 0.0,
            max_weight: 1.0,
        })
        .unwrap(),
    ];
    let mut count = 0;
    for section in &sections {
        for key in section.as_table().unwrap().keys() {
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/CONFIG.md lacks `{key}`"
            );
            count += 1;
        }
    }
    assert!(count >= 40, "{count}");
}

#[test]
fn model_bounds_narrow_the_daemons_and_hold_the_models_defaults() {
    let text = "[bounds]\nmax_width = 2048\nmax_height = 2048\n\n[[model]]\nid = \"xl\"\n\
                kind = \"sdxl\"\npath = \"/m/xl\"\n\n[model.bounds]\nmin_width = 768\n\
                max_width = 1536\nmin_height = 768\nmax_height = 1536\n";
    let config = parse(text, Mode::User).unwrap();
    let model = &config.models[0];
    let mine = model.bounds(&config.bounds);
    assert_eq!((mine.min_width, mine.max_width), (768, 1536));
    assert_eq!(mine.max_steps, config.bounds.max_steps);

    let outside = "[[model]]\nid = \"xl\"\nkind = \"sdxl\"\npath = \"/m/xl\"\n\n\
                   [model.bounds]\nmax_width = 2048\nmin_height = 1100\nmax_height = 1024\n";
    let joined = problems(outside, Mode::User).join("\n");
    assert_has(
        &joined,
        &[
            "`model[0].bounds.max_width` is 2048, not a multiple of 8 inside [bounds] (32..=1024)",
            "`model[0].bounds.min_height` is 1100, not a multiple of 8 inside [bounds]",
            "`model[0].bounds.min_height` is 1100, larger than this model's max_height (1024)",
        ],
    );
    // The kind's 1024 px default must fit the model's own range.
    let small = "[[model]]\nid = \"xl\"\nkind = \"sdxl\"\npath = \"/m/xl\"\n\n\
                 [model.bounds]\nmax_width = 512\n";
    let joined = problems(small, Mode::User).join("\n");
    assert_has(
        &joined,
        &["`model[0].defaults.width` is 1024 (the default for kind \"sdxl\"), outside the bounds \
           32..=512"],
    );
    let unknown = "[[model]]\nid = \"xl\"\nkind = \"sdxl\"\npath = \"/m/xl\"\n\n\
                   [model.bounds]\nmax_steps = 10\n";
    assert!(problems(unknown, Mode::User)
        .join("\n")
        .contains("max_steps"));
}

#[test]
fn max_image_request_bytes_is_bounded() {
    let parsed = parse(
        &format!("{MODEL}[limits]\nmax_image_request_bytes = 1048576\n"),
        Mode::User,
    );
    assert_eq!(parsed.unwrap().limits.max_image_request_bytes, 1 << 20);
    for bad in ["1000", "100000000"] {
        let problem = only_problem(
            &format!("{MODEL}[limits]\nmax_image_request_bytes = {bad}\n"),
            Mode::User,
        );
        assert_has(
            &problem,
            &[&format!(
                "`limits.max_image_request_bytes` is {bad}, outside 65536..=25165824 bytes"
            )],
        );
    }
}
