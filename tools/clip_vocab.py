#!/usr/bin/env python3
"""Build the OpenAI CLIP BPE tokenizer files (vocab.json + merges.txt).

Source: `open_clip/bpe_simple_vocab_16e6.txt.gz` from the PyPI package
`open-clip-torch` (MIT license). The construction mirrors OpenAI CLIP's
`SimpleTokenizer` and gives the 49,408-entry vocabulary used by Stable
Diffusion 1.x/2.x text encoders:

  ids 0..255       the 256 byte-level characters (GPT-2 byte-to-unicode map)
  ids 256..511     the same characters with the end-of-word marker `</w>`
  ids 512..49405   one entry per merge, in merge-file order (48,894 merges)
  id  49406        <|startoftext|>
  id  49407        <|endoftext|>

`merges.txt` is written in the Hugging Face format: a `#version: 0.2` header
line followed by the 48,894 merges (transformers' CLIPTokenizer skips line 0).

transformers 5.x `save_pretrained` only writes tokenizer.json, which is why
the files are built here directly.
"""
import argparse
import gzip
import json
import os
import sys


def bytes_to_unicode():
    """GPT-2/CLIP reversible byte -> printable unicode character map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def default_bpe_path():
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open-clip-torch is not installed: pip install --no-deps open-clip-torch")
    return os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")


def build(bpe_path):
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    for m in merges:
        vocab.append("".join(m))
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    assert len(vocab) == 49408, len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}, merges


def write(out_dir, bpe_path=None):
    os.makedirs(out_dir, exist_ok=True)
    encoder, merges = build(bpe_path or default_bpe_path())
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(encoder, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
        "add_prefix_space": False,
        "errors": "replace",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(
            {
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            },
            f,
            indent=2,
        )


def check(out_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"))
    ids = tok("a photo of a cat").input_ids
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids == expected, ids
    return tok


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--bpe", default=None, help="path to bpe_simple_vocab_16e6.txt.gz")
    args = ap.parse_args()
    write(args.out_dir, args.bpe)
    check(args.out_dir)
    print("ok:", args.out_dir)
