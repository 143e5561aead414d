//! Timestep and σ tables shared by the schedulers: numpy's rounding,
//! linspace and interp, the three `timestep_spacing` rules, Karras σs.
#![forbid(unsafe_code)]

use super::config::Spacing;

/// numpy's `round` (half to even).
pub(crate) fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// numpy's `linspace(start, stop, num)` in f64.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| start + i as f64 * step).collect();
    v[num - 1] = stop;
    v
}

/// Integer timesteps, descending, as DDIM (`plus_one = false`) and DPM
/// (`plus_one = true`: n + 1 points with the last dropped) compute them.
pub(crate) fn integer_timesteps(
    spacing: Spacing,
    train: usize,
    steps: usize,
    offset: i64,
    plus_one: bool,
) -> Vec<i64> {
    let points = if plus_one { steps + 1 } else { steps };
    let mut ts: Vec<i64> = match spacing {
        Spacing::Linspace => {
            let v = linspace(0.0, (train - 1) as f64, points);
            let mut t: Vec<i64> = v.iter().rev().map(|&x| round_half_even(x) as i64).collect();
            t.truncate(steps);
            t
        }
        Spacing::Leading => {
            let ratio = (train / points) as i64;
            let mut t: Vec<i64> = (0..points as i64)
                .rev()
                .map(|i| i * ratio + offset)
                .collect();
            t.truncate(steps);
            t
        }
        Spacing::Trailing => {
            // np.arange(train, 0, -train / steps): start + i·step.
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| round_half_even(train as f64 - i as f64 * ratio) as i64 - 1)
                .collect()
        }
    };
    ts.truncate(steps);
    ts
}

/// Float timesteps, descending, as the Euler schedulers compute them.
pub(crate) fn float_timesteps(
    spacing: Spacing,
    train: usize,
    steps: usize,
    offset: i64,
) -> Vec<f64> {
    match spacing {
        Spacing::Linspace => {
            let mut v: Vec<f64> = linspace(0.0, (train - 1) as f64, steps)
                .into_iter()
                .map(|x| x as f32 as f64)
                .collect();
            v.reverse();
            v
        }
        Spacing::Leading => {
            let ratio = (train / steps) as f64;
            (0..steps)
                .rev()
                .map(|i| i as f64 * ratio + offset as f64)
                .collect()
        }
        Spacing::Trailing => {
            let ratio = train as f64 / steps as f64;
            (0..steps)
                .map(|i| round_half_even(train as f64 - i as f64 * ratio) - 1.0)
                .collect()
        }
    }
}

/// numpy's `interp(t, arange(len), table)`.
pub(crate) fn interp(t: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if t <= 0.0 {
        return table[0] as f64;
    }
    if t >= last as f64 {
        return table[last] as f64;
    }
    let lo = t.floor() as usize;
    let frac = t - lo as f64;
    let (a, b) = (table[lo] as f64, table[lo + 1] as f64);
    a + (b - a) * frac
}

/// Karras et al. (2022) noise levels from σ_max down to σ_min, ρ = 7.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The fractional training timestep whose σ is `sigma` (diffusers' `_sigma_to_t`).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let n = log_sigmas.len();
    let low = log_sigmas
        .iter()
        .rposition(|&l| log_sigma - l as f64 >= 0.0)
        .unwrap_or(0)
        .min(n - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}
