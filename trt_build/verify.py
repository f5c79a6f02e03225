"""Verify a built model against its source on real images: agreement, error, size, speed.

Both models run through the server's runtimes (``served_model``) on the tensors the server's
decode makes of encoded images (``trt_build.eval_images``): what is verified is what is served."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model_contract.manifest import ModelManifest
from server.runtimes import RuntimeOptions, load_runtime

Predictor = Callable[[np.ndarray], np.ndarray]

# Least top-1 agreement with the float source, on the images the source decides, for a build
# to be published.
MIN_TOP1_AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "dynamic": 0.99, "int8": 0.99}

# The source "decides" an image when its top class gets more probability than all the others
# together. Below that its top-1 is a near tie (an astronaut is no ImageNet class: 17% rugby ball
# against 16% drumstick), and any rounding flips it without changing what the model knows; on
# the default set an 8-bit softmax on an otherwise float model flips 1.3% of all images.
DECIDED_PROBABILITY = 0.5
# Fewer decided images than this make the agreement figure meaningless.
MIN_DECIDED_IMAGES = 20
# On every image, decided or not, the built top-1 must be one of the source's top 5: a near tie
# may go either way, a wrong answer may not.
MIN_TOP1_IN_SOURCE_TOP5 = 0.99


@dataclass(frozen=True)
class Gate:
    """What a build must reach on the evaluation images to be published."""

    min_top1_agreement: float
    decided_probability: float = DECIDED_PROBABILITY
    min_decided_images: int = MIN_DECIDED_IMAGES
    min_top1_in_source_top5: float = MIN_TOP1_IN_SOURCE_TOP5

    @classmethod
    def for_precision(
        cls, precision: str, min_top1_agreement: float | None = None, decided_probability: float | None = None
    ) -> Gate:
        return cls(
            min_top1_agreement=MIN_TOP1_AGREEMENT[precision] if min_top1_agreement is None else min_top1_agreement,
            decided_probability=DECIDED_PROBABILITY if decided_probability is None else decided_probability,
        )

    def failures(self, figures: dict[str, float]) -> list[str]:
        failed = []
        if figures["decided_images"] < self.min_decided_images:
            failed.append(
                f"the source decides only {figures['decided_images']:.0f} of the images (top-1 probability >= "
                f"{self.decided_probability}), {self.min_decided_images} are needed: verify on more or clearer photos"
            )
        elif figures["decided_top1_agreement"] < self.min_top1_agreement:
            failed.append(
                f"top-1 agreement {figures['decided_top1_agreement']:.4f} on the {figures['decided_images']:.0f} "
                f"images the source decides is below {self.min_top1_agreement}"
            )
        if figures["top1_in_source_top5"] < self.min_top1_in_source_top5:
            failed.append(
                f"the built top-1 is in the source's top 5 on {figures['top1_in_source_top5']:.4f} of all images, "
                f"below {self.min_top1_in_source_top5}"
            )
        return failed


@dataclass(frozen=True)
class Verification:
    images: int
    decided_images: int
    top1_agreement: float
    decided_top1_agreement: float
    top1_in_source_top5: float
    top5_overlap: float
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    source_bytes: int
    built_bytes: int
    source_images_per_s: float
    built_images_per_s: float
    gate: Gate
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "failures": list(self.failures), "passed": self.passed}


@contextmanager
def served_model(manifest: ModelManifest, version_dir: Path, threads: int = 0) -> Iterator[Predictor]:
    """A model version's predictions as the server makes them: the runtime its manifest names,
    loaded from the server's own table (``server.runtimes``)."""
    runtime = load_runtime(manifest, version_dir, RuntimeOptions(intra_op_threads=threads))
    try:
        yield runtime.predict
    finally:
        runtime.close()


def predict_all(predictor: Predictor, images: np.ndarray, batch_size: int, label: str) -> np.ndarray:
    batches = range(0, len(images), batch_size)
    return np.concatenate([predictor(images[i : i + batch_size]) for i in tqdm(batches, desc=label, unit="batch")])


def images_per_second(predictor: Predictor, images: np.ndarray, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> float:
    """Best median throughput over a few batch sizes."""
    best = 0.0
    for n in batch_sizes:
        batch = images[:n] if len(images) >= n else np.resize(images, (n, *images.shape[1:]))
        predictor(batch)  # warm
        times = []
        for _ in range(5):
            started = time.perf_counter()
            predictor(batch)
            times.append(time.perf_counter() - started)
        best = max(best, n / float(np.median(times)))
    return round(best, 1)


def compare(
    source: np.ndarray, built: np.ndarray, decided_probability: float = DECIDED_PROBABILITY
) -> dict[str, float]:
    top5_source = np.argsort(-source, axis=1)[:, :5]
    top5_built = np.argsort(-built, axis=1)[:, :5]
    overlap = [len(set(a) & set(b)) / 5 for a, b in zip(top5_source, top5_built, strict=True)]
    agree = source.argmax(1) == built.argmax(1)
    decided = source.max(1) >= decided_probability
    in_top5 = (top5_source == built.argmax(1)[:, None]).any(axis=1)
    diff = np.abs(source - built)
    return {
        "decided_images": int(decided.sum()),
        "top1_agreement": round(float(np.mean(agree)), 4),
        "decided_top1_agreement": round(float(np.mean(agree[decided])), 4) if decided.any() else 0.0,
        "top1_in_source_top5": round(float(np.mean(in_top5)), 4),
        "top5_overlap": round(float(np.mean(overlap)), 4),
        "max_abs_prob_diff": round(float(diff.max()), 5),
        "mean_abs_prob_diff": round(float(diff.mean()), 7),
    }


def directory_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def verify(
    source: Predictor,
    source_artifact: Path,
    built: Predictor,
    built_artifact: Path,
    images: np.ndarray,
    gate: Gate,
) -> Verification:
    source_probs = predict_all(source, images, 32, "source model")
    built_probs = predict_all(built, images, 32, "built model")
    figures = compare(source_probs, built_probs, gate.decided_probability)
    failures = tuple(gate.failures(figures))
    decided_images = int(figures.pop("decided_images"))
    return Verification(
        images=len(images),
        decided_images=decided_images,
        **figures,
        source_bytes=directory_bytes(source_artifact),
        built_bytes=directory_bytes(built_artifact),
        source_images_per_s=images_per_second(source, images),
        built_images_per_s=images_per_second(built, images),
        gate=gate,
        failures=failures,
    )
