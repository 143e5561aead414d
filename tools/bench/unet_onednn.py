#!/usr/bin/env python3
"""How much oneDNN is worth to diffusers' SDXL UNet on this CPU: one UNet
call on the classifier-free-guidance batch (2 latents) with oneDNN on and
off, alternating, as docs/PERFORMANCE.md ("SDXL-size, the sides taking
turns") reports it. The worker runs without oneDNN (its JIT needs memory
that is written, then executed, which the sandbox refuses).

Usage: unet_onednn.py MODEL_DIR [--size 512] [--threads 2] [--rounds 4]
(MODEL_DIR: an SDXL diffusers folder, e.g. .cache/bench-models/sdxl; run
with .cache/venv-bench/bin/python).
"""
import argparse
import statistics
import time

import torch
from diffusers import UNet2DConditionModel


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    unet = UNet2DConditionModel.from_pretrained(args.model + "/unet", torch_dtype=torch.float32).eval()
    side = args.size // 8
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, side, side, generator=g)
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    text_embeds = torch.randn(2, unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim, generator=g)
    size = float(args.size)
    added = {"text_embeds": text_embeds, "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]] * 2)}
    timestep = torch.tensor(500.0)
    seconds = {True: [], False: []}
    with torch.inference_mode():
        for onednn in (True, False):  # warm-up, each way once
            torch.backends.mkldnn.enabled = onednn
            unet(latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added)
        for r in range(args.rounds):
            for onednn in (True, False) if r % 2 == 0 else (False, True):
                torch.backends.mkldnn.enabled = onednn
                start = time.perf_counter()
                unet(latents, timestep, encoder_hidden_states=context, added_cond_kwargs=added)
                seconds[onednn].append(time.perf_counter() - start)
    on, off = statistics.median(seconds[True]), statistics.median(seconds[False])
    print(f"oneDNN on: {sorted(round(s, 2) for s in seconds[True])} s, median {on:.2f} s")
    print(f"oneDNN off: {sorted(round(s, 2) for s in seconds[False])} s, median {off:.2f} s")
    print(f"off / on: {off / on:.3f}x")


if __name__ == "__main__":
    main()
