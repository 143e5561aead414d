//! `sshmctl config check`: the daemon's own config checks, run offline, with
//! every problem reported at once.
#![forbid(unsafe_code)]

use std::path::Path;

use serde_json::json;
use weave_common::config::{Config, EnvPaths, ModelConfig, DEFAULT_DAEMON_USER};
use weave_common::proto::Mode;

use crate::render::Renderer;

/// Exit code when the config has problems.
pub const EXIT_PROBLEMS: u8 = 7;

/// Exit code 0 when the daemon would accept the config, 7 when not.
pub fn run(path: Option<&Path>, system: bool, out: &Renderer) -> u8 {
    let mode = if system { Mode::System } else { Mode::User };
    let path = match path {
        Some(p) => p.to_owned(),
        None => match Config::default_path(mode, &EnvPaths::from_process()) {
            Ok(p) => p,
            Err(problem) => {
                report(out, None, &[problem.to_string()]);
                return EXIT_PROBLEMS;
            }
        },
    };
    // The same owners the daemon accepts: the user himself in user mode;
    // root or the daemon account in system mode.
    let owners = match mode {
        Mode::User => vec![current_uid()],
        Mode::System => {
            let mut owners = vec![0];
            owners.extend(lookup_uid(DEFAULT_DAEMON_USER));
            owners
        }
    };
    match Config::check(&path, mode, &owners) {
        Ok(config) => {
            if out.is_json() {
                let sizes: Vec<_> = config
                    .models
                    .iter()
                    .map(|m| {
                        let d = m.defaults();
                        json!({
                            "id": m.id, "native_size": m.native_size,
                            "width": d.width, "height": d.height,
                        })
                    })
                    .collect();
                out.json_line(&json!({
                    "ok": true, "path": path, "mode": mode.to_string(),
                    "models": config.models.iter().map(|m| &m.id).collect::<Vec<_>>(),
                    "sizes": sizes,
                }));
            } else {
                println!(
                    "{}: ok ({} mode, {} model{})",
                    path.display(),
                    mode,
                    config.models.len(),
                    if config.models.len() == 1 { "" } else { "s" }
                );
                for model in &config.models {
                    println!("  {}", size_line(model));
                }
            }
            0
        }
        Err(errors) => {
            if out.is_json() {
                let problems: Vec<String> =
                    errors.problems.iter().map(ToString::to_string).collect();
                report(out, Some(&path), &problems);
            } else {
                eprintln!("{errors}");
            }
            EXIT_PROBLEMS
        }
    }
}

/// `digits: default size 32x32 (native size of its folder)`.
fn size_line(model: &ModelConfig) -> String {
    let d = model.defaults();
    let from = match (
        &model.defaults.width,
        &model.defaults.height,
        model.native_size,
    ) {
        (Some(_), Some(_), _) => "from [model.defaults]".to_owned(),
        (_, _, Some(native)) => format!("native size {native} declared by its folder"),
        (_, _, None) => format!("the {} default", model.kind),
    };
    format!(
        "{}: default size {}x{} ({from})",
        model.id, d.width, d.height
    )
}

fn report(out: &Renderer, path: Option<&Path>, problems: &[String]) {
    if out.is_json() {
        out.json_line(&json!({ "ok": false, "path": path, "problems": problems }));
    } else {
        for p in problems {
            eprintln!("sshmctl: {p}");
        }
    }
}

fn current_uid() -> u32 {
    weave_common::syscall::real_uid()
}

/// The uid of a system account, from the passwd database.
fn lookup_uid(name: &str) -> Option<u32> {
    weave_common::accounts::user_by_name(name)
        .ok()
        .flatten()
        .map(|user| user.uid)
}
