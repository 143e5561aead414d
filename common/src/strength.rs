//! How many denoising steps an img2img or inpainting request runs, as
//! diffusers' `get_timesteps` counts them: `run = min(int(steps ·
//! strength), steps)` steps, starting at step `steps - run` of the
//! schedule. Every scheduler the engine has is first-order (one model call
//! per timestep, `scheduler.order == 1`) and gives exactly `steps`
//! timesteps for every `timestep_spacing`, so the count does not depend on
//! the scheduler. Pure arithmetic: the broker uses it for Progress totals,
//! the worker for where the schedule starts.
#![forbid(unsafe_code)]

/// Where a strength puts the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrengthSteps {
    /// Index of the first timestep that runs (diffusers' `t_start`).
    pub start: u32,
    /// Steps that run (diffusers' `init_timestep`).
    pub run: u32,
}

/// A strength that runs no step or is out of range.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum StrengthError {
    #[error("strength must be in (0, 1], got {0}")]
    OutOfRange(f64),
    #[error("strength {strength} with {steps} steps runs no step (int(steps × strength) = 0); raise the strength or the steps")]
    NoStep { steps: u32, strength: f64 },
}

/// The steps `steps` at `strength` run. diffusers refuses a run of zero
/// steps (its img2img pipelines raise "the number of pipeline steps is 0"),
/// and so does this.
pub fn strength_steps(steps: u32, strength: f64) -> Result<StrengthSteps, StrengthError> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(StrengthError::OutOfRange(strength));
    }
    // f64 multiply as Python's float does; `as` truncates toward zero as
    // Python's int() does (both are non-negative here).
    let run = ((f64::from(steps) * strength) as u32).min(steps);
    if run == 0 {
        return Err(StrengthError::NoStep { steps, strength });
    }
    Ok(StrengthSteps {
        start: steps - run,
        run,
    })
}

/// The f64 a request's f32 strength stands for: the shortest decimal that
/// reads back as that f32, so 0.35 sent as an f32 (0.3499999940…) is the
/// 0.35 a diffusers user writes, and `int(20 × 0.35)` is 7 here as there
/// (a plain widening would give 6.99999988… → 6).
pub fn strength_from_f32(strength: f32) -> f64 {
    // Rust's float Display is the shortest round-tripping decimal, and
    // every finite f32's such decimal parses as an f64.
    strength.to_string().parse().unwrap_or(f64::from(strength))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(steps: u32, strength: f64) -> Option<u32> {
        strength_steps(steps, strength).ok().map(|s| s.run)
    }

    /// The values Python gives for `min(int(steps * strength), steps)`.
    #[test]
    fn counts_as_diffusers() {
        assert_eq!(run(20, 0.35), Some(7));
        assert_eq!(run(20, 0.5), Some(10));
        assert_eq!(run(20, 0.75), Some(15));
        assert_eq!(run(20, 1.0), Some(20));
        assert_eq!(run(20, 0.05), Some(1)); // 1.0
        assert_eq!(run(10, 0.05), None); // 0.5 → 0: no step
        assert_eq!(run(10, 0.7), Some(7));
        assert_eq!(run(100, 0.29), Some(28)); // 28.999999999999996
        assert_eq!(run(3, 0.34), Some(1)); // 1.02
        assert_eq!(run(5, 0.6), Some(3));
        assert_eq!(run(1, 1.0), Some(1));
        assert_eq!(
            strength_steps(20, 0.35),
            Ok(StrengthSteps { start: 13, run: 7 })
        );
        assert_eq!(
            strength_steps(4, 0.75),
            Ok(StrengthSteps { start: 1, run: 3 })
        );
    }

    #[test]
    fn refuses_out_of_range_and_empty_runs() {
        for bad in [0.0, -0.5, 1.0000001, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                strength_steps(10, bad),
                Err(StrengthError::OutOfRange(_))
            ));
        }
        assert_eq!(
            strength_steps(10, 0.05),
            Err(StrengthError::NoStep {
                steps: 10,
                strength: 0.05
            })
        );
        assert!(strength_steps(0, 1.0).is_err());
    }

    #[test]
    fn f32_strength_reads_as_its_decimal() {
        assert_eq!(strength_from_f32(0.35), 0.35);
        assert_eq!(strength_from_f32(0.05), 0.05);
        assert_eq!(strength_from_f32(1.0), 1.0);
        assert_eq!(run(20, strength_from_f32(0.35)), Some(7));
        // What a plain widening would have given.
        assert_eq!(run(20, f64::from(0.35f32)), Some(6));
        assert!(strength_from_f32(f32::NAN).is_nan());
    }
}
