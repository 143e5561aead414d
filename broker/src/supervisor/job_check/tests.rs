//! Unit tests of the parent module.
#![allow(clippy::unwrap_used)]

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
        image: None,
        preview_every: 0,
        preview_max_size: 0,
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

#[test]
fn image_jobs_count_their_steps_and_blame_only_their_fields() {
    use weave_common::image::{ImageField, ImageProblem};
    let mut job = params(1);
    job.steps = 10;
    job.image = Some(weave_common::worker_proto::WorkerImageInput {
        init_png: vec![1],
        mask_png: None,
        strength: 0.35,
    });
    let mut check = JobCheck::new(JOB, &job, LEN);
    // int(10 × 0.35) = 3 steps: a total of 10 is a lie.
    assert!(check.accept(progress(1, 3)).is_ok());
    let mut check = JobCheck::new(JOB, &job, LEN);
    assert!(matches!(
        check.accept(progress(1, 10)),
        Err(CrashCause::BadOutput(_))
    ));
    let bad = |field| {
        failed(WorkerFailure::BadImage {
            field,
            problem: ImageProblem::Corrupt,
        })
    };
    let mut check = JobCheck::new(JOB, &job, LEN);
    match check.accept(bad(ImageField::InitImage)) {
        Ok(Checked::Failed(error)) => match error.error_code() {
            ErrorCode::InvalidParameter { field, allowed } => {
                assert_eq!(field, "init_image");
                assert!(allowed.contains("decodes"), "{allowed}");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // No mask was sent: the worker cannot blame one.
    let mut check = JobCheck::new(JOB, &job, LEN);
    assert!(matches!(
        check.accept(bad(ImageField::Mask)),
        Err(CrashCause::ProtocolViolation(_))
    ));
    let not_built = || {
        failed(WorkerFailure::ImageNotBuilt {
            reason: "image inputs with SDXL models".into(),
        })
    };
    let mut check = JobCheck::new(JOB, &job, LEN);
    match check.accept(not_built()) {
        Ok(Checked::Failed(error)) => {
            let ErrorCode::InvalidParameter { field, allowed } = error.error_code() else {
                panic!("{error:?}");
            };
            assert_eq!(field, "init_image");
            assert!(allowed.contains("SDXL") && allowed.contains("without init_image"));
        }
        other => panic!("{other:?}"),
    }
    // A text-to-image job cannot fail for want of image support.
    assert!(matches!(
        run(1, vec![not_built()]),
        Err(CrashCause::ProtocolViolation(_))
    ));
}

fn preview(index: u32, step: u32, width: u32, height: u32, len: usize) -> FromWorker {
    FromWorker::Preview {
        job_id: JOB,
        index,
        step,
        total: 3,
        width,
        height,
        rgb: vec![5; len],
    }
}

/// Runs `messages` against a batch-2 job with previews every step, at
/// most 4 pixels a side (the image is 4x2).
fn run_previews(messages: Vec<FromWorker>) -> Result<Vec<JobEvent>, CrashCause> {
    let mut params = params(2);
    params.preview_every = 1;
    params.preview_max_size = 4;
    let mut check = JobCheck::new(JOB, &params, LEN);
    let mut events = Vec::new();
    for msg in messages {
        if let Checked::Event(event) = check.accept(msg)? {
            events.push(event);
        }
    }
    Ok(events)
}

fn bad_preview(messages: Vec<FromWorker>) -> String {
    match run_previews(messages) {
        Err(CrashCause::BadOutput(what)) => what,
        other => panic!("not bad output: {other:?}"),
    }
}

#[test]
fn honest_previews_are_passed_on_in_order() {
    let events = run_previews(vec![
        preview(0, 1, 2, 1, 6),
        progress(1, 3),
        preview(0, 3, 4, 2, 24),
        preview(1, 1, 2, 1, 6),
        image(0, 4, 2, LEN),
        preview(1, 2, 2, 1, 6),
    ])
    .unwrap();
    assert!(matches!(
        &events[0],
        JobEvent::Preview(Preview { index: 0, step: 1, total: 3, width: 2, height: 1, rgb })
            if rgb.len() == 6
    ));
    assert!(matches!(
        &events[5],
        JobEvent::Preview(Preview {
            index: 1,
            step: 2,
            ..
        })
    ));
}

#[test]
fn previews_that_do_not_fit_the_request_are_bad_output() {
    // Not asked for.
    assert!(bad_output(1, vec![preview(0, 1, 2, 1, 6)]).contains("did not ask"));
    // Of an image delivered, beyond the batch, or going back.
    assert!(bad_preview(vec![preview(2, 1, 2, 1, 6)]).contains("image 2, with 0 of 2"));
    assert!(
        bad_preview(vec![image(0, 4, 2, LEN), preview(0, 1, 2, 1, 6)])
            .contains("image 0, with 1 of 2")
    );
    assert!(
        bad_preview(vec![preview(1, 1, 2, 1, 6), preview(0, 2, 2, 1, 6)]).contains("out of order")
    );
    // Steps out of range or out of order.
    assert!(bad_preview(vec![preview(0, 0, 2, 1, 6)]).contains("step 0/3"));
    assert!(bad_preview(vec![preview(0, 4, 2, 1, 6)]).contains("step 4/3"));
    let mut long = preview(0, 1, 2, 1, 6);
    if let FromWorker::Preview { total, .. } = &mut long {
        *total = 4;
    }
    assert!(bad_preview(vec![long]).contains("1/4"));
    assert!(
        bad_preview(vec![preview(0, 2, 2, 1, 6), preview(0, 2, 2, 1, 6)]).contains("out of order")
    );
    // Too large, empty, or pixels that do not match the size.
    assert!(bad_preview(vec![preview(0, 1, 5, 1, 15)]).contains("5x1"));
    assert!(bad_preview(vec![preview(0, 1, 4, 3, 36)]).contains("4x3"));
    assert!(bad_preview(vec![preview(0, 1, 0, 1, 0)]).contains("0x1"));
    assert!(bad_preview(vec![preview(0, 1, 2, 1, 7)]).contains("7 bytes"));
    // Another job's.
    let other = FromWorker::Preview {
        job_id: JOB + 1,
        index: 0,
        step: 1,
        total: 3,
        width: 1,
        height: 1,
        rgb: vec![0; 3],
    };
    assert!(matches!(
        run_previews(vec![other]),
        Err(CrashCause::ProtocolViolation(what)) if what.contains("preview for job 8")
    ));
}

#[test]
fn previews_every_k_steps_must_be_multiples_of_k() {
    let mut params = params(1);
    params.preview_every = 2;
    params.preview_max_size = 4;
    let mut check = JobCheck::new(JOB, &params, LEN);
    assert!(check.accept(preview(0, 2, 2, 1, 6)).is_ok());
    assert!(matches!(
        check.accept(preview(0, 3, 2, 1, 6)),
        Err(CrashCause::BadOutput(what)) if what.contains("every 2")
    ));
}
