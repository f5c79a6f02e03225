"""What every runtime provides. A runtime runs a model on a batch and knows nothing of HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from model_contract.manifest import ModelManifest


@dataclass(frozen=True)
class RuntimeOptions:
    intra_op_threads: int = 0
    """Threads inside one op; 0 lets the runtime decide (usually one per core)."""
    preferred_runtime: str | None = None
    """Serve with this runtime where a version has an artifact for it (see ``artifacts``)."""
    compute_dtype: str = "float32"
    """float32, bfloat16 or float16, for runtimes that can compute in lower precision."""
    device: str | None = None
    """Device platform for runtimes that place work ("gpu", "cpu"); None: the default one."""


class Runtime(Protocol):
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Blocking: the manifest's input batch in, its output batch out, same length."""
        ...

    def close(self) -> None: ...


RuntimeFactory = Callable[[ModelManifest, Path, RuntimeOptions], Runtime]
