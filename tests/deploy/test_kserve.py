"""deploy/kserve: the ServingRuntime and the InferenceService. KServe's CRDs have no schema
here, so their own fields are checked one by one; the parts that are plain Kubernetes (the
container, its volumes, the resources) are validated strictly as a Pod would be."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from imgserve.cli import build_parser
from tests.deploy.manifests import (
    DEPLOY,
    KUBERNETES_VERSION,
    app_get_paths,
    build,
    container_port,
    image_model_repository,
    load_yaml,
    one,
    overlay,
    pod_spec,
    quantity,
    server_container,
    setting_path,
    settings_from,
)

KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the storageUri


def docs() -> list[dict[str, Any]]:
    return build(DEPLOY / "kserve")


def runtime() -> dict[str, Any]:
    return one(docs(), "ServingRuntime")


def inference_service() -> dict[str, Any]:
    return one(docs(), "InferenceService")


def kserve_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = runtime()["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {var["name"]: var["value"] for var in container["env"]}


def as_pod(containers: list[dict[str, Any]], volumes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": containers}
    if volumes:
        spec["volumes"] = volumes
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "kserve-check"}, "spec": spec}


def test_the_runtime_declares_imgserve_and_the_v2_protocols() -> None:
    spec = runtime()["spec"]
    assert runtime()["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert {"imgserve", "tensorflow"} <= {f["name"] for f in spec["supportedModelFormats"]}
    assert {"v2", "grpc-v2"} <= set(spec["protocolVersions"])
    assert kserve_container()["name"] == "kserve-container"  # the container KServe merges into
    assert spec["annotations"]["prometheus.kserve.io/path"] in app_get_paths()


def test_the_runtimes_container_and_volumes_are_valid_kubernetes() -> None:
    spec = runtime()["spec"]
    kubernetes_validate.validate(as_pod(spec["containers"], spec.get("volumes")), KUBERNETES_VERSION, strict=True)


def test_the_runtimes_settings_are_settings_and_match_its_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    container = kserve_container()
    env = env_of(container)
    unknown = {key for key in env if key.startswith("IMGSERVE_") and setting_path(key) is None}
    settings = settings_from(env, monkeypatch)
    assert str(settings.model_repository) == KSERVE_MODEL_DIR
    assert settings.host == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [settings.port]  # Knative: one port
    assert str(settings.port) == runtime()["spec"]["annotations"]["prometheus.kserve.io/port"]
    assert settings.grpc_port and settings.grpc_port != settings.port
    assert not unknown, f"not settings of the server: {sorted(unknown)}"


def test_the_runtimes_probes_ask_the_servers_routes_on_its_port() -> None:
    container = kserve_container()
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "readinessProbe": "/ready",
        "livenessProbe": "/health",
    }
    assert {probe["path"] for probe in probes.values()} <= app_get_paths()
    for probe in probes.values():
        assert container_port(container, probe["port"]) == container["ports"][0]["containerPort"]


def test_the_runtime_runs_as_the_deployment_does() -> None:
    container = kserve_container()
    deployment = server_container(pod_spec(overlay("cpu")))
    context = container["securityContext"]
    for key, value in deployment["securityContext"].items():
        assert context[key] == value, key
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.workers is not None
    volumes = {v["name"]: v for v in runtime()["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in ("/tmp", "/dev/shm"):
        assert volumes[mounts[path]]["emptyDir"]["medium"] == "Memory"
        assert quantity(volumes[mounts[path]]["emptyDir"]["sizeLimit"]) > 0
    for amounts in container["resources"].values():
        assert all(quantity(amount) > 0 for amount in amounts.values())
    assert env_of(container)["HOME"] == "/tmp"


def test_the_inference_service_uses_the_runtime_over_v2() -> None:
    isvc = inference_service()
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime()["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime()["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"]
    # What the predictor sets on the container is a valid container.
    container = {"name": "kserve-container", "image": "imgserve:cpu", "resources": model["resources"]}
    kubernetes_validate.validate(as_pod([container]), KUBERNETES_VERSION, strict=True)
    assert "nvidia.com/gpu" not in model["resources"].get("limits", {})


def test_the_seed_job_fills_the_claim_the_inference_service_reads() -> None:
    folder = DEPLOY / "kserve" / "repository"
    models = {doc["kind"]: doc for doc in (load_yaml(path) for path in sorted(folder.glob("*.yaml")))}
    assert set(models) == {"PersistentVolumeClaim", "Job"}
    for doc in models.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    claim, _, path = (
        inference_service()["spec"]["predictor"]["model"]["storageUri"].removeprefix("pvc://").partition("/")
    )
    assert claim == models["PersistentVolumeClaim"]["metadata"]["name"]
    pod = models["Job"]["spec"]["template"]["spec"]
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim
    (container,) = pod["containers"]
    (mount,) = container["volumeMounts"]
    script = container["command"][-1]
    assert f"cp -R {image_model_repository()}/. {mount['mountPath']}/{path}/" in script
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
