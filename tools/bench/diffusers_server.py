#!/usr/bin/env python3
"""The diffusers side of `worker/benches/engine_vs_diffusers.rs`.

Loads a StableDiffusionPipeline once, warms it up, prints `ready <info>`, then
answers each stdin line `gen <seed> <onednn 0|1> [PNG path]` with the
seconds one generation took (and saves the image when a path is given) (measured here, around the pipeline call only, so neither
process start-up nor the pipe counts). The Rust bench drives it between its
own generations, so both sides see the same machine load.

Arguments: model device threads steps guidance size prompt
"""
import sys
import time
import warnings

import diffusers
import torch
import transformers
from diffusers import DDIMScheduler, StableDiffusionPipeline

# Only the timings go to stdout; keep stderr to real errors.
warnings.filterwarnings("ignore", category=FutureWarning)
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()


def main() -> None:
    model, device, threads, steps, guidance, size, prompt = sys.argv[1:8]
    threads, steps, size, guidance = int(threads), int(steps), int(size), float(guidance)
    torch.set_num_threads(threads)
    # The worker runs libtorch with one inter-op thread too.
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    # Precision as the engine's `Precision::Auto`: fp32 on CPU, fp16 on CUDA.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        model, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)

    def generate(seed: int, save: str = "") -> float:
        # Initial noise from a CPU generator, as diffusers' default and the
        # engine (same seed → same latents on both sides).
        generator = torch.Generator("cpu").manual_seed(seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                prompt,
                height=size,
                width=size,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                output_type="pil",
            ).images[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        assert image.size == (size, size)
        if save:
            image.save(save)
        return elapsed

    for onednn in (True, False):
        torch.backends.mkldnn.enabled = onednn
        generate(0)
    info = f"torch {torch.__version__}, threads {torch.get_num_threads()}, {dtype}, device {device}"
    print(f"ready {info}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] != "gen" or len(words) not in (3, 4):
            print(f"error unknown command {line.strip()!r}", flush=True)
            continue
        torch.backends.mkldnn.enabled = words[2] == "1"
        save = words[3] if len(words) == 4 else ""
        print(f"{generate(int(words[1]), save):.6f}", flush=True)


if __name__ == "__main__":
    main()
