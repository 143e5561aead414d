//! Noise schedulers, configured from `scheduler/scheduler_config.json` and
//! following diffusers' `DDIMScheduler`, `EulerDiscreteScheduler`,
//! `EulerAncestralDiscreteScheduler` and `DPMSolverMultistepScheduler`
//! (DPM++ 2M, optionally with Karras sigmas) step for step.
//!
//! The training-time tables (betas, cumulative alphas) are computed with
//! libtorch in fp32 as diffusers does; the per-step scalars are f64.
#![forbid(unsafe_code)]

mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod timesteps;

pub use config::{Prediction, SchedulerConfig, Spacing};
pub use ddim::Ddim;
pub use dpm_solver::DpmSolverMultistep;
pub use euler::Euler;
pub use euler_ancestral::EulerAncestral;

use tch::Tensor;

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

/// Draws the ancestral noise for a step, shaped like its argument; the
/// caller owns the random stream so it stays in diffusers' order.
pub type NoiseFn<'a> = dyn FnMut(&Tensor) -> Result<Tensor, SchedulerError> + 'a;

/// What varies between samplers: one implementation per diffusers class.
/// `index` is the step number (diffusers' `step_index`).
pub trait NoiseSchedule: Send {
    /// The timesteps fed to the denoiser, one per step.
    fn timesteps(&self) -> &[f64];
    /// σ per step plus the final σ (σ-based samplers only).
    fn sigmas(&self) -> &[f64] {
        &[]
    }
    /// What the initial Gaussian noise is multiplied by.
    fn init_noise_sigma(&self) -> f64 {
        1.0
    }
    /// The denoiser input at step `index` (unchanged unless overridden).
    fn scale_model_input(&self, sample: &Tensor, _index: usize) -> Result<Tensor, SchedulerError> {
        Ok(sample.shallow_clone())
    }
    /// diffusers' `add_noise` for the step `index` of the full schedule:
    /// `original` noised to that step's noise level (img2img's start,
    /// inpainting's kept region).
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError>;
    /// One denoising step from `sample` given the model output.
    fn step(
        &mut self,
        index: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError>;
}

/// A scheduler set up for one generation: the chosen sampler and how far
/// it has got.
pub struct Scheduler {
    inner: Box<dyn NoiseSchedule>,
    step_index: usize,
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
        let inner: Box<dyn NoiseSchedule> = match kind {
            SchedulerKind::Ddim => Box::new(Ddim::new(config, steps)?),
            SchedulerKind::Euler => Box::new(Euler::new(config, steps)?),
            SchedulerKind::EulerAncestral => Box::new(EulerAncestral::new(config, steps)?),
            SchedulerKind::DpmPlusPlus2M => {
                Box::new(DpmSolverMultistep::new(config, steps, false)?)
            }
            SchedulerKind::DpmPlusPlus2MKarras => {
                Box::new(DpmSolverMultistep::new(config, steps, true)?)
            }
        };
        Ok(Self {
            inner,
            step_index: 0,
        })
    }

    pub fn timesteps(&self) -> &[f64] {
        self.inner.timesteps()
    }

    /// diffusers' `set_begin_index`: the next step is step `index` of the
    /// full schedule (img2img skips the first `steps - init_timestep`).
    pub fn begin_at(&mut self, index: usize) -> Result<(), SchedulerError> {
        if index >= self.inner.timesteps().len() {
            return Err(SchedulerError::Exhausted);
        }
        self.step_index = index;
        Ok(())
    }

    /// `original` noised to the noise level of step `index` of the full
    /// schedule (diffusers' `scheduler.add_noise` at `timesteps[index]`).
    pub fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        index: usize,
    ) -> Result<Tensor, SchedulerError> {
        self.inner.add_noise(original, noise, index)
    }

    pub fn sigmas(&self) -> &[f64] {
        self.inner.sigmas()
    }

    /// What the initial Gaussian noise is multiplied by.
    pub fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }

    /// Scales the denoiser input at the current step (Euler family: by
    /// 1/sqrt(σ²+1); others: unchanged).
    pub fn scale_model_input(&self, sample: &Tensor) -> Result<Tensor, SchedulerError> {
        self.inner.scale_model_input(sample, self.step_index)
    }

    /// One denoising step from `sample` given the model output; `noise`
    /// supplies the ancestral noise when the sampler needs it (drawn by the
    /// caller so the random stream stays in diffusers' order).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        sample: &Tensor,
        noise: &mut NoiseFn<'_>,
    ) -> Result<Tensor, SchedulerError> {
        if self.step_index >= self.inner.timesteps().len() {
            return Err(SchedulerError::Exhausted);
        }
        let out = self
            .inner
            .step(self.step_index, model_output, sample, noise)?;
        self.step_index += 1;
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::dpm_solver::alpha_sigma;
    use super::timesteps::{karras_sigmas, sigma_to_t};
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
            let alphas_cumprod = c.alphas_cumprod().unwrap();
            let mut s = Scheduler::new(kind, &c, 20).unwrap();
            let (timesteps, sigmas) = (s.timesteps().to_vec(), s.sigmas().to_vec());
            let noise = Tensor::from_slice(&[1.0f32, -1.0, 0.3, 2.0]);
            let mut x = noise.f_mul_scalar(s.init_noise_sigma()).unwrap();
            for i in 0..20 {
                // ε that is exactly consistent with x₀ at this step.
                let eps = match kind {
                    SchedulerKind::Ddim => {
                        let a = alphas_cumprod[timesteps[i] as usize] as f64;
                        (&x - &x0 * a.sqrt()) / (1.0 - a).sqrt()
                    }
                    SchedulerKind::Euler | SchedulerKind::EulerAncestral => (&x - &x0) / sigmas[i],
                    // DPM works in variance-preserving space.
                    _ => {
                        let (a, sg) = alpha_sigma(sigmas[i]);
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
