//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down,
//! then fresh noise of σ_up (SDXL-Turbo's sampler, with `trailing` spacing).
//! Karras σs are not part of this scheduler in diffusers.
#![forbid(unsafe_code)]

use tch::Tensor;

use super::config::SchedulerConfig;
use super::euler::SigmaSchedule;
use super::{NoiseFn, NoiseSchedule, SchedulerError};

pub struct EulerAncestral {
    schedule: SigmaSchedule,
}

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        Ok(Self {
            schedule: SigmaSchedule::new(config, steps, false)?,
        })
    }
}

impl NoiseSchedule for EulerAncestral {
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
        let (from, to) = self.schedule.pair(index)?;
        let x0 = self.schedule.x0(model_output, sample, from)?;
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = sample.f_sub(&x0)?.f_div_scalar(from)?;
        let prev = sample.f_add(&derivative.f_mul_scalar(sigma_down - from)?)?;
        let n = noise(model_output)?;
        Ok(prev.f_add(&n.f_mul_scalar(sigma_up)?)?)
    }
}
