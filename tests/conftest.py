"""Shared fixtures: the built default model and real photographs from public wheels."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# Property tests: a bounded, reproducible budget in `make test`; `make fuzz` runs the same
# tests with IMGSERVE_FUZZ_PROFILE=fuzz, many more examples and fresh randomness.
settings.register_profile(
    "ci", max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("IMGSERVE_FUZZ_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parent.parent


def _skimage_data() -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data"


def _matplotlib_samples() -> Path:
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data"


# Real photographs that ship inside scikit-image and matplotlib, and the ImageNet classes a
# correct EfficientNet-Lite0 gives them: top-1 must be one of `top1`.
PHOTOS: dict[str, dict[str, object]] = {
    "chelsea": {"file": ("skimage", "chelsea.png"), "top1": {281, 282, 285}},  # tabby / tiger / Egyptian cat
    "coffee": {"file": ("skimage", "coffee.png"), "top1": {967}},  # espresso
    "rocket": {"file": ("skimage", "rocket.jpg"), "top1": {657, 744}},  # missile / projectile
    "motorcycle": {"file": ("skimage", "motorcycle_left.png"), "top1": {665, 670}},  # moped / motor scooter
    "cameraman": {"file": ("skimage", "camera.png"), "top1": {872}},  # tripod
}
GRACE_HOPPER = ("matplotlib", "grace_hopper.jpg")  # military uniform (652) in the top 5
MILITARY_UNIFORM = 652


def photo_path(source: tuple[str, str]) -> Path:
    package, name = source
    base = _skimage_data() if package == "skimage" else _matplotlib_samples()
    return base / name


@pytest.fixture(scope="session")
def model_repository() -> Path:
    """The default model, built once if `make` has not built it already."""
    repository = Path(os.environ.get("IMGSERVE_TEST_MODELS", REPO_ROOT / "models"))
    from trt_build.default_model.build import build_default_model

    build_default_model(repository)
    return repository


@pytest.fixture(scope="session")
def photo_bytes() -> dict[str, bytes]:
    return {name: photo_path(spec["file"]).read_bytes() for name, spec in PHOTOS.items()}  # type: ignore[arg-type]


# Modules opt in with ``pytestmark = pytest.mark.usefixtures("split_models")``.
from tests.helpers import split_models  # noqa: E402, F401
