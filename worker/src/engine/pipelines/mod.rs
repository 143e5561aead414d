//! Text-to-image, step for step as diffusers' `StableDiffusionPipeline`
//! (SD 1.x/2.x, `sd.rs`) and `StableDiffusionXLPipeline` (`sdxl.rs`). What
//! differs by family is the [`Conditioner`] (text encoders, negative prompt,
//! added time ids); the loop, the schedulers and the VAE are shared.
#![forbid(unsafe_code)]

use std::ops::ControlFlow;

use tch::{Device, Kind, Tensor};
use weave_common::prompt::{PromptField, DEFAULT_MAX_PROMPT_CHUNKS};

use crate::engine::denoisers::unet::UNet;
use crate::engine::denoisers::{Conditioning, Denoiser};
use crate::engine::loader::{Component, ModelParts, ModelSpec};
use crate::engine::lora::{LoraUse, MergeState, Part};
use crate::engine::preview::{preview_sigma, LatentRgb, Preview, PreviewRequest, StepTap};
use crate::engine::schedulers::{Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};
use crate::engine::text::clip::ClipTextModel;
use crate::engine::text::tokenizer::ClipTokenizer;
use crate::engine::vae::VaeDecoder;
use crate::engine::vae_encoder::VaeEncoder;
use crate::engine::EngineError;

mod conditioning;
mod device;
pub mod image_input;
pub mod img2img;
mod rgb;
pub mod sd;
pub mod sdxl;

pub use device::{DeviceChoice, Precision};

pub use image_input::{ImageInput, Mask};
pub use img2img::Stage;
pub use rgb::{to_rgb8, RgbImage};

/// One prompt's conditioning, batch 1.
pub struct PromptEmbeds {
    /// `[1, 77, width]`.
    pub context: Tensor,
    /// SDXL: the pooled text embedding `[1, P]`.
    pub pooled: Option<Tensor>,
}

/// One prompt to encode: its text in A1111 syntax (docs/PROMPTS.md),
/// which request field it is, and how it may be encoded.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    pub text: &'a str,
    pub field: PromptField,
    pub clip_skip: u32,
    /// 75-token chunks the text may take.
    pub max_chunks: u32,
}

impl PromptInput<'_> {
    fn max_chunks(&self) -> usize {
        usize::try_from(self.max_chunks).unwrap_or(usize::MAX)
    }
}

/// What a family's text side does with prompts.
pub trait Conditioner: Send {
    /// `context` is `[1, 77·chunks, width]`.
    fn encode(&self, prompt: &PromptInput<'_>, device: Device)
        -> Result<PromptEmbeds, EngineError>;
    /// The unconditional side for classifier-free guidance (`text` empty:
    /// no negative prompt given).
    fn negative(
        &self,
        prompt: &PromptInput<'_>,
        device: Device,
        positive: &PromptEmbeds,
    ) -> Result<PromptEmbeds, EngineError>;
    /// SDXL's added time ids for an image of this size; `None` elsewhere.
    fn time_ids(&self, width: u32, height: u32) -> Option<[f32; 6]>;
    fn tokenizer(&self) -> &ClipTokenizer;
    fn text_encoder(&self) -> &ClipTextModel;
    /// SDXL's second tokenizer and encoder.
    fn second(&self) -> Option<(&ClipTokenizer, &ClipTextModel)> {
        None
    }
}

/// One text-to-image request.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub prompt: String,
    /// Empty means the unconditional (empty) prompt, as in diffusers.
    pub negative_prompt: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    /// Classifier-free guidance scale; ≤ 1 disables guidance.
    pub guidance: f64,
    pub seed: u64,
    pub scheduler: SchedulerKind,
    pub batch: u32,
    /// Skip the last `clip_skip` text encoder layers (0 = none).
    pub clip_skip: u32,
    /// 75-token chunks each prompt may take (`limits.max_prompt_chunks`).
    pub max_prompt_chunks: u32,
    /// img2img / inpainting: the image to start from (see `img2img.rs`).
    pub image: Option<ImageInput>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: String::new(),
            width: 512,
            height: 512,
            steps: 20,
            guidance: 7.5,
            seed: 0,
            scheduler: SchedulerKind::Euler,
            batch: 1,
            clip_skip: 0,
            max_prompt_chunks: DEFAULT_MAX_PROMPT_CHUNKS,
            image: None,
        }
    }
}

/// libtorch's default CPU generator is process-global and tch exposes no
/// private `torch.Generator`, so every sequence of draws that must be
/// reproducible (seed, initial latents, ancestral noise) holds this lock.
static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes the lock over libtorch's global random generator. Code outside the
/// pipeline that seeds or draws (tests, tools) takes it too.
pub fn global_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    GLOBAL_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Limits the engine itself enforces (the broker validates tighter ones).
pub const MAX_SIDE: u32 = 4096;
pub const MAX_BATCH: u32 = 64;

/// A loaded Stable Diffusion (1.x/2.x/XL) pipeline.
pub struct Pipeline {
    conditioner: Box<dyn Conditioner>,
    unet: UNet,
    vae: VaeDecoder,
    /// Absent when the weights have no encoder (a decoder-only VAE file or
    /// a checkpoint pruned of it): image inputs are then refused.
    vae_encoder: Option<VaeEncoder>,
    /// The VAE's dtype: the compute dtype, or fp32 for an SDXL VAE with
    /// `force_upcast` when computing in fp16 (it overflows there).
    vae_kind: Kind,
    scheduler_config: SchedulerConfig,
    device: Device,
    kind: Kind,
    memory_bytes: u64,
    /// The latent → RGB map of previews, fitted to this VAE the first time
    /// a job asks for previews (so a model never used with previews never
    /// pays the fitting decode).
    preview_map: std::sync::OnceLock<LatentRgb>,
    /// The weights LoRAs may change, and the originals of those they did.
    lora: MergeState,
}

impl Pipeline {
    /// Loads every part of the model at `spec` onto the chosen device.
    pub fn load(
        spec: &ModelSpec,
        device: DeviceChoice,
        precision: Precision,
    ) -> Result<Self, EngineError> {
        let _no_grad = tch::no_grad_guard();
        let device = device.resolve()?;
        let kind = precision.kind(device);
        let parts = ModelParts::open(spec)?;
        let tokenizer = parts.tokenizer()?;
        let te_weights = parts.weights(Component::TextEncoder, kind, device);
        let text_encoder = ClipTextModel::new(&te_weights.root(), &parts.text_config)?;
        let mut memory_bytes = te_weights.loaded_bytes();
        let mut lora_params = std::collections::HashMap::new();
        lora_params.insert(Part::TextEncoder, te_weights.take_handed_out());
        let conditioner: Box<dyn Conditioner> =
            match (&parts.second_text, parts.second_text_weights(kind, device)) {
                (Some(second), Some(weights)) => {
                    let root = weights.root();
                    let encoder_2 = ClipTextModel::with_projection(
                        &root,
                        &root.sub("text_projection"),
                        &second.config,
                    )?;
                    memory_bytes += weights.loaded_bytes();
                    lora_params.insert(Part::TextEncoder2, weights.take_handed_out());
                    Box::new(sdxl::SdxlText {
                        tokenizer,
                        encoder: text_encoder,
                        tokenizer_2: parts.tokenizer_in(&second.tokenizer_dir)?,
                        encoder_2,
                        force_zeros_for_empty_prompt: second.force_zeros_for_empty_prompt,
                    })
                }
                _ => Box::new(sd::SdText {
                    tokenizer,
                    encoder: text_encoder,
                }),
            };
        let unet_weights = parts.weights(Component::Unet, kind, device);
        let unet = UNet::new(&unet_weights.root(), &parts.unet_config)?;
        lora_params.insert(Part::Unet, unet_weights.take_handed_out());
        if unet.takes_text_time() != conditioner.second().is_some() {
            return Err(EngineError::InvalidParams(
                "the UNet's addition_embed_type does not match the text encoders: SDXL needs text_encoder_2/ and a \"text_time\" UNet, SD 1.x/2.x neither".into(),
            ));
        }
        let upcast = conditioner.second().is_some() && parts.vae_config.force_upcast;
        let vae_kind = if upcast && kind == Kind::Half {
            Kind::Float
        } else {
            kind
        };
        let vae_weights = parts.weights(Component::Vae, vae_kind, device);
        let vae = VaeDecoder::new(&vae_weights.root(), &parts.vae_config)?;
        let vae_encoder = if vae_weights.contains("encoder.conv_in.weight") {
            Some(VaeEncoder::new(&vae_weights.root(), &parts.vae_config)?)
        } else {
            None
        };
        memory_bytes += unet_weights.loaded_bytes() + vae_weights.loaded_bytes();
        Ok(Self {
            conditioner,
            unet,
            vae,
            vae_encoder,
            vae_kind,
            scheduler_config: parts.scheduler_config,
            device,
            kind,
            memory_bytes,
            preview_map: std::sync::OnceLock::new(),
            lora: MergeState::new(lora_params, parts.unet_config.layers_per_block),
        })
    }

    /// Merges `loras` into the weights, after restoring the loaded ones
    /// (an empty list: the model as loaded, bit for bit). On an error the
    /// model is left as loaded.
    pub fn apply_loras(&mut self, loras: &[LoraUse<'_>]) -> Result<(), EngineError> {
        Ok(self.lora.apply(loras)?)
    }

    /// The weights a LoRA may change (names and shapes), as LoRA tensor
    /// names are mapped onto them.
    pub fn lora_layers(&self) -> crate::engine::lora::ModelLayers {
        self.lora.layers()
    }

    /// Whether `file` fits this model (names and shapes), without merging.
    pub fn check_lora(&self, file: &crate::engine::lora::LoraFile) -> Result<(), EngineError> {
        crate::engine::lora::keys::plan(&file.shapes(), &self.lora.layers())
            .map_err(crate::engine::lora::LoraError::from)?;
        Ok(())
    }

    /// Whether LoRAs are merged into the weights now.
    pub fn has_loras(&self) -> bool {
        self.lora.is_merged()
    }

    /// Bytes held by the weights on the device.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The dtype the VAE runs in (fp32 for an upcast SDXL VAE).
    pub fn vae_kind(&self) -> Kind {
        self.vae_kind
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        self.conditioner.tokenizer()
    }

    pub fn text_encoder(&self) -> &ClipTextModel {
        self.conditioner.text_encoder()
    }

    /// SDXL's second tokenizer and text encoder.
    pub fn second_text(&self) -> Option<(&ClipTokenizer, &ClipTextModel)> {
        self.conditioner.second()
    }

    /// Whether this is an SDXL pipeline (two encoders, text-time UNet).
    pub fn is_sdxl(&self) -> bool {
        self.conditioner.second().is_some()
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn vae(&self) -> &VaeDecoder {
        &self.vae
    }

    /// The VAE encoder, when the weights have one.
    pub fn vae_encoder(&self) -> Option<&VaeEncoder> {
        self.vae_encoder.as_ref()
    }

    pub fn scheduler_config(&self) -> &SchedulerConfig {
        &self.scheduler_config
    }

    /// The image size diffusers uses when none is given.
    pub fn default_size(&self) -> u32 {
        (self.unet.config().sample_size * self.vae.config().scale_factor()) as u32
    }

    /// Prompt text in A1111 syntax → the embeddings the UNet attends to,
    /// `[1, 77·chunks, dim]`; a plain prompt of up to 75 tokens is one
    /// chunk, exactly diffusers' embedding.
    pub fn encode_text(
        &self,
        text: &str,
        field: PromptField,
        clip_skip: u32,
        max_chunks: u32,
    ) -> Result<Tensor, EngineError> {
        let prompt = PromptInput {
            text,
            field,
            clip_skip,
            max_chunks,
        };
        Ok(self.encode_prompt(&prompt)?.context)
    }

    /// A prompt → embeddings and (SDXL) the pooled embedding.
    pub fn encode_prompt(&self, prompt: &PromptInput<'_>) -> Result<PromptEmbeds, EngineError> {
        let _no_grad = tch::no_grad_guard();
        self.conditioner.encode(prompt, self.device)
    }

    /// The initial latents diffusers draws for `params` with
    /// `torch.Generator().manual_seed(seed)` (before `init_noise_sigma`).
    pub fn initial_latents(&self, params: &GenerateParams) -> Result<Tensor, EngineError> {
        let _rng = global_rng_lock();
        self.draw_initial_latents(params)
    }

    /// [`Self::initial_latents`] for callers that already hold the RNG lock.
    fn draw_initial_latents(&self, params: &GenerateParams) -> Result<Tensor, EngineError> {
        let vsf = self.vae.config().scale_factor() as u32;
        let shape = [
            params.batch as i64,
            self.unet.in_channels(),
            (params.height / vsf) as i64,
            (params.width / vsf) as i64,
        ];
        tch::manual_seed(params.seed as i64);
        Ok(Tensor::f_randn(shape, (self.kind, Device::Cpu))?.f_to_device(self.device)?)
    }

    fn validate(&self, p: &GenerateParams) -> Result<(), EngineError> {
        let vsf = self.vae.config().scale_factor() as u32;
        let bad = |m: String| Err(EngineError::InvalidParams(m));
        if p.width == 0 || p.height == 0 || p.width > MAX_SIDE || p.height > MAX_SIDE {
            return bad(format!(
                "width and height must be between {vsf} and {MAX_SIDE}"
            ));
        }
        if p.width % vsf != 0 || p.height % vsf != 0 {
            return bad(format!("width and height must be multiples of {vsf}"));
        }
        if p.batch == 0 || p.batch > MAX_BATCH {
            return bad(format!("batch must be between 1 and {MAX_BATCH}"));
        }
        if !p.guidance.is_finite() || p.guidance < 0.0 {
            return bad("guidance must be a finite number ≥ 0".into());
        }
        Ok(())
    }

    /// Runs the denoising loop and returns the final latents (before the
    /// VAE), calling `progress(step, total)` after every step; returning
    /// `ControlFlow::Break` cancels with [`EngineError::Cancelled`].
    pub fn generate_latents(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Tensor, EngineError> {
        self.generate_latents_traced(p, progress, &mut |_, _| {})
    }

    /// [`Self::generate_latents`], handing every intermediate [`Stage`] of
    /// an image-conditioned run to `trace` (text-to-image traces nothing).
    pub fn generate_latents_traced(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
        trace: &mut dyn FnMut(Stage, &Tensor),
    ) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        self.validate(p)?;
        let cond = self.conditioning(p, p.guidance > 1.0)?;
        self.latents_with(p, &cond, progress, trace, &mut |_, _, _, _| Ok(()))
    }

    /// The denoising loop with `p`'s conditioning already encoded (for
    /// `p.batch` images), so a job encodes its prompts once: the text side
    /// draws no random numbers, so reusing it changes no bit.
    fn latents_with(
        &self,
        p: &GenerateParams,
        cond: &Conditioning,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
        trace: &mut dyn FnMut(Stage, &Tensor),
        tap: &mut StepTap<'_>,
    ) -> Result<Tensor, EngineError> {
        if let Some(input) = &p.image {
            return self.image_latents(p, input, cond, progress, trace, tap);
        }
        let _no_grad = tch::no_grad_guard();
        self.validate(p)?;
        self.check_text_to_image()?;
        let cfg = p.guidance > 1.0;
        let mut scheduler = Scheduler::new(p.scheduler, &self.scheduler_config, p.steps as usize)?;
        let _rng = global_rng_lock();
        let mut latents = self
            .draw_initial_latents(p)?
            .f_mul_scalar(scheduler.init_noise_sigma())?;
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len();
        let (kind, device) = (self.kind, self.device);
        // Ancestral noise continues the same CPU random stream as the
        // initial latents, as diffusers' CPU generator does.
        let mut draw_noise = |like: &Tensor| -> Result<Tensor, SchedulerError> {
            Ok(Tensor::f_randn(like.size(), (kind, Device::Cpu))?.f_to_device(device)?)
        };
        for (i, &t) in timesteps.iter().enumerate() {
            let input = if cfg {
                Tensor::f_cat(&[&latents, &latents], 0)?
            } else {
                latents.shallow_clone()
            };
            let input = scheduler.scale_model_input(&input)?;
            let noise_pred = self.unet.predict(&input, t, cond)?;
            let noise_pred = if cfg {
                let halves = noise_pred.f_chunk(2, 0)?;
                let (uncond, text) = (&halves[0], &halves[1]);
                uncond.f_add(&text.f_sub(uncond)?.f_mul_scalar(p.guidance)?)?
            } else {
                noise_pred
            };
            latents = scheduler.step(&noise_pred, &latents, &mut draw_noise)?;
            tap(i + 1, total, &latents, preview_sigma(&scheduler, i + 1))?;
            if progress(i + 1, total).is_break() {
                return Err(EngineError::Cancelled);
            }
        }
        Ok(latents)
    }

    /// The preview map of this model's VAE, fitted on first use.
    pub fn preview_map(&self) -> Result<&LatentRgb, EngineError> {
        if let Some(map) = self.preview_map.get() {
            return Ok(map);
        }
        let map = LatentRgb::fit(
            self.vae.config().latent_channels,
            self.vae.config().scale_factor(),
            self.kind,
            self.device,
            |latents| self.decode(latents),
        )?;
        Ok(self.preview_map.get_or_init(|| map))
    }

    /// Latents → images in [-1, 1] (diffusers' `vae.decode(latents / scaling_factor)`),
    /// in fp32 for an upcast SDXL VAE.
    pub fn decode(&self, latents: &Tensor) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        let c = self.vae.config();
        let mut z = latents
            .f_to_kind(self.vae_kind)?
            .f_div_scalar(c.scaling_factor)?;
        if let Some(shift) = c.shift_factor {
            z = z.f_add_scalar(shift)?;
        }
        Ok(self.vae.decode(&z)?)
    }

    /// Text to RGB8 images. Image `i` of a batch is the image a single run
    /// with seed `seed + i` (wrapping) gives — what A1111 users expect and
    /// what the PNG text and `--json` report — so each image is denoised on
    /// its own: one batched draw would give image 0 that image and every
    /// other one noise no single run reproduces. `progress(step, steps)`
    /// runs after every step of every image; the step is the share of the
    /// whole batch done, scaled to `steps` (rounded up, never decreasing).
    pub fn generate(
        &self,
        p: &GenerateParams,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
    ) -> Result<Vec<RgbImage>, EngineError> {
        self.generate_with_previews(p, PreviewRequest::default(), progress, &mut |_| {
            ControlFlow::Continue(())
        })
    }

    /// [`Self::generate`], handing `previews` a preview of image `index`
    /// after every step of its own that `preview` wants (docs/WORKER.md,
    /// "Previews"); `Break` from either callback cancels. Previews only
    /// read the latents: the images are the same as without them.
    pub fn generate_with_previews(
        &self,
        p: &GenerateParams,
        preview: PreviewRequest,
        progress: &mut dyn FnMut(usize, usize) -> ControlFlow<()>,
        previews: &mut dyn FnMut(Preview) -> ControlFlow<()>,
    ) -> Result<Vec<RgbImage>, EngineError> {
        self.validate(p)?;
        let images = p.batch as usize;
        let mut out = Vec::with_capacity(images);
        // Every image has the same prompts and size: encode them once.
        let one = GenerateParams {
            batch: 1,
            ..p.clone()
        };
        let cond = {
            let _no_grad = tch::no_grad_guard();
            self.conditioning(&one, p.guidance > 1.0)?
        };
        for index in 0..images {
            let single = GenerateParams {
                seed: p.seed.wrapping_add(index as u64),
                ..one.clone()
            };
            let mut image_progress =
                |step: usize, total: usize| progress(batch_step(index, images, step, total), total);
            let mut tap = |step: usize, total: usize, latents: &Tensor, sigma: f64| {
                if !preview.wants(step) {
                    return Ok(());
                }
                let image = self
                    .preview_map()?
                    .render(latents, sigma, preview.max_size)?;
                let shown = Preview {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    step: u32::try_from(step).unwrap_or(u32::MAX),
                    total: u32::try_from(total).unwrap_or(u32::MAX),
                    image,
                };
                match previews(shown) {
                    ControlFlow::Continue(()) => Ok(()),
                    ControlFlow::Break(()) => Err(EngineError::Cancelled),
                }
            };
            let latents = self.latents_with(
                &single,
                &cond,
                &mut image_progress,
                &mut |_, _| {},
                &mut tap,
            )?;
            let mut images = to_rgb8(&self.decode(&latents)?)?;
            if let Some(input) = &p.image {
                input.keep_unmasked(&mut images);
            }
            out.extend(images);
        }
        Ok(out)
    }
}

/// Step `step` of `total` in image `index` of `images`, as a step of
/// `total` for the whole batch: rounded up, so it is at least 1, never
/// decreases, and reaches `total` exactly at the last image's last step.
fn batch_step(index: usize, images: usize, step: usize, total: usize) -> usize {
    let done = index * total + step;
    done.div_ceil(images.max(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The worker may build the pipeline on one thread and run it on another.
    #[test]
    fn pipeline_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Pipeline>();
    }

    #[test]
    fn batch_progress_rises_to_the_step_count() {
        assert_eq!(batch_step(0, 1, 3, 4), 3);
        let seen: Vec<usize> = (0..3)
            .flat_map(|i| (1..=4).map(move |s| batch_step(i, 3, s, 4)))
            .collect();
        assert_eq!(seen, vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    }
}
