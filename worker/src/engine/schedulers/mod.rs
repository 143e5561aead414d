//! Noise schedulers, configured from `scheduler/scheduler_config.json` and
//! following diffusers' `DDIMScheduler`, `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler` and `DPMSolverMultistepScheduler`
//! (DPM++ 2M, optionally with Karras sigmas) step for step.
//!
//! The training-time tables (betas, cumulative alphas) are computed with
//! libtorch in fp32 as diffusers does; the per-step scalars are f64.
#![forbid(unsafe_code)]

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler_config.json: {0}")]
    Config(String),
    #[error("steps must be between 1 and {max}, got {got}")]
    Steps { got: usize, max: usize },
    #[error("the scheduler was stepped more times than set_timesteps allows")]
    Exhausted,
    #[error("libtorch failed in the scheduler: {0}")]
    Torch(#[from] tch::TchError),
}

/// Which sampler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmPlusPlus2M,
    DpmPlusPlus2MKarras,
}

impl SchedulerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::Euler => "euler",
            Self::EulerAncestral => "euler_a",
            Self::DpmPlusPlus2M => "dpmpp_2m",
            Self::DpmPlusPlus2MKarras => "dpmpp_2m_karras",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spacing {
    Leading,
    Trailing,
    Linspace,
}

/// The fields of `scheduler_config.json` we honour. A missing
/// `timestep_spacing` takes each scheduler's own diffusers default.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_train")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_prediction")]
    pub prediction_type: String,
    #[serde(default)]
    pub timestep_spacing: Option<String>,
    #[serde(default)]
    pub steps_offset: i64,
    #[serde(default)]
    pub set_alpha_to_one: Option<bool>,
    #[serde(default)]
    pub clip_sample: Option<bool>,
    #[serde(default = "d_clip_range")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    #[serde(default)]
    pub thresholding: bool,
}

fn d_train() -> usize {
    1000
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_schedule() -> String {
    "linear".into()
}
fn d_prediction() -> String {
    "epsilon".into()
}
fn d_clip_range() -> f64 {
    1.0
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: "scaled_linear".into(),
            prediction_type: "epsilon".into(),
            timestep_spacing: Some("leading".into()),
            steps_offset: 1,
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            clip_sample_range: 1.0,
            use_karras_sigmas: None,
            rescale_betas_zero_snr: false,
            thresholding: false,
        }
    }
}

impl SchedulerConfig {
    pub fn from_json(value: &serde_json::Value) -> Result<Self, SchedulerError> {
        let c: Self = serde_json::from_value(value.clone())
            .map_err(|e| SchedulerError::Config(e.to_string()))?;
        if c.num_train_timesteps < 2 || c.num_train_timesteps > 100_000 {
            return Err(SchedulerError::Config(format!(
                "num_train_timesteps {}",
                c.num_train_timesteps
            )));
        }
        if c.rescale_betas_zero_snr || c.thresholding {
            return Err(SchedulerError::Config(
                "rescale_betas_zero_snr and thresholding are not supported".into(),
            ));
        }
        c.prediction()?;
        c.spacing(Spacing::Leading)?;
        Ok(c)
    }

    pub fn prediction(&self) -> Result<Prediction, SchedulerError> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            other => Err(SchedulerError::Config(format!(
                "prediction_type {other:?} (supported: epsilon, v_prediction)"
            ))),
        }
    }

    fn spacing(&self, default: Spacing) -> Result<Spacing, SchedulerError> {
        match self.timestep_spacing.as_deref() {
            None => Ok(default),
            Some("leading") => Ok(Spacing::Leading),
            Some("trailing") => Ok(Spacing::Trailing),
            Some("linspace") => Ok(Spacing::Linspace),
            Some(other) => Err(SchedulerError::Config(format!(
                "timestep_spacing {other:?} (supported: leading, trailing, linspace)"
            ))),
        }
    }

    /// `alphas_cumprod` in fp32, computed with libtorch like diffusers.
    pub fn alphas_cumprod(&self) -> Result<Vec<f32>, SchedulerError> {
        let n = self.num_train_timesteps as i64;
        let opts = (Kind::Float, Device::Cpu);
        let betas = match self.beta_schedule.as_str() {
            "linear" => Tensor::f_linspace(self.beta_start, self.beta_end, n, opts)?,
            "scaled_linear" => {
                Tensor::f_linspace(self.beta_start.sqrt(), self.beta_end.sqrt(), n, opts)?
                    .f_pow_tensor_scalar(2)?
            }
            "squaredcos_cap_v2" => {
                let alpha_bar = |t: f64| {
                    ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                        .cos()
                        .powi(2)
                };
                let betas: Vec<f32> = (0..n)
                    .map(|i| {
                        let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                        (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
                    })
                    .collect();
                Tensor::from_slice(&betas)
            }
            other => {
                return Err(SchedulerError::Config(format!(
                    "beta_schedule {other:?} (supported: linear, scaled_linear, squaredcos_cap_v2)"
                )))
            }
        };
        let alphas = betas.f_neg()?.f_add_scalar(1.0)?;
        let cumprod = alphas.f_cumprod(0, Kind::Float)?;
        Ok(Vec::<f32>::try_from(&cumprod)?)
    }
}

/// A scheduler set up for one generation.
pub struct Scheduler {
    kind: SchedulerKind,
    prediction: Prediction,
    /// The timesteps fed to the UNet, one per step.
    timesteps: Vec<f64>,
    /// Euler/DPM: σ per step plus the final σ (0).
    sigmas: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// DDIM: ᾱ used when the previous timestep is before 0.
    final_alpha_cumprod: f64,
    /// DDIM: the stride between timesteps.
    ddim_stride: i64,
    clip_sample: Option<f64>,
    init_noise_sigma: f64,
    step_index: usize,
    /// DPM++ 2M: the previous step's x₀ prediction.
    previous_x0: Option<Tensor>,
    lower_order_nums: usize,
}

impl Scheduler {
    pub fn new(
        kind: SchedulerKind,
        config: &SchedulerConfig,
        steps: usize,
    ) -> Result<Self, SchedulerError> {
        let train = config.num_train_timesteps;
        if steps == 0 || steps > train {
            return Err(SchedulerError::Steps {
                got: steps,
                max: train,
            });
        }
        let ac = config.alphas_cumprod()?;
        let prediction = config.prediction()?;
        let mut s = Self {
            kind,
            prediction,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            final_alpha_cumprod: 1.0,
            ddim_stride: (train / steps) as i64,
            clip_sample: None,
            init_noise_sigma: 1.0,
            step_index: 0,
            previous_x0: None,
            lower_order_nums: 0,
            alphas_cumprod: ac,
        };
        let ac = &s.alphas_cumprod;
        let offset = config.steps_offset;
        // σ(t) = sqrt((1 - ᾱ) / ᾱ), in fp32 as diffusers computes it.
        let train_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        match kind {
            SchedulerKind::Ddim => {
                let spacing = config.spacing(Spacing::Leading)?;
                s.timesteps = integer_timesteps(spacing, train, steps, offset, false)
                    .into_iter()
                    .map(|t| t as f64)
                    .collect();
                s.final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
                    1.0
                } else {
                    ac[0] as f64
                };
                if config.clip_sample.unwrap_or(true) {
                    s.clip_sample = Some(config.clip_sample_range);
                }
            }
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let spacing = config.spacing(Spacing::Linspace)?;
                let ts = float_timesteps(spacing, train, steps, offset);
                let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp(t, &train_sigmas)).collect();
                let karras =
                    kind == SchedulerKind::Euler && config.use_karras_sigmas.unwrap_or(false);
                let ts = if karras {
                    sigmas = karras_sigmas(sigmas[sigmas.len() - 1], sigmas[0], steps);
                    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                    sigmas
                        .iter()
                        .map(|&sg| sigma_to_t(sg, &log_sigmas))
                        .collect()
                } else {
                    ts
                };
                // diffusers stores both as fp32.
                s.timesteps = ts.iter().map(|&t| t as f32 as f64).collect();
                s.sigmas = sigmas.iter().map(|&v| v as f32 as f64).collect();
                s.sigmas.push(0.0);
                let max = s.sigmas.iter().copied().fold(0.0, f64::max);
                s.init_noise_sigma = match spacing {
                    Spacing::Linspace | Spacing::Trailing => max,
                    Spacing::Leading => (max * max + 1.0).sqrt(),
                };
            }
            SchedulerKind::DpmPlusPlus2M | SchedulerKind::DpmPlusPlus2MKarras => {
                let spacing = config.spacing(Spacing::Linspace)?;
                let karras = kind == SchedulerKind::DpmPlusPlus2MKarras
                    || config.use_karras_sigmas.unwrap_or(false);
                let ts = integer_timesteps(spacing, train, steps, offset, true);
                if karras {
                    let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
                    let sigmas = karras_sigmas(
                        train_sigmas[0] as f64,
                        train_sigmas[train - 1] as f64,
                        steps,
                    );
                    s.timesteps = sigmas
                        .iter()
                        .map(|&sg| sigma_to_t(sg, &log_sigmas).round())
                        .collect();
                    s.sigmas = sigmas.iter().map(|&v| v as f32 as f64).collect();
                } else {
                    s.timesteps = ts.iter().map(|&t| t as f64).collect();
                    s.sigmas = ts
                        .iter()
                        .map(|&t| interp(t as f64, &train_sigmas) as f32 as f64)
                        .collect();
                }
                s.sigmas.push(0.0);
            }
        }
        Ok(s)
    }

    pub fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// What the initial Gaussian noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        self.init_noise_sigma
    }

    /// Scales the UNet input at the current step (Euler family: by
    /// 1/sqrt(σ²+1); others: unchanged).
    pub fn scale_model_input(&self, sample: &Tensor) -> Result<Tensor, SchedulerError> {
        match self.kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let sigma = *self
                    .sigmas
                    .get(self.step_index)
                    .ok_or(SchedulerError::Exhausted)?;
                Ok(sample.f_div_scalar((sigma * sigma + 1.0).sqrt())?)
            }
            _ => Ok(sample.shallow_clone()),
        }
    }

    /// One denoising step from `sample` given the model output; `noise`
    /// supplies the ancestral noise when the sampler needs it (drawn by the
    /// caller so the random stream stays in diffusers' order).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut dyn FnMut(&Tensor) -> Result<Tensor, SchedulerError>,
    ) -> Result<Tensor, SchedulerError> {
        let i = self.step_index;
        let t = *self.timesteps.get(i).ok_or(SchedulerError::Exhausted)?;
        let out = match self.kind {
            SchedulerKind::Ddim => self.ddim_step(model_output, sample, t as i64)?,
            SchedulerKind::Euler => {
                let sigma = self.sigmas[i];
                let x0 = self.sigma_x0(model_output, sample, sigma)?;
                let derivative = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
                sample.f_add(&derivative.f_mul_scalar(self.sigmas[i + 1] - sigma)?)?
            }
            SchedulerKind::EulerAncestral => {
                let sigma = self.sigmas[i];
                let x0 = self.sigma_x0(model_output, sample, sigma)?;
                let (from, to) = (sigma, self.sigmas[i + 1]);
                let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
                let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
                let derivative = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
                let prev = sample.f_add(&derivative.f_mul_scalar(sigma_down - sigma)?)?;
                let n = noise(model_output)?;
                prev.f_add(&n.f_mul_scalar(sigma_up)?)?
            }
            SchedulerKind::DpmPlusPlus2M | SchedulerKind::DpmPlusPlus2MKarras => {
                self.dpm_step(model_output, sample)?
            }
        };
        self.step_index += 1;
        Ok(out)
    }

    /// x₀ from an ε or v prediction at noise level σ (Euler family).
    fn sigma_x0(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        sigma: f64,
    ) -> Result<Tensor, SchedulerError> {
        Ok(match self.prediction {
            Prediction::Epsilon => sample.f_sub(&model_output.f_mul_scalar(sigma)?)?,
            Prediction::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                model_output
                    .f_mul_scalar(-sigma / s2.sqrt())?
                    .f_add(&sample.f_div_scalar(s2)?)?
            }
        })
    }

    fn ddim_step(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        t: i64,
    ) -> Result<Tensor, SchedulerError> {
        let alpha_at = |t: i64| -> Result<f64, SchedulerError> {
            usize::try_from(t)
                .ok()
                .and_then(|t| self.alphas_cumprod.get(t))
                .map(|&a| a as f64)
                .ok_or(SchedulerError::Exhausted)
        };
        let prev_t = t - self.ddim_stride;
        let alpha_t = alpha_at(t)?;
        let alpha_prev = if prev_t >= 0 {
            alpha_at(prev_t)?
        } else {
            self.final_alpha_cumprod
        };
        let beta_t = 1.0 - alpha_t;
        let (mut x0, eps) = match self.prediction {
            Prediction::Epsilon => (
                sample
                    .f_sub(&model_output.f_mul_scalar(beta_t.sqrt())?)?
                    .f_div_scalar(alpha_t.sqrt())?,
                model_output.shallow_clone(),
            ),
            Prediction::VPrediction => (
                sample
                    .f_mul_scalar(alpha_t.sqrt())?
                    .f_sub(&model_output.f_mul_scalar(beta_t.sqrt())?)?,
                model_output
                    .f_mul_scalar(alpha_t.sqrt())?
                    .f_add(&sample.f_mul_scalar(beta_t.sqrt())?)?,
            ),
        };
        if let Some(r) = self.clip_sample {
            x0 = x0.f_clamp(-r, r)?;
        }
        Ok(x0
            .f_mul_scalar(alpha_prev.sqrt())?
            .f_add(&eps.f_mul_scalar((1.0 - alpha_prev).sqrt())?)?)
    }

    fn dpm_step(
        &mut self,
        model_output: &Tensor,
        sample: &Tensor,
    ) -> Result<Tensor, SchedulerError> {
        let i = self.step_index;
        let n = self.timesteps.len();
        let sigma_s0 = self.sigmas[i];
        let (alpha_s0, sig_s0) = alpha_sigma(sigma_s0);
        let x0 = match self.prediction {
            Prediction::Epsilon => sample
                .f_sub(&model_output.f_mul_scalar(sig_s0)?)?
                .f_div_scalar(alpha_s0)?,
            Prediction::VPrediction => sample
                .f_mul_scalar(alpha_s0)?
                .f_sub(&model_output.f_mul_scalar(sig_s0)?)?,
        };
        // diffusers: final_sigmas_type "zero" always makes the last step first order.
        let lower_order_final = i == n - 1;
        let lower_order_second = i + 2 == n && n < 15;
        let (alpha_t, sig_t) = alpha_sigma(self.sigmas[i + 1]);
        let lambda = |a: f64, s: f64| a.ln() - s.ln();
        let lambda_t = lambda(alpha_t, sig_t);
        let lambda_s0 = lambda(alpha_s0, sig_s0);
        let h = lambda_t - lambda_s0;
        let coeff = alpha_t * ((-h).exp() - 1.0);
        let prev = match (
            &self.previous_x0,
            self.lower_order_nums >= 1 && !lower_order_final,
        ) {
            (Some(m1), true) => {
                let _ = lower_order_second; // order 2 is the maximum, so "second" changes nothing
                let (alpha_s1, sig_s1) = alpha_sigma(self.sigmas[i - 1]);
                let h0 = lambda_s0 - lambda(alpha_s1, sig_s1);
                let r0 = h0 / h;
                let d1 = x0.f_sub(m1)?.f_mul_scalar(1.0 / r0)?;
                sample
                    .f_mul_scalar(sig_t / sig_s0)?
                    .f_sub(&x0.f_mul_scalar(coeff)?)?
                    .f_sub(&d1.f_mul_scalar(0.5 * coeff)?)?
            }
            _ => sample
                .f_mul_scalar(sig_t / sig_s0)?
                .f_sub(&x0.f_mul_scalar(coeff)?)?,
        };
        self.previous_x0 = Some(x0);
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        Ok(prev)
    }
}

/// DPM's (α_t, σ_t) from the Karras-style σ.
fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// numpy's `round` (half to even).
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// numpy's `linspace(start, stop, num)` in f64.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    v[num - 1] = stop;
    v
}

/// Integer timesteps, descending, as DDIM (`plus_one = false`) and DPM
/// (`plus_one = true`: n + 1 points with the last dropped) compute them.
fn integer_timesteps(
    spacing: Spacing,
    train: usize,
    steps: usize,
    offset: i64,
    plus_one: bool,
) -> Vec<i64> {
    let points = if plus_one { steps + 1 } else { steps };
    let mut ts: Vec<i64> = match spacing {
        Spacing::Linspace => {
            let v = linspace(0.0, (train - 1) as f64, points);
            let mut t: Vec<i64> = v.iter().rev().map(|&x| round_half_even(x) as i64).collect();
            t.truncate(steps);
            t
        }
        Spacing::Leading => {
            let ratio = (train / points) as i64;
            let mut t: Vec<i64> = (0..points as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect();
            t.truncate(steps);
            t
        }
        Spacing::Trailing => {
            // np.arange(train, 0, -train / steps): start + i·step.
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| round_half_even(train as f64 - i as f64 * ratio) as i64 - 1)
                .collect()
        }
    };
    ts.truncate(steps);
    ts
}

/// Float timesteps, descending, as the Euler schedulers compute them.
fn float_timesteps(spacing: Spacing, train: usize, steps: usize, offset: i64) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v: Vec<f64> = linspace(0.0, (train - 1) as f64, steps)
                .into_iter()
                .map(|x| x as f32 as f64)
                .collect();
            v.reverse();
            v
        }
        Spacing::Leading => {
            let ratio = (train / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| i as f64 * ratio + offset as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| round_half_even(train as f64 - i as f64 * ratio) - 1.0)
                .collect()
        }
    }
}

/// numpy's `interp(t, arange(len), table)`.
fn interp(t: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if t <= 0.0 {
        return table[0] as f64;
    }
    if t >= last as f64 {
        return table[last] as f64;
    }
    let lo = t.floor() as usize;
    let frac = t - lo as f64;
    let (a, b) = (table[lo] as f64, table[lo + 1] as f64);
    a + (b - a) * frac
}

/// Karras et al. (2022) noise levels from σ_max down to σ_min, ρ = 7.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The fractional training timestep whose σ is `sigma` (diffusers' `_sigma_to_t`).
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sd() -> SchedulerConfig {
        SchedulerConfig::default()
    }

    #[test]
    fn ddim_leading_timesteps_match_diffusers() {
        // DDIMScheduler(steps_offset=1).set_timesteps(10).timesteps
        let s = Scheduler::new(SchedulerKind::Ddim, &sd(), 10).unwrap();
        assert_eq!(
            s.timesteps(),
            &[901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]
        );
    }

    #[test]
    fn euler_linspace_timesteps_and_sigmas() {
        let mut c = sd();
        c.timestep_spacing = Some("linspace".into());
        let s = Scheduler::new(SchedulerKind::Euler, &c, 4).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 666.0, 333.0, 0.0]);
        // sd scaled_linear σ_max ≈ 14.6146, σ_min ≈ 0.0292
        assert!((s.sigmas()[0] - 14.6146).abs() < 1e-3, "{:?}", s.sigmas());
        assert!((s.sigmas()[3] - 0.0292).abs() < 1e-3);
        assert_eq!(s.sigmas()[4], 0.0);
        assert!((s.init_noise_sigma() - s.sigmas()[0]).abs() < 1e-12);
    }

    #[test]
    fn dpm_linspace_timesteps() {
        let mut c = sd();
        c.timestep_spacing = None;
        // DPMSolverMultistepScheduler: linspace(0, 999, 6).round()[::-1][:-1]
        let s = Scheduler::new(SchedulerKind::DpmPlusPlus2M, &c, 5).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 799.0, 599.0, 400.0, 200.0]);
    }

    #[test]
    fn trailing_spacing() {
        let mut c = sd();
        c.timestep_spacing = Some("trailing".into());
        let s = Scheduler::new(SchedulerKind::Ddim, &c, 4).unwrap();
        assert_eq!(s.timesteps(), &[999.0, 749.0, 499.0, 249.0]);
    }

    #[test]
    fn karras_endpoints() {
        let k = karras_sigmas(0.03, 14.6, 5);
        assert!((k[0] - 14.6).abs() < 1e-9 && (k[4] - 0.03).abs() < 1e-9);
        assert!(k.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn sigma_to_t_inverts_the_table() {
        let c = sd();
        let ac = c.alphas_cumprod().unwrap();
        let sig: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let logs: Vec<f32> = sig.iter().map(|s| s.ln()).collect();
        let t = sigma_to_t(sig[500] as f64, &logs);
        assert!((t - 500.0).abs() < 1e-3, "{t}");
    }

    #[test]
    fn rejects_bad_steps_and_config() {
        assert!(Scheduler::new(SchedulerKind::Ddim, &sd(), 0).is_err());
        assert!(Scheduler::new(SchedulerKind::Ddim, &sd(), 5000).is_err());
        let v = serde_json::json!({"prediction_type": "sample"});
        assert!(SchedulerConfig::from_json(&v).is_err());
    }

    /// A denoiser that knows x₀ exactly drives every sampler to x₀.
    #[test]
    fn exact_denoiser_converges() {
        let x0 = Tensor::from_slice(&[0.5f32, -0.25, 1.0, 0.0]);
        for kind in [
            SchedulerKind::Ddim,
            SchedulerKind::Euler,
            SchedulerKind::DpmPlusPlus2M,
            SchedulerKind::DpmPlusPlus2MKarras,
        ] {
            let mut c = sd();
            c.set_alpha_to_one = Some(true);
            let mut s = Scheduler::new(kind, &c, 20).unwrap();
            let noise = Tensor::from_slice(&[1.0f32, -1.0, 0.3, 2.0]);
            let mut x = noise.f_mul_scalar(s.init_noise_sigma()).unwrap();
            for i in 0..20 {
                // ε that is exactly consistent with x₀ at this step.
                let eps = match kind {
                    SchedulerKind::Ddim => {
                        let a = s.alphas_cumprod[s.timesteps[i] as usize] as f64;
                        (&x - &x0 * a.sqrt()) / (1.0 - a).sqrt()
                    }
                    SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                        (&x - &x0) / s.sigmas[i]
                    }
                    // DPM works in variance-preserving space.
                    _ => {
                        let (a, sg) = alpha_sigma(s.sigmas[i]);
                        (&x - &x0 * a) / sg
                    }
                };
                let mut no_noise =
                    |_: &Tensor| -> Result<Tensor, SchedulerError> { unreachable!() };
                x = s.step(&eps, &x, &mut no_noise).unwrap();
            }
            let err = (&x - &x0).abs().max().double_value(&[]);
            assert!(err < 1e-3, "{kind:?}: {err}");
        }
    }
}
