"""``imgserve train``: a new head on a frozen ImageNet backbone, for the classes of a folder,
published as a servable version only if it beats the majority-class baseline.

The steps: read and check the folder (``data``); compute or reuse the backbone's pooled
features of every image (``features``); split each class, seeded; featurize a few augmented
copies of each training image (``augment``); train the head with early stopping, then
optionally the top blocks (``head``); evaluate on the held-out split (``report``). Only if the
gate passes is anything written: the version is staged beside its destination, the validation
images are run through the staged SavedModel by the server's runtime and must give the
in-memory answers, the manifest records the report, and the folder is renamed into place
(``trt_build.staging``, as ``imgserve build`` publishes).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model_contract.manifest import ModelManifest
from trt_build.staging import check_new_version, publish, staged_version
from trt_build.train import head as heads
from trt_build.train.augment import Augmentation
from trt_build.train.backbone import Backbone, backbone
from trt_build.train.data import Dataset, ImageFile, check_counts, labels, scan, split
from trt_build.train.errors import TrainingRefused
from trt_build.train.features import (
    FeatureCache,
    Item,
    Model,
    extract,
    items_of,
    load_tensor,
    pooled_features,
)
from trt_build.train.publish import served_probabilities, version_manifest, write_artifacts
from trt_build.train.report import CONFUSION_PNG, MIN_MARGIN, BelowBaseline, evaluate, gate_failures, plot_confusion

log = logging.getLogger(__name__)

MAX_SKIPPED_LISTED = 1000
"""Skipped files the manifest names (it counts them all)."""


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "imgserve" / "features"


@dataclass(frozen=True)
class TrainRequest:
    data_dir: Path
    output: Path
    base: str = "efficientnet_lite0"
    validation_fraction: float = 0.2
    seed: int = 0
    augment_copies: int = 2
    flip: bool = True
    schedule: heads.Schedule = field(default_factory=heads.Schedule)
    fine_tune_blocks: int = 0
    fine_tune_learning_rate: float = 1e-5
    min_margin: float = MIN_MARGIN
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    """None: no feature cache."""

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction <= 0.5:
            raise TrainingRefused("the validation fraction must be above 0 and at most 0.5")
        if self.augment_copies < 0:
            raise TrainingRefused("augmented copies must be 0 or more")
        if self.fine_tune_blocks < 0:
            raise TrainingRefused("--fine-tune-blocks must be 0 or more")
        if not 0 <= self.min_margin < 1:
            raise TrainingRefused("the margin over the baseline must be at least 0 and below 1")
        if self.schedule.max_epochs < 1 or self.schedule.patience < 1 or self.schedule.batch_size < 1:
            raise TrainingRefused("epochs, patience and batch size must be 1 or more")
        try:
            check_new_version(self.output)
        except (ValueError, FileExistsError) as exc:
            raise TrainingRefused(str(exc)) from exc

    def settings(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "validation_fraction": self.validation_fraction,
            "seed": self.seed,
            "augment_copies": self.augment_copies,
            "flip": self.flip,
            **asdict(self.schedule),
            "fine_tune_blocks": self.fine_tune_blocks,
            "fine_tune_learning_rate": self.fine_tune_learning_rate,
            "min_margin": self.min_margin,
        }


def _stack(features: dict[str, np.ndarray], items: Sequence[Item]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the items that have features, and their labels, in item order."""
    kept = [item for item in items if item.key in features]
    return np.stack([features[item.key] for item in kept]), np.array([item.image.label for item in kept])


def _keras_model(model: Any) -> Model:
    def run(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(batch))  # a traced function: 1.6x eager calls here

    return run


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


def _class_counts(dataset: Dataset, train: Sequence[ImageFile], validation: Sequence[ImageFile]) -> dict[str, Any]:
    n = len(dataset.classes)
    train_counts = np.bincount(labels(train), minlength=n)
    validation_counts = np.bincount(labels(validation), minlength=n)
    return {
        name: {"train": int(train_counts[i]), "validation": int(validation_counts[i])}
        for i, name in enumerate(dataset.classes)
    }


def _fine_tune(
    request: TrainRequest,
    base: Backbone,
    network: Any,
    head: Any,
    train_items: Sequence[Item],
    validation_items: Sequence[Item],
    augmentation: Augmentation,
    classes: int,
    head_val_loss: float,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Train the top blocks with the head, on the activations entering them (computed here,
    not cached: they are large); return the validation probabilities and the fit. Unless it
    lowers the validation loss below the head's alone (``head_val_loss``), the weights it started
    from are put back: fine-tuning must not make the model worse on the held-out split."""
    below, above = heads.below_and_above(network, base, head.layers[1:], request.fine_tune_blocks)
    spec = base.preprocessing
    entering, _ = extract(_keras_model(below), train_items, spec, augmentation, "activations for fine-tuning")
    entering_val, _ = extract(_keras_model(below), validation_items, spec, None, "validation activations")
    x, y = _stack(entering, train_items)
    x_val, y_val = _stack(entering_val, validation_items)
    schedule = heads.Schedule(
        learning_rate=request.fine_tune_learning_rate,
        batch_size=request.schedule.batch_size,
        max_epochs=request.schedule.max_epochs,
        patience=request.schedule.patience,
    )
    before = above.get_weights()
    tuned = heads.fit(above, x, y, x_val, y_val, classes, schedule, f"fine-tuning the top {request.fine_tune_blocks}")
    kept = tuned.best_val_loss < head_val_loss
    if not kept:
        above.set_weights(before)
        log.info("fine-tuning did not lower the validation loss (%.5f): the head alone is kept", head_val_loss)
    probabilities = _softmax(np.asarray(above.predict(x_val, batch_size=32, verbose=0)))
    return probabilities, {**tuned.as_dict(), "head_val_loss": round(head_val_loss, 5), "kept": kept}


def train(request: TrainRequest) -> ModelManifest:
    """Train, evaluate, and publish ``request.output``; raise ``TrainingRefused`` (bad data or
    settings) or ``BelowBaseline`` (the gate) with nothing written."""
    started = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(phase: str) -> None:
        seconds[phase] = round(time.monotonic() - started - sum(seconds.values()), 1)

    base = backbone(request.base)
    dataset = scan(request.data_dir)  # refuses the folder's structure before any slow work
    if request.fine_tune_blocks > len(base.blocks):
        raise TrainingRefused(f"--fine-tune-blocks must be at most {len(base.blocks)} for {base.name}")

    import keras

    keras.utils.set_random_seed(request.seed)
    network = base.build()
    pooled = _keras_model(keras.Model(network.input, network.get_layer(base.pooled_layer).output))
    cache = FeatureCache(request.cache_dir, base)

    originals = pooled_features(pooled, items_of(dataset.images), base, None, cache, "features")
    dataset = dataset.without(originals.failed)  # originals' keys are their digests
    check_counts(dataset)
    train_images, validation_images = split(dataset, request.validation_fraction, request.seed)
    augmentation = Augmentation(request.augment_copies, request.flip, request.seed)
    train_items = items_of(train_images, augmentation)
    copies = pooled_features(
        pooled, [i for i in train_items if i.copy], base, augmentation, cache, "features of augmented copies"
    )
    features = {**originals.features, **copies.features}
    validation_items = items_of(validation_images)
    x, y = _stack(features, train_items)
    x_val, y_val = _stack(features, validation_items)
    classes = len(dataset.classes)
    lap("features")

    head, head_fit = heads.train_head(x, y, x_val, y_val, classes, request.schedule)
    classifier = heads.with_head(network, base, head.layers[1:])
    fine_tuning: dict[str, Any] | None = None
    if request.fine_tune_blocks:
        probabilities, fine_tuning = _fine_tune(
            request, base, network, head, train_items, validation_items, augmentation, classes, head_fit.best_val_loss
        )
    else:
        probabilities = _softmax(np.asarray(head.predict(x_val, batch_size=256, verbose=0)))

    lap("training")
    train_counts = np.bincount(labels(train_images), minlength=classes)  # the images, not their copies
    evaluation = evaluate(y_val, probabilities, dataset.classes, train_counts.tolist())
    failures = gate_failures(evaluation, request.min_margin)
    report: dict[str, Any] = {
        "trained_from": {"base": base.name, "data_fingerprint": dataset.fingerprint()},
        "settings": request.settings(),
        "data": {
            "classes": _class_counts(dataset, train_images, validation_images),
            "skipped_files": len(dataset.skipped),
            "skipped": [{"file": s.name, "reason": s.reason} for s in dataset.skipped[:MAX_SKIPPED_LISTED]],
        },
        "training": {
            "examples": len(x),
            "head": head_fit.as_dict(),
            "fine_tuning": fine_tuning,
            "features_from_cache": originals.from_cache + copies.from_cache,
            "features_computed": originals.computed + copies.computed,
        },
        "validation": {**evaluation.as_dict(), "min_margin": request.min_margin, "failures": failures},
    }
    if failures:
        report["validation"]["passed"] = False
        raise BelowBaseline(failures, report)

    with staged_version(request.output) as staging:
        manifest = version_manifest(request.output, base, list(dataset.classes))
        write_artifacts(classifier, staging, base)
        tensors = np.stack([load_tensor(item, base.preprocessing, None) for item in validation_items])
        difference = served_probabilities(manifest, staging, tensors, probabilities)
        plot_confusion(evaluation, dataset.classes, staging / CONFUSION_PNG)
        report["validation"].update(served_max_abs_prob_diff=round(difference, 8), passed=True)
        report["confusion_matrix_png"] = CONFUSION_PNG
        lap("publishing")
        report["seconds"] = {**seconds, "total": round(time.monotonic() - started, 1)}
        manifest = manifest.model_copy(update={"build": report})
        manifest.write(staging)
        publish(staging, request.output)
    log.info(
        "published %s: validation accuracy %.4f, majority baseline %.4f",
        request.output,
        evaluation.accuracy,
        evaluation.majority_baseline,
    )
    return manifest
