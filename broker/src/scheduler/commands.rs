//! The admin command queue: connection threads hand load, unload, key
//! rotation and quarantine clearing to the scheduler thread, which runs
//! them between jobs and answers each.
#![forbid(unsafe_code)]

use std::sync::mpsc;
use std::time::Duration;

use weave_common::proto::ErrorCode;

use super::{failure_code, Broker};
use crate::job_runner::JobRunner;

/// Admin operations the scheduler thread performs between jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Command {
    Load(String),
    Unload,
    RotateKeys,
    ClearQuarantine(String),
}

impl Broker {
    pub fn pin(&self, model_id: &str, pinned: bool) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        if pinned {
            self.lock().pinned.insert(model_id.to_owned());
            self.command(Command::Load(model_id.to_owned()))
        } else {
            self.lock().pinned.remove(model_id);
            self.wake.notify_all();
            Ok(())
        }
    }

    pub fn load(&self, model_id: &str) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        self.command(Command::Load(model_id.to_owned()))
    }

    pub fn unload(&self) -> Result<(), ErrorCode> {
        self.command(Command::Unload)
    }

    pub fn rotate_keys(&self) -> Result<(), ErrorCode> {
        self.command(Command::RotateKeys)
    }

    pub fn clear_quarantine(&self, model_id: &str) -> Result<(), ErrorCode> {
        self.known_model(model_id)?;
        self.command(Command::ClearQuarantine(model_id.to_owned()))
    }

    fn known_model(&self, model_id: &str) -> Result<(), ErrorCode> {
        match self.settings.model(model_id) {
            Some(_) => Ok(()),
            None => Err(ErrorCode::UnknownModel {
                model_id: model_id.to_owned(),
            }),
        }
    }

    /// Hands an admin command to the scheduler thread and waits for it.
    fn command(&self, command: Command) -> Result<(), ErrorCode> {
        let (sender, receiver) = mpsc::channel();
        {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(ErrorCode::ShuttingDown);
            }
            state.commands.push((command, sender));
        }
        self.wake.notify_all();
        // A model load can take a while; a running job finishes first.
        let limit = self.settings.limits.job_timeout() + Duration::from_secs(120);
        receiver
            .recv_timeout(limit)
            .unwrap_or(Err(ErrorCode::Internal))
    }

    pub(super) fn execute(
        &self,
        runner: &mut dyn JobRunner,
        command: &Command,
    ) -> Result<(), ErrorCode> {
        match command {
            Command::Load(model_id) => self.ensure_loaded(runner, model_id),
            Command::Unload => {
                let result = runner.unload();
                self.lock().loaded = None;
                result.map_err(|error| failure_code("unload", &error))
            }
            Command::RotateKeys => runner
                .rotate_keys()
                .map(|_| ())
                .map_err(|error| failure_code("key rotation", &error)),
            Command::ClearQuarantine(model_id) => {
                runner.clear_quarantine(model_id);
                Ok(())
            }
        }
    }
}
