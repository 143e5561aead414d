//! The worker pool in the human output: the per-worker table under
//! `status` and each worker's channel under `segments`. Pure functions
//! from the daemon's answer to lines, so the layout is unit-tested without
//! a daemon.
#![forbid(unsafe_code)]

use weave_common::proto::{
    ChannelDirection, ChannelStatsReport, SegmentStats, WorkerReport, WorkerState,
};

use crate::render::{human_bytes, human_duration};

pub fn worker_state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Ready => "ready",
        WorkerState::Restarting => "restarting",
        WorkerState::Down => "down",
    }
}

/// `status`'s worker table: a header, then one line per worker in index
/// order (device, state, the model it holds, the job it runs, restarts,
/// model loads, memory).
pub fn worker_lines(workers: &[WorkerReport]) -> Vec<String> {
    let row = |cells: [&str; 8]| {
        format!(
            "{:<6} {:<8} {:<10} {:<24} {:<8} {:<8} {:<6} {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
        .trim_end()
        .to_owned()
    };
    let mut lines = vec![row([
        "WORKER", "DEVICE", "STATE", "MODEL", "JOB", "RESTARTS", "LOADS", "MEMORY",
    ])];
    for w in workers {
        let model = w.loaded.as_ref().map_or("-".to_owned(), |m| {
            if w.job_id.is_some() {
                m.model_id.clone()
            } else {
                format!("{} (idle {})", m.model_id, human_duration(m.idle_for_s))
            }
        });
        let memory = w.memory.map_or("-".to_owned(), |m| {
            format!(
                "{} (peak {})",
                human_bytes(m.resident_bytes),
                human_bytes(m.peak_bytes)
            )
        });
        lines.push(row([
            &w.index.to_string(),
            &w.device.to_string(),
            worker_state_name(w.state),
            &model,
            &w.job_id.map_or("-".to_owned(), |id| id.to_string()),
            &w.restarts.to_string(),
            &w.loads.to_string(),
            &memory,
        ]));
    }
    lines
}

/// `segments`: every worker's key generation and its two segments, a
/// blank line between workers. A report without the pool's list (none
/// comes from this protocol version's broker) shows its top level alone.
pub fn segment_lines(stats: &ChannelStatsReport) -> Vec<String> {
    if stats.workers.is_empty() {
        let mut lines = vec![format!("key generation {}", stats.key_generation)];
        lines.extend(segment_table(&stats.segments));
        return lines;
    }
    let mut lines = Vec::new();
    for (n, worker) in stats.workers.iter().enumerate() {
        if n > 0 {
            lines.push(String::new());
        }
        lines.push(format!(
            "worker {}: key generation {}",
            worker.worker, worker.key_generation
        ));
        if worker.segments.is_empty() {
            lines.push("  not started yet: no segments".to_owned());
        } else {
            lines.extend(segment_table(&worker.segments));
        }
    }
    lines
}

fn segment_table(segments: &[SegmentStats]) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<16} {:>6} {:>10} {:>10} {:>10} {:>6} {:>6} {:>8}",
        "DIRECTION", "SLOTS", "SLOT SIZE", "WRITE SEQ", "READ SEQ", "CRC", "TAG", "REPLAYS"
    )];
    for s in segments {
        let dir = match s.direction {
            ChannelDirection::BrokerToWorker => "broker→worker",
            ChannelDirection::WorkerToBroker => "worker→broker",
        };
        lines.push(format!(
            "{:<16} {:>6} {:>10} {:>10} {:>10} {:>6} {:>6} {:>8}",
            dir,
            s.slots,
            human_bytes(u64::from(s.slot_size)),
            s.write_seq,
            s.read_seq,
            s.crc_failures,
            s.tag_failures,
            s.replays_rejected
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use weave_common::config::Device;
    use weave_common::proto::{LoadedModel, WorkerChannelStats, WorkerMemory};

    fn worker(index: u32, job_id: Option<u64>) -> WorkerReport {
        WorkerReport {
            index,
            device: Device::Cuda(index),
            state: WorkerState::Ready,
            restarts: index,
            loaded: Some(LoadedModel {
                model_id: "digits".into(),
                loaded_for_s: 90,
                idle_for_s: 12,
                memory_bytes: 1 << 20,
            }),
            job_id,
            loads: 3,
            memory: Some(WorkerMemory {
                resident_bytes: 3 << 20,
                peak_bytes: 4 << 20,
            }),
            sandbox: "landlock+seccomp".into(),
        }
    }

    #[test]
    fn status_shows_one_line_per_worker() {
        let mut idle_down = worker(1, None);
        idle_down.state = WorkerState::Down;
        idle_down.loaded = None;
        idle_down.memory = None;
        let lines = worker_lines(&[worker(0, Some(7)), idle_down]);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with("WORKER DEVICE"), "{}", lines[0]);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "0", "cuda:0", "ready", "digits", "7", "0", "3", "3.0", "MiB", "(peak", "4.0",
                "MiB)"
            ]
        );
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells, ["1", "cuda:1", "down", "-", "-", "1", "3", "-"]);
    }

    #[test]
    fn an_idle_worker_says_how_long_its_model_waited() {
        let lines = worker_lines(&[worker(0, None)]);
        assert!(lines[1].contains("digits (idle 12s)"), "{}", lines[1]);
    }

    #[test]
    fn json_carries_every_worker_in_the_cli_spellings() {
        let mut value = serde_json::to_value(worker(1, Some(7))).unwrap();
        crate::render::cli_spellings(&mut value);
        assert_eq!(value["index"], 1);
        assert_eq!(value["device"], "cuda:1");
        assert_eq!(value["state"], "ready");
        assert_eq!(value["job_id"], 7);
        assert_eq!(value["loads"], 3);
        assert_eq!(value["memory"]["peak_bytes"], 4 << 20);
        // `worker` names a worker state at the top of a status but a
        // worker's index in a job; the index stays a number.
        let mut job = serde_json::json!({ "worker": 1, "state": "Running" });
        crate::render::cli_spellings(&mut job);
        assert_eq!(job, serde_json::json!({ "worker": 1, "state": "running" }));
    }

    #[test]
    fn segments_list_every_workers_channel() {
        let segment = |direction| SegmentStats {
            direction,
            slots: 8,
            slot_size: 65536,
            write_seq: 5,
            read_seq: 4,
            crc_failures: 0,
            tag_failures: 1,
            replays_rejected: 0,
        };
        let both = vec![
            segment(ChannelDirection::BrokerToWorker),
            segment(ChannelDirection::WorkerToBroker),
        ];
        let stats = ChannelStatsReport {
            key_generation: 3,
            segments: both.clone(),
            workers: vec![
                WorkerChannelStats {
                    worker: 0,
                    key_generation: 3,
                    segments: both,
                },
                WorkerChannelStats {
                    worker: 1,
                    key_generation: 0,
                    segments: Vec::new(),
                },
            ],
        };
        let lines = segment_lines(&stats);
        assert_eq!(lines[0], "worker 0: key generation 3");
        assert!(lines[1].starts_with("DIRECTION"), "{}", lines[1]);
        assert!(lines[2].starts_with("broker→worker"), "{}", lines[2]);
        assert!(lines[3].starts_with("worker→broker"), "{}", lines[3]);
        assert_eq!(lines[4], "");
        assert_eq!(lines[5], "worker 1: key generation 0");
        assert_eq!(lines[6], "  not started yet: no segments");
        assert_eq!(lines.len(), 7, "{lines:#?}");
    }
}
