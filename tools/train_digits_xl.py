#!/usr/bin/env python3
"""Train the `models/digits-xl` demo model: a tiny Stable-Diffusion-XL pipeline
that draws handwritten digits (32x32 RGB) from prompts in words.

Everything is a stock diffusers/transformers class in the SDXL layout, so
`diffusers.StableDiffusionXLPipeline.from_pretrained(dir)` runs it unchanged:

  * text_encoder: CLIPTextModel (real CLIP BPE vocabulary of 49,408 ids,
    hidden 64, 3 layers, 4 heads, quick_gelu, like SDXL's CLIP ViT-L).
  * text_encoder_2: CLIPTextModelWithProjection (same vocabulary, hidden 64,
    4 layers, 2 heads, gelu like SDXL's OpenCLIP bigG, projection_dim 96).
  * tokenizer / tokenizer_2: the CLIP BPE files of models/digits; tokenizer_2
    pads with "!" (id 0) as SDXL's second tokenizer does.
  * unet: UNet2DConditionModel, SDXL structure: DownBlock2D then two
    CrossAttnDownBlock2D (mirrored up), addition_embed_type "text_time",
    use_linear_projection, transformer_layers_per_block (1, 1, 2),
    attention_head_dim (2, 4, 6) heads per block, cross_attention_dim 128 =
    64 + 64 (both encoders' penultimate hidden states, concatenated).
  * vae: models/digits/vae unchanged (AutoencoderKL, 32x32 <-> 4x8x8).
  * scheduler: EulerDiscreteScheduler with SDXL's configuration.

Conditioning exactly as StableDiffusionXLPipeline computes it at 32x32:
prompt_embeds = cat(te1.hidden_states[-2], te2.hidden_states[-2]),
pooled = te2.text_embeds, time_ids = (32, 32, 0, 0, 32, 32).

Unconditional examples (10 %): half get all-zero prompt and pooled
embeddings (what the pipeline feeds as the negative when
force_zeros_for_empty_prompt is true and no negative prompt is given, as
SDXL base is configured), half get the encoded empty prompt (what it feeds
for an explicit negative_prompt=""), so classifier-free guidance works with
either.

Data, prompt templates, EMA and learning-rate schedule as tools/train_digits.py
(whose helpers this script imports). Weights are stored in fp16 safetensors.

Usage (one thread is fastest on a shared machine):
  OMP_NUM_THREADS=1 python tools/train_digits_xl.py --out models/digits-xl
  OMP_NUM_THREADS=1 python tools/train_digits_xl.py --out models/digits-xl --eval-only
  OMP_NUM_THREADS=1 python tools/train_digits_xl.py --out /tmp/smoke --unet-steps 3 --eval-per-digit 1
"""
import argparse
import json
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import (  # noqa: E402
    TEMPLATES,
    from_model_images,
    load_mnist,
    log,
    lr_at,
    make_scheduler,
    nearest_distance,
    nparams,
    prompt_for,
    to_model_images,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(ROOT, "models", "digits")
SIZE = 32
# StableDiffusionXLPipeline._get_add_time_ids at the default size:
# original_size + crops_coords_top_left + target_size.
TIME_IDS = (SIZE, SIZE, 0, 0, SIZE, SIZE)
ADDITION_TIME_EMBED_DIM = 32
TE1_HIDDEN = 64
TE2_HIDDEN = 64
TE2_PROJECTION = 96
EVAL_TEMPLATES = ["a handwritten digit {w}", "the number {n}", "digit {n}", "a {w}"]
# Phrasings that are in no training template: how far the text encoders
# generalize (reported, not part of the 90 % target).
UNSEEN_TEMPLATES = ["a picture of the number {w}", "handwritten digit {n}", "the numeral {n}", "write a {w}"]


def build_text_encoders():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    common = dict(
        vocab_size=49408,
        max_position_embeddings=77,
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    te1 = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=TE1_HIDDEN,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            hidden_act="quick_gelu",
            projection_dim=TE1_HIDDEN,
            **common,
        )
    )
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=TE2_HIDDEN,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=2,
            hidden_act="gelu",
            projection_dim=TE2_PROJECTION,
            **common,
        )
    )
    return te1, te2


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        transformer_layers_per_block=(1, 1, 2),
        # diffusers' historical name: the number of heads per block (SDXL: 5, 10, 20).
        attention_head_dim=(2, 4, 6),
        cross_attention_dim=TE1_HIDDEN + TE2_HIDDEN,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADDITION_TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=TE2_PROJECTION + len(TIME_IDS) * ADDITION_TIME_EMBED_DIM,
        norm_num_groups=16,
        flip_sin_to_cos=True,
        freq_shift=0,
        act_fn="silu",
    )


def euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    # SDXL base's scheduler_config.json, key for key.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )


def write_scheduler_compat_keys(out):
    """SDXL's scheduler_config.json also carries keys that EulerDiscreteScheduler
    ignores but DDIM/PNDM read when a caller swaps schedulers with
    `from_config` (DDIMScheduler's own defaults clip_sample=True and
    set_alpha_to_one=True would clip the latents to [-1, 1]). Written as
    SDXL base has them."""
    path = os.path.join(out, "scheduler", "scheduler_config.json")
    with open(path) as f:
        config = json.load(f)
    config.update({"clip_sample": False, "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True})
    with open(path, "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
        f.write("\n")


def write_tokenizers(out):
    """tokenizer/: the CLIP BPE files of models/digits (pad <|endoftext|>);
    tokenizer_2/: the same vocabulary with pad "!" as in SDXL."""
    src = os.path.join(DIGITS, "tokenizer")
    for sub, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")):
        dst = os.path.join(out, sub)
        os.makedirs(dst, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        if os.path.exists(os.path.join(dst, "tokenizer.json")):
            os.remove(os.path.join(dst, "tokenizer.json"))
        with open(os.path.join(src, "tokenizer_config.json")) as f:
            config = json.load(f)
        config["pad_token"] = pad
        with open(os.path.join(dst, "tokenizer_config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(src, "special_tokens_map.json")) as f:
            special = json.load(f)
        special["pad_token"] = pad
        with open(os.path.join(dst, "special_tokens_map.json"), "w") as f:
            json.dump(special, f, indent=2)


def load_tokenizers(out):
    from transformers import CLIPTokenizer

    tok1 = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer")
    tok2 = CLIPTokenizer.from_pretrained(out, subfolder="tokenizer_2")
    ids1 = tok1("a photo of a cat", padding="max_length", max_length=77).input_ids
    ids2 = tok2("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert ids1[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 49407], ids1[:8]
    assert ids2[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0], ids2[:8]
    return tok1, tok2


def encode(te1, te2, ids1, ids2):
    """(prompt_embeds [B,77,128], pooled [B,96]) as StableDiffusionXLPipeline.encode_prompt."""
    h1 = te1(ids1, output_hidden_states=True).hidden_states[-2]
    out2 = te2(ids2, output_hidden_states=True)
    return torch.cat([h1, out2.hidden_states[-2]], dim=-1), out2.text_embeds


def train_unet(unet, te1, te2, tok1, tok2, latents, labels, steps, batch, seed, max_minutes, base_lr):
    sched = make_scheduler()
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)

    def tokens(p):
        a = tok1(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
        b = tok2(p, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
        return a, b

    prompt_ids = {prompt_for(d, t): tokens(prompt_for(d, t)) for d in range(10) for t in TEMPLATES}
    empty_ids = tokens("")
    time_ids = torch.tensor([TIME_IDS], dtype=torch.float32).repeat(batch, 1)

    params = list(unet.parameters()) + list(te1.parameters()) + list(te2.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=base_lr, weight_decay=1e-4)
    alphas_cumprod = sched.alphas_cumprod
    for m in (unet, te1, te2):
        m.train()
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
        ids1, ids2, keep = [], [], []
        for i in idx.tolist():
            r = rng.random()
            if r < 0.05:  # zeroed conditioning (force_zeros_for_empty_prompt)
                a, b = empty_ids
                keep.append(0.0)
            elif r < 0.10:  # the encoded empty prompt (negative_prompt="")
                a, b = empty_ids
                keep.append(1.0)
            else:
                a, b = prompt_ids[prompt_for(int(labels[i]), rng.choice(TEMPLATES))]
                keep.append(1.0)
            ids1.append(a)
            ids2.append(b)
        keep = torch.tensor(keep)
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (batch,), generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond, pooled = encode(te1, te2, torch.stack(ids1), torch.stack(ids2))
        cond = cond * keep.view(-1, 1, 1)
        pooled = pooled * keep.view(-1, 1)
        pred = unet(zt, t, encoder_hidden_states=cond, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
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
    for m in (unet, te1, te2):
        m.eval()
    return step, time.time() - t0


def vae_fp16_check(vae, x):
    """Decides `force_upcast`: SDXL's own VAE overflows in fp16 (hence
    force_upcast true there); this one is kept in fp16 when decoding the
    latents of real digits in fp16 stays finite and within one 8-bit level
    (2/255 of the [-1, 1] output range) of fp32."""
    import copy

    peak = [0.0]

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            peak[0] = max(peak[0], output.abs().max().item())

    hooks = [m.register_forward_hook(hook) for m in vae.modules()]
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        ref = vae.decode(z).sample
    for h in hooks:
        h.remove()
    half = copy.deepcopy(vae).to(torch.float16)
    with torch.no_grad():
        got = half.decode(z.half()).sample.float()
    finite = bool(torch.isfinite(got).all())
    diff = float((got - ref).abs().max()) if finite else float("inf")
    force_upcast = not (finite and diff <= 2.0 / 255.0)
    return {"peak_activation_fp32": peak[0], "fp16_decode_finite": finite, "fp16_max_abs_diff": diff, "force_upcast": force_upcast}


def save_pipeline(out, vae, te1, te2, tok1, tok2, unet, fp16):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        unet=unet,
        scheduler=euler_scheduler(),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    if fp16:
        pipe.to(torch.float16)
    pipe.save_pretrained(out, safe_serialization=True)
    write_scheduler_compat_keys(out)
    # save_pretrained (transformers 5.x) writes tokenizer.json only; the
    # engine reads the classic vocab.json/merges.txt: rewrite them.
    write_tokenizers(out)
    load_tokenizers(out)
    return pipe


def check_conditioning(out, te1, te2, tok1, tok2):
    """The training-time conditioning must be what the pipeline feeds."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32, add_watermarker=False)
    p = "a handwritten digit seven"
    pe, npe, pooled, npooled = pipe.encode_prompt(p, device="cpu", do_classifier_free_guidance=True)
    ids1 = tok1(p, padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids2 = tok2(p, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ours, ours_pooled = encode(pipe.text_encoder, pipe.text_encoder_2, ids1, ids2)
    assert torch.equal(ours, pe) and torch.equal(ours_pooled, pooled), "conditioning differs from encode_prompt"
    assert not npe.any() and not npooled.any(), "force_zeros_for_empty_prompt did not zero the negative"
    ids = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), dtype=torch.float32, text_encoder_projection_dim=TE2_PROJECTION)
    assert ids.tolist() == [list(map(float, TIME_IDS))], ids
    log("conditioning matches StableDiffusionXLPipeline.encode_prompt and _get_add_time_ids")


def evaluate(out, n_per_digit, steps, guidance, seed, threads):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from sklearn.svm import SVC

    torch.set_num_threads(threads)
    images, labels = load_mnist()
    feats = images.reshape(len(images), -1).astype(np.float32) / 255.0
    clf = SVC(C=10.0, gamma="scale").fit(feats, labels)

    pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    base = dict(pipe.scheduler.config)
    results = {}
    # (name, scheduler, negative prompt): None takes the zeroed negative
    # (force_zeros_for_empty_prompt), "" the encoded empty prompt.
    runs = [
        ("euler", EulerDiscreteScheduler, None, EVAL_TEMPLATES),
        ("ddim", DDIMScheduler, None, EVAL_TEMPLATES),
        ("euler_negative_empty", EulerDiscreteScheduler, "", EVAL_TEMPLATES),
        ("euler_unseen_phrasings", EulerDiscreteScheduler, None, UNSEEN_TEMPLATES),
    ]
    for name, cls, negative, templates in runs:
        pipe.scheduler = cls.from_config(base)
        correct = 0
        total = 0
        nn_dist = []
        per_digit = {}
        t0 = time.time()
        for d in range(10):
            prompts = [prompt_for(d, templates[i % len(templates)]) for i in range(n_per_digit)]
            gen = torch.Generator("cpu").manual_seed(seed + d)
            neg = None if negative is None else [negative] * len(prompts)
            img = pipe(prompts, negative_prompt=neg, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="pt", height=SIZE, width=SIZE).images
            grey = from_model_images(img) / 255.0
            pred = clf.predict(grey.reshape(len(grey), -1))
            per_digit[str(d)] = float((pred == d).mean())
            correct += int((pred == d).sum())
            total += len(pred)
            nn_dist.extend(nearest_distance(grey.reshape(len(grey), -1), feats).tolist())
        el = time.time() - t0
        results[name] = {
            "accuracy": correct / total,
            "images": total,
            "per_digit_accuracy": per_digit,
            "seconds_per_image": el / total,
            "mean_nn_distance": float(np.mean(nn_dist)),
            "copy_fraction": float(np.mean(np.array(nn_dist) < 1.0)),
        }
        log(f"eval {name}: {results[name]}")
    results["real_mean_nn_distance"] = float(nearest_distance(feats, feats, exclude_self=True).mean())
    results["params"] = {
        "pipeline": "diffusers StableDiffusionXLPipeline, fp32, CPU",
        "steps": steps,
        "guidance": guidance,
        "seed": seed,
        "per_digit": n_per_digit,
        "size": SIZE,
        "templates": EVAL_TEMPLATES,
        "unseen_templates": UNSEEN_TEMPLATES,
    }
    return results


def write_samples(out, png, steps, threads):
    """A grid: columns are the digits 0..9, rows 4 seeds at each of guidance
    3.0, 5.0, 7.5 (top to bottom), "a handwritten digit {w}", Euler."""
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

    torch.set_num_threads(threads)
    pipe = StableDiffusionXLPipeline.from_pretrained(out, torch_dtype=torch.float32, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for guidance in (3.0, 5.0, 7.5):
        for seed in range(4):
            prompts = [prompt_for(d, "a handwritten digit {w}") for d in range(10)]
            gen = [torch.Generator("cpu").manual_seed(100 * seed + d) for d in range(10)]
            img = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=gen, output_type="np", height=SIZE, width=SIZE).images
            rows.append(np.concatenate(list(img), axis=1))
    grid = (np.clip(np.concatenate(rows, axis=0), 0, 1) * 255).round().astype(np.uint8)
    Image.fromarray(grid).save(png)
    log(f"samples: {png}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=4321)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    ap.add_argument("--unet-steps", type=int, default=5000)
    ap.add_argument("--unet-batch", type=int, default=32)
    ap.add_argument("--unet-lr", type=float, default=8e-4)
    ap.add_argument("--max-unet-minutes", type=float, default=40.0)
    ap.add_argument("--resume", default=None, help="continue training from this saved digits-xl pipeline")
    ap.add_argument("--fp32", action="store_true", help="store weights in fp32 (default fp16)")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--samples", default=None, help="only write a PNG grid of samples from --out to this path")
    ap.add_argument("--eval-per-digit", type=int, default=20)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--eval-guidance", type=float, default=5.0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    if args.samples:
        write_samples(args.out, args.samples, args.eval_steps, args.threads)
        return
    if not args.eval_only:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.makedirs(args.out, exist_ok=True)
        write_tokenizers(args.out)
        tok1, tok2 = load_tokenizers(args.out)

        vae_dir = os.path.join(args.resume, "vae") if args.resume else os.path.join(DIGITS, "vae")
        vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
        if args.resume:
            te1 = CLIPTextModel.from_pretrained(args.resume, subfolder="text_encoder", torch_dtype=torch.float32)
            te2 = CLIPTextModelWithProjection.from_pretrained(args.resume, subfolder="text_encoder_2", torch_dtype=torch.float32)
            unet = UNet2DConditionModel.from_pretrained(args.resume, subfolder="unet", torch_dtype=torch.float32)
            log(f"resumed from {args.resume}")
        else:
            te1, te2 = build_text_encoders()
            unet = build_unet()
        counts = {"vae": nparams(vae), "text_encoder": nparams(te1), "text_encoder_2": nparams(te2), "unet": nparams(unet)}
        log(f"params: {counts}")
        scaling = float(vae.config.scaling_factor)
        images, labels = load_mnist()
        x = to_model_images(images)
        with torch.no_grad():
            lat = torch.cat([vae.encode(x[i : i + 250]).latent_dist.mean for i in range(0, len(x), 250)])
        fp16_vae = vae_fp16_check(vae, x[:500])
        vae.register_to_config(force_upcast=fp16_vae["force_upcast"])
        log(f"vae in fp16: {fp16_vae}")
        log(f"latents {tuple(lat.shape)}, scaling_factor {scaling:.5f}, scaled std {(lat * scaling).std().item():.3f}")
        seed = args.seed + 1 + (1000 if args.resume else 0)
        steps_done, seconds = train_unet(unet, te1, te2, tok1, tok2, lat * scaling, torch.from_numpy(labels), args.unet_steps, args.unet_batch, seed, args.max_unet_minutes, args.unet_lr)
        save_pipeline(args.out, vae, te1, te2, tok1, tok2, unet, fp16=not args.fp32)
        check_conditioning(args.out, te1, te2, tok1, tok2)
        info = {
            "seed": args.seed,
            "resumed_from": args.resume,
            "threads": args.threads,
            "vae": "models/digits/vae, unchanged" if not args.resume else f"{args.resume}/vae, unchanged",
            "unet_steps_done": steps_done,
            "unet_steps_planned": args.unet_steps,
            "unet_batch": args.unet_batch,
            "unet_lr": args.unet_lr,
            "max_unet_minutes": args.max_unet_minutes,
            "unet_train_seconds": round(seconds, 1),
            "scaling_factor": scaling,
            "vae_fp16": fp16_vae,
            "params": counts,
            "torch": torch.__version__,
        }
        with open(os.path.join(args.out, "training_info.json"), "w") as f:
            json.dump(info, f, indent=2)
        log(f"saved to {args.out}: {info}")
    if args.no_eval:
        return
    res = evaluate(args.out, args.eval_per_digit, args.eval_steps, args.eval_guidance, args.seed + 7, args.threads)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(res, f, indent=2)
    log(f"eval: {json.dumps(res)}")


if __name__ == "__main__":
    main()
