//! diffusers' `DPMSolverMultistepScheduler` as DPM++ 2M: `dpmsolver++`,
//! order 2, midpoint, lower-order final step, `final_sigmas_type = "zero"`,
//! optionally Karras σs.
#![forbid(unsafe_code)]

use tch::Tensor;

use super::config::{Prediction, SchedulerConfig, Spacing};
use super::timesteps::{integer_timesteps, interp, karras_sigmas, sigma_to_t};
use super::{NoiseFn, NoiseSchedule, SchedulerError};

pub struct DpmSolverMultistep {
    prediction: Prediction,
    timesteps: Vec<f64>,
    /// σ per step plus the final σ (0).
    sigmas: Vec<f64>,
    /// The previous step's x₀ prediction.
    previous_x0: Option<Tensor>,
    lower_order_nums: usize,
}

/// DPM's (α_t, σ_t) from the Karras-style σ.
pub(crate) fn alpha_sigma(sigma: f64) -> (f64, f64) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl DpmSolverMultistep {
    pub fn new(
        config: &SchedulerConfig,
        steps: usize,
        karras: bool,
    ) -> Result<Self, SchedulerError> {
        let train = config.num_train_timesteps;
        let ac = config.alphas_cumprod()?;
        let train_sigmas: Vec<f32> = ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect();
        let spacing = config.spacing(Spacing::Linspace)?;
        let karras = karras || config.use_karras_sigmas.unwrap_or(false);
        let ts = integer_timesteps(spacing, train, steps, config.steps_offset, true);
        let (timesteps, mut sigmas): (Vec<f64>, Vec<f64>) = if karras {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|s| s.ln()).collect();
            let sigmas = karras_sigmas(
                train_sigmas[0] as f64,
                train_sigmas[train - 1] as f64,
                steps,
            );
            (
                sigmas
                    .iter()
                    .map(|&sg| sigma_to_t(sg, &log_sigmas).round())
                    .collect(),
                sigmas.iter().map(|&v| v as f32 as f64).collect(),
            )
        } else {
            (
                ts.iter().map(|&t| t as f64).collect(),
                ts.iter()
                    .map(|&t| interp(t as f64, &train_sigmas) as f32 as f64)
                    .collect(),
            )
        };
        sigmas.push(0.0);
        Ok(Self {
            prediction: config.prediction()?,
            timesteps,
            sigmas,
            previous_x0: None,
            lower_order_nums: 0,
        })
    }
}

impl NoiseSchedule for DpmSolverMultistep {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `α_σ · original + σ_t · noise` with DPM's (α, σ) from step `index`'s σ.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError> {
        let sigma = *self.sigmas.get(index).ok_or(SchedulerError::Exhausted)?;
        let (alpha, sigma_t) = alpha_sigma(sigma);
        Ok(original
            .f_mul_scalar(alpha)?
            .f_add(&noise.f_mul_scalar(sigma_t)?)?)
    }

    fn step(
        &mut self,
        i: usize,
        model_output: &Tensor,
        sample: &Tensor,
        _noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        let n = self.timesteps.len();
        let (Some(&sigma_s0), Some(&sigma_next)) = (self.sigmas.get(i), self.sigmas.get(i + 1))
        else {
            return Err(SchedulerError::Exhausted);
        };
        let (alpha_s0, sig_s0) = alpha_sigma(sigma_s0);
        let x0 = match self.prediction {
            Prediction::Epsilon => sample
                .f_sub(&model_output.f_mul_scalar(sig_s0)?)?
                .f_div_scalar(alpha_s0)?,
            Prediction::VPrediction => sample
                .f_mul_scalar(alpha_s0)?
                .f_sub(&model_output.f_mul_scalar(sig_s0)?)?,
        };
        // diffusers: final_sigmas_type "zero" always makes the last step
        // first order; order 2 is the maximum, so "lower order second"
        // changes nothing.
        let lower_order_final = i == n - 1;
        let (alpha_t, sig_t) = alpha_sigma(sigma_next);
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
