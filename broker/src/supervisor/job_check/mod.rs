//! The per-message check of what a worker sends during one job. Pure: no
//! I/O and no clock, so every way a worker can lie has a unit test here
//! (the cross-process tests in `tests/` add a real lying process).
#![forbid(unsafe_code)]

use weave_common::image::ImageField;
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
    /// A checked preview, to PNG-encode and forward (or drop).
    Preview(Preview),
}

/// One preview of image `index` after `step` of its `total` steps: RGB8,
/// checked against the request and `preview_max_size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub index: u32,
    pub step: u32,
    pub total: u32,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
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
    /// `(index, step)` of the last preview: they must rise.
    last_preview: Option<(u32, u32)>,
}

impl<'a> JobCheck<'a> {
    pub fn new(job_id: u64, params: &'a WorkerGenerateParams, image_len: usize) -> Self {
        Self {
            job_id,
            params,
            image_len,
            last_step: 0,
            images: Vec::new(),
            last_preview: None,
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
                if total != params.steps_to_run()
                    || step == 0
                    || step > total
                    || step < self.last_step
                    || !self.images.is_empty()
                {
                    return Err(CrashCause::BadOutput(format!(
                        "progress {step}/{total} out of order for {} steps",
                        params.steps_to_run()
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
            FromWorker::Preview {
                job_id: id,
                index,
                step,
                total,
                width,
                height,
                rgb,
            } => {
                if id != job_id {
                    return Err(violation(format!(
                        "preview for job {id} during job {job_id}"
                    )));
                }
                let preview = Preview {
                    index,
                    step,
                    total,
                    width,
                    height,
                    rgb,
                };
                if let Some(problem) = self.preview_problem(&preview) {
                    return Err(CrashCause::BadOutput(problem));
                }
                self.last_preview = Some((index, step));
                Ok(Checked::Event(JobEvent::Preview(preview)))
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
                // Only a field the job has can be at fault.
                WorkerFailure::BadImage { field, problem } => {
                    let sent = params.image.as_ref().is_some_and(|image| match field {
                        ImageField::InitImage => true,
                        ImageField::Mask => image.mask_png.is_some(),
                    });
                    if sent {
                        Ok(Checked::Failed(SupervisorError::BadImage {
                            field,
                            problem,
                        }))
                    } else {
                        Err(violation(format!(
                            "worker blames {} the job does not have",
                            field.name()
                        )))
                    }
                }
                WorkerFailure::ImageNotBuilt { reason } if params.image.is_some() => {
                    Ok(Checked::Failed(SupervisorError::ImageNotBuilt {
                        reason: bounded(reason),
                    }))
                }
                WorkerFailure::ImageNotBuilt { .. } => Err(violation(
                    "worker claims image inputs are not built for a text-to-image job".into(),
                )),
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

impl JobCheck<'_> {
    /// What is wrong with a preview, if anything: one the job did not ask
    /// for, of an image already delivered or beyond the batch (the worker
    /// sends a batch's images at its end, so previews of later images may
    /// come first; `(index, step)` must rise), at a step that is
    /// not a multiple of `preview_every` or out of order, or larger than
    /// `preview_max_size` or its image.
    fn preview_problem(&self, p: &Preview) -> Option<String> {
        let params = self.params;
        let every = params.preview_every;
        let current = u32::try_from(self.images.len()).unwrap_or(u32::MAX);
        let max = params.preview_max_size;
        let rgb_len = usize::try_from(p.width)
            .ok()
            .zip(usize::try_from(p.height).ok())
            .and_then(|(w, h)| w.checked_mul(h)?.checked_mul(3));
        if every == 0 {
            Some("a preview the job did not ask for".into())
        } else if p.index < current || p.index >= params.batch {
            Some(format!(
                "a preview of image {}, with {current} of {} images delivered",
                p.index, params.batch
            ))
        } else if p.total != params.steps_to_run()
            || p.step == 0
            || p.step > p.total
            || p.step % every != 0
        {
            Some(format!(
                "preview at step {}/{} for previews every {every} of {} steps",
                p.step,
                p.total,
                params.steps_to_run()
            ))
        } else if self
            .last_preview
            .is_some_and(|last| last >= (p.index, p.step))
        {
            Some(format!(
                "preview {}/{} of image {} out of order",
                p.step, p.total, p.index
            ))
        } else if p.width == 0
            || p.height == 0
            || p.width > max
            || p.height > max
            || p.width > params.width
            || p.height > params.height
        {
            Some(format!(
                "preview {}x{}, more than {max} pixels a side or its {}x{} image",
                p.width, p.height, params.width, params.height
            ))
        } else if rgb_len != Some(p.rgb.len()) {
            Some(format!(
                "{} bytes of preview pixels for {}x{}",
                p.rgb.len(),
                p.width,
                p.height
            ))
        } else {
            None
        }
    }
}

fn asked_for(params: &WorkerGenerateParams, id: &str) -> bool {
    params.loras.iter().any(|lora| lora.id == id)
}

#[cfg(test)]
mod tests;
