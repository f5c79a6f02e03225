"""Decode fidelity: the served model's probabilities when images are decoded in ``"exact"`` and
``"fast"`` mode, against the reference pipeline (``model_contract.preprocess.reference_pipeline``),
and what each mode costs.

    python -m loadtests.fidelity [--model models/efficientnet_lite0/1] [--repeats 9] [--out fidelity.json]

Photos: the real photographs that ship inside scikit-image and matplotlib (the test suite's, and
the verification set's astronaut), each sent as its own file's bytes (JPEGs as JPEGs, PNGs as
PNGs); and large JPEGs made from three of them by upscaling (Lanczos, to 2000-4000 pixels on the
shorter side, JPEG quality 90). Those are upscaled real photos, not camera originals: generated
here on every run, never stored. They are what takes the fast mode's reduced-scale decode, which
only a JPEG with a shorter side of twice ``resize_shorter_side`` or more does.

For each photo, with the real model through the tensorflow runtime: max |p - p_reference| over
the classes for exact and fast, whether each mode's top-1 is the reference's, and single-thread
decode + preprocess images/s of each mode (median of ``--repeats`` runs). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loadtests.in_process import GENEROUS_LIMITS, median_seconds
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from model_contract.preprocess import PreprocessSpec, reference_pipeline
from server.runtimes import RuntimeOptions, load_runtime
from trt_build.eval_images import packaged_photo_paths

# Photo to upscale, and the shorter side to upscale it to.
UPSCALED = (("chelsea.png", 2000), ("coffee.png", 3000), ("astronaut.png", 4000))


def packaged_photos() -> dict[str, bytes]:
    """The packaged photographs, as their files' bytes."""
    return {path.name: path.read_bytes() for path in packaged_photo_paths()}


def upscaled_jpegs(photos: dict[str, bytes] | None = None) -> dict[str, bytes]:
    """Large JPEGs (quality 90) made by upscaling real photos with Lanczos."""
    photos = photos or packaged_photos()
    out = {}
    for name, shorter_side in UPSCALED:
        image = Image.open(io.BytesIO(photos[name])).convert("RGB")
        scale = shorter_side / min(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        buffer = io.BytesIO()
        image.resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=90)
        out[f"{Path(name).stem} upscaled {size[0]}x{size[1]}.jpg"] = buffer.getvalue()
    return out


def fidelity_photos() -> dict[str, bytes]:
    photos = packaged_photos()
    return photos | upscaled_jpegs(photos)


@dataclass(frozen=True)
class Row:
    photo: str
    size: str
    reference_top1: str
    reference_top1_probability: float
    exact_max_abs_dp: float
    fast_max_abs_dp: float
    exact_top1_agrees: bool
    fast_top1_agrees: bool
    exact_images_per_s: float
    fast_images_per_s: float


def measure(version_dir: Path, repeats: int) -> list[Row]:
    manifest = ModelManifest.read(version_dir)
    runtime = load_runtime(manifest, version_dir, RuntimeOptions(preferred_runtime="tensorflow"))
    exact = manifest.preprocessing.model_copy(update={"decode": "exact"})
    fast = manifest.preprocessing.model_copy(update={"decode": "fast"})
    rows = []
    for name, data in fidelity_photos().items():
        tensors = [
            reference_pipeline(data, exact),
            image_to_tensor(data, exact, GENEROUS_LIMITS),
            image_to_tensor(data, fast, GENEROUS_LIMITS),
        ]
        reference, served_exact, served_fast = runtime.predict(np.stack(tensors))
        top1 = int(reference.argmax())

        def timed(spec: PreprocessSpec, data: bytes = data) -> float:
            """Images/s of one thread decoding and preprocessing ``data``."""

            def decode() -> object:
                return image_to_tensor(data, spec, GENEROUS_LIMITS)

            decode()  # warm
            return round(1.0 / median_seconds(decode, repeats), 1)

        rows.append(
            Row(
                photo=name,
                size="{}x{}".format(*Image.open(io.BytesIO(data)).size),
                reference_top1=manifest.labels[top1],
                reference_top1_probability=round(float(reference[top1]), 3),
                exact_max_abs_dp=round(float(np.abs(served_exact - reference).max()), 4),
                fast_max_abs_dp=round(float(np.abs(served_fast - reference).max()), 4),
                exact_top1_agrees=int(served_exact.argmax()) == top1,
                fast_top1_agrees=int(served_fast.argmax()) == top1,
                exact_images_per_s=timed(exact),
                fast_images_per_s=timed(fast),
            )
        )
    runtime.close()
    return rows


def markdown(rows: list[Row]) -> str:
    yes_no = {True: "yes", False: "**no**"}
    lines = [
        "| photo | size | reference top-1 (p) | exact max \\|Δp\\| | fast max \\|Δp\\| | exact top-1 = ref | "
        "fast top-1 = ref | exact img/s | fast img/s |",
        "|---|---|---|---:|---:|---|---|---:|---:|",
    ]
    lines += [
        f"| {r.photo} | {r.size} | {r.reference_top1} ({r.reference_top1_probability:.3f}) | {r.exact_max_abs_dp:.4f} "
        f"| {r.fast_max_abs_dp:.4f} | {yes_no[r.exact_top1_agrees]} | {yes_no[r.fast_top1_agrees]} "
        f"| {r.exact_images_per_s:.1f} | {r.fast_images_per_s:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/efficientnet_lite0/1"))
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per photo and mode (the median counts)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = measure(args.model, args.repeats)
    print(markdown(rows))
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
