"""The training data: one sub-folder per class (the Keras ``image_dataset_from_directory``
layout, class names the folder names in sorted order), read, fingerprinted, checked, split.

What cannot be trained on stops here with a ``TrainingDataError`` and a clear message, before
anything is written. Files that cannot be read or decoded are skipped and listed (``Skipped``);
a file whose bytes repeat an earlier one is skipped too, so one image can never sit on both
sides of the split (or under two classes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_build.train.errors import TrainingDataError

MIN_IMAGES_PER_CLASS = 5
"""Fewest readable images a class may have: one or more held out, and a few to train on."""


@dataclass(frozen=True)
class ImageFile:
    path: Path
    name: str
    """Its path relative to the data folder (``class/file.png``): what reports show."""
    label: int
    digest: str
    """SHA-256 of its bytes: its identity in the feature cache."""


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


@dataclass(frozen=True)
class Dataset:
    classes: tuple[str, ...]
    images: tuple[ImageFile, ...]
    skipped: tuple[Skipped, ...]

    def counts(self) -> list[int]:
        counts = np.bincount([i.label for i in self.images], minlength=len(self.classes))
        return [int(c) for c in counts]

    def without(self, failed: dict[str, str]) -> Dataset:
        """The images whose digest is not in ``failed`` (digest -> why it could not be decoded)."""
        kept = tuple(i for i in self.images if i.digest not in failed)
        gone = tuple(Skipped(i.name, failed[i.digest]) for i in self.images if i.digest in failed)
        return Dataset(self.classes, kept, self.skipped + gone)

    def fingerprint(self) -> str:
        """One hash of every (class, image content) pair: the same data gives the same value."""
        digest = hashlib.sha256()
        for image in sorted(self.images, key=lambda i: i.digest):
            digest.update(f"{self.classes[image.label]}\0{image.digest}\n".encode())
        return digest.hexdigest()


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(folder: Path) -> list[Path]:
    """Every visible file under a class folder, sub-folders included (as Keras reads it), sorted."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if all(not part.startswith(".") for part in relative) and path.is_file():
            files.append(path)
    return files


def class_folders(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise TrainingDataError(f"{data_dir} is not a folder; give a folder with one sub-folder per class")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and _visible(p))
    if len(folders) < 2:
        names = ", ".join(repr(p.name) for p in folders) or "none"
        raise TrainingDataError(
            f"{data_dir} has {len(folders)} class folder(s) ({names}); training needs at least two, "
            "one sub-folder of images per class"
        )
    return folders


def scan(data_dir: Path) -> Dataset:
    """Read every class folder's files and fingerprint them; refuse a structure that cannot be
    trained on (fewer than two classes, a class without enough files)."""
    folders = class_folders(data_dir)
    images: list[ImageFile] = []
    skipped: list[Skipped] = []
    first_seen: dict[str, str] = {}
    for label, folder in enumerate(folders):
        for path in _class_files(folder):
            name = path.relative_to(data_dir).as_posix()
            try:
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as exc:
                skipped.append(Skipped(name, f"unreadable: {exc.strerror or exc}"))
                continue
            if digest in first_seen:
                skipped.append(Skipped(name, f"the same bytes as {first_seen[digest]}"))
                continue
            first_seen[digest] = name
            images.append(ImageFile(path, name, label, digest))
    dataset = Dataset(tuple(p.name for p in folders), tuple(images), tuple(skipped))
    check_counts(dataset)
    return dataset


def check_counts(dataset: Dataset) -> None:
    """Every class has at least ``MIN_IMAGES_PER_CLASS`` images (usable ones, once decoded)."""
    for name, count in zip(dataset.classes, dataset.counts(), strict=True):
        skipped = sum(1 for s in dataset.skipped if s.name.startswith(f"{name}/"))
        note = f" ({skipped} file(s) skipped as unreadable, undecodable or repeated)" if skipped else ""
        if count == 0:
            raise TrainingDataError(f"class {name!r} is empty: no usable images in its folder{note}")
        if count < MIN_IMAGES_PER_CLASS:
            raise TrainingDataError(
                f"class {name!r} has {count} usable image(s){note}; at least {MIN_IMAGES_PER_CLASS} per class are "
                "needed to hold some out for validation"
            )


def validation_count(count: int, fraction: float) -> int:
    """How many of a class's ``count`` images are held out: at least one, never all but one."""
    return min(max(1, round(count * fraction)), count - 2)


def split(dataset: Dataset, fraction: float, seed: int) -> tuple[list[ImageFile], list[ImageFile]]:
    """Stratified: each class holds out ``validation_count`` of its images, chosen by a seeded
    shuffle of the class's images in name order (the same data and seed give the same split)."""
    rng = np.random.default_rng(seed)
    train: list[ImageFile] = []
    validation: list[ImageFile] = []
    for label in range(len(dataset.classes)):
        members = sorted((i for i in dataset.images if i.label == label), key=lambda i: i.name)
        order = rng.permutation(len(members))
        held = validation_count(len(members), fraction)
        validation += [members[j] for j in order[:held]]
        train += [members[j] for j in order[held:]]
    return train, validation


def labels(images: Sequence[ImageFile]) -> np.ndarray:
    return np.array([i.label for i in images], dtype=np.int64)
