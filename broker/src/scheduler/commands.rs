//! Admin commands: connection threads hand load, unload and key rotation
//! to the lanes of the workers they concern, which run them between jobs
//! and answer each.
#![forbid(unsafe_code)]

use std::sync::{mpsc, Arc};
use std::time::Duration;

use weave_common::proto::ErrorCode;

use super::pool::{self, Gather, LaneTask};
use super::{failure_code, Broker, State};
use crate::job_runner::JobRunner;
use crate::placement::{self, Demand};

/// Admin operations a worker's lane performs between jobs.
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

    /// Hands an admin command to the lanes it concerns and waits for their
    /// answers: a load to one worker (the one placement picks, else the
    /// least busy), an unload and a key rotation to every worker; each runs
    /// it after the work it already has. Clearing a quarantine needs no
    /// worker (quarantine is per model, for the whole pool).
    fn command(&self, command: Command) -> Result<(), ErrorCode> {
        if let Command::ClearQuarantine(model_id) = &command {
            if self.is_shutting_down() {
                return Err(ErrorCode::ShuttingDown);
            }
            self.status.clear_quarantine(model_id);
            return Ok(());
        }
        let (sender, receiver) = mpsc::channel();
        {
            let mut state = self.lock();
            if state.shutting_down {
                return Err(ErrorCode::ShuttingDown);
            }
            let targets: Vec<usize> = match &command {
                Command::Load(model_id) => vec![load_target(&state, model_id, self.started)],
                Command::Unload | Command::RotateKeys | Command::ClearQuarantine(_) => {
                    (0..state.lanes.len()).collect()
                }
            };
            let gather = Gather::new(targets.len(), sender);
            for index in targets {
                if let Some(lane) = state.lanes.get_mut(index) {
                    lane.hand(LaneTask::Command(command.clone(), Arc::clone(&gather)));
                }
            }
        }
        self.wake.notify_all();
        // A model load can take a while; a running job finishes first.
        let limit = self.settings.limits.job_timeout() + Duration::from_secs(120);
        receiver
            .recv_timeout(limit)
            .unwrap_or(Err(ErrorCode::Internal))
    }

    /// Runs `command` on worker `index` (its lane's thread).
    pub(super) fn execute(
        &self,
        index: usize,
        runner: &mut dyn JobRunner,
        command: &Command,
    ) -> Result<(), ErrorCode> {
        match command {
            Command::Load(model_id) => self.ensure_loaded(index, runner, model_id),
            Command::Unload => {
                let result = runner.unload();
                self.set_loaded(index, None);
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

/// The worker an admin `Load` of `model_id` goes to: where placement would
/// run a job on it now, else one that holds it, else the least busy.
fn load_target(state: &State, model_id: &str, epoch: std::time::Instant) -> usize {
    let slots = pool::slots(&state.lanes, &state.pinned, epoch);
    let demand = Demand {
        model: model_id,
        loras: "",
        memory: None,
        max_workers: None,
    };
    if let Ok(placement) = placement::place(&demand, &slots) {
        return placement.worker();
    }
    if let Some(holding) = slots.iter().position(|s| s.loaded == Some(model_id)) {
        return holding;
    }
    (0..state.lanes.len())
        .min_by_key(|&i| state.lanes[i].outstanding)
        .unwrap_or(0)
}
