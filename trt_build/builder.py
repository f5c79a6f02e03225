"""``imgserve build``: convert a source version, verify it, and publish it only if it passes.

The new version is staged next to its destination and renamed into place at the end
(``trt_build.staging``), so the server's repository never holds a half-written or unverified
version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from model_contract.manifest import MANIFEST_FILE, ModelManifest
from trt_build import litert, tftrt
from trt_build.eval_images import evaluation_tensors
from trt_build.staging import check_new_version, publish, staged_version
from trt_build.verify import Gate, Verification, served_model, verify

log = logging.getLogger(__name__)

TARGETS = ("litert", "tftrt")


class VerificationFailed(RuntimeError):
    def __init__(self, verification: Verification) -> None:
        super().__init__("; ".join(verification.failures) + "; the build was not published")
        self.verification = verification


@dataclass(frozen=True)
class BuildRequest:
    source: Path
    target: str
    precision: str
    output: Path
    max_batch_size: int = 32
    calibration_dir: Path | None = None
    calibration_count: int = 200
    eval_dir: Path | None = None
    eval_count: int = 300
    threads: int = 0
    min_top1_agreement: float | None = None
    decided_probability: float | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}")
        precisions = litert.PRECISIONS if self.target == "litert" else tftrt.PRECISIONS
        if self.precision not in precisions:
            raise ValueError(f"{self.target} precision must be one of {', '.join(precisions)}")
        check_new_version(self.output)
        if not ModelManifest.is_version(self.source):
            raise FileNotFoundError(f"{self.source} is not a model version (no {MANIFEST_FILE})")


def build(request: BuildRequest) -> ModelManifest:
    if request.target == "tftrt":
        tftrt.require_tensorrt()  # fail before any slow work
    source_manifest = ModelManifest.read(request.source)
    source_artifact = source_manifest.artifact_path(request.source, source_manifest.runtime)
    preprocessing = source_manifest.preprocessing
    images = evaluation_tensors(preprocessing, request.eval_count, seed=0, folder=request.eval_dir)
    needs_calibration = request.precision == "int8"
    calibration = (
        evaluation_tensors(preprocessing, request.calibration_count, seed=1, folder=request.calibration_dir)
        if needs_calibration
        else None
    )
    gate = Gate.for_precision(request.precision, request.min_top1_agreement, request.decided_probability)
    with staged_version(request.output) as staging:
        if request.target == "litert":
            artifact = staging / "model.tflite"
            artifact.write_bytes(litert.convert(source_artifact, request.precision, calibration))
            runtime = "litert"
        else:
            artifact = staging / "saved_model"
            item_shape = source_manifest.item_shape
            tftrt.convert(source_artifact, artifact, request.precision, request.max_batch_size, item_shape, calibration)
            runtime = "tensorflow"
        # The new version's manifest before its verification, so that the staged build is
        # verified through the runtime that will serve it.
        manifest = source_manifest.model_copy(
            update={
                "version": int(request.output.name),
                "runtime": runtime,
                "artifact": artifact.name,
                "artifacts": {},
                "parameters": {},
                "build": None,
            }
        )
        with (
            served_model(source_manifest, request.source) as source,
            served_model(manifest, staging, request.threads) as built,
        ):
            verification = verify(source, source_artifact, built, artifact, images, gate)
        if not verification.passed:
            raise VerificationFailed(verification)
        manifest = manifest.model_copy(
            update={
                "build": {
                    "source": {"name": source_manifest.name, "version": source_manifest.version},
                    "target": request.target,
                    "precision": request.precision,
                    "batch_sizes": tftrt.engine_batch_sizes(request.max_batch_size),
                    "calibration_images": 0 if calibration is None else len(calibration),
                    "verification": verification.as_dict(),
                },
            }
        )
        manifest.write(staging)
        publish(staging, request.output)
    log.info("published %s (%s %s): %s", request.output, request.target, request.precision, verification)
    return manifest
