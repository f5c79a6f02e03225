"""The Keras EfficientNet-Lite0 graph and the weight mapping onto it."""

from __future__ import annotations

import pytest

from trt_build.default_model.build import weights_file
from trt_build.default_model.efficientnet_lite import build_keras_model, expand_blocks, load_torch_weights
from trt_build.default_model.torch_pickle import load_legacy_state_dict


def test_block_table_matches_lite0() -> None:
    blocks = expand_blocks()
    assert len(blocks) == 16
    assert [b.stride for b in blocks if b.stride == 2] == [2, 2, 2, 2]
    assert sum(b.has_skip for b in blocks) == 9
    assert (blocks[-1].input_filters, blocks[-1].output_filters, blocks[-1].kernel_size) == (192, 320, 3)


def test_every_stored_weight_lands_in_a_layer() -> None:
    model = build_keras_model()
    state_dict = load_legacy_state_dict(weights_file())
    load_torch_weights(model, state_dict)  # raises if any layer or value is left over
    stem = model.get_layer("stem_conv").get_weights()[0]
    assert stem.shape == (3, 3, 3, 32)
    assert stem[1, 2, 0, 5] == pytest.approx(state_dict["_conv_stem.weight"][5, 0, 1, 2])


def test_missing_weights_are_refused() -> None:
    state_dict = load_legacy_state_dict(weights_file())
    del state_dict["_blocks.3._depthwise_conv.weight"]
    with pytest.raises(KeyError):
        load_torch_weights(build_keras_model(), state_dict)
