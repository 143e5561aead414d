//! diffusers' `DDIMScheduler` with η = 0: `clip_sample`, `set_alpha_to_one`,
//! ε or v prediction, integer timesteps (`leading` by default).
#![forbid(unsafe_code)]

use tch::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::timesteps::integer_timesteps;
use super::{NoiseFn, NoiseSchedule, SchedulerError};

pub struct Ddim {
    prediction: Prediction,
    timesteps: Vec<f64>,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used when the previous timestep is before 0.
    final_alpha_cumprod: f64,
    /// The stride between timesteps.
    stride: i64,
    clip_sample: Option<f64>,
}

impl Ddim {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train = config.num_train_timesteps;
        let alphas_cumprod = config.alphas_cumprod()?;
        let spacing = config.spacing(Spacing::Leading)?;
        let timesteps = integer_timesteps(spacing, train, steps, config.steps_offset, false)
            .into_iter()
            .map(|t| t as f64)
            .collect();
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            alphas_cumprod[0] as f64
        };
        Ok(Self {
            prediction: config.prediction()?,
            timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
            stride: (train / steps) as i64,
            clip_sample: config
                .clip_sample
                .unwrap_or(true)
                .then_some(config.clip_sample_range),
        })
    }

    fn alpha_at(&self, t: i64) -> Result<f64, SchedulerError> {
        usize::try_from(t)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t))
            .map(|&a| a as f64)
            .ok_or(SchedulerError::Exhausted)
    }
}

impl NoiseSchedule for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    /// `√ᾱ_t · original + √(1-ᾱ_t) · noise` at `t = timesteps[index]`.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError> {
        let t = *self.timesteps.get(index).ok_or(SchedulerError::Exhausted)? as i64;
        let a = self.alpha_at(t)?;
        Ok(original
            .f_mul_scalar(a.sqrt())?
            .f_add(&noise.f_mul_scalar((1.0 - a).sqrt())?)?)
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        _noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        let t = *self.timesteps.get(index).ok_or(SchedulerError::Exhausted)? as i64;
        let prev_t = t - self.stride;
        let alpha_t = self.alpha_at(t)?;
        let alpha_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)?
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
}
