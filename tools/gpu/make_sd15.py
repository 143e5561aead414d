#!/usr/bin/env python3
"""A random-weight Stable Diffusion 1.5-size pipeline in the diffusers folder
layout, for tools/gpu/check.sh: the real SD 1.5 architecture (CLIP ViT-L/14
text encoder, 860M-parameter UNet, the SD VAE) with seeded random weights,
so the timing is that of SD 1.5 without downloading a checkpoint (the GPU
machine has no network).

    make_sd15.py OUT_DIR TOKENIZER_DIR [--tiny] [--device cuda] [--dtype fp16]

--tiny builds the same layout with 32-channel blocks, for rehearsing the
check on a CPU. The tokenizer files (vocab.json, merges.txt, ...) are copied
from TOKENIZER_DIR (the repository's models/digits/tokenizer is CLIP's BPE).
"""
import argparse
import json
import os
import shutil
import time

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


def components(tiny: bool):
    width = 32 if tiny else 768
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=64 if tiny else 3072,
            num_hidden_layers=2 if tiny else 12,
            num_attention_heads=4 if tiny else 12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=width,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 32, 32) if tiny else (320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=width,
        attention_head_dim=8,
        norm_num_groups=32,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32) if tiny else (128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    )
    # Random weights predict noise of roughly unit size at every step; a
    # smaller output layer keeps 20 DDIM steps in fp16 range, so the images
    # of both pipelines can be compared (they are noise either way).
    with torch.no_grad():
        unet.conv_out.weight.mul_(0.1)
    # SD 1.5's own scheduler config (PNDM, scaled_linear betas).
    scheduler = PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return text_encoder, unet, vae, scheduler


def copy_tokenizer(src: str, dst: str) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("tokenizer")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    args = ap.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    # Initialising on the GPU is seconds instead of a minute for 1B weights.
    with torch.device(args.device):
        text_encoder, unet, vae, scheduler = components(args.tiny)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    shutil.rmtree(args.out, ignore_errors=True)
    copy_tokenizer(args.tokenizer, os.path.join(args.out, "tokenizer"))
    tokenizer = CLIPTokenizer(
        os.path.join(args.out, "tokenizer", "vocab.json"), os.path.join(args.out, "tokenizer", "merges.txt")
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(dtype=dtype)
    pipe.save_pretrained(args.out, safe_serialization=True)
    # transformers 5 writes tokenizer.json only; the engine reads the classic
    # vocab.json + merges.txt.
    copy_tokenizer(args.tokenizer, os.path.join(args.out, "tokenizer"))
    # Like SD 1.5's config: DDIMScheduler.from_config would otherwise default
    # clip_sample to true.
    sc_path = os.path.join(args.out, "scheduler", "scheduler_config.json")
    with open(sc_path) as f:
        sc = json.load(f)
    sc.setdefault("clip_sample", False)
    with open(sc_path, "w") as f:
        json.dump(sc, f, indent=2, sort_keys=True)
    params = sum(p.numel() for m in (text_encoder, unet, vae) for p in m.parameters())
    print(
        f"built {'tiny' if args.tiny else 'SD 1.5-size'} pipeline: {params / 1e6:.0f}M parameters, "
        f"{args.dtype}, in {time.perf_counter() - started:.1f} s -> {args.out}"
    )


if __name__ == "__main__":
    main()
