//! LoRA tensor names and shapes → model layers (the worker's
//! `engine/lora/keys.rs`, which has no libtorch dependency): what a hostile
//! LoRA file's header reaches first.
//!
//! Input: lines. `u NAME DIMS`, `t NAME DIMS`, `s NAME DIMS` add a model
//! weight of the UNet, the text encoder or the second text encoder; `l NAME
//! DIMS` adds a LoRA tensor. DIMS is comma-separated integers (at most 4).
//! The seeds are small SD-shaped tables with kohya, PEFT and original-SD
//! names.
//!
//! Never panics; every error renders; an accepted plan names only model
//! weights and LoRA tensors that exist, each weight once, ranks in range,
//! and shapes whose product fits the weight.
#![no_main]

#[allow(dead_code)]
#[path = "../../worker/src/engine/loader/ldm_keys.rs"]
mod ldm_keys;
#[allow(dead_code)]
#[path = "../../worker/src/engine/lora/keys.rs"]
mod keys;

use std::collections::{BTreeMap, HashMap, HashSet};

use libfuzzer_sys::fuzz_target;

fn dims(text: &str) -> Option<Vec<i64>> {
    if text.is_empty() {
        return Some(Vec::new());
    }
    let dims: Vec<i64> = text.split(',').map(|d| d.parse().ok()).collect::<Option<_>>()?;
    (dims.len() <= 4).then_some(dims)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts: HashMap<keys::Part, HashMap<String, Vec<i64>>> = HashMap::new();
    let mut tensors: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for line in text.lines().take(512) {
        let mut fields = line.splitn(3, ' ');
        let (Some(kind), Some(name), shape) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Some(shape) = dims(shape.unwrap_or_default()) else {
            continue;
        };
        let part = match kind {
            "u" => keys::Part::Unet,
            "t" => keys::Part::TextEncoder,
            "s" => keys::Part::TextEncoder2,
            "l" => {
                tensors.insert(name.to_string(), shape);
                continue;
            }
            _ => continue,
        };
        parts.entry(part).or_default().insert(name.to_string(), shape);
    }
    let layers = keys::ModelLayers {
        parts,
        ldm_unet: Some(ldm_keys::map_ldm_unet),
        layers_per_block: 2,
    };
    match keys::plan(&tensors, &layers) {
        Err(error) => {
            let _ = error.to_string();
        }
        Ok(plans) => {
            let mut seen = HashSet::new();
            for plan in &plans {
                assert!(seen.insert((plan.part, plan.weight.clone())), "{plan:?} twice");
                let weight = &layers.parts[&plan.part][&plan.weight];
                assert!((1..=keys::MAX_RANK).contains(&plan.rank));
                let down = &tensors[&plan.down];
                let up = &tensors[&plan.up];
                assert_eq!(down[0], plan.rank);
                assert_eq!(up[1], plan.rank);
                let product = i128::from(up[0])
                    * down[1..].iter().map(|&d| i128::from(d)).product::<i128>();
                let numel: i128 = weight.iter().map(|&d| i128::from(d)).product();
                assert_eq!(product, numel, "{plan:?}");
                if let Some(alpha) = &plan.alpha {
                    assert!(tensors[alpha].len() <= 1);
                }
            }
        }
    }
});
