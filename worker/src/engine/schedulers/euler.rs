//! diffusers' `EulerDiscreteScheduler` (optionally with Karras σs), and the
//! σ schedule it shares with the ancestral variant.
#![forbid(unsafe_code)]

use tch::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::timesteps::{float_timesteps, interp, karras_sigmas, sigma_to_t};
use super::{NoiseFn, NoiseSchedule, SchedulerError};

/// Timesteps, σ per step plus the final 0, and `init_noise_sigma`, as the
/// Euler schedulers' `set_timesteps` computes them (`linspace` by default).
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
    pub init_noise_sigma: f64,
    pub prediction: Prediction,
}

impl SigmaSchedule {
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        karras: bool,
    ) -> Result<Self, SchedulerError> {
        let train = config.num_train_timesteps;
        let ac = config.alphas_cumprod()?;
        // σ(t) = sqrt((1 - ᾱ) / ᾱ), in fp32 as diffusers computes it.
        let train_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let spacing = config.spacing(Spacing::Linspace)?;
        let ts = float_timesteps(spacing, train, steps, config.steps_offset);
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| interp(t, &train_sigmas)).collect();
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
        let timesteps = ts.iter().map(|&t| t as f32 as f64).collect();
        let mut sigmas: Vec<f64> = sigmas.iter().map(|&v| v as f32 as f64).collect();
        sigmas.push(0.0);
        let max = sigmas.iter().copied().fold(0.0, f64::max);
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => max,
            Spacing::Leading => (max * max + 1.0).sqrt(),
        };
        Ok(Self {
            timesteps,
            sigmas,
            init_noise_sigma,
            prediction: config.prediction()?,
        })
    }

    /// The UNet input at step `index`: `sample / sqrt(σ² + 1)`.
    pub fn scale(&self, sample: &Tensor, index: usize) -> Result<Tensor, SchedulerError> {
        let sigma = *self.sigmas.get(index).ok_or(SchedulerError::Exhausted)?;
        Ok(sample.f_div_scalar((sigma * sigma + 1.0).sqrt())?)
    }

    /// `original + noise · σ_index` (the Euler family's `add_noise`).
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError> {
        let sigma = *self.sigmas.get(index).ok_or(SchedulerError::Exhausted)?;
        Ok(original.f_add(&noise.f_mul_scalar(sigma)?)?)
    }

    /// σ at step `index` and the next one.
    pub fn pair(&self, index: usize) -> Result<(f64, f64), SchedulerError> {
        match (self.sigmas.get(index), self.sigmas.get(index + 1)) {
            (Some(&from), Some(&to)) => Ok((from, to)),
            _ => Err(SchedulerError::Exhausted),
        }
    }

    /// x₀ from an ε or v prediction at noise level σ.
    pub fn x0(
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
}

/// A sampler on a [`SigmaSchedule`] (Euler, Euler ancestral): the schedule
/// answers everything a [`NoiseSchedule`] is asked but the step.
pub(crate) trait SigmaStep: Send {
    fn step(
        &mut self,
        schedule: &SigmaSchedule,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError>;
}

/// A [`SigmaStep`] sampler with its schedule, as a [`NoiseSchedule`].
pub struct OnSigmas<S> {
    schedule: SigmaSchedule,
    sampler: S,
}

impl<S> OnSigmas<S> {
    pub(crate) fn new(schedule: SigmaSchedule, sampler: S) -> Self {
        Self { schedule, sampler }
    }
}

impl<S: SigmaStep> NoiseSchedule for OnSigmas<S> {
    fn timesteps(&self) -> &[f64] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.schedule.sigmas
    }

    fn init_noise_sigma(&self) -> f64 {
        self.schedule.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &Tensor, index: usize) -> Result<Tensor, SchedulerError> {
        self.schedule.scale(sample, index)
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError> {
        self.schedule.add_noise(original, noise, index)
    }

    fn step(
        &mut self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        self.sampler
            .step(&self.schedule, index, model_output, sample, noise)
    }
}

/// The Euler step: along the derivative `(x - x₀) / σ` to the next σ.
pub struct Euler;

impl Euler {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<OnSigmas<Self>, SchedulerError> {
        let karras = config.use_karras_sigmas.unwrap_or(false);
        Ok(OnSigmas::new(
            SigmaSchedule::new(config, steps, karras)?,
            Euler,
        ))
    }
}

impl SigmaStep for Euler {
    fn step(
        &mut self,
        schedule: &SigmaSchedule,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        _noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        let (sigma, next) = schedule.pair(index)?;
        let x0 = schedule.x0(model_output, sample, sigma)?;
        let derivative = sample.f_sub(&x0)?.f_div_scalar(sigma)?;
        Ok(sample.f_add(&derivative.f_mul_scalar(next - sigma)?)?)
    }
}
