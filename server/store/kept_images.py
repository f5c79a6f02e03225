"""Kept images on disk, content-addressed: ``<dir>/<sha256[:2]>/<sha256>``. Blocking file work,
so the store calls these through ``asyncio.to_thread``."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def sha256(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


def relative_path(digest: str) -> str:
    return f"{digest[:2]}/{digest}"


def write_images(folder: Path, images: dict[str, bytes]) -> dict[str, str]:
    """Each image, by its hash, under ``folder`` unless already there; each one's relative path.

    Written to a temporary name and renamed: another process writing the same image at once, or a
    crash halfway, never leaves a partial file under the final name."""
    paths: dict[str, str] = {}
    for digest, image in images.items():
        relative = relative_path(digest)
        target = folder / relative
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(descriptor, "wb") as file:
                    file.write(image)
                os.replace(temporary, target)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
        paths[digest] = relative
    return paths


def remove_images(folder: Path, relative_paths: Iterable[str]) -> None:
    for relative in relative_paths:
        (folder / relative).unlink(missing_ok=True)
