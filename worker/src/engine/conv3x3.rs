//! The 3×3, stride 1, padding 1 convolution of a large image on the CPU
//! when oneDNN is off (the sandbox's default: oneDNN JIT-compiles its
//! kernels, docs/SANDBOX.md "PROT_EXEC").
//!
//! libtorch's own CPU convolution then unfolds the whole input into a
//! matrix nine times its size (im2col) and multiplies once. For the VAE
//! decoder's layers at 128² to 1024² pixels that matrix is hundreds of MB
//! per layer, written and read back through memory, and the decoder ends up
//! ≈ 1.5× slower than with oneDNN (docs/PERFORMANCE.md, issue 14). Two
//! replacements, tried in this order:
//!
//! 1. **NNPACK** (built into libtorch; its kernels are compiled ahead of
//!    time, so it needs no executable memory): a Winograd convolution,
//!    faster than oneDNN on these layers (0.61–0.69× its time on the
//!    decoder's 256- and 512-channel layers, measured; docs/PERFORMANCE.md).
//!    fp32 only, one image at a time (its batch mode is the training
//!    algorithm, several times slower). Its results differ from `conv2d`
//!    by ≈ 2e-5 of the largest output value (the transforms round
//!    differently); the unit tests bound it by 1e-4.
//! 2. **Nine matrix products** when NNPACK is not there or refuses a layer:
//!    the input is padded once and flattened per channel; with the output
//!    computed on the padded width, each of the nine taps reads a
//!    *contiguous* run of that flat input at offset `ky·(W+2) + kx`, so the
//!    convolution is nine matrix products (`O×C` tap weights times a
//!    `C×H(W+2)` strided view) accumulated into the output, with no
//!    unfolded copy. The two padding columns of each output row are
//!    computed and dropped. The sums are the same products in another
//!    order: ≈ 4e-7 of the largest output value measured on the VAE's
//!    layer shapes in fp32; the unit tests bound it by 1e-5.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

/// From this many output pixels per image on, [`conv3x3_large`] is used
/// (measured: both replacements are faster than libtorch's unfolding from
/// 128² up; at the UNet's 64² and below NNPACK is slower, and the nine
/// products gain nothing at 64² and lose at 16²; docs/PERFORMANCE.md).
pub const LARGE_MIN_PIXELS: i64 = 128 * 128;

/// Whether a convolution of `input` (`[B, C, H, W]`) with `weight`
/// (`[O, C, kh, kw]`), `stride` and `padding` takes [`conv3x3_large`]:
/// a 3×3, stride 1, padding 1 layer on a large image, on the CPU, with
/// oneDNN off.
pub fn takes_large(
    input: &[i64],
    weight: &[i64],
    stride: i64,
    padding: i64,
    device: Device,
    onednn_on: bool,
) -> bool {
    let [_, _, h, w] = input else { return false };
    let [_, _, 3, 3] = weight else { return false };
    stride == 1 && padding == 1 && device == Device::Cpu && !onednn_on && h * w >= LARGE_MIN_PIXELS
}

/// Whether libtorch's NNPACK initialised on this CPU (it needs AVX2 on
/// x86). Asked once; the worker asks before its seccomp boundary, so
/// NNPACK's start (it reads the CPU's features) happens while every
/// syscall is still allowed.
pub fn nnpack_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| Tensor::f_internal_nnpack_available().unwrap_or(false))
}

/// `conv2d(input, weight, bias, stride 1, padding 1)` for a 3×3 `weight`
/// on a large CPU image: NNPACK when it is ready and takes the layer, else
/// [`conv3x3_shifted`] (module doc).
pub fn conv3x3_large(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor, tch::TchError> {
    if input.kind() == Kind::Float && weight.kind() == Kind::Float && nnpack_ready() {
        // A layer NNPACK refuses (it reports no reason libtorch passes on)
        // still gets the same result, by the other route.
        if let Ok(out) = conv3x3_nnpack(input, weight, bias) {
            return Ok(out);
        }
    }
    conv3x3_shifted(input, weight, bias)
}

/// Output rows per NNPACK call. NNPACK transforms a whole input and output
/// into Winograd tiles (8×8 per 6×6 outputs) before it multiplies, so one
/// call on a 256-channel 512² layer takes ≈ 1 GB of workspace: above
/// diffusers' peak for the whole SD 1.5 pipeline (docs/PERFORMANCE.md).
/// By bands of 96 rows (16 tiles) the workspace is a fifth of that at
/// 512² and stays the same at 1024², for two extra input rows per band.
pub const NNPACK_BAND_ROWS: i64 = 96;

/// NNPACK's convolution, one image and [`NNPACK_BAND_ROWS`] output rows at
/// a time (module doc).
pub fn conv3x3_nnpack(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor, tch::TchError> {
    conv3x3_nnpack_by(input, weight, bias, NNPACK_BAND_ROWS)
}

fn conv3x3_nnpack_by(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    band_rows: i64,
) -> Result<Tensor, tch::TchError> {
    let (batch, _, height, _) = input.size4()?;
    let band_rows = band_rows.max(1);
    let mut images = Vec::new();
    for image in 0..batch {
        let image = input.f_narrow(0, image, 1)?;
        let mut bands = Vec::new();
        let mut low = 0;
        while low < height {
            let high = (low + band_rows).min(height);
            // The band's input: its rows and one more on each side, a zero
            // row where that side is the image's edge; NNPACK pads only
            // the columns.
            let top = (low - 1).max(0);
            let bottom = (high + 1).min(height);
            let rows = image.f_narrow(2, top, bottom - top)?;
            let (zero_top, zero_bottom) = (i64::from(low == 0), i64::from(high == height));
            let rows = if zero_top + zero_bottom > 0 {
                rows.f_constant_pad_nd([0, 0, zero_top, zero_bottom])?
            } else {
                rows.f_contiguous()?
            };
            bands.push(rows.f_internal_nnpack_spatial_convolution(
                weight,
                Some(bias),
                [0, 1],
                [1, 1],
            )?);
            low = high;
        }
        images.push(joined(bands, 2)?);
    }
    joined(images, 0)
}

/// `parts` concatenated along `dim`; a single part as it is, not copied.
fn joined(mut parts: Vec<Tensor>, dim: i64) -> Result<Tensor, tch::TchError> {
    if parts.len() == 1 {
        return Ok(parts.remove(0));
    }
    Tensor::f_cat(&parts, dim)
}

/// `conv2d(input, weight, bias, stride 1, padding 1)` for a 3×3 `weight`,
/// as nine accumulated matrix products (module doc).
pub fn conv3x3_shifted(
    input: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor, tch::TchError> {
    let (batch, channels, height, width) = input.size4()?;
    let outputs = weight.size().first().copied().unwrap_or(0);
    let padded_width = width + 2;
    let flat = (height + 2) * padded_width;
    // The output on the padded width: H rows of W + 2 columns.
    let run = height * padded_width;
    // [B, C, (H+2)(W+2) + 2]: two more zeros, since the last tap's run
    // (offset 2·(W+2) + 2) ends two elements past the padded image. One
    // allocation with the input copied into its interior, so no second
    // padded copy exists at once (these are 100+ MB at 512²).
    let padded = Tensor::f_zeros([batch, channels, flat + 2], (input.kind(), input.device()))?;
    let mut interior = padded
        .f_narrow(2, 0, flat)?
        .f_view([batch, channels, height + 2, padded_width])?
        .f_narrow(2, 1, height)?
        .f_narrow(3, 1, width)?;
    interior.f_copy_(input)?;
    // [3, 3, O, C]: each tap's weights a contiguous O×C matrix.
    let taps = weight.f_permute([2, 3, 0, 1])?.f_contiguous()?;
    let out = bias
        .f_view([1, outputs, 1])?
        .f_expand([batch, outputs, run], false)?
        .f_contiguous()?;
    for image in 0..batch {
        let mut image_out = out.f_select(0, image)?;
        let image_in = padded.f_select(0, image)?;
        for ky in 0..3 {
            for kx in 0..3 {
                let tap = taps.f_select(0, ky)?.f_select(0, kx)?;
                let shifted = image_in.f_narrow(1, ky * padded_width + kx, run)?;
                // In place into `out` (the returned handle is `image_out` again).
                let _accumulated = image_out.f_addmm_(&tap, &shifted)?;
            }
        }
    }
    out.f_view([batch, outputs, height, padded_width])?
        .f_narrow(3, 0, width)?
        .f_contiguous()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Kind;

    fn reference(input: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
        input.conv2d(weight, Some(bias), [1, 1], [1, 1], [1, 1], 1)
    }

    #[test]
    fn equals_the_library_convolution_up_to_rounding() {
        tch::manual_seed(7);
        // Non-square, odd sizes, two images, channels in and out differ.
        for (batch, channels, outputs, height, width) in
            [(2, 5, 7, 9, 13), (1, 16, 3, 33, 20), (3, 1, 1, 4, 4)]
        {
            let input = Tensor::randn([batch, channels, height, width], (Kind::Float, Device::Cpu));
            let weight = Tensor::randn([outputs, channels, 3, 3], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([outputs], (Kind::Float, Device::Cpu));
            let got = conv3x3_shifted(&input, &weight, &bias).unwrap();
            let want = reference(&input, &weight, &bias);
            assert_eq!(got.size(), want.size());
            let scale = want.abs().max().double_value(&[]);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(
                err <= 1e-5 * scale.max(1.0),
                "{batch}x{channels}x{height}x{width}: error {err}"
            );
        }
    }

    #[test]
    fn nnpack_equals_the_library_convolution_up_to_its_rounding() {
        // This machine's CPU has AVX2 (every x86 CPU the CI runs on does);
        // without NNPACK the large path would silently be the other one.
        assert!(nnpack_ready(), "libtorch's NNPACK did not initialise");
        tch::manual_seed(11);
        for (batch, channels, outputs, height, width) in
            [(1, 8, 16, 40, 33), (2, 5, 3, 17, 64), (3, 16, 16, 8, 8)]
        {
            let input = Tensor::randn([batch, channels, height, width], (Kind::Float, Device::Cpu));
            let weight = Tensor::randn([outputs, channels, 3, 3], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([outputs], (Kind::Float, Device::Cpu));
            let want = reference(&input, &weight, &bias);
            for got in [
                conv3x3_nnpack(&input, &weight, &bias).unwrap(),
                conv3x3_large(&input, &weight, &bias).unwrap(),
                // Non-contiguous input.
                conv3x3_nnpack(
                    &input.transpose(2, 3).contiguous().transpose(2, 3),
                    &weight,
                    &bias,
                )
                .unwrap(),
            ] {
                assert_eq!(got.size(), want.size());
                let scale = want.abs().max().double_value(&[]);
                let err = (&got - &want).abs().max().double_value(&[]);
                assert!(
                    err <= 1e-4 * scale.max(1.0),
                    "{batch}x{channels}x{height}x{width}: error {err} of {scale}"
                );
            }
        }
    }

    #[test]
    fn nnpack_by_bands_of_rows_equals_one_call() {
        assert!(nnpack_ready(), "libtorch's NNPACK did not initialise");
        tch::manual_seed(5);
        let input = Tensor::randn([2, 6, 17, 11], (Kind::Float, Device::Cpu));
        let weight = Tensor::randn([4, 6, 3, 3], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([4], (Kind::Float, Device::Cpu));
        let want = reference(&input, &weight, &bias);
        let scale = want.abs().max().double_value(&[]);
        // Bands of 1 row, of 5 (a short last band of 2), 16 (one row
        // left), and one band for the whole image.
        for band in [1, 5, 16, 17, 96] {
            let got = conv3x3_nnpack_by(&input, &weight, &bias, band).unwrap();
            assert_eq!(got.size(), want.size(), "bands of {band}");
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(
                err <= 1e-4 * scale,
                "bands of {band}: error {err} of {scale}"
            );
        }
    }

    #[test]
    fn a_layer_nnpack_does_not_take_goes_the_other_way() {
        // fp64 is not NNPACK's: the nine products answer, exactly enough.
        let input = Tensor::randn([1, 4, 12, 12], (Kind::Double, Device::Cpu));
        let weight = Tensor::randn([5, 4, 3, 3], (Kind::Double, Device::Cpu));
        let bias = Tensor::randn([5], (Kind::Double, Device::Cpu));
        assert!(conv3x3_nnpack(&input, &weight, &bias).is_err());
        let got = conv3x3_large(&input, &weight, &bias).unwrap();
        let err = (&got - reference(&input, &weight, &bias))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err <= 1e-10, "error {err}");
    }

    #[test]
    fn a_non_contiguous_input_gives_the_same_result() {
        tch::manual_seed(3);
        let wide = Tensor::randn([1, 4, 10, 24], (Kind::Float, Device::Cpu));
        let input = wide.narrow(3, 3, 12);
        let weight = Tensor::randn([6, 4, 3, 3], (Kind::Float, Device::Cpu));
        let bias = Tensor::randn([6], (Kind::Float, Device::Cpu));
        let got = conv3x3_shifted(&input, &weight, &bias).unwrap();
        let err = (&got - reference(&input, &weight, &bias))
            .abs()
            .max()
            .double_value(&[]);
        assert!(err <= 1e-4, "error {err}");
    }

    #[test]
    fn only_large_3x3_cpu_layers_without_onednn_take_it() {
        let big = [1, 128, 128, 128];
        let k3 = [128, 128, 3, 3];
        assert!(takes_large(&big, &k3, 1, 1, Device::Cpu, false));
        assert!(
            !takes_large(&big, &k3, 1, 1, Device::Cpu, true),
            "oneDNN on"
        );
        assert!(!takes_large(&big, &k3, 1, 1, Device::Cuda(0), false), "GPU");
        assert!(
            !takes_large(&big, &k3, 2, 1, Device::Cpu, false),
            "stride 2"
        );
        assert!(
            !takes_large(&big, &k3, 1, 0, Device::Cpu, false),
            "no padding"
        );
        assert!(
            !takes_large(&big, &[128, 128, 1, 1], 1, 0, Device::Cpu, false),
            "1x1"
        );
        assert!(
            !takes_large(
                &[2, 320, 64, 64],
                &[320, 320, 3, 3],
                1,
                1,
                Device::Cpu,
                false
            ),
            "64²"
        );
        assert!(
            !takes_large(&[128, 128], &k3, 1, 1, Device::Cpu, false),
            "not 4-d"
        );
    }
}
