"""A manifest's tensor dtypes are ones every protocol can name, so metadata and answers agree."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pydantic
import pytest

from model_contract.manifest import TensorDtype, TensorSpec
from server.api.tfserving_routes import TF_DTYPES
from server.v2_codec import DTYPES, v2_datatype


@pytest.mark.parametrize("dtype", get_args(TensorDtype))
def test_every_manifest_dtype_has_its_name_on_every_protocol(dtype: str) -> None:
    assert DTYPES[v2_datatype(dtype)] == np.dtype(dtype).newbyteorder("<")
    assert TF_DTYPES[dtype].startswith("DT_")


@pytest.mark.parametrize("dtype", ["bfloat16", "FP32", "complex64", "object", ""])
def test_a_manifest_with_another_dtype_is_refused_when_read(dtype: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        TensorSpec(name="probabilities", dtype=dtype, shape=[-1, 10])  # type: ignore[arg-type]
