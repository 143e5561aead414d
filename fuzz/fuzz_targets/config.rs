//! The config parser: any text as the daemon's config file, in user or
//! system mode (by the parity of the input length: parsing is the costly
//! part, and a file full of type errors is re-parsed once per error).
//!
//! Never panics; every problem renders as a message (with the line and
//! column of the key it is about, which indexes into the text); a config
//! that parses yields its derived values without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weave_common::config::{Config, EnvPaths};
use weave_common::proto::Mode;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = EnvPaths {
        home: Some("/home/fuzz".into()),
        xdg_config_home: None,
        xdg_runtime_dir: Some("/run/user/1000".into()),
    };
    let mode = if data.len().is_multiple_of(2) {
        Mode::User
    } else {
        Mode::System
    };
    match Config::from_toml_str(text, Path::new("/etc/weave/weave.toml"), mode) {
        Ok(config) => {
            assert_eq!(config.mode, mode);
            assert!(!config.models.is_empty());
            let _ = config.socket_path(&env);
            let _ = config.daemon_user();
            let _ = (config.limits.queue_deadline(), config.limits.job_timeout());
            for model in &config.models {
                assert!(model.path.is_absolute(), "{:?}", model.path);
                let _ = (model.is_single_file(), model.defaults());
                assert!(config.model(&model.id).is_some());
            }
        }
        Err(errors) => {
            assert!(!errors.problems.is_empty());
            let _ = errors.to_string();
        }
    }
});
