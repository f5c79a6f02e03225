"""imgserve train, before any model: reading the class folders, the refusals (exit code 2, a
clear message, nothing written), the stratified split, the augmented copies, the feature
cache's file and the gate's figures. Nothing here loads TensorFlow."""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import logging
import os
import random
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from imgserve.cli import main as imgserve
from model_contract.imaging import image_to_tensor
from trt_build.eval_images import EVAL_LIMITS
from trt_build.train import digits, features
from trt_build.train import pipeline as pipeline_module
from trt_build.train.augment import MAX_ASPECT, MIN_AREA, Augmentation, augmented_copy, random_box
from trt_build.train.backbone import backbone
from trt_build.train.data import MAX_FILE_BYTES, MIN_IMAGES_PER_CLASS, Dataset, ImageFile, scan, split
from trt_build.train.errors import TrainingDataError
from trt_build.train.features import FeatureCache, Item, extract, pooled_features
from trt_build.train.publish import ExportMismatch
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
    ("name", "message"),
    [
        (os.fsdecode(b"caf\xe9"), "the class folder name b'caf\\xe9' is not valid UTF-8"),
        ("dogs\x07", "the class folder name 'dogs\\x07' holds control characters"),
        ("two\nlines", "the class folder name 'two\\nlines' holds control characters"),
    ],
    ids=["latin-1", "bell", "newline"],
)
def test_a_class_folder_name_that_cannot_be_a_label_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, message: str
) -> None:
    """Such a name would have crashed the run after training, serializing the manifest."""
    data = make_folders(tmp_path / "data", {"cats": 6, name: 6})
    with pytest.raises(TrainingDataError) as raised:
        scan(data)
    assert message in str(raised.value)
    output = tmp_path / "repo" / "pets" / "1"
    error = refused([str(data), "--output", str(output), "--cache-dir", str(tmp_path / "cache")], capsys)
    assert message in error and "rename it" in error
    assert not (tmp_path / "repo").exists() and not (tmp_path / "cache").exists()


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


def test_scan_reads_classes_in_sorted_order_and_lists_what_it_skips(tmp_path: Path) -> None:
    data = make_folders(tmp_path, {"b": 5, "a": 6})
    (data / "a" / "nested").mkdir()
    (data / "a" / "nested" / "deep.png").write_bytes(png(100))
    (data / "a" / ".hidden.png").write_bytes(png(101))
    (data / "a" / "gone.png").symlink_to(data / "a" / "deleted.png")
    (data / "b" / "again.png").write_bytes((data / "b" / "0.png").read_bytes())
    (data / "b" / os.fsdecode(b"\xff.png")).write_bytes((data / "b" / "1.png").read_bytes())  # not UTF-8
    (data / "top-level.png").write_bytes(png(102))  # in no class
    (data / ".DS_Store").write_bytes(b"hidden")
    dataset = scan(data)
    assert dataset.classes == ("a", "b")
    assert dataset.counts() == [7, 5]
    skipped = [(s.name, s.reason) for s in dataset.skipped]
    assert skipped == [
        ("top-level.png", "not in a class folder"),
        ("a/gone.png", "a broken symbolic link"),
        ("b/again.png", "the same bytes as b/0.png"),
        ("b/\\xff.png", "the same bytes as b/1.png"),
    ]
    json.dumps(skipped, ensure_ascii=False).encode()  # what the manifest does with them: no surrogates
    assert "a/nested/deep.png" in {i.name for i in dataset.images}
    assert {i.size for i in dataset.images} == {len(png(0))}


def test_a_file_over_the_size_limit_is_skipped_without_being_read(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", {"a": 5, "b": 5})
    with (data / "a" / "video.mp4").open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk, and fails fast if anything reads it whole
    dataset = scan(data)
    assert [(s.name, s.reason) for s in dataset.skipped] == [
        ("a/video.mp4", f"too large ({MAX_FILE_BYTES + 1} bytes; at most {MAX_FILE_BYTES})")
    ]
    assert MAX_FILE_BYTES == 64 << 20


def test_a_file_that_grew_past_the_limit_after_the_scan_is_skipped_when_decoded(tmp_path: Path) -> None:
    data = make_folders(tmp_path / "data", {"a": 5, "b": 5})
    dataset = scan(data)
    grown = dataset.images[0]
    with grown.path.open("r+b") as f:
        f.truncate(MAX_FILE_BYTES + 100)
    items = [Item(image, 0, image.digest) for image in dataset.images[:3]]

    def model(batch: np.ndarray) -> np.ndarray:
        return np.zeros((len(batch), 4), np.float32)

    computed, failed = extract(model, items, SPEC, None, "test")
    assert failed == {grown.digest: f"too large ({MAX_FILE_BYTES + 100} bytes; at most {MAX_FILE_BYTES})"}
    assert sorted(computed) == sorted(i.digest for i in dataset.images[1:3])


def test_decoding_uses_a_few_threads_however_many_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 96)
    assert features.decode_workers() == features.MAX_DECODE_WORKERS == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert features.decode_workers() == 2


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


@given(
    width=st.integers(1, 20_000),
    height=st.integers(1, 20_000),
    seed=st.integers(0, 2**32 - 1),
)
@example(width=1600, height=900, seed=4)  # 16:9: the old clamped box covered 59 % of it
@example(width=1000, height=10, seed=0)  # a strip: the old box covered 11 %
@example(width=10, height=1000, seed=0)
@example(width=1, height=1, seed=0)
def test_a_copys_box_covers_70_to_100_percent_of_any_image(width: int, height: int, seed: int) -> None:
    left, top, right, bottom = box = random_box((width, height), random.Random(seed))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    area = (right - left) * (bottom - top) / (width * height)
    assert MIN_AREA - 1e-9 <= area <= 1 + 1e-9
    stretch = ((right - left) / (bottom - top)) / (width / height)  # the box's aspect against the image's
    assert 1 / MAX_ASPECT - 1e-9 <= stretch <= MAX_ASPECT + 1e-9
    assert random_box((width, height), random.Random(seed)) == box


@pytest.mark.parametrize("size", [(1600, 900), (1000, 10), (40_000, 3), (3, 3)])
def test_copies_of_any_shape_are_the_serving_resize_square(size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    augmentation = Augmentation(copies=3, flip=True, seed=0)
    started = time.monotonic()
    copies = [augmented_copy(buffer.getvalue(), SPEC, EVAL_LIMITS, augmentation, "digest", c) for c in (1, 2, 3)]
    assert time.monotonic() - started < 10  # a strip's box is long: only its central square is resampled
    side = SPEC.resize_shorter_side
    assert {Image.open(io.BytesIO(c)).size for c in copies} == {(side, side)}
    assert {image_to_tensor(c, SPEC, EVAL_LIMITS).shape for c in copies} == {(224, 224, 3)}


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


def test_a_truncated_cache_file_is_computed_again_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = backbone("efficientnet_lite0")
    cache = FeatureCache(tmp_path, base)
    cache.store({f"key{i}": np.full(1280, i, np.float32) for i in range(50)})
    assert cache.path is not None
    whole = cache.path.read_bytes()
    cache.path.write_bytes(whole[: len(whole) // 2])  # as a full disk or an interrupted copy leaves it
    with cache.path.open("rb") as f, pytest.raises(zipfile.BadZipFile):
        np.load(f)
    with caplog.at_level(logging.WARNING, logger=features.__name__):
        assert cache.load() == {}
    assert "cannot be read" in caplog.text
    cache.store({"new": np.ones(1280, np.float32)})
    assert sorted(FeatureCache(tmp_path, base).load()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == [cache.path.name]


def _two_images(tmp_path: Path) -> list[Item]:
    images = []
    for i in range(2):
        path = tmp_path / f"{i}.png"
        path.write_bytes(png(i))
        images.append(ImageFile(path, path.name, 0, f"digest{i}", path.stat().st_size))
    return [Item(image, 0, image.digest) for image in images]


def _zeros(batch: np.ndarray) -> np.ndarray:
    return np.zeros((len(batch), 4), np.float32)


def test_a_cache_that_cannot_be_written_is_left_alone_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = backbone("efficientnet_lite0")
    (tmp_path / "a-file").write_text("a regular file where the cache folder would go")
    cache = FeatureCache(tmp_path / "a-file" / "cache", base)
    with caplog.at_level(logging.WARNING, logger=features.__name__):
        result = pooled_features(_zeros, _two_images(tmp_path), base, None, cache, "test")
    assert result.computed == 2 and sorted(result.features) == ["digest0", "digest1"]
    assert "was not written" in caplog.text


def test_a_failed_cache_write_leaves_no_temporary_file_and_the_old_cache_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base = backbone("efficientnet_lite0")
    folder = tmp_path / "cache"
    cache = FeatureCache(folder, base)
    cache.store({"old": np.ones(4, np.float32)})

    def disk_full(file: Any, **arrays: Any) -> None:
        file.write(b"PK\x03\x04 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with caplog.at_level(logging.WARNING, logger=features.__name__):
        cache.store({"new": np.zeros(4, np.float32)})
    assert "No space left on device" in caplog.text
    assert cache.path is not None and [p.name for p in folder.iterdir()] == [cache.path.name]
    monkeypatch.undo()
    assert sorted(cache.load()) == ["old"]


def test_the_cache_file_changes_with_the_libraries_and_the_code_that_make_features(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imported = "tensorflow" in sys.modules  # other tests in this process may have imported it
    base = backbone("efficientnet_lite0")
    path = FeatureCache(tmp_path, base).path
    assert FeatureCache(tmp_path, base).path == path  # stable while nothing changes
    real_version = metadata.version
    for library in ("pillow", "numpy", "keras", "tensorflow"):
        with monkeypatch.context() as patch:

            def version(name: str, library: str = library) -> str:
                return "0.0.0-other" if name.startswith(library) else real_version(name)

            patch.setattr(metadata, "version", version)
            assert FeatureCache(tmp_path, base).path != path, library
    assert (
        FeatureCache(tmp_path, dataclasses.replace(base, modules=(*base.modules, "trt_build.train.report"))).path
        != path
    )
    with monkeypatch.context() as patch:
        patch.setattr(features, "FEATURE_MODULES", (*features.FEATURE_MODULES, "trt_build.train.report"))
        assert FeatureCache(tmp_path, base).path != path
    # What the code key covers: the network, the decoding and the copies.
    assert "trt_build.default_model.efficientnet_lite" in base.modules
    assert {"trt_build.train.augment", "model_contract.imaging"} <= set(features.FEATURE_MODULES)
    # Found by their metadata and source files, not imported.
    assert ("tensorflow" in sys.modules) == imported


# --- exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            ExportMismatch("the staged SavedModel differs by 0.3; the model was not published"),
            3,
            "run again with --no-cache",
        ),
        (RuntimeError("out of memory"), 4, "RuntimeError: out of memory"),
    ],
    ids=["export-mismatch", "crash"],
)
def test_failures_after_training_have_their_own_exit_codes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
    message: str,
) -> None:
    """Exit code 1 means below the baseline, and only that."""
    data = make_folders(tmp_path / "data", {"cats": 6, "dogs": 6})

    def train(request: object) -> None:
        raise error

    monkeypatch.setattr(pipeline_module, "train", train)
    assert imgserve(["train", str(data), "--output", str(tmp_path / "repo" / "pets" / "1")]) == code
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and "not" in captured.err


# --- the digits data set ---------------------------------------------------------------------


def test_the_tests_and_the_benchmark_write_digits_with_the_same_code(tmp_path: Path) -> None:
    pytest.importorskip("sklearn.datasets")
    from tests.trt_build import digits as test_digits
    from trt_build.train.digits_benchmark import write_digits

    assert test_digits.png is digits.png and test_digits.write_class_folders is digits.write_class_folders
    data, held_out = write_digits(tmp_path, train_per_class=3)
    written = sorted(p.relative_to(data).as_posix() for p in data.rglob("*.png"))
    expected = digits.digit_images(range(10), 0, 3)
    assert written == sorted(f"{digit}/{index:04d}.png" for index, digit, _ in expected)
    assert all((data / str(digit) / f"{index:04d}.png").read_bytes() == png for index, digit, png in expected)
    assert len(held_out) == 1797 - 30 and held_out[0] == digits.digit_images([0], 3, 1)[0][1:]


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
