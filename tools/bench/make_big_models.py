#!/usr/bin/env python3
"""Random-weight SD 1.5-size and SDXL-size pipelines in the diffusers folder
layout, for the big-model bench (worker/benches/big_vs_diffusers.rs,
docs/PERFORMANCE.md): the real architectures with seeded random weights, so
the timings are those of SD 1.5 and SDXL without downloading a checkpoint.

    make_big_models.py OUT_DIR [--models sd15,sdxl] [--seed 0] [--dtype fp16] [--check]

Writes OUT_DIR/sd15 (CLIP ViT-L/14 text encoder, the 860M-parameter UNet,
the SD VAE) and OUT_DIR/sdxl (CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 with
its projection, the 2.6B-parameter SDXL base UNet, the SDXL VAE), fp16
safetensors. Nothing is downloaded: the configs are written out here, the
tokenizers are the repository's copies of CLIP's BPE (models/digits-xl).

The models are built on torch's meta device (no memory, no init) only to
learn the names and shapes of their tensors; every tensor is then drawn
from its own generator, seeded by `--seed` and the tensor's name, so a
folder is the same byte for byte on every machine and in any order, and no
fp32 copy of the model is ever held. Scales keep activations in fp16 range:
weights N(0, 1/(3·fan_in)) (the variance of torch's default init), norms
1 + N(0, 0.02²), biases and embeddings N(0, 0.02²), the UNet's output
convolution ×0.1 (a random UNet otherwise predicts noise of unit size and
20 steps drift out of range).

A finished folder carries `.complete` with the parameters it was built
from; an existing complete folder with the same parameters is kept, so the
bench can call this on every run. `--check` builds nothing: it prints each
model's parameter counts from the meta models (a cheap test of the configs).
"""
import argparse
import json
import os
import shutil
import sys
import time
import zlib

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENIZER = os.path.join(ROOT, "models", "digits-xl", "tokenizer")
TOKENIZER_2 = os.path.join(ROOT, "models", "digits-xl", "tokenizer_2")
# Bumped when the way weights are drawn changes, so old folders are rebuilt.
RECIPE = 1


def clip_l_config():
    from transformers import CLIPTextConfig

    # openai/clip-vit-large-patch14's text tower (SD 1.5's and SDXL's first encoder).
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=768,
    )


def clip_bigg_config():
    from transformers import CLIPTextConfig

    # laion/CLIP-ViT-bigG-14's text tower, SDXL's second encoder.
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        max_position_embeddings=77,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=1280,
    )


def sd15_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def sdxl_unet():
    from diffusers import UNet2DConditionModel

    # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json.
    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def vae(xl: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=1024 if xl else 512,
        scaling_factor=0.13025 if xl else 0.18215,
        # SDXL's own VAE overflows in fp16 and is marked so; diffusers then
        # decodes in fp32. These random weights do not overflow: keep both
        # sides in one precision.
        force_upcast=False,
    )


def scheduler(xl: bool):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    common = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
    )
    if xl:
        return EulerDiscreteScheduler(timestep_spacing="leading", **common)
    return PNDMScheduler(set_alpha_to_one=False, skip_prk_steps=True, **common)


def components(name: str):
    """(subfolder, kind, meta model) for each model of the pipeline, and its scheduler."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    xl = name == "sdxl"
    with torch.device("meta"):
        parts = [("text_encoder", "transformers", CLIPTextModel(clip_l_config()))]
        if xl:
            parts.append(("text_encoder_2", "transformers", CLIPTextModelWithProjection(clip_bigg_config())))
        parts.append(("unet", "diffusers", sdxl_unet() if xl else sd15_unet()))
        parts.append(("vae", "diffusers", vae(xl)))
    return parts, scheduler(xl)


def seeded_tensor(seed: int, sub: str, name: str, shape, dtype) -> torch.Tensor:
    gen = torch.Generator("cpu").manual_seed(seed * 1_000_003 + zlib.crc32(f"{sub}/{name}".encode()))
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith("position_ids"):
        return torch.arange(shape[-1]).reshape(shape)
    t = torch.empty(shape, dtype=torch.float32)
    if len(shape) >= 2 and "embedding" not in name:
        fan_in = 1
        for d in shape[1:]:
            fan_in *= d
        t.normal_(0.0, (1.0 / (3.0 * fan_in)) ** 0.5, generator=gen)
        if sub == "unet" and name.startswith("conv_out."):
            t.mul_(0.1)
    elif leaf == "weight" and len(shape) == 1:
        t.normal_(1.0, 0.02, generator=gen)
    else:
        t.normal_(0.0, 0.02, generator=gen)
    return t.to(dtype)


def model_index(name: str) -> dict:
    xl = name == "sdxl"
    index = {
        "_class_name": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline",
        "_diffusers_version": __import__("diffusers").__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler" if xl else "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if xl:
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        index["force_zeros_for_empty_prompt"] = True
    else:
        index["safety_checker"] = [None, None]
        index["requires_safety_checker"] = False
    return index


def copy_dir(src: str, dst: str) -> None:
    os.makedirs(dst, exist_ok=True)
    for entry in os.listdir(src):
        shutil.copy(os.path.join(src, entry), os.path.join(dst, entry))


def build(out: str, name: str, seed: int, dtype_name: str) -> None:
    from safetensors.torch import save_file

    stamp = json.dumps({"recipe": RECIPE, "seed": seed, "dtype": dtype_name, "model": name}, sort_keys=True)
    folder = os.path.join(out, name)
    marker = os.path.join(folder, ".complete")
    if os.path.exists(marker) and open(marker).read() == stamp:
        print(f"{name}: up to date in {folder}")
        return
    started = time.perf_counter()
    dtype = torch.float16 if dtype_name == "fp16" else torch.float32
    tmp = folder + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    parts, sched = components(name)
    total = 0
    for sub, lib, model in parts:
        os.makedirs(os.path.join(tmp, sub))
        if lib == "diffusers":
            model.save_config(os.path.join(tmp, sub))
            file, meta = "diffusion_pytorch_model.safetensors", None
        else:
            model.config.architectures = [type(model).__name__]
            model.config.save_pretrained(os.path.join(tmp, sub))
            file, meta = "model.safetensors", {"format": "pt"}
        tensors = {
            key: seeded_tensor(seed, sub, key, tuple(t.shape), dtype) for key, t in model.state_dict().items()
        }
        total += sum(t.numel() for k, t in tensors.items() if not k.endswith("position_ids"))
        save_file(tensors, os.path.join(tmp, sub, file), metadata=meta)
        del tensors
    sched.save_pretrained(os.path.join(tmp, "scheduler"))
    # As SD 1.5's config: DDIMScheduler.from_config would otherwise default
    # clip_sample to true.
    sc_path = os.path.join(tmp, "scheduler", "scheduler_config.json")
    with open(sc_path) as f:
        sc = json.load(f)
    sc.setdefault("clip_sample", False)
    with open(sc_path, "w") as f:
        json.dump(sc, f, indent=2, sort_keys=True)
    copy_dir(TOKENIZER, os.path.join(tmp, "tokenizer"))
    if name == "sdxl":
        copy_dir(TOKENIZER_2, os.path.join(tmp, "tokenizer_2"))
    with open(os.path.join(tmp, "model_index.json"), "w") as f:
        json.dump(model_index(name), f, indent=2, sort_keys=True)
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(stamp)
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(tmp, folder)
    print(
        f"{name}: built {total / 1e6:.0f}M parameters, {dtype_name}, seed {seed}, "
        f"in {time.perf_counter() - started:.1f} s -> {folder}",
        flush=True,
    )


def check(name: str) -> None:
    parts, sched = components(name)
    counts = ", ".join(
        f"{sub} {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M" for sub, _, model in parts
    )
    print(f"{name}: {counts}; scheduler {type(sched).__name__}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--models", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--check", action="store_true", help="print parameter counts, write nothing")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in ("sd15", "sdxl")]
    if unknown or not names:
        ap.error(f"--models: unknown model {unknown[0] if unknown else '(none)'!r}; choose from sd15, sdxl")
    for name in names:
        if args.check:
            check(name)
        else:
            build(args.out, name, args.seed, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
