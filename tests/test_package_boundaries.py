"""Which package may import which: the layering the README's architecture section draws.

``model_contract`` is a leaf; ``batching`` is generic and knows no model; ``server`` never enters
the build package (a request must not import TensorFlow conversion code, and the server must be
deployable without it). Inside ``server``, the service and the routes stay on their side of the
seam (``server/serving.py``): they never import how models are loaded and run. Checked on the
source, so a new import anywhere in a module counts, lazy imports inside functions included.
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
    "loadtests": {"imgserve"},  # it starts the command as a process, never imports it
}
# What the build may use of the server: its runtimes, so a build is verified through the code
# that will serve it. Nothing of HTTP, the service or the registry.
BUILD_USES_OF_SERVER = {"server.runtimes"}


# The model execution side of the seam: only the composition root (server/app.py) builds it.
MODEL_EXECUTION = {
    "server.registry",
    "server.model_instance",
    "server.batch_runner",
    "server.result_cache",
    "server.model_repository",
    "server.runtimes",
}
SERVING_SIDE = ["server/service.py", "server/api"]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, by its full name; ``from a import b`` counts ``a`` and ``a.b``
    (``b`` may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def imported_packages(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def _within(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_what_its_layer_allows(package: str) -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"{package} must not import {sorted(FORBIDDEN[package])}: {offending}"


def serving_side_files() -> list[Path]:
    files: list[Path] = []
    for entry in SERVING_SIDE:
        path = ROOT / entry
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def test_the_service_and_the_routes_know_models_only_through_the_seam() -> None:
    files = serving_side_files()
    assert any(f.name == "service.py" for f in files) and any(f.name == "routes.py" for f in files)
    offending = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if _within(m, MODEL_EXECUTION))
        for path in files
    }
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"only server/app.py may build the model side; imports across the seam: {offending}"


def test_the_build_uses_only_the_servers_runtimes() -> None:
    offending = {
        str(path.relative_to(ROOT)): sorted(
            m for m in imported_modules(path) if _within(m, {"server"}) and not _within(m, BUILD_USES_OF_SERVER)
        )
        for path in sorted((ROOT / "trt_build").rglob("*.py"))
    }
    offending = {module: names for module, names in offending.items() if names}
    assert not offending, f"trt_build may import only {sorted(BUILD_USES_OF_SERVER)} of server: {offending}"
