//! Strength → steps for every scheduler and `timestep_spacing`, against
//! the table `tools/fixtures/sdxl_img2img_fixtures.py` records from
//! diffusers' `get_timesteps` (strength-steps.json: 5 schedulers × 3
//! spacings × 6 step counts × 10 strengths). For each row, the pure
//! `weave_common::strength::strength_steps` (what the broker counts its
//! Progress totals with) gives diffusers' start and step count, and the
//! engine's scheduler, begun there, runs exactly diffusers' timesteps.
#![allow(clippy::unwrap_used)]
mod common;

use std::path::PathBuf;

use common::ci;
use weave_common::strength::strength_steps;
use weave_worker::engine::schedulers::{Scheduler, SchedulerConfig};
use weave_worker::engine::SchedulerKind;

#[test]
fn strength_steps_match_diffusers_for_every_scheduler_and_spacing() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/strength-steps.json");
    if !path.exists() {
        assert!(!ci(), "{} is missing", path.display());
        eprintln!("skipping: no {}", path.display());
        return;
    }
    let table: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 900);
    let (mut checked, mut refused) = (0, 0);
    for row in rows {
        let name = row["scheduler"].as_str().unwrap();
        let spacing = row["spacing"].as_str().unwrap();
        let steps = row["steps"].as_u64().unwrap() as u32;
        let strength = row["strength"].as_f64().unwrap();
        let run = row["run"].as_u64().unwrap() as u32;
        let what = format!("{name} {spacing} steps {steps} strength {strength}");
        // Every scheduler here is first-order: one timestep per step.
        assert_eq!(row["order"].as_u64(), Some(1), "{what}");
        let counted = strength_steps(steps, strength);
        if run == 0 {
            // diffusers raises "the number of pipeline steps is 0".
            assert!(counted.is_err(), "{what}: {counted:?}");
            refused += 1;
            continue;
        }
        let counted = counted.unwrap();
        assert_eq!(counted.run, run, "{what}: steps that run");
        assert_eq!(
            counted.start as u64,
            row["start"].as_u64().unwrap(),
            "{what}: start"
        );
        let kind = match name {
            "ddim" => SchedulerKind::Ddim,
            "euler" => SchedulerKind::Euler,
            "euler_a" => SchedulerKind::EulerAncestral,
            "dpmpp_2m" => SchedulerKind::DpmPlusPlus2M,
            "dpmpp_2m_karras" => SchedulerKind::DpmPlusPlus2MKarras,
            other => panic!("unknown scheduler {other}"),
        };
        let mut config = table["config"].clone();
        config["timestep_spacing"] = spacing.into();
        let config = SchedulerConfig::from_json(&config).unwrap();
        let mut scheduler = Scheduler::new(kind, &config, steps as usize).unwrap();
        scheduler.begin_at(counted.start as usize).unwrap();
        let ours = &scheduler.timesteps()[counted.start as usize..];
        let theirs: Vec<f64> = row["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_f64().unwrap())
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{what}: timesteps that run");
        for (a, b) in ours.iter().zip(&theirs) {
            // diffusers keeps Euler's float timesteps in f32.
            assert!(
                (a - b).abs() < 1e-3,
                "{what}: timesteps {ours:?} vs {theirs:?}"
            );
        }
        checked += 1;
    }
    assert_eq!((checked, refused), (690, 210), "rows checked and refused");
}
