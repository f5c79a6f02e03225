"""Top-k: the one ranking every protocol answers with (v1 classify, v2's classification
extension, TF Serving's ``:classify``) and the one check of the k a client asks for."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from model_contract.errors import ErrorKind, ServiceError


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float


def check_top_k(k: int, max_top_k: int) -> None:
    if not 1 <= k <= max_top_k:
        raise ServiceError(ErrorKind.INVALID_PARAMETER, f"top_k must be between 1 and {max_top_k}")


def top_k(probabilities: np.ndarray, k: int, labels: Sequence[str]) -> list[Prediction]:
    """The best ``k`` classes of one row, best first; ties go to the lower index, so every
    protocol gives the same answer for the same row."""
    ranked = np.argsort(-probabilities, kind="stable")[: min(k, probabilities.shape[-1])]
    return [Prediction(labels[i], int(i), float(probabilities[i])) for i in ranked]
