//! Where a pipeline runs and in which precision, as the config's
//! `[worker] device` and `precision` name them.
#![forbid(unsafe_code)]

use tch::{Device, Kind};

use crate::engine::EngineError;

/// Where to run: `auto` picks the first CUDA device when libtorch sees one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<Device, EngineError> {
        match self {
            Self::Auto if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(n) => {
                let count = tch::Cuda::device_count();
                if (n as i64) < count {
                    Ok(Device::Cuda(n))
                } else {
                    Err(EngineError::Device(format!(
                        "cuda:{n} requested but libtorch sees {count} CUDA device(s); use device = \"cpu\" or \"auto\", or a CUDA build of libtorch (make libtorch FLAVOR=cuda)"
                    )))
                }
            }
        }
    }
}

/// Compute precision. `auto`: fp32 on CPU, fp16 on CUDA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Auto,
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "fp32" | "f32" | "float32" => Self::F32,
            "fp16" | "f16" | "float16" => Self::F16,
            "bf16" | "bfloat16" => Self::Bf16,
            _ => return None,
        })
    }

    pub(super) fn kind(self, device: Device) -> Kind {
        match (self, device) {
            (Self::Auto, Device::Cpu) | (Self::F32, _) => Kind::Float,
            (Self::Auto, _) | (Self::F16, _) => Kind::Half,
            (Self::Bf16, _) => Kind::BFloat16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_precision_parse() {
        assert_eq!(DeviceChoice::Cpu.resolve().ok(), Some(Device::Cpu));
        assert_eq!(Precision::parse("bf16"), Some(Precision::Bf16));
        assert_eq!(Precision::Auto.kind(Device::Cpu), Kind::Float);
        assert_eq!(Precision::Auto.kind(Device::Cuda(0)), Kind::Half);
        if !tch::Cuda::is_available() {
            assert!(matches!(
                DeviceChoice::Cuda(0).resolve(),
                Err(EngineError::Device(_))
            ));
        }
    }
}
