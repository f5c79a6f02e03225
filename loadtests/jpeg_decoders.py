"""JPEG decode options on the same photos: today's Pillow path against libjpeg-turbo through
``simplejpeg`` (and, run from a venv that has it instead of Pillow, ``pillow-simd``).

    python -m loadtests.jpeg_decoders [--repeats 15] [--out jpeg_decoders.json]
    python -m loadtests.jpeg_decoders --save-photos DIR      # the photos as .jpg files
    python -m loadtests.jpeg_decoders --photos-dir DIR --pillow-only   # numpy and Pillow only

Photos: the test suite's (``tests/conftest.py`` PHOTOS and GRACE_HOPPER; PNGs re-encoded as
JPEG quality 90) and the large upscaled JPEGs of ``loadtests.fidelity.upscaled_jpegs``.

For each photo, single-thread median seconds (``--repeats`` runs, after one warm run) of:

- Pillow full decode: open, ``load``, converted to RGB only when not RGB already (exact mode's
  decode, ``model_contract.imaging``);
- simplejpeg full decode: ``decode_jpeg(data, colorspace="RGB")``;
- Pillow draft decode: ``Image.draft`` to the size fast mode asks for (shorter side >= 256);
- simplejpeg scaled decode: ``min_width``/``min_height`` of that same size (libjpeg-turbo's
  scaling factors are n/8, so it may pick a scale Pillow's draft cannot: 7/8, 3/8...), and
  ``min_width``/``min_height`` of the size Pillow's draft decodes to, which takes Pillow's own
  1/2^k factor. (``min_factor`` alone changes nothing: it is only a lower bound on the reduction
  that the minimum size picks);

and fidelity: simplejpeg's full decode against Pillow's (max |diff|, fraction of values that
differ), its decode at Pillow's draft factor against Pillow's draft (max |diff|), and the max
|diff| of the 224x224 exact-mode tensor (``exact_resize_crop``) made from simplejpeg's full
decode against ``reference_pipeline``'s (the exact contract allows 1). And what
the exact tensor costs end to end either way: Pillow's full decode then ``exact_resize_crop``,
against simplejpeg's then ``Image.fromarray`` (a copy into Pillow's 4-byte pixels) then the same.

simplejpeg is imported lazily: without it its columns are left empty, with a note. With
``--pillow-only`` and ``--photos-dir`` nothing of the project but this file is imported, so the
Pillow rows run in a venv with only numpy and a Pillow build (pillow-simd) in it.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DRAFT_SHORTER_SIDE = 256  # PreprocessSpec.resize_shorter_side of the served model: what fast mode drafts to
CROP_SIZE = 224
PNG_QUALITY = 90  # PNGs among the suite's photos are re-encoded as JPEG at this quality


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``run``, after one warm call. (As
    ``loadtests.in_process.median_seconds``, which imports the model contract: this file runs
    where only numpy and Pillow are installed.)"""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def as_jpeg(data: bytes, quality: int = PNG_QUALITY) -> bytes:
    """``data`` itself if it is a JPEG, else the image re-encoded as an RGB JPEG."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            return data
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
        return buffer.getvalue()


def suite_photos() -> dict[str, bytes]:
    """The test suite's photos (as JPEGs) and the upscaled ones of ``loadtests.fidelity``."""
    from loadtests.fidelity import upscaled_jpegs
    from tests.conftest import GRACE_HOPPER, PHOTOS, photo_path

    sources = {name: spec["file"] for name, spec in PHOTOS.items()} | {"grace_hopper": GRACE_HOPPER}
    photos = {}
    for name, source in sources.items():
        path = photo_path(source)  # type: ignore[arg-type]
        suffix = "" if path.suffix.lower() in (".jpg", ".jpeg") else f" (png as q{PNG_QUALITY})"
        photos[f"{name}{suffix}"] = as_jpeg(path.read_bytes())
    return photos | {name.removesuffix(".jpg"): data for name, data in upscaled_jpegs().items()}


def save_photos(photos: dict[str, bytes], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (name, data) in enumerate(photos.items()):
        (folder / f"{index:02d} {name}.jpg").write_bytes(data)


def load_photos(folder: Path) -> dict[str, bytes]:
    """Photos saved by ``save_photos``, in their order, under their names."""
    return {path.stem.split(" ", 1)[1]: path.read_bytes() for path in sorted(folder.glob("*.jpg"))}


def draft_request(size: tuple[int, int], shorter_side: int = DRAFT_SHORTER_SIDE) -> tuple[int, int] | None:
    """The size fast mode passes to ``Image.draft`` (``model_contract.imaging._draft``), or None
    when it does not draft (the shorter side is already at most ``shorter_side``)."""
    width, height = size
    scale = shorter_side / min(width, height)
    if scale >= 1:
        return None
    return math.ceil(width * scale), math.ceil(height * scale)


def pillow_full(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def pillow_draft(data: bytes) -> Image.Image:
    """Pillow's decode at fast mode's draft scale (a 1/2^k factor; full scale when none fits)."""
    image: Image.Image = Image.open(io.BytesIO(data))
    request = draft_request(image.size)
    if request is not None:
        image.draft("RGB", request)
    image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Row:
    photo: str
    size: str
    kilobytes: int
    pillow_full_ms: float
    pillow_draft_ms: float
    pillow_draft_size: str
    simplejpeg_full_ms: float | None = None
    simplejpeg_min_size_ms: float | None = None
    simplejpeg_min_size_size: str | None = None
    simplejpeg_same_factor_ms: float | None = None
    """Decoded at Pillow's draft factor (to Pillow's draft size)."""
    full_decode_max_abs_diff: int | None = None
    full_decode_fraction_differing: float | None = None
    scaled_decode_max_abs_diff: int | None = None
    """simplejpeg at Pillow's draft factor against Pillow's draft decode."""
    exact_tensor_max_abs_diff: int | None = None
    """simplejpeg's full decode through ``exact_resize_crop``, against ``reference_pipeline``."""
    pillow_exact_tensor_max_abs_diff: int | None = None
    """Pillow's full decode through the same, for comparison."""
    pillow_exact_tensor_ms: float | None = None
    """Pillow's full decode, then ``exact_resize_crop``."""
    simplejpeg_exact_tensor_ms: float | None = None
    """simplejpeg's full decode, ``Image.fromarray``, then ``exact_resize_crop``."""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _size(shape_or_size: tuple[int, ...], is_shape: bool = False) -> str:
    width, height = (shape_or_size[1], shape_or_size[0]) if is_shape else shape_or_size[:2]
    return f"{width}x{height}"


def pillow_row(name: str, data: bytes, repeats: int) -> Row:
    drafted = pillow_draft(data)
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    return Row(
        photo=name,
        size=_size(size),
        kilobytes=round(len(data) / 1024),
        pillow_full_ms=_ms(median_seconds(lambda: pillow_full(data), repeats)),
        pillow_draft_ms=_ms(median_seconds(lambda: pillow_draft(data), repeats)),
        pillow_draft_size=_size(drafted.size),
    )


def exact_tensor(image: Image.Image) -> np.ndarray:
    from model_contract.preprocess import PreprocessSpec, exact_resize_crop

    spec = PreprocessSpec(resize_shorter_side=DRAFT_SHORTER_SIDE, crop_size=CROP_SIZE)
    return exact_resize_crop(image, spec)


def reference_tensor(data: bytes) -> np.ndarray:
    from model_contract.preprocess import PreprocessSpec, reference_pipeline

    return reference_pipeline(data, PreprocessSpec(resize_shorter_side=DRAFT_SHORTER_SIDE, crop_size=CROP_SIZE))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def simplejpeg_row(row: Row, data: bytes, repeats: int, simplejpeg: Any) -> Row:
    """``row`` with simplejpeg's timings and the fidelity figures filled in."""
    decode = simplejpeg.decode_jpeg
    full = decode(data, colorspace="RGB")
    pillow = np.asarray(pillow_full(data))
    if full.shape != pillow.shape:
        raise AssertionError(f"simplejpeg decoded {full.shape}, Pillow {pillow.shape}")
    differing = float(np.mean(full != pillow))
    request = draft_request((full.shape[1], full.shape[0]))
    min_width, min_height = request or (0, 0)
    scaled = decode(data, colorspace="RGB", min_width=min_width, min_height=min_height)
    drafted = np.asarray(pillow_draft(data))
    same_width, same_height = drafted.shape[1], drafted.shape[0]
    same_factor = decode(data, colorspace="RGB", min_width=same_width, min_height=same_height)
    if same_factor.shape != drafted.shape:
        raise AssertionError(f"simplejpeg decoded {same_factor.shape} at Pillow's factor, Pillow {drafted.shape}")
    reference = reference_tensor(data)
    return Row(
        **{
            **asdict(row),
            "simplejpeg_full_ms": _ms(median_seconds(lambda: decode(data, colorspace="RGB"), repeats)),
            "simplejpeg_min_size_ms": _ms(
                median_seconds(
                    lambda: decode(data, colorspace="RGB", min_width=min_width, min_height=min_height), repeats
                )
            ),
            "simplejpeg_min_size_size": _size(scaled.shape, is_shape=True),
            "simplejpeg_same_factor_ms": _ms(
                median_seconds(
                    lambda: decode(data, colorspace="RGB", min_width=same_width, min_height=same_height), repeats
                )
            ),
            "full_decode_max_abs_diff": max_abs_diff(full, pillow),
            "full_decode_fraction_differing": round(differing, 6),
            "scaled_decode_max_abs_diff": max_abs_diff(same_factor, drafted),
            "exact_tensor_max_abs_diff": max_abs_diff(exact_tensor(Image.fromarray(full)), reference),
            "pillow_exact_tensor_max_abs_diff": max_abs_diff(exact_tensor(Image.fromarray(pillow)), reference),
            "pillow_exact_tensor_ms": _ms(median_seconds(lambda: exact_tensor(pillow_full(data)), repeats)),
            "simplejpeg_exact_tensor_ms": _ms(
                median_seconds(lambda: exact_tensor(Image.fromarray(decode(data, colorspace="RGB"))), repeats)
            ),
        }
    )


def import_simplejpeg() -> Any | None:
    try:
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg


def measure(photos: dict[str, bytes], repeats: int, with_simplejpeg: bool = True) -> tuple[list[Row], list[str]]:
    """The rows, and notes on what was left out."""
    notes = []
    simplejpeg = import_simplejpeg() if with_simplejpeg else None
    if with_simplejpeg and simplejpeg is None:
        notes.append("simplejpeg is not installed: its columns are empty")
    rows = []
    for name, data in photos.items():
        row = pillow_row(name, data, repeats)
        rows.append(row if simplejpeg is None else simplejpeg_row(row, data, repeats, simplejpeg))
    return rows, notes


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _speedup(slow: float, fast: float | None) -> str:
    return "-" if fast is None or fast <= 0 else f"{slow / fast:.2f}x"


def table(rows: list[Row]) -> str:
    """The Markdown report: times in ms (median), simplejpeg's speed-up over Pillow's same kind
    of decode, and the fidelity figures."""
    header = [
        "photo",
        "size",
        "KiB",
        "Pillow full ms",
        "simplejpeg full ms",
        "full speed-up",
        "Pillow draft ms (size)",
        "simplejpeg min size ms (size)",
        "simplejpeg at Pillow's factor ms",
        "draft speed-up (same factor)",
        "full decode max diff",
        "values differing",
        "draft max diff",
        "exact tensor max diff (Pillow's)",
        "exact tensor ms: Pillow / simplejpeg",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.photo,
            row.size,
            _cell(row.kilobytes),
            _cell(row.pillow_full_ms),
            _cell(row.simplejpeg_full_ms),
            _speedup(row.pillow_full_ms, row.simplejpeg_full_ms),
            f"{_cell(row.pillow_draft_ms)} ({row.pillow_draft_size})",
            f"{_cell(row.simplejpeg_min_size_ms)} ({_cell(row.simplejpeg_min_size_size)})",
            _cell(row.simplejpeg_same_factor_ms),
            _speedup(row.pillow_draft_ms, row.simplejpeg_same_factor_ms),
            _cell(row.full_decode_max_abs_diff),
            "-" if row.full_decode_fraction_differing is None else f"{row.full_decode_fraction_differing:.2%}",
            _cell(row.scaled_decode_max_abs_diff),
            f"{_cell(row.exact_tensor_max_abs_diff)} ({_cell(row.pillow_exact_tensor_max_abs_diff)})",
            f"{_cell(row.pillow_exact_tensor_ms)} / {_cell(row.simplejpeg_exact_tensor_ms)}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from PIL import __version__ as pillow_version
    from PIL import features

    found = {"pillow": pillow_version, "libjpeg (Pillow's)": str(features.version("jpg"))}
    turbo = features.version("libjpeg_turbo")
    if turbo:
        found["libjpeg-turbo (Pillow's)"] = str(turbo)
    simplejpeg = import_simplejpeg()
    if simplejpeg is not None:
        found["simplejpeg"] = str(getattr(simplejpeg, "__version__", "?"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--photos-dir", type=Path, help="read the photos from .jpg files saved by --save-photos")
    parser.add_argument("--save-photos", type=Path, help="write the photos as .jpg files to this folder and stop")
    parser.add_argument("--pillow-only", action="store_true", help="only the Pillow columns (no simplejpeg)")
    args = parser.parse_args()
    photos = load_photos(args.photos_dir) if args.photos_dir else suite_photos()
    if args.save_photos:
        save_photos(photos, args.save_photos)
        print(f"{len(photos)} photos written to {args.save_photos}")
        return
    rows, notes = measure(photos, args.repeats, with_simplejpeg=not args.pillow_only)
    found = versions()
    print(", ".join(f"{name} {version}" for name, version in found.items()))
    print(table(rows))
    for note in notes:
        print(f"Note: {note}")
    if args.out:
        report = {"versions": found, "repeats": args.repeats, "notes": notes, "rows": [asdict(row) for row in rows]}
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
