"""The reference preprocessing, the decode modes a manifest chooses between, and how close
each mode's tensors come to the reference's (no model needed here: see test_fidelity)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from loadtests.fidelity import upscaled_jpegs
from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.manifest import ModelManifest
from model_contract.preprocess import PreprocessSpec, reference_geometry, reference_pipeline
from tests.conftest import GRACE_HOPPER, PHOTOS, photo_path

EXACT = PreprocessSpec(resize_shorter_side=256, crop_size=224)
FAST = EXACT.model_copy(update={"decode": "fast"})


@pytest.fixture(scope="module")
def large_jpegs() -> dict[str, bytes]:
    """JPEGs made from real photos by upscaling them (2000 to 4000 pixels on the shorter side)."""
    return upscaled_jpegs()


@pytest.fixture(scope="module")
def photos(large_jpegs: dict[str, bytes]) -> dict[str, bytes]:
    """The suite's photos as their files' bytes (JPEGs as JPEGs, PNGs as PNGs), and the large JPEGs."""
    files = {name: photo_path(spec["file"]).read_bytes() for name, spec in PHOTOS.items()}  # type: ignore[arg-type]
    return files | {"grace_hopper": photo_path(GRACE_HOPPER).read_bytes()} | large_jpegs


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_the_default_decode_is_exact_and_an_unknown_one_is_refused(model_repository: Path) -> None:
    assert PreprocessSpec(resize_shorter_side=256, crop_size=224).decode == "exact"
    manifest = ModelManifest.read(model_repository / "efficientnet_lite0" / "1")
    assert manifest.preprocessing.decode == "exact"  # its manifest names no mode
    document = manifest.model_dump()
    document["preprocessing"]["decode"] = "fast"
    assert ModelManifest.model_validate(document).preprocessing.decode == "fast"
    document["preprocessing"]["decode"] = "draft"
    with pytest.raises(ValidationError, match="decode"):
        ModelManifest.model_validate(document)


@pytest.mark.parametrize(
    ("size", "resized", "corner"),
    [
        ((741, 500), (379, 256), (78, 16)),  # 256 * 741 / 500 = 379.4 truncated; (379 - 224) / 2 = 77.5 -> 78
        ((500, 762), (256, 390), (16, 83)),  # 390.1 -> 390; (390 - 224) / 2 = 83
        ((256, 381), (256, 381), (16, 78)),  # no resize; 78.5 goes to the even 78, not 79
        ((1000, 1000), (256, 256), (16, 16)),
    ],
)
def test_the_reference_geometry_rounds_as_torchvision(
    size: tuple[int, int], resized: tuple[int, int], corner: tuple[int, int]
) -> None:
    assert reference_geometry(size, EXACT) == (resized, corner)


def test_the_reference_resizes_the_whole_image_then_crops() -> None:
    # 512x256, three bands: resized shorter side 256 leaves it as it is, and the crop keeps
    # columns 144..368 exactly: all blue.
    rgb = np.zeros((256, 512, 3), np.uint8)
    rgb[:, :144], rgb[:, 144:368], rgb[:, 368:] = (255, 0, 0), (0, 0, 255), (0, 255, 0)
    tensor = reference_pipeline(encode(Image.fromarray(rgb), "PNG"), EXACT)
    assert (tensor == (0, 0, 255)).all()


def test_exact_decode_gives_the_references_tensors(photos: dict[str, bytes]) -> None:
    for name, data in photos.items():
        reference = reference_pipeline(data, EXACT).astype(np.int16)
        exact = image_to_tensor(data, EXACT, GENEROUS_LIMITS).astype(np.int16)
        assert np.abs(exact - reference).max() <= 1, name
        assert np.mean(exact != reference) < 0.002, name  # a handful of values rounded the other way


def test_fast_decode_is_honoured(large_jpegs: dict[str, bytes]) -> None:
    # A large JPEG decodes at a reduced scale in fast mode: another tensor than exact mode's.
    for name, data in large_jpegs.items():
        fast = image_to_tensor(data, FAST, GENEROUS_LIMITS).astype(np.int16)
        exact = image_to_tensor(data, EXACT, GENEROUS_LIMITS).astype(np.int16)
        assert np.abs(fast - exact).mean() > 0.3, name


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exact_decode_of_a_shrunk_image_lands_where_the_reference_crops(orientation: int) -> None:
    # An RGBA image 3x the resize or more is cut to its central square and reduced by 2 before
    # it is converted (memory); exact mode still resamples the reference's crop box, whichever
    # way EXIF turns it (its odd side leaves a partial block, which a mirroring turn moves to
    # the other end). A small spec keeps the image small.
    spec = PreprocessSpec(resize_shorter_side=64, crop_size=56)
    astronaut = Image.open(photo_path(("skimage", "astronaut.png"))).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(astronaut.resize((601, 427), Image.Resampling.LANCZOS).convert("RGBA"), "PNG", exif=exif)
    reference = reference_pipeline(data, spec).astype(np.int16)
    exact = image_to_tensor(data, spec, GENEROUS_LIMITS).astype(np.int16)
    assert np.abs(exact - reference).max() <= 3 and np.abs(exact - reference).mean() < 0.4


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exact_decode_of_a_turned_photo_gives_the_references_tensors(mode: str, orientation: int) -> None:
    # In exact mode an RGB or greyscale image is never turned or converted at full size: the crop
    # is resampled from the image as stored (the reference's box mapped back through the EXIF
    # turn, the passes in the upright image's order), then turned and made RGB. Same filter at
    # the same positions, so within 1 of the reference.
    chelsea = Image.open(photo_path(PHOTOS["chelsea"]["file"])).convert("RGB")  # type: ignore[arg-type]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(chelsea.resize((901, 600), Image.Resampling.LANCZOS).convert(mode), "JPEG", quality=92, exif=exif)
    reference = reference_pipeline(data, EXACT).astype(np.int16)
    exact = image_to_tensor(data, EXACT, GENEROUS_LIMITS).astype(np.int16)
    assert np.abs(exact - reference).max() <= 1
    assert np.mean(exact != reference) < 0.2


@pytest.mark.parametrize("mode", ["RGB", "L", "1"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exact_decode_of_a_turned_sharp_edged_image_stays_within_1(mode: str, orientation: int) -> None:
    # Bicubic overshoots at sharp edges, and Pillow clips to 8 bits between its horizontal and
    # vertical passes: an image stored on its side must be resampled with the passes in the
    # upright image's order, or the clipping lands elsewhere (20 off on this board).
    board = (np.indices((600, 901)).sum(axis=0) // 7 % 2 * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(board).convert(mode), "PNG", exif=exif)
    reference = reference_pipeline(data, EXACT).astype(np.int16)
    exact = image_to_tensor(data, EXACT, GENEROUS_LIMITS).astype(np.int16)
    assert np.abs(exact - reference).max() <= 1
