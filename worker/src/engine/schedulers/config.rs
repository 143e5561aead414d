//! `scheduler/scheduler_config.json`: the fields we honour, the training
//! noise tables, and which timestep spacing a scheduler uses.
#![forbid(unsafe_code)]

use serde::Deserialize;
use tch::{Device, Kind, Tensor};

use super::SchedulerError;

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
    /// SDXL base's `scheduler_config.json` (EulerDiscreteScheduler).
    pub fn sdxl() -> Self {
        Self {
            clip_sample: None,
            set_alpha_to_one: None,
            use_karras_sigmas: Some(false),
            ..Self::default()
        }
    }

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

    pub(crate) fn spacing(&self, default: Spacing) -> Result<Spacing, SchedulerError> {
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
