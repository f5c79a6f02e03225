"""Backbone features of the training images: decoded as the server decodes, computed once in
batches, and cached by content.

Every image, and every augmented copy, becomes the model's input through the serving contract
(``model_contract.imaging.image_to_tensor`` with the backbone's ``PreprocessSpec``), then the
frozen backbone's pooled features. Those are kept in one ``.npz`` per backbone and
preprocessing (its name is a hash of the weights, the spec and this module's format), one row
per image content (SHA-256 of its bytes) or augmented copy: a second run on the same images, or
on the same folder with images added, computes only what it has not seen.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model_contract.errors import ServiceError
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from trt_build.eval_images import EVAL_LIMITS
from trt_build.train.augment import Augmentation, augmented_copy
from trt_build.train.backbone import Backbone
from trt_build.train.data import ImageFile

FORMAT = 1
"""Bump when what a cached row means changes."""
BATCH_SIZE = 32

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
    """The model's uint8 input for ``item``; a ``ServiceError`` when its bytes are no usable image."""
    data = item.image.path.read_bytes()
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
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def _decoded_batches(
    items: Sequence[Item], spec: PreprocessSpec, augmentation: Augmentation | None, batch_size: int
) -> Iterator[list[tuple[Item, np.ndarray | str]]]:
    """Batches of (item, tensor or why not), decoded on a thread pool one batch ahead of the model."""
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:

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


class FeatureCache:
    """Pooled features by item key, in ``<folder>/<backbone>-<hash>.npz``; no folder: no cache."""

    def __init__(self, folder: Path | None, backbone: Backbone) -> None:
        key = hashlib.sha256(
            f"{FORMAT}\0{backbone.name}\0{backbone.fingerprint()}\0{backbone.preprocessing.model_dump_json()}".encode()
        ).hexdigest()[:16]
        self.path = None if folder is None else folder / f"{backbone.name}-{key}.npz"

    def load(self) -> dict[str, np.ndarray]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                return dict(zip(stored["keys"].tolist(), stored["features"], strict=True))
        except (OSError, ValueError, KeyError):
            return {}  # unreadable or from an interrupted write: computed again, then replaced

    def store(self, features: dict[str, np.ndarray]) -> None:
        """Add ``features`` to what the file holds, replacing it in one rename."""
        if self.path is None or not features:
            return
        merged = {**self.load(), **features}
        keys = sorted(merged)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=self.path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, keys=np.array(keys), features=np.stack([merged[k] for k in keys]))
        os.replace(tmp.name, self.path)


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
