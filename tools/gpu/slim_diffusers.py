#!/usr/bin/env python3
"""Unpacks the diffusers wheel and keeps only what StableDiffusionPipeline,
its models and the DDIM/PNDM schedulers import, packed as .tar.xz: the whole
wheel (6 MB zipped, 30 MB unpacked) does not fit beside the working tree in
the 64 MiB that travel to the GPU machine. Every subpackage diffusers
imports lazily and this pipeline never touches is dropped; tools/gpu/check.sh
--rehearse-cpu runs the slimmed copy end to end here, so a missing piece
fails before the GPU run.

    slim_diffusers.py WHEEL OUT.tar.xz
"""
import io
import os
import shutil
import sys
import tarfile
import tempfile
import zipfile

# Folders whose children are dropped except for the names listed.
KEEP = {
    "diffusers/pipelines": {
        "__init__.py", "pipeline_utils.py", "pipeline_loading_utils.py", "auto_pipeline.py",
        "free_init_utils.py", "free_noise_utils.py", "onnx_utils.py", "stable_diffusion",
    },
}
DROP = {"diffusers/commands", "diffusers/modular_pipelines", "diffusers/models/controlnets"}


def main() -> None:
    wheel, out = sys.argv[1:3]
    with tempfile.TemporaryDirectory() as tmp:
        zipfile.ZipFile(wheel).extractall(tmp)
        for folder, keep in KEEP.items():
            path = os.path.join(tmp, folder)
            for name in os.listdir(path):
                if name not in keep and name != "__pycache__":
                    target = os.path.join(path, name)
                    shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        for folder in DROP:
            shutil.rmtree(os.path.join(tmp, folder), ignore_errors=True)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:xz", preset=9) as tar:
            for name in sorted(os.listdir(tmp)):
                tar.add(os.path.join(tmp, name), arcname=name)
        with open(out, "wb") as f:
            f.write(buf.getvalue())
    print(f"slim diffusers: {out}, {os.path.getsize(out) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
