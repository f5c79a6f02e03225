"""Verification images: encoded as clients send them, decoded by the server's own decode."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from server.settings import LimitSettings
from trt_build.eval_images import evaluation_images, evaluation_tensors, packaged_photo_paths

EXACT = PreprocessSpec(resize_shorter_side=256, crop_size=224)
FAST = EXACT.model_copy(update={"decode": "fast"})


def test_evaluation_images_are_the_photos_files_then_jpeg_variations() -> None:
    images = evaluation_images(10)
    photos = [path.read_bytes() for path in packaged_photo_paths()]
    assert images[: len(photos)] == photos  # JPEGs as JPEGs, PNGs as PNGs
    assert {Image.open(io.BytesIO(data)).format for data in images[len(photos) :]} == {"JPEG"}


@pytest.mark.parametrize("spec", [EXACT, FAST], ids=["exact", "fast"])
def test_the_gates_tensors_are_what_the_servers_decode_gives(spec: PreprocessSpec) -> None:
    served = [image_to_tensor(data, spec, LimitSettings().decode_limits()) for data in evaluation_images(10)]
    np.testing.assert_array_equal(evaluation_tensors(spec, 10), np.stack(served))


def test_the_gate_decodes_in_the_models_decode_mode() -> None:
    assert not np.array_equal(evaluation_tensors(EXACT, 7), evaluation_tensors(FAST, 7))
