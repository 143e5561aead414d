// Force-included (g++ -include) into tch 0.26's C++ wrappers when they are
// built against libtorch 2.11.0 (FLAVOR=cuda, see scripts/libtorch.sh and the
// Makefile). tch 0.26 is generated from torch 2.13, whose op set has these
// few ops that 2.11 lacks (or, for the MPS attention helper, with one more
// argument). Each becomes a stub that raises a c10::Error when called, which
// tch reports as an ordinary TchError; the engine calls none of them (no
// philox generator ops, no Lanczos upsampling, no flash-attention in-place
// forward, nothing for Apple's MPS). Every other op compiles against 2.11's
// own declarations, so a signature that changed in any other way still
// fails the build instead of being papered over here.
#pragma once
#include <ATen/ATen.h>
#include <tuple>

#define WEAVE_TORCH_2_11_MISSING(ret, name)                                              \
	template <typename... Args>                                                           \
	ret name(Args &&...) {                                                                \
		TORCH_CHECK(false, #name " is not in libtorch 2.11 (this build of tch is for 2.13)"); \
		return ret{};                                                                       \
	}

namespace torch {
using weave_tensor_pair = std::tuple<at::Tensor, at::Tensor>;
WEAVE_TORCH_2_11_MISSING(at::Tensor, _flash_attention_forward_no_dropout_inplace)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_key_fold_in)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_key_split)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_normal)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_normal_)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_normal_out)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_uniform)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_uniform_)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _philox_uniform_out)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _upsample_lanczos2d_aa)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _upsample_lanczos2d_aa_backward)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _upsample_lanczos2d_aa_backward_out)
WEAVE_TORCH_2_11_MISSING(at::Tensor, _upsample_lanczos2d_aa_out)
// 2.11 has this one with one argument fewer (no enable_gqa); declaring the
// name in namespace torch hides at::'s overload for torch:: lookups.
WEAVE_TORCH_2_11_MISSING(weave_tensor_pair, _scaled_dot_product_attention_math_for_mps)
} // namespace torch

#undef WEAVE_TORCH_2_11_MISSING
