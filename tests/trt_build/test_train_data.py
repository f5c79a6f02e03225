"""imgserve train, before any model: reading the class folders, the refusals (exit code 2, a
clear message, nothing written), the stratified split, the augmented copies, the feature
cache's file and the gate's figures. Nothing here loads TensorFlow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgserve.cli import main as imgserve
from model_contract.imaging import image_to_tensor
from trt_build.eval_images import EVAL_LIMITS
from trt_build.train.augment import Augmentation, augmented_copy
from trt_build.train.backbone import backbone
from trt_build.train.data import MIN_IMAGES_PER_CLASS, Dataset, ImageFile, scan, split
from trt_build.train.features import FeatureCache
from trt_build.train.report import evaluate, gate_failures

SPEC = backbone("efficientnet_lite0").preprocessing


def png(seed: int, size: tuple[int, int] = (12, 10)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_folders(root: Path, counts: dict[str, int]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    seed = 0
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            seed += 1
            (root / name / f"{i}.png").write_bytes(png(seed))
    return root


def refused(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert imgserve(["train", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


# --- refusals: exit code 2, a message, nothing written ------------------------------------


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"cats": 6}, "1 class folder(s) ('cats'); training needs at least two"),
        ({}, "0 class folder(s) (none); training needs at least two"),
        ({"cats": 6, "dogs": 0}, "class 'dogs' is empty: no usable images"),
        ({"cats": 6, "dogs": 3}, f"class 'dogs' has 3 usable image(s); at least {MIN_IMAGES_PER_CLASS} per class"),
    ],
    ids=["one-class", "no-class", "empty-class", "too-few"],
)
def test_data_that_cannot_be_trained_on_is_refused_with_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], counts: dict[str, int], message: str
) -> None:
    data = make_folders(tmp_path / "data", counts)
    output = tmp_path / "repo" / "pets" / "1"
    error = refused([str(data), "--output", str(output), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert message in error
    assert not (tmp_path / "repo").exists() and not (tmp_path / "cache").exists()


def test_a_class_whose_files_repeat_another_class_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_folders(tmp_path / "data", {"cats": 6})
    (data / "copies").mkdir()
    for i in range(6):
        (data / "copies" / f"{i}.png").write_bytes((data / "cats" / f"{i}.png").read_bytes())
    error = refused([str(data), "--output", str(tmp_path / "repo" / "pets" / "1")], capsys)
    assert "class 'copies' is empty" in error and "6 file(s) skipped" in error
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base", "resnet50"], "unknown base 'resnet50': only efficientnet_lite0 is available"),
        (["--validation-fraction", "0.9"], "validation fraction must be above 0 and at most 0.5"),
        (["--fine-tune-blocks", "17"], "--fine-tune-blocks must be at most 16"),
        (["--min-margin", "1.5"], "margin over the baseline must be at least 0 and below 1"),
    ],
    ids=["base", "fraction", "blocks", "margin"],
)
def test_settings_that_cannot_work_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    data = make_folders(tmp_path / "data", {"cats": 6, "dogs": 6})
    error = refused([str(data), "--output", str(tmp_path / "repo" / "pets" / "1"), *extra], capsys)
    assert message in error
    assert not (tmp_path / "repo").exists()


def test_an_output_that_is_not_a_new_version_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folders(tmp_path / "data", {"cats": 6, "dogs": 6})
    assert "must be a version folder" in refused([str(data), "--output", str(tmp_path / "repo" / "pets")], capsys)
    assert "must be a version folder" in refused([str(data), "--output", "1"], capsys)  # no model folder
    existing = tmp_path / "repo" / "pets" / "1"
    existing.mkdir(parents=True)
    assert "already exists" in refused([str(data), "--output", str(existing)], capsys)
    assert list(existing.iterdir()) == []
    missing = tmp_path / "nothing"
    assert "is not a folder" in refused([str(missing), "--output", str(tmp_path / "r" / "m" / "1")], capsys)


# --- reading and splitting ------------------------------------------------------------------


def test_scan_reads_classes_in_sorted_order_and_skips_repeats(tmp_path: Path) -> None:
    data = make_folders(tmp_path, {"b": 5, "a": 6})
    (data / "a" / "nested").mkdir()
    (data / "a" / "nested" / "deep.png").write_bytes(png(100))
    (data / "a" / ".hidden.png").write_bytes(png(101))
    (data / "b" / "again.png").write_bytes((data / "b" / "0.png").read_bytes())
    (data / "top-level.png").write_bytes(png(102))  # in no class: ignored, as Keras does
    dataset = scan(data)
    assert dataset.classes == ("a", "b")
    assert dataset.counts() == [7, 5]
    assert [(s.name, s.reason) for s in dataset.skipped] == [("b/again.png", "the same bytes as b/0.png")]
    assert "a/nested/deep.png" in {i.name for i in dataset.images}


def _dataset(counts: list[int]) -> Dataset:
    images = tuple(
        ImageFile(Path(f"{label}/{i}.png"), f"{label}/{i:03d}.png", label, f"{label}-{i}")
        for label, count in enumerate(counts)
        for i in range(count)
    )
    return Dataset(tuple(str(c) for c in range(len(counts))), images, ())


def test_the_split_is_stratified_seeded_and_disjoint() -> None:
    dataset = _dataset([50, 10, 5])
    train, validation = split(dataset, 0.2, seed=0)
    assert np.bincount([i.label for i in validation]).tolist() == [10, 2, 1]
    assert np.bincount([i.label for i in train]).tolist() == [40, 8, 4]
    assert not {i.name for i in train} & {i.name for i in validation}
    assert split(dataset, 0.2, seed=0) == (train, validation)
    assert split(dataset, 0.2, seed=1)[1] != validation


# --- augmented copies -----------------------------------------------------------------------


def _half_black() -> bytes:
    """Black on the left, white on the right: a mirror shows."""
    pixels = np.full((300, 400, 3), 255, np.uint8)
    pixels[:, :200] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _left_is_dark(data: bytes) -> bool:
    tensor = image_to_tensor(data, SPEC, EVAL_LIMITS)
    return bool(tensor[:, :20].mean() < tensor[:, -20:].mean())


def test_copies_are_reframed_repeatable_and_mirrored_only_when_asked() -> None:
    data = _half_black()
    flip = Augmentation(copies=8, flip=True, seed=0)
    copies = [augmented_copy(data, SPEC, EVAL_LIMITS, flip, "digest", c) for c in range(1, 9)]
    assert copies[0] == augmented_copy(data, SPEC, EVAL_LIMITS, flip, "digest", 1)
    assert len(set(copies)) == 8
    assert {min(Image.open(io.BytesIO(c)).size) for c in copies} == {SPEC.resize_shorter_side}
    assert {image_to_tensor(c, SPEC, EVAL_LIMITS).shape for c in copies} == {(224, 224, 3)}
    assert {_left_is_dark(c) for c in copies} == {True, False}
    no_flip = Augmentation(copies=8, flip=False, seed=0)
    assert all(_left_is_dark(augmented_copy(data, SPEC, EVAL_LIMITS, no_flip, "digest", c)) for c in range(1, 9))


# --- the cache file ---------------------------------------------------------------------------


def test_the_cache_adds_to_its_file_and_survives_a_damaged_one(tmp_path: Path) -> None:
    base = backbone("efficientnet_lite0")
    cache = FeatureCache(tmp_path, base)
    assert cache.load() == {}
    cache.store({"a": np.ones(4, np.float32)})
    cache.store({"b": np.zeros(4, np.float32)})
    stored = FeatureCache(tmp_path, base).load()
    assert sorted(stored) == ["a", "b"] and stored["a"].tolist() == [1, 1, 1, 1]
    assert cache.path is not None and cache.path.name.startswith("efficientnet_lite0-")
    cache.path.write_bytes(b"not an npz")
    assert cache.load() == {}
    assert FeatureCache(None, base).load() == {}


# --- the gate's figures -----------------------------------------------------------------------


def test_the_baseline_is_the_training_majority_class_on_the_validation_images() -> None:
    y_true = np.array([0, 0, 0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 0, 1, 1, 2, 0]]
    evaluation = evaluate(y_true, probabilities, ["a", "b", "c"], train_counts=[5, 20, 3])
    # Always answering "b", the most common class in training, is right on 1 of 6.
    assert (evaluation.majority_class, evaluation.majority_baseline) == ("b", round(1 / 6, 4))
    assert evaluation.accuracy == round(4 / 6, 4)
    assert evaluation.loss == pytest.approx(-np.log(1e-12) * 2 / 6, rel=1e-4)  # two answers wholly wrong
    assert evaluation.per_class_recall == {"a": round(2 / 3, 4), "b": 1.0, "c": 0.5}
    assert evaluation.confusion == [[2, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert gate_failures(evaluation, 0.1) == []
    (failure,) = gate_failures(evaluation, 0.6)
    assert "does not beat the majority-class baseline 0.1667 (always 'b') by 0.6" in failure
