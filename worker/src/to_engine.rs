//! The one place `weave_common`'s words become the engine's. The engine
//! keeps its own enums (it does not depend on `common`); every match here
//! is exhaustive, so a new scheduler, device or model kind in `common`
//! breaks the build until the engine handles it or refuses it here.
#![forbid(unsafe_code)]

use weave_common::config::{Device, ModelKind};
use weave_common::image::{decode_luma, decode_rgb, ImageField, ImageProblem};
use weave_common::proto::Scheduler;
use weave_common::strength::strength_from_f32;
use weave_common::worker_proto::WorkerImageInput;

use crate::engine;

pub fn scheduler(scheduler: Scheduler) -> engine::SchedulerKind {
    match scheduler {
        Scheduler::Ddim => engine::SchedulerKind::Ddim,
        Scheduler::Euler => engine::SchedulerKind::Euler,
        Scheduler::EulerAncestral => engine::SchedulerKind::EulerAncestral,
        Scheduler::DpmPp2m => engine::SchedulerKind::DpmPlusPlus2M,
        Scheduler::DpmPp2mKarras => engine::SchedulerKind::DpmPlusPlus2MKarras,
    }
}

pub fn device(device: Device) -> engine::DeviceChoice {
    match device {
        Device::Auto => engine::DeviceChoice::Auto,
        Device::Cpu => engine::DeviceChoice::Cpu,
        Device::Cuda(index) => {
            engine::DeviceChoice::Cuda(usize::try_from(index).unwrap_or(usize::MAX))
        }
    }
}

/// The engine's family for a configured kind, or why this engine cannot
/// load it.
pub fn model_kind(kind: ModelKind) -> Result<engine::ModelKind, String> {
    match kind {
        ModelKind::Sd1 => Ok(engine::ModelKind::Sd1),
        ModelKind::Sd2 => Ok(engine::ModelKind::Sd2),
        ModelKind::Sdxl => Ok(engine::ModelKind::Sdxl),
    }
}

/// Decodes a job's image inputs for the engine (the full PNG decode runs
/// here, inside the sandbox), naming the field that failed.
pub fn image_input(
    input: &WorkerImageInput,
    width: u32,
    height: u32,
) -> Result<engine::ImageInput, (ImageField, ImageProblem)> {
    let pixels =
        decode_rgb(&input.init_png, width, height).map_err(|p| (ImageField::InitImage, p))?;
    let mask = match &input.mask_png {
        Some(png) => {
            let luma = decode_luma(png, width, height).map_err(|p| (ImageField::Mask, p))?;
            // The decode returned exactly width × height bytes.
            Some(
                engine::Mask::from_luma(width, height, &luma)
                    .map_err(|_| (ImageField::Mask, ImageProblem::BadStructure))?,
            )
        }
        None => None,
    };
    Ok(engine::ImageInput {
        init: engine::RgbImage {
            width,
            height,
            pixels,
        },
        mask,
        strength: strength_from_f32(input.strength),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_common_scheduler_has_the_engines_name() {
        for s in Scheduler::ALL {
            assert_eq!(scheduler(s).name(), s.as_str());
        }
    }

    /// A 1×1 RGB PNG (the one docs/PROTOCOL.md's examples carry).
    const TINY_PNG: [u8; 69] = [
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90,
        0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0xf8,
        0xdf, 0xc0, 0x00, 0x00, 0x04, 0x01, 0x01, 0x80, 0xfb, 0xd7, 0xcb, 0xf1, 0x00, 0x00, 0x00,
        0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];

    #[test]
    fn image_inputs_decode_for_the_engine_and_name_their_field() {
        let mut input = WorkerImageInput {
            init_png: TINY_PNG.to_vec(),
            mask_png: Some(TINY_PNG.to_vec()),
            strength: 0.35,
        };
        let decoded = image_input(&input, 1, 1).unwrap();
        assert_eq!(decoded.init.pixels.len(), 3);
        assert_eq!(decoded.mask.unwrap().repaint.len(), 1);
        // The f32's shortest decimal, as a Python caller wrote it.
        assert_eq!(decoded.strength, 0.35);
        assert_eq!(
            image_input(&input, 2, 1).unwrap_err().0,
            ImageField::InitImage
        );
        input.mask_png = Some(b"not a png".to_vec());
        assert_eq!(
            image_input(&input, 1, 1).unwrap_err(),
            (ImageField::Mask, ImageProblem::NotPng)
        );
    }

    #[test]
    fn every_kind_reaches_the_engine() {
        assert_eq!(model_kind(ModelKind::Sdxl), Ok(engine::ModelKind::Sdxl));
        assert_eq!(model_kind(ModelKind::Sd2), Ok(engine::ModelKind::Sd2));
        assert_eq!(device(Device::Cuda(1)), engine::DeviceChoice::Cuda(1));
    }
}
