"""Backbone features of the training images: decoded as the server decodes, computed once in
batches, and cached by content.

Every image, and every augmented copy, becomes the model's input through the serving contract
(``model_contract.imaging.image_to_tensor`` with the backbone's ``PreprocessSpec``), then the
frozen backbone's pooled features. Those are kept in one ``.npz`` per backbone and
preprocessing, one row per image content (SHA-256 of its bytes) or augmented copy: a second run
on the same images, or on the same folder with images added, computes only what it has not
seen. The file's name is a hash of everything else a row depends on (``cache_key``): the
weights, the spec, this module's ``FORMAT``, the versions of the libraries that decode and
compute (Pillow, NumPy, Keras, TensorFlow), and the source of the modules between an image's
bytes and its features (the backbone's network definition, the decoding, the augmentation).

The cache only saves time: a file that cannot be read is treated as empty (and replaced), and
one that cannot be written is left as it was, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model_contract.errors import ServiceError
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from trt_build.eval_images import EVAL_LIMITS
from trt_build.train.augment import Augmentation, augmented_copy
from trt_build.train.backbone import Backbone
from trt_build.train.data import FileTooLarge, ImageFile

log = logging.getLogger(__name__)

FORMAT = 1
"""Bump when what a cached row means changes."""
BATCH_SIZE = 32
MAX_DECODE_WORKERS = 8
"""Most images read and decoded at once: each may hold a file of up to ``MAX_FILE_BYTES`` and its
decoded pixels (up to ``EVAL_LIMITS``), so not one per core on a large machine."""

LIBRARIES = {
    "pillow": ("pillow",),
    "numpy": ("numpy",),
    "keras": ("keras",),
    "tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tf-nightly"),
}
"""The libraries a feature row depends on, each with the distributions that install it."""
FEATURE_MODULES = ("model_contract.imaging", "model_contract.preprocess", "trt_build.train.augment", __name__)
"""The modules, besides the backbone's own (``Backbone.modules``), whose code makes a row: the
decoding and resizing, the augmented copies, and this module (the normalization)."""

Model = Callable[[np.ndarray], np.ndarray]
"""Normalized float32 images (N, crop, crop, 3) -> (N, ...) features."""


@dataclass(frozen=True)
class Item:
    """One input to featurize: an image itself (``copy`` 0) or its augmented copy ``copy``."""

    image: ImageFile
    copy: int
    key: str


def items_of(images: Sequence[ImageFile], augmentation: Augmentation | None = None) -> list[Item]:
    """Each image, then (with ``augmentation``) its copies."""
    out: list[Item] = []
    for image in images:
        out.append(Item(image, 0, image.digest))
        if augmentation is not None:
            out += [
                Item(image, copy, f"{image.digest}:{augmentation.tag()}:{copy}")
                for copy in range(1, augmentation.copies + 1)
            ]
    return out


def load_tensor(item: Item, spec: PreprocessSpec, augmentation: Augmentation | None) -> np.ndarray:
    """The model's uint8 input for ``item``; a ``ServiceError`` when its bytes are no usable image
    (``FileTooLarge`` when the file has grown past ``MAX_FILE_BYTES`` since it was scanned)."""
    data = item.image.read()
    if item.copy:
        assert augmentation is not None
        data = augmented_copy(data, spec, EVAL_LIMITS, augmentation, item.image.digest, item.copy)
    return image_to_tensor(data, spec, EVAL_LIMITS)


def normalized(tensors: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """What the exported graph does to its uint8 input, in the same float32 operations."""
    return (tensors.astype(np.float32) - np.float32(spec.mean)) / np.float32(spec.std)


def _try_load(item: Item, spec: PreprocessSpec, augmentation: Augmentation | None) -> np.ndarray | str:
    try:
        return load_tensor(item, spec, augmentation)
    except ServiceError as exc:
        return exc.message
    except FileTooLarge as exc:
        return str(exc)
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def decode_workers() -> int:
    """The decoding threads: one per core this process may use, at most ``MAX_DECODE_WORKERS``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DECODE_WORKERS, cores))


def _decoded_batches(
    items: Sequence[Item], spec: PreprocessSpec, augmentation: Augmentation | None, batch_size: int
) -> Iterator[list[tuple[Item, np.ndarray | str]]]:
    """Batches of (item, tensor or why not), decoded on a thread pool one batch ahead of the model."""
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=decode_workers()) as pool:

        def submit(chunk: Sequence[Item]) -> list[Future[np.ndarray | str]]:
            return [pool.submit(_try_load, item, spec, augmentation) for item in chunk]

        pending = submit(chunks[0]) if chunks else []
        for index, chunk in enumerate(chunks):
            current = pending
            pending = submit(chunks[index + 1]) if index + 1 < len(chunks) else []
            yield [(item, future.result()) for item, future in zip(chunk, current, strict=True)]


def extract(
    model: Model,
    items: Sequence[Item],
    spec: PreprocessSpec,
    augmentation: Augmentation | None,
    desc: str,
    batch_size: int = BATCH_SIZE,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Features of every item that decodes, by key; and why each other one did not."""
    features: dict[str, np.ndarray] = {}
    failed: dict[str, str] = {}
    with tqdm(total=len(items), desc=desc, unit="image") as bar:
        for batch in _decoded_batches(items, spec, augmentation, batch_size):
            good = [(item, tensor) for item, tensor in batch if isinstance(tensor, np.ndarray)]
            failed.update((item.key, reason) for item, reason in batch if isinstance(reason, str))
            if good:
                out = model(normalized(np.stack([tensor for _, tensor in good]), spec))
                features.update((item.key, row) for (item, _), row in zip(good, out, strict=True))
            bar.update(len(batch))
    return features, failed


def library_versions() -> dict[str, str]:
    """The installed version of each of ``LIBRARIES`` ("none" when it is not installed)."""
    versions = {}
    for library, distributions in LIBRARIES.items():
        for distribution in distributions:
            try:
                versions[library] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            versions[library] = "none"
    return versions


def source_digest(modules: Sequence[str]) -> str:
    """SHA-256 of the source files of ``modules`` (found, not imported)."""
    digest = hashlib.sha256()
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"no source for {name}")
        digest.update(f"{name}\0".encode())
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def cache_key(backbone: Backbone) -> dict[str, str]:
    """Everything a cached row depends on besides its image (and copy): the cache file's name is
    a hash of it, so a change to any of them starts a new file."""
    return {
        "format": str(FORMAT),
        "backbone": backbone.name,
        "weights": backbone.fingerprint(),
        "preprocessing": backbone.preprocessing.model_dump_json(),
        "keras_backend": os.environ.get("KERAS_BACKEND", ""),
        **library_versions(),
        "code": source_digest((*backbone.modules, *FEATURE_MODULES)),
    }


_DAMAGED = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)
"""What reading a damaged or truncated ``.npz`` raises."""


class FeatureCache:
    """Pooled features by item key, in ``<folder>/<backbone>-<hash>.npz``; no folder: no cache."""

    def __init__(self, folder: Path | None, backbone: Backbone) -> None:
        key = hashlib.sha256(json.dumps(cache_key(backbone), sort_keys=True).encode()).hexdigest()[:16]
        self.path = None if folder is None else folder / f"{backbone.name}-{key}.npz"

    def load(self) -> dict[str, np.ndarray]:
        try:
            return self._read()
        except _DAMAGED as exc:
            # Unreadable, or damaged (a full disk, a copy cut short): computed again, then replaced.
            log.warning("the feature cache %s cannot be read (%s); its features are computed again", self.path, exc)
            return {}

    def _read(self) -> dict[str, np.ndarray]:
        if self.path is None or not self.path.is_file():
            return {}
        # Opened here, not by np.load, which leaves the file open when it is no zip file.
        with self.path.open("rb") as f, np.load(f, allow_pickle=False) as stored:
            return dict(zip(stored["keys"].tolist(), stored["features"], strict=True))

    def store(self, features: dict[str, np.ndarray]) -> None:
        """Add ``features`` to what the file holds, replacing it in one rename. Best effort: when
        it cannot be written (no space, no permission, no folder), the run goes on without it."""
        if self.path is None or not features:
            return
        try:
            merged = {**self._read(), **features}
        except _DAMAGED:  # already said by load(): replaced by what this run computed
            merged = dict(features)
        keys = sorted(merged)
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".npz", delete=False) as f:
                tmp = f.name
                np.savez(f, keys=np.array(keys), features=np.stack([merged[k] for k in keys]))
            os.replace(tmp, self.path)
            tmp = None
        except OSError as exc:
            log.warning("the feature cache %s was not written (%s); the next run computes these again", self.path, exc)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    Path(tmp).unlink()


@dataclass(frozen=True)
class CachedFeatures:
    features: dict[str, np.ndarray]
    failed: dict[str, str]
    from_cache: int
    computed: int


def pooled_features(
    model: Model,
    items: Sequence[Item],
    backbone: Backbone,
    augmentation: Augmentation | None,
    cache: FeatureCache,
    desc: str,
) -> CachedFeatures:
    """``extract`` of the pooled features, reading what the cache has and adding what it lacked."""
    stored = cache.load()
    found = {item.key: stored[item.key] for item in items if item.key in stored}
    missing = [item for item in items if item.key not in found]
    computed, failed = extract(model, missing, backbone.preprocessing, augmentation, desc) if missing else ({}, {})
    cache.store(computed)
    return CachedFeatures({**found, **computed}, failed, from_cache=len(found), computed=len(computed))
