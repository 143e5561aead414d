//! The request rules of image inputs: which fields go together, the
//! strength's range, and how many steps a strength runs.
#![forbid(unsafe_code)]

use crate::proto::GenerateRequest;
use crate::validate::ValidationError;

use super::{inspect, ImageField};

/// Strength of an `init_image` request that sends none (diffusers'
/// default for its img2img pipeline).
pub const DEFAULT_STRENGTH: f32 = 0.75;

/// The rules that need nothing but the request: `mask` and `strength`
/// only with `init_image`, `strength` in (0, 1].
pub fn validate_image_fields(request: &GenerateRequest) -> Result<(), ValidationError> {
    if request.init_image.is_none() {
        if request.mask.is_some() {
            return Err(ValidationError::NeedsInitImage { field: "mask" });
        }
        if request.strength.is_some() {
            return Err(ValidationError::NeedsInitImage { field: "strength" });
        }
    }
    if let Some(strength) = request.strength {
        if !(strength > 0.0 && strength <= 1.0) {
            return Err(ValidationError::BadStrength);
        }
    }
    Ok(())
}

/// The rules that need the resolved size and steps (the model's defaults
/// applied): each image's PNG structure and IHDR size, and that the
/// strength runs at least one step. Decodes nothing (module docs).
pub fn validate_images(
    request: &GenerateRequest,
    width: u32,
    height: u32,
    steps: u32,
) -> Result<(), ValidationError> {
    validate_image_fields(request)?;
    let Some(init) = &request.init_image else {
        return Ok(());
    };
    for (field, bytes) in [
        (ImageField::InitImage, Some(init)),
        (ImageField::Mask, request.mask.as_ref()),
    ] {
        if let Some(bytes) = bytes {
            inspect(bytes, width, height).map_err(|problem| ValidationError::BadImage {
                field: field.name(),
                problem,
            })?;
        }
    }
    if steps_run(steps, request.strength.unwrap_or(DEFAULT_STRENGTH)) == 0 {
        return Err(ValidationError::StrengthRunsNoStep { steps });
    }
    Ok(())
}

/// Denoising steps an img2img job runs, 0 when none would:
/// [`crate::strength::strength_steps`] (diffusers' `get_timesteps`) on the
/// request's f32 strength.
pub fn steps_run(steps: u32, strength: f32) -> u32 {
    crate::strength::strength_steps(steps, crate::strength::strength_from_f32(strength))
        .map_or(0, |s| s.run)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_counted_like_python() {
        // Python: int(20 * 0.35) == 7; with the f32's exact value
        // (0.3499999940…) it would be 6.
        assert_eq!(steps_run(20, 0.35), 7);
        assert!(20.0 * f64::from(0.35f32) < 7.0);
        assert_eq!(steps_run(10, 1.0), 10);
        assert_eq!(steps_run(10, 0.75), 7);
        assert_eq!(steps_run(20, 0.33), 6);
        assert_eq!(steps_run(10, 0.05), 0);
        assert_eq!(steps_run(10, f32::NAN), 0);
        assert_eq!(crate::strength::strength_from_f32(0.35), 0.35);
        assert_eq!(crate::strength::strength_from_f32(0.75), 0.75);
    }
}
