//! The values docs/PROTOCOL.md's examples encode, by name (see
//! `protocol_doc.rs`, which checks the document's bytes against them).

use std::collections::BTreeMap;

use weave_common::config::Device;
use weave_common::proto::{
    ChannelDirection, ChannelStatsReport, ErrorCode, GenerateRequest, GenerationDefaults, JobInfo,
    JobState, LoadedModel, Mode, ModelInfo, Request, Response, Role, Scheduler, SegmentStats,
    StatusReport, WorkerChannelStats, WorkerMemory, WorkerReport, WorkerState, PROTOCOL_VERSION,
};
use weave_common::validate::ParamBounds;

use super::Example;

/// A complete 1×1 RGB PNG (one orange pixel), so the image example is real.
const TINY_PNG: [u8; 69] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8, 0xdf, 0xc0, 0x00,
    0x00, 0x04, 0x01, 0x01, 0x80, 0xfb, 0xd7, 0xcb, 0xf1, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

fn model_id() -> String {
    "sd15".to_owned()
}

/// Every example the document must show, by name.
pub fn examples() -> BTreeMap<&'static str, Example> {
    let mut examples = BTreeMap::new();
    let mut request = |name, request| {
        examples.insert(name, Example::Request(request));
    };
    request(
        "request/hello",
        Request::Hello {
            version: PROTOCOL_VERSION,
            client_name: "weave-web".into(),
        },
    );
    request("request/list_models", Request::ListModels);
    request("request/status", Request::Status);
    request(
        "request/generate",
        Request::Generate(GenerateRequest {
            model_id: model_id(),
            prompt: "a red fox".into(),
            negative_prompt: "blurry".into(),
            width: Some(512),
            height: Some(768),
            steps: Some(30),
            guidance: Some(7.5),
            seed: Some(1234),
            scheduler: Some(Scheduler::DpmPp2mKarras),
            batch: 2,
            tag: Some("u-42".into()),
            use_model_negative: false,
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
            preview_every: 0,
        }),
    );
    request(
        "request/generate_model_defaults",
        Request::Generate(GenerateRequest {
            model_id: model_id(),
            prompt: "a red fox".into(),
            negative_prompt: String::new(),
            width: None,
            height: None,
            steps: None,
            guidance: None,
            seed: None,
            scheduler: None,
            batch: 1,
            tag: None,
            use_model_negative: true,
            init_image: None,
            mask: None,
            strength: None,
            loras: Vec::new(),
            preview_every: 0,
        }),
    );
    request(
        "request/generate_img2img",
        Request::Generate(GenerateRequest {
            model_id: model_id(),
            prompt: "a red fox".into(),
            negative_prompt: String::new(),
            width: Some(1),
            height: Some(1),
            steps: None,
            guidance: None,
            seed: None,
            scheduler: None,
            batch: 1,
            tag: None,
            use_model_negative: true,
            init_image: Some(TINY_PNG.to_vec()),
            mask: None,
            strength: Some(0.5),
            loras: Vec::new(),
            preview_every: 0,
        }),
    );
    request("request/cancel", Request::Cancel { job_id: 300 });
    request("request/jobs", Request::Jobs);
    request(
        "request/load",
        Request::Load {
            model_id: model_id(),
        },
    );
    request("request/unload", Request::Unload);
    request(
        "request/pin",
        Request::Pin {
            model_id: model_id(),
        },
    );
    request(
        "request/unpin",
        Request::Unpin {
            model_id: model_id(),
        },
    );
    request("request/drain", Request::Drain);
    request("request/resume", Request::Resume);
    request("request/rotate_keys", Request::RotateKeys);
    request("request/channel_stats", Request::ChannelStats);
    request("request/all_jobs", Request::AllJobs);
    request(
        "request/quarantine_clear",
        Request::QuarantineClear {
            model_id: model_id(),
        },
    );

    let mut response = |name, response| {
        examples.insert(name, Example::Response(response));
    };
    response(
        "response/hello",
        Response::Hello {
            version: PROTOCOL_VERSION,
            server_version: "0.1.0".into(),
            role: Role::Client,
            mode: Mode::System,
        },
    );
    response(
        "response/models",
        Response::Models(vec![ModelInfo {
            id: model_id(),
            kind: "sd1".into(),
            loaded: false,
            pinned: false,
            quarantined: false,
            defaults: GenerationDefaults {
                width: 512,
                height: 512,
                steps: 25,
                guidance: 7.5,
                scheduler: Scheduler::DpmPp2mKarras,
            },
            bounds: ParamBounds::default(),
            available: false,
            reason: Some("path /m/sd15 does not exist".into()),
        }]),
    );
    // A pool of two GPU workers: worker 0 idle with sd15 warm, worker 1
    // running job 7 (the job `response/jobs` shows) after one restart. The
    // top-level worker fields repeat worker 0, as the broker sends them.
    let idle_sd15 = LoadedModel {
        model_id: model_id(),
        loaded_for_s: 600,
        idle_for_s: 12,
        memory_bytes: 2_147_483_648,
    };
    let worker0_memory = WorkerMemory {
        resident_bytes: 1_073_741_824,
        peak_bytes: 2_147_483_648,
    };
    response(
        "response/status",
        Response::Status(StatusReport {
            daemon_version: "0.1.0".into(),
            mode: Mode::User,
            uptime_s: 3600,
            loaded: Some(idle_sd15.clone()),
            queue_depth: 0,
            draining: false,
            worker: WorkerState::Ready,
            worker_restarts: 0,
            sandbox: "landlock+seccomp".into(),
            device: Some(Device::Cuda(0)),
            worker_error: None,
            worker_memory: Some(worker0_memory),
            workers: vec![
                WorkerReport {
                    index: 0,
                    device: Device::Cuda(0),
                    state: WorkerState::Ready,
                    restarts: 0,
                    loaded: Some(idle_sd15),
                    job_id: None,
                    loads: 1,
                    memory: Some(worker0_memory),
                    sandbox: "landlock+seccomp".into(),
                },
                WorkerReport {
                    index: 1,
                    device: Device::Cuda(1),
                    state: WorkerState::Ready,
                    restarts: 1,
                    loaded: Some(LoadedModel {
                        model_id: model_id(),
                        loaded_for_s: 30,
                        idle_for_s: 0,
                        memory_bytes: 2_147_483_648,
                    }),
                    job_id: Some(7),
                    loads: 2,
                    memory: Some(WorkerMemory {
                        resident_bytes: 1_258_291_200,
                        peak_bytes: 2_147_483_648,
                    }),
                    sandbox: "landlock+seccomp".into(),
                },
            ],
        }),
    );
    response(
        "response/queued",
        Response::Queued {
            job_id: 7,
            position: 2,
        },
    );
    response(
        "response/position",
        Response::Position {
            job_id: 7,
            position: 0,
        },
    );
    response(
        "response/started",
        Response::Started {
            job_id: 7,
            seed: 1234,
        },
    );
    response(
        "response/progress",
        Response::Progress {
            job_id: 7,
            step: 1,
            total: 30,
        },
    );
    response(
        "response/image",
        Response::Image {
            job_id: 7,
            index: 0,
            seed: 1234,
            width: 1,
            height: 1,
            png: TINY_PNG.to_vec(),
        },
    );
    response("response/finished", Response::Finished { job_id: 7 });
    response(
        "response/preview",
        Response::Preview {
            job_id: 7,
            index: 0,
            step: 2,
            total: 6,
            width: 1,
            height: 1,
            png: TINY_PNG.to_vec(),
        },
    );
    response(
        "response/jobs",
        Response::Jobs(vec![
            JobInfo {
                job_id: 7,
                owner_uid: 1000,
                tag: Some("u-42".into()),
                model_id: model_id(),
                state: JobState::Running,
                position: None,
                submitted_s_ago: 3,
                step: 12,
                total: 30,
                device: Some(Device::Cuda(1)),
                run_ms: Some(2500),
                error: None,
                worker: Some(1),
            },
            JobInfo {
                job_id: 6,
                owner_uid: 1000,
                tag: None,
                model_id: model_id(),
                state: JobState::Failed,
                position: None,
                submitted_s_ago: 40,
                step: 0,
                total: 0,
                device: None,
                run_ms: None,
                error: Some(ErrorCode::TimedOut),
                worker: None,
            },
        ]),
    );
    // Each worker has its own channel: worker 0's keys were rotated twice
    // since it started, worker 1 restarted once and is at generation 1.
    let worker0_segments = vec![
        SegmentStats {
            direction: ChannelDirection::BrokerToWorker,
            slots: 8,
            slot_size: 65536,
            write_seq: 150,
            read_seq: 150,
            crc_failures: 0,
            tag_failures: 0,
            replays_rejected: 0,
        },
        SegmentStats {
            direction: ChannelDirection::WorkerToBroker,
            slots: 8,
            slot_size: 4_194_304,
            write_seq: 420,
            read_seq: 419,
            crc_failures: 1,
            tag_failures: 0,
            replays_rejected: 2,
        },
    ];
    response(
        "response/channel_stats",
        Response::ChannelStats(ChannelStatsReport {
            key_generation: 3,
            segments: worker0_segments.clone(),
            workers: vec![
                WorkerChannelStats {
                    worker: 0,
                    key_generation: 3,
                    segments: worker0_segments,
                },
                WorkerChannelStats {
                    worker: 1,
                    key_generation: 1,
                    segments: vec![
                        SegmentStats {
                            direction: ChannelDirection::BrokerToWorker,
                            slots: 8,
                            slot_size: 65536,
                            write_seq: 12,
                            read_seq: 12,
                            crc_failures: 0,
                            tag_failures: 0,
                            replays_rejected: 0,
                        },
                        SegmentStats {
                            direction: ChannelDirection::WorkerToBroker,
                            slots: 8,
                            slot_size: 4_194_304,
                            write_seq: 40,
                            read_seq: 40,
                            crc_failures: 0,
                            tag_failures: 0,
                            replays_rejected: 0,
                        },
                    ],
                },
            ],
        }),
    );
    response("response/ok", Response::Ok);
    for code in every_error_code() {
        let name: &'static str = format!("response/error/{}", code.name()).leak();
        response(name, Response::Error(code));
    }
    examples
}

pub fn every_error_code() -> Vec<ErrorCode> {
    vec![
        ErrorCode::InvalidParameter {
            field: "width".into(),
            allowed: "a multiple of 8 from 32 to 1024".into(),
        },
        ErrorCode::UnknownModel {
            model_id: "sdxl".into(),
        },
        ErrorCode::Busy {
            retry_after_ms: 2000,
        },
        ErrorCode::RateLimited {
            retry_after_ms: 500,
        },
        ErrorCode::Cancelled,
        ErrorCode::TimedOut,
        ErrorCode::WorkerCrashed,
        ErrorCode::NotPermitted {
            verb: "load".into(),
        },
        ErrorCode::ModelQuarantined,
        ErrorCode::ProtocolError {
            reason: "expected Hello".into(),
        },
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::ModelUnavailable,
    ]
}
