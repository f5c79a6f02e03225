"""The ported model, as served (SavedModel + the server's preprocessing), on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from server.model_repository import latest_versions
from server.runtimes import RuntimeOptions, load_runtime
from tests.conftest import GRACE_HOPPER, MILITARY_UNIFORM, PHOTOS, photo_path


@pytest.fixture(scope="module")
def served(model_repository: Path) -> tuple[ModelManifest, object]:
    (version,) = latest_versions(model_repository)
    return version.manifest, load_runtime(version.manifest, version.path, RuntimeOptions())


def _probabilities(served: tuple[ModelManifest, object], files: list[Path]) -> np.ndarray:
    manifest, runtime = served
    spec = manifest.preprocessing
    batch = np.stack([image_to_tensor(f.read_bytes(), spec, GENEROUS_LIMITS) for f in files])
    return runtime.predict(batch)  # type: ignore[attr-defined,no-any-return]


def test_manifest_describes_the_training_preprocessing(served: tuple[ModelManifest, object]) -> None:
    manifest, _ = served
    p = manifest.preprocessing
    assert (p.resize_shorter_side, p.crop_size, p.interpolation) == (256, 224, "bicubic")
    assert (p.mean, p.std) == (127.0, 128.0)  # (x - 127) / 128: roughly [-1, 1]
    assert manifest.input.dtype == "uint8" and manifest.input.shape == [-1, 224, 224, 3]
    assert len(manifest.labels) == 1000
    assert manifest.labels[281] == "tabby" and manifest.labels[967] == "espresso"


def test_real_photos_get_their_imagenet_classes(served: tuple[ModelManifest, object]) -> None:
    names = list(PHOTOS)
    probabilities = _probabilities(served, [photo_path(PHOTOS[n]["file"]) for n in names])  # type: ignore[arg-type]
    assert probabilities.shape == (len(names), 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    top1 = {name: int(np.argmax(p)) for name, p in zip(names, probabilities, strict=True)}
    for name in names:
        assert top1[name] in PHOTOS[name]["top1"], f"{name}: top-1 was {top1[name]}"  # type: ignore[operator]


def test_grace_hopper_wears_a_military_uniform_in_the_top_5(served: tuple[ModelManifest, object]) -> None:
    (probabilities,) = _probabilities(served, [photo_path(GRACE_HOPPER)])
    assert MILITARY_UNIFORM in np.argsort(-probabilities)[:5]


def test_batch_results_do_not_depend_on_batch_mates(served: tuple[ModelManifest, object]) -> None:
    files = [photo_path(PHOTOS[n]["file"]) for n in ("coffee", "chelsea", "rocket")]  # type: ignore[arg-type]
    together = _probabilities(served, files)
    alone = np.concatenate([_probabilities(served, [f]) for f in files])
    np.testing.assert_allclose(together, alone, atol=1e-5)
