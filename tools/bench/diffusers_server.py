#!/usr/bin/env python3
"""The diffusers side of `worker/benches/engine_vs_diffusers.rs` and
`worker/benches/big_vs_diffusers.rs` (and of tools/gpu/check.sh).

Loads a pipeline once (timed: `from_pretrained` and the move to the
device, not the imports), warms it up, prints `ready <info>`, then answers
each stdin line:

- `gen <seed> <onednn 0|1> [PNG path]`: the seconds one generation took
  (and saves the image when a path is given), measured here around the
  pipeline call only, so neither process start-up nor the pipe counts;
- `stats`: `load_s <seconds of the first load> vmhwm_kb <VmHWM of this
  process> vmrss_kb <VmRSS>`;
- `reload`: drops the pipeline, loads it again, answers the seconds;
- `unload`: drops the pipeline and hands the freed heap back to the
  system (`malloc_trim`), answers `ok <VmRSS kB>`; `load`: loads it again,
  answers the seconds (what the benches' one-side-at-a-time mode uses, when
  both sides do not fit in memory at once);
- `warmup <steps>`: one generation of that many steps, seed 0, answers the
  seconds.

The Rust benches drive it between their own generations, so both sides see
the same machine load.

Arguments: model device threads steps guidance size prompt [options]
  --pipeline sd|sdxl      StableDiffusionPipeline (default) or StableDiffusionXLPipeline
  --scheduler ddim|euler  DDIMScheduler (default) or EulerDiscreteScheduler, from the folder's config
  --warmup onednn|once|none  one generation with oneDNN on and one off (default), one, or none
  --lazy                  no load at start (nor warm-up): the first `load` loads, and is
                          the `load_s` that `stats` reports
"""
import argparse
import ctypes
import gc
import sys
import time
import warnings

import diffusers
import torch
import transformers
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

# Only the timings go to stdout; keep stderr to real errors.
warnings.filterwarnings("ignore", category=FutureWarning)
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()

PIPELINES = {"sd": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler}


def proc_status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("model", "device", "threads", "steps", "guidance", "size", "prompt"):
        ap.add_argument(name)
    ap.add_argument("--pipeline", choices=sorted(PIPELINES), default="sd")
    ap.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    ap.add_argument("--warmup", choices=["onednn", "once", "none"], default="onednn")
    ap.add_argument("--lazy", action="store_true")
    args = ap.parse_args()
    model, device = args.model, args.device
    threads, steps, size, guidance = int(args.threads), int(args.steps), int(args.size), float(args.guidance)
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"diffusers side: device {device} asked for, but this torch ({torch.__version__}) sees no CUDA device")
    torch.set_num_threads(threads)
    # The worker runs libtorch with one inter-op thread too.
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    # Precision as the engine's `Precision::Auto`: fp32 on CPU, fp16 on CUDA.
    dtype = torch.float16 if device.startswith("cuda") else torch.float32

    def load():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        extra = {} if args.pipeline == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
        pipe = PIPELINES[args.pipeline].from_pretrained(model, torch_dtype=dtype, **extra)
        pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipe = pipe.to(device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return pipe, time.perf_counter() - start

    pipe, load_s = (None, None) if args.lazy else load()

    def generate(seed: int, save: str = "", steps: int = steps) -> float:
        # Initial noise from a CPU generator, as diffusers' default and the
        # engine (same seed → same latents on both sides).
        generator = torch.Generator("cpu").manual_seed(seed)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            image = pipe(
                prompt=args.prompt,
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

    warmups = {"onednn": (True, False), "once": (True,), "none": ()}[args.warmup]
    for onednn in () if args.lazy else warmups:
        torch.backends.mkldnn.enabled = onednn
        generate(0)
    torch.backends.mkldnn.enabled = True
    info = (
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, {PIPELINES[args.pipeline].__name__}, "
        f"{SCHEDULERS[args.scheduler].__name__}, threads {torch.get_num_threads()}, {dtype}, device {device}"
    )
    print(f"ready {info}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] in ("gen", "warmup") and pipe is None:
            print(f"error no pipeline loaded: send load before {words[0]}", flush=True)
        elif words[0] == "gen" and len(words) in (3, 4):
            torch.backends.mkldnn.enabled = words[2] == "1"
            save = words[3] if len(words) == 4 else ""
            print(f"{generate(int(words[1]), save):.6f}", flush=True)
        elif words == ["stats"]:
            print(
                f"load_s {-1.0 if load_s is None else load_s:.6f} vmhwm_kb {proc_status('VmHWM')} vmrss_kb {proc_status('VmRSS')}",
                flush=True,
            )
        elif words == ["reload"] or words == ["load"]:
            pipe = None
            gc.collect()
            pipe, seconds = load()
            if load_s is None:
                load_s = seconds
            print(f"{seconds:.6f}", flush=True)
        elif words == ["unload"]:
            pipe = None
            gc.collect()
            # glibc keeps freed heap pages resident; the worker trims its
            # heap after an Unload the same way (serve/syscalls.rs).
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            print(f"ok {proc_status('VmRSS')}", flush=True)
        elif words[0] == "warmup" and len(words) == 2:
            print(f"{generate(0, steps=int(words[1])):.6f}", flush=True)
        else:
            print(f"error unknown command {line.strip()!r}", flush=True)


if __name__ == "__main__":
    main()
