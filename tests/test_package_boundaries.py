"""Which package may import which: the layering the README's architecture section draws.

``model_contract`` is a leaf; ``batching`` is generic and knows no model; ``server`` never enters
the build package (a request must not import TensorFlow conversion code, and the server must be
deployable without it). Checked on the source, so a new import anywhere in a module counts,
lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "model_contract": {"server", "trt_build", "loadtests", "batching", "imgserve"},
    "batching": {"server", "trt_build", "loadtests", "model_contract", "imgserve"},
    "server": {"trt_build", "loadtests", "imgserve"},
    "trt_build": {"loadtests", "imgserve"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"{package} must not import {sorted(FORBIDDEN[package])}: {offending}"
