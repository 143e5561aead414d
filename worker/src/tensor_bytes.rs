//! A tensor converted straight from bytes the worker owns: besides
//! onednn.rs, the one place weave-compute calls an unsafe libtorch API.
//!
//! Loading a model reads each weight's bytes (fp16 on disk, usually) into a
//! buffer and converts them to the compute dtype. The safe route,
//! `Tensor::from_data_size`, first copies the bytes into a fresh tensor of
//! the stored dtype (libtorch zero-fills it, then tch copies): a third pass
//! over every weight, and an allocation freed right after, which leaves the
//! heap full of holes the converted weights do not fit — 1.7 GB of an SDXL
//! worker's resident memory after a load was such free heap
//! (docs/PERFORMANCE.md, issue 14). Here libtorch reads the buffer in place
//! (`from_blob`, a view that owns nothing) and writes only the converted
//! tensor.

use tch::{Device, Kind, TchError, Tensor};

/// A new tensor of `kind` on `device` holding the values of `bytes`, a
/// contiguous little-endian tensor of `stored` with `shape`. The result owns
/// its own storage: nothing of it refers to `bytes` once this returns.
pub fn convert(
    bytes: &[u8],
    shape: &[i64],
    stored: Kind,
    kind: Kind,
    device: Device,
) -> Result<Tensor, TchError> {
    // `to` with `copy = true` always allocates a new tensor, even when the
    // dtype and device already match, and a blocking copy has finished
    // when it returns.
    let converted = read_in_place(bytes, shape, stored, |view| {
        view.f_to_device_(device, kind, false, true)
    })?;
    // The promise above, checked: the result's storage is not the buffer.
    if converted.data_ptr().cast::<u8>().cast_const() == bytes.as_ptr() {
        return Err(TchError::Kind(
            "the converted tensor aliases its source bytes".into(),
        ));
    }
    Ok(converted)
}

/// Writes the values of `bytes`, a contiguous little-endian run of `stored`
/// elements, into `dest`, a contiguous CPU tensor with as many elements, in
/// its own dtype. The loader converts a large weight through here a chunk at
/// a time, so the bytes it has just read are still in the cache when they
/// are converted (engine/weights/safetensors says why).
pub fn convert_into(bytes: &[u8], stored: Kind, dest: &mut Tensor) -> Result<(), TchError> {
    let numel = dest.numel();
    if dest.device() != Device::Cpu || !dest.is_contiguous() {
        return Err(TchError::Shape(format!(
            "{} bytes of {stored:?} go into a contiguous CPU tensor, not this one",
            bytes.len()
        )));
    }
    let shape = [i64::try_from(numel).map_err(|_| TchError::Shape("too many elements".into()))?];
    // A CPU `copy_` is synchronous, and `dest` is a tensor of its own (the
    // caller's), so the copy never writes into `bytes`.
    read_in_place(bytes, &shape, stored, |view| {
        dest.f_view([-1])?.f_copy_(view)
    })
}

/// Calls `read` with a CPU tensor of `stored` with `shape` whose values are
/// `bytes`, checked to be exactly that many: a view over `bytes` itself
/// (`from_blob`, which owns nothing), or, for an empty or misaligned buffer
/// (never seen: the allocator aligns to 16), a copy. `read` must only read
/// the tensor, finish with it before it returns and keep no handle to it;
/// the two callers above copy out of it.
fn read_in_place<R>(
    bytes: &[u8],
    shape: &[i64],
    stored: Kind,
    read: impl FnOnce(&Tensor) -> Result<R, TchError>,
) -> Result<R, TchError> {
    let element = stored.elt_size_in_bytes();
    let numel = shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    });
    if numel.and_then(|n| n.checked_mul(element)) != Some(bytes.len()) {
        return Err(TchError::Shape(format!(
            "{} bytes are not a {stored:?} tensor of shape {shape:?}",
            bytes.len()
        )));
    }
    if bytes.is_empty() || bytes.as_ptr().align_offset(element) != 0 {
        return read(&Tensor::f_from_data_size(bytes, shape, stored)?);
    }
    let mut strides = vec![1i64; shape.len()];
    for axis in (1..shape.len()).rev() {
        strides[axis - 1] = strides[axis] * shape[axis];
    }
    // SAFETY: `view` reads `bytes.len()` bytes from `bytes.as_ptr()`, which
    // is exactly numel × element size (checked above) of a live, aligned
    // slice we borrow for the whole of this function; `read` only reads the
    // view, has finished with it when it returns and keeps no handle to it
    // (the contract above, kept by this module's two callers), and the view
    // is dropped before the borrow ends. libtorch does not free `from_blob`
    // memory (tch passes no deleter).
    let view =
        unsafe { Tensor::f_from_blob(bytes.as_ptr(), shape, &strides, stored, Device::Cpu)? };
    let result = read(&view);
    drop(view);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bytes_of(t: &Tensor) -> Vec<u8> {
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut bytes, numel);
        bytes
    }

    #[test]
    fn fp16_bytes_become_the_same_values_in_fp32() {
        let half = Tensor::randn([3, 5, 7], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        let mut bytes = bytes_of(&half);
        let got = convert(&bytes, &[3, 5, 7], Kind::Half, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(got.kind(), Kind::Float);
        assert_eq!(got.size(), vec![3, 5, 7]);
        assert!(got.equal(&half.to_kind(Kind::Float)));
        // The result owns its storage: overwriting the buffer changes nothing.
        bytes.fill(0);
        assert!(got.equal(&half.to_kind(Kind::Float)));
    }

    #[test]
    fn the_same_dtype_is_still_a_copy() {
        let t = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let mut bytes = bytes_of(&t);
        let got = convert(&bytes, &[4, 4], Kind::Float, Kind::Float, Device::Cpu).unwrap();
        bytes.fill(0xff);
        assert!(got.equal(&t));
    }

    #[test]
    fn a_length_that_does_not_match_the_shape_is_an_error() {
        let bytes = vec![0u8; 10];
        assert!(convert(&bytes, &[3, 2], Kind::Half, Kind::Float, Device::Cpu).is_err());
        assert!(convert(&bytes, &[-1, 5], Kind::Half, Kind::Float, Device::Cpu).is_err());
        assert!(convert(&[], &[0, 4], Kind::Half, Kind::Float, Device::Cpu)
            .unwrap()
            .size()
            .contains(&0));
    }

    #[test]
    fn convert_into_fills_a_tensor_in_its_own_dtype() {
        let half = Tensor::randn([2, 9], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        let bytes = bytes_of(&half);
        let mut dest = Tensor::zeros([2, 9], (Kind::Float, Device::Cpu));
        convert_into(&bytes, Kind::Half, &mut dest).unwrap();
        assert!(dest.equal(&half.to_kind(Kind::Float)));
        // Misaligned: the copying route, the same values.
        let mut padded = vec![0u8; 1];
        padded.extend(&bytes);
        let mut dest2 = Tensor::zeros([18], (Kind::Float, Device::Cpu));
        convert_into(&padded[1..], Kind::Half, &mut dest2).unwrap();
        assert!(dest2.equal(&half.to_kind(Kind::Float).view([-1])));
    }

    #[test]
    fn convert_into_refuses_a_length_or_layout_that_does_not_fit() {
        let bytes = vec![0u8; 10];
        let mut wrong = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        assert!(convert_into(&bytes, Kind::Half, &mut wrong).is_err());
        let mut strided = Tensor::zeros([5, 2], (Kind::Float, Device::Cpu)).transpose(0, 1);
        assert!(convert_into(&bytes, Kind::Half, &mut strided).is_err());
        // Nothing was written through the refusals.
        assert_eq!(wrong.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn a_misaligned_buffer_takes_the_copying_route() {
        let t = Tensor::randn([6], (Kind::Float, Device::Cpu)).to_kind(Kind::Half);
        let mut padded = vec![0u8; 1];
        padded.extend(bytes_of(&t));
        let odd = &padded[1..];
        let got = convert(odd, &[6], Kind::Half, Kind::Float, Device::Cpu).unwrap();
        assert!(got.equal(&t.to_kind(Kind::Float)));
    }
}
