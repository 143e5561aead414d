//! LoRA tensor names → the model weights they change, with every shape
//! checked before a number is read. No libtorch: this is what a hostile
//! LoRA file reaches first, and it is fuzzed on its own
//! (`fuzz/fuzz_targets/lora_keys.rs`).
//!
//! Two naming families are read:
//!
//! * kohya / A1111: `lora_unet_<path>.lora_down.weight`, `.lora_up.weight`,
//!   `.alpha`, where `<path>` is the module path with `.` written `_`,
//!   either diffusers' (`down_blocks_0_attentions_0_proj_in`) or, for the
//!   UNet, the original SD one (`input_blocks_1_1_proj_in`, as kohya writes
//!   SDXL LoRAs); text encoders `lora_te_` (SD 1.x/2.x), `lora_te1_` and
//!   `lora_te2_` (SDXL), with or without `text_model_`.
//! * diffusers / PEFT: `unet.<path>.lora_A.weight` / `.lora_B.weight`
//!   (also `lora.down` / `lora.up`, `lora_linear_layer.down` / `.up`),
//!   `text_encoder.` and `text_encoder_2.` prefixes (with or without
//!   `text_model.`), optional `.alpha`; no prefix means the UNet.
//!
//! A name that maps to no weight of the loaded model is an error, not a
//! warning: a LoRA made for another architecture would otherwise change
//! nothing, or only half of what it was trained to change, silently.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};

/// Largest rank accepted (SD LoRAs use 4–256).
pub const MAX_RANK: i64 = 1024;
/// Most LoRA layers one file may hold (SDXL with every layer is ~2,200).
pub const MAX_LAYERS: usize = 8192;
/// Longest tensor name quoted in an error.
const MAX_QUOTED: usize = 160;

/// Which part of the model a LoRA layer changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    Unet,
    /// The (first) text encoder.
    TextEncoder,
    /// SDXL's second text encoder.
    TextEncoder2,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Unet => "unet",
            Part::TextEncoder => "text encoder",
            Part::TextEncoder2 => "second text encoder",
        }
    }
}

/// One layer to merge: `weight += scale · up @ down` with `scale` =
/// LoRA weight × alpha / rank (alpha absent: rank, i.e. 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub part: Part,
    /// The model weight's name (ours, diffusers form, `….weight`).
    pub weight: String,
    pub down: String,
    pub up: String,
    pub alpha: Option<String>,
    pub rank: i64,
}

/// A LoRA file that does not fit the model. Names tensors, never files.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoraKeyError {
    #[error("the LoRA holds no LoRA tensors (lora_down/lora_up or lora_A/lora_B)")]
    Empty,
    #[error("the LoRA holds more than {MAX_LAYERS} layers")]
    TooManyLayers,
    #[error("LoRA tensor {0:?} is not a LoRA tensor name this engine reads (kohya lora_unet_/lora_te*_ or diffusers/PEFT unet./text_encoder.)")]
    UnknownName(String),
    #[error("LoRA tensor {0:?} names no layer of this model; the LoRA is for another model or architecture")]
    NoSuchLayer(String),
    #[error("LoRA layer {0:?} lacks its {1} tensor")]
    Incomplete(String, &'static str),
    #[error("two LoRA layers change the same weight of the {0} ({1:?})")]
    Duplicate(&'static str, String),
    #[error("LoRA tensor {name:?} has shape {found:?}, which does not fit the model weight of shape {weight:?}")]
    Shape {
        name: String,
        found: Vec<i64>,
        weight: Vec<i64>,
    },
    #[error("LoRA tensor {0:?} has a rank outside 1..={MAX_RANK}")]
    Rank(String),
    #[error("LoRA alpha {0:?} must be a single number")]
    Alpha(String),
}

/// The weights a LoRA may change: per part, our weight names and shapes.
#[derive(Debug, Default, Clone)]
pub struct ModelLayers {
    pub parts: HashMap<Part, HashMap<String, Vec<i64>>>,
    /// `layers_per_block` of the UNet, for original-SD (`input_blocks_…`)
    /// names; `None` refuses them.
    pub ldm_unet: Option<fn(&str, i64) -> Option<String>>,
    pub layers_per_block: i64,
}

fn quoted(name: &str) -> String {
    if name.len() <= MAX_QUOTED {
        return name.to_string();
    }
    let mut end = MAX_QUOTED;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// Which tensor of a layer a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Down,
    Up,
    Alpha,
}

/// How a layer's module path is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `.` written `_` (kohya).
    Underscored,
    /// Dotted (diffusers / PEFT).
    Dotted,
}

const KOHYA_PREFIXES: [(&str, Part); 4] = [
    ("lora_unet_", Part::Unet),
    ("lora_te1_", Part::TextEncoder),
    ("lora_te2_", Part::TextEncoder2),
    ("lora_te_", Part::TextEncoder),
];
const KOHYA_SUFFIXES: [(&str, Role); 3] = [
    (".lora_down.weight", Role::Down),
    (".lora_up.weight", Role::Up),
    (".alpha", Role::Alpha),
];
const DOTTED_PREFIXES: [(&str, Part); 3] = [
    ("text_encoder_2.", Part::TextEncoder2),
    ("text_encoder.", Part::TextEncoder),
    ("unet.", Part::Unet),
];
const DOTTED_SUFFIXES: [(&str, Role); 7] = [
    (".lora_A.weight", Role::Down),
    (".lora_B.weight", Role::Up),
    (".lora.down.weight", Role::Down),
    (".lora.up.weight", Role::Up),
    (".lora_linear_layer.down.weight", Role::Down),
    (".lora_linear_layer.up.weight", Role::Up),
    (".alpha", Role::Alpha),
];

/// Splits a tensor name into (part, module path, its form, role).
fn classify(name: &str) -> Option<(Part, &str, Form, Role)> {
    for (prefix, part) in KOHYA_PREFIXES {
        if let Some(rest) = name.strip_prefix(prefix) {
            for (suffix, role) in KOHYA_SUFFIXES {
                if let Some(path) = rest.strip_suffix(suffix) {
                    return (!path.is_empty()).then_some((part, path, Form::Underscored, role));
                }
            }
            return None;
        }
    }
    let (part, rest) = DOTTED_PREFIXES
        .iter()
        .find_map(|&(prefix, part)| name.strip_prefix(prefix).map(|rest| (part, rest)))
        .unwrap_or((Part::Unet, name));
    for (suffix, role) in DOTTED_SUFFIXES {
        if let Some(path) = rest.strip_suffix(suffix) {
            return (!path.is_empty()).then_some((part, path, Form::Dotted, role));
        }
    }
    None
}

/// Multi-word segments of original-SD UNet names, to undo kohya's `_`.
const LDM_WORDS: [&str; 16] = [
    "input_blocks",
    "middle_block",
    "output_blocks",
    "transformer_blocks",
    "to_q",
    "to_k",
    "to_v",
    "to_out",
    "proj_in",
    "proj_out",
    "in_layers",
    "out_layers",
    "emb_layers",
    "skip_connection",
    "time_embed",
    "label_emb",
];

/// `input_blocks_4_1_transformer_blocks_0_attn1_to_q` →
/// `input_blocks.4.1.transformer_blocks.0.attn1.to_q`.
fn ldm_dotted(path: &str) -> String {
    let words: Vec<&str> = path.split('_').collect();
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        let pair = words.get(i + 1).map(|next| format!("{}_{next}", words[i]));
        match pair {
            Some(pair) if LDM_WORDS.contains(&pair.as_str()) => {
                out.push(pair);
                i += 2;
            }
            _ => {
                out.push(words[i].to_string());
                i += 1;
            }
        }
    }
    out.join(".")
}

/// The module path with and without a text encoder's `text_model` prefix.
fn strip_text_model(part: Part, path: &str, form: Form) -> &str {
    if part == Part::Unet {
        return path;
    }
    let prefix = match form {
        Form::Underscored => "text_model_",
        Form::Dotted => "text_model.",
    };
    path.strip_prefix(prefix).unwrap_or(path)
}

/// Our weight name for a module path of `part`, if the model has it.
fn resolve(
    layers: &ModelLayers,
    underscored: &HashMap<Part, HashMap<String, Option<String>>>,
    part: Part,
    path: &str,
    form: Form,
) -> Option<String> {
    let weights = layers.parts.get(&part)?;
    let path = strip_text_model(part, path, form);
    match form {
        Form::Dotted => {
            let name = format!("{path}.weight");
            weights.contains_key(&name).then_some(name)
        }
        Form::Underscored => {
            if let Some(found) = underscored.get(&part).and_then(|m| m.get(path)) {
                return found.clone();
            }
            let ldm = layers.ldm_unet.filter(|_| part == Part::Unet)?;
            let name = ldm(
                &format!("{}.weight", ldm_dotted(path)),
                layers.layers_per_block,
            )?;
            weights.contains_key(&name).then_some(name)
        }
    }
}

/// Underscored module path → our weight name (`None`: two weights share
/// the underscored form, so it is ambiguous).
fn underscored_index(layers: &ModelLayers) -> HashMap<Part, HashMap<String, Option<String>>> {
    let mut index: HashMap<Part, HashMap<String, Option<String>>> = HashMap::new();
    for (&part, weights) in &layers.parts {
        let map = index.entry(part).or_default();
        for name in weights.keys() {
            let Some(module) = name.strip_suffix(".weight") else {
                continue;
            };
            let key = module.replace('.', "_");
            map.entry(key)
                .and_modify(|seen| *seen = None)
                .or_insert_with(|| Some(name.clone()));
        }
    }
    index
}

#[derive(Default)]
struct Pending {
    down: Option<String>,
    up: Option<String>,
    alpha: Option<String>,
}

fn shape_error(name: &str, found: &[i64], weight: &[i64]) -> LoraKeyError {
    LoraKeyError::Shape {
        name: quoted(name),
        found: found.to_vec(),
        weight: weight.to_vec(),
    }
}

/// Checks `down` `[r, in(, kh, kw)]` and `up` `[out, r(, 1, 1)]` against the
/// weight `[out, in]` (linear) or `[out, in, kh, kw]` (conv); returns r.
fn check_shapes(
    plan: &Pending,
    shapes: &BTreeMap<String, Vec<i64>>,
    weight: &[i64],
) -> Result<i64, LoraKeyError> {
    let (Some(down_name), Some(up_name)) = (&plan.down, &plan.up) else {
        return Err(LoraKeyError::Incomplete(String::new(), "up or down"));
    };
    let down = shapes.get(down_name).map(Vec::as_slice).unwrap_or_default();
    let up = shapes.get(up_name).map(Vec::as_slice).unwrap_or_default();
    if down.len() < 2 || up.len() < 2 {
        return Err(shape_error(down_name, down, weight));
    }
    let rank = down[0];
    if !(1..=MAX_RANK).contains(&rank) {
        return Err(LoraKeyError::Rank(quoted(down_name)));
    }
    let (out, input, kernel) = match weight {
        [out, input] => (*out, *input, &[][..]),
        [out, input, rest @ ..] if rest.len() == 2 => (*out, *input, rest),
        _ => return Err(shape_error(down_name, down, weight)),
    };
    let down_ok = down[1] == input
        && match &down[2..] {
            [] => kernel.iter().all(|&k| k == 1),
            k => k.len() == 2 && (k == kernel || (kernel.is_empty() && k == [1, 1])),
        };
    if !down_ok {
        return Err(shape_error(down_name, down, weight));
    }
    let up_ok = up[0] == out && up[1] == rank && (up.len() == 2 || up[2..] == [1, 1]);
    if !up_ok {
        return Err(shape_error(up_name, up, weight));
    }
    if let Some(alpha) = &plan.alpha {
        let shape = shapes.get(alpha).map(Vec::as_slice).unwrap_or_default();
        if !(shape.is_empty() || shape == [1]) {
            return Err(LoraKeyError::Alpha(quoted(alpha)));
        }
    }
    Ok(rank)
}

/// Maps every tensor of a LoRA (`name → shape`) onto `layers`.
pub fn plan(
    tensors: &BTreeMap<String, Vec<i64>>,
    layers: &ModelLayers,
) -> Result<Vec<LayerPlan>, LoraKeyError> {
    let underscored = underscored_index(layers);
    let mut pending: BTreeMap<(Part, String), Pending> = BTreeMap::new();
    for name in tensors.keys() {
        let (part, path, form, role) =
            classify(name).ok_or_else(|| LoraKeyError::UnknownName(quoted(name)))?;
        let weight = resolve(layers, &underscored, part, path, form)
            .ok_or_else(|| LoraKeyError::NoSuchLayer(quoted(name)))?;
        let entry = pending.entry((part, weight)).or_default();
        let slot = match role {
            Role::Down => &mut entry.down,
            Role::Up => &mut entry.up,
            Role::Alpha => &mut entry.alpha,
        };
        if slot.is_some() {
            return Err(LoraKeyError::Duplicate(part.name(), quoted(name)));
        }
        *slot = Some(name.clone());
        if pending.len() > MAX_LAYERS {
            return Err(LoraKeyError::TooManyLayers);
        }
    }
    let mut plans = Vec::with_capacity(pending.len());
    for ((part, weight), entry) in pending {
        let some_name = entry
            .down
            .clone()
            .or_else(|| entry.up.clone())
            .or_else(|| entry.alpha.clone())
            .unwrap_or_default();
        if entry.down.is_none() {
            return Err(LoraKeyError::Incomplete(quoted(&some_name), "down"));
        }
        if entry.up.is_none() {
            return Err(LoraKeyError::Incomplete(quoted(&some_name), "up"));
        }
        let weight_shape = layers
            .parts
            .get(&part)
            .and_then(|w| w.get(&weight))
            .cloned()
            .unwrap_or_default();
        let rank = check_shapes(&entry, tensors, &weight_shape)?;
        plans.push(LayerPlan {
            part,
            weight,
            down: entry.down.unwrap_or_default(),
            up: entry.up.unwrap_or_default(),
            alpha: entry.alpha,
            rank,
        });
    }
    if plans.is_empty() {
        return Err(LoraKeyError::Empty);
    }
    Ok(plans)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn layers() -> ModelLayers {
        let mut unet = HashMap::new();
        unet.insert(
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight".to_string(),
            vec![8, 8],
        );
        unet.insert(
            "down_blocks.0.resnets.0.conv1.weight".into(),
            vec![8, 4, 3, 3],
        );
        unet.insert(
            "down_blocks.0.attentions.0.proj_in.weight".into(),
            vec![8, 8, 1, 1],
        );
        let mut te = HashMap::new();
        te.insert(
            "encoder.layers.0.self_attn.q_proj.weight".into(),
            vec![6, 6],
        );
        let mut parts = HashMap::new();
        parts.insert(Part::Unet, unet);
        parts.insert(Part::TextEncoder, te);
        ModelLayers {
            parts,
            ldm_unet: None,
            layers_per_block: 1,
        }
    }

    fn shapes(entries: &[(&str, &[i64])]) -> BTreeMap<String, Vec<i64>> {
        entries
            .iter()
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect()
    }

    #[test]
    fn kohya_linear_conv_and_text_encoder() {
        let t = shapes(&[
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight", &[2, 8]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight", &[8, 2]),
            ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha", &[]),
            ("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", &[2, 4, 3, 3]),
            ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", &[8, 2, 1, 1]),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[2, 8, 1, 1]),
            ("lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", &[8, 2, 1, 1]),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", &[2, 6]),
            ("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", &[6, 2]),
        ]);
        let plans = plan(&t, &layers()).unwrap();
        assert_eq!(plans.len(), 4);
        assert!(plans.iter().any(|p| p.part == Part::TextEncoder
            && p.weight == "encoder.layers.0.self_attn.q_proj.weight"));
        assert!(plans.iter().all(|p| p.rank == 2));
    }

    #[test]
    fn peft_names_and_linear_lora_on_a_1x1_conv() {
        let t = shapes(&[
            (
                "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
                &[3, 8],
            ),
            (
                "unet.down_blocks.0.attentions.0.proj_in.lora_B.weight",
                &[8, 3],
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight",
                &[3, 6],
            ),
            (
                "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight",
                &[6, 3],
            ),
        ]);
        assert_eq!(plan(&t, &layers()).unwrap().len(), 2);
    }

    #[test]
    fn ldm_names_are_undone() {
        assert_eq!(
            ldm_dotted("input_blocks_4_1_transformer_blocks_0_attn1_to_q"),
            "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
        );
        assert_eq!(
            ldm_dotted("output_blocks_2_0_skip_connection"),
            "output_blocks.2.0.skip_connection"
        );
    }

    #[test]
    fn refusals_are_typed() {
        let bad = |entries: &[(&str, &[i64])]| plan(&shapes(entries), &layers()).unwrap_err();
        assert_eq!(bad(&[]), LoraKeyError::Empty);
        assert!(matches!(
            bad(&[("model.x", &[1])]),
            LoraKeyError::UnknownName(_)
        ));
        assert!(matches!(
            bad(&[("lora_unet_up_blocks_9_x.lora_down.weight", &[2, 8])]),
            LoraKeyError::NoSuchLayer(_)
        ));
        assert!(matches!(
            bad(&[(
                "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                &[2, 4, 3, 3]
            )]),
            LoraKeyError::Incomplete(_, "up")
        ));
        // Wrong input width, wrong kernel, wrong output, rank 0.
        for (down, up) in [
            (&[2i64, 5, 3, 3][..], &[8i64, 2, 1, 1][..]),
            (&[2, 4, 1, 1], &[8, 2, 1, 1]),
            (&[2, 4, 3, 3], &[7, 2, 1, 1]),
            (&[2, 4, 3, 3], &[8, 3, 1, 1]),
        ] {
            assert!(matches!(
                bad(&[
                    (
                        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                        down
                    ),
                    ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", up),
                ]),
                LoraKeyError::Shape { .. }
            ));
        }
        assert!(matches!(
            bad(&[
                (
                    "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight",
                    &[0, 4, 3, 3]
                ),
                (
                    "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
                    &[8, 0, 1, 1]
                ),
            ]),
            LoraKeyError::Rank(_)
        ));
        // The same layer in two namings.
        assert!(matches!(
            bad(&[
                (
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                    &[2, 8]
                ),
                (
                    "unet.down_blocks.0.attentions.0.proj_in.lora_A.weight",
                    &[2, 8]
                ),
            ]),
            LoraKeyError::Duplicate(..)
        ));
    }
}
