"""What the default model serves, decoded in exact mode, against the reference pipeline: the
probabilities stay within 0.01 on every photo (the real model, real photos sent as they are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtests.fidelity import upscaled_jpegs
from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from model_contract.preprocess import reference_pipeline
from server.runtimes import Runtime, RuntimeOptions, load_runtime
from tests.conftest import GRACE_HOPPER, PHOTOS, photo_path

MAX_PROBABILITY_SHIFT = 0.01


@pytest.fixture(scope="module")
def served(model_repository: Path) -> tuple[ModelManifest, Runtime]:
    version = model_repository / "efficientnet_lite0" / "1"
    manifest = ModelManifest.read(version)
    return manifest, load_runtime(manifest, version, RuntimeOptions())


def test_exact_decode_serves_the_references_probabilities(served: tuple[ModelManifest, Runtime]) -> None:
    manifest, runtime = served
    spec = manifest.preprocessing
    assert spec.decode == "exact"
    photos = {name: photo_path(p["file"]).read_bytes() for name, p in PHOTOS.items()}  # type: ignore[arg-type]
    photos |= {"grace_hopper": photo_path(GRACE_HOPPER).read_bytes()} | upscaled_jpegs()
    reference = runtime.predict(np.stack([reference_pipeline(data, spec) for data in photos.values()]))
    served_probabilities = runtime.predict(
        np.stack([image_to_tensor(data, spec, GENEROUS_LIMITS) for data in photos.values()])
    )
    shifts = dict(zip(photos, np.abs(served_probabilities - reference).max(axis=1), strict=True))
    assert max(shifts.values()) < MAX_PROBABILITY_SHIFT, shifts
    assert (served_probabilities.argmax(axis=1) == reference.argmax(axis=1)).all()
