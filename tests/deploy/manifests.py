"""What the deployment tests share: the built manifests, the server's real settings and metrics
to hold them against, and the few unit conversions Kubernetes needs (quantities, probes).

Nothing here talks to a cluster: there is none in CI. The overlays are built with
``kubectl kustomize`` (kustomize is built into kubectl) and read as plain data."""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from server.metrics import Metrics
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSION = "1.32"  # the oldest release these manifests promise to work on
NAMESPACE = "imgserve"
IMAGE_UID = 10001  # Dockerfile and Dockerfile.gpu: useradd --uid 10001 imgserve

# The kinds with a Kubernetes schema, validated strictly; the others are checked field by field.
CORE_KINDS = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"}

# Labels Prometheus adds to every series it scrapes through a ServiceMonitor, and the bucket
# label of histograms: allowed in queries beside the server's own labels.
TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint", "le"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed: it builds the kustomize overlays (kubectl kustomize)")
    return path


@functools.cache
def _built(folder: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run([kubectl(), "kustomize", folder], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize {folder} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def build(folder: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize folder`` renders (built once per session; a copy)."""
    return [_copy(doc) for doc in _built(str(folder))]


def overlay(name: str) -> list[dict[str, Any]]:
    return build(KUBERNETES / "overlays" / name)


def _copy(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value))


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind]
    assert len(matches) == 1, f"expected one {kind}, found {len(matches)}"
    return matches[0]


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec


def server_container(spec: dict[str, Any], name: str = "imgserve") -> dict[str, Any]:
    matches: list[dict[str, Any]] = [c for c in spec["containers"] if c["name"] == name]
    assert len(matches) == 1, f"expected one container named {name}"
    return matches[0]


def server_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The server container's environment: the ConfigMap it takes with envFrom, then its own
    ``env`` (a Secret's value, unknown here, stands as a placeholder)."""
    container = server_container(pod_spec(docs))
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= configmaps[source["configMapRef"]["name"]]["data"]
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", "<from a Secret>")
    return env


# Settings ------------------------------------------------------------------------------


def setting_path(key: str) -> tuple[str, ...] | None:
    """The Settings field an ``IMGSERVE_*`` variable sets (nested sections with ``__``), or None
    when the server would ignore it: pydantic-settings drops unknown variables silently."""
    if not key.startswith("IMGSERVE_"):
        return None
    parts = tuple(part.lower() for part in key.removeprefix("IMGSERVE_").split("__"))
    model: type[BaseModel] = Settings
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return None
        if depth < len(parts) - 1:
            nested = field.annotation
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return None
            model = nested
    return parts


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Settings:
    """``Settings`` as the server builds them in a process with exactly ``env``'s IMGSERVE_*
    variables (the test's own environment's are removed first)."""
    for key in [k for k in os.environ if k.startswith("IMGSERVE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("IMGSERVE_"):
            monkeypatch.setenv(key, value)
    return Settings.model_validate(overrides)  # as the server does: fields from IMGSERVE_* first


def image_model_repository() -> str:
    """Where both images build their default model (their IMGSERVE_MODEL_REPOSITORY)."""
    found = set()
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        for line in (ROOT / dockerfile).read_text().splitlines():
            words = shlex.split(line.strip().rstrip("\\"), comments=True)
            found |= {w.split("=", 1)[1] for w in words if w.startswith("IMGSERVE_MODEL_REPOSITORY=")}
    (path,) = found
    return path


def app_get_paths() -> set[str]:
    """The paths the real app answers GET on, from its OpenAPI document (which lists every
    route; the included routers are not in ``app.routes`` one by one)."""
    from server.app import create_app

    app = create_app(Settings.model_validate({"model_repository": Path("models"), "grpc_port": 0}))
    return {path for path, operations in app.openapi()["paths"].items() if "get" in operations}


# Metrics -------------------------------------------------------------------------------


def exported_series() -> set[str]:
    """Every series name the server can export: from the registry's collectors (counters are
    named there without ``_total``), with the suffixes Prometheus stores them under."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"}
        else:
            names.add(family.name)
    return names


def family_of(series: str) -> str:
    """The metric family a stored series belongs to (the name the server's registry uses)."""
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if series.endswith(suffix) and series.removesuffix(suffix) in _families():
            return series.removesuffix(suffix)
    return series


@functools.cache
def _families() -> frozenset[str]:
    return frozenset(family.name for family in Metrics().registry.collect())


SERIES = re.compile(r"\bimgserve_[a-z0-9_]+\b")


def series_in(query: str) -> set[str]:
    return set(SERIES.findall(query))


# Units ---------------------------------------------------------------------------------

_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "m": Decimal("0.001"),
}  # fmt: skip


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("512Mi", "4", "500m", 1) as a number."""
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match, f"not a quantity: {value!r}"
    number, suffix = match.groups()
    return Decimal(number) * Decimal(_SUFFIXES[suffix] if suffix else 1)


def probe_budget_s(probe: dict[str, Any]) -> int:
    """How long a probe may fail before the kubelet acts (Kubernetes' defaults where unset)."""
    return int(probe.get("failureThreshold", 3)) * int(probe.get("periodSeconds", 10))


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container's port number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)
