//! diffusers' `EulerAncestralDiscreteScheduler`: an Euler step to σ_down,
//! then fresh noise of σ_up (SDXL-Turbo's sampler, with `trailing` spacing).
//! Karras σs are not part of this scheduler in diffusers.
#![forbid(unsafe_code)]

use tch::Tensor;

use super::config::SchedulerConfig;
use super::euler::{OnSigmas, SigmaSchedule, SigmaStep};
use super::{NoiseFn, SchedulerError};

/// The ancestral Euler step.
pub struct EulerAncestral;

impl EulerAncestral {
    pub fn new(config: &SchedulerConfig, steps: usize) -> Result<OnSigmas<Self>, SchedulerError> {
        Ok(OnSigmas::new(
            SigmaSchedule::new(config, steps, false)?,
            EulerAncestral,
        ))
    }
}

impl SigmaStep for EulerAncestral {
    fn step(
        &mut self,
        schedule: &SigmaSchedule,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        let (from, to) = schedule.pair(index)?;
        let x0 = schedule.x0(model_output, sample, from)?;
        let sigma_up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let sigma_down = (to * to - sigma_up * sigma_up).sqrt();
        let derivative = sample.f_sub(&x0)?.f_div_scalar(from)?;
        let prev = sample.f_add(&derivative.f_mul_scalar(sigma_down - from)?)?;
        let n = noise(model_output)?;
        Ok(prev.f_add(&n.f_mul_scalar(sigma_up)?)?)
    }
}
