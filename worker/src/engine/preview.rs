//! Live previews: a cheap latent → RGB approximation, drawn every few steps
//! while a job denoises (docs/WORKER.md, "Previews").
//!
//! A VAE decode per preview would cost as much as the final decode; instead
//! each latent pixel is mapped to one RGB pixel by a linear map with a bias.
//! Well-known 4 → 3 factor matrices exist for the real SD 1.x/2.x and SDXL
//! VAEs, but they are wrong for any other VAE (the demo models have their
//! own), so the map is fitted to the model's own VAE, the first time a job
//! asks for previews: a few random latents are decoded and least
//! squares matches each latent pixel to the mean of the image pixels it
//! decodes to. The map reads the 3 × 3 latent pixels around each one, not
//! only the pixel itself (`9·C + 1` numbers per colour): on the demo
//! models a per-pixel map cannot follow thin strokes (its best fit
//! correlates about 0.78 with the decode), the 3 × 3 one does (about
//! 0.94). The cost is one VAE decode of a `2 × C × 32 × 32` latent (an
//! image of 256 × 256 for SD), once per loaded model: well under a second
//! on a CPU; a preview itself is a `9·C → 3` product per latent pixel.
#![forbid(unsafe_code)]

use tch::{Device, Kind, Tensor};

use super::pipelines::RgbImage;
use super::EngineError;

/// Side of the latent neighbourhood each preview pixel reads.
const KERNEL: i64 = 3;
/// Side of the square random latents decoded to fit the map.
const FIT_SIDE: i64 = 32;
/// How many of them (one batched decode).
const FIT_SAMPLES: i64 = 2;

/// Whether (and how) a generation sends previews.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PreviewRequest {
    /// After every step that is a multiple of this; 0: none.
    pub every: u32,
    /// A preview's longer edge, at most.
    pub max_size: u32,
}

impl PreviewRequest {
    /// Whether step `step` (1-based) of an image gets a preview.
    pub fn wants(&self, step: usize) -> bool {
        self.every != 0 && self.max_size != 0 && step % self.every as usize == 0
    }
}

/// One preview, handed to the caller's sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// The image of the batch.
    pub index: u32,
    /// Steps of this image done (1-based) and in all.
    pub step: u32,
    pub total: u32,
    pub image: RgbImage,
}

/// The fitted latent → RGB map: RGB in [-1, 1] (the VAE's output range) for
/// each latent pixel, `rgb[c] = Σ_k weights[k][c] · feature[k] + bias[c]`,
/// the features being the latent's channels at the 3 × 3 pixels around it
/// (see [`neighbourhoods`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LatentRgb {
    /// One `[r, g, b]` weight per feature.
    weights: Vec<[f64; 3]>,
    bias: [f64; 3],
}

impl LatentRgb {
    /// Fits the map to `decode` (latents as the UNet sees them →
    /// images in [-1, 1], scaled by `scale` pixels per latent pixel).
    /// `kind`/`device` are where `decode` runs.
    pub fn fit(
        channels: i64,
        scale: i64,
        kind: Kind,
        device: Device,
        decode: impl FnOnce(&Tensor) -> Result<Tensor, EngineError>,
    ) -> Result<Self, EngineError> {
        let _no_grad = tch::no_grad_guard();
        // A fixed seed would touch libtorch's global generator, which the
        // pipeline's seeded draws rely on; a private stream from a fixed
        // seed keeps the fit the same on every load and leaves it alone.
        // White noise, not smooth noise: neighbouring pixels must vary
        // independently for the 3 × 3 weights to be told apart (smooth
        // fitting latents gave a map that fails on real ones).
        let latents = FixedNoise::new(0x05ee_df17)
            .tensor(&[FIT_SAMPLES, channels, FIT_SIDE, FIT_SIDE])
            .f_to_kind(kind)?
            .f_to_device(device)?;
        let images = decode(&latents)?;
        let target = images
            .f_to_kind(Kind::Double)?
            .f_to_device(Device::Cpu)?
            .f_avg_pool2d(
                [scale, scale],
                [scale, scale],
                [0, 0],
                false,
                true,
                None::<i64>,
            )?;
        let (n, c, h, w) = target.size4()?;
        if c != 3 || n != FIT_SAMPLES || h != FIT_SIDE || w != FIT_SIDE {
            return Err(EngineError::InvalidParams(format!(
                "the VAE decoded the preview fit to [{n}, {c}, {h}, {w}] (after pooling by {scale}), \
                 not [{FIT_SAMPLES}, 3, {FIT_SIDE}, {FIT_SIDE}]"
            )));
        }
        let features = neighbourhoods(&latents.f_to_kind(Kind::Double)?.f_to_device(Device::Cpu)?)?;
        let x = pixels(&features)?;
        let y = pixels(&target)?;
        Self::least_squares(&x, &y, usize::try_from(features.size4()?.1).unwrap_or(0))
    }

    /// Least squares over pixels: `x` is `channels` features per pixel, `y`
    /// three colours; solves the normal equations with a tiny ridge so a dead
    /// channel cannot make them singular.
    pub fn least_squares(x: &[f64], y: &[f64], channels: usize) -> Result<Self, EngineError> {
        let k = channels + 1;
        let count = y.len() / 3;
        if channels == 0 || x.len() != count * channels || count < k {
            return Err(EngineError::InvalidParams(
                "too few pixels to fit the preview map".into(),
            ));
        }
        let mut ata = vec![0.0f64; k * k];
        let mut aty = vec![0.0f64; k * 3];
        let mut row = vec![1.0f64; k];
        for p in 0..count {
            row[..channels].copy_from_slice(&x[p * channels..(p + 1) * channels]);
            for i in 0..k {
                for j in 0..k {
                    ata[i * k + j] += row[i] * row[j];
                }
                for c in 0..3 {
                    aty[i * 3 + c] += row[i] * y[p * 3 + c];
                }
            }
        }
        for i in 0..k {
            ata[i * k + i] += 1e-6 * count as f64;
        }
        let solution = solve(&mut ata, &mut aty, k, 3).ok_or_else(|| {
            EngineError::InvalidParams("the preview map's equations are singular".into())
        })?;
        let weights = (0..channels)
            .map(|i| [solution[i * 3], solution[i * 3 + 1], solution[i * 3 + 2]])
            .collect();
        let bias = [
            solution[channels * 3],
            solution[channels * 3 + 1],
            solution[channels * 3 + 2],
        ];
        Ok(Self { weights, bias })
    }

    /// The map itself: latents `[n, C, h, w]` (any device and dtype) with
    /// noise of `noise_sigma` → RGB `[n, 3, h, w]` in about [-1, 1], as
    /// doubles on the CPU.
    pub fn apply(&self, latents: &Tensor, noise_sigma: f64) -> Result<Tensor, EngineError> {
        let _no_grad = tch::no_grad_guard();
        let c = latents.size4()?.1 * KERNEL * KERNEL;
        if usize::try_from(c).ok() != Some(self.weights.len()) {
            return Err(EngineError::InvalidParams(format!(
                "latents of {c} channels for a preview map of {}",
                self.weights.len()
            )));
        }
        // Euler-family latents carry noise of σ around a signal of about
        // unit scale: divide as the UNet's input scaling does.
        let latents = latents
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?
            .f_div_scalar((noise_sigma * noise_sigma + 1.0).sqrt())?;
        let latents = neighbourhoods(&latents)?;
        let weights: Vec<f64> = (0..3)
            .flat_map(|rgb| self.weights.iter().map(move |w| w[rgb]))
            .collect();
        let weights = Tensor::from_slice(&weights).f_view([3, c, 1, 1])?;
        let bias = Tensor::from_slice(&self.bias).f_view([1, 3, 1, 1])?;
        Ok(latents
            .f_conv2d(&weights, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)?
            .f_add(&bias)?)
    }

    /// Latents `[1, C, h, w]` (any device and dtype; `noise_sigma`: their
    /// noise level σ in the Euler parametrization, 0 otherwise) → an RGB8
    /// preview at twice the latent resolution, or less, so that its longer
    /// edge is at most `max_size`.
    pub fn render(
        &self,
        latents: &Tensor,
        noise_sigma: f64,
        max_size: u32,
    ) -> Result<RgbImage, EngineError> {
        let _no_grad = tch::no_grad_guard();
        let (_, _, h, w) = latents.size4()?;
        let rgb = self.apply(&latents.f_narrow(0, 0, 1)?, noise_sigma)?;
        let (out_h, out_w) = preview_size(h, w, max_size);
        let rgb = if (out_h, out_w) == (h, w) {
            rgb
        } else if out_h >= h {
            rgb.f_upsample_bilinear2d([out_h, out_w], false, None, None)?
        } else {
            rgb.f_adaptive_avg_pool2d([out_h, out_w])?
        };
        let mut images = super::pipelines::to_rgb8(&rgb)?;
        images
            .pop()
            .ok_or_else(|| EngineError::InvalidParams("the preview has no image".into()))
    }
}

/// What the denoising loops call after every step with the step (1-based),
/// the steps in all, the latents and their noise level (σ in the Euler
/// parametrization, 0 when the sampler's latents are not scaled by it):
/// how previews see the latents without a second loop.
pub type StepTap<'a> = dyn FnMut(usize, usize, &Tensor, f64) -> Result<(), EngineError> + 'a;

/// The noise level of the latents after `steps_done` steps, for a preview:
/// σ of the Euler family (whose latents carry noise of σ on a signal of
/// about unit scale), 0 for samplers whose latents stay at unit variance.
pub fn preview_sigma(scheduler: &super::schedulers::Scheduler, steps_done: usize) -> f64 {
    if scheduler.init_noise_sigma() > 1.0 {
        scheduler.sigmas().get(steps_done).copied().unwrap_or(0.0)
    } else {
        0.0
    }
}

/// The preview's size for latents of `h × w`: twice over when that fits in
/// `max_size`, else scaled down (aspect kept, at least 1 pixel).
pub fn preview_size(h: i64, w: i64, max_size: u32) -> (i64, i64) {
    let max = i64::from(max_size.max(1));
    let longer = h.max(w).max(1);
    if longer * 2 <= max {
        return (h * 2, w * 2);
    }
    if longer <= max {
        return (h, w);
    }
    let fit = |side: i64| (side * max / longer).max(1);
    (fit(h), fit(w))
}

/// `[n, C, h, w]` → `[n, 9·C, h, w]`: each pixel's channels at the 3 × 3
/// pixels around it (offset by offset, edges repeated).
pub fn neighbourhoods(latents: &Tensor) -> Result<Tensor, EngineError> {
    let (_, _, h, w) = latents.size4()?;
    let r = KERNEL / 2;
    let padded = latents.f_pad([r, r, r, r], "replicate", None::<f64>)?;
    let mut parts = Vec::with_capacity((KERNEL * KERNEL) as usize);
    for dy in 0..KERNEL {
        for dx in 0..KERNEL {
            parts.push(padded.f_narrow(2, dy, h)?.f_narrow(3, dx, w)?);
        }
    }
    Ok(Tensor::f_cat(&parts, 1)?)
}

/// `[n, c, h, w]` doubles → per-pixel rows of `c` values.
fn pixels(t: &Tensor) -> Result<Vec<f64>, EngineError> {
    let flat = t.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_view([-1])?;
    Ok(Vec::<f64>::try_from(&flat)?)
}

/// Gauss–Jordan with partial pivoting on a `k × k` system with `m` right
/// hand sides; `None` when singular.
fn solve(a: &mut [f64], b: &mut [f64], k: usize, m: usize) -> Option<Vec<f64>> {
    for col in 0..k {
        let pivot =
            (col..k).max_by(|&i, &j| a[i * k + col].abs().total_cmp(&a[j * k + col].abs()))?;
        if a[pivot * k + col].abs() < 1e-12 {
            return None;
        }
        for j in 0..k {
            a.swap(col * k + j, pivot * k + j);
        }
        for j in 0..m {
            b.swap(col * m + j, pivot * m + j);
        }
        let d = a[col * k + col];
        for j in 0..k {
            a[col * k + j] /= d;
        }
        for j in 0..m {
            b[col * m + j] /= d;
        }
        for i in 0..k {
            if i != col {
                let f = a[i * k + col];
                if f != 0.0 {
                    for j in 0..k {
                        a[i * k + j] -= f * a[col * k + j];
                    }
                    for j in 0..m {
                        b[i * m + j] -= f * b[col * m + j];
                    }
                }
            }
        }
    }
    Some(b.to_vec())
}

/// A small deterministic normal generator (SplitMix64 + Box–Muller) for
/// the fitting latents, independent of libtorch's global generator.
struct FixedNoise(u64);

impl FixedNoise {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        // 53 random bits in (0, 1].
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    fn tensor(&mut self, shape: &[i64]) -> Tensor {
        let count: i64 = shape.iter().product();
        let values: Vec<f32> = (0..count)
            .map(|_| {
                let (u, v) = (self.uniform(), self.uniform());
                ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect();
        Tensor::from_slice(&values).view(shape)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn least_squares_recovers_a_linear_map() {
        let truth = LatentRgb {
            weights: vec![
                [0.5, -0.2, 0.1],
                [0.0, 0.3, -0.4],
                [0.2, 0.2, 0.2],
                [-0.1, 0.0, 0.6],
            ],
            bias: [0.05, -0.1, 0.2],
        };
        let mut noise = FixedNoise::new(1);
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..200 {
            let l: Vec<f64> = (0..4).map(|_| noise.uniform() * 2.0 - 1.0).collect();
            for c in 0..3 {
                y.push(truth.bias[c] + (0..4).map(|k| truth.weights[k][c] * l[k]).sum::<f64>());
            }
            x.extend(l);
        }
        let fitted = LatentRgb::least_squares(&x, &y, 4).unwrap();
        for k in 0..4 {
            for c in 0..3 {
                assert!((fitted.weights[k][c] - truth.weights[k][c]).abs() < 1e-3);
            }
        }
        assert!(LatentRgb::least_squares(&x[..8], &y[..6], 4).is_err());
    }

    #[test]
    fn previews_are_twice_the_latents_or_fit_the_limit() {
        assert_eq!(preview_size(8, 8, 256), (16, 16));
        assert_eq!(preview_size(64, 96, 256), (128, 192));
        assert_eq!(preview_size(128, 128, 256), (256, 256));
        assert_eq!(preview_size(128, 192, 256), (128, 192));
        assert_eq!(preview_size(256, 128, 64), (64, 32));
        assert_eq!(preview_size(1, 500, 10), (1, 10));
    }

    #[test]
    fn only_multiples_of_every_get_a_preview() {
        let every_2 = PreviewRequest {
            every: 2,
            max_size: 256,
        };
        let wanted: Vec<usize> = (1..=6).filter(|s| every_2.wants(*s)).collect();
        assert_eq!(wanted, vec![2, 4, 6]);
        assert!(!PreviewRequest::default().wants(2));
    }
}
