//! Finds a model's parts on disk and maps their weight names onto ours.
//!
//! Two layouts are accepted, both safetensors only (recognized by content):
//!
//! * a **diffusers folder**: `model_index.json`, `unet/`, `vae/`,
//!   `text_encoder/` (keys with or without `text_model.`), `tokenizer/`
//!   (`vocab.json` + `merges.txt`), `scheduler/scheduler_config.json`;
//! * a **single-file checkpoint** with the original Stable Diffusion key
//!   names (`model.diffusion_model.*`, `first_stage_model.*`,
//!   `cond_stage_model.transformer.text_model.*` for SD 1.x or
//!   `cond_stage_model.model.*` (OpenCLIP) for SD 2.x). Its configs come from
//!   `ModelSpec::config` (a diffusers folder holding only the JSON files and
//!   tokenizer, as diffusers' `from_single_file(config=...)`) or, without
//!   one, from the standard SD 1.x / SD 2.x configs, chosen by `kind` or
//!   inferred from the text encoder's shapes. The tokenizer is then the
//!   `tokenizer/` folder next to the checkpoint (copy the project's CLIP
//!   vocabulary, e.g. `models/digits/tokenizer`, there).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::denoisers::unet::UNetConfig;
use crate::engine::nn::{ModelError, Weights};
use crate::engine::schedulers::SchedulerConfig;
use crate::engine::text::clip::ClipTextConfig;
use crate::engine::text::tokenizer::{ClipTokenizer, TokenizerError};
use crate::engine::vae::VaeConfig;
use crate::engine::weights::files::ModelFiles;
use crate::engine::weights::safetensors::{SafetensorsError, SafetensorsFile};

mod config_json;
mod ldm_keys;

use config_json::read_json_in;
pub use config_json::{python_json_to_strict, read_json};

use ldm_keys::{map_ldm_unet, map_ldm_vae, map_openclip, SD2_OPENCLIP, SDXL_CLIP, SDXL_OPENCLIP};

/// An original SD UNet weight name (`input_blocks.1.1.proj_in.weight`) →
/// ours, for LoRAs named that way (kohya's SDXL LoRAs).
pub fn map_ldm_unet_name(name: &str, layers_per_block: i64) -> Option<String> {
    map_ldm_unet(name, layers_per_block)
}

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("model path {path} is neither a diffusers folder (with model_index.json) nor a file")]
    UnknownLayout { path: PathBuf },
    #[error("the model folder lacks {path}; a diffusers folder needs model_index.json, unet/, vae/, text_encoder/, tokenizer/")]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON of the expected shape: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("single-file checkpoint {path}: {reason}")]
    SingleFile { path: PathBuf, reason: String },
    #[error(transparent)]
    File(#[from] SafetensorsError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The bytes read do not hash to the configured `sha256`; nothing of
    /// them was used. Names no path: the worker reports it by model id.
    #[error("the model's files do not match its sha256 pin; if the change is intended, set `sha256` to what `sshmctl hash PATH` prints")]
    PinMismatch,
}

/// Which Stable Diffusion family a single-file checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelKind {
    /// Diffusers folders carry their configs; single files are inferred.
    #[default]
    Auto,
    /// SD 1.x (CLIP ViT-L text encoder, ε-prediction).
    Sd1,
    /// SD 2.x base (OpenCLIP ViT-H text encoder, ε-prediction, 512 px).
    Sd2,
    /// SD 2.x 768-v (v-prediction).
    Sd2V,
    /// SDXL: two text encoders, text-time conditioning (folders with
    /// `text_encoder_2/`, or SGM single files with `conditioner.embedders.*`).
    Sdxl,
}

/// What to load.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub kind: ModelKind,
    /// A diffusers folder or a single `.safetensors` checkpoint.
    pub path: PathBuf,
    /// For single files: a folder with the diffusers configs and tokenizer.
    pub config: Option<PathBuf>,
    /// The `sha256` pin (`weave_common::pin`), lower-case hex: enforced on
    /// exactly the bytes the loader parses.
    pub sha256: Option<String>,
}

impl ModelSpec {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            kind: ModelKind::Auto,
            path: path.into(),
            config: None,
            sha256: None,
        }
    }
}

/// Which component a weight source holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    TextEncoder,
    Unet,
    Vae,
}

/// Everything needed to build the models, before any weight is read.
pub struct ModelParts {
    pub text_config: ClipTextConfig,
    pub unet_config: UNetConfig,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    pub tokenizer_dir: PathBuf,
    /// SDXL: `text_encoder_2/` and `tokenizer_2/`.
    pub second_text: Option<SecondText>,
    layout: Layout,
    files: ModelFiles,
}

/// SDXL's second text encoder and tokenizer, and `model_index.json`'s
/// `force_zeros_for_empty_prompt` (diffusers' default: true).
pub struct SecondText {
    pub config: ClipTextConfig,
    pub tokenizer_dir: PathBuf,
    pub force_zeros_for_empty_prompt: bool,
    weights: Arc<SafetensorsFile>,
    /// `None`: a folder's `text_encoder_2/` (transformers names); `Some`: the
    /// OpenCLIP prefix inside a single file.
    openclip_prefix: Option<&'static str>,
}

enum Layout {
    Folder {
        text_encoder: Arc<SafetensorsFile>,
        unet: Arc<SafetensorsFile>,
        vae: Arc<SafetensorsFile>,
    },
    Single {
        file: Arc<SafetensorsFile>,
        text: SingleText,
    },
}

/// How a single file names its (first) text encoder.
#[derive(Clone, Copy)]
enum SingleText {
    /// transformers names under this prefix (with or without `text_model.`).
    Clip(&'static str),
    /// OpenCLIP names under this prefix.
    OpenClip(&'static str),
}

fn config_error(path: &Path) -> impl Fn(ModelError) -> LoaderError + '_ {
    move |e| LoaderError::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Opens the first weights file of `dir` that exists. The name only picks
/// the candidate; the content decides whether it is accepted, so a pickled
/// `.bin` is refused with the pickle error.
fn open_weights(
    files: &ModelFiles,
    dir: &Path,
    names: &[&str],
) -> Result<Arc<SafetensorsFile>, LoaderError> {
    for name in names {
        let p = dir.join(name);
        if files.exists(&p) {
            return Ok(Arc::new(files.safetensors(&p)?));
        }
    }
    Err(LoaderError::Missing {
        path: dir.join(names.first().copied().unwrap_or_default()),
    })
}

/// Reads the configs of a diffusers folder (or a config-only folder).
fn folder_configs(
    files: &ModelFiles,
    dir: &Path,
) -> Result<(ClipTextConfig, UNetConfig, VaeConfig, SchedulerConfig), LoaderError> {
    let read_json = |path: &Path| read_json_in(files, path);
    let te = dir.join("text_encoder/config.json");
    let un = dir.join("unet/config.json");
    let va = dir.join("vae/config.json");
    let sc = dir.join("scheduler/scheduler_config.json");
    let scheduler = if files.exists(&sc) {
        SchedulerConfig::from_json(&read_json(&sc)?).map_err(|e| LoaderError::BadConfig {
            path: sc.clone(),
            reason: e.to_string(),
        })?
    } else {
        SchedulerConfig::default()
    };
    Ok((
        ClipTextConfig::from_json(&read_json(&te)?).map_err(config_error(&te))?,
        UNetConfig::from_json(&read_json(&un)?).map_err(config_error(&un))?,
        VaeConfig::from_json(&read_json(&va)?).map_err(config_error(&va))?,
        scheduler,
    ))
}

impl ModelParts {
    /// Locates and validates (headers and configs only) the model at `spec`.
    /// With a `sha256` pin, the pinned files are read once, checked, and
    /// parsed from memory ([`ModelFiles::pinned`]).
    pub fn open(spec: &ModelSpec) -> Result<Self, LoaderError> {
        let path = &spec.path;
        let files = match &spec.sha256 {
            Some(pin) => ModelFiles::pinned(path, pin)?,
            None => ModelFiles::Disk,
        };
        if path.is_dir() {
            if !files.exists(&path.join("model_index.json")) {
                return Err(LoaderError::Missing {
                    path: path.join("model_index.json"),
                });
            }
            let index = read_json_in(&files, &path.join("model_index.json"))?;
            let (text_config, unet_config, vae_config, scheduler_config) =
                folder_configs(&files, path)?;
            let second_text = second_text(&files, path, &index)?;
            if spec.kind == ModelKind::Sdxl && second_text.is_none() {
                return Err(LoaderError::Missing {
                    path: path.join("text_encoder_2"),
                });
            }
            let weight_names = [
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.bin",
            ];
            let layout = Layout::Folder {
                text_encoder: open_weights(
                    &files,
                    &path.join("text_encoder"),
                    &["model.safetensors", "pytorch_model.bin"],
                )?,
                unet: open_weights(&files, &path.join("unet"), &weight_names)?,
                vae: open_weights(&files, &path.join("vae"), &weight_names)?,
            };
            Ok(Self {
                text_config,
                unet_config,
                vae_config,
                scheduler_config,
                tokenizer_dir: path.join("tokenizer"),
                second_text,
                layout,
                files,
            })
        } else if path.is_file() {
            Self::open_single(spec, files)
        } else {
            Err(LoaderError::UnknownLayout { path: path.clone() })
        }
    }

    fn open_single(spec: &ModelSpec, files: ModelFiles) -> Result<Self, LoaderError> {
        let path = &spec.path;
        let file = Arc::new(files.safetensors(path)?);
        let single = |reason: String| LoaderError::SingleFile {
            path: path.clone(),
            reason,
        };
        let tensors = file.tensors();
        if !tensors
            .keys()
            .any(|k| k.starts_with("model.diffusion_model."))
        {
            return Err(single(
                "no model.diffusion_model.* weights; only original Stable Diffusion checkpoints are supported as single files".into(),
            ));
        }
        if spec.kind == ModelKind::Sdxl
            || tensors
                .keys()
                .any(|k| k.starts_with("conditioner.embedders."))
        {
            return Self::open_single_sdxl(spec, files, file);
        }
        let openclip = tensors.contains_key("cond_stage_model.model.token_embedding.weight");
        let kind = match spec.kind {
            ModelKind::Auto if openclip => ModelKind::Sd2,
            ModelKind::Auto => ModelKind::Sd1,
            k => k,
        };
        let (text_config, unet_config, vae_config, scheduler_config, tokenizer_dir) = match &spec
            .config
        {
            Some(dir) => {
                let (t, u, v, s) = folder_configs(&files, dir)?;
                (t, u, v, s, dir.join("tokenizer"))
            }
            None => {
                let (text, unet) = match kind {
                    ModelKind::Sd2 | ModelKind::Sd2V => (ClipTextConfig::sd2(), UNetConfig::sd2()),
                    _ => (ClipTextConfig::sd1(), UNetConfig::sd1()),
                };
                let mut sched = SchedulerConfig::default();
                if kind == ModelKind::Sd2V {
                    sched.prediction_type = "v_prediction".into();
                }
                let tokenizer = path
                    .parent()
                    .map(|p| p.join("tokenizer"))
                    .unwrap_or_else(|| PathBuf::from("tokenizer"));
                (text, unet, VaeConfig::sd(), sched, tokenizer)
            }
        };
        Ok(Self {
            text_config,
            unet_config,
            vae_config,
            scheduler_config,
            tokenizer_dir,
            second_text: None,
            layout: Layout::Single {
                file,
                text: if openclip {
                    SingleText::OpenClip(SD2_OPENCLIP)
                } else {
                    SingleText::Clip("cond_stage_model.transformer.")
                },
            },
            files,
        })
    }

    /// An SGM (SDXL) single file: `conditioner.embedders.0.transformer.*`
    /// (CLIP ViT-L), `conditioner.embedders.1.model.*` (OpenCLIP bigG, fused
    /// `in_proj` split into q/k/v, `text_projection` transposed), the UNet
    /// with `label_emb.0.{0,2}` as the text-time embedding, the VAE as in
    /// SD. Configs from `spec.config` (a diffusers SDXL folder) or the
    /// standard SDXL base ones; tokenizers `tokenizer/` and `tokenizer_2/`
    /// there or next to the file.
    fn open_single_sdxl(
        spec: &ModelSpec,
        files: ModelFiles,
        file: Arc<SafetensorsFile>,
    ) -> Result<Self, LoaderError> {
        let path = &spec.path;
        if !file
            .tensors()
            .contains_key(&format!("{SDXL_OPENCLIP}token_embedding.weight"))
        {
            return Err(LoaderError::SingleFile {
                path: path.clone(),
                reason: format!(
                    "an SDXL checkpoint needs its second text encoder under {SDXL_OPENCLIP}* (OpenCLIP ViT-bigG); refiner-only or incomplete files are not supported"
                ),
            });
        }
        let (parts, second_config, force_zeros, tokenizers) = match &spec.config {
            Some(dir) => {
                let parts = folder_configs(&files, dir)?;
                let c2 = dir.join("text_encoder_2/config.json");
                let second = ClipTextConfig::from_json(&read_json_in(&files, &c2)?)
                    .map_err(config_error(&c2))?;
                let index = dir.join("model_index.json");
                let force_zeros = if files.exists(&index) {
                    force_zeros_for_empty_prompt(&read_json_in(&files, &index)?, &index)?
                } else {
                    true
                };
                (parts, second, force_zeros, dir.to_path_buf())
            }
            None => (
                (
                    ClipTextConfig::sd1(),
                    UNetConfig::sdxl(),
                    VaeConfig::sdxl(),
                    SchedulerConfig::sdxl(),
                ),
                ClipTextConfig::sdxl_bigg(),
                true,
                path.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| PathBuf::from(".")),
            ),
        };
        let (text_config, unet_config, vae_config, scheduler_config) = parts;
        Ok(Self {
            text_config,
            unet_config,
            vae_config,
            scheduler_config,
            tokenizer_dir: tokenizers.join("tokenizer"),
            second_text: Some(SecondText {
                config: second_config,
                tokenizer_dir: tokenizers.join("tokenizer_2"),
                force_zeros_for_empty_prompt: force_zeros,
                weights: file.clone(),
                openclip_prefix: Some(SDXL_OPENCLIP),
            }),
            layout: Layout::Single {
                file,
                text: SingleText::Clip(SDXL_CLIP),
            },
            files,
        })
    }

    /// The tokenizer, read through the same files (pinned or not).
    pub fn tokenizer(&self) -> Result<ClipTokenizer, TokenizerError> {
        self.tokenizer_in(&self.tokenizer_dir)
    }

    /// A tokenizer folder of this model, read through the same files.
    pub fn tokenizer_in(&self, dir: &Path) -> Result<ClipTokenizer, TokenizerError> {
        ClipTokenizer::from_dir_with(dir, &|path| self.files.tokenizer_text(path))
    }

    /// SDXL's second text encoder's weights (keys with or without
    /// `text_model.`; `text_projection.*` stays as it is).
    pub fn second_text_weights(&self, kind: tch::Kind, device: tch::Device) -> Option<Weights> {
        let second = self.second_text.as_ref()?;
        Some(match second.openclip_prefix {
            None => Weights::new(second.weights.clone(), kind, device, |k| {
                vec![(k.strip_prefix("text_model.").unwrap_or(k).to_string(), None)]
            }),
            Some(prefix) => Weights::new(second.weights.clone(), kind, device, move |k| {
                map_openclip(k, prefix)
            })
            .transposed("text_projection.weight"),
        })
    }

    /// The weights of one component, named as our modules expect.
    pub fn weights(&self, component: Component, kind: tch::Kind, device: tch::Device) -> Weights {
        match &self.layout {
            Layout::Folder {
                text_encoder,
                unet,
                vae,
            } => match component {
                Component::TextEncoder => Weights::new(text_encoder.clone(), kind, device, |k| {
                    vec![(k.strip_prefix("text_model.").unwrap_or(k).to_string(), None)]
                }),
                Component::Unet => {
                    Weights::new(unet.clone(), kind, device, |k| vec![(k.to_string(), None)])
                }
                Component::Vae => Weights::new(vae.clone(), kind, device, |k| {
                    vec![(legacy_vae_attention(k), None)]
                }),
            },
            Layout::Single { file, text } => {
                let lpb = self.unet_config.layers_per_block;
                let vae_levels = self.vae_config.block_out_channels.len() as i64;
                let text = *text;
                match component {
                    Component::TextEncoder => {
                        Weights::new(file.clone(), kind, device, move |k| match text {
                            SingleText::OpenClip(prefix) => map_openclip(k, prefix),
                            SingleText::Clip(prefix) => k
                                .strip_prefix(prefix)
                                .map(|rest| {
                                    vec![(
                                        rest.strip_prefix("text_model.")
                                            .unwrap_or(rest)
                                            .to_string(),
                                        None,
                                    )]
                                })
                                .unwrap_or_default(),
                        })
                    }
                    Component::Unet => Weights::new(file.clone(), kind, device, move |k| {
                        k.strip_prefix("model.diffusion_model.")
                            .and_then(|rest| map_ldm_unet(rest, lpb))
                            .map(|n| vec![(n, None)])
                            .unwrap_or_default()
                    }),
                    Component::Vae => Weights::new(file.clone(), kind, device, move |k| {
                        k.strip_prefix("first_stage_model.")
                            .and_then(|rest| map_ldm_vae(rest, vae_levels))
                            .map(|n| vec![(n, None)])
                            .unwrap_or_default()
                    }),
                }
            }
        }
    }
}

/// `model_index.json`'s `force_zeros_for_empty_prompt` (absent: true, as
/// diffusers' SDXL pipeline defaults it).
fn force_zeros_for_empty_prompt(
    index: &serde_json::Value,
    path: &Path,
) -> Result<bool, LoaderError> {
    match index.get("force_zeros_for_empty_prompt") {
        None => Ok(true),
        Some(v) => v.as_bool().ok_or_else(|| LoaderError::BadConfig {
            path: path.to_path_buf(),
            reason: "force_zeros_for_empty_prompt must be true or false".into(),
        }),
    }
}

/// SDXL's second text side, when the folder has `text_encoder_2/`.
fn second_text(
    files: &ModelFiles,
    dir: &Path,
    index: &serde_json::Value,
) -> Result<Option<SecondText>, LoaderError> {
    let config_path = dir.join("text_encoder_2/config.json");
    if !files.exists(&config_path) {
        return Ok(None);
    }
    let config = ClipTextConfig::from_json(&read_json_in(files, &config_path)?)
        .map_err(config_error(&config_path))?;
    Ok(Some(SecondText {
        config,
        tokenizer_dir: dir.join("tokenizer_2"),
        force_zeros_for_empty_prompt: force_zeros_for_empty_prompt(
            index,
            &dir.join("model_index.json"),
        )?,
        openclip_prefix: None,
        weights: open_weights(
            files,
            &dir.join("text_encoder_2"),
            &["model.safetensors", "pytorch_model.bin"],
        )?,
    }))
}

/// Old diffusers VAE attention names (`query`, `key`, `value`, `proj_attn`).
fn legacy_vae_attention(k: &str) -> String {
    for (old, new) in [
        (".query.", ".to_q."),
        (".key.", ".to_k."),
        (".value.", ".to_v."),
        (".proj_attn.", ".to_out.0."),
    ] {
        if k.contains(old) {
            return k.replacen(old, new, 1);
        }
    }
    k.to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// SDXL base's standard configs fit together: the UNet attends to both
    /// encoders' widths and its text-time input is 6 time ids plus bigG's
    /// projection.
    #[test]
    fn standard_sdxl_configs_are_consistent() {
        let unet = UNetConfig::sdxl();
        let (one, two) = (ClipTextConfig::sd1(), ClipTextConfig::sdxl_bigg());
        assert_eq!(
            unet.cross_attention_dim.last().unwrap(),
            one.hidden_size + two.hidden_size
        );
        assert_eq!(
            unet.projection_class_embeddings_input_dim,
            Some(6 * unet.addition_time_embed_dim.unwrap() + two.projection_dim.unwrap())
        );
        assert_eq!(VaeConfig::sdxl().scaling_factor, 0.13025);
    }

    /// SDXL-shaped UNet configs: text_time needs its dimensions; unknown
    /// addition types and per-layer up-block depths are refused, not ignored.
    #[test]
    fn sdxl_unet_config_variants_are_checked() {
        let base = serde_json::json!({
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 64],
            "cross_attention_dim": 40,
            "transformer_layers_per_block": [1, 2],
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 64
        });
        assert!(UNetConfig::from_json(&base).is_ok());
        let with = |key: &str, value: serde_json::Value| {
            let mut v = base.clone();
            v[key] = value;
            UNetConfig::from_json(&v).unwrap_err().to_string()
        };
        assert!(with("addition_embed_type", "image".into()).contains("supported: text_time"));
        assert!(with("addition_time_embed_dim", serde_json::Value::Null).contains("text_time"));
        assert!(with("projection_class_embeddings_input_dim", 40.into()).contains("text_time"));
        assert!(with(
            "reverse_transformer_layers_per_block",
            serde_json::json!([[1, 1], [2, 2]])
        )
        .contains("reverse_transformer_layers_per_block"));
    }

    #[test]
    fn legacy_vae_names() {
        assert_eq!(
            legacy_vae_attention("decoder.mid_block.attentions.0.proj_attn.weight"),
            "decoder.mid_block.attentions.0.to_out.0.weight"
        );
    }
}
