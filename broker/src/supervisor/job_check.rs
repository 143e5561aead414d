//! The per-message check of what a worker sends during one job. Pure: no
//! I/O and no clock, so every way a worker can lie has a unit test here
//! (the cross-process tests in `tests/` add a real lying process).
#![forbid(unsafe_code)]

use weave_common::worker_proto::{FromWorker, WorkerFailure, WorkerGenerateParams};

use super::error::{bounded, worker_text};
use super::{CrashCause, LoadInfo, SupervisorError};

/// Events of a running job, in the order the worker produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The job's model had to be loaded first.
    ModelLoaded(LoadInfo),
    Progress {
        step: u32,
        total: u32,
    },
    /// Image `index` is done (the pixels are in the result).
    Image {
        index: u32,
    },
}

/// One output image: RGB8, row-major, checked against the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// What one accepted message means for the job.
#[derive(Debug)]
pub enum Checked {
    /// Keep waiting; tell the caller.
    Event(JobEvent),
    /// The job is done: every image of the batch, in order.
    Finished(Vec<Image>),
    /// The worker failed the job for a reason that is not a lie.
    Failed(SupervisorError),
}

/// The state of one job as far as the worker's messages have taken it.
#[derive(Debug)]
pub struct JobCheck<'a> {
    job_id: u64,
    params: &'a WorkerGenerateParams,
    /// Bytes of one image (`width × height × 3`).
    image_len: usize,
    last_step: u32,
    images: Vec<Image>,
}

impl<'a> JobCheck<'a> {
    pub fn new(job_id: u64, params: &'a WorkerGenerateParams, image_len: usize) -> Self {
        Self {
            job_id,
            params,
            image_len,
            last_step: 0,
            images: Vec::new(),
        }
    }

    /// Checks the next message. `Err` is a lie or a protocol violation: the
    /// worker must be killed; nothing it sent for this job is used.
    pub fn accept(&mut self, msg: FromWorker) -> Result<Checked, CrashCause> {
        let job_id = self.job_id;
        let params = self.params;
        let violation = CrashCause::ProtocolViolation;
        match msg {
            FromWorker::Progress {
                job_id: id,
                step,
                total,
            } => {
                if id != job_id {
                    return Err(violation(format!(
                        "progress for job {id} during job {job_id}"
                    )));
                }
                if total != params.steps
                    || step == 0
                    || step > total
                    || step < self.last_step
                    || !self.images.is_empty()
                {
                    return Err(CrashCause::BadOutput(format!(
                        "progress {step}/{total} out of order for {} steps",
                        params.steps
                    )));
                }
                self.last_step = step;
                Ok(Checked::Event(JobEvent::Progress { step, total }))
            }
            FromWorker::Image {
                job_id: id,
                index,
                width,
                height,
                rgb,
            } => {
                if id != job_id {
                    return Err(violation(format!("image for job {id} during job {job_id}")));
                }
                let expected_index = u32::try_from(self.images.len()).unwrap_or(u32::MAX);
                let problem = if index != expected_index {
                    Some(format!("image index {index}, expected {expected_index}"))
                } else if index >= params.batch {
                    Some(format!("more than the {} images requested", params.batch))
                } else if width != params.width || height != params.height {
                    Some(format!(
                        "image {width}x{height}, requested {}x{}",
                        params.width, params.height
                    ))
                } else if rgb.len() != self.image_len {
                    Some(format!(
                        "{} bytes of pixels, expected {}",
                        rgb.len(),
                        self.image_len
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(CrashCause::BadOutput(problem));
                }
                self.images.push(Image { width, height, rgb });
                Ok(Checked::Event(JobEvent::Image { index }))
            }
            FromWorker::Finished { job_id: id } => {
                if id != job_id {
                    return Err(violation(format!(
                        "finish for job {id} during job {job_id}"
                    )));
                }
                if self.images.len() != usize::try_from(params.batch).unwrap_or(usize::MAX) {
                    return Err(CrashCause::BadOutput(format!(
                        "{} images for a batch of {}",
                        self.images.len(),
                        params.batch
                    )));
                }
                Ok(Checked::Finished(std::mem::take(&mut self.images)))
            }
            FromWorker::Failed {
                job_id: Some(id),
                failure,
            } if id == job_id => match failure {
                WorkerFailure::Cancelled => Ok(Checked::Failed(SupervisorError::Cancelled)),
                WorkerFailure::EngineError { reason } => {
                    Ok(Checked::Failed(SupervisorError::EngineError {
                        reason: bounded(reason),
                    }))
                }
                WorkerFailure::Unsupported { reason } => {
                    Ok(Checked::Failed(SupervisorError::Unsupported {
                        reason: bounded(reason),
                    }))
                }
                // The count must exceed the limit the broker sent; anything
                // else is the worker inventing a caller error.
                WorkerFailure::PromptTooLong { field, chunks } => {
                    if chunks > params.max_prompt_chunks {
                        Ok(Checked::Failed(SupervisorError::PromptTooLong {
                            field,
                            max: params.max_prompt_chunks,
                        }))
                    } else {
                        Err(violation(format!(
                            "worker claims a prompt of {chunks} chunks exceeds the limit of {}",
                            params.max_prompt_chunks
                        )))
                    }
                }
                // The supervisor loaded the model itself: the worker lost track.
                WorkerFailure::NotLoaded | WorkerFailure::UnknownModel => Err(violation(format!(
                    "worker claims {failure:?} for a loaded model"
                ))),
                WorkerFailure::LoadFailed { .. } | WorkerFailure::PinMismatch => {
                    Err(violation("load failure during a generation".into()))
                }
                // Only a LoRA the job asked for may fail.
                WorkerFailure::LoraFailed { id, reason } if asked_for(params, &id) => {
                    Ok(Checked::Failed(SupervisorError::LoraFailed {
                        id,
                        reason: worker_text(reason),
                    }))
                }
                WorkerFailure::LoraPinMismatch { id } if asked_for(params, &id) => {
                    Ok(Checked::Failed(SupervisorError::LoraPinMismatch { id }))
                }
                WorkerFailure::LoraFailed { .. } | WorkerFailure::LoraPinMismatch { .. } => Err(
                    violation("a LoRA failure for a LoRA the job did not use".into()),
                ),
            },
            other => Err(violation(format!(
                "unexpected message kind {} during job {job_id}",
                other.kind()
            ))),
        }
    }
}

fn asked_for(params: &WorkerGenerateParams, id: &str) -> bool {
    params.loras.iter().any(|lora| lora.id == id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use weave_common::prompt::PromptField;
    use weave_common::proto::ErrorCode;
    use weave_common::proto::Scheduler;
    use weave_common::worker_proto::SandboxReport;

    const JOB: u64 = 7;

    fn params(batch: u32) -> WorkerGenerateParams {
        WorkerGenerateParams {
            model_id: "m".into(),
            prompt: "p".into(),
            negative_prompt: String::new(),
            width: 4,
            height: 2,
            steps: 3,
            guidance: 1.0,
            seed: 1,
            scheduler: Scheduler::Ddim,
            batch,
            max_prompt_chunks: 8,
            loras: Vec::new(),
        }
    }

    const LEN: usize = 4 * 2 * 3;

    fn progress(step: u32, total: u32) -> FromWorker {
        FromWorker::Progress {
            job_id: JOB,
            step,
            total,
        }
    }

    fn image(index: u32, width: u32, height: u32, len: usize) -> FromWorker {
        FromWorker::Image {
            job_id: JOB,
            index,
            width,
            height,
            rgb: vec![9; len],
        }
    }

    fn finished() -> FromWorker {
        FromWorker::Finished { job_id: JOB }
    }

    fn failed(failure: WorkerFailure) -> FromWorker {
        FromWorker::Failed {
            job_id: Some(JOB),
            failure,
        }
    }

    /// Feeds `messages`; returns what the last one gave.
    fn run(batch: u32, messages: Vec<FromWorker>) -> Result<Checked, CrashCause> {
        let params = params(batch);
        let mut check = JobCheck::new(JOB, &params, LEN);
        let mut last = None;
        for msg in messages {
            last = Some(check.accept(msg)?);
        }
        Ok(last.unwrap())
    }

    fn bad_output(batch: u32, messages: Vec<FromWorker>) -> String {
        match run(batch, messages) {
            Err(CrashCause::BadOutput(what)) => what,
            other => panic!("not bad output: {other:?}"),
        }
    }

    fn violation(batch: u32, messages: Vec<FromWorker>) -> String {
        match run(batch, messages) {
            Err(CrashCause::ProtocolViolation(what)) => what,
            other => panic!("not a protocol violation: {other:?}"),
        }
    }

    #[test]
    fn an_honest_job_yields_its_events_then_the_images() {
        let params = params(2);
        let mut check = JobCheck::new(JOB, &params, LEN);
        for step in 1..=3 {
            assert!(matches!(
                check.accept(progress(step, 3)).unwrap(),
                Checked::Event(JobEvent::Progress { step: s, total: 3 }) if s == step
            ));
        }
        assert!(matches!(
            check.accept(image(0, 4, 2, LEN)).unwrap(),
            Checked::Event(JobEvent::Image { index: 0 })
        ));
        check.accept(image(1, 4, 2, LEN)).unwrap();
        let Checked::Finished(images) = check.accept(finished()).unwrap() else {
            panic!("not finished");
        };
        assert_eq!(images.len(), 2);
        assert_eq!(images[1].rgb, vec![9; LEN]);
        // A repeated step is allowed (the worker may report a step twice).
        assert!(run(1, vec![progress(1, 3), progress(1, 3)]).is_ok());
    }

    #[test]
    fn progress_that_does_not_fit_the_request_is_bad_output() {
        assert!(bad_output(1, vec![progress(1, 4)]).contains("1/4"));
        assert!(bad_output(1, vec![progress(0, 3)]).contains("0/3"));
        assert!(bad_output(1, vec![progress(4, 3)]).contains("4/3"));
        assert!(bad_output(1, vec![progress(2, 3), progress(1, 3)]).contains("1/3"));
        bad_output(2, vec![image(0, 4, 2, LEN), progress(3, 3)]);
    }

    #[test]
    fn images_that_do_not_fit_the_request_are_bad_output() {
        assert!(bad_output(2, vec![image(1, 4, 2, LEN)]).contains("index 1, expected 0"));
        assert!(
            bad_output(1, vec![image(0, 4, 2, LEN), image(0, 4, 2, LEN)])
                .contains("index 0, expected 1")
        );
        assert!(
            bad_output(1, vec![image(0, 4, 2, LEN), image(1, 4, 2, LEN)])
                .contains("more than the 1 images")
        );
        assert!(bad_output(1, vec![image(0, 2, 4, LEN)]).contains("2x4, requested 4x2"));
        assert!(bad_output(1, vec![image(0, 4, 2, LEN - 1)]).contains("23 bytes"));
        assert!(bad_output(1, vec![image(0, 4, 2, LEN * 16)]).contains("384 bytes"));
    }

    #[test]
    fn finishing_short_of_the_batch_is_bad_output() {
        assert!(bad_output(2, vec![image(0, 4, 2, LEN), finished()]).contains("1 images"));
        assert!(bad_output(1, vec![finished()]).contains("0 images for a batch of 1"));
    }

    #[test]
    fn messages_for_another_job_are_protocol_violations() {
        let other = JOB + 1;
        let progress = FromWorker::Progress {
            job_id: other,
            step: 1,
            total: 3,
        };
        assert!(violation(1, vec![progress]).contains("progress for job 8 during job 7"));
        let image = FromWorker::Image {
            job_id: other,
            index: 0,
            width: 4,
            height: 2,
            rgb: vec![0; LEN],
        };
        assert!(violation(1, vec![image]).contains("image for job 8"));
        assert!(violation(1, vec![FromWorker::Finished { job_id: other }]).contains("finish"));
        let failed_other = FromWorker::Failed {
            job_id: Some(other),
            failure: WorkerFailure::Cancelled,
        };
        assert!(violation(1, vec![failed_other]).contains("unexpected message kind 7"));
        let failed_load = FromWorker::Failed {
            job_id: None,
            failure: WorkerFailure::UnknownModel,
        };
        assert!(violation(1, vec![failed_load]).contains("unexpected message kind 7"));
    }

    #[test]
    fn messages_of_another_exchange_are_protocol_violations() {
        let ready = FromWorker::Ready {
            sandbox: SandboxReport {
                landlock: "FullyEnforced".into(),
                landlock_abi: 1,
                seccomp_mode: 2,
                seccomp_debug: false,
                no_new_privs: true,
                capabilities_empty: true,
                fully_enforced: true,
            },
            device: weave_common::config::Device::Cpu,
        };
        let loaded = FromWorker::Loaded {
            model_id: "m".into(),
            memory_bytes: 1,
            load_ms: 1,
        };
        for msg in [ready, loaded, FromWorker::Unloaded, FromWorker::RekeyAck] {
            let kind = msg.kind();
            let what = violation(1, vec![msg]);
            assert!(what.contains(&format!("kind {kind}")), "{what}");
        }
    }

    #[test]
    fn failures_that_contradict_the_load_are_protocol_violations() {
        assert!(violation(1, vec![failed(WorkerFailure::NotLoaded)]).contains("NotLoaded"));
        assert!(violation(1, vec![failed(WorkerFailure::UnknownModel)]).contains("UnknownModel"));
        let load = WorkerFailure::LoadFailed { reason: "x".into() };
        assert!(violation(1, vec![failed(load)]).contains("load failure"));
    }

    #[test]
    fn honest_failures_are_typed_errors_with_bounded_reasons() {
        assert!(matches!(
            run(1, vec![progress(1, 3), failed(WorkerFailure::Cancelled)]),
            Ok(Checked::Failed(SupervisorError::Cancelled))
        ));
        let long = WorkerFailure::EngineError {
            reason: "x".repeat(10_000),
        };
        match run(1, vec![failed(long)]) {
            Ok(Checked::Failed(SupervisorError::EngineError { reason })) => {
                assert!(reason.len() < 600, "{}", reason.len());
            }
            other => panic!("{other:?}"),
        }
        let unsupported = WorkerFailure::Unsupported {
            reason: "size".into(),
        };
        assert!(matches!(
            run(1, vec![failed(unsupported)]),
            Ok(Checked::Failed(SupervisorError::Unsupported { .. }))
        ));
    }

    #[test]
    fn a_prompt_too_long_must_exceed_the_limit_sent() {
        let too_long = |chunks| WorkerFailure::PromptTooLong {
            field: PromptField::NegativePrompt,
            chunks,
        };
        match run(1, vec![failed(too_long(9))]) {
            Ok(Checked::Failed(error @ SupervisorError::PromptTooLong { max: 8, .. })) => {
                match error.error_code() {
                    ErrorCode::InvalidParameter { field, allowed } => {
                        assert_eq!(field, "negative_prompt");
                        assert!(allowed.contains("at most 8 chunks"), "{allowed}");
                    }
                    other => panic!("{other:?}"),
                }
            }
            other => panic!("{other:?}"),
        }
        assert!(violation(1, vec![failed(too_long(8))]).contains("exceeds the limit of 8"));
    }
}
