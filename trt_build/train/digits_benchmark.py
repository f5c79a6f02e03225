"""Measure ``imgserve train`` on a real data set: scikit-learn's handwritten digits.

``python -m trt_build.train.digits_benchmark --work DIR`` (needs scikit-learn, whose wheel ships
the 1,797 digits; nothing is downloaded):

1. writes the first ``--train-per-class`` digits of each class as 8x8 PNGs into class folders,
   and the rest of each class into a held-out folder that training never sees;
2. runs ``imgserve train`` on the folder (a cold feature cache), then again (a warm one), timed;
3. classifies the held-out digits with the published version, through the server's own decode
   and runtime;
4. compares with the majority-class baseline and with a linear probe (scikit-learn's
   ``LogisticRegression``) fitted on the same cached features the head was trained on.

Prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from trt_build.eval_images import EVAL_LIMITS
from trt_build.train.augment import Augmentation
from trt_build.train.backbone import backbone
from trt_build.train.data import scan, split
from trt_build.train.digits import DigitsUnavailable, digit_images, write_class_folders
from trt_build.train.features import FeatureCache, items_of
from trt_build.verify import predict_all, served_model


def write_digits(work: Path, train_per_class: int) -> tuple[Path, list[tuple[int, bytes]]]:
    """The training folder, and the held-out (digit, PNG) pairs."""
    try:
        train = digit_images(range(10), 0, train_per_class)
        held_out = digit_images(range(10), train_per_class)
    except DigitsUnavailable as exc:
        raise SystemExit(str(exc)) from exc
    data = write_class_folders(work / "digits", train)
    return data, [(digit, png) for _, digit, png in held_out]


def run_train(data: Path, output: Path, cache: Path, extra: list[str]) -> tuple[float, dict[str, Any]]:
    command = [sys.executable, "-m", "imgserve", "train", str(data), "--output", str(output), "--no-flip"]
    started = time.monotonic()
    subprocess.run([*command, "--cache-dir", str(cache), *extra], check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    report: dict[str, Any] = ModelManifest.read(output).build or {}
    return round(seconds, 1), report


def linear_probe(data: Path, cache: Path, report: dict[str, Any], held_out: np.ndarray, y: np.ndarray) -> float:
    """LogisticRegression on the cached features of the head's own training examples (the same
    split and copies), scored on the held-out digits' features."""
    from sklearn.linear_model import LogisticRegression

    settings = report["settings"]
    base = backbone(settings["base"])
    assert report["data"]["skipped_files"] == 0, "the split below is the run's only when nothing was skipped"
    train, _ = split(scan(data), settings["validation_fraction"], settings["seed"])
    augmentation = Augmentation(settings["augment_copies"], settings["flip"], settings["seed"])
    stored = FeatureCache(cache, base).load()
    items = [i for i in items_of(train, augmentation) if i.key in stored]
    x = np.stack([stored[i.key] for i in items])
    labels = np.array([i.image.label for i in items])
    probe = LogisticRegression(max_iter=5000).fit(x, labels)
    return round(float(probe.score(held_out, y)), 4)


def held_out_features(tensors: np.ndarray) -> np.ndarray:
    import keras

    from trt_build.train.features import normalized

    base = backbone("efficientnet_lite0")
    network = base.build()
    pooled = keras.Model(network.input, network.get_layer(base.pooled_layer).output)
    batches = [tensors[i : i + 32] for i in range(0, len(tensors), 32)]
    return np.concatenate([pooled.predict_on_batch(normalized(b, base.preprocessing)) for b in batches])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="an empty folder for the data, cache and models")
    parser.add_argument("--train-per-class", type=int, default=125, help="digits of each class to train on")
    parser.add_argument("--extra", default="", help="more imgserve train arguments, e.g. '--fine-tune-blocks 2'")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    data, held_out = write_digits(args.work, args.train_per_class)
    cache, repository = args.work / "cache", args.work / "repo"
    extra = args.extra.split()
    cold_s, report = run_train(data, repository / "digits" / "1", cache, extra)
    warm_s, _ = run_train(data, repository / "digits" / "2", cache, extra)

    version = repository / "digits" / "1"
    manifest = ModelManifest.read(version)
    tensors = np.stack([image_to_tensor(png, manifest.preprocessing, EVAL_LIMITS) for _, png in held_out])
    y = np.array([manifest.labels.index(str(digit)) for digit, _ in held_out])
    with served_model(manifest, version) as predict:
        served = predict_all(predict, tensors, 32, "held-out digits")
    train_counts = [c["train"] for c in report["data"]["classes"].values()]
    majority = int(np.argmax(train_counts))
    figures = {
        "training_images": sum(sum(c.values()) for c in report["data"]["classes"].values()),
        "held_out_images": len(held_out),
        "train_seconds_cold_cache": cold_s,
        "train_seconds_warm_cache": warm_s,
        "phases_cold": report["seconds"],
        "validation_accuracy": report["validation"]["validation_accuracy"],
        "held_out_accuracy": round(float(np.mean(served.argmax(1) == y)), 4),
        "held_out_majority_baseline": round(float(np.mean(y == majority)), 4),
        "held_out_linear_probe": linear_probe(data, cache, report, held_out_features(tensors), y),
        "head": report["training"]["head"],
        "fine_tuning": report["training"]["fine_tuning"],
    }
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
