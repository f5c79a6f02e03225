"""The training data: one sub-folder per class (the Keras ``image_dataset_from_directory``
layout, class names the folder names in sorted order), read, fingerprinted, checked, split.

What cannot be trained on stops here with a ``TrainingDataError`` and a clear message, before
anything is written: fewer than two class folders, a class folder whose name cannot be a label
(not valid UTF-8, or with control characters), a class without enough usable images. Files that
cannot be read or decoded, files over ``MAX_FILE_BYTES``, broken symbolic links and files
directly in the data folder (in no class) are skipped and listed (``Skipped``); a file whose
bytes repeat an earlier one is skipped too, so one image can never sit on both sides of the
split (or under two classes).
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trt_build.train.errors import TrainingDataError

MIN_IMAGES_PER_CLASS = 5
"""Fewest readable images a class may have: one or more held out, and a few to train on."""

MAX_FILE_BYTES = 64 << 20
"""Largest file read as an image (64 MiB): a bigger one (a video, an archive) is skipped from its
size alone, never read into memory."""


class FileTooLarge(Exception):
    """A file grew past ``MAX_FILE_BYTES`` after it was scanned."""


def too_large(size: int) -> str:
    return f"too large ({size} bytes; at most {MAX_FILE_BYTES})"


@dataclass(frozen=True)
class ImageFile:
    path: Path
    name: str
    """Its path relative to the data folder (``class/file.png``): what reports show."""
    label: int
    digest: str
    """SHA-256 of its bytes: its identity in the feature cache."""
    size: int = 0
    """Its size in bytes when it was scanned."""

    def read(self) -> bytes:
        """Its bytes; ``FileTooLarge`` (without reading it all) if it now holds more than
        ``MAX_FILE_BYTES``."""
        with self.path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise FileTooLarge(too_large(os.stat(self.path).st_size))
        return data


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


def display_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` as reports show it; bytes that are not UTF-8 (which Python
    gives as surrogate escapes) written as ``\\xff``, so the name can be serialized."""
    relative = path.relative_to(root).as_posix()
    try:
        return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file system decoding makes
        return relative.encode("utf-8", "backslashreplace").decode("utf-8")


def _not_a_file(path: Path) -> str:
    return "a broken symbolic link" if path.is_symlink() and not path.exists() else "not a regular file"


def _class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Every visible file under a class folder, sub-folders included (as Keras reads it), sorted;
    and the visible entries that are neither file nor folder (broken links, sockets, pipes)."""
    files: list[Path] = []
    others: list[Path] = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or path.is_dir():
            continue
        (files if path.is_file() else others).append(path)
    return files, others


def _label_problem(name: str) -> str | None:
    """Why a folder name cannot be a class label (the manifest's label, the served class), or None."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"the class folder name {os.fsencode(name)!r} is not valid UTF-8"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return f"the class folder name {name!r} holds control characters"
    return None


def class_folders(data_dir: Path) -> list[Path]:
    if not data_dir.is_dir():
        raise TrainingDataError(f"{data_dir} is not a folder; give a folder with one sub-folder per class")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and _visible(p))
    for folder in folders:
        problem = _label_problem(folder.name)
        if problem is not None:
            raise TrainingDataError(f"{problem}; folder names become the model's labels: rename it")
    if len(folders) < 2:
        names = ", ".join(repr(p.name) for p in folders) or "none"
        raise TrainingDataError(
            f"{data_dir} has {len(folders)} class folder(s) ({names}); training needs at least two, "
            "one sub-folder of images per class"
        )
    return folders


def _outside_classes(data_dir: Path) -> list[Skipped]:
    """The visible entries of the data folder itself that are not folders: in no class."""
    entries = sorted(p for p in data_dir.iterdir() if _visible(p) and not p.is_dir())
    return [
        Skipped(display_name(p, data_dir), "not in a class folder" if p.is_file() else _not_a_file(p)) for p in entries
    ]


def scan(data_dir: Path) -> Dataset:
    """Read every class folder's files and fingerprint them; refuse a structure that cannot be
    trained on (fewer than two classes, a class name that cannot be a label, a class without
    enough files)."""
    folders = class_folders(data_dir)
    images: list[ImageFile] = []
    skipped = _outside_classes(data_dir)
    first_seen: dict[str, str] = {}
    for label, folder in enumerate(folders):
        files, others = _class_files(folder)
        skipped += [Skipped(display_name(p, data_dir), _not_a_file(p)) for p in others]
        for path in files:
            name = display_name(path, data_dir)
            try:
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    skipped.append(Skipped(name, too_large(size)))
                    continue
                with path.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
            except OSError as exc:
                skipped.append(Skipped(name, f"unreadable: {exc.strerror or exc}"))
                continue
            if digest in first_seen:
                skipped.append(Skipped(name, f"the same bytes as {first_seen[digest]}"))
                continue
            first_seen[digest] = name
            images.append(ImageFile(path, name, label, digest, size))
    dataset = Dataset(tuple(p.name for p in folders), tuple(images), tuple(skipped))
    check_counts(dataset)
    return dataset


def check_counts(dataset: Dataset) -> None:
    """Every class has at least ``MIN_IMAGES_PER_CLASS`` images (usable ones, once decoded)."""
    for name, count in zip(dataset.classes, dataset.counts(), strict=True):
        skipped = sum(1 for s in dataset.skipped if s.name.startswith(f"{name}/"))
        note = f" ({skipped} file(s) skipped as unreadable, undecodable, too large or repeated)" if skipped else ""
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
