//! What a well-typed config must also satisfy: values that make sense on
//! their own and together. Every rule names the key, the file position and a
//! fix.
#![forbid(unsafe_code)]

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::document::{KeyPath, SourceMap};
use super::model_rules::{check_models, is_model_id};
use super::{Config, ConfigFile, ConfigProblem, Mode, MAX_SOCKET_PATH_BYTES};
use crate::validate::ParamBounds;

/// `useradd` and `groupadd` accept at most 32 bytes.
const MAX_ACCOUNT_NAME_LEN: usize = 32;

pub(super) struct Context<'a> {
    pub(super) source_map: &'a SourceMap,
    /// Absolute path of the config file.
    pub(super) source: &'a Path,
    pub(super) mode: Mode,
    pub(super) model_origin: &'a [usize],
    pub(super) models_in_file: usize,
}

pub(super) struct Report<'a, 'p> {
    pub(super) context: &'a Context<'a>,
    problems: &'p mut Vec<ConfigProblem>,
}

impl Report<'_, '_> {
    pub(super) fn invalid(
        &mut self,
        path: &KeyPath,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(ConfigProblem::InvalidValue {
            place: self.context.source_map.place(path),
            key: path.to_string(),
            problem: problem.into(),
            fix: fix.into(),
        });
    }
}

pub(super) fn validate(
    file: ConfigFile,
    context: &Context<'_>,
    problems: &mut Vec<ConfigProblem>,
) -> Config {
    let mut report = Report { context, problems };
    let ConfigFile {
        mode: _, // the caller's mode wins
        daemon,
        limits,
        bounds,
        audit,
        worker,
        output,
        models,
        loras,
    } = file;
    let mut config = Config {
        source: context.source.to_path_buf(),
        mode: context.mode,
        daemon,
        limits,
        bounds,
        audit,
        worker,
        output,
        models,
        loras,
    };
    check_daemon(&config, &mut report);
    check_limits(&config, &mut report);
    check_bounds(&config.bounds, &mut report);
    check_audit_and_worker(&config, &mut report);
    check_models(&mut config, &mut report);
    for (path, problem, fix) in super::pool::check(&config) {
        report.invalid(&path, problem, fix);
    }
    let model_ids: Vec<&str> = config.models.iter().map(|m| m.id.as_str()).collect();
    let config_dir = context.source.parent().unwrap_or(Path::new("/"));
    let found = super::loras::check_loras(
        &mut config.loras,
        &model_ids,
        config.limits.max_loras,
        config_dir,
        is_model_id,
    );
    for (path, problem, fix) in found {
        report.invalid(&path, problem, fix);
    }
    config
}

fn check_socket_path(path: &Path, key: &KeyPath, report: &mut Report<'_, '_>) {
    if !path.is_absolute() {
        report.invalid(
            key,
            format!("is \"{}\", which is not an absolute path", path.display()),
            "write the full path, starting with /",
        );
    }
    let length = path.as_os_str().as_bytes().len();
    if length > MAX_SOCKET_PATH_BYTES {
        report.invalid(
            key,
            format!(
                "is {length} bytes long; a Unix socket path holds at most \
                 {MAX_SOCKET_PATH_BYTES}"
            ),
            "choose a shorter path",
        );
    }
}

/// Portable account names: what `useradd`/`groupadd` accept without
/// `--badname`, and never all digits (that would read as a numeric id).
fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ACCOUNT_NAME_LEN
        && !name.starts_with('-')
        && !name.bytes().all(|b| b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn check_daemon(config: &Config, report: &mut Report<'_, '_>) {
    let daemon = &config.daemon;
    if let Some(socket) = &daemon.socket {
        check_socket_path(socket, &KeyPath::of(&["daemon", "socket"]), report);
    }
    let entries = [
        ("client_group", &daemon.client_group, "weave-clients"),
        ("admin_group", &daemon.admin_group, "weave-admins"),
        ("user", &daemon.user, "weave"),
    ];
    match config.mode {
        Mode::User => {
            for (name, value, _) in entries {
                if value.is_some() {
                    report.invalid(
                        &KeyPath::of(&["daemon", name]),
                        "applies only in system mode; in user mode only your own uid may \
                         connect and nothing changes user",
                        format!("remove `{name}` from [daemon], or run the daemon with --system"),
                    );
                }
            }
        }
        Mode::System => {
            for (name, value, example) in entries {
                let key = KeyPath::of(&["daemon", name]);
                match value {
                    None if name != "user" => report.invalid(
                        &key,
                        "is required in system mode: it decides who may connect",
                        format!("add `{name} = \"{example}\"` under [daemon] (and create the group: `groupadd --system {example}`)"),
                    ),
                    None => {}
                    Some(value) if !is_account_name(value) => report.invalid(
                        &key,
                        format!("is \"{value}\", which is not a valid account name"),
                        format!(
                            "use 1 to {MAX_ACCOUNT_NAME_LEN} of a-z A-Z 0-9 . _ -, not all \
                             digits, like \"{example}\""
                        ),
                    ),
                    Some(_) => {}
                }
            }
            if let (Some(client), Some(admin)) = (&daemon.client_group, &daemon.admin_group) {
                if client == admin {
                    report.invalid(
                        &KeyPath::of(&["daemon", "admin_group"]),
                        format!(
                            "is the same group as daemon.client_group (\"{admin}\"), which would \
                             make every client an admin"
                        ),
                        "use a separate group for admins, like \"weave-admins\"",
                    );
                }
            }
            if daemon.user.as_deref() == Some("root") {
                report.invalid(
                    &KeyPath::of(&["daemon", "user"]),
                    "is \"root\"; the broker and worker must drop root after setup",
                    "use an unprivileged system account: `useradd --system --no-create-home \
                     weave` and `user = \"weave\"`",
                );
            }
        }
    }
}

/// The largest PNG (8-bit RGB, stored without compression, which bounds
/// the worst case) the bounds allow, plus its `parameters` text chunk.
fn largest_png_bytes(bounds: &ParamBounds) -> u64 {
    let (width, height) = (u64::from(bounds.max_width), u64::from(bounds.max_height));
    let raw = height * (width * 3 + 1); // one filter byte per row
    let deflate_stored = raw + 5 * (raw / 65_535 + 1) + 6;
    let text_chunk =
        u64::from(bounds.max_prompt_len) + u64::from(bounds.max_negative_prompt_len) + 4096;
    // Signature, IHDR, IEND and one IDAT chunk header per 1 MiB.
    deflate_stored + text_chunk + 64 + 12 * (deflate_stored / (1 << 20) + 1)
}

fn check_limits(config: &Config, report: &mut Report<'_, '_>) {
    let limits = &config.limits;
    let values = [
        ("queue_depth", limits.queue_depth),
        ("per_client_queue_depth", limits.per_client_queue_depth),
        ("rate_per_minute", limits.rate_per_minute),
        ("rate_burst", limits.rate_burst),
        ("queue_deadline_s", limits.queue_deadline_s),
        ("job_timeout_s", limits.job_timeout_s),
        ("idle_unload_s", limits.idle_unload_s),
        ("max_response_frame", limits.max_response_frame),
        ("max_connections", limits.max_connections),
        ("max_connections_per_uid", limits.max_connections_per_uid),
        ("hello_timeout_s", limits.hello_timeout_s),
        ("max_prompt_chunks", limits.max_prompt_chunks),
        ("min_preview_every", limits.min_preview_every),
        ("preview_max_size", limits.preview_max_size),
    ];
    for (name, value) in values {
        if value == 0 {
            report.invalid(
                &KeyPath::of(&["limits", name]),
                "is 0; it must be at least 1",
                format!("set `{name}` to a positive number, or remove it for the default"),
            );
        }
    }
    let (min_image, max_image) = (
        crate::proto::MAX_REQUEST_FRAME,
        crate::proto::MAX_IMAGE_REQUEST_FRAME,
    );
    if !(min_image..=max_image).contains(&limits.max_image_request_bytes) {
        report.invalid(
            &KeyPath::of(&["limits", "max_image_request_bytes"]),
            format!(
                "is {}, outside {min_image}..={max_image} bytes",
                limits.max_image_request_bytes
            ),
            format!(
                "set it from {min_image} (no room beyond an ordinary request) to {max_image}, \
                 or remove it for the default {}",
                crate::proto::DEFAULT_MAX_IMAGE_REQUEST_FRAME
            ),
        );
    }
    if limits.queue_depth != 0 && limits.per_client_queue_depth > limits.queue_depth {
        report.invalid(
            &KeyPath::of(&["limits", "per_client_queue_depth"]),
            format!(
                "is {}, larger than limits.queue_depth ({}), so one client could fill the \
                 whole queue and more",
                limits.per_client_queue_depth, limits.queue_depth
            ),
            format!(
                "set it to at most {}, or raise limits.queue_depth",
                limits.queue_depth
            ),
        );
    }
    let client_places = limits
        .max_connections
        .saturating_sub(limits.admin_reserved_connections);
    if limits.max_connections != 0 && limits.admin_reserved_connections >= limits.max_connections {
        report.invalid(
            &KeyPath::of(&["limits", "admin_reserved_connections"]),
            format!(
                "is {}, not below limits.max_connections ({}), so no client could connect",
                limits.admin_reserved_connections, limits.max_connections
            ),
            format!(
                "set it below {}, or raise limits.max_connections",
                limits.max_connections
            ),
        );
    } else if limits.max_connections_per_uid > client_places {
        report.invalid(
            &KeyPath::of(&["limits", "max_connections_per_uid"]),
            format!(
                "is {}, more than the {client_places} places clients share \
                 (max_connections - admin_reserved_connections), so one client could take them all",
                limits.max_connections_per_uid
            ),
            format!("set it to at most {client_places}"),
        );
    }
    // A preview is never larger than its image (it is drawn from the
    // latents, 1/8 of the image's size, at most twice over), so the frame
    // check below covers previews too.
    let max_preview = crate::validate::MAX_PREVIEW_SIZE;
    if limits.preview_max_size > max_preview {
        report.invalid(
            &KeyPath::of(&["limits", "preview_max_size"]),
            format!(
                "is {}, more than {max_preview}; previews are small by design",
                limits.preview_max_size
            ),
            format!("set it to at most {max_preview} (256 is the default)"),
        );
    }
    let needed = largest_png_bytes(&config.bounds);
    if limits.max_response_frame != 0 && u64::from(limits.max_response_frame) < needed {
        report.invalid(
            &KeyPath::of(&["limits", "max_response_frame"]),
            format!(
                "is {} bytes, too small for the largest image the bounds allow ({}x{}: up to \
                 {needed} bytes as PNG)",
                limits.max_response_frame, config.bounds.max_width, config.bounds.max_height
            ),
            format!("raise it to at least {needed}, or lower bounds.max_width / bounds.max_height"),
        );
    }
}

fn check_bounds(bounds: &ParamBounds, report: &mut Report<'_, '_>) {
    let key = |name: &str| KeyPath::of(&["bounds", name]);
    for (name, value) in [
        ("min_width", bounds.min_width),
        ("max_width", bounds.max_width),
        ("min_height", bounds.min_height),
        ("max_height", bounds.max_height),
    ] {
        if value == 0 || value % 8 != 0 {
            let lower = value / 8 * 8;
            let suggestion = if lower == 0 { 8 } else { lower };
            report.invalid(
                &key(name),
                format!(
                    "is {value}; image sizes must be positive multiples of 8 (the VAE scales \
                     by 8)"
                ),
                format!("use a multiple of 8, like {suggestion} or {}", lower + 8),
            );
        }
    }
    for (min_name, min, max_name, max) in [
        ("min_width", bounds.min_width, "max_width", bounds.max_width),
        (
            "min_height",
            bounds.min_height,
            "max_height",
            bounds.max_height,
        ),
    ] {
        if min > max {
            report.invalid(
                &key(min_name),
                format!("is {min}, larger than bounds.{max_name} ({max})"),
                format!("make bounds.{min_name} at most bounds.{max_name}"),
            );
        }
    }
    for (name, value) in [
        ("max_steps", bounds.max_steps),
        ("max_prompt_len", bounds.max_prompt_len),
        ("max_batch", bounds.max_batch),
    ] {
        if value == 0 {
            report.invalid(
                &key(name),
                "is 0, which would refuse every request",
                format!("set `{name}` to at least 1, or remove it for the default"),
            );
        }
    }
    let guidance_ok = |value: f32| value.is_finite() && value >= 0.0;
    for (name, value) in [
        ("min_guidance", bounds.min_guidance),
        ("max_guidance", bounds.max_guidance),
    ] {
        if !guidance_ok(value) {
            report.invalid(
                &key(name),
                format!("is {value}; guidance must be a finite number of 0 or more"),
                "use a value like 1.0 or 30.0",
            );
        }
    }
    if guidance_ok(bounds.min_guidance)
        && guidance_ok(bounds.max_guidance)
        && bounds.min_guidance > bounds.max_guidance
    {
        report.invalid(
            &key("min_guidance"),
            format!(
                "is {}, larger than bounds.max_guidance ({})",
                bounds.min_guidance, bounds.max_guidance
            ),
            "make bounds.min_guidance at most bounds.max_guidance",
        );
    }
}

fn check_audit_and_worker(config: &Config, report: &mut Report<'_, '_>) {
    check_socket_path(&config.audit.sink, &KeyPath::of(&["audit", "sink"]), report);
    if config.mode == Mode::System && config.worker.seccomp_debug {
        report.invalid(
            &KeyPath::of(&["worker", "seccomp_debug"]),
            "is true in system mode; it lets a compromised worker make forbidden system calls \
             instead of being killed",
            "set `seccomp_debug = false` (debug the seccomp allowlist in user mode)",
        );
    }
    if let Some(threads) = config.worker.torch_threads {
        if threads == 0 || threads > super::MAX_TORCH_THREADS {
            report.invalid(
                &KeyPath::of(&["worker", "torch_threads"]),
                format!(
                    "is {threads}; libtorch needs 1 to {} threads",
                    super::MAX_TORCH_THREADS
                ),
                "set `torch_threads` to the number of CPUs the worker should use (e.g. 4), or \
                 remove it for libtorch's default",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn account_names_follow_useradd() {
        for good in ["weave", "weave-clients", "_weave", "Weave.x"] {
            assert!(is_account_name(good), "{good}");
        }
        for bad in ["", "1000", "-weave", "a b", "a:b", &"g".repeat(33)] {
            assert!(!is_account_name(bad), "{bad}");
        }
    }

    #[test]
    fn default_bounds_fit_the_default_frame() {
        let bounds = ParamBounds::default();
        let needed = largest_png_bytes(&bounds);
        assert!(needed > 1024 * 1024 * 3, "{needed}");
        assert!(needed < u64::from(super::super::Limits::default().max_response_frame));
    }
}
